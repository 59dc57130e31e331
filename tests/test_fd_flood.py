"""File descriptors under a connection flood: a real `manman worker` child process with a low
open-files limit, and idle, half-sent or at-once-closed connections from this test. What is
checked afterwards is what the kernel says: the child's limits and open sockets in /proc, and
the test's sockets closed by the other side."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import trio

from tests.conftest import ManmanProcess


def nofile(soft: int, hard: int) -> Callable[[], None]:
    """A preexec_fn giving the child these open-files limits."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files line")


def sockets_of(pid: int) -> int:
    """The child's open sockets, counted in /proc: what the kernel says it holds."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


async def stop(proc: ManmanProcess) -> None:
    """SIGKILL and reap: the child outlives no test."""
    proc.stop()
    if proc.proc is not None:
        await proc.wait(5)


def worker(tmp_path: Path, header_timeout: float, soft: int, hard: int) -> ManmanProcess:
    env = {"MANMAN_WORKER_HOST_URL": "", "MANMAN_WORKER_LISTEN": "127.0.0.1:0",
           "MANMAN_WORKER_DATA_DIR": str(tmp_path / "worker"),
           "MANMAN_WORKER_HEADER_TIMEOUT": str(header_timeout)}
    return ManmanProcess(["worker"], env=env, preexec=nofile(soft, hard))


def connect(addr: tuple[str, int], send: bytes = b"") -> socket.socket:
    """An established TCP connection, non-blocking once made."""
    s = socket.create_connection(addr, timeout=2)
    if send:
        s.sendall(send)
    s.setblocking(False)
    return s


def ask_healthz(s: socket.socket) -> bytes:
    """One GET /healthz on an open (blocking) connection; the whole answer (its JSON body
    ends it), or what came before the worker closed the connection."""
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    answer = b""
    while not answer.endswith(b"}"):
        data = s.recv(65536)
        if not data:
            break
        answer += data
    return answer


async def flood(pid: int, addr: tuple[str, int], count: int, done: Callable[[], bool],
                into: list[socket.socket]) -> None:
    """Open `count` connections into `into`, in batches the child accepts before the next
    (a burst larger than the listen backlog of 100 drops SYNs, which come back a second
    later), until `done()`: from then on they wait in the backlog. Every fifth sends half a
    request line."""
    before, made = sockets_of(pid), 0
    while made < count:
        for _ in range(min(40, count - made)):
            into.append(connect(addr, b"GET /healthz HT" if made % 5 == 0 else b""))
            made += 1
        if not done():
            await until(lambda want=before + made: done() or sockets_of(pid) >= want, 2)


def closed_by_peer(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset, or never connected: gone either way
        return True


async def until(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until `check()` held; fails after `timeout`."""
    start = time.monotonic()
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.05)
    return time.monotonic() - start


async def test_soft_open_files_limit_is_raised_to_the_hard_one_at_start(
        tmp_path: Path, bg: trio.Nursery) -> None:
    hard = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 8192)
    proc = worker(tmp_path, 10, 256, hard)
    try:
        await proc.start(bg)
        assert proc.proc is not None
        assert open_files_limit(proc.proc.pid) == (hard, hard)
        await until(lambda: any("open files limit" in line for line in proc.log), 5)
        said = [line for line in proc.log if "open files limit" in line]
        assert len(said) == 1 and f"INFO manman: open files limit: {hard} (raised from 256)" \
            in said[0], proc.log
    finally:
        await stop(proc)


async def test_connections_closed_before_a_byte_free_their_sockets_at_once(
        tmp_path: Path, bg: trio.Nursery) -> None:
    # a header timeout far longer than the wait: only the client's close can free them
    proc = worker(tmp_path, 30, 1024, 1024)
    conns: list[socket.socket] = []
    try:
        url = await proc.start(bg)
        assert proc.proc is not None
        pid = proc.proc.pid
        addr = (urlsplit(url).hostname or "", urlsplit(url).port or 0)
        before = sockets_of(pid)
        await flood(pid, addr, 200, lambda: False, conns)  # all accepted
        for s in conns:
            s.close()
        took = await until(lambda: sockets_of(pid) <= before, 3)
        assert took < 2
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"{url}/healthz")).status_code == 200
    finally:
        for s in conns:
            s.close()
        await stop(proc)


async def test_healthz_answers_soon_after_a_flood_of_idle_connections_hits_emfile(
        tmp_path: Path, bg: trio.Nursery) -> None:
    # soft = hard: raising the limit cannot help, the first-request timeout must
    header_timeout = 2.0
    proc = worker(tmp_path, header_timeout, 256, 256)
    conns: list[socket.socket] = []
    try:
        url = await proc.start(bg)
        assert proc.proc is not None
        pid = proc.proc.pid
        addr = (urlsplit(url).hostname or "", urlsplit(url).port or 0)
        # a connection that asked once is kept alive (75 s), not held to the header timeout
        kept = socket.create_connection(addr, timeout=5)
        conns.append(kept)
        assert ask_healthz(kept).startswith(b"HTTP/1.1 200")
        before = sockets_of(pid)
        # more connections than the limit allows (the rest wait in the backlog): the worker
        # runs out of file descriptors and its accept loop fails with EMFILE
        emfile = lambda: any("EMFILE" in line for line in proc.log)  # noqa: E731
        await flood(pid, addr, 280, emfile, conns)
        await until(emfile, 2)
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=header_timeout + 5) as client:
            r = await client.get(f"{url}/healthz")
        assert r.status_code == 200
        assert time.monotonic() - started < header_timeout + 2
        # every flood connection was closed by the worker, and its sockets are free again
        await until(lambda: all(closed_by_peer(s) for s in conns[1:]), header_timeout * 2 + 3)
        await until(lambda: sockets_of(pid) <= before, 3)
        assert ask_healthz(kept).startswith(b"HTTP/1.1 200")
        errors = [line for line in proc.log if "EMFILE" in line]
        assert len(errors) == 1 and "Traceback" not in "\n".join(proc.log), errors
    finally:
        for s in conns:
            s.close()
        await stop(proc)
