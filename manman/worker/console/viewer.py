"""One live console viewer: the websocket protocol of docs/spec.md over any send/receive pair.

The sender follows the broker from its own cursor (replay from the files first, then the
ring); the receiver answers pings and passes commands on, within the frame-size and rate
limits. Both run in one nursery: when either ends, the viewer ends.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import trio

from manman.errors import ManmanError
from manman.models import Line
from manman.worker.console.broker import LogBroker, gap_frame, iter_frames

if TYPE_CHECKING:
    from manman.worker.stats.sampler import StatsFeed

MAX_CLIENT_FRAME = 32 * 1024
REPLAY_PAGE = 2000  # lines read from the files at a time, and at most REPLAY_CHARS of text
REPLAY_CHARS = 2 << 20
_encode = msgspec.json.Encoder().encode


class ClientFrame(msgspec.Struct):
    type: str
    data: str | None = None


_decode_client = msgspec.json.Decoder(ClientFrame).decode


def error_frame(code: str, message: str) -> str:
    return _encode({"type": "error", "code": code, "message": message}).decode()


class TokenBucket:
    """`rate` per second with bursts up to `burst` (pure apart from the clock passed in)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp: float | None = None

    def take(self, now: float) -> bool:
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class ViewerLimits:
    command_rate: float = 10.0
    command_burst: float = 20.0
    max_violations: int = 20  # errors before a misbehaving client is disconnected


class Disconnect(Exception):
    """Close the websocket (a client that keeps breaking the rules)."""


Send = Callable[[str], Awaitable[None]]
Receive = Callable[[], Awaitable[str | bytes]]


async def run_viewer(broker: LogBroker, send: Send, receive: Receive, *, server_id: str,
                     state: Callable[[], str], since: int | None, tail: int,
                     on_command: Callable[[str], Awaitable[None]] | None,
                     limits: ViewerLimits | None = None,
                     expires_at: float | None = None, stats: StatsFeed | None = None) -> None:
    """Serve one viewer until it disconnects (or breaks the rules: Disconnect); `stats`:
    it asked for the live stats frames too (?stats=1)."""
    limits = limits or ViewerLimits()
    first = broker.first_seq
    await send(_encode({"type": "hello", "server_id": server_id, "state": state(),
                        "first_seq": first, "next_seq": broker.next_seq}).decode())
    if since is not None:
        cursor = min(since, broker.next_seq)
    else:
        cursor = max(first, broker.next_seq - tail)
    broker.viewers += 1
    rejected: Disconnect | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_sender, broker, send, cursor, nursery.cancel_scope)
            if expires_at is not None:
                nursery.start_soon(_expire, send, expires_at, nursery.cancel_scope)
            if stats is not None:
                nursery.start_soon(_stats_sender, stats, send)
            try:
                await _receiver(send, receive, on_command, limits)
            except Disconnect as e:  # caught here: out of the nursery it would be a group
                rejected = e
            nursery.cancel_scope.cancel()
    finally:
        broker.viewers -= 1
    if rejected is not None:
        raise rejected


async def _stats_sender(feed: StatsFeed, send: Send) -> None:
    """Each new sample's frame, encoded once by the sampler for every viewer."""
    version = feed.version
    if feed.frame is not None:
        await send(feed.frame)
    while True:
        await feed.wait(version)
        version = feed.version
        if feed.frame is not None:
            await send(feed.frame)


async def _expire(send: Send, expires_at: float, scope: trio.CancelScope) -> None:
    await trio.sleep(max(0.0, expires_at - time.time()))
    with trio.move_on_after(2):  # a client that reads nothing is closed all the same
        await send(error_frame("token_expired", "the console token expired; get a new one"))
    scope.cancel()


