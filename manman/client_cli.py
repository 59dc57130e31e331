"""The client verbs of the `manman` command (workers, servers, server …, send, logs, console)."""

from __future__ import annotations

import argparse


def add_client_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register the client verbs (they talk to a host over HTTP and websockets)."""
