"""config.toml + MANMAN_<SECTION>_<KEY> overrides → validated settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from manman.config import (
    Config,
    ConfigError,
    HostConfig,
    WorkerConfig,
    load_config,
    parse_listen,
)
from manman.errors import StartupError


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, env or {})


def error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    msg = str(info.value)
    assert msg.startswith("config: ")
    assert "\n" not in msg  # one clear line
    return msg


# -- defaults -----------------------------------------------------------------------------


def test_defaults_match_spec(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    h, w = cfg.host, cfg.worker
    assert h.listen == "127.0.0.1:8700"
    assert h.database_url == ""
    assert h.data_dir == tmp_path / "data" / "host"
    assert h.worker_timeout == 15 and isinstance(h.worker_timeout, float)
    assert h.worker_expiry == 3600
    assert h.admin_token == "" and h.join_token == ""
    assert w.name == ""
    assert w.host_url == "http://127.0.0.1:8700"
    assert w.listen == "127.0.0.1:8701"
    assert w.advertise_url == ""
    assert w.data_dir == tmp_path / "data" / "worker"
    assert w.heartbeat_interval == 5
    assert w.steamcmd == "steamcmd" and w.docker == "docker"
    assert w.join_token == "" and w.api_token == ""
    assert cfg.servers == ()
    assert cfg.path == tmp_path / "config.toml"


def test_no_file_means_defaults_relative_to_cwd(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, {})
    assert cfg.path is None
    assert cfg.host.data_dir == tmp_path / "data" / "host"
    assert cfg.worker.data_dir == tmp_path / "data" / "worker"
    assert cfg.host.listen == HostConfig().listen


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    with pytest.raises(AttributeError, match="immutable"):
        cfg.host.listen = "x"  # type: ignore[misc]
    assert cfg.host.listen == "127.0.0.1:8700"


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANMAN_WORKER_NAME", "from-os-env")
    path = tmp_path / "c.toml"
    path.write_text("")
    assert load_config(path).worker.name == "from-os-env"


# -- TOML values --------------------------------------------------------------------------


def test_toml_values(tmp_path: Path) -> None:
    cfg = load(tmp_path, """
[host]
listen = "0.0.0.0:9000"
database_url = "postgresql://u@db/manman"
worker_timeout = 2.5
worker_expiry = 0
admin_token = "adm"

