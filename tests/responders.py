"""Real UDP and TCP game-query responders on 127.0.0.1, started as trio tasks by the tests.

They build their replies byte by byte from the published formats (Valve's "Server queries",
wiki.vg's "Server List Ping"), independently of manman's encoders, so a shared misreading of a
format cannot make the tests pass.
"""

from __future__ import annotations

import json
import socket
import struct
from functools import partial
from typing import Any

import trio

A2S_REQUEST = b"\xff\xff\xff\xffTSource Engine Query\x00"
CHALLENGE = b"\x11\x22\x33\x44"


def cstr(text: str) -> bytes:
    return text.encode("utf-8") + b"\x00"


def a2s_info_reply(*, name: str = "manman test", map_name: str = "de_dust2",
                   folder: str = "csgo", game: str = "Counter-Strike", app_id: int = 730,
                   players: int = 3, max_players: int = 24, bots: int = 1,
                   version: str = "1.38.7.9", port: int | None = 27015,
                   steam_id: int | None = 90071996842377216, keywords: str | None = "empty",
                   game_id: int | None = 730, sourcetv: tuple[int, str] | None = None) -> bytes:
    """S2A_INFO (0x49) as the Valve wiki lays it out, with the extra data flag's fields."""
    body = bytearray(b"\xff\xff\xff\xff\x49")
    body += bytes([17]) + cstr(name) + cstr(map_name) + cstr(folder) + cstr(game)
    body += struct.pack("<H", app_id)
    body += bytes([players, max_players, bots, ord("d"), ord("l"), 0, 1])
    if app_id == 2400:
        body += bytes([0, 2, 3])  # The Ship: mode, witnesses, duration
    body += cstr(version)
    edf = 0
    tail = bytearray()
    if port is not None:
        edf |= 0x80
        tail += struct.pack("<H", port)
    if steam_id is not None:
        edf |= 0x10
        tail += struct.pack("<Q", steam_id)
    if sourcetv is not None:
        edf |= 0x40
        tail += struct.pack("<H", sourcetv[0]) + cstr(sourcetv[1])
    if keywords is not None:
        edf |= 0x20
        tail += cstr(keywords)
    if game_id is not None:
        edf |= 0x01
        tail += struct.pack("<Q", game_id)
    if edf:
        body += bytes([edf]) + tail
    return bytes(body)


class A2SResponder:
    """A UDP game server answering A2S_INFO in one of several ways.

    modes: `challenge` (demands S2C_CHALLENGE first, as servers do since Dec 2020), `plain`
    (answers at once), `always-challenge`, `silent`, `truncated`, `wrong-header`, `oversized`,
    `split`, `goldsrc`.
    """

    def __init__(self, mode: str, **info: Any) -> None:
        self.mode = mode
        self.info = info
        self.answering = True
        self.requests: list[bytes] = []
        self.port = 0

    def reply_to(self, request: bytes) -> bytes | None:
        if not request.startswith(A2S_REQUEST) or not self.answering:
            return None
        challenge = request[len(A2S_REQUEST):]
        full = a2s_info_reply(**self.info)
        mode = self.mode
        if mode == "silent":
            return None
        if mode == "always-challenge":
            return b"\xff\xff\xff\xff\x41" + bytes([len(self.requests) % 256]) * 4
        if mode == "challenge" and challenge != CHALLENGE:
            return b"\xff\xff\xff\xff\x41" + CHALLENGE
        if mode == "truncated":
            return full[:12]
        if mode == "wrong-header":
            return b"\xff\xff\xff\x00" + full[4:]
        if mode == "oversized":
            return full + b"x" * 2000
        if mode == "split":
            return b"\xfe\xff\xff\xff" + struct.pack("<i", 7) + bytes([2, 0]) + full[:40]
        if mode == "goldsrc":
            return b"\xff\xff\xff\xff\x6d" + cstr("127.0.0.1:27015") + full[6:]
        return full

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            await sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
            task_status.started(self.port)
            while True:
                data, addr = await sock.recvfrom(4096)
                self.requests.append(data)
                reply = self.reply_to(data)
                if reply is not None:
                    await sock.sendto(reply, addr)


