"""What installs a game before it can run, apart from how it runs (the runner)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from manman.models import ServerSpec


class InstallError(Exception):
    """The install failed; the message is what the operator sees in `error`."""


@dataclass
class InstallContext:
    server_id: str
    spec: ServerSpec
    files_dir: Path
    publish: Callable[[list[str]], None]  # install output → the console, stream "install"
    progress: Callable[[float], None]  # 0–100


class Installer(Protocol):
    needed: bool  # False: nothing to install, a new server is `stopped` at once

    async def install(self, ctx: InstallContext) -> None: ...


class NoInstall:
    """exec: the program is already on the machine."""

    needed = False

    async def install(self, ctx: InstallContext) -> None:
        return None