[worker]
name = "box-1"
host_url = "https://control.example:8700"
advertise_url = "http://10.0.0.5:8701/"
heartbeat_interval = 0.5
steamcmd = "/opt/steamcmd/steamcmd.sh"
console_ring_bytes = 500
log_file_bytes = 1024
log_files_keep = 2
""")
    assert cfg.host.listen == "0.0.0.0:9000"
    assert cfg.host.database_url == "postgresql://u@db/manman"
    assert cfg.host.worker_timeout == 2.5
    assert cfg.host.worker_expiry == 0  # 0 = never
    assert cfg.host.admin_token == "adm"
    assert cfg.worker.name == "box-1"
    assert cfg.worker.host_url == "https://control.example:8700"
    assert cfg.worker.heartbeat_interval == 0.5
    assert cfg.worker.steamcmd == "/opt/steamcmd/steamcmd.sh"
    assert cfg.worker.console_ring_bytes == 500 and isinstance(cfg.worker.console_ring_bytes,
                                                               int)
    assert cfg.worker.log_file_bytes == 1024
    assert cfg.worker.log_files_keep == 2
    assert cfg.worker.effective_advertise_url() == "http://10.0.0.5:8701"


def test_integer_for_a_float_key(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[host]\nworker_timeout = 30\n")
    assert cfg.host.worker_timeout == 30.0 and isinstance(cfg.host.worker_timeout, float)


def test_empty_host_url_is_standalone(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[worker]\nhost_url = ""\n')
    assert cfg.worker.standalone
    assert not load(tmp_path, "").worker.standalone


def test_worker_helpers() -> None:
    w = WorkerConfig(name="", listen="127.0.0.1:8701")
    assert w.effective_name()  # the hostname
    assert WorkerConfig(name="n").effective_name() == "n"
    assert w.effective_advertise_url() == "http://127.0.0.1:8701"
    assert w.effective_advertise_url("http://127.0.0.1:40123/") == "http://127.0.0.1:40123"


# -- env overrides ------------------------------------------------------------------------


def test_env_overrides_every_kind(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[host]\nworker_timeout = 20\n[worker]\nname = "file"\n', {
        "MANMAN_HOST_WORKER_TIMEOUT": "7.5",
        "MANMAN_HOST_LISTEN": "127.0.0.1:1234",
        "MANMAN_HOST_ADMIN_TOKEN": "secret",
        "MANMAN_WORKER_NAME": "env",
        "MANMAN_WORKER_CONSOLE_RING_BYTES": "123",
        "MANMAN_WORKER_HOST_URL": "",
        "MANMAN_WORKER_JOIN_TOKEN": "jt",
    })
    assert cfg.host.worker_timeout == 7.5
    assert cfg.host.listen == "127.0.0.1:1234"
    assert cfg.host.admin_token == "secret"
    assert cfg.worker.name == "env"
    assert cfg.worker.console_ring_bytes == 123
    assert isinstance(cfg.worker.console_ring_bytes, int)
    assert cfg.worker.standalone
    assert cfg.worker.join_token == "jt"


def test_env_string_to_float_and_int(tmp_path: Path) -> None:
    cfg = load(tmp_path, "", {"MANMAN_HOST_WORKER_EXPIRY": "60",
                              "MANMAN_WORKER_LOG_FILES_KEEP": " 7 "})
    assert cfg.host.worker_expiry == 60.0 and isinstance(cfg.host.worker_expiry, float)
    assert cfg.worker.log_files_keep == 7


def test_an_int_from_text_is_read_as_python_reads_one(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[worker]\nlog_file_bytes = '1_000_000'\n",
               {"MANMAN_WORKER_LOG_FILES_KEEP": "1_000"})
    assert (cfg.worker.log_files_keep, cfg.worker.log_file_bytes) == (1000, 1_000_000)


def test_unrelated_env_is_ignored(tmp_path: Path) -> None:
    cfg = load(tmp_path, "", {"MANMAN_HOST_NOPE": "1", "MANMAN_OTHER": "x", "PATH": "/bin"})
    assert cfg.host == load(tmp_path, "").host


@pytest.mark.parametrize(("key", "value", "words"), [
    ("MANMAN_HOST_WORKER_TIMEOUT", "soon", ["host.worker_timeout", "number"]),
    ("MANMAN_HOST_WORKER_TIMEOUT", "nan", ["host.worker_timeout", "finite"]),
    ("MANMAN_HOST_WORKER_TIMEOUT", "inf", ["host.worker_timeout", "finite"]),
    ("MANMAN_HOST_WORKER_TIMEOUT", "1e999", ["host.worker_timeout", "finite"]),
    ("MANMAN_HOST_WORKER_TIMEOUT", "-1", ["host.worker_timeout", "0 or more"]),
    ("MANMAN_WORKER_LOG_FILES_KEEP", "2.5", ["worker.log_files_keep", "whole number"]),
    ("MANMAN_WORKER_LOG_FILES_KEEP", "2.0", ["worker.log_files_keep", "whole number", "'2.0'"]),
    ("MANMAN_WORKER_LOG_FILE_BYTES", "1e6", ["worker.log_file_bytes", "whole number"]),
    ("MANMAN_WORKER_LOG_FILES_KEEP", "0", ["worker.log_files_keep", "greater than 0"]),
    ("MANMAN_WORKER_HEARTBEAT_INTERVAL", "0", ["worker.heartbeat_interval", "greater than 0"]),
    ("MANMAN_WORKER_LISTEN", "nope", ["worker.listen", "HOST:PORT"]),
    ("MANMAN_WORKER_HOST_URL", "ftp://x", ["worker.host_url", "URL"]),
])
def test_bad_env_value_names_the_key(tmp_path: Path, key: str, value: str,
                                     words: list[str]) -> None:
    msg = error(tmp_path, "", {key: value})
    for w in words:
        assert w in msg


def test_env_override_spares_the_file_value_it_replaces(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[worker]\nlisten = "nowhere"\n', {"MANMAN_WORKER_LISTEN": "127.0.0.1:9"})
    assert cfg.worker.listen == "127.0.0.1:9"


def test_quoted_number_in_the_file_is_read_like_an_env_value(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[worker]\nheartbeat_interval = " 3 "\nlog_files_keep = "4"\n')
    assert cfg.worker.heartbeat_interval == 3.0 and cfg.worker.log_files_keep == 4


def test_env_wins_over_the_file(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[worker]\nheartbeat_interval = 3\n",
               {"MANMAN_WORKER_HEARTBEAT_INTERVAL": "9"})
    assert cfg.worker.heartbeat_interval == 9


# -- paths --------------------------------------------------------------------------------


def test_relative_data_dir_is_relative_to_the_config_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "etc" / "manman"
    sub.mkdir(parents=True)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load(sub, '[host]\ndata_dir = "state/host"\n[worker]\ndata_dir = "../w"\n')
    assert cfg.host.data_dir == sub / "state" / "host"
    assert cfg.worker.data_dir == sub / ".." / "w"
    assert cfg.worker.data_dir.resolve() == (tmp_path / "etc" / "w").resolve()


def test_relative_config_path_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "c.toml").write_text('[worker]\ndata_dir = "wd"\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_config("conf/c.toml", {})
    assert cfg.worker.data_dir == tmp_path / "conf" / "wd"
    assert cfg.worker.data_dir.is_absolute()


def test_env_relative_data_dir_also_relative_to_the_config_file(tmp_path: Path) -> None:
    cfg = load(tmp_path, "", {"MANMAN_WORKER_DATA_DIR": "from-env"})
    assert cfg.worker.data_dir == tmp_path / "from-env"


def test_absolute_and_home_data_dir(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[host]\ndata_dir = "/srv/manman"\n[worker]\ndata_dir = "~/mm"\n')
    assert cfg.host.data_dir == Path("/srv/manman")
    assert cfg.worker.data_dir == Path(os.path.expanduser("~/mm"))


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "words"), [
    ("[host]\nlisen = '1.2.3.4:5'\n", ["unknown key host.lisen"]),
    ("[worker]\nsteamcmdd = 'x'\n", ["unknown key worker.steamcmdd"]),
    ("[hosts]\n", ["unknown key hosts"]),
    ("verbose = true\n", ["unknown key verbose"]),
    ("host = 3\n", ["host must be a table"]),
    ("worker = 'x'\n", ["worker must be a table"]),
    ("[host]\nlisten = 8700\n", ["host.listen", "string", "got 8700"]),
    ("[worker]\nname = 5\n", ["worker.name", "string", "got 5"]),
    ("[worker]\ndata_dir = 5\n", ["worker.data_dir", "string"]),
    ("[host]\nworker_timeout = true\n", ["host.worker_timeout", "number"]),
    ("[host]\nworker_timeout = [1]\n", ["host.worker_timeout"]),
    ("[host]\nworker_timeout = 'soon'\n", ["host.worker_timeout", "number"]),
    ("[host]\nworker_timeout = -1\n", ["host.worker_timeout", "0 or more"]),
    ("[host]\nworker_expiry = -0.5\n", ["host.worker_expiry", "0 or more"]),
    ("[host]\nworker_timeout = inf\n", ["host.worker_timeout", "finite"]),
    ("[host]\nworker_timeout = nan\n", ["host.worker_timeout", "finite"]),
    ("[host]\nworker_expiry = -inf\n", ["host.worker_expiry", "finite"]),
    ("[host]\nconsole_token_ttl = 0\n", ["host.console_token_ttl", "greater than 0"]),
    ("[host]\nflush_interval = -1\n", ["host.flush_interval", "greater than 0"]),
    ("[worker]\nheartbeat_interval = 0\n", ["worker.heartbeat_interval", "greater than 0"]),
    ("[worker]\ninstall_timeout = 0\n", ["worker.install_timeout", "greater than 0"]),
    ("[worker]\nconsole_ring_bytes = 0\n", ["worker.console_ring_bytes", "greater than 0"]),
    ("[worker]\nlog_file_bytes = -5\n", ["worker.log_file_bytes", "greater than 0"]),
    ("[worker]\nlog_files_keep = 0\n", ["worker.log_files_keep", "greater than 0"]),
    ("[worker]\nlog_files_keep = 2.5\n", ["worker.log_files_keep", "int"]),
    ("[worker]\nconsole_ring_bytes = 1.0\n", ["worker.console_ring_bytes", "int"]),
    ("[host]\nlisten = 'localhost'\n", ["host.listen", "HOST:PORT"]),
    ("[host]\nlisten = ':8700'\n", ["host.listen", "HOST:PORT"]),
    ("[host]\nlisten = 'localhost:'\n", ["host.listen", "port"]),
    ("[host]\nlisten = 'localhost:http'\n", ["host.listen", "port"]),
    ("[host]\nlisten = 'localhost:65536'\n", ["host.listen", "0-65535"]),
    ("[worker]\nlisten = 'localhost:-1'\n", ["worker.listen", "port"]),
    ("[worker]\nhost_url = 'ftp://h:1'\n", ["worker.host_url", "http"]),
    ("[worker]\nhost_url = '127.0.0.1:8700'\n", ["worker.host_url", "URL"]),
    ("[worker]\nhost_url = 'http://'\n", ["worker.host_url", "URL"]),
    ("[worker]\nadvertise_url = 'example.com'\n", ["worker.advertise_url", "URL"]),
])
def test_bad_value_names_the_key(tmp_path: Path, text: str, words: list[str]) -> None:
    msg = error(tmp_path, text)
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize(("text", "env", "secret"), [
    ("[host]\nadmin_token = 987654\n", {}, "987654"),
    ("[worker]\napi_token = 987654\n", {}, "987654"),
    ("[worker]\njoin_token = [987654]\n", {}, "987654"),
    ("[host]\ndatabase_url = 'mysql://u:hunter2@db/x'\n", {}, "hunter2"),
    ("", {"MANMAN_HOST_DATABASE_URL": "http://u:hunter2@db/x"}, "hunter2"),
])
def test_a_secret_is_never_in_the_message(tmp_path: Path, text: str, env: dict[str, str],
                                          secret: str) -> None:
    msg = error(tmp_path, text, env)
    assert secret not in msg
    assert msg.split(":")[1].strip() in {"host.admin_token", "worker.api_token",
                                         "worker.join_token", "host.database_url"}, msg


def test_config_error_is_a_startup_error(tmp_path: Path) -> None:
    with pytest.raises(StartupError):
        load(tmp_path, "[host]\nlisten = 1\n")


def test_bad_toml(tmp_path: Path) -> None:
    msg = error(tmp_path, "[host\nlisten = \n")
    assert "not valid TOML" in msg and "config.toml" in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found") as info:
        load_config(tmp_path / "absent.toml", {})
    assert "absent.toml" in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "bad.toml", {})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path, {})  # a directory


def test_huge_integer_for_a_float_key(tmp_path: Path) -> None:
    msg = error(tmp_path, "[host]\nworker_timeout = 1" + "0" * 400 + "\n")
    assert "host.worker_timeout" in msg


def test_integer_with_too_many_digits(tmp_path: Path) -> None:
    error(tmp_path, "[worker]\nlog_files_keep = 1" + "0" * 5000 + "\n")


# -- [[server]] ---------------------------------------------------------------------------


def test_server_tables(tmp_path: Path) -> None:
    cfg = load(tmp_path, """
