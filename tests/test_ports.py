"""Port allocation, pure (manman.ports), the bind check, and the port_range config key."""

from __future__ import annotations

import socket
from typing import Any

import msgspec
import pytest

from manman import errors, ports
from manman.config import ConfigError, load_config
from manman.models import ServerSpec
from manman.worker.listening import port_free

R = ports.PortRange(30000, 30009)


def spec(*port_list: dict[str, Any], **fields: Any) -> ServerSpec:
    return msgspec.convert({"name": "s", "game_id": "exec:/bin/true", "ports": list(port_list),
                            **fields}, ServerSpec)


def auto(name: str, protocol: str = "udp", **kw: Any) -> dict[str, Any]:
    return {"name": name, "port": "auto", "protocol": protocol, **kw}


def test_parse_range() -> None:
    assert ports.parse_range("27000-27999") == ports.PortRange(27000, 27999)
    assert ports.parse_range(" 5 - 5 ") == ports.PortRange(5, 5)
    for bad in ("27000", "a-b", "0-10", "10-5", "1-70000", "-5", ""):
        with pytest.raises(ValueError):
            ports.parse_range(bad)
    assert ports.range_of({"port_range": "1-2"}) == ports.PortRange(1, 2)
    assert ports.range_of({}) is None and ports.range_of({"port_range": "x"}) is None


def test_auto_ports_take_the_first_free_numbers_per_protocol() -> None:
    s = spec(auto("game"), auto("rcon", "tcp"), {"port": 30001, "protocol": "udp"})
    taken = {(30000, "udp"): "other"}
    # 30000/udp is another's, 30001/udp this spec's own fixed port; tcp is apart
    assert ports.allocate(s, R, taken) == {"game": 30002, "rcon": 30000}


def test_a_leader_and_its_followers_take_a_free_block() -> None:
    s = spec(auto("game"), auto("query", follows="game", offset=1),
             auto("game_tcp", "tcp", follows="game", offset=0))
    got = ports.allocate(s, R, {(30001, "udp"): "x", (30002, "tcp"): "y"})
    # 30000: its query port 30001 is taken; 30002: its tcp twin is taken
    assert got == {"game": 30003, "query": 30004, "game_tcp": 30003}
    placed = dict((p.name, n) for p, n in ports.numbers(s, got))
    assert placed == got
    assert ports.held(s, got) == {(30003, "udp"), (30004, "udp"), (30003, "tcp")}
    # a block never runs past the range
    narrow = ports.PortRange(30000, 30001)
    with pytest.raises(errors.Conflict):
        ports.allocate(s, narrow, {(30000, "udp"): "x"})


def test_a_tcp_and_udp_port_holds_its_number_on_both() -> None:
    s = spec(auto("game", "tcp+udp"))
    assert ports.allocate(s, R, {(30000, "tcp"): "x", (30001, "udp"): "y"}) == {"game": 30002}
    assert ports.held(s, {"game": 30002}) == {(30002, "tcp"), (30002, "udp")}
    fixed = spec({"name": "game", "port": 30005, "protocol": "tcp+udp"})
    with pytest.raises(errors.Conflict, match="30005/udp is used by server y"):
        ports.check_fixed(fixed, {(30005, "udp"): "y"})


def test_followers_of_a_fixed_port_are_shown_as_numbers() -> None:
    s = spec({"name": "game", "port": 2456, "protocol": "udp"},
             auto("query", follows="game", offset=1))
    assert ports.allocate(s, R, {}) == {"query": 2457}
    with pytest.raises(errors.Conflict) as e:
        ports.check_fixed(s, {(2457, "udp"): "vh-2"})
    assert e.value.code == "port_taken" and "vh-2" in e.value.message


def test_an_allocation_is_kept_while_valid() -> None:
    s = spec(auto("game"))
    busy = {30000, 30001}

    def free(port: int, protocol: str) -> bool:
        return port not in busy

    assert ports.allocate(s, R, {}, None, free) == {"game": 30002}
    # kept: not re-checked by binding (the game itself may listen there)
    assert ports.allocate(s, R, {}, {"game": 30000}, free) == {"game": 30000}
    # placed again: another server holds it, or it left the range
    assert ports.allocate(s, R, {(30000, "udp"): "o"}, {"game": 30000}, free) == \
        {"game": 30002}
    assert ports.allocate(s, R, {}, {"game": 29000}, free) == {"game": 30002}


