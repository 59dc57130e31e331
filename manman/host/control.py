"""The host's operations on servers and workers, and the loops that keep them true: desired
state to PostgreSQL first, then memory, then a push to the worker (fast path). A push that
fails is not an error: the next heartbeat carries what the worker lacks (slow path).

Named `HostControl`, not `Control`: it is the host's half of the control plane, as
`WorkerAgent` is the worker's; the API and the CLI's verbs also "control" servers."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, Literal, TypeVar

import msgspec
import trio

from manman import errors, models, ports
from manman.host.fleet import Fleet, ServerRec, WorkerRec
from manman.host.lastbackup import LastBackups
from manman.host.relay import Relay, Unreachable
from manman.host.store import CommitUnknown, HostStore
from manman.schedules.runs import KEEP_RUNS, ReportedRun, ScheduleRun
from manman.worker.limits.manager import refusal as limits_refusal

log = logging.getLogger("manman.host")

T = TypeVar("T")

# deletes the workers finished, waiting for the next flush; when full, a later heartbeat
# names the same servers again (a deleting server the worker no longer holds)
FINISHED_DELETES_QUEUE = 1000
LIVENESS_INTERVAL = 0.5


def _epoch(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0.0


def _jsonb(run: ScheduleRun) -> Any:
    """A run as PostgreSQL's jsonb takes it: no NUL (an error may quote a game's output)."""
    return msgspec.json.decode(msgspec.json.encode(run).replace(b"\\u0000", b"\\ufffd"))


def _spec_body(s: ServerRec) -> dict[str, Any]:
    """What the worker's PUT takes: every updatable field of the spec, and the generation."""
    body = msgspec.to_builtins(s.spec)
    # what a PUT cannot change (a preset's, fixed at the create) is not sent
    for fixed in ("worker_id", "game_id", "preset", "preset_version", "secret_values"):
        body.pop(fixed, None)
    body["generation"] = s.generation
    return body