[[server]]
name = "mc"
game_id = "exec:/usr/bin/java"
args = ["-jar", "server.jar", "nogui"]
desired_state = "running"
[server.restart]
max_restarts = 2

[[server]]
name = "cs2"
game_id = "steamcmd:730"
""")
    assert len(cfg.servers) == 2
    first: dict[str, Any] = cfg.servers[0]
    assert first["name"] == "mc" and first["restart"] == {"max_restarts": 2}
    assert cfg.servers[1]["game_id"] == "steamcmd:730"


@pytest.mark.parametrize(("text", "words"), [
    ('[[server]]\nname = "A"\ngame_id = "exec:x"\n', ["server[0]", "name"]),
    ('[[server]]\nname = "ok"\ngame_id = "exec:x"\n[[server]]\nname = "b"\n',
     ["server[1]", "game_id"]),
    ('[[server]]\nname = "a"\ngame_id = "steamcmd:abc"\n', ["server[0]", "steamcmd"]),
    ('[[server]]\nname = "a"\ngame_id = "exec:x"\nbogus = 1\n', ["server[0]", "bogus"]),
    ('[[server]]\nname = "a"\ngame_id = "exec:x"\n[server.restart]\npolicy = "sometimes"\n',
     ["server[0]", "policy"]),
    ('[[server]]\nname = "a"\ngame_id = "exec:x"\nenv = {MANMAN_X = "1"}\n',
     ["server[0]", "reserved"]),
    ('server = {name = "a", game_id = "exec:x"}\n', ["[[server]]"]),
    ('server = ["a"]\n', ["[[server]]"]),
])
def test_bad_server_table_names_its_index(tmp_path: Path, text: str, words: list[str]) -> None:
    msg = error(tmp_path, text)
    for w in words:
        assert w in msg, msg


# -- parse_listen -------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "parsed"), [
    ("127.0.0.1:8700", ("127.0.0.1", 8700)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("localhost:65535", ("localhost", 65535)),
    ("[::1]:8701", ("::1", 8701)),
    ("[::]:80", ("::", 80)),
])
def test_parse_listen(value: str, parsed: tuple[str, int]) -> None:
    assert parse_listen(value) == parsed


@pytest.mark.parametrize("value", ["", "8700", ":8700", "host:", "host:x", "host:70000",
                                   "host:-1", "[::1]"])
def test_parse_listen_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(value)


def test_parse_listen_rejects_bare_ipv6() -> None:
    with pytest.raises(ValueError):
        parse_listen("::1")
