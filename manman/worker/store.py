"""The worker's own state in SQLite (aiosqlite, through the asyncio bridge).

Written on state changes, in batches, never per console line: its identity, the specs it
runs, each server's last observed status, what it needs to find a game process again, and
(joined to a host) the webhook events the host has not acknowledged yet.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiosqlite
import msgspec

from manman import aio, errors
from manman.models import ServerSpec, ServerStatus, WorkerEvent
from manman.schedules.check import stored_specs

# aiosqlite logs every statement with its parameters at DEBUG: the worker token among them
logging.getLogger("aiosqlite").setLevel(logging.INFO)

SCHEMA = """
PRAGMA journal_mode=WAL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS servers (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    generation INTEGER NOT NULL,
    desired_state TEXT NOT NULL,
    status TEXT NOT NULL,
    installed INTEGER NOT NULL,
    crash_times TEXT NOT NULL,
    run_pid INTEGER,
    run_pid_start INTEGER,
    run_instance TEXT
);
CREATE TABLE IF NOT EXISTS backups (
    id TEXT PRIMARY KEY,
    server_id TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    record TEXT NOT NULL
);
"""

_UPSERT = """
INSERT INTO servers (id, spec, generation, desired_state, status, installed, crash_times,
                     run_pid, run_pid_start, run_instance)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(id) DO UPDATE SET spec=excluded.spec, generation=excluded.generation,
    desired_state=excluded.desired_state, status=excluded.status, installed=excluded.installed,
    crash_times=excluded.crash_times, run_pid=excluded.run_pid,
    run_pid_start=excluded.run_pid_start, run_instance=excluded.run_instance
"""

_enc = msgspec.json.encode


@dataclass
class StoredServer:
    id: str
    spec: ServerSpec
    generation: int
    desired_state: Literal["running", "stopped"]
    status: ServerStatus
    installed: bool
    crash_times: tuple[float, ...]
    run_pid: int | None
    run_pid_start: int | None
    run_instance: str | None

    def row(self) -> tuple[object, ...]:
        # stats are a live sample: never saved (a restart would show a stale one)
        status = self.status if self.status.stats is None else \
            msgspec.structs.replace(self.status, stats=None)
        return (self.id, _enc(self.spec).decode(), self.generation, self.desired_state,
                _enc(status).decode(), int(self.installed), _enc(self.crash_times).decode(),
                self.run_pid, self.run_pid_start, self.run_instance)



def _owner_only(path: Path) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)


_SQLITE_FULL = 13


def disk_full(e: BaseException) -> bool:
    """SQLite's "database or disk is full" (an OperationalError, not an OSError), or an
    OSError for no space or no quota left."""
    if isinstance(e, sqlite3.Error):
        return (getattr(e, "sqlite_errorcode", 0) & 0xFF) == _SQLITE_FULL
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


class StoreClosed(Exception):
    """A write to the worker's store after it closed (the worker is stopping): not made."""


