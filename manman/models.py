"""The wire types of docs/spec.md, validated once at the edge (msgspec)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from manman.schedules.runs import REPORT_BATCH, ReportedRun

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
# a docker reference as `docker pull` takes it; never starts with '-' (it goes into argv)
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")
_NAME_RE = re.compile(NAME_PATTERN[1:-1])
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_ARGS_BYTES = 64 * 1024
MAX_ENV_BYTES = 64 * 1024
MAX_LINE = 4096

Seconds = Annotated[float, Meta(ge=0, le=86400 * 7)]
PositiveSeconds = Annotated[float, Meta(gt=0, le=86400)]
Port = Annotated[int, Meta(ge=1, le=65535)]
# Patterns tell OpenAPI what validate_spec (and the edge's NUL check) enforce with messages
# a person can read; as `extra_json_schema` they document without replacing those messages.


def _schema_pattern(pattern: str) -> dict[str, str]:
    return {"pattern": pattern}


_TEXT = _schema_pattern(r"^[^\x00]*$")
Executable = Annotated[str, Meta(min_length=1, max_length=4096, extra_json_schema=_TEXT)]
ConsoleLine = Annotated[str, Meta(max_length=MAX_LINE,
                                  extra_json_schema=_schema_pattern(r"^[^\x00\r\n]*$"))]
Arg = Annotated[str, Meta(max_length=MAX_ARGS_BYTES, extra_json_schema=_TEXT)]
EnvKey = Annotated[str, Meta(extra_json_schema=_schema_pattern(
    r"^(?!MANMAN_)[A-Za-z_][A-Za-z0-9_]{0,127}$"))]
EnvValue = Annotated[str, Meta(max_length=MAX_ENV_BYTES, extra_json_schema=_TEXT)]
GameId = Annotated[str, Meta(min_length=3, max_length=4096, extra_json_schema=_schema_pattern(
    r"^(steamcmd:[0-9]{1,12}|docker:[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}"
    r"|exec:[^\x00-][^\x00]*)$"))]
WorkerId = Annotated[str, Meta(max_length=64,
                               extra_json_schema=_schema_pattern(r"^[a-z0-9-]{1,64}$"))]
Pattern = Annotated[str, Meta(max_length=1024, extra_json_schema=_TEXT)]
# integers bounded to what SQLite and PostgreSQL `integer` columns hold
Int32 = Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)]
Count = Annotated[int, Meta(ge=0, le=2**31 - 1)]
Generation = Annotated[int, Meta(ge=1, le=2**31 - 1)]

STATES = ("created", "installing", "stopped", "starting", "running", "stopping", "crashed",
          "failed", "unknown")
ServerState = Literal["created", "installing", "stopped", "starting", "running", "stopping",
                      "crashed", "failed", "unknown"]
WorkerStatus = Literal["alive", "frozen", "shutdown", "unknown"]
# what a worker says of itself, and what the host holds of it: never `unknown`
KnownWorkerStatus = Literal["alive", "frozen", "shutdown"]


def _no_nul(value: str, what: str) -> None:
    if "\x00" in value:
        raise ValueError(f"{what} must not contain a NUL byte")


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


REDACTED = "********"
_VIEW_SPEC_FIELDS = tuple(f for f in ServerSpec.__struct_fields__ if f != "secret_values")


def redact(obj: Any, secrets: list[str] | tuple[str, ...]) -> Any:
    """`obj` with every secret value replaced, in any string of any list or dict."""
    if not secrets:
        return obj
    if isinstance(obj, str):
        return _mask(obj, secrets)
    if isinstance(obj, list):
        return [redact(x, secrets) for x in obj]
    if isinstance(obj, dict):
        return {k: redact(v, secrets) for k, v in obj.items()}
    return obj


def _mask(text: str, secrets: list[str] | tuple[str, ...]) -> str:
    """Every character inside any occurrence of a secret is masked, overlapping ones too
    (replacing one secret after another could leave a piece of the next in sight)."""
    spans: list[tuple[int, int]] = []
    for secret in secrets:
        start = text.find(secret) if secret else -1
        while start != -1:
            spans.append((start, start + len(secret)))
            start = text.find(secret, start + 1)
    if not spans:
        return text
    spans.sort()
    out, pos, end = [], 0, -1
    for a, b in spans:
        if a > end:  # a new masked stretch begins
            if end >= 0:
                out.append(REDACTED)
            out.append(text[pos:a])
            end = b
        else:
            end = max(end, b)
        pos = end
    out.append(REDACTED)
    out.append(text[pos:])
    return "".join(out)


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


class ServerList(Struct):
    servers: list[Server]


CommandType = Literal["start", "stop", "restart", "kill", "install", "health", "command"]


class Command(Struct, forbid_unknown_fields=True):
    type: CommandType
    data: Annotated[str, Meta(max_length=MAX_LINE)] | None = None


class ConsoleInput(Struct, forbid_unknown_fields=True):
    data: Annotated[str, Meta(max_length=MAX_LINE)]


def check_console_line(data: str) -> None:
    if not data:  # the host's words too: both answer an empty line alike
        raise ValueError("a console command needs `data`")
    _no_nul(data, "data")
    if "\n" in data or "\r" in data:
        raise ValueError("data must be one line")


class CommandAccepted(Struct, omit_defaults=True):
    command_id: str
    delivered: bool
    result: dict[str, Any] | None = None  # what a `health` command found


class ErrorBody(Struct):
    code: str
    message: str


class ErrorReply(Struct):
    error: ErrorBody


class Line(Struct, gc=False):
    """One console line: the unit of the console protocol."""

    seq: int
    ts: float
    stream: str
    text: str


class LogPage(Struct, omit_defaults=True):
    lines: list[Line]
    next_seq: int
    first_seq: int
    websocket_url: str | None = None
    token: str | None = None


class StatsPoint(Struct, gc=False):
    """One minute of a server's stats: mean CPU %, peak memory, last disk size."""

    at: float
    cpu: float
    memory: int
    disk: int | None


class StatsHistory(Struct):
    id: str
    interval: int  # seconds a point covers
    points: list[StatsPoint]


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


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


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
