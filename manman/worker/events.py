"""A joined worker's webhook events, recorded where they happen so that none is lost while
the host is away: a crash and its restart, a player who came and went, a backup that ended.

Each change of a server's status is compared with the one before it (manman.events) and
each backup that ends is one event. An event gets the next `seq`, waits in memory at most
FLUSH_DELAY and is written to SQLite with the others of that moment in one transaction
(never a write per console line or per event). Only saved events are sent, with the
heartbeats, BATCH at a time, oldest first; the host's `events_acked` deletes them. At most
MAX_EVENTS are kept and none older than MAX_AGE: beyond, the oldest are dropped and counted
(`dropped`, in GET /status and the metrics).
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from manman import errors, models
from manman.events import PLAYER_EVENTS, backup_events, server_events
from manman.worker.machine import counts_players
from manman.worker.store import StoreClosed, WorkerStore

if TYPE_CHECKING:
    from manman.worker.actor import ServerActor
    from manman.worker.agent import WorkerAgent
    from manman.worker.backups.manager import BackupManager

log = logging.getLogger("manman.worker.events")

FLUSH_DELAY = 0.2  # a burst of events (a batch of console lines) is one write
BATCH = 500  # events a heartbeat carries
BATCH_BYTES = 256 * 1024  # and their JSON at most (but one), well within the host's body limit
MAX_TEXT = 4096  # a text in an event's data (an error) is cut to this
MAX_EVENTS = 10000
MAX_AGE = 7 * 86400.0
RETRY = 5.0  # a write SQLite refused (a full disk) is tried again after this
_BACKUP_FIELDS = ("id", "name", "bytes", "sha256", "error")


class EventQueue:
    """The agent's `ServerObserver` and a listener of its backups."""

    def __init__(self, agent: WorkerAgent, store: WorkerStore) -> None:
        self.agent = agent
        self.store = store
        self.seq = 0  # the last one given
        self.dropped = 0
        self._last: dict[str, models.ObservedServer] = {}  # each server's status before
        self._backups: dict[str, str] = {}  # each backup's state before, by id
        self._backup_manager: BackupManager | None = None
        self._unsaved: list[models.WorkerEvent] = []
        self._saved: deque[models.WorkerEvent] = deque()  # in SQLite, not acknowledged
        self._lock = trio.Lock()  # one SQLite transaction of the queue at a time
        self._flush_wake = trio.Event()
        self._send_wake = trio.Event()
        self._hurry = False  # saved events the host has not been sent: a heartbeat now
        self._sent = 0  # the highest seq handed to a heartbeat
        self._failing: str | None = None  # the last write error, logged once

    # -- starting ------------------------------------------------------------------------------

    async def load(self, backups: BackupManager | None = None) -> None:
        """What the last run left unsent, then the states the next changes compare with
        (a status or backup as it is now is no event)."""
        self._saved.extend(await self.store.load_events())
        seq = await self.store.get_meta("events_seq")
        self.seq = max(int(seq or 0), self._saved[-1].seq if self._saved else 0)
        self.dropped = int(await self.store.get_meta("events_dropped") or 0)
        self._hurry = bool(self._saved)
        for actor in self.agent.actors.values():
            self._last[actor.id] = _observed(actor)
        if backups is not None:
            self._backup_manager = backups
            self._backups = {b.id: b.state for b in backups.records.values()}
            backups.listeners.append(self.backups_changed)

    # -- recording (no I/O: called on state changes) -----------------------------------------

    def server_changed(self, actor: ServerActor) -> None:
        if self.agent.actors.get(actor.id) is not actor:  # deleted
            self._last.pop(actor.id, None)
            return
        now = _observed(actor)
        before = self._last.get(actor.id)
        self._last[actor.id] = now
        named = counts_players(actor.spec)  # player events come by name (players_changed)
        for event, data in server_events(before, now):
            if not (named and event in PLAYER_EVENTS):
                self.record(actor.id, event, data)

    def players_changed(self, actor: ServerActor, changes: list[tuple[str, str, int]],
                        unnamed: int, count: int) -> None:
        """Joins and leaves seen in the console, each with the player's name; a flood past
        what is named is one event with the change of the count."""
        for kind, name, players in changes:
            self.record(actor.id, f"player.{kind}", {"player": name, "players": players})
        # (unnamed ones come only after MAX_CHANGES named ones: `changes` is not empty)
        if unnamed and changes and (change := count - changes[-1][2]):
            self.record(actor.id, "player.joined" if change > 0 else "player.left",
                        {"players": count, "change": change})

    def backups_changed(self, server_id: str) -> None:
        if self._backup_manager is None:
            return
        records = self._backup_manager.of_server(server_id)
        after = [{"state": b.state, **{k: getattr(b, k, None) for k in _BACKUP_FIELDS}}
                 for b in records]
        for event, data in backup_events(self._backups, after):
            self.record(server_id, event, data)
        for b in records:
            self._backups[b.id] = b.state
        if len(self._backups) > 2 * len(self._backup_manager.records) + 100:  # deleted ones
            self._backups = {k: v for k, v in self._backups.items()
                             if k in self._backup_manager.records}

    def record(self, server_id: str, event: str, data: dict[str, Any]) -> None:
        # PostgreSQL's JSON holds no NUL: a game's output may have one
        data = {k: v[:MAX_TEXT].replace("\x00", "\ufffd") if isinstance(v, str) else v
                for k, v in data.items()}
        self.seq += 1
        self._unsaved.append(models.WorkerEvent(seq=self.seq, at=time.time(), event=event,
                                                server_id=server_id, data=data))
        if len(self._unsaved) > MAX_EVENTS:  # SQLite refuses them for long: memory is bounded
            del self._unsaved[0]
            self.dropped += 1
        self._flush_wake.set()

    # -- saving ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Write what was recorded, FLUSH_DELAY after the first of a burst."""
        while True:
            await self._flush_wake.wait()
            await trio.sleep(FLUSH_DELAY)
            self._flush_wake = trio.Event()
            if not await self.flush():
                await trio.sleep(RETRY)
                self._flush_wake.set()

    async def flush(self) -> bool:
        """One transaction: the new events, and the oldest dropped beyond the bound. False
        when SQLite refused it (they stay in memory and are tried again)."""
        async with self._lock:
            batch = list(self._unsaved)
            cutoff = time.time() - MAX_AGE
            over = len(self._saved) + len(batch) - MAX_EVENTS
            drop_upto, n = 0, 0
            for e in self._saved:  # oldest first
                if n < over or e.at < cutoff:
                    drop_upto, n = e.seq, n + 1
                else:
                    break
            if not batch and not n:
                return True
            meta = {"events_seq": str(self.seq if not batch else batch[-1].seq),
                    "events_dropped": str(self.dropped + n)}
            try:
                await self.store.save_events(batch, drop_upto, meta)
            except StoreClosed:  # the worker is stopping: kept in memory, lost with it
                return True
            except (errors.InsufficientStorage, sqlite3.Error, OSError) as e:
                if str(e) != self._failing:
                    log.error("cannot save webhook events (kept in memory, tried again): %s",
                              e)
                self._failing = str(e)
                return False
            self._failing = None
            if n:
                self.dropped += n
                log.warning("webhook events: the queue is over its bound (%d events, %g "
                            "days): %d oldest dropped", MAX_EVENTS, MAX_AGE / 86400, n)
            while self._saved and self._saved[0].seq <= drop_upto:
                self._saved.popleft()
            if batch:
                last = batch[-1].seq
                self._unsaved = [e for e in self._unsaved if e.seq > last]
                self._saved.extend(batch)
                self._hurry = True
                self._send_wake.set()
            return True

    # -- sending (the host link) -----------------------------------------------------------------

    def batch(self) -> list[models.WorkerEvent]:
        """The oldest saved events the host has not acknowledged, for a heartbeat."""
        out: list[models.WorkerEvent] = []
        size = 0
        for e in itertools.islice(self._saved, BATCH):
            size += len(_encode(e))
            if out and size > BATCH_BYTES:
                break
            out.append(e)
        self._hurry = False
        if out:
            self._sent = max(self._sent, out[-1].seq)
        return out

    async def ack(self, acked: int) -> None:
        """The host holds every event up to `acked`: forget them."""
        if self._saved and acked >= self._sent and self._saved[-1].seq > acked:
            self._hurry = True  # it took the whole batch: the next one at once
            self._send_wake.set()
        if not self._saved or self._saved[0].seq > acked:
            return
        while self._saved and self._saved[0].seq <= acked:
            self._saved.popleft()
        async with self._lock:
            try:
                await self.store.delete_events(acked)
            except StoreClosed:  # sent again at the next start, and skipped
                return
            except (errors.InsufficientStorage, sqlite3.Error, OSError) as e:
                # sent again after a restart; the host skips what it acknowledged
                log.warning("cannot delete acknowledged webhook events: %s", e)

    async def unsent(self) -> None:
        """Returns when saved events wait that no heartbeat carried yet."""
        while not self._hurry:
            await self._send_wake.wait()
            self._send_wake = trio.Event()

    async def clear(self) -> None:
        """This worker's identity is forgotten: its events are no other's."""
        self._unsaved, self._saved = [], deque()
        async with self._lock:
            await self.store.delete_events(self.seq)

    def status(self) -> models.EventQueueStatus:
        return models.EventQueueStatus(queued=len(self._saved) + len(self._unsaved),
                                       dropped=self.dropped)


_encode = msgspec.json.Encoder().encode


def _observed(actor: ServerActor) -> models.ObservedServer:
    return models.ObservedServer.of(actor.id, actor.generation, actor.status)
