"""steamcmd installs: the output parser (pure) and the installer that runs steamcmd.

steamcmd prints no stable format; the shapes handled here are the ones in
`docs/steamcmd.md`: `Update state (0x61) downloading, progress: 45,21 (a / b)`
lines (locale decimals, repeated when stalled, `\\r` line ends, output in bursts), a
self-update preamble, `Success! App '<id>' fully installed.` / `already up to date.`, and
errors as `ERROR! …`, `Error! App '<id>' state is 0x… after update job.`, `…FAILED (…)` and
`Login Failure: …`. The exit code alone is not trusted: a run can exit 0 after an error.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from manman.worker import procs
from manman.worker.console.lines import LineFramer
from manman.worker.installers.base import InstallContext, InstallError
from manman.worker.runners.base import helper_env

_UPDATE_RE = re.compile(
    r"Update state \((0x[0-9a-fA-F]+)\) ([a-zA-Z ]+?), progress: (\d+)[.,](\d+)")
_SUCCESS_RE = re.compile(r"^Success! App '(\d+)' (fully installed|already up to date)")
_ERROR_RES = (
    re.compile(r"^ERROR! (.*)$"),
    re.compile(r"^Error! (.*)$"),
    re.compile(r"^(Login Failure: .*)$"),
    re.compile(r"^(.*\.\.\.FAILED.*)$"),
)

# where each phase of an app update sits in the overall 0–100 (phases restart at 0)
_PHASES = {
    "reconfiguring": (0.0, 0.0),
    "verifying install": (0.0, 5.0),
    "validating": (0.0, 5.0),
    "preallocating": (5.0, 10.0),
    "downloading": (10.0, 85.0),
    "verifying update": (85.0, 95.0),
    "committing": (95.0, 99.0),
}


@dataclass
class SteamcmdParser:
    """Feed it lines of steamcmd output; it keeps the overall progress (never decreasing),
    the success and the first error."""

    app_id: str
    progress: float = 0.0
    success: bool = False
    error: str | None = None

    def feed(self, line: str) -> float | None:
        """Take one line; returns the new overall progress when it moved."""
        text = line.strip()
        if not text:
            return None
        m = _UPDATE_RE.search(text)
        if m is not None:
            phase = m.group(2).strip().lower()
            span = _PHASES.get(phase)
            if span is None:
                return None
            pct = min(100.0, float(f"{m.group(3)}.{m.group(4)}"))
            overall = round(span[0] + (span[1] - span[0]) * pct / 100.0, 2)
            if overall > self.progress:
                self.progress = overall
                return overall
            return None
        m = _SUCCESS_RE.match(text)
        # as numbers: steamcmd reports app 0730 as '730'
        if m is not None and m.group(1).isdigit() and int(m.group(1)) == int(self.app_id):
            self.success = True
            self.progress = 100.0
            return 100.0
        if self.error is None:
            for pattern in _ERROR_RES:
                m = pattern.match(text)
                if m is not None:
                    self.error = text
                    break
        return None

    def verdict(self, exit_code: int) -> str | None:
        """None for a good install, else why it failed."""
        if self.error is not None:
            return self.error
        if exit_code != 0:
            return f"steamcmd exited with code {exit_code}"
        if not self.success:
            return "steamcmd ended without reporting success"
        return None


class SteamcmdInstaller:
    """Runs `steamcmd +force_install_dir DIR +login anonymous +app_update ID validate +quit`.
    steamcmd runs on one worker are serialised, whatever their app: they share steamcmd's
    own state (~/Steam, its self-update), and two at once corrupt it."""

    needed = True

    def __init__(self, steamcmd: str, timeout: float, lock: trio.Lock, owner: str) -> None:
        self.steamcmd = steamcmd
        self.timeout = timeout
        self.env = helper_env(owner)
        self._lock = lock  # the worker's one steamcmd lock, shared by its installers

    async def install(self, ctx: InstallContext) -> None:
        app_id = ctx.spec.install_identifier
        lock = self._lock
        if lock.locked():
            ctx.publish(["waiting for another install on this worker (steamcmd runs one at "
                         "a time)"])
        async with lock:
            await self._run(ctx, app_id)

    async def _run(self, ctx: InstallContext, app_id: str) -> None:
        ctx.files_dir.mkdir(parents=True, exist_ok=True)
        parser = SteamcmdParser(app_id)
        try:
            code = await run_steamcmd(
                self.steamcmd, ["+force_install_dir", str(ctx.files_dir), "+login", "anonymous",
                                "+app_update", app_id, "validate", "+quit"],
                cwd=ctx.files_dir, env=self.env, timeout=self.timeout,
                on_lines=_Relay(parser, ctx))
        except SteamcmdError as e:
            raise InstallError(str(e)) from None
        why = parser.verdict(code)
        if why is not None:
            raise InstallError(why)
        if not await trio.to_thread.run_sync(_has_files, ctx.files_dir):
            raise InstallError("steamcmd reported success but installed nothing")


def _has_files(directory: Path) -> bool:
    return any(directory.iterdir())


class SteamcmdError(Exception):
    """steamcmd could not be run, or did not end in time; the message says which."""


async def run_steamcmd(steamcmd: str, args: list[str], *, cwd: Path, env: dict[str, str],
                       timeout: float, on_lines: Callable[[list[str]], None]) -> int:
    """Run steamcmd with stdin closed, stdout and stderr merged, in its own process group;
    hand its output to `on_lines` a batch of lines at a time; return the exit code.
    A timeout, a cancel or an exception from `on_lines` kills the whole group (steamcmd.sh
    runs the real steamcmd as its child) and waits for it."""
    try:
        proc = await trio.lowlevel.open_process(
            [steamcmd, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=env, cwd=str(cwd), start_new_session=True)
    except OSError as e:
        raise SteamcmdError(f"cannot run steamcmd ({steamcmd}): {e.strerror or e}") from None
    code: int | None = None
    try:
        with trio.move_on_after(timeout) as scope:
            assert proc.stdout is not None
            await _pump(proc.stdout, on_lines)
            code = await proc.wait()
    finally:
        if code is None:  # timed out, cancelled or failed: nothing of steamcmd stays behind
            procs.signal_group(proc.pid, 9)
            with trio.CancelScope(shield=True):
                await proc.wait()
    if scope.cancelled_caught:
        raise SteamcmdError(f"steamcmd timed out after {timeout:g}s")
    assert code is not None  # not cancelled: the process was waited for
    return code


async def _pump(stream: trio.abc.ReceiveStream, on_lines: Callable[[list[str]], None]) -> None:
    framer = LineFramer(cr_breaks=True)
    while data := await stream.receive_some(65536):
        if lines := framer.feed(data):
            on_lines(lines)
    if lines := framer.flush():
        on_lines(lines)


class _Relay:
    """An install's output → the parser, the progress and the console."""

    def __init__(self, parser: SteamcmdParser, ctx: InstallContext) -> None:
        self.parser = parser
        self.ctx = ctx
        self.last: str | None = None

    def __call__(self, lines: list[str]) -> None:
        shown = []
        last = self.last
        for line in lines:
            moved = self.parser.feed(line)
            if moved is not None:
                self.ctx.progress(moved)
            if line != last and line.strip():  # a stalled download repeats one line many times
                shown.append(line)
            last = line
        self.last = last
        if shown:
            self.ctx.publish(shown)