def varint(value: int) -> bytes:
    value &= 0xFFFFFFFF
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


async def read_varint(stream: trio.SocketStream, buf: bytearray) -> int:
    """A VarInt from the stream, pulling bytes into `buf` as needed (consumes them)."""
    shift = result = 0
    while True:
        while not buf:
            chunk = await stream.receive_some(4096)
            if not chunk:
                raise EOFError
            buf += chunk
        byte = buf.pop(0)
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result - (1 << 32) if result >= 1 << 31 else result


async def read_packet(stream: trio.SocketStream, buf: bytearray) -> bytes:
    length = await read_varint(stream, buf)
    while len(buf) < length:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise EOFError
        buf += chunk
    packet = bytes(buf[:length])
    del buf[:length]
    return packet


def slp_status(players: int = 5, max_players: int = 20, version: str = "1.21.4",
               description: Any = None) -> dict[str, Any]:
    if description is None:
        description = {"text": "A §6manman§r server", "extra": [{"text": " for tests"}]}
    return {"version": {"name": version, "protocol": 769},
            "players": {"max": max_players, "online": players, "sample": []},
            "description": description}


class SlpResponder:
    """A Minecraft Java server's status side over TCP.

    modes: `ok`, `oversized` (announces a 10 MiB packet), `garbage` (not JSON), `truncated`
    (closes mid-packet), `close` (reads the handshake, says nothing), `wrong-id`.
    """

    def __init__(self, mode: str = "ok", status: dict[str, Any] | None = None) -> None:
        self.mode = mode
        self.status = status if status is not None else slp_status()
        self.handshakes: list[tuple[int, str, int, int]] = []
        self.port = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            buf = bytearray()
            try:
                handshake = await read_packet(stream, buf)
                request = await read_packet(stream, buf)
            except EOFError:
                return
            self.handshakes.append(parse_handshake(handshake))
            if request != b"\x00" or self.mode == "close":
                return
            body = json.dumps(self.status).encode("utf-8")
            packet = varint(0) + varint(len(body)) + body
            if self.mode == "oversized":
                await stream.send_all(varint(10 * 1024 * 1024) + packet)
                return
            if self.mode == "garbage":
                junk = b"\x00\x05{not json"
                await stream.send_all(varint(len(junk)) + junk)
                return
            if self.mode == "wrong-id":
                packet = varint(1) + packet[1:]
            framed = varint(len(packet)) + packet
            if self.mode == "truncated":
                await stream.send_all(framed[: len(framed) // 2])
                return
            # two writes: the reply may reach the prober in pieces, as over a real network
            await stream.send_all(framed[:7])
            await trio.lowlevel.checkpoint()
            await stream.send_all(framed[7:])

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_tcp(self.handle, task_status)


def parse_handshake(packet: bytes) -> tuple[int, str, int, int]:
    """(protocol, host, port, next state) from a Handshake packet, to check the client's."""
    pos = 0

    def take_varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            byte = packet[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result - (1 << 32) if result >= 1 << 31 else result

    assert take_varint() == 0x00
    protocol = take_varint()
    size = take_varint()
    host = packet[pos:pos + size].decode("utf-8")
    pos += size
    (port,) = struct.unpack(">H", packet[pos:pos + 2])
    pos += 2
    return protocol, host, port, take_varint()


async def serve_tcp(handler: Any, task_status: trio.TaskStatus[int]) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        task_status.started(listeners[0].socket.getsockname()[1])


async def accept_and_close(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                           ) -> None:
    """A TCP server that accepts and closes at once: up, but speaking no protocol."""

    async def handle(stream: trio.SocketStream) -> None:
        await stream.aclose()

    await serve_tcp(handle, task_status)


def closed_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port nobody listens on (bound, read, released)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
