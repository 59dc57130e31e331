"""The host's durable state in PostgreSQL (asyncpg, through the asyncio bridge).

Desired state and the audit of commands. Observed state and heartbeats arrive far more
often than they change anything an operator reads back after a restart: they are kept in
memory (host.fleet) and written here in batches.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import asyncpg
import msgspec

from manman import aio, errors

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


async def _open(url: str) -> tuple[asyncpg.Pool, list[str]]:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4, init=_init_connection,
                                     command_timeout=30)
    async with pool.acquire() as conn:
        applied = await _migrate(conn)
    return pool, applied


async def _transaction(pool: asyncpg.Pool,
                       body: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
    async with pool.acquire() as conn, conn.transaction():
        return await body(conn)


class HostStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, url: str) -> HostStore:
        pool, applied = await aio.call(_open, url)
        for name in applied:
            log.info("applied migration %s", name)
        return cls(pool)

    async def close(self) -> None:
        await aio.call(self.pool.close)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await aio.call(self.pool.fetch, sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        return await aio.call(self.pool.execute, sql, *args)

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            await aio.call(self.pool.executemany, sql, rows)

    async def transaction(self, body: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
        """Run `body(conn)` (an asyncio coroutine function) in one transaction."""
        return await aio.call(_transaction, self.pool, body)

    # -- workers ---------------------------------------------------------------------------

    async def insert_worker(self, worker_id: str, name: str, created_at: float) -> None:
        await self.execute("INSERT INTO workers (id, name, created_at) VALUES ($1, $2, $3)",
                           worker_id, name, created_at)

    async def update_worker(self, worker_id: str, **fields: Any) -> None:
        cols = list(fields)
        sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(cols, 2))
        await self.execute(f"UPDATE workers SET {sets} WHERE id = $1", worker_id,
                           *fields.values())

    async def load_workers(self) -> list[asyncpg.Record]:
        return await self.fetch("SELECT * FROM workers ORDER BY created_at")

    # -- servers ---------------------------------------------------------------------------

    async def insert_server(self, server_id: str, name: str, worker_id: str, spec: Any,
                            now: float) -> None:
        try:
            await self.execute(
                "INSERT INTO servers (id, name, worker_id, spec, generation, created_at, "
                "updated_at) VALUES ($1, $2, $3, $4, 1, $5, $5)", server_id, name, worker_id,
                msgspec.to_builtins(spec), now)
        except asyncpg.UniqueViolationError:
            raise errors.Exists.server(name) from None  # a concurrent create or rename won

    async def update_server_spec(self, server_id: str, name: str, spec: Any, generation: int,
                                 now: float, restart_generation: int) -> None:
        try:
            await self.execute(
                "UPDATE servers SET name = $2, spec = $3, generation = $4, updated_at = $5, "
                "restart_generation = $6 WHERE id = $1", server_id, name,
                msgspec.to_builtins(spec), generation, now, restart_generation)
        except asyncpg.UniqueViolationError:
            raise errors.Exists.server(name) from None  # a concurrent create or rename won

    async def mark_deleting(self, server_id: str, purge: bool) -> None:
        await self.execute("UPDATE servers SET deleting = true, purge = $2 WHERE id = $1",
                           server_id, purge)

    async def delete_server(self, server_id: str) -> None:
        await self.execute("DELETE FROM servers WHERE id = $1", server_id)

    async def load_servers(self) -> list[asyncpg.Record]:
        return await self.fetch("SELECT * FROM servers ORDER BY created_at")

    # -- batches from the hot paths ------------------------------------------------------------

    async def flush(self, heartbeats: list[tuple[str, float]],
                    observed: list[tuple[str, Any, int]],
                    commands: list[tuple[Any, ...]]) -> None:
        """One transaction for everything that piled up since the last flush."""

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
                    "INSERT INTO commands (id, at, actor, server_id, worker_id, type, data, "
                    "delivered, result) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", commands)

        if heartbeats or observed or commands:
            await self.transaction(body)
