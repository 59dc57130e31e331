"""A joined worker's reports of its backups to the host, which keeps the lists in PostgreSQL
(to answer them while this worker is away): each change sends that server's whole list,
changes in a burst become one report, and a report that fails is sent again."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import httpx
import msgspec
import trio

from manman.worker.backups.manager import BackupManager
from manman.worker.backups.model import BackupList

if TYPE_CHECKING:
    from manman.worker.hostlink import HostLink

log = logging.getLogger("manman.worker.backups")

BURST = 0.05
RETRY = 2.0


class BackupReporter:
    def __init__(self, link: HostLink, backups: BackupManager) -> None:
        self.link = link
        self.backups = backups
        # every list once at the start: the host may have missed changes while away
        self._changed: set[str] = {b.server_id for b in backups.records.values()}
        self._wake = trio.Event()
        backups.listeners.append(self.changed)

    def changed(self, server_id: str) -> None:
        self._changed.add(server_id)
        self._wake.set()

    async def run(self) -> None:
        while True:
            if not self._changed:
                await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep(BURST)
            ids, self._changed = self._changed, set()
            for sid in ids:
                if not await self._send(sid):
                    self._changed.add(sid)
            if self._changed:
                await trio.sleep(RETRY)

    async def _send(self, sid: str) -> bool:
        if sid not in self.backups.agent.actors:
            return True  # deleted: the host drops its list with the server
        body = msgspec.json.encode(BackupList(self.backups.of_server(sid)))
        try:
            r = await self.link.http.post(f"/server/{sid}/backup-report", content=body,
                                          headers={"Authorization": f"Bearer {self.link.token}",
                                                   "Content-Type": "application/json"})
        except httpx.HTTPError:
            return False
        if r.status_code >= 500:
            return False
        if r.status_code >= 400:  # not the host's server (any more): nothing to retry
            log.info("backup report of %s refused: %s", sid, r.status_code)
        return True
