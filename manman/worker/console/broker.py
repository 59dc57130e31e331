"""One server's console: seq numbers, a ring for fast replay, the log files, and viewers.

A batch of lines (one read from the process) is encoded to JSON once, written to disk once
and kept in the ring; every viewer reads the ring from its own cursor and sends the same
encoded text. A viewer that falls behind the ring is skipped forward with a gap; nothing a
viewer does can slow the publisher.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import msgspec
import trio

from manman.models import Line
from manman.worker.console.logfiles import LogFiles

_encode = msgspec.json.Encoder().encode
_decode_lines = msgspec.json.Decoder(list[Line]).decode
# websocket clients commonly refuse messages over 1 MiB (trio-websocket, browsers' proxies)
MAX_FRAME_CHARS = 512 * 1024
# a batch's JSON stays well under MAX_FRAME_CHARS even for 64 KiB of tiny or escaped lines
BATCH_LINES = 2048


class Batch:
    """Consecutive lines stored and sent together, kept only as their JSON text (the Line
    objects are dropped after encoding: the ring costs about its JSON size in memory)."""

    __slots__ = ("count", "first_seq", "frame", "payload")

    def __init__(self, first_seq: int, count: int, payload: str) -> None:
        self.first_seq = first_seq
        self.count = count
        self.payload = payload  # the JSON array of the lines
        self.frame: str | None = None  # the whole `lines` frame, made once for all viewers

    @property
    def end_seq(self) -> int:
        return self.first_seq + self.count

    def lines(self) -> list[Line]:
        return _decode_lines(self.payload)

    def lines_frame(self) -> str:
        if self.frame is None:
            self.frame = '{"type":"lines","lines":' + self.payload + "}"
        return self.frame


def lines_frame(lines: list[Line]) -> str:
    return '{"type":"lines","lines":' + _encode(lines).decode() + "}"


def gap_frame(from_seq: int, to_seq: int, reason: str) -> str:
    return _encode({"type": "gap", "from_seq": from_seq, "to_seq": to_seq,
                    "reason": reason}).decode()


class LogBroker:
    """Publishes console lines of one server to disk, memory and live viewers."""

    def __init__(self, directory: Path, *, ring_bytes: int = 8 << 20, file_bytes: int = 8 << 20,
                 files_keep: int = 5) -> None:
        self.files = LogFiles(directory, max_bytes=file_bytes, keep=files_keep)
        self.next_seq = self.files.next_seq
        self.last_ts = self.files.last_ts  # when the newest line was read
        self.ring: deque[Batch] = deque()
        self.ring_size = 0  # characters of JSON in the ring
        self.ring_bytes = ring_bytes
        self.state_frame = '{"type":"state","state":"created"}'
        self.state_version = 0
        self.viewers = 0
        self.gaps = 0
        self.lines_total = 0
        self.bytes_total = 0
        self._wakeup = trio.Event()
        self.closed: tuple[str, str] | None = None  # why viewers must go (server deleted)

    # -- publishing (sync: the readers never wait on viewers) -------------------------------

    def publish(self, stream: str, texts: list[str], ts: float | None = None) -> None:
        """Number, store and announce the lines of one read: one encode per batch, one write."""
        if not texts:
            return
        ts = time.time() if ts is None else ts
        self.last_ts = ts
        first = self.next_seq
        lines = [Line(seq, ts, stream, text) for seq, text in enumerate(texts, first)]
        batches = []
        for i in range(0, len(lines), BATCH_LINES):
            part = lines[i:i + BATCH_LINES]
            batches.append(Batch(part[0].seq, len(part), _encode(part).decode()))
        self.next_seq = first + len(lines)
        self.files.append(first, "\n".join(b.payload for b in batches).encode(), self.next_seq)
        size = sum(len(b.payload) for b in batches)
        self.ring.extend(batches)
        self.ring_size += size
        self.lines_total += len(lines)
        self.bytes_total += size
        ring = self.ring
        while self.ring_size - len(ring[0].payload) >= self.ring_bytes:
            self.ring_size -= len(ring.popleft().payload)
        self._wake()

    def note(self, text: str) -> None:
        """A line from manman itself (state changes, errors) in the console."""
        self.publish("manman", [text])

    def set_state(self, state: dict[str, object]) -> None:
        self.state_frame = _encode({"type": "state", **state}).decode()
        self.state_version += 1
        self._wake()

    def _wake(self) -> None:
        self._wakeup.set()
        self._wakeup = trio.Event()

    def close(self, reason: tuple[str, str] | None = None) -> None:
        """Close the files; with a reason (code, message), viewers get it and are closed."""
        self.files.close()
        if reason is not None:
            self.closed = reason
            self._wake()

    # -- reading -------------------------------------------------------------------------

    @property
    def first_seq(self) -> int:
        return self.files.first_seq()

    @property
    def ring_first_seq(self) -> int:
        return self.ring[0].first_seq if self.ring else self.next_seq

    async def wait(self, cursor: int, state_version: int) -> None:
        """Return once there is a line at or after `cursor` or a newer state."""
        while self.next_seq <= cursor and self.state_version == state_version and \
                self.closed is None:
            await self._wakeup.wait()

    def take(self, cursor: int, max_chars: int = MAX_FRAME_CHARS) -> tuple[str | None, int]:
        """A `lines` frame from the ring starting at `cursor` (≥ ring_first_seq), and the new
        cursor. Whole batches reuse the text encoded at publish time."""
        if cursor >= self.next_seq or cursor < self.ring_first_seq:
            return None, cursor
        ring = self.ring
        i = len(ring) - 1
        while ring[i].first_seq > cursor:  # viewers are nearly always at the tail
            i -= 1
        head = ring[i]
        if head.first_seq == cursor and (i == len(ring) - 1 or len(head.payload) >= max_chars):
            return head.lines_frame(), head.end_seq  # the common case: shared text, no copy
        # a resume inside a batch re-encodes that part once; whole batches are joined as text
        text = head.payload if head.first_seq == cursor else _encode(
            head.lines()[cursor - head.first_seq:]).decode()
        parts, size, end = [text[1:-1]], len(text), head.end_seq
        for j in range(i + 1, len(ring)):
            batch = ring[j]
            if size + len(batch.payload) > max_chars:
                break
            parts.append(batch.payload[1:-1])
            size += len(batch.payload)
            end = batch.end_seq
        return '{"type":"lines","lines":[' + ",".join(parts) + "]}", end

    def ring_lines_from(self, since: int, limit: int, max_chars: int | None = None
                        ) -> list[Line]:
        out: list[Line] = []
        chars = 0
        for batch in self.ring:
            if batch.end_seq <= since:
                continue
            start = max(0, since - batch.first_seq)
            for line in batch.lines()[start:start + limit - len(out)]:
                out.append(line)
                chars += len(line.text)
                if max_chars is not None and chars >= max_chars:
                    return out
            if len(out) >= limit:
                break
        return out

    async def history(self, since: int, limit: int, max_chars: int | None = None
                      ) -> list[Line]:
        """Stored lines with seq ≥ since (ring first, then the files); with max_chars, about
        that much text at most (at least one line)."""
        since = max(since, 0)
        if since >= self.ring_first_seq:
            return self.ring_lines_from(since, limit, max_chars)
        return await trio.to_thread.run_sync(self.files.read, since, limit, max_chars)

    async def tail(self, count: int, max_chars: int | None = None) -> list[Line]:
        return await self.history(max(self.first_seq, self.next_seq - count), count, max_chars)


# text per frame of replayed lines: JSON escapes may grow it up to 6 times, and clients
# refuse messages over 4 MiB
FRAME_TEXT_CHARS = MAX_FRAME_CHARS // 2


def iter_frames(lines: Iterable[Line], per_frame: int = 2000,
                max_chars: int = FRAME_TEXT_CHARS) -> Iterable[str]:
    chunk: list[Line] = []
    chars = 0
    for line in lines:
        if chunk and chars + len(line.text) > max_chars:
            yield lines_frame(chunk)
            chunk, chars = [], 0
        chunk.append(line)
        chars += len(line.text)
        if len(chunk) >= per_frame:
            yield lines_frame(chunk)
            chunk, chars = [], 0
    if chunk:
        yield lines_frame(chunk)
