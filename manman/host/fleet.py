"""The host's live picture of its workers and servers: liveness, heartbeats, reconcile answers.

Loaded from PostgreSQL at start and kept in memory; API writes go to the database first and
then here. Heartbeats and status reports only touch memory and are written in batches
(`flush`), so the heartbeat path does no database I/O. The batches' records that matter
after a crash (the audit trail, observed states) go through the on-disk spool first and
wait there for PostgreSQL as long as it takes (manman.host.spool).
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import trio

from manman import errors, models
from manman.host.spool import CommandRow, ObservedRow, Spool
from manman.host.store import HostStore
from manman.schedules.check import stored_specs

log = logging.getLogger("manman.host.fleet")

HEARTBEAT_PERSIST_EVERY = 5.0  # seconds between writes of a worker's last_heartbeat
DROP_LOG_EVERY = 60.0
FLUSH_CHUNK = 1000  # command rows a transaction: a long outage's backlog fits the timeout


@dataclass(eq=False)
class WorkerRec:
    id: str
    name: str
    status: models.KnownWorkerStatus  # what the host holds
    created_at: float
    api_url: str = ""
    address: str = ""
    version: str = ""
    capacity: dict[str, Any] = field(default_factory=dict)
    token_version: int = 1
    registered: bool = False
    last_heartbeat: float | None = None  # wall clock, survives host restarts
    # what the worker said of itself: `shutdown` when it stops
    reported: models.KnownWorkerStatus = "alive"
    seen: float | None = None  # monotonic time of the last contact with this host process
    persisted_heartbeat: float = 0.0
    # the highest seq of its webhook events taken (manman.host.webhooks.service); a worker
    # that sends events (`sends_events`) has its events derived from its reports no more
    events_acked: int | None = None
    sends_events: bool = False


@dataclass(eq=False)
class ServerRec:
    id: str
    name: str
    worker_id: str
    spec: models.ServerSpec
    generation: int
    created_at: float
    updated_at: float
    observed: models.ObservedServer | None = None
    observed_generation: int = 0
    deleting: bool = False
    purge: bool = False
    restart_generation: int = 0  # the last generation whose change asked for a restart


def _timing_only(before: models.ObservedServer | None, after: models.ObservedServer) -> bool:
    """The two differ in nothing but their query's checked_at and latency_ms, and their
    stats (a live sample: memory only)."""
    if before is None or (before.query is None) != (after.query is None):
        return False
    same = after.query
    if before.query is not None and after.query is not None:
        same = msgspec.structs.replace(after.query, checked_at=before.query.checked_at,
                                       latency_ms=before.query.latency_ms)
    return msgspec.structs.replace(after, query=same, stats=before.stats) == before


class Watcher(Protocol):
    """Told of changes as reports and sweeps find them (the webhooks): called on the
    heartbeat path, so it must not block or do I/O."""

    def server_changed(self, s: ServerRec, before: models.ObservedServer | None,
                       after: models.ObservedServer) -> None: ...

    def worker_changed(self, w: WorkerRec, before: str | None, now: str) -> None: ...

    def derives(self, s: ServerRec) -> bool: ...  # False: derive none of its events

    def backups_changed(self, s: ServerRec, before: dict[str, str],
                        after: list[dict[str, Any]]) -> None: ...


class Fleet:
    def __init__(self, store: HostStore, worker_timeout: float, worker_expiry: float,
                 spool: Spool | None = None) -> None:
        self.store = store
        self.spool = spool
        self.worker_timeout = worker_timeout
        self.worker_expiry = worker_expiry
        self.workers: dict[str, WorkerRec] = {}
        self.servers: dict[str, ServerRec] = {}
        self._by_worker: dict[str, dict[str, ServerRec]] = {}  # the heartbeat's index
        self._by_name: dict[str, str] = {}
        self._dirty_observed: set[str] = set()
        self._commands: list[CommandRow] = []  # accepted, not in the spool yet
        # in the spool (or memory, without one), not in PostgreSQL yet
        self._pending_commands: list[CommandRow] = []
        self._pending_observed: dict[str, ObservedRow] = {}
        self._spool_lock = trio.Lock()
        self.records_dropped = 0  # command rows the full spool had no room for
        self._drop_logged = -DROP_LOG_EVERY
        store.health.waiting = lambda: sum(self.pending_records().values())
        self.heartbeats_received = 0
        self.heartbeats_missed = 0
        self.schedule_runs_stored = 0  # runs the heartbeats carried, written to PostgreSQL
        self._last_status: dict[str, str] = {}
        self.watcher: Watcher | None = None

    # -- loading ---------------------------------------------------------------------------

    async def load(self) -> None:
        if self.spool is not None:  # what a crashed host left, before the rows it updates
            spool = self.spool
            commands, observed = await trio.to_thread.run_sync(spool.load)
            if commands or observed:
                log.info("%s: %d audit records and %d observed states from before the "
                         "last stop", spool.path, len(commands), len(observed))
                self._pending_commands = commands
                self._pending_observed = {o[0]: o for o in observed}
                await self._write_pending([])
        now_wall, now_mono = time.time(), time.monotonic()
        for r in await self.store.load_workers():
            w = WorkerRec(id=r["id"], name=r["name"], status=r["status"],
                          created_at=r["created_at"], api_url=r["api_url"],
                          address=r["address"], version=r["version"],
                          capacity=dict(r["capacity"] or {}), token_version=r["token_version"],
                          registered=r["registered"], last_heartbeat=r["last_heartbeat"],
                          events_acked=r["events_acked"],
                          sends_events=r["events_acked"] is not None)
            if w.last_heartbeat is not None:
                # a worker that heartbeated just before a host restart is not `unknown` now
                w.seen = now_mono - max(0.0, now_wall - w.last_heartbeat)
                w.persisted_heartbeat = w.last_heartbeat
            self.workers[w.id] = w
        for r in await self.store.load_servers():
            with stored_specs():  # as saved: a check made stricter since does not refuse it
                spec = msgspec.convert(r["spec"], models.ServerSpec)
            s = ServerRec(id=r["id"], name=r["name"], worker_id=r["worker_id"], spec=spec,
                          generation=r["generation"], created_at=r["created_at"],
                          updated_at=r["updated_at"],
                          observed=msgspec.convert(r["observed"], models.ObservedServer)
                          if r["observed"] else None,
                          observed_generation=r["observed_generation"],
                          deleting=r["deleting"], purge=r["purge"],
                          restart_generation=r["restart_generation"])
            self.add_server(s)

    # -- lookups ---------------------------------------------------------------------------

    def server(self, key: str) -> ServerRec | None:
        """By id, else by name."""
        s = self.servers.get(key)
        if s is None and key in self._by_name:
            s = self.servers.get(self._by_name[key])
        return s

    def name_taken(self, name: str, but: str | None = None) -> bool:
        owner = self._by_name.get(name)
        return owner is not None and owner != but

    def add_server(self, s: ServerRec) -> None:
        self.servers[s.id] = s
        self._by_worker.setdefault(s.worker_id, {})[s.id] = s
        self._by_name[s.name] = s.id

    def rename(self, s: ServerRec, name: str) -> None:
        if self._by_name.get(s.name) == s.id:
            del self._by_name[s.name]
        s.name = name
        self._by_name[name] = s.id

    def remove_server(self, server_id: str) -> None:
        s = self.servers.pop(server_id, None)
        if s is not None:
            self._by_worker.get(s.worker_id, {}).pop(server_id, None)
            if self._by_name.get(s.name) == server_id:
                del self._by_name[s.name]

    def worker_status(self, w: WorkerRec) -> models.WorkerStatus:
        """What an operator sees: the host's record, or `unknown` without recent heartbeats."""
        if w.status == "shutdown" or w.reported == "shutdown":
            return "shutdown"
        if w.seen is None or time.monotonic() - w.seen > self.worker_timeout:
            return "unknown"
        return w.status

    def reachable(self, w: WorkerRec) -> bool:
        return self.worker_status(w) in ("alive", "frozen") and bool(w.api_url)

    # -- views -----------------------------------------------------------------------------

    def server_view(self, s: ServerRec) -> models.Server:
        w = self.workers.get(s.worker_id)
        wstatus: models.WorkerStatus = self.worker_status(w) if w else "unknown"
        status = models.ServerStatus(updated_at=s.updated_at)
        if s.observed is not None:
            status = s.observed.status()
            status.updated_at = max(status.updated_at, s.updated_at)
        if wstatus in ("unknown", "shutdown"):
            status.state = "unknown"
        return models.server_view(s.id, s.spec, status, generation=s.generation,
                                  observed_generation=s.observed_generation,
                                  worker_status=wstatus, log_url=f"/server/{s.id}/log/ws")

    def worker_view(self, w: WorkerRec) -> models.Worker:
        return models.Worker(id=w.id, name=w.name, status=self.worker_status(w),
                             api_url=w.api_url, address=w.address, version=w.version,
                             capacity=w.capacity,
                             servers=len(self._by_worker.get(w.id, ())),
                             last_heartbeat=w.last_heartbeat, created_at=w.created_at)

    # -- the hot path: heartbeats and reports (memory only) -----------------------------------

    def touch(self, w: WorkerRec) -> None:
        if self.worker_status(w) == "unknown" and w.seen is not None:
            log.info("worker %s (%s) is back", w.name, w.id)
        w.seen = time.monotonic()
        w.last_heartbeat = time.time()

    def observe(self, w: WorkerRec, obs: models.ObservedServer) -> bool:
        """Take one server's reported status; False when it is not this worker's."""
        s = self.servers.get(obs.id)
        if s is None or s.worker_id != w.id:
            return False
        if s.observed != obs or s.observed_generation != obs.observed_generation:
            # a probe's new time and latency alone are shown, not written to PostgreSQL
            if not (s.observed_generation == obs.observed_generation
                    and _timing_only(s.observed, obs)):
                self._dirty_observed.add(s.id)
                if self.watcher is not None:
                    self.watcher.server_changed(s, s.observed, obs)
            s.observed = obs
            s.observed_generation = obs.observed_generation
        return True

    def heartbeat(self, w: WorkerRec, hb: models.Heartbeat) -> models.HeartbeatReply:
        """Record a heartbeat; answer with the specs the worker lacks and what to remove."""
        self.heartbeats_received += 1
        self.touch(w)
        w.reported = hb.status
        if hb.events is not None:  # it records its events: none is derived from now on
            w.sends_events = True
        for obs in hb.servers:
            self.observe(w, obs)
        return self.reconcile(w, hb.generations)

    def reconcile(self, w: WorkerRec, held: dict[str, int]) -> models.HeartbeatReply:
        """Pure on memory: desired specs whose generation the worker does not hold, and
        servers it holds that are deleted (or were never this host's)."""
        desired: list[models.DesiredServer] = []
        remove: list[models.RemoveServer] = []
        mine = self._by_worker.get(w.id, {})
        for s in mine.values():
            if s.deleting:
                if s.id in held:
                    remove.append(models.RemoveServer(s.id, s.purge))
                continue
            have = held.get(s.id)
            if have != s.generation:
                desired.append(models.DesiredServer(
                    id=s.id, generation=s.generation, spec=s.spec,
                    restart=have is not None and s.restart_generation > have))
        for sid in held:
            if sid not in mine:
                remove.append(models.RemoveServer(sid))
        return models.HeartbeatReply(status="frozen" if w.status == "frozen" else "alive",
                                     servers=desired, remove=remove)

    def deleting_on_retired(self) -> list[ServerRec]:
        return [s for s in self.servers.values() if s.deleting and
                (w := self.workers.get(s.worker_id)) is not None and w.status == "shutdown"]

    def deleted_on_worker(self, w: WorkerRec, held: dict[str, int]) -> list[ServerRec]:
        """Servers being deleted that the worker no longer holds: ready to forget."""
        return [s for s in self._by_worker.get(w.id, {}).values()
                if s.deleting and s.id not in held]

    def sweep(self) -> None:
        """Notice workers that just went `unknown` (missed heartbeats): count and log it."""
        for w in self.workers.values():
            now = self.worker_status(w)
            before = self._last_status.get(w.id)
            if now == "unknown" and before in ("alive", "frozen"):
                self.heartbeats_missed += 1
                log.warning("worker %s (%s) missed its heartbeats: unknown", w.name, w.id)
            if self.watcher is not None and now != before:
                self.watcher.worker_changed(w, before, now)
            self._last_status[w.id] = now

    def record_command(self, row: tuple[Any, ...]) -> None:
        self._commands.append(row)

    def pending_records(self) -> dict[str, int]:
        """Records waiting for PostgreSQL, by kind (for /metrics and the outage log)."""
        return {"audit": len(self._commands) + len(self._pending_commands),
                "observed": len(self._dirty_observed | self._pending_observed.keys())}

    async def spool_new(self) -> None:
        """Move what was recorded since the last call from memory to the spool (one write and
        one fsync): from then on a host crash does not lose it. Called every flush_interval
        whatever PostgreSQL does, so a hung database does not widen what a crash loses."""
        async with self._spool_lock:
            observed = []
            for sid in self._dirty_observed:
                s = self.servers.get(sid)
                if s is not None and s.observed is not None:
                    observed.append((sid, msgspec.to_builtins(
                        msgspec.structs.replace(s.observed, stats=None)),
                                     s.observed_generation))
            self._dirty_observed = set()
            commands, self._commands = self._commands, []
            if not (commands or observed):
                return
            kept = len(commands)
            if self.spool is not None:
                kept, _ = await trio.to_thread.run_sync(self.spool.append, commands, observed)
            if kept < len(commands):
                self._drop(len(commands) - kept)
            self._pending_commands.extend(commands[:kept])
            # observed states are at most one a server: memory holds them whatever the spool
            self._pending_observed.update((o[0], o) for o in observed)

    async def flush(self) -> None:
        """Spool what piled up since the last flush, then write everything pending to
        PostgreSQL. A database that is away keeps it pending (no error: the store's outage
        log says so); the spool is emptied once PostgreSQL holds it all."""
        beats = []
        for w in self.workers.values():
            if w.last_heartbeat and w.last_heartbeat - w.persisted_heartbeat >= \
                    HEARTBEAT_PERSIST_EVERY:
                beats.append((w.id, w.last_heartbeat))
                w.persisted_heartbeat = w.last_heartbeat
        await self.spool_new()
        if not (beats or self._pending_commands or self._pending_observed):
            if not self.store.health.up:
                await self.store.probe()  # to notice (and log) the end of an outage
            return
        if not await self._write_pending(beats):
            for w_id, _ in beats:
                if w_id in self.workers:
                    self.workers[w_id].persisted_heartbeat = 0.0

    async def _write_pending(self, beats: list[tuple[str, float]]) -> bool:
        """Write the pending records, FLUSH_CHUNK a transaction (a long outage's backlog
        must not outgrow the database timeout); True when PostgreSQL holds them all."""
        while beats or self._pending_observed or self._pending_commands:
            observed = list(itertools.islice(self._pending_observed.values(), FLUSH_CHUNK))
            chunk = self._pending_commands[:FLUSH_CHUNK - len(observed)]
            try:
                await self.store.flush(beats, observed, chunk)
            except errors.DatabaseUnavailable:
                return False
            except Exception:  # a record PostgreSQL refuses must not hold up the others
                log.exception("PostgreSQL refused a batch; writing its records one by one")
                try:
                    await self._write_one_by_one(beats, observed, chunk)
                except errors.DatabaseUnavailable:
                    return False
            beats = []
            del self._pending_commands[:len(chunk)]  # spool_new only appends meanwhile
            for o in observed:
                if self._pending_observed.get(o[0]) is o:  # not replaced by a newer one
                    del self._pending_observed[o[0]]
        if self.spool is not None:
            async with self._spool_lock:  # nothing spooled meanwhile may be cut
                if not (self._pending_commands or self._pending_observed):
                    await trio.to_thread.run_sync(self.spool.clear)
        return True

    async def _write_one_by_one(self, beats: list[tuple[str, float]],
                                observed: list[ObservedRow], commands: list[CommandRow]
                                ) -> None:
        bad = 0
        one: tuple[list[tuple[str, float]], list[ObservedRow], list[CommandRow]]
        for one in ([([b], [], []) for b in beats] + [([], [o], []) for o in observed] +
                    [([], [], [c]) for c in commands]):
            try:
                await self.store.flush(*one)
            except errors.DatabaseUnavailable:
                raise
            except Exception as e:
                bad += 1
                log.error("PostgreSQL refused a record, dropped: %s: %s", type(e).__name__, e)
        self.records_dropped += bad

    def _drop(self, n: int) -> None:
        self.records_dropped += n
        now = time.monotonic()
        if now - self._drop_logged >= DROP_LOG_EVERY:  # one line a minute while it is full
            self._drop_logged = now
            log.error("the spool is full (%d bytes): audit records are dropped until "
                      "PostgreSQL takes them; %d dropped so far",
                      self.spool.bound if self.spool else 0, self.records_dropped)
