"""Shared by the benchmarks: a real worker (or host) as a child process, and its API."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TOKEN = "bench-token"


class Manman:
    """`python -m manman <args>` as a child process; `url` once it listens."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.env = env or {}
        self.proc: trio.Process | None = None
        self.url = ""
        self._ready = trio.Event()

    async def start(self, nursery: trio.Nursery) -> str:
        self.proc = await trio.lowlevel.open_process(
            [PYTHON, "-m", "manman", *self.args], stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env={**os.environ, **self.env}, cwd=str(ROOT))
        nursery.start_soon(self._drain)
        with trio.fail_after(60):
            await self._ready.wait()
        if not self.url:
            raise RuntimeError("manman did not start")
        return self.url

    async def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        buf = b""
        while data := await self.proc.stderr.receive_some(65536):
            buf += data
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                text = raw.decode(errors="replace")
                if "listening on " in text and not self.url:
                    self.url = text.split("listening on ", 1)[1].split()[0]
                    self._ready.set()
                elif "ERROR" in text or "Traceback" in text:
                    print("manman:", text, file=sys.stderr)
        self._ready.set()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            with trio.move_on_after(30):
                await self.proc.wait()
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


ADMIN, JOIN = "bench-admin", "bench-join"


async def host_and_worker(nursery: trio.Nursery, prefix: str, worker_extra: str = ""
                          ) -> tuple[Manman, str, Manman, str, Path]:
    """A host process (embedded PostgreSQL) and a worker process joined to it: (host, its
    URL, worker, its URL, the data directory)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    (d / "host.toml").write_text(
        f'[host]\nlisten = "127.0.0.1:0"\ndata_dir = "{d / "host"}"\n'
        f'admin_token = "{ADMIN}"\njoin_token = "{JOIN}"\n')
    host = Manman(["host", "--config", str(d / "host.toml")])
    host_url = await host.start(nursery)
    (d / "worker.toml").write_text(
        f'[worker]\nhost_url = "{host_url}"\njoin_token = "{JOIN}"\n'
        f'listen = "127.0.0.1:0"\ndata_dir = "{d / "worker"}"\n{worker_extra}\n')
    worker = Manman(["worker", "--config", str(d / "worker.toml")])
    worker_url = await worker.start(nursery)
    return host, host_url, worker, worker_url, d


def worker_config(extra: str = "") -> Path:
    d = Path(tempfile.mkdtemp(prefix="manman-bench-"))
    cfg = d / "worker.toml"
    cfg.write_text(f"""
[worker]
host_url = ""
listen = "127.0.0.1:0"
data_dir = "{d / 'data'}"
api_token = "{TOKEN}"
{extra}
""")
    return cfg


def client(url: str, token: str = TOKEN) -> httpx.AsyncClient:
    """An API client: a bench worker's (TOKEN) or, with token=ADMIN, a bench host's."""
    return httpx.AsyncClient(base_url=url, timeout=60,
                             headers={"Authorization": f"Bearer {token}"})


async def wait_state(api: httpx.AsyncClient, server: str, state: str, timeout: float = 60
                     ) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while True:
            s = (await api.get(f"/server/{server}")).json()
            if s["state"] == state:
                return s
            await trio.sleep(0.05)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def now() -> float:
    return time.perf_counter()


class RawClient:
    """A keep-alive HTTP/1.1 client with pre-built requests: the load generator must cost
    far less than the server it measures. Reconnects when the server ends a connection
    (hypercorn closes one after 1,000 requests)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.stream: trio.SocketStream | None = None
        self.buf = b""

    async def roundtrip(self, request: bytes) -> int:
        if self.stream is None:
            self.stream = await trio.open_tcp_stream(self.host, self.port)
            self.buf = b""
        stream = self.stream
        await stream.send_all(request)
        while b"\r\n\r\n" not in self.buf:
            data = await stream.receive_some(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.buf += data
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name = line[:line.find(b":")].strip().lower()
            if name == b"content-length":
                length = int(line.split(b":", 1)[1])
            elif name == b"connection" and b"close" in line.lower():
                close = True
        while len(rest) < length:
            rest += await stream.receive_some(65536)
        self.buf = rest[length:]
        if close:
            await self.aclose()
        return status

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None


def build_request(method: str, path: str, token: str, body: bytes = b"") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
