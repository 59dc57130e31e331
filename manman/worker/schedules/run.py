"""One run of a schedule: only_when (deferred up to defer_max), then its tasks in order, each
awaiting what it asks before the next begins. Records into a ScheduleRun as it goes."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import trio

from manman.errors import ManmanError
from manman.models import OnlyWhen, Schedule, ScheduleTask
from manman.schedules import check
from manman.schedules.cron import iso
from manman.schedules.views import ScheduleRun, TaskResult
from manman.worker.schedules.target import Snapshot, Target

STOPPED = frozenset({"stopped", "crashed", "failed", "created"})
SETTLING = frozenset({"installing", "stopping", "starting"})


class TaskFailed(Exception):
    pass


class BackupSpacing:
    """When the server's last backup by a schedule started (wall clock), so that a backup
    task starting less than 15 minutes after it is skipped: the crons are checked when they
    are saved, this holds behind that check (a cron or time zone changed between two fires,
    a run by hand, the wall clock set)."""

    def __init__(self, wall: Callable[[], float]) -> None:
        self.wall = wall
        self.last: float | None = None

    def seen(self, at: float) -> None:
        if self.last is None or at > self.last:
            self.last = at

    def take(self) -> str | None:
        """None: the backup may start (and counts from now); else why it is skipped."""
        now = self.wall()
        # either way: a wall clock set back must not let two backups through
        if self.last is not None and abs(now - self.last) < check.BACKUP_MIN_INTERVAL:
            return (f"the server's last scheduled backup started {now - self.last:.0f} s "
                    f"before; at most one every {check.BACKUP_MIN_INTERVAL // 60} minutes")
        self.last = now
        return None


def holds(only_when: OnlyWhen | None, s: Snapshot) -> bool:
    """players_max holds only when the count is known (a query or player_patterns)."""
    if only_when is None:
        return True
    if only_when.state is not None and s.state != only_when.state:
        return False
    return only_when.players_max is None or (
        s.players is not None and s.players <= only_when.players_max)


# a condition over the server's status and the states seen since the action: True when met,
# a string when it can no longer be (the task fails with it)
Cond = Callable[[Snapshot, list[str]], "bool | str"]


def _done(action: str, before: Snapshot) -> Cond:
    def started(s: Snapshot, seen: list[str]) -> bool | str:
        if s.state == "failed" and len(seen) > 1:
            return "the server failed to start"
        if action == "restart" or before.state == "running":
            return s.state == "running" and s.started_at != before.started_at
        return s.state == "running"

    def updated(s: Snapshot, seen: list[str]) -> bool | str:
        if "installing" not in seen:
            return False
        if s.state == "failed":
            return "the update failed"
        return s.state not in SETTLING

    if action in ("start", "restart"):
        return started
    if action in ("stop", "kill"):
        return lambda s, seen: s.state in STOPPED
    if action == "update":
        return updated
    return lambda s, seen: True


def condition(task: ScheduleTask, before: Snapshot) -> Cond | None:
    what = task.await_ or check.default_await(task)
    if what == "none":
        return None
    if what == "stopped":
        return lambda s, seen: s.state in STOPPED
    done = _done(task.action, before)
    if what == "done":
        return done

    def ready(s: Snapshot, seen: list[str]) -> bool | str:
        r = done(s, seen)
        return r if r is not True else s.ready

    return ready


async def until(target: Target, seen: list[str], wake: Callable[[], Awaitable[None]],
                cond: Cond) -> None:
    while True:
        r = cond(target.snapshot(), seen)
        if r is True:
            return
        if isinstance(r, str):
            raise TaskFailed(r)
        await wake()


async def do_task(target: Target, task: ScheduleTask) -> None:
    action = task.action
    if action == "wait":
        await trio.sleep(check.wait_seconds(task.payload))
        return
    before = target.snapshot()
    with target.watches.open(before.state) as watch:  # opened first: no change is missed
        if action in check.POWER:
            await target.power(action)
        elif action == "command":
            target.command(task.payload or "")
        elif action == "notify":
            target.note(task.payload or "")
        elif action == "update":
            target.update()
        elif action == "backup":
            await target.backup(wait=(task.await_ or check.default_await(task)) != "none")
        else:
            raise TaskFailed(f"{action}: not available")
        cond = condition(task, before)
        if cond is not None:
            await until(target, watch.seen, watch.next, cond)


async def execute(target: Target, schedule: Schedule, run: ScheduleRun,
                  wall: Callable[[], float], *, check_only_when: bool,
                  spacing: BackupSpacing | None = None) -> None:
    """Run `schedule` into `run` (ended, with a status, when this returns or is cancelled).
    spacing: the server's, so a backup task too soon after its last is skipped."""
    try:
        if check_only_when and schedule.only_when is not None \
                and not await _only_when(target, schedule):
            run.status = "skipped"
            run.reason = f"only_when did not hold within defer_max ({schedule.defer_max:g} s)"
            return
        first_error: str | None = None
        for i, task in enumerate(schedule.tasks):
            if task.delay:
                await trio.sleep(task.delay)
            result = TaskResult(action=task.action, ok=False, started_at=iso(wall()),
                                ended_at=None)
            run.tasks.append(result)
            why = spacing.take() if task.action == "backup" and spacing is not None else None
            if why is not None:  # the run goes on: the tasks after it do not depend on it
                result.ok, result.skipped, result.ended_at = True, why, result.started_at
                with contextlib.suppress(ManmanError):
                    target.note(f"schedule {schedule.id}: backup skipped: {why}")
                continue
            try:
                if task.action == "wait":
                    await do_task(target, task)
                else:
                    with trio.fail_after(task.timeout):
                        await do_task(target, task)
                result.ok = True
            except trio.TooSlowError:
                result.error = f"timed out after {task.timeout:g} s"
            except ManmanError as e:
                result.error = e.message
            except (TaskFailed, ValueError) as e:
                result.error = str(e)
            result.ended_at = iso(wall())
            if not result.ok:
                first_error = first_error or f"task {i + 1} ({task.action}): {result.error}"
                if not task.continue_on_failure:
                    break
        run.status = "failed" if first_error else "ok"
        run.reason = first_error
    except trio.Cancelled:
        run.status, run.reason = "failed", "cancelled (the schedule or server changed)"
        raise
    finally:
        run.ended_at = iso(wall())


async def _only_when(target: Target, schedule: Schedule) -> bool:
    snap = target.snapshot()
    if holds(schedule.only_when, snap):
        return True
    if schedule.defer_max <= 0:
        return False
    with target.watches.open(snap.state) as watch, trio.move_on_after(schedule.defer_max):
        await until(target, watch.seen, watch.next,
                    lambda s, seen: holds(schedule.only_when, s))
        return True
    return False
