"""A server's console on disk: append-only segment files rotated by size, keep N.

Each file line is one batch of console lines as a JSON array, written with a single
`os.write` on an O_APPEND descriptor, so a worker killed with SIGKILL loses nothing that a
viewer has seen. A segment is named after its first seq, which makes `since` lookups a
directory listing and `seq` recovery after a restart a read of the newest file's tail.

A full disk: a batch is stored whole or not at all (a short write is truncated back), and a
batch that could not be stored raises the seq mark (`seq-mark`, a fixed-size file rewritten in
place, so it needs no new blocks), so a restart never hands out a seq a viewer has seen.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path

import msgspec

from manman.models import Line

log = logging.getLogger("manman.worker.console")

_PREFIX, _SUFFIX = "console-", ".jsonl"
_MARK = "seq-mark"
_MARK_WIDTH = 20  # digits: the file keeps its size, so rewriting it allocates nothing
_decode_batch = msgspec.json.Decoder(list[Line]).decode


def _batch_first_seq(raw: bytes) -> int | None:
    """The seq of a batch line's first entry without decoding it (we write `[{"seq":N,`);
    None for a line that does not start so (damaged)."""
    try:
        return int(raw[8:raw.index(b",", 8)]) if raw.startswith(b'[{"seq":') else None
    except ValueError:
        return None


class LogFiles:
    """Rotating, append-only console segments in one directory."""

    def __init__(self, directory: Path, *, max_bytes: int = 8 << 20, keep: int = 5) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.keep = max(1, keep)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None
        self._size = 0
        self.write_errors = 0
        self.damaged_lines = 0  # unreadable batch lines skipped by read()
        self.last_ts: float | None = None  # of the newest stored line
        self.next_seq = max(self._recover(), self._read_mark())
        self._make_mark()

    # -- segments -------------------------------------------------------------------------

    def segments(self) -> list[tuple[int, Path]]:
        """(first_seq, path) of every segment, oldest first."""
        out = []
        for p in self.dir.iterdir():
            n = p.name
            if n.startswith(_PREFIX) and n.endswith(_SUFFIX):
                try:
                    out.append((int(n[len(_PREFIX):-len(_SUFFIX)]), p))
                except ValueError:
                    continue
        out.sort()
        return out

    def first_seq(self) -> int:
        """The oldest seq still stored (next_seq when nothing is)."""
        segs = self.segments()
        return segs[0][0] if segs else self.next_seq

    def _recover(self) -> int:
        """Find the next seq after a restart; cut a torn last write from a crash."""
        segs = self.segments()
        while segs:
            first, path = segs[-1]
            last = _last_line_in(path)
            if last is not None:
                self.last_ts = last.ts
                return last.seq + 1
            if path.stat().st_size == 0:
                return first
            # nothing readable in the newest segment: it is garbage from a crash
            path.unlink()
            segs.pop()
        return 0

    # -- the seq mark: seqs below it may have been seen although they are not stored -------

    def _read_mark(self) -> int:
        try:
            return int((self.dir / _MARK).read_bytes().strip() or b"0")
        except (OSError, ValueError):
            return 0

    def _make_mark(self) -> None:
        """Make the mark file with its full size now, while there is room; it is opened
        again only when a batch fails (a descriptor per server held for that is too many)."""
        try:
            fd = os.open(self.dir / _MARK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as e:
            log.warning("console log %s: no seq mark (%s)", self.dir, e.strerror or e)
            return
        try:
            if os.fstat(fd).st_size != _MARK_WIDTH + 1:
                os.pwrite(fd, b"%0*d\n" % (_MARK_WIDTH, self.next_seq), 0)
        except OSError:
            pass  # a full disk: _raise_mark tries again when it matters
        finally:
            os.close(fd)

    def _raise_mark(self, seq: int) -> None:
        """Batches up to `seq` were published but not stored: a restart starts at seq."""
        with contextlib.suppress(OSError):  # then the stored lines alone bound the seq
            fd = os.open(self.dir / _MARK, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                os.pwrite(fd, b"%0*d\n" % (_MARK_WIDTH, seq), 0)
            finally:
                os.close(fd)

    # -- writing --------------------------------------------------------------------------

    def append(self, first_seq: int, batch: bytes, next_seq: int) -> None:
        """Write one JSON-array batch starting at `first_seq`; next_seq follows it. A failed
        write (disk full) loses these lines from the files only: they stay in the ring, and
        the game and its viewers go on."""
        self.next_seq = next_seq
        data = batch + b"\n"
        try:
            if self._fd is None or self._size >= self.max_bytes:
                self._open_segment(first_seq)
            assert self._fd is not None
            written = os.write(self._fd, data)
            if written != len(data):  # the disk filled up mid-batch: store none of it
                os.ftruncate(self._fd, self._size)
                raise OSError(errno.ENOSPC, "short write")
        except OSError as e:
            self._raise_mark(next_seq)
            self.write_errors += 1
            if self.write_errors == 1 or self.write_errors % 1000 == 0:
                log.error("console log %s: cannot write (%s); %d batches not stored",
                          self.dir, e.strerror or e, self.write_errors)
            return
        self._size += written

    def _open_segment(self, first_seq: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        segs = self.segments()
        if segs and self._size == 0 and segs[-1][1].stat().st_size < self.max_bytes:
            path = segs[-1][1]  # reopen the newest segment after a restart
        else:
            path = self.dir / f"{_PREFIX}{first_seq:020d}{_SUFFIX}"
            segs.append((first_seq, path))
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size
        for _, old in segs[:-self.keep]:
            old.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- reading (blocking: call from a thread) --------------------------------------------

    def read(self, since: int, limit: int, max_chars: int | None = None) -> list[Line]:
        """Up to `limit` stored lines with seq ≥ since, oldest first; with max_chars, no more
        than about that much text (at least one line): a page of 64 KiB lines stays small."""
        out: list[Line] = []
        if limit <= 0:
            return out
        budget = _Budget(limit, max_chars)
        segs = self.segments()
        start = 0
        for i, (first, _) in enumerate(segs):
            if first <= since:
                start = i
        for _, path in segs[start:]:
            try:
                with path.open("rb") as f:
                    pending: bytes | None = None  # the last batch that may hold `since`
                    for raw in f:
                        if not raw.endswith(b"\n"):
                            break  # a batch being written right now
                        if not out and (head := _batch_first_seq(raw)) is not None \
                                and head <= since:
                            pending = raw  # batches are contiguous: the one before is older
                            continue
                        for batch in (pending, raw) if pending is not None else (raw,):
                            if self._collect(path, batch, since, budget, out):
                                return out
                        pending = None
                    if pending is not None and self._collect(path, pending, since, budget,
                                                             out):
                        return out
            except FileNotFoundError:
                continue  # rotated away while we read
        return out

    def _collect(self, path: Path, raw: bytes, since: int, budget: _Budget, out: list[Line]
                 ) -> bool:
        """Append the batch's lines with seq ≥ since; True when the page is full. A damaged
        batch (from an older version's torn write, or the disk) is skipped: a gap in seq."""
        try:
            lines = _decode_batch(raw)
        except msgspec.DecodeError:
            self._damaged(path)
            return False
        return _take(lines, since, budget, out)

    def _damaged(self, path: Path) -> None:
        self.damaged_lines += 1
        if self.damaged_lines == 1 or self.damaged_lines % 1000 == 0:
            log.warning("console log %s: skipped %d damaged line(s); their seqs show as a gap",
                        path, self.damaged_lines)


class _Budget:
    """How many lines, and how much text, a page may still take."""

    def __init__(self, limit: int, max_chars: int | None) -> None:
        self.lines = limit
        self.chars = max_chars if max_chars is not None else -1

    def take(self, line: Line) -> bool:
        """Count the line in; True when the page is full."""
        self.lines -= 1
        if self.chars >= 0:
            self.chars -= len(line.text)
            if self.chars <= 0:
                return True
        return self.lines <= 0


def _take(lines: list[Line], since: int, budget: _Budget, out: list[Line]) -> bool:
    for line in lines:
        if line.seq >= since:
            out.append(line)
            if budget.take(line):
                return True
    return False


def _last_line_in(path: Path) -> Line | None:
    """The last line of the last complete batch; truncates a torn final write."""
    size = path.stat().st_size
    if size == 0:
        return None
    with path.open("r+b") as f:
        window = 1 << 16
        while True:
            start = max(0, size - window)
            f.seek(start)
            tail = f.read(size - start)
            end = tail.rfind(b"\n")
            if end >= 0:
                begin = tail.rfind(b"\n", 0, end) + 1
                if begin > 0 or start == 0:
                    if start + end + 1 != size:
                        f.truncate(start + end + 1)
                    try:
                        return _decode_batch(tail[begin:end + 1])[-1]
                    except (msgspec.DecodeError, IndexError):
                        f.truncate(start + begin)
                        size = start + begin
                        if size == 0:
                            return None
                        continue
            elif start == 0:
                f.truncate(0)
                return None
            window *= 4