class WorkerStore:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self.closed = False

    @classmethod
    async def open(cls, path: Path) -> WorkerStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        _owner_only(path)  # the worker's token is in it
        conn = await aio.call(aiosqlite.connect, str(path))
        await aio.call(conn.executescript, SCHEMA)
        await aio.call(conn.execute, "PRAGMA synchronous=NORMAL")
        await aio.call(conn.commit)
        return cls(conn)

    async def close(self) -> None:
        self.closed = True  # (the host link's last heartbeat may answer after this)
        await aio.call(self._conn.close)

    async def get_meta(self, key: str) -> str | None:
        cur = await aio.call(self._conn.execute, "SELECT value FROM meta WHERE key = ?", (key,))
        row = await aio.call(cur.fetchone)
        return row[0] if row else None

    async def _write(self, statements: Callable[[], Awaitable[object]]) -> None:
        """One transaction: committed whole, or rolled back (a later commit must not carry
        a change that was refused). A full disk raises `errors.InsufficientStorage`; a store
        closed before or during it (the worker stopping) `StoreClosed`."""
        if self.closed:
            raise StoreClosed
        try:
            await statements()
            await aio.call(self._conn.commit)
        except ValueError:  # aiosqlite's "no active connection": closed while this waited
            raise StoreClosed from None
        except (sqlite3.Error, OSError) as e:
            if self.closed:
                raise StoreClosed from None
            with contextlib.suppress(sqlite3.Error, OSError, ValueError):
                await aio.call(self._conn.rollback)
            if disk_full(e):
                raise errors.InsufficientStorage(
                    f"disk full: cannot save the worker's state ({e})") from None
            raise

    async def set_meta(self, values: dict[str, str | None]) -> None:
        async def statements() -> None:
            for key, value in values.items():
                if value is None:
                    await aio.call(self._conn.execute, "DELETE FROM meta WHERE key = ?",
                                   (key,))
                else:
                    await aio.call(self._conn.execute,
                                   "INSERT INTO meta (key, value) VALUES (?, ?) "
                                   "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                                   (key, value))

        await self._write(statements)

    async def save(self, servers: list[StoredServer]) -> None:
        """Upsert many servers in one transaction."""
        if not servers:
            return
        await self._write(lambda: aio.call(self._conn.executemany, _UPSERT,
                                           [s.row() for s in servers]))

    async def delete(self, server_id: str) -> None:
        await self._write(lambda: aio.call(self._conn.execute,
                                           "DELETE FROM servers WHERE id = ?", (server_id,)))

    async def load(self) -> list[StoredServer]:
        cur = await aio.call(self._conn.execute,
                             "SELECT id, spec, generation, desired_state, status, installed, "
                             "crash_times, run_pid, run_pid_start, run_instance FROM servers")
        rows = await aio.call(cur.fetchall)
        out = []
        for r in rows:
            with stored_specs():  # as saved: a check made stricter since does not refuse it
                spec = msgspec.json.decode(r[1], type=ServerSpec)
            out.append(StoredServer(
                id=r[0], spec=spec, generation=r[2],
                desired_state=r[3], status=msgspec.json.decode(r[4], type=ServerStatus),
                installed=bool(r[5]),
                crash_times=tuple(msgspec.json.decode(r[6], type=list[float])),
                run_pid=r[7], run_pid_start=r[8], run_instance=r[9]))
        return out

    # -- backups (manman.worker.backups): one row per backup, written on each state change --

    async def save_backup(self, backup_id: str, server_id: str, record: bytes) -> None:
        await self._write(lambda: aio.call(
            self._conn.execute,
            "INSERT INTO backups (id, server_id, record) VALUES (?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET record = excluded.record",
            (backup_id, server_id, record.decode())))

    async def delete_backup(self, backup_id: str) -> None:
        await self._write(lambda: aio.call(self._conn.execute,
                                           "DELETE FROM backups WHERE id = ?", (backup_id,)))

    async def load_backups(self) -> list[str]:
        cur = await aio.call(self._conn.execute, "SELECT record FROM backups")
        return [r[0] for r in await aio.call(cur.fetchall)]

    # -- webhook events (manman.worker.events): written in batches, deleted once acknowledged

    async def save_events(self, events: list[WorkerEvent], drop_upto: int,
                          meta: dict[str, str]) -> None:
        """New events, the oldest dropped (seq <= drop_upto, the bound) and the queue's
        counters, in one transaction."""
        async def statements() -> None:
            if drop_upto:
                await aio.call(self._conn.execute, "DELETE FROM events WHERE seq <= ?",
                               (drop_upto,))
            await aio.call(self._conn.executemany,
                           "INSERT OR REPLACE INTO events (seq, record) VALUES (?, ?)",
                           [(e.seq, _enc(e).decode()) for e in events])
            await aio.call(self._conn.executemany,
                           "INSERT INTO meta (key, value) VALUES (?, ?) "
                           "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                           list(meta.items()))

        await self._write(statements)

    async def delete_events(self, upto: int) -> None:
        await self._write(lambda: aio.call(self._conn.execute,
                                           "DELETE FROM events WHERE seq <= ?", (upto,)))

    async def load_events(self) -> list[WorkerEvent]:
        cur = await aio.call(self._conn.execute, "SELECT record FROM events ORDER BY seq")
        return [msgspec.json.decode(r[0], type=WorkerEvent)
                for r in await aio.call(cur.fetchall)]
