"""The worker's schedules: a ServerSchedules per server, kept in step with the specs (the
schedules travel in the spec, so they converge by heartbeat like the rest of it), acting on
the actors, their runs saved per server (servers/<id>/schedule-runs.json) after each one,
and each ended run reported to the host with a heartbeat until the host holds it."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import trio

from manman import errors
from manman.models import Schedule, ScheduleFailure
from manman.schedules.runs import REPORT_BATCH, ReportedRun
from manman.schedules.views import ScheduleRun
from manman.worker.actor import ServerActor
from manman.worker.agent import WorkerAgent
from manman.worker.backups.manager import BackupManager
from manman.worker.backups.model import BackupCreate
from manman.worker.schedules.run import TaskFailed
from manman.worker.schedules.server import ServerSchedules
from manman.worker.schedules.target import Snapshot, Watches

log = logging.getLogger("manman.worker.schedules")

RUNS_FILE = "schedule-runs.json"
_runs_type = dict[str, list[ScheduleRun]]


class RunsFile(msgspec.Struct):
    runs: _runs_type  # by schedule, newest first
    unreported: dict[str, list[int]]  # the run ids the host had not taken, by schedule


class ActorTarget:
    """A schedule's server, as the worker holds it (the actor rebuilt after a fault too)."""

    def __init__(self, agent: WorkerAgent, server_id: str,
                 backups: BackupManager | None = None) -> None:
        self.agent = agent
        self.server_id = server_id
        self.backups = backups
        self.watches = Watches()

    def actor(self) -> ServerActor:
        actor = self.agent.actors.get(self.server_id)
        if actor is None:
            raise errors.NotFound("the server was deleted")
        return actor

    def snapshot(self) -> Snapshot:
        st = self.actor().status
        q = st.query
        return Snapshot(state=st.state, ready=st.ready, started_at=st.started_at,
                        players=q.players if q is not None and q.ok else None)

    async def power(self, action: str) -> None:
        assert action in ("start", "stop", "restart", "kill")
        await self.agent.act(self.actor(), action)  # type: ignore[arg-type]

    def command(self, line: str) -> None:
        self.agent.send_console(self.actor(), line)

    def update(self) -> None:
        actor = self.actor()
        self.agent.check_writable(actor)
        if actor.updater is None:
            raise errors.Invalid("update: not available (only steamcmd servers)")
        actor.run_update()

    def note(self, text: str) -> None:
        self.actor().broker.note(text)

    async def backup(self, wait: bool) -> None:
        if self.backups is None:
            raise errors.Invalid("backup: not available on this worker")
        b = await self.backups.create(self.actor(), BackupCreate())
        if wait:
            await self.backups.wait_ended(b)
            if b.state == "failed":
                raise TaskFailed(f"the backup failed: {b.error}")


class WorkerSchedules:
    """Told of every server change (an agent observer)."""

    def __init__(self, agent: WorkerAgent, backups: BackupManager | None = None) -> None:
        self.agent = agent
        self.backups = backups
        self.wall = time.time  # the clock the crons are read by
        self.servers: dict[str, ServerSchedules] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for actor in list(self.agent.actors.values()):
                self.server_changed(actor)
            task_status.started()
            await trio.sleep_forever()

    def server_changed(self, actor: ServerActor) -> None:
        if self._nursery is None:
            return
        sid = actor.id
        ss = self.servers.get(sid)
        if sid not in self.agent.actors:  # deleted
            if ss is not None:
                del self.servers[sid]
                self._scopes.pop(sid).cancel()
            return
        if ss is None:
            if not actor.spec.schedules:
                return  # made at the first schedule: no task for a server without any
            ss = self._start(actor)
        if ss.source is not actor.spec.schedules:
            ss.set_schedules(actor.spec.schedules)
        assert isinstance(ss.target, ActorTarget)
        ss.target.watches.changed(actor.status.state)

    def _start(self, actor: ServerActor) -> ServerSchedules:
        assert self._nursery is not None
        path = actor.server_dir / RUNS_FILE
        lock = trio.Lock()

        async def save() -> None:
            async with lock:
                await _save_runs(path, ss)

        target = ActorTarget(self.agent, actor.id, self.backups)

        def failed(run: ScheduleRun) -> None:
            a = target.actor()
            a.status.schedule_failure = ScheduleFailure(
                schedule_id=run.schedule_id, run_id=run.id, reason=run.reason,
                at=self.wall())
            a.status_changed()  # reported: the host's webhooks send schedule.failed

        ss = ServerSchedules(actor.id, target, lambda: self.wall(), save, failed)
        ss.load_runs(*_load_runs(path))
        self.servers[actor.id] = ss
        scope = trio.CancelScope()
        self._scopes[actor.id] = scope
        self._nursery.start_soon(self._serve, ss, scope)
        return ss

    def set_wall(self, wall: Callable[[], float]) -> None:
        """Read the crons by another clock from now on (the tests': a minute begins soon)."""
        self.wall = wall
        for ss in self.servers.values():
            ss.wake()

    @staticmethod
    async def _serve(ss: ServerSchedules, scope: trio.CancelScope) -> None:
        with scope:
            await ss.serve()

    # -- the runs the host has not taken (the heartbeat's outbox) -----------------------------

    def unreported(self, limit: int = REPORT_BATCH) -> list[ReportedRun]:
        """The oldest runs the host has not taken, at most `limit`; none when none ended."""
        out: list[ReportedRun] = []
        for sid, ss in self.servers.items():
            for run in ss.unreported.values():
                if len(out) >= limit:
                    return out
                out.append(ReportedRun(sid, run))
        return out

    def taken(self, runs: list[ReportedRun]) -> None:
        """The host holds these: not sent again (saved with the next run's end)."""
        for r in runs:
            ss = self.servers.get(r.server_id)
            if ss is not None:
                ss.reported(r.run)

    # -- for the API -------------------------------------------------------------------------

    def of(self, actor: ServerActor) -> ServerSchedules | None:
        return self.servers.get(actor.id)

    async def fire_now(self, actor: ServerActor, s: Schedule) -> ScheduleRun:
        self.agent.check_writable(actor)
        ss = self.servers.get(actor.id)
        if ss is None:
            raise errors.Unavailable("the server's schedules are starting; try again")
        with trio.move_on_after(5):
            await ss.started.wait()  # a schedule just added: its loop is starting
        if not ss.started.is_set():
            raise errors.Unavailable("the server's schedules are starting; try again")
        return ss.fire(s, "manual", None)


def _load_runs(path: Path) -> tuple[_runs_type, dict[str, list[int]] | None]:
    """The runs, and the ids of those the host had not taken (None: a file written before
    the host kept runs: all of them)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}, {}
    except OSError as e:
        log.warning("cannot read %s: %s", path, e)
        return {}, {}
    try:
        f = msgspec.json.decode(data, type=RunsFile)
        return f.runs, f.unreported
    except msgspec.MsgspecError:
        pass
    try:
        return msgspec.json.decode(data, type=_runs_type), None
    except msgspec.MsgspecError as e:
        log.warning("cannot read %s: %s", path, e)
        return {}, {}


def runs_file(ss: ServerSchedules) -> bytes:
    return msgspec.json.encode(RunsFile({sid: ss.history(sid) for sid in ss.runs},
                                        ss.unreported_ids()))


async def _save_runs(path: Path, ss: ServerSchedules) -> None:
    data = runs_file(ss)

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    try:
        await trio.to_thread.run_sync(write)
    except OSError as e:  # a full disk: the runs stay in memory
        log.warning("cannot save %s: %s", path, e)
