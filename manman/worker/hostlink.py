"""A worker's link to its host: join once, register, heartbeat, report state changes, send
its webhook events (with the heartbeats; manman.worker.events), and apply the desired specs
the host's replies carry (the pull half of reconciliation)."""

from __future__ import annotations

import contextlib
import logging
from typing import Protocol

import httpx
import msgspec
import trio

from manman import __version__, errors, models
from manman.backoff import Backoff
from manman.config import WorkerConfig
from manman.schedules.check import stored_specs
from manman.schedules.runs import ReportedRun
from manman.worker.actor import ServerActor
from manman.worker.agent import WorkerAgent
from manman.worker.events import EventQueue
from manman.worker.store import StoreClosed

log = logging.getLogger("manman.worker.hostlink")

EVENT_GAP = 0.2  # new events go out with a heartbeat this soon after the last one

_reply = msgspec.json.Decoder(models.HeartbeatReply).decode


class Retired(Exception):
    """The host answered 410: this worker was shut down for good."""


def observed(actor: ServerActor) -> models.ObservedServer:
    return models.ObservedServer.of(actor.id, actor.generation, actor.status)


class RunOutbox(Protocol):
    """Schedule runs that ended and the host has not taken (manman.worker.schedules)."""

    def unreported(self) -> list[ReportedRun]: ...

    def taken(self, runs: list[ReportedRun]) -> None: ...


