"""What host and workers send each other: joins, registrations, heartbeats and their
replies, the events and runs they carry."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from manman.models.spec import PortName, ServerSpec
from manman.models.status import (
    DiskFull,
    QueryStatus,
    ScheduleFailure,
    ServerStats,
    ServerStatus,
    ShortText,
)
from manman.models.types import (
    _CONTROL,
    Count,
    Int32,
    KnownWorkerStatus,
    Port,
    ServerState,
    WorkerStatus,
)
from manman.schedules.runs import REPORT_BATCH, ReportedRun


class EventQueueStatus(Struct):
    """A joined worker's webhook events (manman.worker.events)."""

    queued: int  # recorded, not acknowledged by the host yet
    dropped: int  # the oldest, dropped as the queue was over its bound (since it joined)


class WorkerRuntimeStatus(Struct):
    status: WorkerStatus
    servers: int
    resources: dict[str, Any]
    events: EventQueueStatus | None = None  # null: standalone (no host, no webhooks)
    # how exec servers' limits are enforced (docs/spec.md "Limits"), and worker.limits
    limits: Literal["cgroup2", "cgroup1", "none"] = "none"
    limits_setting: Literal["enforce", "monitor"] = "enforce"




def _printable(value: str, field: str) -> None:
    """Names end up in logs, one-line errors and terminals: no control characters."""
    if _CONTROL.search(value):
        raise ValueError(f"{field} must not contain control characters")


def check_api_url(url: str) -> None:
    """A URL the host can call: http(s), a host, no credentials, query or fragment."""
    if not url:
        return
    import httpx

    _printable(url, "api_url")
    try:
        u = httpx.URL(url)
        ok = u.scheme in ("http", "https") and bool(u.host) and not u.userinfo \
            and not u.query and not u.fragment and (u.port is None or 0 < u.port < 65536)
    except Exception:  # httpx raises InvalidURL and idna errors alike
        ok = False
    if not ok:
        raise ValueError("api_url must be an http(s) URL with a host and no query")


class WorkerJoin(Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=253)] | None = None

    def __post_init__(self) -> None:
        if self.name is not None:
            _printable(self.name, "name")


class WorkerCredentials(Struct):
    worker_id: str
    token: str


class WorkerRegister(Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=253)]
    # empty: the host never calls it (a worker it cannot reach)
    api_url: Annotated[str, Meta(max_length=2048, pattern=r"^(https?://[^\s]+)?$")]
    address: Annotated[str, Meta(max_length=253)] = ""
    version: Annotated[str, Meta(max_length=64)] = ""
    capacity: dict[str, Any] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        for field in ("name", "address", "version"):
            _printable(getattr(self, field), field)
        check_api_url(self.api_url)


class WorkerUpdate(Struct, forbid_unknown_fields=True):
    status: Literal["alive", "frozen"] | msgspec.UnsetType = msgspec.UNSET
    name: Annotated[str, Meta(min_length=1, max_length=253)] | msgspec.UnsetType = msgspec.UNSET

    def __post_init__(self) -> None:
        if isinstance(self.name, str):
            _printable(self.name, "name")


class Worker(Struct, kw_only=True):
    id: str
    name: str
    status: WorkerStatus
    api_url: str
    address: str
    version: str
    capacity: dict[str, Any]
    servers: int
    last_heartbeat: float | None
    created_at: float


