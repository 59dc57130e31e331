"""The host's durable state in PostgreSQL (asyncpg, through the asyncio bridge).

Desired state and the audit trail. Observed state and heartbeats arrive far more
often than they change anything an operator reads back after a restart: they are kept in
memory (host.fleet) and written here in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import asyncpg
import msgspec
import trio

from manman import aio, errors
from manman.host.outage import DatabaseHealth

log = logging.getLogger("manman.host.store")

_MIGRATION_LOCK = 0x6D616E6D616E  # "manman": one host migrates at a time


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=lambda v: msgspec.json.encode(v).decode(),
                              decoder=msgspec.json.decode, schema="pg_catalog")


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped with manman, in order."""
    out = []
    for entry in (resources.files("manman.host") / "migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            out.append((int(name[:3]), name, entry.read_text(encoding="utf-8")))
    return sorted(out)


async def _migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply missing migrations, each in its own transaction, under an advisory lock so that
    two hosts starting at once on one database never both apply one."""
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                           "version integer PRIMARY KEY, name text NOT NULL, "
                           "applied_at timestamptz NOT NULL DEFAULT now())")
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for version, name, sql in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                                   version, name)
            applied.append(name)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No reset query at each release (a round trip per call): the store sets no session
    state, and asyncpg still rolls back a transaction left open."""


async def _open(url: str) -> tuple[asyncpg.Pool, list[str]]:
    # min_size 0: no idle connection to keep up, so an outage logs nothing by itself (a
    # floor to restore logged a traceback every second)
    pool = await asyncpg.create_pool(url, min_size=0, max_size=4, init=_init_connection,
                                     reset=_keep_session, command_timeout=30)
    async with pool.acquire() as conn:
        applied = await _migrate(conn)
    return pool, applied


# -- every call bounded ------------------------------------------------------------------------

DATABASE_TIMEOUT = 5.0  # each call, all in: well under the CLI's 30 s, so an answer comes first
SETTLE_TIMEOUT = 5.0  # learning whether a commit that got no answer happened
WAIT_BEFORE_TERMINATE = 2.0  # a slow commit may still finish before its backend is ended

# the database is away (refused, reset, shutting down, out of resources), not the request wrong
_AWAY: tuple[type[BaseException], ...] = (
    OSError, asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ReadOnlySQLTransactionError)

Body = Callable[[asyncpg.Connection], Awaitable[Any]]


class _Lost(Exception):
    """The database stopped answering. xid: COMMIT of that transaction was sent, so whether
    it happened is not known; result: what the transaction's statements returned."""

    def __init__(self, reason: str, xid: int | None = None, pid: int = 0,
                 result: Any = None) -> None:
        super().__init__(reason)
        self.reason, self.xid, self.pid, self.result = reason, xid, pid, result


class CommitUnknown(errors.DatabaseUnavailable):
    """A COMMIT got no answer and the database could not tell in time whether it happened:
    the host learns it (`HostStore.commit_outcome`) before its next write."""

    def __init__(self, xid: int, pid: int, what: str) -> None:
        super().__init__(f"the database did not confirm this change ({what[:200]}); whether "
                         "it was saved is checked when the database is back: read it back "
                         "before trying again")
        self.xid, self.pid = xid, pid


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


async def _bounded(pool: asyncpg.Pool, body: Body, timeout: float, write: bool) -> Any:
    """(asyncio) `body(conn)` on a pooled connection, in a transaction when `write`, all of
    it within `timeout`. When the time is up the connection is terminated: a hung server
    answers nothing, not even a cancel, and cancelling the call instead would wait for
    asyncpg's rollback and release on that same server. BEGIN and COMMIT are sent apart so
    that a failure before COMMIT is known to have changed nothing. Raises _Lost when the
    database is away; the request's own errors (a name taken) pass as they are."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        conn = await pool.acquire(timeout=timeout)
    except _AWAY as e:
        raise _Lost(_reason(e)) from None
    pid = conn.get_server_pid()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        _terminate(conn)

    timer = loop.call_at(deadline, expire)
    xid: int | None = None
    committing = False
    result: Any = None
    try:
        if not write:
            return await body(conn)
        await conn.execute("BEGIN")
        xid = await conn.fetchval("SELECT txid_current()")
        try:
            result = await body(conn)
        except asyncpg.PostgresError as e:
            if not isinstance(e, _AWAY):
                await conn.execute("ROLLBACK")  # the request's own error: the link is fine
            raise
        committing = True
        await conn.execute("COMMIT")
        return result
    except asyncio.CancelledError:
        _terminate(conn)  # cut short mid-protocol: not fit for reuse
        raise
    except Exception as e:
        if not (expired or isinstance(e, _AWAY) or _closed(conn)):
            raise
        _terminate(conn)
        reason = f"no answer within {timeout:g} s" if expired else _reason(e)
        raise _Lost(reason, xid if committing else None, pid, result) from None
    finally:
        timer.cancel()
        # a failed release terminated it: the pool connects anew next time
        with contextlib.suppress(Exception):
            await pool.release(conn, timeout=max(0.1, deadline - loop.time()))


def _terminate(conn: asyncpg.Connection) -> None:
    # a connection already closed has gone back to the pool: its proxy refuses every call
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


def _closed(conn: asyncpg.Connection) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


async def _commit_outcome(pool: asyncpg.Pool, xid: int, pid: int, timeout: float) -> str | None:
    """(asyncio) "committed" or "aborted" for transaction `xid` whose COMMIT got no answer,
    once its backend `pid` can no longer change that (after WAIT_BEFORE_TERMINATE it is
    ended); "unknown" when it is too old to tell; None when the database does not answer."""
    loop = asyncio.get_running_loop()
    terminate_at = loop.time() + min(WAIT_BEFORE_TERMINATE, timeout / 2)

    async def ask(conn: asyncpg.Connection) -> str:
        ended = False
        while True:
            status = await conn.fetchval("SELECT txid_status($1)", xid)
            if status != "in progress":
                return status or "unknown"
            if not ended and loop.time() >= terminate_at:
                await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
                ended = True
            await asyncio.sleep(0.05)

    try:
        return await _bounded(pool, ask, timeout, write=False)
    except _Lost:
        return None


async def _close(pool: asyncpg.Pool, timeout: float) -> None:
    try:
        await asyncio.wait_for(pool.close(), timeout)
    except _AWAY:  # TimeoutError is an OSError
        pool.terminate()


class HostStore:
    def __init__(self, pool: asyncpg.Pool, timeout: float = DATABASE_TIMEOUT) -> None:
        self.pool = pool
        self.timeout = timeout
        self.health = DatabaseHealth()

    @classmethod
    async def open(cls, url: str) -> HostStore:
        pool, applied = await aio.call(_open, url)
        for name in applied:
            log.info("applied migration %s", name)
        return cls(pool)

    async def close(self) -> None:
        await aio.call(_close, self.pool, self.timeout)

    async def _call(self, body: Body, *, write: bool, what: str | None = None) -> Any:
        """`body(conn)` (an asyncio coroutine function), bounded. Raises DatabaseUnavailable
        when the database is away and nothing was changed, CommitUnknown when a write's
        COMMIT got no answer and its outcome could not be learnt. what: a write an API
        request asked for (its outcome is learnt; its refusal is logged in one line); None
        for the batched writes, which are simply retried (they are idempotent)."""
        try:
            # bounded by the timeout: a caller cancelled meanwhile must not leave memory
            # behind what the database holds
            with trio.CancelScope(shield=True):
                result = await aio.call(_bounded, self.pool, body, self.timeout, write)
        except _Lost as lost:
            if lost.xid is not None and what is not None:
                outcome = await self.commit_outcome(lost.xid, lost.pid)
                if outcome == "committed":
                    return lost.result
                if outcome is None:
                    self.health.failed(lost.reason)
                    log.info("%s: not confirmed by the database (%s)", what, lost.reason)
                    raise CommitUnknown(lost.xid, lost.pid, what) from None
            self.health.failed(lost.reason)
            if what is not None:
                log.info("%s: refused, the database is unavailable (%s)", what, lost.reason)
            raise errors.DatabaseUnavailable() from None
        self.health.ok()
        return result

    async def commit_outcome(self, xid: int, pid: int) -> str | None:
        """"committed", "aborted" or "unknown" (too old to tell) for a commit that got no
        answer; None while the database does not answer."""
        with trio.CancelScope(shield=True):
            outcome = await aio.call(_commit_outcome, self.pool, xid, pid, SETTLE_TIMEOUT)
        if outcome is not None:
            self.health.ok()
        return outcome

    async def probe(self) -> bool:
        """Does the database answer? (Ends an outage in the log as soon as it does.)"""
        try:
            await self._call(lambda conn: conn.fetchval("SELECT 1"), write=False)
        except errors.DatabaseUnavailable:
            return False
        return True

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self._call(lambda conn: conn.fetch(sql, *args), write=False)

    async def execute(self, sql: str, *args: Any, what: str = "a write") -> str:
        return await self._call(lambda conn: conn.execute(sql, *args), write=True, what=what)

    async def write_quietly(self, sql: str, *args: Any) -> str:
        """A background write its caller retries or does without (the webhook outbox): an
        outage is logged once by the outage log, not at each call."""
        return await self._call(lambda conn: conn.execute(sql, *args), write=True)

    async def write_batch(self, body: Body) -> Any:
        """`body(conn)` (asyncio) in one transaction, quietly as write_quietly."""
        return await self._call(body, write=True)

    # -- workers ---------------------------------------------------------------------------

    async def insert_worker(self, worker_id: str, name: str, created_at: float) -> None:
        await self.execute("INSERT INTO workers (id, name, created_at) VALUES ($1, $2, $3)",
                           worker_id, name, created_at, what=f"join of worker {name}")

    async def update_worker(self, worker_id: str, **fields: Any) -> None:
        cols = list(fields)
        sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(cols, 2))
        await self.execute(f"UPDATE workers SET {sets} WHERE id = $1", worker_id,
                           *fields.values(), what=f"update of worker {worker_id}")

    async def load_workers(self) -> list[asyncpg.Record]:
        return await self.fetch("SELECT * FROM workers ORDER BY created_at")

    # -- servers ---------------------------------------------------------------------------

    async def insert_server(self, server_id: str, name: str, worker_id: str, spec: Any,
                            now: float) -> None:
        try:
            await self.execute(
                "INSERT INTO servers (id, name, worker_id, spec, generation, created_at, "
                "updated_at) VALUES ($1, $2, $3, $4, 1, $5, $5)", server_id, name, worker_id,
                msgspec.to_builtins(spec), now, what=f"create of server {name}")
        except asyncpg.UniqueViolationError:
            raise errors.Exists.server(name) from None  # a concurrent create or rename won

    async def update_server_spec(self, server_id: str, name: str, spec: Any, generation: int,
                                 now: float, restart_generation: int) -> None:
        """The new spec; the runs of a schedule it no longer holds go with it."""
        schedule_ids = [sc.id for sc in getattr(spec, "schedules", ()) if sc.id is not None]

        async def body(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE servers SET name = $2, spec = $3, generation = $4, updated_at = $5, "
                "restart_generation = $6 WHERE id = $1", server_id, name,
                msgspec.to_builtins(spec), generation, now, restart_generation)
            await conn.execute("DELETE FROM schedule_runs WHERE server_id = $1 AND NOT "
                               "schedule_id = ANY($2::text[])", server_id, schedule_ids)

        try:
            await self._call(body, write=True, what=f"update of server {name}")
        except asyncpg.UniqueViolationError:
            raise errors.Exists.server(name) from None  # a concurrent create or rename won

    async def mark_deleting(self, server_id: str, purge: bool) -> None:
        await self.execute("UPDATE servers SET deleting = true, purge = $2 WHERE id = $1",
                           server_id, purge, what=f"delete of server {server_id}")

    async def delete_server(self, server_id: str) -> None:
        await self.execute("DELETE FROM servers WHERE id = $1", server_id,
                           what=f"removal of server {server_id}")

    async def load_servers(self) -> list[asyncpg.Record]:
        return await self.fetch("SELECT * FROM servers ORDER BY created_at")

    # -- schedule runs --------------------------------------------------------------------------

    async def put_schedule_runs(self, rows: list[tuple[str, str, int, float, Any]],
                                keep: int) -> None:
        """(server_id, schedule_id, run_id, started_at, record) in one transaction, each run
        once whatever how often it is sent; then only the `keep` newest of each schedule."""

        async def body(conn: asyncpg.Connection) -> None:
            await conn.executemany(
                "INSERT INTO schedule_runs (server_id, schedule_id, run_id, started_at, record) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (server_id, schedule_id, run_id) "
                "DO UPDATE SET started_at = excluded.started_at, record = excluded.record",
                rows)
            pairs = sorted({(r[0], r[1]) for r in rows})
            await conn.execute(
                "DELETE FROM schedule_runs r USING (SELECT server_id, schedule_id, run_id, "
                "row_number() OVER (PARTITION BY server_id, schedule_id "
                "ORDER BY started_at DESC, run_id DESC) AS n FROM schedule_runs "
                "WHERE (server_id, schedule_id) IN "
                "(SELECT * FROM unnest($1::text[], $2::text[]))) old "
                "WHERE old.n > $3 AND r.server_id = old.server_id "
                "AND r.schedule_id = old.schedule_id AND r.run_id = old.run_id",
                [p[0] for p in pairs], [p[1] for p in pairs], keep)
            # a schedule removed while these were on their way (its runs went with it):
            # none of its runs stays behind, to show under a schedule made again with its id
            await conn.execute(
                "DELETE FROM schedule_runs r USING servers s WHERE r.server_id = s.id AND "
                "r.server_id = ANY($1::text[]) AND NOT EXISTS (SELECT 1 FROM "
                "jsonb_array_elements(s.spec->'schedules') e WHERE e->>'id' = r.schedule_id)",
                sorted({p[0] for p in pairs}))

        if rows:
            await self._call(body, write=True)

    async def schedule_runs(self, server_id: str, schedule_id: str, limit: int) -> list[Any]:
        rows = await self.fetch("SELECT record FROM schedule_runs WHERE server_id = $1 AND "
                                "schedule_id = $2 ORDER BY started_at DESC, run_id DESC "
                                "LIMIT $3", server_id, schedule_id, limit)
        return [r["record"] for r in rows]

    # -- batches from the hot paths ------------------------------------------------------------

    async def flush(self, heartbeats: list[tuple[str, float]],
                    observed: list[tuple[str, Any, int]],
                    commands: list[tuple[Any, ...]]) -> None:
        """One transaction for a batch of what piled up in memory. Idempotent (an audit row
        already there is skipped), so a batch whose outcome is not known is simply written
        again."""

        async def body(conn: asyncpg.Connection) -> None:
            if heartbeats:
                await conn.execute(
                    "UPDATE workers w SET last_heartbeat = v.at FROM "
                    "unnest($1::text[], $2::float8[]) AS v(id, at) WHERE w.id = v.id",
                    [h[0] for h in heartbeats], [h[1] for h in heartbeats])
            if observed:
                await conn.executemany(
                    "UPDATE servers SET observed = $2, observed_generation = $3 WHERE id = $1",
                    observed)
            if commands:
                await conn.executemany(
                    "INSERT INTO audit (id, at, actor, source, action, server_id, worker_id, "
                    "target, status, detail, result) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "
                    "$9, $10, $11) ON CONFLICT (id) DO NOTHING", commands)

        if heartbeats or observed or commands:
            await self._call(body, write=True)
