"""What the host and worker APIs share: routes that document themselves (OpenAPI), bodies
validated once at the edge, the error JSON of docs/spec.md for every failure, serving on
trio."""

from __future__ import annotations

import functools
import gc
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import trio
from hypercorn.trio import serve as hypercorn_serve
from quart import Response, request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioRequest
from werkzeug.exceptions import HTTPException

from manman.errors import BadRequest, Invalid, ManmanError
from manman.http.connections import HEADER_TIMEOUT, ServeConfig, quiet_accept_errors
from manman.http.errors import HTTP_CODES, domain_error_response, error_response, status_of
from manman.models import validation_message

log = logging.getLogger("manman.api")
_encode = msgspec.json.Encoder().encode

MAX_BODY = 1 << 20
# query parameters as OpenAPI describes them (the same bounds query_int enforces)
SINCE: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": 1 << 62}
LIMIT: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": 10000}
TAIL: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": 100000}

async def _drain(resp: Response) -> Response:
    """Read what is left of the request's body before answering: one left unread (an error
    before the body was read, OPTIONS, a GET with a body) garbles the next request on that
    keep-alive connection. A body too large to read (413) closes the connection instead."""
    from quart import has_request_context

    if not has_request_context() or not (request.content_length or
                                         "transfer-encoding" in request.headers):
        return resp
    if getattr(request, "streamed", False) and not 200 <= resp.status_code < 300:
        # a streamed body has no size cap: one refused is not read, the connection closes
        resp.headers["Connection"] = "close"
        return resp
    if resp.status_code != 413:
        with trio.move_on_after(5):
            try:
                await request.get_data(cache=False)
                return resp
            except Exception:
                pass
    resp.headers["Connection"] = "close"
    return resp


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(_encode(obj), status=status, content_type="application/json")


def bearer_token() -> str | None:
    """The token from `Authorization: Bearer …`, or `?token=` (websockets from browsers)."""
    from quart import has_websocket_context, websocket

    req = websocket if has_websocket_context() else request
    header = req.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    if has_websocket_context():
        return req.args.get("token") or None
    return None