async def _sender(broker: LogBroker, send: Send, cursor: int, scope: trio.CancelScope) -> None:
    try:
        first = broker.first_seq
        if cursor < first:
            broker.gaps += 1
            await send(gap_frame(cursor, first - 1, "expired"))
            cursor = first
        # replay from the files what the ring no longer holds
        while cursor < broker.ring_first_seq:
            lines = await broker.history(cursor, REPLAY_PAGE, REPLAY_CHARS)
            if not lines:  # the files lack them (rotated away, a write that failed)
                broker.gaps += 1
                await send(gap_frame(cursor, broker.ring_first_seq - 1, "expired"))
                cursor = broker.ring_first_seq
                break
            for frame in _replay_frames(broker, lines, cursor):
                await send(frame)
            cursor = lines[-1].seq + 1
        # then what the ring holds up to now, so the state frame follows the history
        while cursor < broker.next_seq:
            frames, cursor = _next_frames(broker, cursor)
            for frame in frames:
                await send(frame)
        await send(broker.state_frame)
        version = broker.state_version
        while True:
            await broker.wait(cursor, version)
            if broker.closed is not None:
                await send(error_frame(*broker.closed))
                return
            frames = []
            if broker.state_version != version:
                version = broker.state_version
                frames.append(broker.state_frame)
            more, cursor = _next_frames(broker, cursor)
            for frame in frames + more:
                await send(frame)
    finally:
        scope.cancel()


def _replay_frames(broker: LogBroker, lines: list[Line], cursor: int) -> Iterator[str]:
    """Frames for lines read from the files, with a gap frame before every hole: seq
    numbers a viewer receives always go up by one or are announced as skipped."""
    start = 0
    for i, line in enumerate(lines):
        if line.seq != cursor:
            yield from iter_frames(lines[start:i])
            broker.gaps += 1
            yield gap_frame(cursor, line.seq - 1, "expired")
            start = i
        cursor = line.seq + 1
    yield from iter_frames(lines[start:])


def _next_frames(broker: LogBroker, cursor: int) -> tuple[list[str], int]:
    """The frames for a viewer at `cursor`, decided at once (no await between the gap check
    and the take, or the ring could move on in between)."""
    frames = []
    ring_first = broker.ring_first_seq
    if cursor < ring_first:
        # it fell behind the ring: skip it forward, it never holds anyone back
        broker.gaps += 1
        frames.append(gap_frame(cursor, ring_first - 1, "slow_consumer"))
        cursor = ring_first
    frame, cursor = broker.take(cursor)
    if frame is not None:
        frames.append(frame)
    return frames, cursor


async def _receiver(send: Send, receive: Receive,
                    on_command: Callable[[str], Awaitable[None]] | None,
                    limits: ViewerLimits) -> None:
    bucket = TokenBucket(limits.command_rate, limits.command_burst)
    violations = 0

    async def refuse(code: str, message: str) -> None:
        nonlocal violations
        violations += 1
        await send(error_frame(code, message))
        if violations >= limits.max_violations:
            raise Disconnect(f"too many rejected frames ({violations})")

    while True:
        raw = await receive()
        if len(raw) > MAX_CLIENT_FRAME:
            await refuse("frame_too_large", f"frames are limited to {MAX_CLIENT_FRAME} bytes")
            continue
        try:
            msg = _decode_client(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            await refuse("bad_frame", "expected a JSON object with a string `type`")
            continue
        if msg.type == "ping":
            await send('{"type":"pong"}')
        elif msg.type == "command":
            if on_command is None:
                await refuse("forbidden", "this token does not allow console input")
                continue
            if not bucket.take(time.monotonic()):
                await refuse("rate_limited", "too many commands; the limit is "
                             f"{limits.command_rate:g}/s (burst {limits.command_burst:g})")
                continue
            if not isinstance(msg.data, str) or not msg.data:
                await refuse("bad_frame", "a command needs a string `data`")
                continue
            try:
                await on_command(msg.data)
            except ManmanError as e:  # not delivered: the client gets an `error` frame
                await send(error_frame(e.code, e.message))
        else:
            await refuse("bad_frame", f"unknown frame type {msg.type[:40]!r}")
