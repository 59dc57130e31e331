"""How a game process runs, apart from what a server is: the interface the actor uses.

The actor never knows which runner it has. A runner spawns a `GameProcess`, can re-adopt
one left by an earlier worker (docker) or remove it (exec).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trio

from manman.models import ServerSpec
from manman.worker import procs


class SpawnError(Exception):
    """The game could not be started (missing executable, docker error…)."""


@dataclass
class LaunchContext:
    server_id: str
    spec: ServerSpec
    files_dir: Path  # the server's own directory for game files (cwd of the process)
    instance: str  # a token unique to this run, in the process's environment
    extra_env: dict[str, str] = field(default_factory=dict)
    note: Callable[[str], None] = lambda text: None  # a line of manman's on the console


@dataclass
class RunRecord:
    """What the worker remembers of a run, to find it again after a restart."""

    server_id: str
    pid: int | None
    pid_start: int | None
    instance: str | None


class GameProcess(Protocol):
    pid: int | None
    stdout: trio.abc.ReceiveStream
    stderr: trio.abc.ReceiveStream | None

    async def write_line(self, line: str) -> None:
        """One console line to stdin; raises trio.BrokenResourceError when it is closed."""

    async def terminate(self, timeout: float, sig: str = "SIGTERM") -> None:
        """Begin a graceful stop (`sig` to the group; docker: `docker stop -t timeout`, or
        `docker kill --signal sig` for another signal); returns without waiting for the
        exit."""

    async def kill(self) -> None:
        """Kill now (SIGKILL to the group / `docker kill`)."""

    async def wait(self) -> int:
        """The exit code (negative: killed by that signal)."""

    async def exit_reason(self) -> str | None:
        """After exit, before cleanup: why it ended when the exit code does not say (an
        OOM kill under the server's memory limit), else None."""

    async def cleanup(self) -> None:
        """After exit: remove whatever the game left (its group, its container)."""

    def abandon(self) -> None:
        """The actor is going away without a stop (worker restart or actor fault)."""


class Runner(Protocol):
    name: str

    async def spawn(self, ctx: LaunchContext) -> GameProcess: ...

    async def adopt(self, record: RunRecord, spec: ServerSpec, since: float | None = None
                    ) -> GameProcess | None:
        """A process of an earlier worker to keep running (its console from `since`, the time
        of the last line seen), or None."""

    async def remove_leftover(self, record: RunRecord) -> list[int]:
        """Kill what an earlier worker left of this server; the pids or ids removed."""


def helper_env(owner: str) -> dict[str, str]:
    """The environment of a worker's helper process: tagged so that a restarted worker can
    end the helpers of the run before it."""
    return base_env({procs.HELPER_ENV: owner})


def base_env(extra: dict[str, str]) -> dict[str, str]:
    """The worker's environment minus manman's own settings (they hold secrets)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANMAN_")}
    env.update(extra)
    return env
