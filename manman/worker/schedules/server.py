"""One server's schedules: the loop that fires each when its cron is due (skipping, and
recording, a fire while the schedule's previous run still goes), and its last runs."""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from datetime import datetime

import trio

from manman import errors
from manman.models import Schedule
from manman.schedules import cron
from manman.schedules.views import KEEP_RUNS, ScheduleRun
from manman.worker.schedules.run import BackupSpacing, execute
from manman.worker.schedules.target import Target

log = logging.getLogger("manman.worker.schedules")

MAX_SLEEP = 60.0  # the wall clock is looked at again at least this often (NTP, suspend)


class ServerSchedules:
    def __init__(self, server_id: str, target: Target, wall: Callable[[], float],
                 save: Callable[[], Awaitable[None]] | None = None,
                 failed: Callable[[ScheduleRun], None] | None = None) -> None:
        self.server_id = server_id
        self.target = target
        self.wall = wall
        self._save = save
        self._failed = failed  # told of each run that failed (the host's schedule.failed)
        self.schedules: dict[str, Schedule] = {}
        self.source: list[Schedule] | None = None  # the spec's list, as last given
        self.next_at: dict[str, float | None] = {}
        self.running: dict[str, ScheduleRun] = {}
        self.runs: dict[str, deque[ScheduleRun]] = {}
        self.results: Counter[str] = Counter()  # runs ended, by status (/metrics)
        # runs that ended and the host has not taken yet, in the order they ended
        self.unreported: dict[tuple[str, int], ScheduleRun] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.started = trio.Event()
        self.spacing = BackupSpacing(wall)  # backups by any of the server's schedules

    # -- the schedules, as the spec gives them ----------------------------------------------

    def set_schedules(self, schedules: list[Schedule]) -> None:
        """A new spec: a schedule new or changed is due at its next fire from now; one
        removed is forgotten (a run of it still going is cancelled)."""
        self.source = schedules
        now = self.wall()
        given = {s.id: s for s in schedules if s.id is not None}
        for sid in list(self.schedules):
            if sid not in given:
                self._forget(sid)
        for sid, s in given.items():
            if self.schedules.get(sid) != s:
                self.schedules[sid] = s
                self.next_at[sid] = cron.next_fire(s.cron, s.timezone, now) \
                    if s.enabled else None
                self.runs.setdefault(sid, deque(maxlen=KEEP_RUNS))
        self._wake.set()

    def wake(self) -> None:
        """Look at the clock again now (it was changed)."""
        self._wake.set()

    def _forget(self, sid: str) -> None:
        self.schedules.pop(sid, None)
        self.next_at.pop(sid, None)
        self.runs.pop(sid, None)
        for key in [k for k in self.unreported if k[0] == sid]:
            del self.unreported[key]  # the host forgets the schedule's runs too
        scope = self._scopes.pop(sid, None)
        if scope is not None:
            scope.cancel()

    def load_runs(self, runs: dict[str, list[ScheduleRun]],
                  unreported: dict[str, list[int]] | None = None) -> None:
        """Runs saved by an earlier worker (newest first); one it left going ended with it.
        unreported: the ids the host had not taken (None: a file from before the host kept
        runs, all of them)."""
        for sid, items in runs.items():
            kept = self.runs.setdefault(sid, deque(maxlen=KEEP_RUNS))
            owed = set((unreported or {}).get(sid, ()))
            for r in reversed(items[:KEEP_RUNS]):
                if r.status == "running":
                    r.status, r.reason = "failed", "the worker stopped during the run"
                    owed.add(r.id)
                kept.append(r)
                for t in r.tasks:  # the last backup started still counts after a restart
                    if t.action == "backup" and t.ok and not t.skipped and t.started_at:
                        self.spacing.seen(datetime.fromisoformat(t.started_at).timestamp())
                if unreported is None or r.id in owed:
                    self.unreported[(sid, r.id)] = r

    def unreported_ids(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for sid, rid in self.unreported:
            out.setdefault(sid, []).append(rid)
        return out

    def reported(self, run: ScheduleRun) -> None:
        """The host holds `run`: not sent again."""
        key = (run.schedule_id, run.id)
        if self.unreported.get(key) is run:
            del self.unreported[key]

    # -- firing -----------------------------------------------------------------------------

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.started.set()
            task_status.started()
            while True:
                now = self.wall()
                for sid, at in list(self.next_at.items()):
                    if at is not None and at <= now:
                        s = self.schedules[sid]
                        self.fire(s, "cron", at)
                        self.next_at[sid] = cron.next_fire(s.cron, s.timezone, max(now, at))
                pending = [at for at in self.next_at.values() if at is not None]
                delay = min(min(pending) - now, MAX_SLEEP) if pending else MAX_SLEEP
                with trio.move_on_after(max(delay, 0)):
                    await self._wake.wait()
                self._wake = trio.Event()

    def fire(self, s: Schedule, trigger: str, due_at: float | None) -> ScheduleRun:
        """Start a run of `s` now; a cron fire while one still goes is recorded as skipped,
        a manual one is refused (409)."""
        assert s.id is not None and self._nursery is not None
        history = self.runs.setdefault(s.id, deque(maxlen=KEEP_RUNS))
        run = ScheduleRun(id=(history[-1].id + 1) if history else 1, schedule_id=s.id,
                          trigger="manual" if trigger == "manual" else "cron",
                          due_at=cron.iso(due_at), started_at=cron.iso(self.wall()) or "")
        going = self.running.get(s.id)
        if going is not None:
            if trigger == "manual":
                raise errors.Conflict(f"run {going.id} of schedule {s.id} is still going",
                                      "run_in_progress")
            run.status, run.ended_at = "skipped", run.started_at
            run.reason = f"run {going.id} was still going"
            history.append(run)
            self.results["skipped"] += 1
            self.unreported[(s.id, run.id)] = run
            self._saved()
            return run
        history.append(run)
        self.running[s.id] = run
        scope = trio.CancelScope()
        self._scopes[s.id] = scope
        self._nursery.start_soon(self._run, s, run, scope, trigger == "cron")
        return run

    async def _run(self, s: Schedule, run: ScheduleRun, scope: trio.CancelScope,
                   check_only_when: bool) -> None:
        assert s.id is not None
        try:
            with scope:
                await execute(self.target, s, run, self.wall, check_only_when=check_only_when,
                              spacing=self.spacing)
        except Exception:  # a bug in a run must not end the server's schedules
            log.exception("server %s: schedule %s run %d", self.server_id, s.id, run.id)
            run.status, run.reason = "failed", "manman internal error"
        finally:
            self.results[run.status] += 1
            if self.running.get(s.id) is run:
                del self.running[s.id]
            if self._scopes.get(s.id) is scope:
                del self._scopes[s.id]
            if s.id in self.runs:  # not removed meanwhile
                self.unreported[(s.id, run.id)] = run
            if run.status == "failed" and self._failed is not None:
                try:
                    self._failed(run)
                except Exception:  # the server was deleted meanwhile: nobody to tell
                    log.debug("server %s: run failure not shown", self.server_id)
            self._saved()

    def _saved(self) -> None:
        if self._save is not None and self._nursery is not None:
            self._nursery.start_soon(self._save)

    def history(self, sid: str) -> list[ScheduleRun]:
        """Newest first."""
        return list(reversed(self.runs.get(sid, ())))
