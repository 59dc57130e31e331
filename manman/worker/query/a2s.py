"""Valve's A2S_INFO query over UDP: pure encode/parse, and one trio probe on top.

Format: Valve Developer Community, "Server queries"
(https://developer.valvesoftware.com/wiki/Server_queries). Since December 2020 a server may
answer A2S_INFO with S2C_CHALLENGE (0x41); the client resends the request with those 4 bytes.
"""

from __future__ import annotations

import socket
import struct
import time
from functools import partial

import trio
from msgspec import Struct

from manman.worker.query.result import ParseError, QueryResult, elapsed_ms, guarded

SIMPLE_HEADER = b"\xff\xff\xff\xff"
SPLIT_HEADER = b"\xfe\xff\xff\xff"
INFO_REQUEST = SIMPLE_HEADER + b"TSource Engine Query\x00"
S2C_CHALLENGE = 0x41
S2A_INFO = 0x49
S2A_INFO_GOLDSRC = 0x6D
# Steam's packet size: a single (unsplit) reply carries at most 1400 bytes of UDP payload
MAX_DATAGRAM = 1400
# a server that answers every challenged request with a new challenge is broken, not slow
MAX_CHALLENGES = 3
THE_SHIP_APP_ID = 2400

EDF_PORT = 0x80
EDF_STEAMID = 0x10
EDF_SOURCETV = 0x40
EDF_KEYWORDS = 0x20
EDF_GAMEID = 0x01


class Challenge(Struct, frozen=True, gc=False):
    """S2C_CHALLENGE: the 4 bytes to append to the next request."""

    value: bytes


class A2SInfo(Struct, frozen=True, kw_only=True, gc=False):
    """A decoded S2A_INFO reply (Source format, header 0x49)."""

    protocol: int
    name: str
    map: str
    folder: str
    game: str
    app_id: int
    players: int
    max_players: int
    bots: int
    server_type: str
    environment: str
    visibility: int
    vac: int
    version: str
    port: int | None = None
    steam_id: int | None = None
    sourcetv_port: int | None = None
    sourcetv_name: str | None = None
    keywords: str | None = None
    game_id: int | None = None


def info_request(challenge: bytes | None = None) -> bytes:
    """The A2S_INFO request datagram, with the server's challenge when it asked for one."""
    if challenge is None:
        return INFO_REQUEST
    if len(challenge) != 4:
        raise ValueError("an A2S challenge is 4 bytes")
    return INFO_REQUEST + challenge


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ParseError(f"truncated reply: no room for {what}")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def short(self, what: str) -> int:
        value: int = struct.unpack("<H", self.take(2, what))[0]
        return value

    def longlong(self, what: str) -> int:
        value: int = struct.unpack("<Q", self.take(8, what))[0]
        return value

    def string(self, what: str) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise ParseError(f"truncated reply: {what} has no terminating NUL")
        raw = self.data[self.pos:end]
        self.pos = end + 1
        # servers send whatever bytes their operators typed; never fail on the encoding
        return raw.decode("utf-8", "replace")

    def remaining(self) -> int:
        return len(self.data) - self.pos


def parse_reply(data: bytes) -> Challenge | A2SInfo:
    """Decode one reply datagram to A2S_INFO; raises ParseError for anything else."""
    if len(data) > MAX_DATAGRAM:
        raise ParseError(f"oversized reply: {len(data)} bytes (limit {MAX_DATAGRAM})")
    if data[:4] == SPLIT_HEADER:
        # an A2S_INFO reply fits one packet; split replies are not reassembled here
        raise ParseError("split (multi-packet) reply not supported for A2S_INFO")
    if len(data) < 5:
        raise ParseError(f"truncated reply: {len(data)} bytes")
    if data[:4] != SIMPLE_HEADER:
        raise ParseError(f"wrong header {data[:4].hex()}")
    kind = data[4]
    if kind == S2C_CHALLENGE:
        if len(data) < 9:
            raise ParseError("truncated challenge")
        return Challenge(bytes(data[5:9]))
    if kind == S2A_INFO_GOLDSRC:
        raise ParseError("obsolete GoldSource info reply (0x6d) not supported")
    if kind != S2A_INFO:
        raise ParseError(f"unexpected reply type 0x{kind:02x}")
    return _parse_info(_Reader(bytes(data), 5))


def _parse_info(r: _Reader) -> A2SInfo:
    protocol = r.byte("protocol")
    name = r.string("name")
    map_name = r.string("map")
    folder = r.string("folder")
    game = r.string("game")
    app_id = r.short("app id")
    players = r.byte("players")
    max_players = r.byte("max players")
    bots = r.byte("bots")
    server_type = chr(r.byte("server type"))
    environment = chr(r.byte("environment"))
    visibility = r.byte("visibility")
    vac = r.byte("vac")
    if app_id == THE_SHIP_APP_ID:
        r.take(3, "The Ship mode, witnesses and duration")
    version = r.string("version")
    port: int | None = None
    steam_id: int | None = None
    sourcetv_port: int | None = None
    game_id: int | None = None
    sourcetv_name: str | None = None
    keywords: str | None = None
    # the extra data flag and what it announces are optional: absent means none of them
    if r.remaining() > 0:
        edf = r.byte("extra data flag")
        if edf & EDF_PORT:
            port = r.short("port")
        if edf & EDF_STEAMID:
            steam_id = r.longlong("steam id")
        if edf & EDF_SOURCETV:
            sourcetv_port = r.short("SourceTV port")
            sourcetv_name = r.string("SourceTV name")
        if edf & EDF_KEYWORDS:
            keywords = r.string("keywords")
        if edf & EDF_GAMEID:
            game_id = r.longlong("game id")
    return A2SInfo(protocol=protocol, name=name, map=map_name, folder=folder, game=game,
                   app_id=app_id, players=players, max_players=max_players, bots=bots,
                   server_type=server_type, environment=environment, visibility=visibility,
                   vac=vac, version=version, port=port, steam_id=steam_id,
                   sourcetv_port=sourcetv_port, sourcetv_name=sourcetv_name,
                   keywords=keywords, game_id=game_id)


async def query_a2s(host: str, port: int, timeout: float) -> QueryResult:
    """Ask one server for A2S_INFO; every failure is an `ok=False` result, never a raise."""
    return await guarded(partial(_exchange, host, port), protocol="A2S", reply="A2S",
                         timeout=timeout)


async def _exchange(host: str, port: int) -> QueryResult:
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        # a connected socket: the kernel drops datagrams from anyone but the server
        await sock.connect((host, port))
        challenge: bytes | None = None
        for _ in range(MAX_CHALLENGES + 1):
            sent = time.perf_counter()
            await sock.send(info_request(challenge))
            # one byte over the limit, so an oversized datagram shows instead of being cut
            data = await sock.recv(MAX_DATAGRAM + 1)
            received = time.perf_counter()
            reply = parse_reply(data)
            if isinstance(reply, Challenge):
                challenge = reply.value
                continue
            return QueryResult(ok=True, players=reply.players, max_players=reply.max_players,
                               map=reply.map, version=reply.version, name=reply.name,
                               latency_ms=elapsed_ms(sent, received), checked_at=time.time())
    raise ParseError(f"server answered {MAX_CHALLENGES + 1} requests with a challenge")
