"""Schedule answers: a schedule with its next run, and its recorded runs."""

from __future__ import annotations

from msgspec import Struct

from manman.models import OnlyWhen, Schedule, ScheduleTask
from manman.schedules import cron
from manman.schedules.runs import (  # noqa: F401 (the run shapes, shown from here too)
    KEEP_RUNS,
    RunList,
    RunStatus,
    ScheduleRun,
    TaskResult,
)


class ScheduleView(Struct, kw_only=True):
    id: str
    name: str | None
    cron: str
    timezone: str
    enabled: bool
    only_when: OnlyWhen | None
    defer_max: float
    tasks: list[ScheduleTask]
    next_run_at: str | None  # ISO 8601, UTC; null when disabled


class ScheduleList(Struct):
    schedules: list[ScheduleView]


def view(s: Schedule, now: float) -> ScheduleView:
    assert s.id is not None
    at = cron.next_fire(s.cron, s.timezone, now) if s.enabled else None
    return ScheduleView(id=s.id, name=s.name, cron=s.cron, timezone=s.timezone,
                        enabled=s.enabled, only_when=s.only_when, defer_max=s.defer_max,
                        tasks=s.tasks, next_run_at=cron.iso(at))


class RunStarted(Struct):
    run: ScheduleRun