def same_secret(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; an empty expected secret never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def query_int(name: str, default: int | None, *, lo: int = 0, hi: int = 1 << 62) -> int | None:
    from quart import has_websocket_context, websocket

    args = (websocket if has_websocket_context() else request).args
    raw = args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise Invalid(f"query parameter {name} must be an integer") from None
    if not lo <= value <= hi:
        raise Invalid(f"query parameter {name} must be between {lo} and {hi}")
    return value


def query_bool(name: str) -> bool:
    raw = request.args.get(name)
    if raw is None:
        return False
    raw = raw.lower()
    if raw in ("0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise Invalid(f"query parameter {name} must be true or false")


def check_query_text() -> None:
    """No query parameter of ours may hold a NUL (PostgreSQL text cannot, a path must not):
    refused for every route here, as in bodies."""
    if b"%00" in request.query_string:  # a NUL can only come percent-encoded
        raise Invalid("NUL characters are not accepted")


async def read_body(model: type[Any]) -> Any:
    data = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    if not data.strip():
        raise BadRequest("a JSON body is required")
    if b"\\u0000" in data and _NUL_ESCAPE.search(data):
        # JSON can carry NUL only escaped; no text of ours may hold one (PostgreSQL cannot)
        raise Invalid("NUL characters are not accepted")
    try:
        value = msgspec.json.decode(data, type=model)
    except msgspec.ValidationError as e:
        raise Invalid(validation_message(e)) from None
    except msgspec.DecodeError as e:
        raise BadRequest(f"body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadRequest("body is nested too deeply") from None
    if b"\\u" in data.lower() and _has_lone_surrogate(data):
        raise Invalid("text with unpaired UTF-16 surrogates is not accepted")
    return value


_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _has_lone_surrogate(data: bytes) -> bool:
    """A JSON escape like \\udc00 with no partner decodes to text no UTF-8 can hold."""
    try:
        msgspec.json.encode(msgspec.json.decode(data))
    except msgspec.EncodeError:
        return True
    return False


@dataclass
class RouteDoc:
    method: str
    path: str
    summary: str
    auth: str  # the role the API's authenticator checks; "none": anyone
    body: type[Any] | None
    response: Any
    status: int
    query: dict[str, Any] = field(default_factory=dict)  # name → type name or schema
    errors: tuple[int, ...] = ()
    websocket: bool = False
    media: str = "application/json"
    body_doc: tuple[type[Any], ...] = ()  # the body's shapes, when `body` reads it as a dict
    stream_body: bool = False  # raw bytes, read by the route as a stream


# (the route's role, its path parameters) -> who is calling, or a domain error
Authenticator = Callable[[str, dict[str, str]], Awaitable[Any]]


class RequestObserver(Protocol):
    """Told of every answered request (the metrics)."""

    def observe(self, method: str, route: str, status: int, seconds: float) -> None: ...


class Api:
    """A Quart-trio app whose routes are declared once for both serving and OpenAPI."""

    def __init__(self, name: str, title: str, version: str, *,
                 authenticate: Authenticator | None = None,
                 requests: RequestObserver | None = None) -> None:
        self.app = QuartTrio(name)
        self.app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
        # (method, path pattern) of the routes that read their body as a stream themselves
        streamed: list[tuple[str, re.Pattern[str]]] = []
        self._streamed = streamed

        class Request(TrioRequest):
            """Bodies are capped at MAX_BODY, but for routes declared `stream_body`: they
            check the declared size before they read, and read in chunks."""

            def __init__(self, method: str, scheme: str, path: str, *args: Any,
                         **kw: Any) -> None:
                self.streamed = any(m == method and p.fullmatch(path) for m, p in streamed)
                if self.streamed:
                    kw["max_content_length"] = None
                super().__init__(method, scheme, path, *args, **kw)

        self.app.request_class = Request
        self.app.config["BODY_TIMEOUT"] = 30
        self.app.config["RESPONSE_TIMEOUT"] = None
        self.title = title
        self.version = version
        self.docs: list[RouteDoc] = []
        self.authenticate = authenticate
        self.requests = requests
        self.app.register_error_handler(ManmanError, self._domain_error)
        self.app.register_error_handler(HTTPException, self._http_error)
        self.app.register_error_handler(Exception, self._crash)
        self.app.after_request(_drain)
        self.route("GET", "/openapi.json", auth="none", response=dict,
                   summary="This API's OpenAPI description")(self._openapi)

    async def _openapi(self) -> Response:
        return json_response(self.openapi())

    @staticmethod
    async def _domain_error(e: ManmanError) -> Response:
        return domain_error_response(e)

    @staticmethod
    async def _http_error(e: HTTPException) -> Response:
        status = e.code or 500
        resp = error_response(status, HTTP_CODES.get(status, "error"), e.description or e.name)
        allowed = getattr(e, "valid_methods", None)
        if status == 405 and allowed:
            resp.headers["Allow"] = ", ".join(sorted(allowed))
        return resp

    @staticmethod
    async def _crash(e: Exception) -> Response:
        log.exception("request failed: %s", e)
        return error_response(500, "internal", "internal error (see the manman log)")

    def route(self, method: str, path: str, *, auth: str = "admin", body: type[Any] | None = None,
              response: Any = None, status: int = 200, summary: str = "",
              query: dict[str, Any] | None = None, errors: tuple[int, ...] = (),
              media: str = "application/json", body_doc: tuple[type[Any], ...] = (),
              stream_body: bool = False
              ) -> Callable[[Callable[..., Awaitable[Response]]], Callable[..., Awaitable[Any]]]:
        if stream_body:
            self._streamed.append((method, re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+",
                                                               re.escape(path)))))
        doc = RouteDoc(method, path, summary, auth, body, response, status, query or {}, errors,
                       media=media, body_doc=body_doc, stream_body=stream_body)
        self.docs.append(doc)

        def decorate(fn: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Any]]:
            @functools.wraps(fn)
            async def handler(**params: str) -> Response:
                started = time.perf_counter()
                status_code = 500
                try:
                    if auth != "none":
                        assert self.authenticate is not None
                        params["who"] = await self.authenticate(auth, params)
                    check_query_text()
                    if body is not None:
                        params["body"] = await read_body(body)
                    resp = await fn(**params)
                    status_code = resp.status_code
                    return resp
                except ManmanError as e:
                    status_code = status_of(e)
                    raise
                finally:
                    if self.requests is not None:
                        self.requests.observe(method, path, status_code,
                                              time.perf_counter() - started)

            self.app.add_url_rule(_quart_path(path), endpoint=f"{method} {path}",
                                  view_func=handler, methods=[method])
            return handler

        return decorate

    def websocket(self, path: str, *, auth: str, summary: str,
                  query: dict[str, Any] | None = None
                  ) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
        self.docs.append(RouteDoc("GET", path, summary, auth, None, None, 101, query or {},
                                  (401, 403, 404), websocket=True))

        def decorate(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
            @functools.wraps(fn)
            async def handler(**params: str) -> None:
                assert self.authenticate is not None
                params["who"] = await self.authenticate(auth, params)
                await fn(**params)

            self.app.add_websocket(_quart_path(path), endpoint=f"WS {path}", view_func=handler)
            return handler

        return decorate

    def openapi(self) -> dict[str, Any]:
        from manman.http.openapi import build_openapi

        return build_openapi(self.title, self.version, self.docs)


def _quart_path(path: str) -> str:
    return re.sub(r"\{(\w+)\}", r"<\1>", path)


def settle_gc() -> None:
    """After start-up: move what exists now out of the collector's sight (gc.freeze), so the
    full collections a busy server runs do not rescan every module and loaded record (they
    showed as 100 ms stalls in bench/heartbeats.py)."""
    gc.collect()
    gc.freeze()
    # requests live for milliseconds: a larger young generation lets them die young instead
    # of being promoted and rescanned by full collections
    gc.set_threshold(20_000, 20, 20)


async def serve(app: QuartTrio, listen: str, shutdown: trio.Event, *,
                header_timeout: float = HEADER_TIMEOUT,
                task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `app` on `listen` (port 0: any) until `shutdown` is set; reports the base URL.
    A new connection has `header_timeout` seconds to send its first request's head."""
    quiet_accept_errors()
    cfg = ServeConfig()
    cfg.bind = [listen]
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("hypercorn.error")
    cfg.websocket_max_message_size = 1 << 20
    cfg.websocket_ping_interval = 20  # a peer gone without a goodbye is found and closed
    cfg.h11_max_incomplete_size = 64 * 1024
    cfg.keep_alive_timeout = 75  # between requests; before the first: header_timeout
    cfg.header_timeout = header_timeout
    cfg.graceful_timeout = 3
    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        await hypercorn_serve(app, cfg, shutdown_trigger=shutdown.wait, task_status=task_status)

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(run)
        task_status.started(binds[0])

