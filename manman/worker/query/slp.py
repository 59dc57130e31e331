"""Minecraft Java Edition Server List Ping (1.7+): pure encode/parse, and one trio probe on top.

Format: wiki.vg, "Server List Ping" (https://wiki.vg/Server_List_Ping) and "Protocol"
(https://wiki.vg/Protocol, data types and packet format); the wiki now lives on at
https://minecraft.wiki/w/Java_Edition_protocol/Server_List_Ping.
"""

from __future__ import annotations

import re
import struct
import time
from functools import partial
from typing import Annotated, Any

import msgspec
import trio
from msgspec import Meta, Struct

from manman.worker.query.result import ParseError, QueryResult, elapsed_ms, guarded

# a status reply is JSON of a few KiB (more with a favicon); anything past this is hostile
MAX_REPLY = 64 * 1024
# by convention a client pinging to learn the server's version sends protocol -1
PING_PROTOCOL = -1
MAX_VARINT_BYTES = 5
MAX_MOTD = 256
_FORMAT_CODE = re.compile("§.?")

Count = Annotated[int, Meta(ge=0, le=2**31 - 1)]


class SlpStatus(Struct, frozen=True, kw_only=True, gc=False):
    """What a status response says, reduced to what manman shows."""

    version: str | None
    protocol: int | None
    players: int | None
    max_players: int | None
    motd: str


class _Version(Struct, gc=False):
    name: str = ""
    protocol: int = -1


class _Players(Struct, gc=False):
    online: Count = 0
    max: Count = 0


class _StatusJson(Struct, gc=False):
    version: _Version | None = None
    players: _Players | None = None
    description: Any = None


_decoder = msgspec.json.Decoder(_StatusJson)


def encode_varint(value: int) -> bytes:
    """A VarInt: 32-bit two's complement, 7 bits a byte, low groups first."""
    if not -(2**31) <= value < 2**31:
        raise ValueError("VarInt out of range")
    value &= 0xFFFFFFFF
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def decode_varint(data: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(value, position after it), or None while more bytes are needed."""
    result = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= len(data):
            return None
        byte = data[pos + i]
        result |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if result >= 2**31:
                result -= 2**32
            return result, pos + i + 1
    raise ParseError("VarInt longer than 5 bytes")


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return encode_varint(len(raw)) + raw


def _packet(packet_id: int, payload: bytes) -> bytes:
    body = encode_varint(packet_id) + payload
    return encode_varint(len(body)) + body


def handshake(host: str, port: int, protocol: int = PING_PROTOCOL) -> bytes:
    """Handshake (packet 0x00) asking for the status state (next state 1)."""
    return _packet(0x00, encode_varint(protocol) + _string(host[:255])
                   + struct.pack(">H", port) + encode_varint(1))


def status_request() -> bytes:
    """Status Request (packet 0x00, no fields)."""
    return _packet(0x00, b"")


class StatusReader:
    """Collects the bytes of one Status Response; `feed` returns it once complete."""

    def __init__(self, limit: int = MAX_REPLY) -> None:
        self._buf = bytearray()
        self._limit = limit
        self._length: int | None = None
        self._start = 0

    @property
    def received(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> SlpStatus | None:
        self._buf += data
        if self._length is None:
            header = decode_varint(self._buf, 0)
            if header is None:
                return None
            length, self._start = header
            if length <= 0:
                raise ParseError(f"bad packet length {length}")
            if length > self._limit:
                raise ParseError(f"oversized reply: {length} bytes (limit {self._limit})")
            self._length = length
        end = self._start + self._length
        if len(self._buf) < end:
            return None
        return parse_status_packet(bytes(self._buf[self._start:end]))


def parse_status_packet(packet: bytes) -> SlpStatus:
    """Decode a Status Response packet (id and JSON string, without the length prefix)."""
    header = decode_varint(packet, 0)
    if header is None:
        raise ParseError("truncated packet id")
    packet_id, pos = header
    if packet_id != 0x00:
        raise ParseError(f"unexpected packet id 0x{packet_id & 0xFFFFFFFF:02x}")
    prefix = decode_varint(packet, pos)
    if prefix is None:
        raise ParseError("truncated JSON length")
    size, pos = prefix
    if size < 0 or pos + size > len(packet):
        raise ParseError(f"JSON length {size} does not fit the packet")
    return parse_status_json(packet[pos:pos + size])


def parse_status_json(raw: bytes) -> SlpStatus:
    try:
        doc = _decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError) as e:
        raise ParseError(f"bad status JSON: {str(e)[:120]}") from None
    return SlpStatus(
        version=doc.version.name if doc.version is not None else None,
        protocol=doc.version.protocol if doc.version is not None else None,
        players=doc.players.online if doc.players is not None else None,
        max_players=doc.players.max if doc.players is not None else None,
        motd=motd_text(doc.description),
    )


def motd_text(description: Any) -> str:
    """Plain text of a description: a string, or a chat component with `text` and `extra`."""
    parts: list[str] = []
    _collect(description, parts, 0, [MAX_MOTD * 2])
    return _FORMAT_CODE.sub("", "".join(parts))[:MAX_MOTD]


def _collect(node: Any, parts: list[str], depth: int, budget: list[int]) -> None:
    # bounds on depth and on collected text: a hostile component tree stays cheap
    if depth > 16 or budget[0] <= 0:
        return
    if isinstance(node, dict):
        text = node.get("text")
        node = [text, node.get("extra")]
    if isinstance(node, str):
        parts.append(node)
        budget[0] -= len(node)
    elif isinstance(node, list):
        for item in node:
            _collect(item, parts, depth + 1, budget)
            if budget[0] <= 0:
                return


async def query_minecraft(host: str, port: int, timeout: float) -> QueryResult:
    """Server List Ping one server; every failure is an `ok=False` result, never a raise."""
    return await guarded(partial(_exchange, host, port), protocol="SLP", reply="status",
                         timeout=timeout)


async def _exchange(host: str, port: int) -> QueryResult:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        sent = time.perf_counter()
        await stream.send_all(handshake(host, port) + status_request())
        reader = StatusReader()
        while True:
            chunk = await stream.receive_some(16384)
            if not chunk:
                raise ParseError(f"connection closed after {reader.received} bytes")
            status = reader.feed(chunk)
            if status is not None:
                break
        received = time.perf_counter()
    return QueryResult(ok=True, players=status.players, max_players=status.max_players,
                       version=status.version, name=status.motd or None,
                       latency_ms=elapsed_ms(sent, received), checked_at=time.time())
