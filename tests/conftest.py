"""Shared fixtures: the asyncio bridge loop, real workers on 127.0.0.1:0, API clients."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from manman import aio
from manman.config import Config, WorkerConfig

HERE = Path(__file__).parent
FAKEGAME = str(HERE / "fakegame.py")
PYTHON = sys.executable


def steamcmd_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An executable `steamcmd` (tests/steamcmd_emulator.py) whose installed game is the fake
    game server; its state lives under tmp_path."""
    steamcmd = tmp_path / "steamcmd"
    steamcmd.write_text(f"#!{PYTHON}\n" + (HERE / "steamcmd_emulator.py").read_text())
    steamcmd.chmod(0o755)
    monkeypatch.setenv("STEAMCMD_EMU_HOME", str(tmp_path / "steam-home"))
    monkeypatch.setenv("STEAMCMD_EMU_GAME", f"{PYTHON} -u {FAKEGAME}")
    return steamcmd


def processes_under(directory: Path) -> set[int]:
    """Live processes whose working directory is below `directory` (a server's files)."""
    import os

    from manman.worker import procs

    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if cwd.startswith(str(directory)) and procs.is_running(int(entry)):
                out.add(int(entry))
    return out


def fake_spec(name: str, *args: str, **fields: Any) -> dict[str, Any]:
    """A server spec running the fake game server with `args`; `running` once it printed
    its ready line (after its start-up: children, listening port)."""
    spec: dict[str, Any] = {"name": name, "game_id": f"exec:{PYTHON}",
                            "args": ["-u", FAKEGAME, *args], "stop_command": "quit",
                            "stop_timeout": 5, "ready_pattern": "^Server ready$"}
    spec.update(fields)
    return spec


@pytest.fixture
async def aio_loop() -> AsyncIterator[object]:
    async with aio.open_loop() as loop:
        yield loop


@pytest.fixture
async def bg(aio_loop: object) -> AsyncIterator[trio.Nursery]:
    """A nursery for background services; its tasks see the asyncio bridge loop (pytest-trio's
    own `nursery` fixture is opened before it)."""
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


