"""A schedule's recorded runs, as the worker keeps them and reports them to its host (apart
from manman.models, which carries them in the heartbeat)."""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct

KEEP_RUNS = 50  # per schedule, on the worker and on the host
REPORT_BATCH = 200  # runs a heartbeat carries at most: a long host outage drains in steps


class TaskResult(Struct, kw_only=True):
    action: str
    ok: bool
    started_at: str | None
    ended_at: str | None
    error: str | None = None
    skipped: str | None = None  # why the task did not act (a backup too soon after the last)


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


class ReportedRun(Struct, gc=False):
    """A run that ended, in a worker's heartbeat: the host keeps the last KEEP_RUNS."""

    server_id: str
    run: ScheduleRun


class RunList(Struct):
    runs: list[ScheduleRun]  # newest first
