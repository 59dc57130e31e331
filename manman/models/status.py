"""What a worker observes of a server, and a server as the APIs answer it (secrets
masked)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from manman.models.spec import (
    AutoUpdateSpec,
    BackupSpec,
    HealthSpec,
    Limits,
    PlayerPatterns,
    PortName,
    PortSpec,
    RestartSpec,
    Schedule,
    ServerSpec,
)
from manman.models.types import _CONTROL, Count, Port, ServerState, WorkerStatus, redact

ShortText = Annotated[str, Meta(max_length=256)]


class QueryStatus(Struct, gc=False, kw_only=True):
    """The last answer of the game's query (`health.query`)."""

    ok: bool
    players: Count | None = None
    max_players: Count | None = None
    map: ShortText | None = None
    version: ShortText | None = None
    latency_ms: Annotated[float, Meta(ge=0)] | None = None
    checked_at: float = 0.0
    error: ShortText | None = None

    def __post_init__(self) -> None:
        # the game's reply is anyone's text (made here and decoded alike): PostgreSQL's jsonb
        # refuses U+0000, and a record it refuses would drop the server's later ones with it;
        # an escape sequence would reach the terminal of `manman server show`
        for f in ("map", "version", "error"):
            text = getattr(self, f)
            if text is not None and _CONTROL.search(text):
                setattr(self, f, _CONTROL.sub("\ufffd", text))


class ServerStats(Struct, gc=False, kw_only=True):
    """The last sample of a running server's resource use (memory only, never saved)."""

    cpu: Annotated[float, Meta(ge=0)] = 0.0  # % of one core, summed over the process tree
    # bytes: the tree's RSS, or a container's usage less inactive_file
    memory: Annotated[int, Meta(ge=0)] = 0
    disk: Annotated[int, Meta(ge=0)] | None = None  # bytes under the files directory
    net_rx: Annotated[float, Meta(ge=0)] | None = None  # bytes/s, docker only
    net_tx: Annotated[float, Meta(ge=0)] | None = None
    at: float = 0.0


class DiskFull(Struct, gc=False, kw_only=True):
    """A server's files went over its limits.disk_mb (docs/spec.md, "Disk limit")."""

    used: Annotated[int, Meta(ge=0)]  # bytes, when it was found over
    limit: Annotated[int, Meta(ge=0)]  # bytes
    at: float = 0.0


class ScheduleFailure(Struct, gc=False, kw_only=True):
    """The last run of one of the server's schedules that failed (a webhook's event)."""

    schedule_id: ShortText
    run_id: Count
    reason: Annotated[str, Meta(max_length=1024)] | None = None
    at: float = 0.0


class ServerStatus(Struct, gc=False, kw_only=True):
    """What a worker observes of one server."""

    state: ServerState = "created"
    ready: bool = False
    pid: int | None = None
    exit_code: int | None = None
    restarts: int = 0
    error: str | None = None
    install_progress: float | None = None
    started_at: float | None = None
    updated_at: float = 0.0
    query: QueryStatus | None = None
    # the numbers the worker placed `auto` ports on, by port name
    allocated_ports: dict[PortName, Port] = msgspec.field(default_factory=dict)
    installed_build: ShortText | None = None
    latest_build: ShortText | None = None
    update_available: bool = False
    stats: ServerStats | None = None
    schedule_failure: ScheduleFailure | None = None
    disk_full: DiskFull | None = None  # over limits.disk_mb: not started until under


class Server(Struct, kw_only=True):
    """A server as the APIs return it: its spec plus what is observed."""

    id: str
    name: str
    worker_id: str | None
    game_id: str
    executable: str | None
    args: list[str]
    env: dict[str, str]
    stop_command: str | None
    stop_timeout: float
    ready_pattern: str | None
    restart: RestartSpec
    health: HealthSpec
    ports: list[PortSpec]
    desired_state: Literal["running", "stopped"]
    stop_signal: str | None
    player_patterns: PlayerPatterns | None
    restart_needed_patterns: list[str]
    auto_update: AutoUpdateSpec
    preset: str | None
    preset_version: int | None
    schedules: list[Schedule]
    backup: BackupSpec
    file_denylist: list[str]
    limits: Limits
    state: ServerState
    ready: bool
    pid: int | None
    exit_code: int | None
    restarts: int
    error: str | None
    install_progress: float | None
    started_at: float | None
    updated_at: float
    query: QueryStatus | None
    allocated_ports: dict[str, int]
    installed_build: str | None
    latest_build: str | None
    update_available: bool
    stats: ServerStats | None
    schedule_failure: ScheduleFailure | None
    disk_full: DiskFull | None
    generation: int
    observed_generation: int
    worker_status: WorkerStatus
    log_url: str


_VIEW_SPEC_FIELDS = tuple(f for f in ServerSpec.__struct_fields__ if f != "secret_values")


def placed_ports(ports: list[PortSpec], allocated: dict[str, int]) -> list[PortSpec]:
    """`ports` with each `auto` one shown as the number the worker placed it on."""
    if not allocated:
        return ports
    return [msgspec.structs.replace(p, port=allocated[p.name])
            if p.port == "auto" and p.name in allocated else p for p in ports]


def server_view(server_id: str, spec: ServerSpec, status: ServerStatus, *, generation: int,
                observed_generation: int, worker_status: WorkerStatus, log_url: str) -> Server:
    """A server as answered: secret values masked, allocated ports shown as numbers."""
    fields = {f: getattr(spec, f) for f in _VIEW_SPEC_FIELDS}
    if spec.secret_values:
        for f in ("args", "env", "executable", "stop_command"):
            fields[f] = redact(fields[f], spec.secret_values)
    fields["ports"] = placed_ports(spec.ports, status.allocated_ports)
    observed = {f: getattr(status, f) for f in status.__struct_fields__}
    if spec.secret_values and status.error:  # an error may quote the command line
        observed["error"] = redact(status.error, spec.secret_values)
    return Server(
        id=server_id, **fields, **observed,
        generation=generation, observed_generation=observed_generation,
        worker_status=worker_status, log_url=log_url)
