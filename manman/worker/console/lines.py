"""Bytes from a process → console lines (pure: no I/O, no clock)."""

from __future__ import annotations

MAX_LINE_BYTES = 64 * 1024


class LineFramer:
    """Splits a byte stream on b'\\n' into UTF-8 text lines.

    `\\r` at a line's end is stripped (with `cr_breaks`, a lone `\\r` also ends a line, as
    steamcmd's progress output does); invalid UTF-8 is replaced; a line longer than
    MAX_LINE_BYTES is cut into pieces of at most that many bytes.
    """

    __slots__ = ("_buf", "_cr_breaks", "_max")

    def __init__(self, *, cr_breaks: bool = False, max_line: int = MAX_LINE_BYTES) -> None:
        self._buf: bytes | bytearray = b""
        self._cr_breaks = cr_breaks
        self._max = max_line

    def feed(self, data: bytes | bytearray) -> list[str]:
        """Lines completed by `data`, in order."""
        buf = self._buf + data if self._buf else data
        held = b""
        if self._cr_breaks:
            if buf.endswith(b"\r"):  # maybe the first half of a '\r\n' split across reads
                buf, held = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        cut = buf.rfind(b"\n")
        if cut < 0:
            self._buf = buf + held
            return self._cut_long()
        self._buf = buf[cut + 1:] + held
        # one decode per read: b'\n' cannot fall inside a multi-byte UTF-8 sequence
        text = buf[:cut].decode("utf-8", "replace")
        lines = text.split("\n")
        if "\r" in text:  # one scan per read keeps plain '\n' output free of the per-line check
            lines = [line[:-1] if line.endswith("\r") else line for line in lines]
        # text may take up to 3x the raw bytes (U+FFFD for each bad byte) and a character up
        # to 4 bytes: only a line that may exceed the limit is measured
        if cut * 3 > self._max and any(len(line) * 4 > self._max for line in lines):
            lines = _split_long(lines, self._max)
        lines.extend(self._cut_long())
        return lines

    def flush(self) -> list[str]:
        """The unterminated rest, at end of stream."""
        rest, self._buf = self._buf, b""
        if not rest:
            return []
        text = rest.decode("utf-8", "replace")
        if text.endswith("\r"):
            text = text[:-1]
        return _split_long([text], self._max)

    def _cut_long(self) -> list[str]:
        """Emit full pieces of an over-long unterminated line, keep the remainder."""
        out: list[str] = []
        buf = self._buf
        # a trailing '\r' is the line's end, not its content
        while len(buf) > self._max + (buf[-1:] == b"\r"):
            cut = _utf8_boundary(buf, self._max)
            out.extend(_split_long([buf[:cut].decode("utf-8", "replace")], self._max))
            buf = buf[cut:]
        self._buf = buf
        return out


def _utf8_boundary(data: bytes | bytearray, limit: int) -> int:
    """The largest cut ≤ limit that does not split a UTF-8 sequence (when avoidable)."""
    # the last lead byte before the cut decides: back up only if its sequence crosses it
    # (stray continuation bytes after a whole character are not part of it)
    for p in range(limit - 1, max(limit - 4, -1), -1):
        b = data[p]
        if b & 0xC0 != 0x80:
            size = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else \
                4 if b & 0xF8 == 0xF0 else 1
            return p if p + size > limit and p > 0 else limit
    return limit


def _split_long(lines: list[str], max_bytes: int) -> list[str]:
    out: list[str] = []
    for line in lines:
        if len(line) * 4 <= max_bytes:
            out.append(line)
            continue
        raw = line.encode("utf-8", "surrogatepass")
        if len(raw) <= max_bytes:
            out.append(line)
            continue
        while len(raw) > max_bytes:
            cut = _utf8_boundary(raw, max_bytes)
            out.append(raw[:cut].decode("utf-8", "replace"))
            raw = raw[cut:]
        out.append(raw.decode("utf-8", "replace"))
    return out