def test_a_full_range_is_a_conflict() -> None:
    s = spec(auto("game"))
    taken = {(p, "udp"): f"s{p}" for p in range(R.lo, R.hi + 1)}
    with pytest.raises(errors.Conflict) as e:
        ports.allocate(s, R, taken)
    assert e.value.code == "no_free_port" and "30000-30009" in e.value.message
    # nothing listens on the last one only: that is where it goes
    assert ports.allocate(s, R, {}, None, lambda p, proto: p == R.hi) == {"game": R.hi}


def test_place_checks_fixed_ports_then_allocates() -> None:
    s = spec({"port": 27015, "protocol": "udp"}, auto("rcon", "tcp"))
    with pytest.raises(errors.Conflict) as e:
        ports.place(s, R, {(27015, "udp"): "cs-1"})
    assert e.value.message == "port 27015/udp is used by server cs-1"
    assert ports.place(s, R, {(27015, "tcp"): "cs-1"}) == {"rcon": 30000}
    assert ports.place(s, None, {}) == {}  # a range not known: nothing placed


def test_taken_by_names_the_first_holder() -> None:
    a = spec({"port": 27015, "protocol": "udp"})
    b = spec(auto("game"))
    taken = ports.taken_by([("a", a, {}), ("b", b, {"game": 30000}), ("c", b, {})])
    assert taken == {(27015, "udp"): "a", (30000, "udp"): "b"}
    assert ports.unplaced(b, {}) and not ports.unplaced(b, {"game": 1})


def test_resolve_fills_every_placeholder() -> None:
    s = spec(auto("game"), auto("query", follows="game", offset=1),
             executable="srv-{{port.game}}",
             args=["-port", "{{port.game}}", "-q={{port.query}}", "{{port.other}}"],
             env={"PORT": "{{port.game}}", "X": "x"},
             health={"query": {"type": "a2s", "port": "{{port.query}}"}})
    r = ports.resolve(s, {"game": 30004})
    assert [(p.name, p.port) for p in r.ports] == [("game", 30004), ("query", 30005)]
    assert r.executable == "srv-30004"
    assert r.args == ["-port", "30004", "-q=30005", "{{port.other}}"]
    assert r.env == {"PORT": "30004", "X": "x"}
    assert r.health.query is not None and r.health.query.port == 30005
    assert ports.query_port(s, {"game": 30004}) == 30005
    assert ports.query_port(s, {}) is None
    with pytest.raises(ValueError, match="game"):
        ports.resolve(s, {})
    plain = spec()
    assert ports.resolve(plain, {}) is plain


def test_spec_rules_for_followers() -> None:
    with pytest.raises(msgspec.ValidationError, match="other protocol"):
        spec(auto("game"), auto("twin", follows="game", offset=0))
    with pytest.raises(msgspec.ValidationError, match="auto too"):
        spec(auto("game"), {"name": "q", "port": 5, "follows": "game"})

    # a follower of a fixed port past 65535 was placed on 65536: a number the host's report
    # refuses (the worker's whole heartbeat with it) and no socket can take
    with pytest.raises(msgspec.ValidationError, match="past 65535"):
        spec({"name": "game", "port": 65535}, auto("query", follows="game"))
    spec({"name": "game", "port": 65435}, auto("query", follows="game", offset=100))


def test_port_free_sees_tcp_and_udp_listeners() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        t.bind(("127.0.0.1", 0))
        t.listen(1)
        u.bind(("127.0.0.1", 0))
        tcp, udp = t.getsockname()[1], u.getsockname()[1]
        assert not port_free(tcp, "tcp")
        assert not port_free(udp, "udp")
    assert port_free(tcp, "tcp")
    assert port_free(udp, "udp")


def test_port_range_config(tmp_path: Any) -> None:
    cfg = load_config(None, env={})
    assert cfg.worker.port_range == "27000-27999"
    assert load_config(None, env={"MANMAN_WORKER_PORT_RANGE": "30000-30100"}
                       ).worker.port_range == "30000-30100"
    f = tmp_path / "c.toml"
    f.write_text('[worker]\nport_range = "30000-200"\n')
    with pytest.raises(ConfigError) as e:
        load_config(f, env={})
    assert str(e.value).startswith("config: worker.port_range: expected 1 <= FIRST <= LAST")
    f.write_text("[worker]\nport_range = 30000\n")
    with pytest.raises(ConfigError, match=r"worker\.port_range"):
        load_config(f, env={})
