"""Schedule answers: a schedule with its next run, and its recorded runs."""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct

from manman.models import OnlyWhen, Schedule, ScheduleTask
from manman.schedules import cron

KEEP_RUNS = 50  # per schedule


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


class TaskResult(Struct, kw_only=True):
    action: str
    ok: bool
    started_at: str | None
    ended_at: str | None
    error: str | None = None


RunStatus = Literal["running", "ok", "failed", "skipped"]


class ScheduleRun(Struct, kw_only=True):
    id: int  # counts up per schedule
    schedule_id: str
    trigger: Literal["cron", "manual"]
    due_at: str | None  # the cron time it was fired for
    started_at: str
    ended_at: str | None = None
    status: RunStatus = "running"
    reason: str | None = None  # why it failed or was skipped
    tasks: list[TaskResult] = msgspec.field(default_factory=list)


class RunList(Struct):
    runs: list[ScheduleRun]  # newest first


class RunStarted(Struct):
    run: ScheduleRun
