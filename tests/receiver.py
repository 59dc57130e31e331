"""A real HTTP receiver for webhook tests, on 127.0.0.1: what it answers depends on the path.

/ok → 200; /fail → 500; /busy → 429 with `Retry-After: 1` the first time, then 200;
/hang → reads the request and never answers; /slow → 200 after 0.3 s (to count the
attempts in flight); /gone → 410. Every request is kept (path, headers, body, time)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import trio


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    busy_seen: int = 0
    in_flight: dict[str, int] = field(default_factory=dict)  # by path
    max_in_flight: dict[str, int] = field(default_factory=dict)
    override: dict[str, int] = field(default_factory=dict)  # path -> status, set by a test

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def serve(self, *, task_status: trio.TaskStatus[Receiver] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (ln.partition(":") for ln in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(body) < length:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                body += chunk
            self.requests.append(Received(path, headers, body, time.monotonic()))
            now = self.in_flight[path] = self.in_flight.get(path, 0) + 1
            self.max_in_flight[path] = max(self.max_in_flight.get(path, 0), now)
            try:
                if path == "/hang":  # until the client gives up and closes
                    while await stream.receive_some(65536):
                        pass
                    return
                status, extra = await self._answer(path)
            finally:
                self.in_flight[path] -= 1
            reason = {200: "OK", 410: "Gone", 429: "Too Many Requests"}.get(status, "Error")
            await stream.send_all(
                f"HTTP/1.1 {status} {reason}\r\nContent-Length: 2\r\nConnection: close\r\n"
                f"{extra}\r\nok".encode())

    async def _answer(self, path: str) -> tuple[int, str]:
        if path in self.override:
            return self.override[path], ""
        if path == "/fail":
            return 500, ""
        if path == "/gone":
            return 410, ""
        if path == "/busy":
            self.busy_seen += 1
            if self.busy_seen == 1:
                return 429, "Retry-After: 1\r\n"
            return 200, ""
        if path == "/slow":
            await trio.sleep(0.3)
        return 200, ""
