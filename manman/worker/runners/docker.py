"""The docker runner: the game is a container `manman-<id>`, driven with the docker CLI.

The container is started detached with stdin open (`docker run -d -i`): unlike an attached
run, its stdin then stays open when the attached client goes away, so a worker that restarts
can re-attach and still send console lines. Its console is read with `docker logs -f`
(everything since the container started, stdout and stderr apart) and written with
`docker attach --sig-proxy=false` (the attached client never forwards signals). The CLI
helpers carry the worker's helper tag: a worker restarted after a SIGKILL ends its
predecessor's helpers and re-attaches to the container, which kept running.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
from pathlib import Path

import trio

from manman.models import Limits, ServerSpec
from manman.worker.limits.cgroups import oom_reason
from manman.worker.runners.base import GameProcess, LaunchContext, RunRecord, SpawnError, helper_env

log = logging.getLogger("manman.docker")

def container_name(server_id: str) -> str:
    return f"manman-{server_id}"


def limit_args(limits: Limits) -> list[str]:
    """`docker run` flags of a spec's limits; swap equal to the memory: none on top of it."""
    out: list[str] = []
    if limits.memory_mb is not None:
        out += [f"--memory={limits.memory_mb}m", f"--memory-swap={limits.memory_mb}m"]
    if limits.cpus is not None:
        out.append(f"--cpus={limits.cpus:g}")
    if limits.pids is not None:
        out.append(f"--pids-limit={limits.pids}")
    return out


class DockerCLI:
    """The docker command (path from config) with the worker's environment (DOCKER_HOST)."""

    def __init__(self, docker: str, owner: str) -> None:
        self.docker = docker
        self.env = helper_env(owner)

    async def run(self, *args: str, timeout: float = 30) -> tuple[int, str, str]:
        """Run to completion: (exit code, stdout, stderr)."""
        try:
            with trio.fail_after(timeout):
                r = await trio.run_process([self.docker, *args], capture_stdout=True,
                                           capture_stderr=True, check=False, env=self.env)
        except OSError as e:
            return 127, "", f"cannot run docker ({self.docker}): {e.strerror or e}"
        except trio.TooSlowError:
            return 124, "", f"docker {args[0]} timed out after {timeout:g}s"
        return r.returncode, r.stdout.decode(errors="replace"), \
            r.stderr.decode(errors="replace")

    async def open(self, *args: str, stdin: bool = False, output: bool = True,
                   merge_stderr: bool = False) -> trio.Process:
        """A long-lived helper (logs -f, attach, wait, pull)."""
        pipe, null = subprocess.PIPE, subprocess.DEVNULL
        stderr = subprocess.STDOUT if merge_stderr else pipe if output else null
        return await trio.lowlevel.open_process(
            [self.docker, *args], stdin=pipe if stdin else null,
            stdout=pipe if output else null, stderr=stderr, env=self.env)


def _error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else "docker failed"


class DockerProcess:
    """A running container, seen through its CLI helpers."""

    def __init__(self, cli: DockerCLI, name: str, pid: int | None, logs: trio.Process,
                 attach: trio.Process, waiter: trio.Process, memory_mb: int | None = None
                 ) -> None:
        self.cli = cli
        self.memory_mb = memory_mb  # the container's memory limit, for the crash reason
        self.name = name
        self.pid = pid
        assert logs.stdout is not None and attach.stdin is not None
        self.stdout: trio.abc.ReceiveStream = logs.stdout
        self.stderr: trio.abc.ReceiveStream | None = logs.stderr
        self._logs, self._attach, self._waiter = logs, attach, waiter
        self._write_lock = trio.Lock()

    async def write_line(self, line: str) -> None:
        assert self._attach.stdin is not None
        async with self._write_lock:
            await self._attach.stdin.send_all(line.encode("utf-8", "replace") + b"\n")

    async def terminate(self, timeout: float, sig: str = "SIGTERM") -> None:
        if sig != "SIGTERM":  # the game's own stop signal; the actor kills it when overdue
            await self.cli.run("kill", "--signal", sig, self.name)
            return
        # SIGTERM, then SIGKILL from docker itself after `timeout`
        # whole seconds only: rounded up, a fractional grace is never cut to nothing
        await self.cli.run("stop", "-t", str(max(0, math.ceil(timeout))), self.name,
                           timeout=timeout + 30)

    async def kill(self) -> None:
        await self.cli.run("kill", self.name)

    async def wait(self) -> int:
        while True:
            assert self._waiter.stdout is not None
            out = b""
            while data := await self._waiter.stdout.receive_some(1024):
                out += data
            await self._waiter.wait()
            try:
                return int(out.decode().strip().splitlines()[-1])
            except (ValueError, IndexError):
                pass
            # `docker wait` itself failed (the daemon restarting, the helper killed): a
            # container that still runs has not exited, so wait again
            code, text, _ = await self.cli.run(
                "inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", self.name)
            running, _, exit_code = text.strip().partition(" ")
            if code == 0 and running == "true":
                await trio.sleep(1)
                self._waiter = await self.cli.open("wait", self.name)
                continue
            return int(exit_code) if code == 0 and exit_code.isdigit() else -1

    async def update_limits(self, limits: Limits) -> str | None:
        """`docker update` of the running container's limits: None, or why docker refused.
        A limit removed from the spec stays until the next start (docker cannot lift one
        from a running container)."""
        flags = limit_args(limits)
        if not flags:
            return None
        code, _, err = await self.cli.run("update", *flags, self.name)
        if code != 0:
            return _error(err)
        self.memory_mb = limits.memory_mb or self.memory_mb
        return None

    async def exit_reason(self) -> str | None:
        code, out, _ = await self.cli.run("inspect", "-f", "{{.State.OOMKilled}}", self.name)
        return oom_reason(self.memory_mb) if code == 0 and out.strip() == "true" else None

    async def cleanup(self) -> None:
        for p in (self._attach, self._waiter):
            if p.returncode is None:
                p.kill()
        # `docker logs -f` ends by itself once the container stopped: what it still
        # carries (often the crash's last words) reaches the console first
        with trio.move_on_after(2):
            await self._logs.wait()
        self._stop_helpers()
        await self.cli.run("rm", "-f", self.name)

    def abandon(self) -> None:
        self._stop_helpers()  # the container keeps running for the next worker

    def _stop_helpers(self) -> None:
        for p in (self._logs, self._attach, self._waiter):
            if p.returncode is None:
                p.kill()



