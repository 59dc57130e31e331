"""The `manman` command: host | worker | up, and the client verbs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from manman import __version__
from manman.config import Config, ConfigError, load_config


def _die(message: str, code: int = 1) -> int:
    print(f"manman: {message}", file=sys.stderr)
    return code


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("hypercorn.error", "httpx", "httpcore", "asyncio", "trio-websocket",
                  "pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _run_service(fn: Callable[..., object], cfg: Config) -> int:
    from manman import aio

    async def main() -> None:
        async with aio.open_loop():
            await fn(cfg, handle_signals=True)

    try:
        trio.run(main)
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_worker(args: argparse.Namespace, cfg: Config) -> int:
    from manman.worker.main import run_worker

    _setup_logging(args.verbose)
    return _run_service(run_worker, cfg)


def cmd_host(args: argparse.Namespace, cfg: Config) -> int:
    from manman.host.main import run_host

    _setup_logging(args.verbose)
    return _run_service(run_host, cfg)


def cmd_up(args: argparse.Namespace, cfg: Config) -> int:
    from manman.host.main import run_up

    _setup_logging(args.verbose)
    return _run_service(run_up, cfg)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="config file (default: ./config.toml when present)")
    common.add_argument("--host-url", help="the host API (default: from the config)")
    common.add_argument("--token", help="admin token (default: from env or the host data dir)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    parser = argparse.ArgumentParser(prog="manman", description="Run dedicated game servers.")
    parser.add_argument("--version", action="version", version=f"manman {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("host", parents=[common], help="run the control plane").set_defaults(
        func=cmd_host)
    sub.add_parser("worker", parents=[common], help="run the agent of this machine"
                   ).set_defaults(func=cmd_worker)
    sub.add_parser("up", parents=[common], help="host + worker in one process, no set-up"
                   ).set_defaults(func=cmd_up)
    from manman.client_cli import add_client_commands

    add_client_commands(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    path = args.config
    if path is None and Path("config.toml").is_file():
        path = "config.toml"
    try:
        cfg = load_config(path, os.environ)
    except ConfigError as e:
        return _die(str(e))
    try:
        return int(args.func(args, cfg))
    except KeyboardInterrupt:
        return 0
