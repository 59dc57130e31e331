"""The wire types of docs/spec.md: ServerSpec validation, updates, decoding."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from manman import models
from manman.models import (
    MAX_ARGS_BYTES,
    MAX_ENV_BYTES,
    Command,
    HealthSpec,
    Heartbeat,
    Line,
    RestartSpec,
    ServerSpec,
    ServerStatus,
    ServerUpdate,
    apply_update,
    check_console_line,
    server_view,
    split_game_id,
    to_builtins,
    validation_message,
)

BASE: dict[str, Any] = {"name": "srv", "game_id": "exec:/usr/bin/srv"}


def spec(**fields: Any) -> ServerSpec:
    """Decode a spec the way the API does (JSON bytes → ServerSpec)."""
    return msgspec.json.decode(json.dumps({**BASE, **fields}).encode(), type=ServerSpec)


def invalid(**fields: Any) -> str:
    with pytest.raises(msgspec.ValidationError) as info:
        spec(**fields)
    return validation_message(info.value)


# -- defaults -----------------------------------------------------------------------------


def test_defaults_match_spec() -> None:
    s = spec()
    assert s.worker_id is None
    assert s.executable is None
    assert s.args == [] and s.env == {} and s.ports == []
    assert s.stop_command is None
    assert s.stop_timeout == 30
    assert s.ready_pattern is None
    assert s.restart == RestartSpec(policy="on-failure", max_restarts=5, backoff_initial=1,
                                    backoff_max=300, reset_after=600)
    assert s.health == HealthSpec(tcp_port=None, interval=5, timeout=2, failures=3)
    assert s.desired_state == "stopped"


def test_defaults_as_json() -> None:
    out = to_builtins(spec())
    assert out["restart"] == {"policy": "on-failure", "max_restarts": 5, "backoff_initial": 1.0,
                              "backoff_max": 300.0, "reset_after": 600.0}
    assert out["health"] == {"tcp_port": None, "interval": 5.0, "timeout": 2.0, "failures": 3,
                             "query": None}
    assert out["stop_command"] is None and out["desired_state"] == "stopped"


def test_defaults_are_not_shared() -> None:
    a, b = spec(), spec()
    a.args.append("x")
    a.env["K"] = "v"
    assert b.args == [] and b.env == {}


def test_spec_example_from_spec_md() -> None:
    s = spec(**{
        "name": "cs2-main", "worker_id": "w-1", "game_id": "steamcmd:730",
        "executable": "game/bin/linuxsteamrt64/cs2",
        "args": ["-dedicated", "-port", "27015", "+map", "de_dust2"],
        "env": {"LD_LIBRARY_PATH": "./linux64"}, "stop_command": "quit", "stop_timeout": 30,
        "ready_pattern": "GC Connection established",
        "restart": {"policy": "on-failure", "max_restarts": 5, "backoff_initial": 1,
                    "backoff_max": 300, "reset_after": 600},
        "health": {"tcp_port": None, "interval": 5, "timeout": 2, "failures": 3},
        "ports": [{"port": 27015, "protocol": "udp"}], "desired_state": "running"})
    assert s.install_method == "steamcmd" and s.install_identifier == "730"
    assert s.ports[0].port == 27015 and s.ports[0].protocol == "udp"


def test_port_protocol_defaults_to_tcp() -> None:
    assert spec(ports=[{"port": 25565}]).ports[0].protocol == "tcp"


# -- name, game_id ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "0", "cs2-main", "mc.survival_1", "a" * 63])
def test_good_names(name: str) -> None:
    assert spec(name=name).name == name


@pytest.mark.parametrize("name", ["", "A", "Mc", "-a", ".a", "_a", "a b", "a/b", "a" * 64,
                                  "é", "a\x00", "a\nb", "\na"])
def test_bad_names(name: str) -> None:
    assert "name" in invalid(name=name)




def test_name_with_trailing_newline_rejected() -> None:
    invalid(name="srv\n")


def test_update_name_with_trailing_newline_rejected() -> None:
    with pytest.raises(ValueError):  # msgspec.ValidationError is a ValueError
        apply_update(spec(), update(name="srv\n"))


def test_docker_image_with_trailing_newline_rejected() -> None:
    invalid(game_id="docker:nginx\n")


def test_env_name_with_trailing_newline_rejected() -> None:
    invalid(env={"A\n": "1"})


@pytest.mark.parametrize(("game_id", "method", "ident"), [
    ("steamcmd:730", "steamcmd", "730"),
    ("steamcmd:896660", "steamcmd", "896660"),
    ("docker:itzg/minecraft-server:latest", "docker", "itzg/minecraft-server:latest"),
    ("docker:ghcr.io/org/img@sha256:abcdef0123", "docker", "ghcr.io/org/img@sha256:abcdef0123"),
    ("docker:nginx", "docker", "nginx"),
    ("exec:/usr/bin/java", "exec", "/usr/bin/java"),
    ("exec:srcds_run", "exec", "srcds_run"),
])
def test_good_game_ids(game_id: str, method: str, ident: str) -> None:
    s = spec(game_id=game_id)
    assert (s.install_method, s.install_identifier) == (method, ident)
    assert split_game_id(game_id) == (method, ident)


@pytest.mark.parametrize(("game_id", "words"), [
    ("steamcmd:", "digits"),
    ("steamcmd:abc", "digits"),
    ("steamcmd:12a", "digits"),
    ("steamcmd:-1", "digits"),
    ("steamcmd:1234567890123", "digits"),  # more than 12 digits
    ("steamcmd:٣٤", "digits"),  # non-ASCII digits
    ("docker:", "docker"),
    ("docker:-v/:/host", "docker"),
    ("docker:img name", "docker"),
    ("docker:img\x00", "docker"),
    ("exec:", "exec"),
    ("exec:-rf", "exec"),
    ("exec:/bin/x\x00y", "NUL"),
    ("ftp:x", "steamcmd:, docker: or exec:"),
    ("730", "steamcmd:, docker: or exec:"),
    ("Steamcmd:730", "steamcmd:, docker: or exec:"),
    ("ex", "length"),
])
def test_bad_game_ids(game_id: str, words: str) -> None:
    msg = invalid(game_id=game_id)
    assert "game_id" in msg and words in msg


def test_missing_required_fields() -> None:
    with pytest.raises(msgspec.ValidationError, match="name"):
        msgspec.json.decode(b'{"game_id":"exec:x"}', type=ServerSpec)
    with pytest.raises(msgspec.ValidationError, match="game_id"):
        msgspec.json.decode(b'{"name":"a"}', type=ServerSpec)


# -- executable ---------------------------------------------------------------------------


@pytest.mark.parametrize("exe", ["srcds_linux", "game/bin/cs2", "./run.sh", "a/..b/c", "..x"])
def test_steamcmd_executable_inside_install_dir(exe: str) -> None:
    assert spec(game_id="steamcmd:730", executable=exe).executable == exe


@pytest.mark.parametrize("exe", ["/usr/bin/x", "..", "../x", "a/../../x", "a/..", "a//../b"])
def test_steamcmd_executable_escaping(exe: str) -> None:
    assert "inside the install directory" in invalid(game_id="steamcmd:730", executable=exe)


def test_exec_executable() -> None:
    assert spec(executable="/opt/game/run").executable == "/opt/game/run"
    assert spec(executable="../relative/ok").executable == "../relative/ok"  # not steamcmd
    assert "'-'" in invalid(executable="-e")


def test_docker_executable_optional() -> None:
    assert spec(game_id="docker:nginx").executable is None
    assert spec(game_id="docker:nginx", executable="/docker-entrypoint.sh").executable


def test_executable_bounds_and_nul() -> None:
    assert "executable" in invalid(executable="")
    assert "executable" in invalid(executable="x" * 4097)
    assert "NUL" in invalid(executable="/bin/x\x00")
    assert "NUL" in invalid(game_id="steamcmd:730", executable="bin\x00")


# -- args, env ----------------------------------------------------------------------------


def test_args_nul_rejected() -> None:
    assert "NUL" in invalid(args=["ok", "bad\x00"])


def test_args_total_size_limit() -> None:
    half = MAX_ARGS_BYTES // 2
    assert len(spec(args=["a" * half, "b" * half]).args) == 2  # exactly the limit
    assert "args" in invalid(args=["a" * half, "b" * (half + 1)])


def test_args_size_counts_utf8_bytes() -> None:
    # 30000 chars, 60000 bytes each: each is under the per-arg char limit, the sum is not
    assert "bytes" in invalid(args=["é" * 30000, "é" * 30000])
    assert "bytes" in invalid(args=["é" * (MAX_ARGS_BYTES // 2 + 1)])


def test_args_count_limit() -> None:
    assert len(spec(args=["x"] * 1024).args) == 1024
    assert "args" in invalid(args=["x"] * 1025)


def test_args_must_be_strings() -> None:
    assert "args" in invalid(args=[1, 2])


@pytest.mark.parametrize("key", ["A", "_x", "LD_LIBRARY_PATH", "a1", "manman_lower_is_ok",
                                 "X" * 128])
def test_good_env_names(key: str) -> None:
    assert spec(env={key: "v"}).env == {key: "v"}


@pytest.mark.parametrize("key", ["", "1A", "A-B", "A B", "A=B", "É", "A\x00", "X" * 129,
                                 "A\nB"])
def test_bad_env_names(key: str) -> None:
    assert "not a valid variable name" in invalid(env={key: "v"})


@pytest.mark.parametrize("key", ["MANMAN_", "MANMAN_TOKEN", "MANMAN_HOST_ADMIN_TOKEN"])
def test_manman_env_reserved(key: str) -> None:
    assert "reserved" in invalid(env={key: "x"})


def test_env_value_nul_and_size() -> None:
    assert "NUL" in invalid(env={"A": "x\x00y"})
    assert spec(env={"A": "x" * (MAX_ENV_BYTES - 1)})  # name + value == the limit
    assert "env" in invalid(env={"A": "x" * MAX_ENV_BYTES})
    assert "env" in invalid(env={"A": "x" * 40000, "B": "y" * 40000})


def test_env_values_must_be_strings() -> None:
    assert "env" in invalid(env={"A": 1})


# -- stop_command, ready_pattern, numbers ------------------------------------------------


def test_stop_command() -> None:
    assert spec(stop_command="quit").stop_command == "quit"
    assert spec(stop_command="").stop_command == ""
    for bad in ("quit\n", "say a\nquit", "quit\r", "a\r\nb"):
        assert "one line" in invalid(stop_command=bad)
    assert "NUL" in invalid(stop_command="qu\x00it")
    assert "stop_command" in invalid(stop_command="x" * 4097)


def test_ready_pattern() -> None:
    assert spec(ready_pattern=r"Done \(\d+\.\d+s\)!").ready_pattern
    for bad in ("(", "[a-", "*x", "(?P<n>a)(?P<n>b)", "a{4294967295}"):
        assert "regular expression" in invalid(ready_pattern=bad)
    assert "ready_pattern" in invalid(ready_pattern="a" * 1025)


@pytest.mark.parametrize(("fields", "where"), [
    ({"stop_timeout": -1}, "stop_timeout"),
    ({"stop_timeout": 86400 * 7 + 1}, "stop_timeout"),
    ({"stop_timeout": "30"}, "stop_timeout"),
    ({"restart": {"policy": "sometimes"}}, "policy"),
    ({"restart": {"max_restarts": -1}}, "max_restarts"),
    ({"restart": {"max_restarts": 1.5}}, "max_restarts"),
    ({"restart": {"backoff_initial": -0.1}}, "backoff_initial"),
    ({"health": {"interval": 0}}, "interval"),
    ({"health": {"timeout": -1}}, "timeout"),
    ({"health": {"failures": 0}}, "failures"),
    ({"health": {"tcp_port": 0}}, "tcp_port"),
    ({"health": {"tcp_port": 65536}}, "tcp_port"),
    ({"ports": [{"port": 70000}]}, "port"),
    ({"ports": [{"port": 1, "protocol": "sctp"}]}, "protocol"),
    ({"ports": [{"port": 1}] * 65}, "ports"),
    ({"desired_state": "paused"}, "desired_state"),
    ({"worker_id": "w" * 65}, "worker_id"),
])
def test_numbers_and_enums(fields: dict[str, Any], where: str) -> None:
    assert where in invalid(**fields)


def test_fractional_seconds_and_zero_restarts() -> None:
    s = spec(stop_timeout=0.5, restart={"max_restarts": 0, "backoff_initial": 0.25},
             health={"tcp_port": 27015, "interval": 0.5, "timeout": 0.1})
    assert s.stop_timeout == 0.5
    assert s.restart.max_restarts == 0 and s.restart.backoff_initial == 0.25
    assert s.restart.policy == "on-failure"  # partial nested objects keep the other defaults
    assert s.health.tcp_port == 27015 and s.health.failures == 3


# -- unknown fields -----------------------------------------------------------------------


@pytest.mark.parametrize("doc", [
    {**BASE, "bogus": 1},
    {**BASE, "id": "abc"},
    {**BASE, "state": "running"},
    {**BASE, "restart": {"policy": "never", "extra": True}},
    {**BASE, "health": {"port": 1}},
    {**BASE, "ports": [{"port": 1, "host": "0.0.0.0"}]},
])
def test_unknown_fields_rejected(doc: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.json.decode(json.dumps(doc).encode(), type=ServerSpec)


def test_convert_from_builtins_validates_too() -> None:
    assert msgspec.convert(BASE, ServerSpec).name == "srv"
    with pytest.raises(msgspec.ValidationError, match="reserved"):
        msgspec.convert({**BASE, "env": {"MANMAN_X": "1"}}, ServerSpec)


def test_round_trip() -> None:
    s = spec(args=["-x"], env={"A": "b"}, ports=[{"port": 1, "protocol": "udp"}])
    assert msgspec.json.decode(msgspec.json.encode(s), type=ServerSpec) == s


# -- updates ------------------------------------------------------------------------------


def update(**fields: Any) -> ServerUpdate:
    return msgspec.json.decode(json.dumps(fields).encode(), type=ServerUpdate)


def test_apply_update_replaces_only_given_fields() -> None:
    s = spec(args=["a"], stop_command="quit", env={"A": "1"})
    new = apply_update(s, update(args=["b", "c"], desired_state="running"))
    assert new.args == ["b", "c"] and new.desired_state == "running"
    assert new.stop_command == "quit" and new.env == {"A": "1"} and new.name == "srv"
    assert s.args == ["a"] and s.desired_state == "stopped"  # the old spec is untouched


def test_apply_update_null_clears_optional_fields() -> None:
    s = spec(stop_command="quit", ready_pattern="ready", executable="/bin/x")
    new = apply_update(s, update(stop_command=None, ready_pattern=None, executable=None))
    assert new.stop_command is None and new.ready_pattern is None and new.executable is None


def test_apply_update_empty_is_identity() -> None:
    s = spec(args=["a"])
    assert apply_update(s, update()) == s


def test_apply_update_rename() -> None:
    assert apply_update(spec(), update(name="renamed")).name == "renamed"
    with pytest.raises(msgspec.ValidationError):
        update(name="Bad Name")


def test_apply_update_nested_objects_replace_whole() -> None:
    s = spec(restart={"policy": "always", "max_restarts": 9})
    new = apply_update(s, update(restart={"backoff_max": 10}))
    assert new.restart == RestartSpec(backoff_max=10)  # not merged with the old restart


@pytest.mark.parametrize("fields", [
    {"game_id": "exec:/usr/bin/other"},
    {"game_id": "steamcmd:730"},
    {"worker_id": "w-2"},
])
def test_worker_id_and_game_id_cannot_change(fields: dict[str, Any]) -> None:
    s = spec(worker_id="w-1")
    with pytest.raises(ValueError, match="cannot change"):
        apply_update(s, update(**fields))


def test_worker_id_cannot_be_cleared_or_set() -> None:
    with pytest.raises(ValueError, match="worker_id cannot change"):
        apply_update(spec(worker_id="w-1"), update(worker_id=None))
    with pytest.raises(ValueError, match="worker_id cannot change"):
        apply_update(spec(), update(worker_id="w-1"))


def test_worker_id_and_game_id_unchanged_values_are_fine() -> None:
    s = spec(worker_id="w-1")
    new = apply_update(s, update(worker_id="w-1", game_id=BASE["game_id"], stop_timeout=5))
    assert new.stop_timeout == 5 and new.worker_id == "w-1"


def test_apply_update_revalidates_the_result() -> None:
    s = spec(game_id="steamcmd:730", executable="bin/srv")
    with pytest.raises(ValueError, match="install directory"):
        apply_update(s, update(executable="../../etc/passwd"))
    with pytest.raises(ValueError, match="reserved"):
        apply_update(s, update(env={"MANMAN_X": "1"}))
    with pytest.raises(ValueError, match="one line"):
        apply_update(s, update(stop_command="a\nb"))
    with pytest.raises(ValueError, match="regular expression"):
        apply_update(s, update(ready_pattern="("))


def test_update_restart_on_change_is_not_part_of_the_spec() -> None:
    u = update(restart_on_change=True, stop_timeout=1)
    assert u.restart_on_change is True
    new = apply_update(spec(), u)
    assert not hasattr(new, "restart_on_change")


def test_update_unknown_fields_rejected() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        update(bogus=1)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        update(generation=3)


# -- other wire types ---------------------------------------------------------------------


def test_command_and_console_line() -> None:
    assert msgspec.json.decode(b'{"type":"start"}', type=Command).data is None
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"type":"explode"}', type=Command)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"type":"command","data":"x","extra":1}', type=Command)
    check_console_line("say hi")
    for bad in ("a\nb", "a\rb", "a\x00"):
        with pytest.raises(ValueError):
            check_console_line(bad)


def test_line_encodes_in_protocol_order() -> None:
    raw = msgspec.json.encode(Line(41, 1764280000.123, "stdout", "…"))
    assert raw.startswith(b'{"seq":41,')  # LogFiles relies on this prefix
    assert json.loads(raw) == {"seq": 41, "ts": 1764280000.123, "stream": "stdout",
                               "text": "…"}


def test_server_view_has_spec_and_status_fields() -> None:
    s = spec(worker_id="w-1")
    view = to_builtins(server_view("id-1", s, ServerStatus(state="running", ready=True, pid=7),
                                   generation=3, observed_generation=2, worker_status="alive",
                                   log_url="/server/id-1/log"))
    for key in ("id", "name", "worker_id", "game_id", "state", "ready", "pid", "exit_code",
                "restarts", "error", "install_progress", "started_at", "updated_at",
                "generation", "observed_generation", "worker_status", "log_url",
                "desired_state", "restart", "health"):
        assert key in view, key
    assert view["id"] == "id-1" and view["state"] == "running" and view["pid"] == 7
    assert view["generation"] == 3 and view["observed_generation"] == 2


def test_heartbeat_decodes_with_defaults_and_rejects_bad_states() -> None:
    hb = msgspec.json.decode(b'{"servers":[{"id":"a","state":"running"}]}', type=Heartbeat)
    assert hb.status == "alive" and hb.servers[0].restarts == 0
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"servers":[{"id":"a","state":"dancing"}]}', type=Heartbeat)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"servers":[{"id":"a","state":"running","install_progress":101}]}',
                            type=Heartbeat)


@pytest.mark.parametrize("url", ["http://[::1", "http://x\n", "http://xn--", "http://a\x7f",
                                 "http://h:99999", "http://u:p@h:1", "http://h:1/?q=1",
                                 "ftp://h:1", "http://h:1/#f"])
def test_worker_register_refuses_urls_the_host_cannot_call(url: str) -> None:
    body = msgspec.json.encode({"name": "w", "api_url": url})
    with pytest.raises(msgspec.ValidationError, match="api_url"):
        msgspec.json.decode(body, type=models.WorkerRegister)


def test_worker_names_hold_no_control_characters() -> None:
    for model, body in ((models.WorkerJoin, {"name": "a\x1b[2J\nFAKE"}),
                        (models.WorkerRegister, {"name": "a\nb", "api_url": ""}),
                        (models.WorkerRegister, {"name": "a", "api_url": "", "version": "\x07"}),
                        (models.WorkerUpdate, {"name": "a\rb"})):
        with pytest.raises(msgspec.ValidationError, match="control characters"):
            msgspec.json.decode(msgspec.json.encode(body), type=model)
    ok = msgspec.json.decode(b'{"name": "w-1", "api_url": "http://[::1]:8701"}',
                             type=models.WorkerRegister)
    assert ok.api_url == "http://[::1]:8701"


def test_a_report_keeps_every_field_of_a_status() -> None:
    from manman.models import (
        DiskFull,
        ObservedServer,
        QueryStatus,
        ScheduleFailure,
        ServerStats,
        ServerStatus,
    )
    # a value for each field that differs from its default, so a field left out shows
    status = ServerStatus(state="running", ready=True, pid=42, exit_code=3, restarts=2,
                          error="boom", install_progress=50.0, started_at=1.5, updated_at=2.5,
                          query=QueryStatus(ok=True, players=3), allocated_ports={"game": 27000},
                          installed_build="7", latest_build="8", update_available=True,
                          stats=ServerStats(cpu=99.5, memory=1 << 30, disk=5, at=3.0),
                          schedule_failure=ScheduleFailure(schedule_id="s1", run_id=1),
                          disk_full=DiskFull(used=2, limit=1, at=4.0))
    for f in ServerStatus.__struct_fields__:
        assert getattr(status, f) != getattr(ServerStatus(), f), f
    observed = ObservedServer.of("s1", 7, status)
    assert (observed.id, observed.observed_generation) == ("s1", 7)
    assert observed.status() == status


def test_a_report_fits_an_error_to_the_wire() -> None:
    from manman.models import ObservedServer, ServerStatus
    observed = ObservedServer.of("s1", 1, ServerStatus(error="a\x00b" + "x" * 5000))
    assert observed.error is not None
    assert len(observed.error) == 4096 and "\x00" not in observed.error


def test_a_query_reply_brings_no_control_character() -> None:
    """A2S map and version, SLP's version are a game's text: no NUL for PostgreSQL, no
    escape sequence for the terminal of `manman server show`; decoded from a report alike."""
    q = models.QueryStatus(ok=True, map="de\x1b]0;pwned\x07dust", version="1.0\x00\n",
                           error="bad\x9breply")
    assert (q.map, q.version, q.error) == ("de\ufffd]0;pwned\ufffddust", "1.0\ufffd\ufffd",
                                          "bad\ufffdreply")
    raw = b'{"ok": true, "map": "a\\u001b[2Jb"}'
    assert msgspec.json.decode(raw, type=models.QueryStatus).map == "a\ufffd[2Jb"


def test_an_answer_sent_back_keeps_the_secret_it_showed_masked() -> None:
    from manman.models import apply_update, server_view
    s = spec(args=["-password", "hunter22", "-name", "x"], env={"PW": "pw=hunter22"},
             secret_values=["hunter22"])
    shown = server_view("id", s, ServerStatus(), generation=1, observed_generation=1,
                        worker_status="alive", log_url="")
    assert shown.args == ["-password", "********", "-name", "x"]
    # GET → edit one field → PUT with what the answer showed: the secret is still there
    new = apply_update(s, msgspec.convert(
        {"args": [*shown.args[:3], "y"], "env": dict(shown.env)}, ServerUpdate))
    assert new.args == ["-password", "hunter22", "-name", "y"]
    assert new.env == {"PW": "pw=hunter22"}
    # a value the user really changed is taken as given, asterisks or not
    new = apply_update(s, msgspec.convert({"args": ["-password", "********x"]}, ServerUpdate))
    assert new.args == ["-password", "********x"]


def test_overlapping_secrets_are_masked_whole() -> None:
    from manman.models import redact
    assert redact("abcd", ["abc", "bcd"]) == "********"  # no 'd' of the second left in sight
    assert redact("pw=abc, abcX", ["abc", "ab"]) == "pw=********, ********X"
    assert redact({"k": ["a secret here"]}, ["secret"]) == {"k": ["a ******** here"]}
    assert redact("nothing", ["zz", ""]) == "nothing"
