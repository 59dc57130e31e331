"""config.toml + MANMAN_<SECTION>_<KEY> environment overrides → frozen, validated settings."""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec

from manman import ports
from manman.errors import ManmanError, StartupError
from manman.models import ServerSpec, validation_message

log = logging.getLogger("manman.config")


class ConfigError(StartupError):
    """A bad config file or value; the message names the key and never a secret's value."""


def parse_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:8700' or '[::1]:8700' → (host, port); raises ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError("an IPv6 address needs brackets: [::1]:PORT")
    host = host.strip("[]")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("port must be 0-65535")
    return host, int(port)


# the upper bound keeps out inf: every duration is a finite number
Positive = Annotated[float, msgspec.Meta(gt=0, le=sys.float_info.max)]
NonNegative = Annotated[float, msgspec.Meta(ge=0, le=sys.float_info.max)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]


class _BadValue(ValueError):
    """A value a type cannot refuse (a listen address, a URL), raised by `__post_init__`."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


def _check_listen(key: str, value: str) -> None:
    try:
        parse_listen(value)
    except ValueError as e:
        raise _BadValue(key, f"{e}, got {value!r}") from None


def _check_http_url(key: str, value: str) -> None:
    parts = urlsplit(value)
    if value and (parts.scheme not in ("http", "https") or not parts.netloc):
        raise _BadValue(key, f"expected an http:// or https:// URL, got {value!r}")


class HostConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    listen: str = "127.0.0.1:8700"
    database_url: str = ""
    data_dir: Path = Path("./data/host")
    worker_timeout: NonNegative = 15.0
    worker_expiry: NonNegative = 3600.0  # 0: never
    admin_token: str = ""
    join_token: str = ""
    console_token_ttl: Positive = 600.0
    # heartbeats are written to PostgreSQL in batches at most this often (hot path)
    flush_interval: Positive = 0.5
    # a new connection that has not sent a whole request head by then is closed
    header_timeout: Positive = 10.0
    audit_days: NonNegative = 90.0  # audit rows older than this are pruned; 0: kept forever
    webhook_timeout: Positive = 10.0  # one delivery attempt, all in
    webhook_retry_initial: Positive = 10.0  # the first retry's delay; doubles up to 1 h

    def __post_init__(self) -> None:
        _check_listen("listen", self.listen)
        # the value is never echoed: it may hold a password
        if self.database_url and \
                urlsplit(self.database_url).scheme not in ("postgres", "postgresql"):
            raise _BadValue("database_url", "expected a postgresql:// URL (or empty for the "
                                            "embedded PostgreSQL)")


class WorkerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str = ""
    host_url: str = "http://127.0.0.1:8700"
    listen: str = "127.0.0.1:8701"
    advertise_url: str = ""
    data_dir: Path = Path("./data/worker")
    heartbeat_interval: Positive = 5.0
    steamcmd: str = "steamcmd"
    docker: str = "docker"
    docker_network: str = ""  # empty: docker's default network
    join_token: str = ""
    api_token: str = ""
    install_timeout: Positive = 3600.0
    # the shortest auto_update.check_interval this worker honours (each check runs steamcmd)
    update_check_min_interval: Positive = 60.0
    console_ring_bytes: PositiveInt = 8 * 1024 * 1024
    log_file_bytes: PositiveInt = 8 * 1024 * 1024
    log_files_keep: PositiveInt = 5
    header_timeout: Positive = 10.0  # as the host's
    # seconds between two passes of the live stats (docs/spec.md "Live stats"); 0: none
    stats_interval: NonNegative = 5.0
    # seconds between two checks of every server's disk use against its limits.disk_mb
    # (docs/spec.md "Disk limit"): each reads again only what changed
    disk_check_interval: Positive = 60.0
    port_range: str = ports.DEFAULT_RANGE  # where `auto` ports are placed: FIRST-LAST
    # the largest file upload (PUT /server/{id}/files/content) accepted, in bytes
    files_max_upload: PositiveInt = 100 * 1024 * 1024
    # an archive declaring more bytes than this in all is not extracted (a zip bomb)
    files_max_extract: PositiveInt = 4 * 1024 * 1024 * 1024
    # where backups are kept (any mounted path, e.g. NFS); empty: <data_dir>/backups
    backup_dir: str = ""
    # limits of exec/steamcmd servers (docs/spec.md "Limits"): enforced by cgroups, or
    # "monitor": not enforced, use over them warned of on the console
    limits: Literal["enforce", "monitor"] = "enforce"
    cgroup_root: str = "/sys/fs/cgroup"  # where the cgroup hierarchies are mounted

    def __post_init__(self) -> None:
        _check_listen("listen", self.listen)
        _check_http_url("host_url", self.host_url)
        _check_http_url("advertise_url", self.advertise_url)
        try:
            ports.parse_range(self.port_range)
        except ValueError as e:
            raise _BadValue("port_range", str(e)) from None

    @property
    def standalone(self) -> bool:
        return not self.host_url

    def effective_name(self) -> str:
        return self.name or socket.gethostname()

    def effective_backup_dir(self) -> Path:
        """backup_dir, a relative one taken from data_dir."""
        return Path(self.data_dir) / Path(self.backup_dir or "backups").expanduser()

    def effective_advertise_url(self, bound: str | None = None) -> str:
        """The URL the host uses to reach this worker; `bound` is the real address after bind."""
        if self.advertise_url:
            return self.advertise_url.rstrip("/")
        return (bound or f"http://{self.listen}").rstrip("/")


class Config(msgspec.Struct, frozen=True):
    host: HostConfig = msgspec.field(default_factory=HostConfig)
    worker: WorkerConfig = msgspec.field(default_factory=WorkerConfig)
    # [[server]] tables: specs created at start when no server of that name exists yet
    servers: tuple[dict[str, Any], ...] = ()
    path: Path | None = None

    async def seed(self, exists: Callable[[str], bool],
                   create: Callable[[ServerSpec], Awaitable[object]],
                   worker_id: str | None = None) -> None:
        """Create the [[server]] entries whose name does not exist yet (on `worker_id`, when a
        host seeds its own machine's worker); one that cannot be made is a warning."""
        for raw in self.servers:
            spec = msgspec.convert({**raw, "worker_id": raw.get("worker_id") or worker_id},
                                   ServerSpec)
            if exists(spec.name):
                continue
            try:
                await create(spec)
            except ManmanError as e:
                log.warning("config server %s not created: %s", spec.name, e.message)


class _File(msgspec.Struct, forbid_unknown_fields=True):
    """config.toml's outline; each section is read on its own so env values can override."""

    host: dict[str, Any] = msgspec.field(default_factory=dict)
    worker: dict[str, Any] = msgspec.field(default_factory=dict)
    server: list[dict[str, Any]] = msgspec.field(default_factory=list)


_Section = TypeVar("_Section", HostConfig, WorkerConfig)

# msgspec's message, then where: "Expected `int` >= 1 - at `$.log_files_keep`"
_WHERE = re.compile(r"(?P<text>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?", re.DOTALL)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<key>.*)`")
_TYPE = re.compile(r"Expected `(?P<want>\w+)`, got `(?P<got>\w+)`")
_BOUND = re.compile(r"Expected `(?P<kind>\w+)` (?P<op>[<>]=?) (?P<limit>\S+)")
_KINDS = {"str": "a string", "float": "a number", "int": "a whole number (int)"}
_BOUNDS = {">": "greater than {}", ">=": "{} or more", "<": "less than {}", "<=": "{} or less"}


def _split(e: msgspec.ValidationError) -> tuple[str, str]:
    """msgspec's message → (what is wrong, the dotted path it is at; '' at the top)."""
    m = _WHERE.fullmatch(str(e))
    assert m is not None  # the pattern matches any text
    return m["text"], m["path"] or ""


# values never echoed in a message, even a wrong one (a URL may hold a password)
_SECRETS = frozenset({"admin_token", "join_token", "api_token", "database_url"})


@cache
def _numbers(cls: type[msgspec.Struct],
             kinds: tuple[type, ...] = (msgspec.inspect.IntType, msgspec.inspect.FloatType)
             ) -> frozenset[str]:
    """The fields holding numbers (of `kinds`)."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return frozenset(f.name for f in info.fields if isinstance(f.type, kinds))


def _non_finite(value: Any) -> bool:
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def _problem(e: msgspec.ValidationError, name: str, raw: Mapping[str, Any],
             numbers: frozenset[str]) -> str:
    """One line naming `name.key`; shows the bad value unless it may be a secret."""
    if isinstance(e.__cause__, _BadValue):
        return f"config: {name}.{e.__cause__.key}: {e.__cause__}"
    text, key = _split(e)
    if unknown := _UNKNOWN.fullmatch(text):
        return f"config: unknown key {name}.{unknown['key']}"
    shown = key in raw and key not in _SECRETS
    got = f", got {raw[key]!r}" if shown else ""
    if shown and _non_finite(raw[key]) and (_BOUND.fullmatch(text) or "range" in text):
        problem = "expected a finite number"
    elif typed := _TYPE.fullmatch(text):
        want = _KINDS.get(typed["want"], typed["want"])
        got = got or f", got {typed['got']}"
        problem = f"expected {want}"
    elif bound := _BOUND.fullmatch(text):
        op, limit = bound["op"], float(bound["limit"])
        if bound["kind"] == "int" and op == ">=":  # msgspec states an int's gt=0 as >= 1
            op, limit = ">", limit - 1
        problem = "must be " + _BOUNDS[op].format(f"{limit:g}")
    else:
        problem = text[:1].lower() + text[1:]
    return f"config: {name}.{key}: {problem}{got}"


def _whole_number(name: str, key: str, value: str) -> int:
    """An int from text as Python reads one ('1_000' too); msgspec alone would take '2.0'."""
    try:
        return int(value, 10)
    except ValueError:
        raise ConfigError(f"config: {name}.{key}: expected a whole number (int), "
                          f"got {value!r}") from None


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is Path:
        if isinstance(value, str):
            return Path(value)
        raise ValueError("expected a string")
    raise NotImplementedError


def _convert(raw: dict[str, Any], cls: type[_Section], name: str, strict: bool) -> _Section:
    try:
        return msgspec.convert(raw, cls, strict=strict, dec_hook=_dec_hook)
    except msgspec.ValidationError as e:
        raise ConfigError(_problem(e, name, raw, _numbers(cls))) from None


def _section(cls: type[_Section], name: str, table: dict[str, Any], env: Mapping[str, str],
             base: Path) -> _Section:
    numbers, ints = _numbers(cls), _numbers(cls, (msgspec.inspect.IntType,))
    text: dict[str, Any] = {}
    for key in cls.__struct_fields__:
        value = env.get(f"MANMAN_{name.upper()}_{key.upper()}")
        if value is None and key in numbers and isinstance(table.get(key), str):
            value = table[key]  # a quoted number in the file is read like an env value
        if value is not None:
            text[key] = value.strip() if key in numbers else value
        if key in ints and value is not None:
            text[key] = _whole_number(name, key, text[key])
    # TOML values are typed, so strict (1.0 is not an int); env values are text to parse
    from_file = _convert({k: v for k, v in table.items() if k not in text}, cls, name, True)
    from_text = _convert(text, cls, name, False)
    values = {key: getattr(from_text, key) for key in text}
    # relative paths are relative to the config file, wherever manman is started from
    data_dir = values.get("data_dir", from_file.data_dir).expanduser()
    values["data_dir"] = data_dir if data_dir.is_absolute() else base / data_dir
    return msgspec.structs.replace(from_file, **values)


def load_config(path: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Read `path` (None: defaults only) and apply env overrides. Raises ConfigError."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    cfg_path: Path | None = None
    if path is not None:
        cfg_path = Path(path)
        try:
            data = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config: file not found: {cfg_path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config: cannot read {cfg_path}: {e}") from None
        except (tomllib.TOMLDecodeError, ValueError) as e:
            raise ConfigError(f"config: {cfg_path} is not valid TOML: {e}") from None
    base = cfg_path.resolve().parent if cfg_path else Path.cwd()
    try:
        file = msgspec.convert(data, _File)
    except msgspec.ValidationError as e:
        text, where = _split(e)
        if unknown := _UNKNOWN.fullmatch(text):
            raise ConfigError(f"config: unknown key {unknown['key']}") from None
        if where.startswith("server"):
            raise ConfigError("config: server must be an array of tables ([[server]])") from None
        raise ConfigError(f"config: {where} must be a table") from None
    host = _section(HostConfig, "host", file.host, env, base)
    worker = _section(WorkerConfig, "worker", file.worker, env, base)
    for i, s in enumerate(file.server):
        try:
            msgspec.convert(s, ServerSpec)
        except msgspec.ValidationError as e:
            raise ConfigError(f"config: server[{i}]: {validation_message(e)}") from None
    return Config(host=host, worker=worker, servers=tuple(file.server), path=cfg_path)
