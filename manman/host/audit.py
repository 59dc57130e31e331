"""The audit trail: every change made through the host's API, one row each in PostgreSQL's
`audit` table.

A row is recorded in memory when the request is answered and goes the way the command audit
always went (manman.host.spool): to the on-disk spool within a flush interval, then to
PostgreSQL in batches, so a request never waits for a database write of its own and rows
survive an outage of PostgreSQL or a host crash. Reads (`GET /audit`) come from PostgreSQL.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
import trio

from manman import errors, models
from manman.host.fleet import Fleet
from manman.host.store import HostStore

log = logging.getLogger("manman.host.audit")

# (id, at, actor, source, action, server_id, worker_id, target, status, detail, result)
AuditRow = tuple[Any, ...]
COLUMNS = ("id", "at", "actor", "source", "action", "server_id", "worker_id", "target",
           "status", "detail", "result")
MAX_TEXT = 1000
PRUNE_EVERY = 3600.0
# routes that change nothing an operator made: the workers' reports are the hot path (any
# other call of a worker's but its registration is a report too)
NOT_AUDITED = frozenset({"/worker/{worker_id}/health", "/server/{server_id}/health"})
CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_NAMED = {("POST", "/worker"): "worker.join", ("POST", "/worker/{worker_id}"): "worker.register",
          ("DELETE", "/worker/{worker_id}"): "worker.retire"}
_VERB = {"POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete"}


def action_of(method: str, route: str, collections: frozenset[str] = frozenset()) -> str:
    """A route's audit action: `server.create`, `server.update`, `webhook.test`,
    `server.files.rename`, `server.schedule.create`... The resource and the literal segments
    after it, then the verb when the route names a thing or a collection (a path that also
    answers GET: `collections`) rather than an action."""
    if (method, route) in _NAMED:
        return _NAMED[(method, route)]
    parts = [p for p in route.strip("/").split("/") if p]
    words = [p for p in parts if not p.startswith("{")]
    if not words:
        return method.lower()
    if len(words) == 1 or parts[-1].startswith("{") or method != "POST" or \
            route in collections:
        return ".".join([*words, _VERB.get(method, method.lower())])
    return ".".join(words)


def _text(value: str | None) -> str | None:
    return value[:MAX_TEXT].replace("\x00", "\ufffd") if value is not None else None


def row(actor: str, source: str, action: str, *, server_id: str | None = None,
        worker_id: str | None = None, target: str = "", status: int | None = None,
        detail: str | None = None, result: str | None = None) -> AuditRow:
    return (uuid.uuid4().hex, time.time(), actor[:200], source[:200], action[:200], server_id,
            worker_id, _text(target), status, _text(detail), _text(result))


DETAIL_TEXT = 200  # characters of one value in a detail (a path, a name, a URL)
DETAIL_ITEMS = 3  # items of a list in a detail (an archive's paths)


def _bounded(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= DETAIL_TEXT else value[:DETAIL_TEXT - 1] + "\u2026"
    if isinstance(value, list):
        head = [_bounded(v) for v in value[:DETAIL_ITEMS]]
        return head + ([f"\u2026 {len(value) - DETAIL_ITEMS} more"]
                       if len(value) > DETAIL_ITEMS else [])
    if isinstance(value, dict):
        return {k: _bounded(v) for k, v in value.items()}
    return value


def detail_of(fields: dict[str, Any] | msgspec.Struct) -> str:
    """A detail: compact JSON of `fields` (a request body's, new ids), each text cut to
    DETAIL_TEXT characters and each list to DETAIL_ITEMS items, so it stays whole within
    MAX_TEXT. Only for what may be shown: paths, names, ids, never a secret nor content."""
    given: dict[str, Any] = msgspec.to_builtins(fields) if isinstance(
        fields, msgspec.Struct) else fields
    return msgspec.json.encode({k: _bounded(v) for k, v in given.items()
                                if v is not None}).decode()


def note(**fields: Any) -> None:
    """In a route: set fields of this request's audit row (`detail`, `result`, `action`,
    `server_id`); recorded whatever the answer, a refusal too."""
    from quart import g

    g.audit = {**(g.get("audit") or {}), **fields}


def error_result() -> str | None:
    """`code: message` of the domain error the request is answering with, if any (called
    while that error propagates)."""
    e = sys.exc_info()[1]
    if isinstance(e, errors.ManmanError):
        return f"{e.code}: {e.message}"
    return None


class AuditEntry(msgspec.Struct):
    seq: int
    id: str
    at: float
    actor: str
    source: str
    action: str
    server_id: str | None
    worker_id: str | None
    target: str
    status: int | None
    detail: str | None
    result: str | None


class AuditPage(msgspec.Struct):
    entries: list[AuditEntry]
    next_cursor: str | None  # pass as `cursor` for older rows; null: no more


async def query(store: HostStore, *, server_id: str | None = None, action: str | None = None,
                since: float | None = None, until: float | None = None,
                cursor: int | None = None, limit: int = 100) -> AuditPage:
    """Newest first (by the order rows were written). `action` matches whole dotted words
    from the start: `server` matches `server.create` and `server.files.rename`."""
    where, args = [], []  # type: list[str], list[Any]

    def cond(sql: str, value: Any) -> None:
        args.append(value)
        where.append(sql.replace("?", f"${len(args)}"))

    if server_id is not None:
        cond("server_id = ?", server_id)
    if action is not None:
        args.append(action)
        n = len(args)
        where.append(f"(action = ${n} OR left(action, length(${n}) + 1) = ${n} || '.')")
    if since is not None:
        cond("at >= ?", since)
    if until is not None:
        cond("at < ?", until)
    if cursor is not None:
        cond("seq < ?", cursor)
    args.append(limit + 1)
    sql = (f"SELECT {', '.join(('seq', *COLUMNS))} FROM audit "
           f"{'WHERE ' + ' AND '.join(where) if where else ''} "
           f"ORDER BY seq DESC LIMIT ${len(args)}")
    rows = await store.fetch(sql, *args)
    entries = [AuditEntry(**dict(r)) for r in rows[:limit]]
    more = len(rows) > limit
    return AuditPage(entries, str(entries[-1].seq) if more and entries else None)


async def prune(store: HostStore, days: float, now: float | None = None) -> int:
    """Delete the rows older than `days`; how many went."""
    cutoff = (time.time() if now is None else now) - days * 86400
    status = await store.execute("DELETE FROM audit WHERE at < $1", cutoff,
                                 what="pruning of the audit")
    return int(status.split()[-1]) if status.startswith("DELETE") else 0


async def prune_loop(store: HostStore, days: float, every: float = PRUNE_EVERY) -> None:
    """Keep `days` of audit (0: forever): at the start, then `every` seconds (an hour)."""
    if days <= 0:
        return
    while True:
        try:
            gone = await prune(store, days)
            if gone:
                log.info("audit: %d rows older than %g days pruned", gone, days)
        except errors.DatabaseUnavailable:
            pass  # the outage log says it; the next round prunes
        await trio.sleep(every)


def record(fleet: Fleet, entry: AuditRow) -> None:
    """Keep a row: memory now, the spool within a flush interval, PostgreSQL after."""
    fleet.record_command(entry)


class RequestObserver(Protocol):
    def observe(self, method: str, route: str, status: int, seconds: float) -> None: ...


class AuditingObserver:
    """Told of every answered request (as the metrics are, which it passes them on to):
    records the changes. The route sets `g.audit_who` when it knows the caller and may add
    `g.audit` = {"action", "detail", "result", "server_id"}."""

    def __init__(self, inner: RequestObserver, fleet: Fleet,
                 collections: Callable[[], frozenset[str]] = frozenset) -> None:
        self.inner = inner
        self.fleet = fleet
        self._collections = collections  # asked once: every route is declared by then
        self._known: frozenset[str] | None = None

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.inner.observe(method, route, status, seconds)
        # no valid token: anybody could fill the table with those
        if method not in CHANGES or route in NOT_AUDITED or status == 401:
            return
        try:
            self._record(method, route, status)
        except Exception:  # the audit never fails the request it records
            log.exception("cannot record %s %s in the audit", method, route)

    def _routes(self) -> frozenset[str]:
        if self._known is None:
            self._known = self._collections()
        return self._known

    def _record(self, method: str, route: str, status: int) -> None:
        from quart import g, request

        who = g.get("audit_who")
        if who is not None and who.kind == "worker" and (method, route) not in _NAMED:
            return  # a worker's reports (health, backups): what it observed, not a change
        extra: dict[str, Any] = g.get("audit") or {}
        params = request.view_args or {}
        server_id = extra.get("server_id")
        worker_id = params.get("worker_id")
        if server_id is None and "server_id" in params:
            s = self.fleet.server(str(params["server_id"]))
            server_id = s.id if s is not None else str(params["server_id"])[:100]
            worker_id = s.worker_id if s is not None else worker_id
        elif server_id is not None and (s := self.fleet.servers.get(server_id)) is not None:
            worker_id = s.worker_id
        record(self.fleet, row(
            who.label if who is not None else "unknown", request.remote_addr or "",
            extra.get("action") or action_of(method, route, self._routes()),
            server_id=server_id,
            worker_id=worker_id, target=request.path, status=status,
            detail=extra.get("detail"), result=extra.get("result") or error_result()))


class _Frame(msgspec.Struct):
    type: str
    data: str | None = None


_decode_frame = msgspec.json.Decoder(_Frame).decode


def console_input(fleet: Fleet, actor: str, source: str, server_id: str, worker_id: str,
                  message: str | bytes, secrets: list[str] | None = None) -> None:
    """A frame a viewer sends through the host's console proxy: a `command` is recorded as
    `server.console` with its text, `secrets` (the preset's secret values) masked (the
    worker may still refuse it: rate, state)."""
    needle: str | bytes = '"command"' if isinstance(message, str) else b'"command"'
    if needle not in message:  # type: ignore[operator]
        return  # pings: no decode
    try:
        frame = _decode_frame(message)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return
    if frame.type == "command":
        record(fleet, row(actor, source, "server.console", server_id=server_id,
                          worker_id=worker_id, target=f"/server/{server_id}/log/ws",
                          detail=models.redact(frame.data, secrets or []), result="sent"))


def query_time(name: str) -> float | None:
    """A time query parameter: unix seconds."""
    from quart import request

    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise errors.Invalid(f"query parameter {name} must be unix seconds") from None
    if not 0 <= value < 1e11:
        raise errors.Invalid(f"query parameter {name} must be unix seconds")
    return value