def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)

class DockerRunner:
    name = "docker"

    def __init__(self, docker: str, owner: str, network: str = "") -> None:
        self.cli = DockerCLI(docker, owner)
        self.owner = owner  # the label that marks this worker's containers
        self.network = network

    async def spawn(self, ctx: LaunchContext) -> GameProcess:
        spec = ctx.spec
        name = container_name(ctx.server_id)
        ctx.files_dir.mkdir(parents=True, exist_ok=True)
        await self.cli.run("rm", "-f", name)  # a stale container of an earlier run
        argv = ["run", "-d", "-i", "--name", name,
                "--label", f"manman.server={ctx.server_id}",
                "--label", f"manman.owner={self.owner}",
                "--label", f"manman.instance={ctx.instance}",
                "-v", f"{ctx.files_dir}:/data", *limit_args(spec.limits)]
        if self.network:
            argv += ["--network", self.network]
        if self.network not in ("none", "host"):
            for p in spec.ports:
                for proto in p.protocol.split("+"):  # `tcp+udp`: one mapping each
                    argv += ["-p", f"{p.port}:{p.port}/{proto}"]
        # values through an owner-only file, not the command line (`ps` shows that to every
        # local user); a value with a line break cannot go in that file
        env_file = ctx.files_dir.parent / "docker-run.env"
        in_file = {k: v for k, v in spec.env.items() if "\n" not in v and "\r" not in v}
        for key, value in spec.env.items():
            if key not in in_file:
                argv += ["-e", f"{key}={value}"]
        if in_file:
            _write_private(env_file, "".join(f"{k}={v}\n" for k, v in in_file.items()))
            argv += ["--env-file", str(env_file)]
        argv.append(spec.install_identifier)
        if spec.executable:
            argv.append(spec.executable)
        argv += spec.args
        try:
            code, _, err = await self.cli.run(*argv, timeout=120)
        finally:
            env_file.unlink(missing_ok=True)
        if code != 0:
            await self.cli.run("rm", "-f", name)  # a timed-out run may still have made it
            raise SpawnError(_error(err))
        try:
            return await self._attach(name, since=None, memory_mb=spec.limits.memory_mb)
        except OSError as e:  # no container may run that nobody watches
            await self.cli.run("rm", "-f", name)
            raise SpawnError(f"cannot attach to {name}: {e.strerror or e}") from None

    async def _attach(self, name: str, since: float | None, memory_mb: int | None = None
                      ) -> DockerProcess:
        code, out, _ = await self.cli.run("inspect", "-f", "{{.State.Pid}}", name)
        pid = int(out.strip()) if code == 0 and out.strip().isdigit() else None
        logs_args = ["logs", "-f"] + (["--since", f"{since:.6f}"] if since else []) + [name]
        helpers: list[trio.Process] = []
        try:
            helpers.append(await self.cli.open(*logs_args))
            helpers.append(await self.cli.open("attach", "--sig-proxy=false", name, stdin=True,
                                               output=False))
            helpers.append(await self.cli.open("wait", name))
        except OSError:
            for p in helpers:
                p.kill()
            raise
        logs, attach, waiter = helpers
        return DockerProcess(self.cli, name, pid or None, logs, attach, waiter, memory_mb)

    async def adopt(self, record: RunRecord, spec: ServerSpec, since: float | None = None
                    ) -> GameProcess | None:
        name = container_name(record.server_id)
        code, out, _ = await self.cli.run("inspect", "-f", "{{.State.Running}}", name)
        if code != 0 or out.strip() != "true":
            return None
        log.info("re-attaching to running container %s", name)
        # the limit it was started with (a PUT since applies at the next start)
        code, out, _ = await self.cli.run("inspect", "-f", "{{.HostConfig.Memory}}", name)
        memory = int(out.strip()) if code == 0 and out.strip().isdigit() else 0
        return await self._attach(name, since=since, memory_mb=(memory >> 20) or None)

    async def remove_leftover(self, record: RunRecord) -> list[int]:
        name = container_name(record.server_id)
        code, out, _ = await self.cli.run("inspect", "-f", "{{.State.Pid}}", name)
        if code != 0:
            return []
        await self.cli.run("rm", "-f", name)
        return [int(out.strip())] if out.strip().isdigit() else [0]

    async def remove_strays(self, known: set[str]) -> list[str]:
        """Containers with this worker's label that belong to no server it knows."""
        code, out, _ = await self.cli.run(
            "ps", "-a", "--filter", f"label=manman.owner={self.owner}", "--format",
            "{{.Names}}")
        if code != 0:
            return []
        removed = []
        for name in out.split():
            if name.startswith("manman-") and name[len("manman-"):] not in known:
                await self.cli.run("rm", "-f", name)
                removed.append(name)
        return removed

