"""Calls from the host to its workers: HTTP (httpx on trio) and the console websocket proxy.

The relay is where a worker's HTTP reply ends: each call returns what the worker answered,
decoded, or raises the domain error the caller should see (`manman.errors`)."""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import msgspec
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from manman import errors, models
from manman.host.fleet import WorkerRec
from manman.http import auth

log = logging.getLogger("manman.host.relay")

CALL_TIMEOUT = 5.0
STREAM_TIMEOUT = 60.0  # a file transfer: the longest pause between two chunks


class Unreachable(errors.Unavailable):
    """The worker did not answer (down, network, timeout)."""


# a worker's refusal that means the same to the host's caller keeps its status
_PASSED_ON: dict[int, type[errors.ManmanError]] = {
    400: errors.BadRequest, 404: errors.NotFound, 409: errors.Conflict, 410: errors.Gone,
    422: errors.Invalid, 503: errors.Unavailable, 507: errors.InsufficientStorage}


def worker_error(status: int, content: bytes) -> errors.ManmanError:
    """A worker's failure for the caller: its 4xx (but 401/403), 503 and 507 mean the same to
    the caller; its 401/403 and other 5xx are the worker's trouble, not the caller's (502: a
    401 would tell a valid admin their token is wrong)."""
    try:
        err = msgspec.json.decode(content, type=models.ErrorReply).error
    except msgspec.MsgspecError:
        return errors.WorkerError(f"worker answered {status}")
    if status == 403 and err.code == "denied":  # the spec's file_denylist: the caller's
        return errors.Forbidden(err.message, err.code)
    passed_on = _PASSED_ON.get(status)
    if passed_on is not None:
        return passed_on(err.message, err.code)
    if 400 <= status < 500 and status not in (401, 403):
        return errors.Relayed(err.message, err.code, status)
    return errors.WorkerError(f"worker answered {status}: {err.message[:200]}")


class HostSecrets:
    """The host's secrets. Worker tokens are derived from `host_secret` and never stored."""

    def __init__(self, admin_token: str, join_token: str, host_secret: str) -> None:
        self.admin_token = admin_token
        self.join_token = join_token
        self.host_secret = host_secret

    def worker_token(self, worker_id: str, version: int) -> str:
        """`mmw_<worker id>_<mac>`: the id tells the host whose token it is."""
        mac = auth.derive_token(self.host_secret, f"worker:{worker_id}:{version}")
        return f"mmw_{worker_id}_{mac}"

    def console_key(self, w: WorkerRec) -> bytes:
        return auth.console_key(self.worker_token(w.id, w.token_version))


# what a path segment the host forwards may be: ids and route words; a client's id with
# anything else (a control character, `..`, `%`) names nothing a worker holds
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def checked_path(path: str) -> str:
    """`path` as forwarded; NotFound for a segment no worker route or id can be."""
    for seg in path.split("/")[1:]:
        if not _SEGMENT.fullmatch(seg):
            raise errors.NotFound(f"no such resource: {seg[:64]!r}")
    return path


