"""config.toml + MANMAN_<SECTION>_<KEY> environment overrides → frozen, validated settings."""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

import msgspec


class ConfigError(Exception):
    """A bad config file or value; the message names the key."""


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


@dataclass(frozen=True)
class HostConfig:
    listen: str = "127.0.0.1:8700"
    database_url: str = ""
    data_dir: Path = Path("./data/host")
    worker_timeout: float = 15.0
    worker_expiry: float = 3600.0
    admin_token: str = ""
    join_token: str = ""
    console_token_ttl: float = 600.0
    # heartbeats are written to PostgreSQL in batches at most this often (hot path)
    flush_interval: float = 0.5


@dataclass(frozen=True)
class WorkerConfig:
    name: str = ""
    host_url: str = "http://127.0.0.1:8700"
    listen: str = "127.0.0.1:8701"
    advertise_url: str = ""
    data_dir: Path = Path("./data/worker")
    heartbeat_interval: float = 5.0
    steamcmd: str = "steamcmd"
    docker: str = "docker"
    docker_network: str = ""  # empty: docker's default network
    join_token: str = ""
    api_token: str = ""
    install_timeout: float = 3600.0
    console_ring_bytes: int = 8 * 1024 * 1024
    log_file_bytes: int = 8 * 1024 * 1024
    log_files_keep: int = 5

    @property
    def standalone(self) -> bool:
        return not self.host_url

    def effective_name(self) -> str:
        return self.name or socket.gethostname()

    def effective_advertise_url(self, bound: str | None = None) -> str:
        """The URL the host uses to reach this worker; `bound` is the real address after bind."""
        if self.advertise_url:
            return self.advertise_url.rstrip("/")
        return (bound or f"http://{self.listen}").rstrip("/")


@dataclass(frozen=True)
class Config:
    host: HostConfig = field(default_factory=HostConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    # [[server]] tables: specs created at start when no server of that name exists yet
    servers: tuple[dict[str, Any], ...] = ()
    path: Path | None = None


_POSITIVE = {"heartbeat_interval", "console_token_ttl", "flush_interval", "install_timeout",
             "console_ring_bytes", "log_file_bytes", "log_files_keep"}
_NON_NEGATIVE = {"worker_timeout", "worker_expiry"}
_URLS = {"host_url", "advertise_url"}


_SECRETS = {"admin_token", "join_token", "api_token"}


def _coerce(section: str, key: str, kind: type, raw: Any, from_env: bool) -> Any:
    where = f"{section}.{key}"
    if key in _SECRETS and not isinstance(raw, str):
        # a secret's value never goes into a message, even a wrong one
        raise ConfigError(f"config: {where}: expected a string, got a {type(raw).__name__}")
    if kind is Path:
        kind = str
    if kind is str:
        if not isinstance(raw, str):
            raise ConfigError(f"config: {where}: expected a string, got {raw!r}")
        value: Any = raw
    elif kind in (float, int):
        if isinstance(raw, bool):
            raise ConfigError(f"config: {where}: expected a number, got {raw!r}")
        if from_env or isinstance(raw, str):
            try:
                raw = float(raw) if kind is float else int(str(raw), 10)
            except (ValueError, OverflowError):
                raise ConfigError(f"config: {where}: expected a number, got {raw!r}") from None
        if not isinstance(raw, int | float) or (kind is int and isinstance(raw, float)):
            raise ConfigError(f"config: {where}: expected {kind.__name__}, got {raw!r}")
        try:
            value = kind(raw)
        except OverflowError:
            raise ConfigError(f"config: {where}: number out of range, got {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"config: {where}: expected a finite number, got {raw!r}")
        if key in _POSITIVE and value <= 0:
            raise ConfigError(f"config: {where}: must be greater than 0, got {raw!r}")
        if key in _NON_NEGATIVE and value < 0:
            raise ConfigError(f"config: {where}: must be 0 or more, got {raw!r}")
    else:  # pragma: no cover - every field is one of the kinds above
        raise AssertionError(kind)
    if key == "listen":
        try:
            parse_listen(value)
        except ValueError as e:
            raise ConfigError(f"config: {where}: {e}, got {value!r}") from None
    # the value is never echoed: it may hold a password
    if key == "database_url" and value and \
            urlsplit(value).scheme not in ("postgres", "postgresql"):
        raise ConfigError(f"config: {where}: expected a postgresql:// URL (or empty for "
                          "the embedded PostgreSQL)")
    if key in _URLS and value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"config: {where}: expected an http:// or https:// URL, got {value!r}")
    return value


def _section(cls: type, name: str, table: Mapping[str, Any], env: Mapping[str, str],
             base: Path) -> Any:
    hints = get_type_hints(cls)
    for key in table:
        if key not in hints:
            raise ConfigError(f"config: unknown key {name}.{key}")
    values: dict[str, Any] = {}
    for f in fields(cls):
        key, kind = f.name, hints[f.name]
        env_key = f"MANMAN_{name.upper()}_{key.upper()}"
        if env_key in env:
            value = _coerce(name, key, kind, env[env_key], from_env=True)
        elif key in table:
            value = _coerce(name, key, kind, table[key], from_env=False)
        else:
            value = f.default
        if kind is Path:
            # relative paths are relative to the config file, wherever manman is started from
            p = Path(value).expanduser()
            value = p if p.is_absolute() else base / p
        values[key] = value
    return cls(**values)


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
    for key in data:
        if key not in ("host", "worker", "server"):
            raise ConfigError(f"config: unknown key {key}")
    for name in ("host", "worker"):
        if not isinstance(data.get(name, {}), dict):
            raise ConfigError(f"config: {name} must be a table")
    host = _section(HostConfig, "host", data.get("host", {}), env, base)
    worker = _section(WorkerConfig, "worker", data.get("worker", {}), env, base)
    servers = data.get("server", [])
    if not isinstance(servers, list) or not all(isinstance(s, dict) for s in servers):
        raise ConfigError("config: server must be an array of tables ([[server]])")
    from manman.models import ServerSpec, validation_message

    for i, s in enumerate(servers):
        try:
            msgspec.convert(s, ServerSpec)
        except msgspec.ValidationError as e:
            raise ConfigError(f"config: server[{i}]: {validation_message(e)}") from None
    return Config(host=host, worker=worker, servers=tuple(servers), path=cfg_path)
