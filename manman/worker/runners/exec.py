"""The exec runner: the game is a local program in its own process group and session."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import trio

from manman.models import ServerSpec
from manman.worker import procs
from manman.worker.limits import cgroups
from manman.worker.limits.cgroups import ServerCgroup
from manman.worker.limits.manager import WorkerLimits, cgroup_limited
from manman.worker.runners.base import GameProcess, LaunchContext, RunRecord, SpawnError, base_env


def resolve_executable(spec: ServerSpec, files_dir: Path, path_env: str | None) -> str:
    """The program to run: absolute, relative to the install directory, or found on PATH."""
    method, ident = spec.install_method, spec.install_identifier
    exe = spec.executable or (ident if method == "exec" else None)
    if not exe:
        raise SpawnError("no executable given")
    if method == "steamcmd" or ("/" in exe and not exe.startswith("/")):
        candidate = files_dir / exe
    elif exe.startswith("/"):
        candidate = Path(exe)
    else:
        found = shutil.which(exe, path=path_env)
        if not found:
            raise SpawnError(f"executable not found on PATH: {exe}")
        candidate = Path(found)
    if not candidate.is_file():
        raise SpawnError(f"executable not found: {candidate}")
    if not os.access(candidate, os.X_OK):
        raise SpawnError(f"executable is not executable: {candidate}")
    return str(candidate)


class ExecProcess:
    """A running local program, the leader of its own process group."""

    def __init__(self, proc: trio.Process, instance: str, group: ServerCgroup | None = None,
                 oom_before: int | None = None, memory_mb: int | None = None) -> None:
        self._proc = proc
        self._instance = instance  # in the environment of the game and its descendants
        self.group = group  # the server's cgroup (None: no writable cgroup here)
        self._oom_before = oom_before
        self.memory_mb = memory_mb  # the memory limit in force, for the crash reason
        self.pid: int | None = proc.pid
        assert proc.stdout is not None and proc.stdin is not None
        self.stdout: trio.abc.ReceiveStream = proc.stdout
        self.stderr: trio.abc.ReceiveStream | None = proc.stderr
        self._stdin = proc.stdin
        self._write_lock = trio.Lock()
        self._exited = False

    async def write_line(self, line: str) -> None:
        async with self._write_lock:  # the stop command and console input never interleave
            await self._stdin.send_all(line.encode("utf-8", "replace") + b"\n")

    def _signal(self, sig: int) -> None:
        if not self._exited:
            procs.signal_group(self._proc.pid, sig)

    async def terminate(self, timeout: float, sig: str = "SIGTERM") -> None:
        self._signal(signal.Signals[sig])

    async def kill(self) -> None:
        self._signal(signal.SIGKILL)

    async def wait(self) -> int:
        code = await self._proc.wait()
        self._exited = True
        return code

    async def exit_reason(self) -> str | None:
        """An OOM kill in the server's cgroup during this run."""
        if self.group is None or self._oom_before is None:
            return None
        after = await trio.to_thread.run_sync(self.group.oom_kills)
        if after is not None and after > self._oom_before:
            return cgroups.oom_reason(self.memory_mb)
        return None

    async def cleanup(self) -> None:
        # children of the game that outlive it: the whole group goes with the server, and
        # so do descendants that left the group (setsid) but carry the instance token, or
        # are still in the server's cgroup
        procs.signal_group(self._proc.pid, signal.SIGKILL)
        await trio.to_thread.run_sync(procs.kill_leftover, None, None, self._instance, 1.0)
        if self.group is not None:
            await trio.to_thread.run_sync(self.group.kill_all)
        for stream in (self._stdin,):
            with trio.move_on_after(1):
                await stream.aclose()

    def abandon(self) -> None:
        procs.signal_group(self._proc.pid, signal.SIGKILL)
        procs.kill_leftover(None, None, self._instance, 0.0)
        if self.group is not None:
            self.group.kill_all(wait=0.0)


class ExecRunner:
    name = "exec"

    def __init__(self, limits: WorkerLimits | None = None) -> None:
        self.limits = limits or WorkerLimits()

    def _prepare(self, ctx: LaunchContext) -> tuple[ServerCgroup | None, str | None]:
        """The server's cgroup with the spec's limits written (blocking I/O, in a thread);
        None without a writable cgroup, where limits are refused unless only watched
        (monitor). And the console note to write (from trio, not from the thread)."""
        lim, spec = self.limits, ctx.spec
        wanted = cgroup_limited(spec)
        named = ", ".join(cgroups.enforced(spec.limits))
        group = lim.group(ctx.server_id)
        if group is None:
            if wanted and lim.enforcing:
                raise SpawnError(f"limits cannot be enforced on this worker: no writable "
                                 f"cgroup ({lim.hierarchy.reason})")
            return None, (f"limits {named} not enforced: no writable cgroup on this worker "
                          "(worker.limits = monitor); use over them is warned of"
                          if wanted else None)
        try:
            group.create(lim.applied(spec))
        except OSError as e:
            raise SpawnError(f"cannot set up the server's cgroup: {e.strerror or e}") from None
        return group, (f"limits {named} not enforced (worker.limits = monitor); use over "
                       "them is warned of" if wanted and not lim.enforcing else None)

    async def spawn(self, ctx: LaunchContext) -> GameProcess:
        env = base_env(ctx.spec.env)
        env.update(ctx.extra_env)
        env[procs.INSTANCE_ENV] = ctx.instance
        env["MANMAN_SERVER_ID"] = ctx.server_id
        exe = resolve_executable(ctx.spec, ctx.files_dir, env.get("PATH"))
        ctx.files_dir.mkdir(parents=True, exist_ok=True)
        group, note = await trio.to_thread.run_sync(self._prepare, ctx)
        if note is not None:
            ctx.note(note)
        argv = [exe, *ctx.spec.args]
        oom_before = None
        if group is not None:
            # through a shell that joins the cgroup and execs the game (same pid): nothing
            # of the game runs outside it, and no preexec_fn runs in the threaded worker
            argv = ["/bin/sh", "-c", cgroups.JOIN_SCRIPT, "manman-join",
                    *group.join_files(), "--", *argv]
            oom_before = await trio.to_thread.run_sync(group.oom_kills)
        try:
            proc = await trio.lowlevel.open_process(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, cwd=str(ctx.files_dir), env=env,
                start_new_session=True)
        except OSError as e:
            raise SpawnError(f"cannot start {exe}: {e.strerror or e}") from None
        memory_mb = ctx.spec.limits.memory_mb if self.limits.enforcing else None
        return ExecProcess(proc, ctx.instance, group, oom_before, memory_mb)

    async def adopt(self, record: RunRecord, spec: ServerSpec, since: float | None = None
                    ) -> GameProcess | None:
        return None  # a local process cannot be re-attached: its pipes died with the worker

    async def remove_leftover(self, record: RunRecord) -> list[int]:
        killed = await trio.to_thread.run_sync(
            procs.kill_leftover, record.pid, record.pid_start, record.instance)
        group = self.limits.group(record.server_id)
        if group is not None:  # what a dead worker left in the server's cgroup
            killed += [p for p in await trio.to_thread.run_sync(group.kill_all)
                       if p not in killed]
        return killed
