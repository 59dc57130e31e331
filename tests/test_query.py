"""Game queries against real UDP and TCP responders: A2S (with and without the challenge),
Minecraft Server List Ping, TCP connect, console player counting, and hostile replies."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from manman.worker.query import (
    ParseError,
    PlayerCounter,
    a2s,
    query,
    query_a2s,
    query_minecraft,
    query_tcp,
    slp,
)
from tests.responders import (
    A2S_REQUEST,
    CHALLENGE,
    A2SResponder,
    SlpResponder,
    a2s_info_reply,
    accept_and_close,
    closed_port,
    slp_status,
    varint,
)

HOST = "127.0.0.1"
TIMEOUT = 2.0
# what a silent server costs a test: the probe's whole timeout
SHORT = 0.3


async def start_a2s(nursery: trio.Nursery, mode: str, **info: object) -> A2SResponder:
    responder = A2SResponder(mode, **info)
    await nursery.start(responder.run)
    return responder


# -- A2S over real UDP ---------------------------------------------------------------------


async def test_a2s_answers_the_challenge(nursery: trio.Nursery) -> None:
    server = await start_a2s(nursery, "challenge", players=7, max_players=32, map_name="cp_x")
    before = time.time()
    result = await query_a2s(HOST, server.port, TIMEOUT)
    assert result.ok, result.error
    assert (result.players, result.max_players, result.map) == (7, 32, "cp_x")
    assert result.version == "1.38.7.9" and result.name == "manman test"
    assert result.error is None
    assert result.latency_ms is not None and 0 <= result.latency_ms < TIMEOUT * 1000
    assert before <= result.checked_at <= time.time()
    # first the bare request, then the same request carrying the server's 4 challenge bytes
    assert server.requests == [A2S_REQUEST, A2S_REQUEST + CHALLENGE]


async def test_a2s_without_challenge(nursery: trio.Nursery) -> None:
    server = await start_a2s(nursery, "plain", players=0, max_players=10)
    result = await query_a2s(HOST, server.port, TIMEOUT)
    assert result.ok and result.players == 0 and result.max_players == 10
    assert server.requests == [A2S_REQUEST]


async def test_a2s_server_that_stops_answering(nursery: trio.Nursery) -> None:
    server = await start_a2s(nursery, "challenge")
    assert (await query_a2s(HOST, server.port, TIMEOUT)).ok
    server.answering = False
    started = trio.current_time()
    result = await query_a2s(HOST, server.port, SHORT)
    assert not result.ok and result.error == f"no A2S reply within {SHORT:g}s"
    assert result.players is None
    assert trio.current_time() - started < SHORT + 1.0
    server.answering = True
    assert (await query_a2s(HOST, server.port, TIMEOUT)).ok


async def test_a2s_silent_server(nursery: trio.Nursery) -> None:
    server = await start_a2s(nursery, "silent")
    result = await query_a2s(HOST, server.port, SHORT)
    assert not result.ok and "no A2S reply" in (result.error or "")
    assert server.requests == [A2S_REQUEST]


async def test_a2s_nobody_listening() -> None:
    # loopback answers a closed UDP port with ICMP unreachable: a quick failure, not a hang
    result = await query_a2s(HOST, closed_port(trio.socket.SOCK_DGRAM), TIMEOUT)
    assert not result.ok and result.error


@pytest.mark.parametrize(("mode", "reason"), [
    ("truncated", "truncated reply"),
    ("wrong-header", "wrong header ffffff00"),
    ("oversized", "oversized reply"),
    ("split", "split (multi-packet) reply not supported"),
    ("goldsrc", "obsolete GoldSource"),
    ("always-challenge", "answered 4 requests with a challenge"),
])
async def test_a2s_bad_answers_fail_the_probe(nursery: trio.Nursery, mode: str,
                                              reason: str) -> None:
    server = await start_a2s(nursery, mode)
    result = await query_a2s(HOST, server.port, TIMEOUT)
    assert not result.ok
    assert reason in (result.error or ""), result.error
    assert result.players is None and result.checked_at > 0


# -- A2S parsing -----------------------------------------------------------------------------


def test_a2s_request_bytes() -> None:
    assert a2s.info_request() == bytes.fromhex(
        "ffffffff54536f7572636520456e67696e6520517565727900")
    assert a2s.info_request(b"\x01\x02\x03\x04") == a2s.info_request() + b"\x01\x02\x03\x04"
    with pytest.raises(ValueError):
        a2s.info_request(b"\x01")


def test_a2s_parses_every_extra_data_field() -> None:
    reply = a2s.parse_reply(a2s_info_reply(sourcetv=(27020, "tv"), keywords="a,b"))
    assert isinstance(reply, a2s.A2SInfo)
    assert (reply.protocol, reply.folder, reply.game, reply.app_id) == (17, "csgo",
                                                                       "Counter-Strike", 730)
    assert (reply.bots, reply.server_type, reply.environment, reply.visibility,
            reply.vac) == (1, "d", "l", 0, 1)
    assert (reply.port, reply.steam_id, reply.sourcetv_port, reply.sourcetv_name,
            reply.keywords, reply.game_id) == (27015, 90071996842377216, 27020, "tv", "a,b",
                                               730)


def test_a2s_without_extra_data_and_the_ship() -> None:
    bare = a2s.parse_reply(a2s_info_reply(port=None, steam_id=None, keywords=None,
                                          game_id=None))
    assert isinstance(bare, a2s.A2SInfo) and bare.port is None and bare.version == "1.38.7.9"
    ship = a2s.parse_reply(a2s_info_reply(app_id=2400, version="1.0.0.4"))
    assert isinstance(ship, a2s.A2SInfo) and ship.version == "1.0.0.4" and ship.port == 27015


def test_a2s_challenge_and_bad_bytes() -> None:
    assert a2s.parse_reply(b"\xff\xff\xff\xff\x41abcd") == a2s.Challenge(b"abcd")
    with pytest.raises(ParseError, match="truncated challenge"):
        a2s.parse_reply(b"\xff\xff\xff\xff\x41ab")
    with pytest.raises(ParseError, match="unexpected reply type 0x44"):
        a2s.parse_reply(b"\xff\xff\xff\xff\x44\x00")
    # names in any bytes at all still parse
    odd = a2s.parse_reply(a2s_info_reply().replace(b"manman test", b"\xff\xfe bad"))
    assert isinstance(odd, a2s.A2SInfo) and odd.name == "\ufffd\ufffd bad"


def test_a2s_every_truncation_is_a_parse_error() -> None:
    full = a2s_info_reply(port=None, steam_id=None, keywords=None, game_id=None)
    for cut in range(len(full)):
        with pytest.raises(ParseError):
            a2s.parse_reply(full[:cut])
    with_edf = a2s_info_reply()
    # past the version string the extra data is optional, but a half field is not
    for cut in range(len(full) + 1, len(with_edf)):
        with pytest.raises(ParseError):
            a2s.parse_reply(with_edf[:cut])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=1600))
def test_a2s_parser_on_random_bytes(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        a2s.parse_reply(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=200))
def test_a2s_parser_on_mangled_replies(noise: bytes, cut: int) -> None:
    full = a2s_info_reply()
    with contextlib.suppress(ParseError):
        a2s.parse_reply(full[:cut] + noise)


# -- Minecraft Server List Ping over real TCP ------------------------------------------------


async def test_minecraft_status(nursery: trio.Nursery) -> None:
    server = SlpResponder(status=slp_status(players=4, max_players=50, version="1.21.4"))
    port = await nursery.start(server.run)
    result = await query_minecraft(HOST, port, TIMEOUT)
    assert result.ok, result.error
    assert (result.players, result.max_players, result.version) == (4, 50, "1.21.4")
    assert result.map is None and result.name == "A manman server for tests"
    assert result.latency_ms is not None and result.latency_ms >= 0
    # handshake as wiki.vg says: protocol -1 for a ping, the address used, next state 1
    assert server.handshakes == [(-1, HOST, port, 1)]


async def test_minecraft_status_without_players(nursery: trio.Nursery) -> None:
    server = SlpResponder(status={"version": {"name": "Paper 1.20", "protocol": 763},
                                  "description": "plain §lMOTD"})
    port = await nursery.start(server.run)
    result = await query_minecraft(HOST, port, TIMEOUT)
    assert result.ok and result.players is None and result.max_players is None
    assert result.version == "Paper 1.20" and result.name == "plain MOTD"


@pytest.mark.parametrize(("mode", "reason"), [
    ("oversized", "oversized reply: 10485760 bytes"),
    ("garbage", "bad status JSON"),
    ("truncated", "connection closed after"),
    ("close", "connection closed after 0 bytes"),
    ("wrong-id", "unexpected packet id 0x01"),
])
async def test_minecraft_bad_answers_fail_the_probe(nursery: trio.Nursery, mode: str,
                                                    reason: str) -> None:
    port = await nursery.start(SlpResponder(mode).run)
    result = await query_minecraft(HOST, port, TIMEOUT)
    assert not result.ok and reason in (result.error or ""), result.error


async def test_minecraft_negative_player_count_is_rejected(nursery: trio.Nursery) -> None:
    status = slp_status()
    status["players"]["online"] = -3
    port = await nursery.start(SlpResponder(status=status).run)
    result = await query_minecraft(HOST, port, TIMEOUT)
    assert not result.ok and "bad status JSON" in (result.error or "")


async def test_minecraft_refused_and_silent(nursery: trio.Nursery) -> None:
    refused = await query_minecraft(HOST, closed_port(), TIMEOUT)
    assert not refused.ok and refused.error and refused.error.startswith("SLP:")
    # a TCP listener that never answers: the probe ends at its timeout
    listener = trio.socket.socket()
    await listener.bind((HOST, 0))
    listener.listen()
    with listener:
        silent = await query_minecraft(HOST, listener.getsockname()[1], SHORT)
    assert not silent.ok and silent.error == f"no status reply within {SHORT:g}s"


def test_slp_varints() -> None:
    # the examples table of wiki.vg's Protocol page
    for value, encoded in [(0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (255, "ff01"),
                           (25565, "ddc701"), (2097151, "ffff7f"),
                           (2147483647, "ffffffff07"), (-1, "ffffffff0f"),
                           (-2147483648, "8080808008")]:
        assert slp.encode_varint(value).hex() == encoded
        assert slp.decode_varint(bytes.fromhex(encoded), 0) == (value, len(encoded) // 2)
    assert slp.decode_varint(b"\x80\x80", 0) is None
    with pytest.raises(ParseError):
        slp.decode_varint(b"\xff\xff\xff\xff\xff\x01", 0)


def test_slp_request_bytes() -> None:
    assert slp.handshake("localhost", 25565).hex() == (
        "1300ffffffff0f096c6f63616c686f737463dd01")
    assert slp.status_request() == b"\x01\x00"


def test_slp_reader_in_pieces() -> None:
    body = b'{"players":{"online":2,"max":8},"version":{"name":"1.8"},"description":"x"}'
    packet = varint(0) + varint(len(body)) + body
    framed = varint(len(packet)) + packet
    reader = slp.StatusReader()
    for i in range(len(framed) - 1):
        assert reader.feed(framed[i:i + 1]) is None
    status = reader.feed(framed[-1:])
    assert status == slp.SlpStatus(version="1.8", protocol=-1, players=2, max_players=8,
                                   motd="x")


def test_slp_motd_is_bounded() -> None:
    deep: object = "end"
    for _ in range(100):
        deep = {"text": "a", "extra": [deep]}
    # the walk stops at a fixed depth: the leaf 100 levels down is never reached
    text = slp.motd_text(deep)
    assert 0 < len(text) < 100 and set(text) == {"a"}
    assert len(slp.motd_text("y" * 10000)) == slp.MAX_MOTD


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000))
def test_slp_parsers_on_random_bytes(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        slp.parse_status_packet(data)
    try:
        reader = slp.StatusReader()
        reader.feed(data[:7])
        reader.feed(data[7:])
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["text", "extra", "players", "version",
                                                       "online", "max", "name",
                                                       "description"]), inner, max_size=4),
                    max_leaves=30))
def test_slp_json_of_any_shape(doc: object) -> None:
    with contextlib.suppress(ParseError):
        slp.parse_status_json(json.dumps({"description": doc, "players": doc,
                                          "version": doc}).encode())
    slp.motd_text(doc)


# -- TCP connect and the dispatcher ---------------------------------------------------------


async def test_tcp_probe(nursery: trio.Nursery) -> None:
    port = await nursery.start(accept_and_close)
    up = await query_tcp(HOST, port, TIMEOUT)
    assert up.ok and up.players is None and up.latency_ms is not None
    down = await query_tcp(HOST, closed_port(), TIMEOUT)
    assert not down.ok and down.error and down.error.startswith("tcp port ")
    # a port that accepts but speaks no Minecraft is up for `tcp` and down for `minecraft`
    mc = await query_minecraft(HOST, port, TIMEOUT)
    assert not mc.ok and "closed" in (mc.error or "")


async def test_query_dispatch(nursery: trio.Nursery) -> None:
    server = await start_a2s(nursery, "challenge", players=2)
    assert (await query("a2s", HOST, server.port, TIMEOUT)).players == 2
    mc_port = await nursery.start(SlpResponder().run)
    assert (await query("minecraft", HOST, mc_port, TIMEOUT)).players == 5
    assert (await query("tcp", HOST, mc_port, TIMEOUT)).ok
    with pytest.raises(ValueError):
        await query("console", HOST, 1, TIMEOUT)


# -- console player counting ----------------------------------------------------------------


def test_player_counter_tracks_players_by_name() -> None:
    counter = PlayerCounter(join=[r"(?P<player>\w+) joined the game"],
                            leave=[r"(?P<player>\w+) left the game", r"Kicked (?P<player>\w+)"])
    assert counter.feed("[12:00] Alex left the game") is False  # never seen: nothing
    assert counter.count == 0
    assert counter.feed("[12:00] Alex joined the game") is True
    assert counter.feed("[12:00] Alex joined the game") is False  # a repeated join is one
    assert counter.feed("[12:01] Steve joined the game") is True
    assert counter.feed("[12:01] <Steve> hello") is False
    assert counter.count == 2
    assert counter.feed("[12:02] Kicked Steve") is True  # any leave pattern
    assert counter.count == 1
    counter.reset()
    assert counter.count == 0
    result = counter.result()
    assert result.ok and result.players == 0 and result.checked_at > 0


def test_player_counter_is_bounded() -> None:
    counter = PlayerCounter(join=[r"(?P<player>\d+) in"], leave=[])
    for i in range(5000):
        counter.feed(f"{i} in")
    assert counter.count == 4096



def test_player_counter_memory_is_bounded_by_name_length_too() -> None:
    """A loose pattern matches chat: 4,096 names of a 64 KiB console line each would be
    256 MiB. A name longer than any game's is not a player's: not tracked."""
    from manman.worker.query.console import MAX_NAME

    counter = PlayerCounter(join=[r"(?P<player>.+) joined"], leave=[r"(?P<player>.+) left"])
    assert counter.feed("x" * 60_000 + " joined") is False
    assert counter.feed("y" * MAX_NAME + " joined") is True
    assert counter.feed("y" * MAX_NAME + " left") is True
    assert counter.count == 0


def test_player_counter_rejects_bad_patterns() -> None:
    with pytest.raises(ValueError, match=r"player_patterns\.join"):
        PlayerCounter(join=["("], leave=[])
    with pytest.raises(ValueError, match="player"):
        PlayerCounter(join=[], leave=[r"(?P<name>\w+) left"])