class ObservedServer(Struct, gc=False, forbid_unknown_fields=True, kw_only=True):
    """One server's status in a worker's report to its host."""

    id: Annotated[str, Meta(max_length=64)]
    observed_generation: Count = 0
    state: ServerState
    ready: bool = False
    pid: Count | None = None
    exit_code: Int32 | None = None
    restarts: Count = 0
    error: Annotated[str, Meta(max_length=4096)] | None = None
    install_progress: Annotated[float, Meta(ge=0, le=100)] | None = None
    started_at: float | None = None
    updated_at: float = 0.0
    query: QueryStatus | None = None
    allocated_ports: Annotated[dict[PortName, Port], Meta(max_length=64)] = msgspec.field(
        default_factory=dict)
    installed_build: ShortText | None = None
    latest_build: ShortText | None = None
    update_available: bool = False
    stats: ServerStats | None = None
    schedule_failure: ScheduleFailure | None = None
    disk_full: DiskFull | None = None

    @classmethod
    def of(cls, server_id: str, generation: int, status: ServerStatus) -> ObservedServer:
        """A worker's report of one server's status, fitted to the wire: an error may quote
        a game's output, and PostgreSQL text holds no NUL."""
        # field by field, not through a dict: this runs per server per heartbeat (10x faster)
        error = status.error
        return cls(id=server_id, observed_generation=generation, state=status.state,
                   ready=status.ready, pid=status.pid, exit_code=status.exit_code,
                   restarts=status.restarts,
                   error=error[:4096].replace("\x00", "\ufffd") if error else error,
                   install_progress=status.install_progress, started_at=status.started_at,
                   updated_at=status.updated_at, query=status.query,
                   allocated_ports=status.allocated_ports,
                   installed_build=status.installed_build, latest_build=status.latest_build,
                   update_available=status.update_available, stats=status.stats,
                   schedule_failure=status.schedule_failure, disk_full=status.disk_full)

    def status(self) -> ServerStatus:
        return ServerStatus(state=self.state, ready=self.ready, pid=self.pid,
                            exit_code=self.exit_code, restarts=self.restarts, error=self.error,
                            install_progress=self.install_progress,
                            started_at=self.started_at, updated_at=self.updated_at,
                            query=self.query, allocated_ports=self.allocated_ports,
                            installed_build=self.installed_build,
                            latest_build=self.latest_build,
                            update_available=self.update_available, stats=self.stats,
                            schedule_failure=self.schedule_failure,
                            disk_full=self.disk_full)


# a report carries every field of a status (tests/test_models.py checks .of and .status keep all)
assert set(ServerStatus.__struct_fields__) <= set(ObservedServer.__struct_fields__)


MAX_EVENTS_SENT = 1000  # worker events in one heartbeat (a worker sends at most 500)


class WorkerEvent(Struct, gc=False, forbid_unknown_fields=True, kw_only=True):
    """A webhook event a worker recorded where it happened (manman.worker.events)."""

    seq: Annotated[int, Meta(ge=1, le=2**63 - 1)]  # the worker's order, never reused
    at: float  # when it happened, on the worker's clock
    event: Annotated[str, Meta(max_length=64)]
    server_id: Annotated[str, Meta(max_length=64)]
    data: dict[Annotated[str, Meta(max_length=64)], Any]


class Heartbeat(Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    status: KnownWorkerStatus = "alive"
    servers: Annotated[list[ObservedServer], Meta(max_length=10000)] = msgspec.field(
        default_factory=list)
    # the generations the worker holds, so the host can answer with only what is missing
    generations: dict[Annotated[str, Meta(max_length=64)], Count] = msgspec.field(
        default_factory=dict)
    # the oldest events the host has not acknowledged, by seq; a list (empty too) says the
    # worker records its events: the host derives none from its reports. null: an older
    # worker, whose events the host derives
    events: Annotated[list[WorkerEvent], Meta(max_length=MAX_EVENTS_SENT)] | None = None
    # schedule runs that ended since the host last took them (none: not sent at all)
    schedule_runs: Annotated[list[ReportedRun], Meta(max_length=REPORT_BATCH)] = \
        msgspec.field(default_factory=list)


class DesiredServer(Struct, gc=False, kw_only=True):
    id: str
    generation: int
    spec: ServerSpec
    restart: bool = False  # a change the worker missed asked for restart_on_change


class RemoveServer(Struct, gc=False):
    id: str
    purge: bool = False


class HeartbeatReply(Struct, kw_only=True, omit_defaults=True):
    status: WorkerStatus
    servers: list[DesiredServer]
    remove: list[RemoveServer]
    # the highest event seq the host has taken (its webhooks' outbox holds them): the worker
    # forgets those; absent when the heartbeat carried no `events`
    events_acked: int | None = None
    runs_taken: int = 0  # the heartbeat's schedule_runs the host holds now: the worker forgets them


def validation_message(e: msgspec.ValidationError | msgspec.DecodeError) -> str:
    return str(e)


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)
