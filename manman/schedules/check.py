"""What a server's schedules may hold: refused with a reason (ValueError → 422)."""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from manman.schedules import backup_gaps, cron

if TYPE_CHECKING:
    from manman.models import Schedule, ScheduleTask, ServerSpec

POWER = frozenset({"start", "stop", "restart", "kill"})
# the tasks that wait for their action to finish unless told otherwise
AWAIT_DONE = POWER | {"backup", "update"}
BACKUP_MIN_INTERVAL = backup_gaps.MIN_GAP  # per server, over all its schedules
MAX_WAIT = 86400.0

# reading specs saved before (a host's or worker's store, the host's heartbeat answer): the
# backup limit is not checked again, so a check made stricter since cannot stop a host or
# worker from starting; the worker's guard skips a backup too soon all the same
_stored = contextvars.ContextVar("manman_stored_specs", default=False)


@contextlib.contextmanager
def stored_specs() -> Iterator[None]:
    """Around a synchronous decode of saved specs (no await inside)."""
    token = _stored.set(True)
    try:
        yield
    finally:
        _stored.reset(token)


def task_unavailable(action: str, spec: ServerSpec) -> str | None:
    """Why this server cannot run a task of `action`, or None."""
    if action == "update" and spec.install_method != "steamcmd":
        return "update: not available (only steamcmd servers take Steam builds)"
    return None


def default_await(task: ScheduleTask) -> str:
    return "done" if task.action in AWAIT_DONE else "none"


def wait_seconds(payload: str | None) -> float:
    try:
        seconds = float(payload or "")
    except ValueError:
        seconds = math.nan
    if not (0 <= seconds <= MAX_WAIT):  # also NaN
        raise ValueError(f"a wait task's payload is seconds, 0 to {MAX_WAIT:g}")
    return seconds


def _check_task(task: ScheduleTask, where: str, spec: ServerSpec) -> None:
    why = task_unavailable(task.action, spec)
    if why is not None:
        raise ValueError(f"{where}: {why}")
    payload = task.payload
    if task.action in ("command", "notify"):
        if not payload:
            raise ValueError(f"{where}: a {task.action} task needs a payload")
        if "\x00" in payload or "\n" in payload or "\r" in payload:
            raise ValueError(f"{where}.payload must be one line")
    elif task.action == "wait":
        try:
            wait_seconds(payload)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    elif payload is not None:
        raise ValueError(f"{where}: a {task.action} task takes no payload")
    if task.await_ is None:  # shown as it will run
        task.await_ = default_await(task)  # type: ignore[assignment]


def assign_ids(schedules: list[Schedule]) -> None:
    """A schedule given without an id gets the first free `sN`: the same on the host and the
    worker, which both check the spec."""
    taken = {s.id for s in schedules if s.id is not None}
    n = 1
    for s in schedules:
        if s.id is None:
            while f"s{n}" in taken:
                n += 1
            s.id = f"s{n}"
            taken.add(s.id)


def check_schedules(spec: ServerSpec, now: float | None = None) -> None:
    """Every schedule of the spec (ids given to those without)."""
    assign_ids(spec.schedules)
    seen: set[str] = set()
    for i, s in enumerate(spec.schedules):
        where = f"schedules[{i}]"
        assert s.id is not None
        if s.id in seen:
            raise ValueError(f"{where}.id: {s.id!r} is given twice")
        seen.add(s.id)
        try:
            cron.check_cron(s.cron)
            cron.zone(s.timezone)
        except ValueError as e:
            raise ValueError(f"{where}.{e}") from None
        if cron.next_fire(s.cron, s.timezone, time.time() if now is None else now) is None:
            raise ValueError(f"{where}.cron: never fires")
        if s.name is not None and ("\x00" in s.name or "\n" in s.name):
            raise ValueError(f"{where}.name must be one line")
        for j, task in enumerate(s.tasks):
            _check_task(task, f"{where}.tasks[{j}]", spec)
    if not _stored.get():
        check_backup_interval(spec.schedules, time.time() if now is None else now)


def check_backup_interval(schedules: list[Schedule], now: float) -> None:
    """Backup tasks at most every BACKUP_MIN_INTERVAL per server, over all its enabled
    schedules and every fire to come (manman.schedules.backup_gaps)."""
    backup_gaps.check(schedules, now)