class HostLink:
    """The agent's `ServerObserver`: a state change is reported to the host at once."""

    def __init__(self, agent: WorkerAgent, cfg: WorkerConfig,
                 events: EventQueue | None = None) -> None:
        self.agent = agent
        self.cfg = cfg
        self.events = events
        self.http = httpx.AsyncClient(base_url=cfg.host_url.rstrip("/"), timeout=10)
        self.worker_id = ""
        self.token = ""
        self._changed: set[str] = set()
        self._changed_wake = trio.Event()
        self._removing: set[str] = set()
        self.heartbeats_sent = 0
        self.heartbeats_failed = 0
        self.last_error: str | None = None
        self._tasks: trio.CancelScope | None = None  # registration, reports, heartbeats
        # why a server of the host's answers could not be applied, as last logged: every
        # heartbeat repeats the answer, the log says it once
        self._refused: dict[str, str] = {}
        self.runs: RunOutbox | None = None  # sent with the heartbeats until the host has them

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    # -- identity --------------------------------------------------------------------------

    async def identity(self) -> str:
        """This worker's token: from its SQLite store, or by joining (retried until the host
        answers)."""
        store = self.agent.store
        assert store is not None
        worker_id, token = await store.get_meta("worker_id"), await store.get_meta("worker_token")
        if worker_id and token:
            self.worker_id, self.token = worker_id, token
            return token
        if not self.cfg.join_token:
            raise errors.StartupError("config: worker.join_token is needed to join a host "
                                      "(or set worker.host_url = \"\" to run standalone)")
        backoff = Backoff(0.5, 15)
        while True:
            try:
                r = await self.http.post("/worker", json={"name": self.cfg.effective_name()},
                                         headers={"Authorization":
                                                  f"Bearer {self.cfg.join_token}"})
                if r.status_code == 201:
                    creds = msgspec.json.decode(r.content, type=models.WorkerCredentials)
                    break
                if r.status_code in (401, 403):
                    raise errors.StartupError(
                        f"the host refused the join token ({r.status_code})")
                log.warning("join: host answered %s; retrying", r.status_code)
            except httpx.HTTPError as e:
                log.warning("join: host %s unreachable (%s); retrying", self.cfg.host_url,
                            type(e).__name__)
            await trio.sleep(backoff.next())
        self.worker_id, self.token = creds.worker_id, creds.token
        await store.set_meta({"worker_id": creds.worker_id, "worker_token": creds.token})
        log.info("joined host %s as worker %s", self.cfg.host_url, creds.worker_id)
        return creds.token

    # -- running ---------------------------------------------------------------------------

    async def run(self, api_url: str,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            async with trio.open_nursery() as nursery:
                self._tasks = nursery.cancel_scope
                await self._register(api_url)
                task_status.started()
                started = True
                nursery.start_soon(self._reporter)
                await self._heartbeats(nursery)
        except* Retired:
            log.warning("the host retired this worker (410): stopping every server and "
                        "exiting; a new start joins again")
            await self._forget_identity()
            self.agent.request_shutdown(keep_desired=False)
            if not started:  # retired while it was away: the worker still stops gracefully
                task_status.started()

    async def _register(self, api_url: str) -> None:
        body = models.WorkerRegister(
            name=self.cfg.effective_name(), api_url=api_url,
            address=api_url.split("//", 1)[-1].rsplit(":", 1)[0], version=__version__,
            capacity={**{k: v for k, v in self.agent.resources().items()
                         if k in ("cpus", "memory_total")},
                      "port_range": self.cfg.port_range,
                      **self.agent.limits.capacity()})  # the host refuses a full range
        backoff = Backoff(0.5, 15)
        while True:
            try:
                r = await self.http.post(f"/worker/{self.worker_id}",
                                         content=msgspec.json.encode(body),
                                         headers=self._auth())
                if r.status_code == 200:
                    log.info("registered with %s as %s", self.cfg.host_url, api_url)
                    return
                if r.status_code == 410:
                    raise Retired()
                if r.status_code == 401:
                    # not transient (a proxy's 404 would be): this host never issued this
                    # identity (its data was reset, or it is another host); rejoining would
                    # make the host remove every server this worker holds: a person decides
                    raise errors.StartupError(
                        f"the host at {self.cfg.host_url} does not know this worker "
                        f"({r.status_code}); to join it as a new worker, remove "
                        f"{self.cfg.data_dir / 'worker.sqlite3'} (its servers are forgotten)")
                self._error(f"register: host answered {r.status_code}")
            except httpx.HTTPError as e:
                self._error(f"register: host unreachable ({type(e).__name__})")
            await trio.sleep(backoff.next())

    def _error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("%s; retrying", message)
        self.last_error = message

    async def _heartbeats(self, nursery: trio.Nursery) -> None:
        interval = self.cfg.heartbeat_interval
        while True:
            started = trio.current_time()
            answered = await self.heartbeat(nursery)
            with trio.move_on_at(started + interval):
                if answered and self.events is not None:
                    # events saved since: sooner than the interval (not while the host is away)
                    await trio.sleep_until(started + EVENT_GAP)
                    await self.events.unsent()
                else:
                    await trio.sleep_forever()

    def heartbeat_body(self, status: models.KnownWorkerStatus | None = None) -> models.Heartbeat:
        actors = list(self.agent.actors.values())
        # a worker shutting down says so only in its last heartbeat (`status`)
        st = status or ("frozen" if self.agent.status == "frozen" else "alive")
        return models.Heartbeat(status=st,
                                servers=[observed(a) for a in actors],
                                generations={a.id: a.generation for a in actors},
                                events=self.events.batch() if self.events is not None else None,
                                schedule_runs=self.runs.unreported() if self.runs else [])

    async def heartbeat(self, nursery: trio.Nursery) -> bool:
        """One heartbeat; True when the host answered it."""
        body = self.heartbeat_body()
        try:
            r = await self.http.post(f"/worker/{self.worker_id}/health",
                                     content=msgspec.json.encode(body),
                                     headers=self._auth())
        except httpx.HTTPError as e:
            self.heartbeats_failed += 1
            self._error(f"heartbeat: host unreachable ({type(e).__name__})")
            return False
        if r.status_code == 410:
            raise Retired()
        if r.status_code != 200:
            self.heartbeats_failed += 1
            self._error(f"heartbeat: host answered {r.status_code} {r.text[:200]}")
            return False
        if self.last_error:
            log.info("host reachable again")
            self.last_error = None
        self.heartbeats_sent += 1
        try:
            with stored_specs():  # the host checked them: saved specs, as far as this goes
                reply = _reply(r.content)
        except msgspec.MsgspecError as e:  # a host of another version: keep running
            self._error(f"heartbeat: cannot read the host's answer ({e})")
            return False
        if reply.events_acked is not None and self.events is not None:
            await self.events.ack(reply.events_acked)
        if self.runs is not None and reply.runs_taken:
            self.runs.taken(body.schedule_runs[:reply.runs_taken])
        await self.apply(reply, nursery)
        return True

    async def apply(self, reply: models.HeartbeatReply, nursery: trio.Nursery) -> None:
        """Work towards the host's desired state."""
        agent = self.agent
        try:
            if reply.status == "frozen" and agent.status == "alive":
                await agent.set_frozen(True)
            elif reply.status == "alive" and agent.status == "frozen":
                await agent.set_frozen(False)
        except errors.InsufficientStorage as e:  # not applied: nothing else is, until saved
            self._refuse("", f"cannot {'freeze' if reply.status == 'frozen' else 'unfreeze'}"
                             f" this worker: {e}")
            return
        self._refused.pop("", None)
        if agent.status != "alive":
            return  # frozen: keeps running, applies nothing
        for d in reply.servers:
            actor = agent.actors.get(d.id)
            try:
                if actor is None:
                    await agent.create(d.spec, d.id, d.generation)
                elif actor.generation < d.generation:  # never back to an older spec
                    # applied now, saved in a batch when it can be: the host holds it
                    actor.update_spec(d.spec, d.generation, restart_on_change=d.restart)
            except errors.Exists as e:
                if d.id in agent.actors or agent.creating(d.id):
                    # the push of a create and this answer raced: it is there, or coming
                    log.debug("server %s: %s (the push made it)", d.id, e)
                else:
                    self._refuse(d.id, f"cannot apply server {d.id}: {e}")
            except errors.ManmanError as e:
                self._refuse(d.id, f"cannot apply server {d.id}: {e}")
            except Exception:  # one server's trouble must not stop the rest
                log.exception("cannot apply server %s", d.id)
            else:
                self._refused.pop(d.id, None)
        asked = {"", *(d.id for d in reply.servers), *(f"remove {r.id}" for r in reply.remove)}
        for key in self._refused.keys() - asked:  # no longer asked for: forgotten
            del self._refused[key]
        for rm in reply.remove:
            actor = agent.actors.get(rm.id)
            if actor is not None and actor.id not in self._removing | agent.removing:
                self._removing.add(actor.id)
                nursery.start_soon(self._remove, actor, rm.purge)

    async def _remove(self, actor: ServerActor, purge: bool) -> None:
        key = f"remove {actor.id}"
        try:
            await self.agent.delete(actor, stop=True, purge=purge)
            log.info("removed server %s (deleted on the host)", actor.id)
            self._refused.pop(key, None)
        except (errors.Conflict, errors.InsufficientStorage) as e:
            self._refuse(key, f"cannot remove server {actor.id} now: {e}")
        finally:
            self._removing.discard(actor.id)

    def _refuse(self, key: str, message: str) -> None:
        """Log why the host's answer could not be applied, once while it stays the same."""
        if self._refused.get(key) != message:
            log.warning("%s", message)
            self._refused[key] = message

    # -- state changes reach the host at once -------------------------------------------------

    def server_changed(self, actor: ServerActor) -> None:
        self._changed.add(actor.id)
        self._changed_wake.set()

    async def _reporter(self) -> None:
        while True:
            await self._changed_wake.wait()
            self._changed_wake = trio.Event()
            await trio.sleep(0.01)  # a burst of transitions becomes one report per server
            ids, self._changed = self._changed, set()
            for sid in ids:
                actor = self.agent.actors.get(sid)
                if actor is None:
                    continue
                try:
                    r = await self.http.post(f"/server/{sid}/health",
                                             content=msgspec.json.encode(observed(actor)),
                                             headers=self._auth())
                    if r.status_code == 410:
                        return
                except httpx.HTTPError:
                    pass  # the next heartbeat carries it

    async def closing(self) -> None:
        """Tell the host this worker stopped (best effort) and close the client."""
        if self.http.is_closed:
            return
        if self._tasks is not None:
            # no report or heartbeat may start on the client being closed (the last state
            # changes of the shutdown wake the reporter)
            self._tasks.cancel()
        with trio.move_on_after(2):
            with contextlib.suppress(httpx.HTTPError):
                await self.http.post(f"/worker/{self.worker_id}/health",
                                     content=msgspec.json.encode(
                                         self.heartbeat_body("shutdown")),
                                     headers=self._auth())
        with trio.move_on_after(1):
            await self.http.aclose()

    async def _forget_identity(self) -> None:
        store = self.agent.store
        try:
            if store is not None:
                await store.set_meta({"worker_id": None, "worker_token": None})
                if self.events is not None:
                    await self.events.clear()
                return
        except StoreClosed:  # (closed meanwhile: the worker is stopping)
            pass
        # the retired token stays: the next start meets 410 again and forgets it then
        log.warning("the retired identity could not be forgotten now (the worker is "
                    "stopping); the next start does it")