class Relay:
    """Calls to workers over one shared keep-alive HTTP client (a client per worker costs
    thousands of objects each: at fleet scale they dominated the host's GC pauses); each
    call carries that worker's token."""

    def __init__(self, secrets: HostSecrets) -> None:
        self.secrets = secrets
        self._http = httpx.AsyncClient(timeout=CALL_TIMEOUT, limits=httpx.Limits(
            max_connections=1000, max_keepalive_connections=200))

    async def _request(self, w: WorkerRec, method: str, path: str, *, json: Any = None,
                       params: dict[str, str] | None = None, timeout: float = CALL_TIMEOUT
                       ) -> httpx.Response:
        if not w.api_url:
            raise Unreachable(f"worker {w.name} has not registered an API URL")
        token = self.secrets.worker_token(w.id, w.token_version)
        url = w.api_url + checked_path(path)
        try:
            return await self._http.request(
                method, url, json=json, params=params, timeout=timeout,
                headers={"Authorization": f"Bearer {token}"})
        except Exception as e:  # HTTPError, and httpx's InvalidURL for a URL it cannot use
            raise Unreachable(f"worker {w.name} unreachable: {type(e).__name__}") from None

    async def call(self, w: WorkerRec, method: str, path: str, *, json: Any = None,
                   params: dict[str, str] | None = None, timeout: float = CALL_TIMEOUT
                   ) -> bytes:
        """The body of the worker's answer; a failure as the caller's domain error
        (`Unreachable` when it did not answer)."""
        r = await self._request(w, method, path, json=json, params=params, timeout=timeout)
        if r.status_code >= 400:
            raise worker_error(r.status_code, r.content)
        return r.content

    async def open_stream(self, w: WorkerRec, method: str, path: str, *,
                          params: dict[str, str], content: Any = None,
                          headers: dict[str, str] | None = None,
                          timeout: float = STREAM_TIMEOUT) -> httpx.Response:
        """The worker's answer with its body still to read (`aiter_raw`; the caller
        `aclose`s it), a request body streamed from `content`; a failure as the caller's
        domain error. `timeout` bounds each read and write, not the whole transfer."""
        if not w.api_url:
            raise Unreachable(f"worker {w.name} has not registered an API URL")
        token = self.secrets.worker_token(w.id, w.token_version)
        req = self._http.build_request(
            method, w.api_url + checked_path(path), params=params, content=content,
            timeout=timeout,
            headers={**(headers or {}), "Authorization": f"Bearer {token}"})
        try:
            r = await self._http.send(req, stream=True)
        except Exception as e:  # as in _request
            raise Unreachable(f"worker {w.name} unreachable: {type(e).__name__}") from None
        if r.status_code >= 400:
            try:
                body = await r.aread()
            except httpx.HTTPError:
                body = b""
            finally:
                await r.aclose()
            raise worker_error(r.status_code, body)
        return r

    async def health(self, w: WorkerRec, server_id: str) -> Any:
        """What the worker's health probe of one server found (JSON)."""
        content = await self.call(w, "GET", f"/server/{server_id}/health")
        try:
            return msgspec.json.decode(content)
        except msgspec.DecodeError:
            raise errors.WorkerError(f"worker {w.name} answered a health probe with no JSON"
                                     ) from None

    async def log_page(self, w: WorkerRec, server_id: str, params: dict[str, str]
                       ) -> models.LogPage:
        r = await self._request(w, "GET", f"/server/{server_id}/log", params=params)
        if r.status_code != 200:
            raise worker_error(r.status_code, r.content)
        try:
            return msgspec.json.decode(r.content, type=models.LogPage)
        except msgspec.MsgspecError:
            raise errors.WorkerError(
                f"worker {w.name} answered something that is not a log page") from None

    async def delete_server(self, w: WorkerRec, server_id: str, purge: bool) -> bool:
        """True when the server is gone from the worker now; False when it goes later (a
        live one stops first: 202) or the worker refused."""
        r = await self._request(w, "DELETE", f"/server/{server_id}", params={
            "stop": "true", "purge": "true" if purge else "false"})
        return r.status_code in (200, 404)

    async def aclose(self) -> None:
        with trio.move_on_after(1):
            await self._http.aclose()

    def console_url(self, w: WorkerRec, server_id: str, query: dict[str, Any]) -> str:
        base = w.api_url.replace("https://", "wss://").replace("http://", "ws://")
        q = "&".join(f"{k}={v}" for k, v in query.items() if v is not None)
        return f"{base}/server/{server_id}/log/ws" + (f"?{q}" if q else "")

    async def proxy_console(self, w: WorkerRec, server_id: str, query: dict[str, Any],
                            token: str, send: Any, receive: Any) -> None:
        """Pass frames both ways between a viewer of the host and the worker's console
        websocket, unchanged (the worker enforces the protocol's limits). Returns when
        either side closes."""
        url = self.console_url(w, server_id, {**query, "token": token})
        failed: str | None = None
        try:
            async with open_websocket_url(url, receive_buffer_size=None,
                                          max_message_size=4 << 20,
                                          connect_timeout=CALL_TIMEOUT) as upstream, \
                    trio.open_nursery() as nursery:
                nursery.start_soon(_down, upstream, send, nursery.cancel_scope)
                await _up(upstream, receive)
                nursery.cancel_scope.cancel()
        except* (OSError, HandshakeError, trio.TooSlowError, ValueError) as group:
            failed = type(group.exceptions[0]).__name__
        if failed is not None:
            raise Unreachable(f"worker {w.name} console unreachable: {failed}")


async def _down(upstream: Any, send: Any, scope: trio.CancelScope) -> None:
    """Worker → viewer; the viewer is closed when the worker closes."""
    try:
        while True:
            await send(await upstream.get_message())
    except ConnectionClosed:
        pass
    scope.cancel()


async def _up(upstream: Any, receive: Any) -> None:
    """Viewer → worker, until either closes."""
    while True:
        message = await receive()
        try:
            await upstream.send_message(message)
        except ConnectionClosed:
            return
