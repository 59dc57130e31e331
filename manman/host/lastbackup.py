"""The newest good backup of each server, as the host knows it from its workers' backup
reports (and PostgreSQL at its start): for the host's /metrics."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from manman import errors
from manman.host.store import HostStore

_NEWEST_OK = """
SELECT DISTINCT ON (server_id) server_id, (record->>'bytes')::bigint AS bytes,
       (record->>'finished_at')::double precision AS finished_at
FROM backups WHERE record->>'state' = 'ok' AND record->>'finished_at' IS NOT NULL
ORDER BY server_id, (record->>'finished_at')::double precision DESC
"""


class LastBackups:
    def __init__(self) -> None:
        self.by_server: dict[str, tuple[int, float]] = {}  # server id → (bytes, finished_at)

    def reported(self, server_id: str, backups: Iterable[Any]) -> None:
        """A worker's whole list of a server's backups (`Backup` structs)."""
        good = [(b.finished_at, b.bytes) for b in backups
                if b.state == "ok" and b.finished_at is not None]
        if good:
            at, size = max(good)
            self.by_server[server_id] = (size, at)
        else:  # all pruned or deleted: no good backup any more
            self.by_server.pop(server_id, None)

    async def load(self, store: HostStore) -> None:
        try:
            rows = await store.fetch(_NEWEST_OK)
        except errors.DatabaseUnavailable:
            return  # the next reports fill it
        for r in rows:
            self.by_server[r["server_id"]] = (int(r["bytes"] or 0), float(r["finished_at"]))
