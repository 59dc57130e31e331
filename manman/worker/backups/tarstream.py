"""A tar stream written without `tarfile.TarFile`: the same bytes, a fraction of the cost.

A backup of a game's files holds tens of thousands of small files; `TarFile.addfile` spends
about 25 µs a member copying the TarInfo and building its header field by field, which made
the header the backup's largest cost. Here a member whose name and link are ASCII and short
enough for a ustar header (nearly all) gets that header from one format call; any other
falls back to `TarInfo.tobuf` in the pax format, as `TarFile` would write it. Small members
are gathered into one buffer before they reach the compressor, which costs per call.
"""

from __future__ import annotations

import os
import tarfile
from typing import Protocol

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
_MAX_NUMBER = 8 ** 11  # what 11 octal digits hold (a size or a time past it needs pax)
_IDS = b"0000000\x00" * 2  # uid and gid 0, as a TarInfo has by default
# magic, empty uname/gname, no device numbers, no prefix, padding to 512
_TAIL = tarfile.POSIX_MAGIC + bytes(32 + 32 + 8 + 8 + 155 + 12)
_SPACES = 8 * ord(" ")  # the checksum field counts as spaces in the checksum


class Writable(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


def header(name: str, mode: int, mtime: int, size: int, kind: bytes,
           linkname: str = "") -> bytes:
    """The header block(s) of one member, byte for byte what TarFile in PAX_FORMAT writes."""
    if kind == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    if not (len(name) <= 100 and name.isascii() and len(linkname) <= 100
            and linkname.isascii() and 0 <= size < _MAX_NUMBER and 0 <= mtime < _MAX_NUMBER):
        return _pax_header(name, mode, mtime, size, kind, linkname)
    head = b"%s%07o\x00%s%011o\x00%011o\x00" % (
        name.encode().ljust(100, b"\x00"), mode & 0o7777, _IDS, size, mtime)
    tail = kind + linkname.encode().ljust(100, b"\x00") + _TAIL
    checksum = sum(head) + _SPACES + sum(tail)
    return b"%s%06o\x00 %s" % (head, checksum, tail)


def _pax_header(name: str, mode: int, mtime: int, size: int, kind: bytes,
                linkname: str) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.mode, ti.mtime, ti.size, ti.type, ti.linkname = mode, mtime, size, kind, linkname
    return ti.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


class TarStream:
    """Members appended to `out` (the compressor), in blocks of about `chunk` bytes."""

    def __init__(self, out: Writable, chunk: int) -> None:
        self.out = out
        self.chunk = chunk
        self.buf = bytearray()
        self.offset = 0
        self.data = 0  # bytes of files read: what a progress bar shows (another thread reads it)

    def _put(self, data: bytes | bytearray | memoryview) -> None:
        self.buf += data
        if len(self.buf) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        if self.buf:
            self.out.write(self.buf)
            self.offset += len(self.buf)
            self.buf = bytearray()

    def entry(self, name: str, mode: int, mtime: int, kind: bytes, linkname: str = "") -> None:
        """A member with no data: a directory or a symbolic link."""
        self._put(header(name, mode, mtime, 0, kind, linkname))

    def file(self, name: str, mode: int, mtime: int, fd: int, size: int) -> None:
        """A regular file of `size` bytes read from `fd`. A file that shrank while it was read
        (a live game's) is padded with zeros, one that grew is cut: the stream stays whole."""
        self._put(header(name, mode, mtime, size, tarfile.REGTYPE))
        left = size
        while left:
            data = os.read(fd, min(left, self.chunk))
            if not data:
                data = bytes(min(left, self.chunk))
            left -= len(data)
            self.data += len(data)
            if len(data) >= self.chunk:  # a large file goes straight through, not copied
                self._flush()
                self.out.write(data)
                self.offset += len(data)
            else:
                self._put(data)
        if size % BLOCK:
            self._put(bytes(BLOCK - size % BLOCK))

    def close(self) -> None:
        """The end-of-archive blocks, padded to a whole record as TarFile does."""
        end = self.offset + len(self.buf) + 2 * BLOCK
        self._put(bytes(2 * BLOCK + (-end) % RECORD))
        self._flush()