class HostControl:
    def __init__(self, store: HostStore, fleet: Fleet, relay: Relay) -> None:
        self.store = store
        self.fleet = fleet
        self.relay = relay
        # the webhooks' intake of the events workers send with their heartbeats
        self.events_sink: Callable[[WorkerRec, list[models.WorkerEvent]],
                                   Awaitable[int]] | None = None
        self._spec_locks: dict[str, trio.Lock] = {}
        # by worker id: a port check and the save it allows are one step, so two creates or
        # changes at once cannot both take one port (taken before any _spec_locks entry)
        self._port_locks: dict[str, trio.Lock] = {}
        self._finished, self._finished_out = trio.open_memory_channel[str](
            FINISHED_DELETES_QUEUE)
        self._flush_lock = trio.Lock()
        self._forget_later: set[str] = set()  # finished deletes the database refused
        self.liveness_sweeps = 0  # how many times the liveness loop has judged the workers
        # writes whose COMMIT got no answer, with their change to memory: learnt before any
        # other write, applied when it happened
        self._unsettled: list[tuple[CommitUnknown, Callable[[], None]]] = []
        self._settle_lock = trio.Lock()
        self.last_backups = LastBackups()  # from the workers' backup reports (/metrics)

    # -- the database first, then memory ----------------------------------------------------------

    async def _save(self, write: Callable[[], Awaitable[T]], apply: Callable[[], None]) -> T:
        """Write to PostgreSQL, then `apply` the change to memory: memory only ever shows
        what the database holds. A DatabaseUnavailable leaves both as they were."""
        await self.settle()
        try:
            result = await write()
        except CommitUnknown as e:
            self._unsettled.append((e, apply))
            raise
        apply()
        return result

    async def settle(self) -> None:
        """Learn what became of the commits that got no answer, and apply those that
        happened; until then every write answers 503 (DatabaseUnavailable)."""
        async with self._settle_lock:
            while self._unsettled:
                e, apply = self._unsettled[0]
                outcome = await self.store.commit_outcome(e.xid, e.pid)
                if outcome is None:
                    raise errors.DatabaseUnavailable()
                self._unsettled.pop(0)
                if outcome == "committed":
                    apply()
                elif outcome == "unknown":  # too old for PostgreSQL to tell: a restart reloads
                    log.error("cannot learn whether transaction %d was committed", e.xid)

    # -- lookups and the contract's refusals ---------------------------------------------------

    def server(self, key: str) -> ServerRec:
        s = self.fleet.server(key)
        if s is None or s.deleting:
            raise errors.NotFound(f"server {key[:100]} not found")
        return s

    def worker(self, worker_id: str) -> WorkerRec:
        w = self.fleet.workers.get(worker_id)
        if w is None:
            raise errors.NotFound(f"worker {worker_id[:100]} not found")
        return w

    @staticmethod
    def check_not_retired(w: WorkerRec) -> None:
        """A retired worker's own calls: its token no longer buys anything."""
        if w.status == "shutdown":
            raise errors.Gone("this worker was shut down by its host")

    @staticmethod
    def _not_shut_down(w: WorkerRec) -> None:
        if w.status == "shutdown":
            raise errors.Conflict(f"worker {w.name} is shut down", "worker_shutdown")

    @staticmethod
    def _not_frozen(w: WorkerRec) -> None:
        if w.status == "frozen":
            raise errors.Conflict(f"worker {w.name} is frozen: it accepts no changes", "frozen")

    def _writable(self, w: WorkerRec) -> None:
        self._not_shut_down(w)
        self._not_frozen(w)

    def reachable_worker(self, s: ServerRec) -> WorkerRec:
        """The worker of a server, for a call that needs it now."""
        w = self.worker(s.worker_id)
        if not self.fleet.reachable(w):
            raise errors.Unavailable(f"worker {w.name} is {self.fleet.worker_status(w)}")
        return w

    async def _push(self, w: WorkerRec, method: str, path: str, json: Any = None,
                    params: dict[str, str] | None = None) -> bool:
        """A best-effort call; True when the worker took it."""
        if not self.fleet.reachable(w):
            return False
        try:
            await self.relay.call(w, method, path, json=json, params=params)
        except Unreachable as e:
            log.info("push to %s failed: %s", w.name, e)
            return False
        except errors.ManmanError:  # refused: the heartbeat's answer settles it
            return False
        return True

    # -- servers ---------------------------------------------------------------------------

    async def create_server(self, spec: models.ServerSpec) -> ServerRec:
        if spec.worker_id is None:
            live = [w for w in self.fleet.workers.values() if w.status != "shutdown"]
            if len(live) != 1:
                raise errors.Invalid("worker_id is required (more than one worker)")
            spec = msgspec.structs.replace(spec, worker_id=live[0].id)
        assert spec.worker_id is not None
        w = self.worker(spec.worker_id)
        self._writable(w)
        if self.fleet.name_taken(spec.name):
            raise errors.Exists.server(spec.name)
        self._check_limits(w, spec)
        async with self._ports_locked(w, bool(spec.ports)):
            self._check_ports(w, spec)
            now = time.time()
            s = ServerRec(id=secrets.token_hex(6), name=spec.name, worker_id=w.id, spec=spec,
                          generation=1, created_at=now, updated_at=now)
            await self._save(lambda: self.store.insert_server(s.id, s.name, w.id, spec, now),
                             lambda: self.fleet.add_server(s))
        body = msgspec.to_builtins(spec)
        body.update(id=s.id, generation=s.generation)
        await self._push(w, "POST", "/server", json=body)
        return s

    @contextlib.asynccontextmanager
    async def _ports_locked(self, w: WorkerRec, needed: bool) -> AsyncIterator[None]:
        if not needed:
            yield
            return
        async with self._port_locks.setdefault(w.id, trio.Lock()):
            yield

    def _check_limits(self, w: WorkerRec, spec: models.ServerSpec) -> None:
        """Refuse (422) limits the worker said it cannot enforce (docs/spec.md "Limits")."""
        reason = limits_refusal(w.capacity, spec)
        if reason is not None:
            raise errors.Invalid(reason)

    def _check_ports(self, w: WorkerRec, spec: models.ServerSpec,
                     current: ServerRec | None = None) -> None:
        """Refuse (409) a fixed port another server of the worker holds, or `auto` ports its
        port_range has no room for. Checked here, before saving: the worker gets the spec
        after, best-effort, and must not be the one to refuse it."""
        if not spec.ports:
            return

        def allocated(s: ServerRec) -> dict[str, int]:
            return dict(s.observed.allocated_ports) if s.observed is not None else {}

        others = sorted((o for o in self.fleet.servers.values() if o.worker_id == w.id
                         and not o.deleting and o is not current),
                        key=lambda o: o.created_at)
        taken = ports.taken_by([(o.name, o.spec, allocated(o)) for o in others])
        ports.check_fixed(spec, taken)
        prange = ports.range_of(w.capacity)
        if prange is None:  # a worker that did not say its range: it places them itself
            return
        # servers the worker has not reported placed yet: where it would place them
        for o in others:
            if ports.unplaced(o.spec, allocated(o)):
                with contextlib.suppress(errors.Conflict):
                    got = ports.allocate(o.spec, prange, taken, allocated(o))
                    taken.update((k, o.name) for k in ports.held(o.spec, got) - taken.keys())
        ports.allocate(spec, prange, taken, allocated(current) if current else None)

    async def update_server(self, s: ServerRec, update: models.ServerUpdate) -> ServerRec:
        w = self.worker(s.worker_id)
        self._writable(w)

        def change(spec: models.ServerSpec) -> models.ServerSpec:
            try:
                new = models.apply_update(spec, update)
            except ValueError as e:
                raise errors.Invalid(str(e)) from None
            if new.name != s.name and self.fleet.name_taken(new.name, but=s.id):
                raise errors.Exists.server(new.name)
            if new.ports != spec.ports:  # a change that leaves them is never refused for them
                self._check_ports(w, new, s)
            if new.limits != spec.limits:
                self._check_limits(w, new)
            return new

        async with self._ports_locked(w, update.ports is not msgspec.UNSET):
            body = await self._change_spec(s, change, restart=update.restart_on_change)
        body["restart_on_change"] = update.restart_on_change
        await self._push(w, "PUT", f"/server/{s.id}", json=body)
        return s

    async def change_schedules(
            self, s: ServerRec,
            how: Callable[[list[models.Schedule]], list[models.Schedule]]) -> ServerRec:
        """A change of the server's schedules, read and written as one step with the spec
        (generation + 1), pushed to the worker; it converges by heartbeat otherwise."""
        w = self.worker(s.worker_id)
        self._writable(w)

        def change(spec: models.ServerSpec) -> models.ServerSpec:
            try:
                return models.apply_update(spec, models.ServerUpdate(
                    schedules=how(spec.schedules)))
            except ValueError as e:
                raise errors.Invalid(str(e)) from None

        body = await self._change_spec(s, change)
        await self._push(w, "PUT", f"/server/{s.id}", json=body)
        return s

    async def _change_spec(self, s: ServerRec,
                           change: Callable[[models.ServerSpec], models.ServerSpec],
                           restart: bool = False) -> dict[str, Any]:
        """Read, change and write a spec as one step: concurrent changes of one server queue
        instead of overwriting each other. Returns what the worker's PUT takes. restart:
        the change asks for a restart, also when the worker only gets it by heartbeat."""
        lock = self._spec_locks.setdefault(s.id, trio.Lock())
        async with lock:
            spec = change(s.spec)
            generation, now = s.generation + 1, time.time()
            restart_generation = generation if restart else s.restart_generation

            def apply() -> None:
                if spec.name != s.name:
                    self.fleet.rename(s, spec.name)
                s.spec, s.generation, s.updated_at = spec, generation, now
                s.restart_generation = restart_generation

            await self._save(lambda: self.store.update_server_spec(
                s.id, spec.name, spec, generation, now, restart_generation), apply)
            return _spec_body(s)

    async def set_desired(self, s: ServerRec, desired: Literal["running", "stopped"]) -> bool:
        """start/stop: a new generation with that desired state, pushed to the worker."""
        body = await self._change_spec(
            s, lambda spec: msgspec.structs.replace(spec, desired_state=desired))
        return await self._push(self.worker(s.worker_id), "PUT", f"/server/{s.id}", json=body)

    async def delete_server(self, s: ServerRec, purge: bool) -> bool:
        """True when gone now; False when it goes later: a running server stops gracefully
        first (up to its stop_timeout, not while the client waits), and a worker that is
        away removes it when it is back."""
        w = self.worker(s.worker_id)
        self._not_frozen(w)

        def apply() -> None:
            s.deleting, s.purge = True, purge

        await self._save(lambda: self.store.mark_deleting(s.id, purge), apply)
        if w.status == "shutdown":
            return await self._forget_now(s.id)
        if not self.fleet.reachable(w):
            return False
        try:
            # a live server stops first on the worker (202): the heartbeat tells when it went
            gone = await self.relay.delete_server(w, s.id, purge)
        except Unreachable:
            return False  # the heartbeat's `remove` list finishes it
        if gone:
            return await self._forget_now(s.id)
        return gone

    async def _forget_now(self, server_id: str) -> bool:
        """The delete is done but for the row: False (202) when the database cannot take
        that now; a flush finishes it."""
        try:
            await self.forget(server_id)
        except errors.DatabaseUnavailable:
            self._forget_later.add(server_id)
            return False
        return True

    async def forget(self, server_id: str) -> None:
        def apply() -> None:
            self.fleet.remove_server(server_id)
            self._spec_locks.pop(server_id, None)

        await self._save(lambda: self.store.delete_server(server_id), apply)

    async def command(self, s: ServerRec, cmd: models.Command) -> models.CommandAccepted:
        w = self.worker(s.worker_id)
        if cmd.type not in ("command", "health"):
            self._writable(w)
        delivered = False
        result: Any = None
        # recorded in the audit by the API, refused or not (manman.host.audit)
        if cmd.type in ("start", "stop"):
            delivered = await self.set_desired(s, "running" if cmd.type == "start"
                                               else "stopped")
        elif cmd.type == "restart":
            if s.spec.desired_state != "running":
                # starting it is the restart: a second one would stop what just started
                delivered = await self.set_desired(s, "running")
            else:
                delivered = await self._push(w, "POST", f"/server/{s.id}/restart")
        else:
            delivered, result = await self._direct(s, cmd)
        command_id = uuid.uuid4().hex
        if result is not None:
            return models.CommandAccepted(command_id=command_id, delivered=True, result=result)
        return models.CommandAccepted(command_id=command_id, delivered=delivered)

    async def _direct(self, s: ServerRec, cmd: models.Command) -> tuple[bool, Any]:
        """kill, install, health, command: they need the worker now."""
        if cmd.type == "command":
            try:
                models.check_console_line(cmd.data or "")  # (the worker's check, too)
            except ValueError as e:
                raise errors.Invalid(str(e)) from None
        w = self.reachable_worker(s)
        if cmd.type == "health":
            return True, await self.relay.health(w, s.id)
        if cmd.type == "command":
            await self.relay.call(w, "POST", f"/server/{s.id}/command", json={"data": cmd.data})
        else:  # kill, install
            await self.relay.call(w, "POST", f"/server/{s.id}/{cmd.type}")
        if cmd.type == "kill":
            # the worker now holds `stopped` as desired: so does the host, in a new generation
            # the kill happened all the same: answered as delivered, not 503
            with contextlib.suppress(errors.DatabaseUnavailable):
                await self.set_desired(s, "stopped")
        return True, None

    async def log_page(self, s: ServerRec, params: dict[str, str]
                       ) -> tuple[WorkerRec, models.LogPage]:
        """Stored console lines of a server, from its worker (which must be reachable)."""
        w = self.reachable_worker(s)
        return w, await self.relay.log_page(w, s.id, params)

    # -- what workers tell the host ------------------------------------------------------------

    def report(self, worker_id: str, server_id: str, obs: models.ObservedServer) -> None:
        """A worker's status report for one of its servers (memory only)."""
        w = self.worker(worker_id)
        if obs.id != server_id:
            raise errors.Invalid("the body's id is not the server in the path")
        if server_id not in self.fleet.servers:
            raise errors.NotFound(f"server {server_id[:100]} not found")
        if not self.fleet.observe(w, obs):
            raise errors.Forbidden("this server belongs to another worker")
        self.fleet.touch(w)

    async def take_events(self, worker_id: str, events: list[models.WorkerEvent]) -> int:
        """A heartbeat's webhook events, handed to the webhooks (`events_sink`); the
        highest seq taken (the worker forgets those)."""
        w = self.worker(worker_id)
        if not events and w.events_acked is not None:
            return w.events_acked  # the heartbeat's usual case: nothing to do
        if self.events_sink is None:  # no webhooks in this host: nothing to keep them for
            return max([w.events_acked or 0, *(e.seq for e in events)])
        return await self.events_sink(w, events)

    def heartbeat(self, worker_id: str, hb: models.Heartbeat) -> models.HeartbeatReply:
        """Record a heartbeat (memory only) and answer it; deletes the worker finished are
        forgotten by the next flush."""
        w = self.worker(worker_id)
        reply = self.fleet.heartbeat(w, hb)
        for s in self.fleet.deleted_on_worker(w, hb.generations):
            try:
                self._finished.send_nowait(s.id)
            except trio.WouldBlock:
                break  # the next heartbeat names them again
        return reply

    async def take_runs(self, worker_id: str, runs: list[ReportedRun]) -> int:
        """A heartbeat's schedule runs into PostgreSQL (one transaction, only when it carries
        some): how many the worker may forget, all or none. Runs of another worker's server,
        of a server being deleted or of a schedule no longer in the spec are dropped."""
        w = self.worker(worker_id)
        rows = []
        for r in runs:
            s = self.fleet.servers.get(r.server_id)
            if s is None or s.worker_id != w.id or s.deleting or r.run.status == "running" \
                    or not any(sc.id == r.run.schedule_id for sc in s.spec.schedules):
                continue
            rows.append((s.id, r.run.schedule_id, r.run.id, _epoch(r.run.started_at),
                         _jsonb(r.run)))
        if not rows:
            return len(runs)
        if not self.store.health.up:
            return 0  # kept by the worker, sent again: the heartbeat does not wait for it
        try:
            await self.store.put_schedule_runs(rows, KEEP_RUNS)
        except errors.DatabaseUnavailable:
            return 0
        except Exception:  # a batch PostgreSQL refuses must not come back at every heartbeat
            log.exception("PostgreSQL refused %d schedule runs of worker %s; dropped",
                          len(rows), w.id)
        else:
            self.fleet.schedule_runs_stored += len(rows)
        return len(runs)

    # -- workers ---------------------------------------------------------------------------

    async def join(self, name: str | None) -> WorkerRec:
        now = time.time()
        w = WorkerRec(id=secrets.token_hex(8), name=name or "worker", status="alive",
                      created_at=now)

        def apply() -> None:
            self.fleet.workers[w.id] = w

        await self._save(lambda: self.store.insert_worker(w.id, w.name, now), apply)
        return w

    async def register(self, w: WorkerRec, reg: models.WorkerRegister) -> WorkerRec:
        self.check_not_retired(w)

        def apply() -> None:
            w.name, w.api_url, w.address = reg.name, reg.api_url.rstrip("/"), reg.address
            w.version, w.capacity, w.registered = reg.version, reg.capacity, True

        await self._save(lambda: self.store.update_worker(
            w.id, name=reg.name, api_url=reg.api_url.rstrip("/"), address=reg.address,
            version=reg.version, capacity=reg.capacity, registered=True), apply)
        self.fleet.touch(w)
        return w

    async def update_worker(self, w: WorkerRec, update: models.WorkerUpdate) -> WorkerRec:
        self._not_shut_down(w)
        fields: dict[str, str] = {}
        if update.name is not msgspec.UNSET:
            fields["name"] = update.name
        if update.status is not msgspec.UNSET:
            fields["status"] = update.status

        def apply() -> None:
            if update.name is not msgspec.UNSET:
                w.name = update.name
            if update.status is not msgspec.UNSET:
                w.status = update.status

        if fields:
            await self._save(lambda: self.store.update_worker(w.id, **fields), apply)
        if update.status is not msgspec.UNSET:
            await self._push(w, "POST", "/freeze" if update.status == "frozen" else "/unfreeze")
        return w

    async def retire_worker(self, w: WorkerRec, reason: str) -> None:
        """Ask it to shut down (its servers stop gracefully), then mark it shut down: its
        later calls get 410."""
        if w.status != "shutdown" and w.api_url:
            try:
                with trio.move_on_after(3):
                    await self.relay.call(w, "POST", "/shutdown", params={"retire": "true"},
                                          timeout=3)
            except errors.ManmanError:
                pass  # retired all the same: its token stops working now

        def apply() -> None:
            w.status = "shutdown"

        await self._save(lambda: self.store.update_worker(w.id, status="shutdown"), apply)
        log.info("worker %s (%s) shut down: %s", w.name, w.id, reason)
        await self.forget_deleted_on_retired()

    async def forget_deleted_on_retired(self) -> None:
        """Deletes waiting for a worker that will never come back are done now: otherwise
        they could never finish, and their names would stay taken."""
        for s in self.fleet.deleting_on_retired():
            await self.forget(s.id)

    # -- the loops -------------------------------------------------------------------------

    async def run(self, flush_interval: float, stop: trio.Event, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The batched writes (`flush`, every flush_interval) and the liveness judge, until
        cancelled. stop: set when the host stops answering heartbeats; from then on it
        must not judge them."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._flush_loop, flush_interval)
            nursery.start_soon(self._liveness_loop, stop)
            task_status.started()

    async def flush(self) -> None:
        """Write what piled up in memory (heartbeats, observed states, the audit trail) and
        forget the servers whose deletes the workers finished. Flushes queue: when one
        returns, what was recorded before it was called is written (or failed to be)."""
        async with self._flush_lock:
            await self.fleet.flush()  # survives database errors by itself
            try:
                await self.settle()
            except errors.DatabaseUnavailable:
                return  # the outage log says it; what is below waits for the database too
            done, self._forget_later = self._forget_later, set()
            while True:
                try:
                    done.add(self._finished_out.receive_nowait())
                except trio.WouldBlock:
                    break
            for sid in done:
                try:
                    if sid in self.fleet.servers:
                        await self.forget(sid)
                except errors.DatabaseUnavailable:
                    self._forget_later.add(sid)  # tried again at the next flush
                except Exception:
                    log.exception("cannot delete server %s yet", sid)
                    self._forget_later.add(sid)

    async def _flush_loop(self, interval: float) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                await trio.sleep(interval)
                # to disk every interval, even while a write to a hung database waits
                await self.fleet.spool_new()
                if not self._flush_lock.locked():
                    nursery.start_soon(self.flush)

    async def _liveness_loop(self, stop: trio.Event) -> None:
        """Workers past worker_expiry without a heartbeat are asked to shut down and
        retired. Time the host itself was down does not count: every worker gets
        worker_expiry from the host's start to be heard from."""
        fleet = self.fleet
        # monotonic: a wall clock stepped forward (NTP, a restored VM) must not retire the fleet
        started = time.monotonic()
        while True:
            await trio.sleep(LIVENESS_INTERVAL)
            if stop.is_set():
                return  # a host that no longer answers heartbeats must not judge them
            fleet.sweep()
            if fleet.worker_expiry <= 0:
                self.liveness_sweeps += 1
                continue
            now = time.monotonic()
            for w in list(fleet.workers.values()):
                # never heard from (joined, not registered): counted from when it joined
                heard = w.seen if w.seen is not None else \
                    now - max(0.0, time.time() - w.created_at)
                last = max(heard, started)
                if w.status != "shutdown" and now - last > fleet.worker_expiry:
                    try:
                        await self.retire_worker(
                            w, f"no heartbeat for {fleet.worker_expiry:g}s")
                        if fleet.watcher is not None:
                            fleet.watcher.worker_changed(w, "unknown", "expired")
                    except errors.DatabaseUnavailable:
                        pass  # retired at a later round; the outage log says why
                    except Exception:
                        log.exception("cannot retire worker %s yet", w.id)
            self.liveness_sweeps += 1