class Client:
    """An HTTP client of one manman API with the conventions of docs/spec.md."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.token = token
        self.http = httpx.AsyncClient(base_url=base_url, timeout=20,
                                      headers={"Authorization": f"Bearer {token}"})

    async def request(self, method: str, path: str, expect: int | None = None,
                      **kw: Any) -> httpx.Response:
        r = await self.http.request(method, path, **kw)
        if expect is not None:
            assert r.status_code == expect, (method, path, r.status_code, r.text)
        return r

    async def get(self, path: str, expect: int | None = 200, **kw: Any) -> Any:
        return (await self.request("GET", path, expect, **kw)).json()

    async def post(self, path: str, json: Any = None, expect: int | None = None,
                   **kw: Any) -> Any:
        return (await self.request("POST", path, expect, json=json, **kw)).json()

    async def wait_for(self, server: str, *, timeout: float = 15, **want: Any) -> dict[str, Any]:
        """Poll a server until every field in `want` has that value."""
        last: dict[str, Any] = {}
        with trio.move_on_after(timeout):
            while True:
                r = await self.request("GET", f"/server/{server}")
                if r.status_code != 404:  # 404: not created yet (a seed, a push)
                    assert r.status_code == 200, r.text
                    last = r.json()
                    if all(last.get(k) == v for k, v in want.items()):
                        return last
                await trio.sleep(0.02)
        raise AssertionError(f"server {server} never reached {want}; last: {last}")

    async def wait_line(self, server: str, text: str, *, timeout: float = 10,
                        since: int = 0, prefix: bool = False) -> dict[str, Any]:
        """Poll the console history until a line with exactly `text` (or, with prefix,
        starting with `text `) shows up."""
        with trio.move_on_after(timeout):
            while True:
                page = await self.get(f"/server/{server}/log?since={since}&limit=10000")
                for line in page["lines"]:
                    if line["text"] == text or (prefix and line["text"].startswith(text + " ")):
                        return line
                await trio.sleep(0.02)
        raise AssertionError(f"no console line {text!r} in {server}")

    async def aclose(self) -> None:
        await self.http.aclose()


def worker_config(tmp_path: Path, **over: Any) -> Config:
    fields: dict[str, Any] = {"host_url": "", "listen": "127.0.0.1:0",
                              "data_dir": tmp_path / "worker", "api_token": "test-worker-token",
                              "name": "test-worker"}
    fields.update(over)
    return Config(worker=WorkerConfig(**fields))


class RunningWorker:
    def __init__(self, handle: Any, client: Client) -> None:
        self.handle = handle
        self.agent = handle.agent
        self.url = handle.url
        self.api = client

    async def shutdown(self) -> None:
        self.agent.request_shutdown()
        with trio.fail_after(30):
            await self.agent.stopped.wait()


@pytest.fixture
async def worker(tmp_path: Path, bg: trio.Nursery) -> AsyncIterator[RunningWorker]:
    """A standalone worker, in this process, on 127.0.0.1:0."""
    from manman.worker.main import run_worker

    cfg = worker_config(tmp_path)
    handle = await bg.start(run_worker, cfg)
    client = Client(handle.url, "test-worker-token")
    w = RunningWorker(handle, client)
    try:
        yield w
    finally:
        await w.shutdown()
        await client.aclose()


class ManmanProcess:
    """`python -m manman …` as a real child process; its log is kept for the test to read."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None,
                 preexec: Callable[[], None] | None = None) -> None:
        self.args = args
        self.env = env
        self.preexec = preexec  # run in the child before exec (its limits)
        self.proc: trio.Process | None = None
        self.log: list[str] = []
        self._ready = trio.Event()
        self.url: str | None = None

    async def start(self, nursery: trio.Nursery, ready_text: str = "listening on ",
                    timeout: float = 30) -> str:
        import os
        import subprocess

        env = {**os.environ, **(self.env or {})}
        self.proc = await trio.lowlevel.open_process(
            [PYTHON, "-m", "manman", *self.args], stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=env, cwd=str(HERE.parent), preexec_fn=self.preexec)
        nursery.start_soon(self._drain, ready_text)
        with trio.fail_after(timeout):
            await self._ready.wait()
        assert self.url is not None, "\n".join(self.log)
        return self.url

    async def _drain(self, ready_text: str) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        buf = b""
        while True:
            data = await self.proc.stderr.receive_some(65536)
            if not data:
                self._ready.set()
                return
            buf += data
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                self.log.append(line)
                if ready_text in line and self.url is None:
                    self.url = line.split(ready_text, 1)[1].split()[0]
                    self._ready.set()

    def kill9(self) -> None:
        import signal

        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        with trio.fail_after(timeout):
            return await self.proc.wait()

    def stop(self) -> None:
        """Last resort for a test that failed half-way: nothing may outlive the test (nor
        what its worker left in cgroups: no later worker starts on its data_dir)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            with contextlib.suppress(ChildProcessError, OSError):  # dead, not reaped (trio does)
                os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT)
        data_dir = (self.env or {}).get("MANMAN_WORKER_DATA_DIR")
        if data_dir:
            remove_worker_cgroups(Path(data_dir))


def remove_worker_cgroups(data_dir: Path) -> None:
    """What a worker killed for good left in its servers' cgroups (docs/spec.md "Limits"):
    their processes killed, the cgroups removed."""
    import contextlib
    import sqlite3

    from manman.worker.limits.manager import WorkerLimits

    db = data_dir / "worker.sqlite3"
    if not db.exists():
        return
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'owner'").fetchone()
    if row:
        from manman.worker.limits import cgroups

        limits = WorkerLimits()
        limits.start(row[0])
        for sid in cgroups.server_ids(limits.hierarchy, row[0]):
            group = limits.group(sid)
            if group is not None:  # a game of the killed worker may still be in it: rmdir waits
                group.kill_all()
        limits.close(set())


def pids_with(marker: str) -> list[int]:
    """Live processes whose command line holds `marker` (a test's unique argument)."""
    import os

    from manman.worker import procs

    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmd and procs.is_running(int(entry)):
                found.append(int(entry))
    return found


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- PostgreSQL: one embedded server for the session (or MANMAN_TEST_DATABASE_URL), a fresh
# database per test ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_base_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import os
    import warnings

    url = os.environ.get("MANMAN_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(tmp_path_factory.mktemp("pg") / "data",
                                     cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture
async def database_url(pg_base_url: str, aio_loop: object) -> AsyncIterator[str]:
    """A new, empty database on the test PostgreSQL."""
    import secrets
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg

    name = f"manman_test_{secrets.token_hex(6)}"
    conn = await aio.call(asyncpg.connect, pg_base_url)
    try:
        await aio.call(conn.execute, f'CREATE DATABASE "{name}"')
    finally:
        await aio.call(conn.close)
    parts = urlsplit(pg_base_url)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    conn = await aio.call(asyncpg.connect, pg_base_url)
    try:
        await aio.call(conn.execute, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await aio.call(conn.close)


ADMIN = "test-admin-token"
JOIN = "test-join-token"


def host_config(tmp_path: Path, database_url: str, **over: Any) -> Config:
    from manman.config import HostConfig

    fields: dict[str, Any] = {"listen": "127.0.0.1:0", "database_url": database_url,
                              "data_dir": tmp_path / "host", "admin_token": ADMIN,
                              "join_token": JOIN, "worker_timeout": 1.5, "worker_expiry": 0,
                              "flush_interval": 0.1}
    fields.update(over)
    return Config(host=HostConfig(**fields))


def hosted_worker_config(tmp_path: Path, host_url: str, name: str, **over: Any) -> Config:
    fields: dict[str, Any] = {"host_url": host_url, "join_token": JOIN, "name": name,
                              "listen": "127.0.0.1:0", "data_dir": tmp_path / name,
                              "heartbeat_interval": 0.2}
    fields.update(over)
    return Config(worker=WorkerConfig(**fields))


class RunningHost:
    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.url = handle.url
        self.api = Client(handle.url, ADMIN)
        self.control = handle.control
        self.fleet = handle.control.fleet


@pytest.fixture
async def host(tmp_path: Path, database_url: str, bg: trio.Nursery
               ) -> AsyncIterator[RunningHost]:
    from manman.host.main import run_host

    handle = await bg.start(run_host, host_config(tmp_path, database_url))
    h = RunningHost(handle)
    try:
        yield h
    finally:
        await h.api.aclose()
        handle.stop()
        with trio.fail_after(20):
            await handle.stopped.wait()


async def start_hosted_worker(bg: trio.Nursery, tmp_path: Path, host: RunningHost,
                              name: str, **over: Any) -> RunningWorker:
    from manman.worker.main import run_worker

    handle = await bg.start(run_worker, hosted_worker_config(tmp_path, host.url, name, **over))
    return RunningWorker(handle, Client(handle.url, handle.secrets.admin_secret))


@pytest.fixture
async def hosted(tmp_path: Path, host: RunningHost, bg: trio.Nursery) -> AsyncIterator[Any]:
    """Start workers joined to `host`; they are shut down before the host stops."""
    started: list[RunningWorker] = []

    async def start(name: str, **over: Any) -> RunningWorker:
        w = await start_hosted_worker(bg, tmp_path, host, name, **over)
        started.append(w)
        return w

    yield start
    for w in started:
        if not w.agent.stopped.is_set():
            await w.shutdown()
        await w.api.aclose()


# -- a real dockerd for the docker tests (skipped, with the reason, where it cannot run) ----

DOCKER_IMAGE = "manman-test/busybox:latest"


@pytest.fixture(scope="session")
def docker_host() -> Any:
    """A dockerd of the tests' own, with a busybox image imported from the local disk (no
    registry is reachable). Yields its DOCKER_HOST."""
    from tests.dockerd import DockerUnavailable, running_dockerd

    try:
        with running_dockerd(DOCKER_IMAGE) as host:
            yield host
    except DockerUnavailable as e:
        pytest.skip(str(e))


# -- a small disk that fills up: a tmpfs of our own (root only) --------------------------------


class TinyDisk:
    """A tmpfs of a few hundred KiB mounted on a test's directory, and a filler file that
    takes what is left of it (a full disk) until `free()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        """Take every free block (what is left is less than a page)."""
        import errno
        import os

        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 16, 4096, 512, 64, 1):
                while True:
                    try:
                        if os.write(fd, b"\0" * size) < size:
                            break
                    except OSError as e:
                        assert e.errno == errno.ENOSPC, e
                        break
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[TinyDisk]:
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("a full disk is staged on a tmpfs of the test's own, which needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield TinyDisk(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def on_a_terminal(argv: list[str], timeout: float = 30, columns: int = 120
                        ) -> tuple[int, str]:
    """Runs a command with a pseudo-terminal as stdout and stderr: its exit code and what it
    drew."""
    import pty

    leader, follower = pty.openpty()
    try:
        proc = await trio.lowlevel.open_process(argv, stdout=follower, stderr=follower,
                                                env={**os.environ, "COLUMNS": str(columns)})
        os.close(follower)
        follower = -1
        out = b""
        with trio.fail_after(timeout):
            while True:
                try:
                    data = await trio.to_thread.run_sync(os.read, leader, 4096)
                except OSError:  # the terminal closed: the command ended
                    break
                if not data:
                    break
                out += data
            code = await proc.wait()
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    return code, out.decode(errors="replace")
