"""A server's spec as users give it (docs/spec.md, "Server spec"), its checks, and its
update."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from manman.models.types import (
    _ENV_KEY_RE,
    _IMAGE_RE,
    _NAME_RE,
    _TEXT,
    MAX_ARGS_BYTES,
    MAX_ENV_BYTES,
    MAX_LINE,
    NAME_PATTERN,
    REDACTED,
    Arg,
    ConsoleLine,
    Count,
    EnvKey,
    EnvValue,
    Executable,
    GameId,
    Pattern,
    Port,
    PositiveSeconds,
    Seconds,
    ServerState,
    WorkerId,
    _no_nul,
    check_console_line,
    redact,
)


class RestartSpec(Struct, gc=False, forbid_unknown_fields=True, omit_defaults=False):
    policy: Literal["never", "on-failure", "always"] = "on-failure"
    max_restarts: Annotated[int, Meta(ge=0, le=10000)] = 5
    backoff_initial: Seconds = 1.0
    backoff_max: Seconds = 300.0
    reset_after: Seconds = 600.0


class HealthSpec(Struct, gc=False, forbid_unknown_fields=True):
    tcp_port: Port | None = None
    interval: PositiveSeconds = 5.0
    timeout: PositiveSeconds = 2.0
    failures: Annotated[int, Meta(ge=1, le=1000)] = 3
    query: QuerySpec | None = None


PortName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
# `{{port.NAME}}`: a port of the spec's `ports`, as a number once the worker placed it
PortRef = Annotated[str, Meta(pattern=r"^\{\{port\.[a-z][a-z0-9_]{0,31}\}\}$")]
_PORT_REF_RE = re.compile(r"\{\{port\.([a-z][a-z0-9_]{0,31})\}\}")
StopSignal = Literal["SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2"]


class PortSpec(Struct, gc=False, forbid_unknown_fields=True, kw_only=True):
    """A port the game listens on. `auto`: the worker allocates one from its `port_range`;
    `follows`: the game derives it, `offset` above the named port (Valheim's query port).
    `tcp+udp`: the one number on both protocols."""

    port: Port | Literal["auto"]
    protocol: Literal["tcp", "udp", "tcp+udp"] = "tcp"
    name: PortName | None = None
    follows: PortName | None = None
    # 0: the same number on the other protocol (a game on tcp and udp)
    offset: Annotated[int, Meta(ge=0, le=100)] = 1


class QuerySpec(Struct, gc=False, forbid_unknown_fields=True, kw_only=True):
    """Ask the game itself whether it is up and who is on (docs/spec.md, "Queries")."""

    type: Literal["a2s", "minecraft", "tcp", "console"]
    port: Port | PortRef | None = None  # none for `console`
    initial_delay: Seconds = 60.0  # failures count only after this long since the start
    interval: PositiveSeconds = 10.0
    timeout: PositiveSeconds = 2.0
    failures: Annotated[int, Meta(ge=1, le=1000)] = 3


class PlayerPatterns(Struct, gc=False, forbid_unknown_fields=True):
    """Regexes with a `(?P<player>…)` group, read where no query protocol counts players."""

    join: Annotated[list[Pattern], Meta(max_length=16)] = msgspec.field(default_factory=list)
    leave: Annotated[list[Pattern], Meta(max_length=16)] = msgspec.field(default_factory=list)


class AutoUpdateSpec(Struct, gc=False, forbid_unknown_fields=True, kw_only=True):
    """When a steamcmd server takes a new Steam build (docs/spec.md, "Steam build updates")."""

    mode: Literal["off", "notify", "when_empty", "immediate"] = "off"
    # each check runs steamcmd; a worker honours no less than its update_check_min_interval
    check_interval: Annotated[float, Meta(ge=1, le=86400 * 7)] = 600.0
    announce_command: ConsoleLine | None = None
    grace: Seconds = 60.0


ScheduleAction = Literal["start", "stop", "restart", "kill", "command", "backup", "update", "wait",
                         "notify"]
AwaitWhat = Literal["none", "done", "ready", "stopped"]
ScheduleId = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")]
MAX_SCHEDULE_TASKS = 20
MAX_SCHEDULES = 32


class ScheduleTask(Struct, gc=False, forbid_unknown_fields=True, kw_only=True):
    """One step of a schedule (docs/spec.md, "Schedules")."""

    action: ScheduleAction
    payload: Annotated[str, Meta(max_length=MAX_LINE)] | None = None  # command, seconds, message
    delay: Seconds = 0.0
    # default: `done` for power, backup and update tasks (stop → backup → start never races)
    await_: AwaitWhat | None = msgspec.field(default=None, name="await")
    timeout: PositiveSeconds = 600.0
    continue_on_failure: bool = False


class OnlyWhen(Struct, gc=False, forbid_unknown_fields=True, kw_only=True):
    state: ServerState | None = None
    players_max: Count | None = None


class Schedule(Struct, gc=False, forbid_unknown_fields=True, kw_only=True):
    """A server's timed run of tasks, fired by its worker (docs/spec.md, "Schedules")."""

    id: ScheduleId | None = None  # given by the API at the create
    name: Annotated[str, Meta(max_length=64)] | None = None
    cron: Annotated[str, Meta(min_length=1, max_length=256)]
    timezone: Annotated[str, Meta(min_length=1, max_length=64)] = "UTC"
    enabled: bool = True
    only_when: OnlyWhen | None = None
    defer_max: Seconds = 0.0
    tasks: Annotated[list[ScheduleTask], Meta(min_length=1, max_length=MAX_SCHEDULE_TASKS)]
class BackupHook(Struct, gc=False, forbid_unknown_fields=True, kw_only=True):
    """A console command around a backup; with `wait_for`, the backup waits for a line
    matching it (a failed backup when none comes within `timeout`)."""

    command: ConsoleLine
    wait_for: Pattern | None = None
    timeout: PositiveSeconds = 60.0


BackupPath = Annotated[str, Meta(min_length=1, max_length=4096, extra_json_schema=_TEXT)]


class BackupSpec(Struct, gc=False, forbid_unknown_fields=True, kw_only=True):
    """What a backup of the server's files holds, and how many are kept (docs/spec.md,
    "Backups"); 0 for a limit: none."""

    paths: Annotated[list[BackupPath], Meta(max_length=64)] = msgspec.field(
        default_factory=list)  # none: the whole files directory
    write_limit: Annotated[float, Meta(ge=0, le=100000)] = 0.0  # MiB/s written
    before: Annotated[list[BackupHook], Meta(max_length=16)] = msgspec.field(
        default_factory=list)
    after: Annotated[list[BackupHook], Meta(max_length=16)] = msgspec.field(
        default_factory=list)
    stop_during: bool = False
    keep_last: Count = 0
    keep_days: Annotated[float, Meta(ge=0, le=36500)] = 0.0
    max_bytes: Annotated[int, Meta(ge=0, le=2**62)] = 0


# a glob of paths the file manager neither reads nor writes (docs/spec.md, "Files")
FileGlob = Annotated[str, Meta(min_length=1, max_length=256, extra_json_schema=_TEXT)]
FileDenylist = Annotated[list[FileGlob], Meta(max_length=64)]


class Limits(Struct, gc=False, forbid_unknown_fields=True, kw_only=True):
    """What a server may use (docs/spec.md, "Limits"); a field not given is not limited."""

    memory_mb: Annotated[int, Meta(ge=4, le=2**31 - 1)] | None = None
    cpus: Annotated[float, Meta(ge=0.01, le=4096)] | None = None  # cores (0.5: half of one)
    pids: Annotated[int, Meta(ge=1, le=2**22)] | None = None
    disk_mb: Annotated[int, Meta(ge=1, le=2**31 - 1)] | None = None

    @property
    def empty(self) -> bool:
        return (self.memory_mb is None and self.cpus is None and self.pids is None
                and self.disk_mb is None)


def split_game_id(game_id: str) -> tuple[str, str]:
    method, _, ident = game_id.partition(":")
    return method, ident


class ServerSpec(Struct, gc=False, forbid_unknown_fields=True, kw_only=True):
    """What a user gives to create a server."""

    name: Annotated[str, Meta(pattern=NAME_PATTERN)]
    game_id: GameId
    worker_id: WorkerId | None = None
    executable: Executable | None = None
    args: Annotated[list[Arg], Meta(max_length=1024)] = msgspec.field(default_factory=list)
    env: dict[EnvKey, EnvValue] = msgspec.field(default_factory=dict)
    stop_command: ConsoleLine | None = None
    stop_timeout: Seconds = 30.0
    ready_pattern: Pattern | None = None
    restart: RestartSpec = msgspec.field(default_factory=RestartSpec)
    health: HealthSpec = msgspec.field(default_factory=HealthSpec)
    ports: Annotated[list[PortSpec], Meta(max_length=64)] = msgspec.field(default_factory=list)
    desired_state: Literal["running", "stopped"] = "stopped"
    stop_signal: StopSignal | None = None  # for games that read no stdin (Valheim: SIGINT)
    player_patterns: PlayerPatterns | None = None
    restart_needed_patterns: Annotated[list[Pattern], Meta(max_length=16)] = msgspec.field(
        default_factory=list)
    auto_update: AutoUpdateSpec = msgspec.field(default_factory=AutoUpdateSpec)
    preset: Annotated[str, Meta(max_length=64)] | None = None
    preset_version: Count | None = None
    # values of a preset's secret variables: in args/env for the game, never in an answer
    secret_values: Annotated[list[Annotated[str, Meta(max_length=1024)]],
                             Meta(max_length=64)] = msgspec.field(default_factory=list)
    schedules: Annotated[list[Schedule], Meta(max_length=MAX_SCHEDULES)] = msgspec.field(
        default_factory=list)
    backup: BackupSpec = msgspec.field(default_factory=BackupSpec)
    file_denylist: FileDenylist = msgspec.field(default_factory=list)
    limits: Limits = msgspec.field(default_factory=Limits)

    def __post_init__(self) -> None:
        validate_spec(self)

    @property
    def install_method(self) -> str:
        return split_game_id(self.game_id)[0]

    @property
    def install_identifier(self) -> str:
        return split_game_id(self.game_id)[1]


def validate_spec(spec: ServerSpec) -> None:
    """Checks msgspec's declarative constraints cannot express; raises ValueError."""
    # msgspec's pattern is re.search, where '$' also matches before a final newline
    if not _NAME_RE.fullmatch(spec.name):
        raise ValueError(f"name must match {NAME_PATTERN}")
    method, ident = split_game_id(spec.game_id)
    if method == "steamcmd":
        if not ident.isascii() or not ident.isdigit() or len(ident) > 12:
            raise ValueError("game_id: steamcmd app id must be digits, e.g. steamcmd:896660")
    elif method == "docker":
        if not _IMAGE_RE.fullmatch(ident):
            raise ValueError("game_id: docker image reference is not valid")
    elif method == "exec":
        if not ident or ident.startswith("-"):
            raise ValueError("game_id: exec needs a path or program name, e.g. exec:/usr/bin/srv")
        _no_nul(ident, "game_id")
    else:
        raise ValueError("game_id must start with steamcmd:, docker: or exec:")
    if spec.executable is not None:
        _no_nul(spec.executable, "executable")
        if method == "steamcmd":
            parts = spec.executable.split("/")
            if spec.executable.startswith("/") or ".." in parts:
                raise ValueError("executable: must be a path inside the install directory")
        if method == "exec" and spec.executable.startswith("-"):
            raise ValueError("executable must not start with '-'")
    total = 0
    for a in spec.args:
        _no_nul(a, "args")
        total += len(a.encode("utf-8", "surrogatepass"))
    if total > MAX_ARGS_BYTES:
        raise ValueError(f"args: more than {MAX_ARGS_BYTES} bytes in all")
    total = 0
    for k, v in spec.env.items():
        if not _ENV_KEY_RE.fullmatch(k):
            raise ValueError(f"env: {k[:64]!r} is not a valid variable name")
        if k.startswith("MANMAN_"):
            raise ValueError("env: names starting with MANMAN_ are reserved")
        _no_nul(v, "env")
        total += len(k) + len(v.encode("utf-8", "surrogatepass"))
    if total > MAX_ENV_BYTES:
        raise ValueError(f"env: more than {MAX_ENV_BYTES} bytes in all")
    if spec.stop_command is not None:
        _no_nul(spec.stop_command, "stop_command")
        if "\n" in spec.stop_command or "\r" in spec.stop_command:
            raise ValueError("stop_command must be one line")
    if spec.ready_pattern is not None:
        _check_regex(spec.ready_pattern, "ready_pattern")
    for i, p in enumerate(spec.restart_needed_patterns):
        _check_regex(p, f"restart_needed_patterns[{i}]")
    if spec.player_patterns is not None:
        for kind in ("join", "leave"):
            for i, p in enumerate(getattr(spec.player_patterns, kind)):
                if "player" not in _check_regex(p, f"player_patterns.{kind}[{i}]").groupindex:
                    raise ValueError(f"player_patterns.{kind}[{i}]: needs a (?P<player>…) group")
    if spec.stop_signal is not None and spec.stop_command is not None:
        raise ValueError("stop_signal: give stop_command or stop_signal, not both")
    announce = spec.auto_update.announce_command
    if announce is not None:
        _no_nul(announce, "auto_update.announce_command")
        if "\n" in announce or "\r" in announce:
            raise ValueError("auto_update.announce_command must be one line")
    if spec.auto_update.mode != "off" and method != "steamcmd":
        raise ValueError("auto_update: only steamcmd servers take Steam builds")
    _check_ports(spec)
    if len(spec.schedules) > MAX_SCHEDULES:  # the decode checks it, a route's append does not
        raise ValueError(f"schedules: at most {MAX_SCHEDULES}")
    if spec.schedules:
        from manman.schedules.check import check_schedules

        check_schedules(spec)
    _check_backup(spec.backup)
    for i, glob in enumerate(spec.file_denylist):
        if "\x00" in glob:
            raise ValueError(f"file_denylist[{i}]: NUL is not accepted")


def _check_backup(backup: BackupSpec) -> None:
    for i, path in enumerate(backup.paths):
        parts = path.split("/")
        if "\x00" in path or path.startswith("/") or ".." in parts:
            raise ValueError(f"backup.paths[{i}]: a path relative to the files directory, "
                             "without '..'")
    for kind in ("before", "after"):
        for i, hook in enumerate(getattr(backup, kind)):
            where = f"backup.{kind}[{i}]"
            try:
                check_console_line(hook.command)
            except ValueError as e:
                raise ValueError(f"{where}.command: {e}") from None
            if hook.wait_for is not None:
                _check_regex(hook.wait_for, f"{where}.wait_for")


def _check_regex(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as e:
        raise ValueError(f"{where} is not a valid regular expression: {e}") from None


def _check_ports(spec: ServerSpec) -> None:
    names: dict[str, PortSpec] = {}
    for i, p in enumerate(spec.ports):
        if p.name is not None:
            if p.name in names:
                raise ValueError(f"ports[{i}].name: {p.name!r} is given twice")
            names[p.name] = p
        if p.port == "auto" and p.name is None:
            raise ValueError(f"ports[{i}]: an `auto` port needs a name")
        if p.follows is not None:
            leader = names.get(p.follows)
            if leader is None or leader.follows is not None:
                raise ValueError(f"ports[{i}].follows: must name a port given before it "
                                 "that follows none")
            if p.offset == 0 and p.protocol == leader.protocol:
                raise ValueError(f"ports[{i}].offset: 0 only on the other protocol")
            if isinstance(leader.port, int) and leader.port + p.offset > 65535:
                raise ValueError(f"ports[{i}]: follows {p.follows}, so it is past 65535")
            if leader.port == "auto" and p.port != "auto":
                raise ValueError(f"ports[{i}]: follows an auto port, so it is auto too")
            if isinstance(leader.port, int) and p.port != "auto" \
                    and p.port != leader.port + p.offset:
                raise ValueError(f"ports[{i}]: follows {p.follows}, so it is "
                                 f"{leader.port + p.offset}")
        elif p.offset != 1:
            raise ValueError(f"ports[{i}].offset: only for a port that follows another")
    query = spec.health.query
    if query is not None:
        if query.type == "console":
            if query.port is not None:
                raise ValueError("health.query.port: a console query has no port")
            if spec.player_patterns is None:
                raise ValueError("health.query: a console query needs player_patterns")
        elif query.port is None:
            raise ValueError(f"health.query.port: an {query.type} query needs a port")
        elif isinstance(query.port, str) and _port_name(query.port) not in names:
            raise ValueError(f"health.query.port: {query.port} names no port in `ports`")


def _port_name(ref: str) -> str:
    m = _PORT_REF_RE.fullmatch(ref)
    return m.group(1) if m else ""


# PUT /server/{id}: every field optional; what is given replaces the stored value
_UPDATABLE = ("name", "executable", "args", "env", "stop_command", "stop_timeout",
              "ready_pattern", "restart", "health", "ports", "desired_state", "stop_signal",
              "player_patterns", "restart_needed_patterns", "auto_update", "schedules",
              "backup", "file_denylist", "limits")


class ServerUpdate(Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(pattern=NAME_PATTERN)] | msgspec.UnsetType = msgspec.UNSET
    worker_id: WorkerId | msgspec.UnsetType | None = msgspec.UNSET
    game_id: GameId | msgspec.UnsetType = msgspec.UNSET
    executable: Executable | msgspec.UnsetType | None = msgspec.UNSET
    args: Annotated[list[Arg], Meta(max_length=1024)] | msgspec.UnsetType = msgspec.UNSET
    env: dict[EnvKey, EnvValue] | msgspec.UnsetType = msgspec.UNSET
    stop_command: ConsoleLine | msgspec.UnsetType | None = msgspec.UNSET
    stop_timeout: Seconds | msgspec.UnsetType = msgspec.UNSET
    ready_pattern: Pattern | msgspec.UnsetType | None = msgspec.UNSET
    restart: RestartSpec | msgspec.UnsetType = msgspec.UNSET
    health: HealthSpec | msgspec.UnsetType = msgspec.UNSET
    ports: Annotated[list[PortSpec], Meta(max_length=64)] | msgspec.UnsetType = msgspec.UNSET
    desired_state: Literal["running", "stopped"] | msgspec.UnsetType = msgspec.UNSET
    stop_signal: StopSignal | msgspec.UnsetType | None = msgspec.UNSET
    player_patterns: PlayerPatterns | msgspec.UnsetType | None = msgspec.UNSET
    restart_needed_patterns: Annotated[list[Pattern], Meta(max_length=16)] | \
        msgspec.UnsetType = msgspec.UNSET
    auto_update: AutoUpdateSpec | msgspec.UnsetType = msgspec.UNSET
    schedules: Annotated[list[Schedule], Meta(max_length=MAX_SCHEDULES)] | \
        msgspec.UnsetType = msgspec.UNSET
    backup: BackupSpec | msgspec.UnsetType = msgspec.UNSET
    file_denylist: FileDenylist | msgspec.UnsetType = msgspec.UNSET
    limits: Limits | msgspec.UnsetType = msgspec.UNSET
    restart_on_change: bool = False


def apply_update(spec: ServerSpec, update: ServerUpdate) -> ServerSpec:
    """The spec after `update`; raises ValueError for a field that cannot change."""
    for fixed in ("worker_id", "game_id"):
        value = getattr(update, fixed)
        if value is not msgspec.UNSET and value != getattr(spec, fixed):
            raise ValueError(f"{fixed} cannot change; create a new server instead")
    changes = {k: getattr(update, k) for k in _UPDATABLE if getattr(update, k) is not msgspec.UNSET}
    if spec.secret_values:
        _unmask(changes, spec)
    new = msgspec.structs.replace(spec, **changes)
    validate_spec(new)
    return new


def _unmask(changes: dict[str, Any], spec: ServerSpec) -> None:
    """A value sent back as an answer showed it (`********` where a secret was) keeps the
    secret: a GET → edit → PUT must not replace a password with asterisks."""
    def keep(new: str, old: str) -> str:
        return old if REDACTED in new and new == redact(old, spec.secret_values) else new

    if "args" in changes:
        changes["args"] = [keep(a, spec.args[i]) if i < len(spec.args) else a
                           for i, a in enumerate(changes["args"])]
    if "env" in changes:
        changes["env"] = {k: keep(v, spec.env[k]) if k in spec.env else v
                          for k, v in changes["env"].items()}
    for field in ("executable", "stop_command"):
        new, old = changes.get(field), getattr(spec, field)
        if isinstance(new, str) and isinstance(old, str):
            changes[field] = keep(new, old)
