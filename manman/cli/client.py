"""The CLI's client of a host: where it is, its token, HTTP calls, and the console follower
that reconnects and resumes from the last seq it printed."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from manman.backoff import Backoff
from manman.config import Config, parse_listen
from manman.models import check_api_url


class ClientError(Exception):
    """One line for stderr; exit code 1."""


def discover(cfg: Config, host_url: str | None, token: str | None) -> tuple[str, str]:
    """The host URL and admin token: flags, then MANMAN_URL / MANMAN_TOKEN, then the config
    and the host's data_dir on this machine."""
    url = host_url or os.environ.get("MANMAN_URL")
    if not url:
        host, port = parse_listen(cfg.host.listen)
        if port == 0:
            url = cfg.worker.host_url
        else:
            host = "127.0.0.1" if host in ("0.0.0.0", "") else host
            url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    if not url:
        raise ClientError("no host URL: give --host-url or MANMAN_URL")
    try:
        check_api_url(url.rstrip("/"))
    except ValueError:
        raise ClientError(f"not a host URL: {url[:200]!r} (expected http://HOST:PORT)"
                          ) from None
    tok = token or os.environ.get("MANMAN_TOKEN") or cfg.host.admin_token
    if not tok:
        path = cfg.host.data_dir / "admin-token"
        try:
            tok = path.read_text(encoding="utf-8").strip()
        except OSError:
            raise ClientError(f"no admin token: give --token or MANMAN_TOKEN (none in {path})"
                              ) from None
    return url.rstrip("/"), tok


class HostClient:
    """Calls to the host API; errors become ClientError with the message of the error JSON."""

    def __init__(self, url: str, token: str, timeout: float = 30) -> None:
        self.url = url
        self.token = token
        self.http = httpx.Client(base_url=url, timeout=timeout,
                                 headers={"Authorization": f"Bearer {token}"})

    def call(self, method: str, path: str, json: Any = None,
             params: dict[str, Any] | None = None, ok: tuple[int, ...] = (200, 201, 202),
             timeout: float | None = None) -> Any:
        try:
            r = self.http.request(method, path, json=json, params=params,
                                  timeout=timeout or self.http.timeout)
        except httpx.HTTPError as e:
            raise ClientError(f"cannot reach the host at {self.url}: {type(e).__name__}") \
                from None
        except httpx.InvalidURL as e:
            raise ClientError(f"not a usable URL: {e}") from None
        if r.status_code not in ok:
            try:
                err = r.json()["error"]
                raise ClientError(f"{err['message']} ({r.status_code} {err['code']})")
            except (ValueError, KeyError, TypeError):
                raise ClientError(f"host answered {r.status_code}") from None
        try:
            return r.json() if r.content else None
        except ValueError:  # a proxy's page, another service on that port
            raise ClientError(f"{self.url} answered {r.status_code} with something that is "
                              "not manman's JSON") from None

    def server(self, key: str) -> dict[str, Any]:
        return self.call("GET", f"/server/{key}")

    def close(self) -> None:
        self.http.close()


class Frame(msgspec.Struct):
    type: str
    lines: list[dict[str, Any]] | None = None
    state: str | None = None
    from_seq: int | None = None
    to_seq: int | None = None
    reason: str | None = None
    code: str | None = None
    message: str | None = None
    first_seq: int | None = None
    next_seq: int | None = None


_frame = msgspec.json.Decoder(Frame).decode


@dataclass
class Follow:
    """Where a follower is: the next seq to print."""

    next_seq: int | None
    tail: int
    unsent: list[str] = field(default_factory=list)  # commands a dropped connection took


async def follow_console(url: str, token: str, server_id: str, start: Follow,
                         on_frame: Callable[[Frame], None],
                         outgoing: trio.MemoryReceiveChannel[str] | None = None,
                         on_status: Callable[[str], object] | None = None) -> None:
    """Print a server's console until cancelled: reconnect with backoff after a dropped
    connection and resume from the last seq printed, so nothing is lost or printed twice."""
    ws_base = url.replace("https://", "wss://").replace("http://", "ws://")
    # jittered: the followers of one host that went away do not all come back at once
    backoff = Backoff(0.3, 15, jitter=2 / 3)
    while True:
        query = f"since={start.next_seq}" if start.next_seq is not None else \
            f"tail={start.tail}"
        target = f"{ws_base}/server/{server_id}/log/ws?{query}"
        problem: str | None = None
        refused: int | None = None
        try:
            async with open_websocket_url(
                    target, extra_headers=[(b"Authorization", f"Bearer {token}".encode())],
                    receive_buffer_size=None, max_message_size=4 << 20) as ws:
                backoff.reset()
                await _session(ws, start, on_frame, outgoing)
        except* ServerGone as group:
            raise ClientError(str(group.exceptions[0])) from None
        except* HandshakeError as group:
            status = getattr(group.exceptions[0], "status_code", None)
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                refused = status  # asking again cannot help
            problem = f"console unavailable ({status})"
        except* (ConnectionClosed, OSError, trio.BrokenResourceError) as group:
            problem = f"connection lost ({type(group.exceptions[0]).__name__})"
        if refused is not None:
            raise ClientError(f"the host refused the console ({refused})")
        if on_status:
            on_status(f"{problem or 'connection closed'}; reconnecting")
        await trio.sleep(backoff.next())


async def _session(ws: Any, pos: Follow, on_frame: Callable[[Frame], None],
                   outgoing: trio.MemoryReceiveChannel[str] | None) -> None:
    async with trio.open_nursery() as nursery:
        if outgoing is not None:
            nursery.start_soon(_send_commands, ws, outgoing, pos)
        while True:
            frame = _frame(await ws.get_message())
            if frame.type == "hello" and frame.next_seq is not None:
                if pos.next_seq is None:
                    # where the server starts this view: a reconnect goes on from there
                    # even when no line came before it
                    pos.next_seq = max(frame.first_seq or 0, frame.next_seq - pos.tail)
                elif frame.next_seq < pos.next_seq:
                    # numbers the worker gave out were lost (a failed disk): follow its
                    # numbering, or every new line would be taken for one already shown
                    on_frame(Frame(type="error", code="seq_reset", message=(
                        f"the console's numbering went back from {pos.next_seq} to "
                        f"{frame.next_seq}")))
                    pos.next_seq = frame.next_seq
            elif frame.type == "error" and frame.code == "not_found":
                raise ServerGone(frame.message or "the server was deleted")
            elif frame.type == "lines" and frame.lines:
                if pos.next_seq is not None and frame.lines[0]["seq"] < pos.next_seq:
                    # a resume that overlaps what was printed: never print a seq twice
                    frame.lines = [ln for ln in frame.lines if ln["seq"] >= pos.next_seq]
                    if not frame.lines:
                        continue
                pos.next_seq = frame.lines[-1]["seq"] + 1
            elif frame.type == "gap" and frame.to_seq is not None:
                pos.next_seq = frame.to_seq + 1
            on_frame(frame)


class ServerGone(Exception):
    """The console's server was deleted: following it further cannot help."""


async def _send_commands(ws: Any, outgoing: trio.MemoryReceiveChannel[str], pos: Follow
                         ) -> None:
    async def send(line: str) -> None:
        try:
            await ws.send_message(msgspec.json.encode({"type": "command",
                                                       "data": line}).decode())
        except (ConnectionClosed, trio.BrokenResourceError):
            pos.unsent.append(line)  # not delivered: sent first on the next connection
            raise

    while pos.unsent:
        await send(pos.unsent.pop(0))
    async for line in outgoing:
        await send(line)
