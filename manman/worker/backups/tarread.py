"""Reading a backup's tar stream without `tarfile`'s stream mode: the same members, a
fraction of the cost.

`tarfile` in stream mode reads through a 10 KiB buffer it joins and slices at every call,
and parses each header field by field; a restore of tens of thousands of small files spent
most of its time there. Here the decompressed bytes come in large chunks (read ahead by a
thread, see `Ahead`), a ustar header (what manman writes for nearly every member) is parsed
from one block, and any other (pax, GNU long names, base-256 numbers) by
`tarfile.TarInfo.frombuf` and the rules below. What a member may be is still judged by the
caller (manman.worker.files.extract), on the TarInfo this yields.
"""

from __future__ import annotations

import queue
import tarfile
import threading
from collections.abc import Callable, Iterator
from contextlib import suppress

BLOCK = tarfile.BLOCKSIZE
_ZERO = bytes(BLOCK)
_MAGIC = tarfile.POSIX_MAGIC  # b"ustar\x0000"
_EXTENSIONS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
               tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class Damaged(Exception):
    """The stream is not a whole tar archive (cut short, a bad header)."""


class TooBig(Exception):
    """An extension header over the bound: refused before it is read."""


def _octal(field: bytes) -> int:
    digits = field.rstrip(b"\x00 ").lstrip(b" ") or b"0"
    if not digits.isdigit():  # int() would take a sign, an underscore or "0o"
        raise ValueError(digits)
    return int(digits, 8)


def header(block: bytes) -> tarfile.TarInfo:
    """One header block as tarfile reads it (`frombuf`), the common ustar case directly."""
    if block[257:265] != _MAGIC or block[156:157] not in (b"0", b"5", b"2", b"1", b"\x00"):
        return _frombuf(block)
    try:
        checksum = _octal(block[148:156])
        mode, size, mtime = _octal(block[100:108]), _octal(block[124:136]), \
            _octal(block[136:148])
    except ValueError:  # base-256 numbers, or damage: tarfile's rules decide
        return _frombuf(block)
    if checksum != sum(block[:148]) + 256 + sum(block[156:]):
        return _frombuf(block)  # (it raises: a header whose checksum is wrong)
    name = block[:100].split(b"\x00", 1)[0]
    prefix = block[345:500].split(b"\x00", 1)[0]
    if prefix:
        name = prefix + b"/" + name
    ti = tarfile.TarInfo(name.decode(tarfile.ENCODING, "surrogateescape"))
    kind = block[156:157]
    ti.type = tarfile.REGTYPE if kind == b"\x00" else kind
    ti.mode, ti.size, ti.mtime = mode, size, mtime
    ti.linkname = block[157:257].split(b"\x00", 1)[0].decode(tarfile.ENCODING,
                                                            "surrogateescape")
    if kind == tarfile.AREGTYPE and ti.name.endswith("/"):
        ti.type = tarfile.DIRTYPE  # an old tar's way to say a directory, as tarfile reads it
    if ti.type == tarfile.DIRTYPE:
        ti.name = ti.name.rstrip("/")
    return ti


def _frombuf(block: bytes) -> tarfile.TarInfo:
    try:
        return tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError as e:
        raise Damaged(f"a bad tar header ({e})") from None


def pax_records(data: bytes) -> dict[str, str]:
    """`<length> <key>=<value>\\n` records (POSIX pax extended header)."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos:pos + 1] != b"\x00":
        space = data.find(b" ", pos, pos + 21)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise Damaged("a bad pax header") from None
        record = data[space + 1:pos + length]
        if space < 0 or length <= space - pos or pos + length > len(data) \
                or not record.endswith(b"\n") or b"=" not in record:
            raise Damaged("a bad pax header")
        key, _, value = record[:-1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


class Ahead:
    """`read` of a stream run in a thread of its own, `depth` chunks ahead of the reader
    (as `zstd -d | tar -x` runs in two processes): reading, hashing and decompressing
    overlap with writing the files. Memory: `depth` chunks at most."""

    def __init__(self, read: Callable[[int], bytes], chunk: int, depth: int = 8) -> None:
        self._read = read
        self.chunk = chunk
        self.queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="restore-read", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopping:
                data = self._read(self.chunk)
                self._put(data)
                if not data:
                    return
        except BaseException as e:  # raised again in the reading thread
            self._put(e)

    def _put(self, item: bytes | BaseException) -> None:
        while not self.stopping:
            with suppress(queue.Full):
                self.queue.put(item, timeout=0.1)
                return

    def next_chunk(self) -> bytes:
        """The next chunk; b"" at the end (and after it)."""
        item = self.queue.get()
        if isinstance(item, BaseException) or not item:
            self.queue.put(item)  # every later call sees the same
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stops the thread: nothing more is read from the stream once this returns."""
        self.stopping = True
        with suppress(queue.Empty):
            while True:
                self.queue.get_nowait()
        self.thread.join()


class TarReader:
    """The members of a tar stream, in order, each with a reader of its bytes."""

    def __init__(self, next_chunk: Callable[[], bytes], max_extension: int) -> None:
        self._next = next_chunk
        self.max_extension = max_extension
        self._buf = b""
        self._pos = 0

    def _take(self, n: int) -> bytes:
        """Exactly `n` bytes (Damaged if the stream ends first)."""
        if self._pos + n <= len(self._buf):  # the common case: no copy but the slice
            out = self._buf[self._pos:self._pos + n]
            self._pos += n
            return out
        parts = [self._buf[self._pos:]]
        have = len(parts[0])
        while have < n:
            chunk = self._next()
            if not chunk:
                raise Damaged("the archive ends in the middle of a member")
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        self._buf, self._pos = data, n
        return data[:n]

    def _some(self, n: int) -> bytes:
        """Up to `n` bytes (at least one), from the buffer or the next chunk, uncopied where
        it can be."""
        if self._pos >= len(self._buf):
            self._buf, self._pos = self._next(), 0
            if not self._buf:
                raise Damaged("the archive ends in the middle of a member")
        if self._pos == 0 and n >= len(self._buf):
            self._pos = len(self._buf)
            return self._buf
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def _skip(self, n: int) -> None:
        while n:
            n -= len(self._some(n))

    def members(self) -> Iterator[tuple[tarfile.TarInfo, MemberData | None]]:
        pax: dict[str, str] = {}
        long_name = long_link = None
        extensions = 0  # bytes of the extension headers before the member they describe
        while True:
            block = self._take(BLOCK)
            if block == _ZERO:
                return  # the end (what follows is padding)
            ti = header(block)
            if ti.size < 0:  # (base-256 numbers may be negative) it would read backwards
                raise Damaged("a bad tar header (a negative size)")
            padded = -ti.size % BLOCK
            if ti.type in _EXTENSIONS:
                extensions += ti.size
                if extensions > self.max_extension:  # one, or a run of them, over the bound
                    raise TooBig(extensions)
                data = self._take(ti.size)
                self._skip(padded)
                if ti.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = data.split(b"\x00", 1)[0]
                elif ti.type == tarfile.GNUTYPE_LONGLINK:
                    long_link = data.split(b"\x00", 1)[0]
                elif ti.type != tarfile.XGLTYPE:  # a global header sets nothing we keep
                    pax.update(pax_records(data))
                continue
            if long_name is not None:
                ti.name = long_name.decode(tarfile.ENCODING, "surrogateescape")
            if long_link is not None:
                ti.linkname = long_link.decode(tarfile.ENCODING, "surrogateescape")
            _apply_pax(ti, pax)
            pax, long_name, long_link, extensions = {}, None, None, 0
            if ti.type == tarfile.DIRTYPE:
                ti.name = ti.name.rstrip("/")
            data_size = ti.size if ti.type in tarfile.REGULAR_TYPES else 0
            reader = MemberData(self, data_size) if ti.isreg() else None
            yield ti, reader
            left = reader.left if reader is not None else data_size
            self._skip(left + (-data_size % BLOCK))


def _apply_pax(ti: tarfile.TarInfo, pax: dict[str, str]) -> None:
    if not pax:
        return
    try:
        if "path" in pax:
            ti.name = pax["path"]
        if "linkpath" in pax:
            ti.linkname = pax["linkpath"]
        if "size" in pax:
            ti.size = int(pax["size"])
        if "mtime" in pax:
            ti.mtime = float(pax["mtime"])
    except ValueError:
        raise Damaged("a bad pax header") from None
    if ti.size < 0:
        raise Damaged("a bad pax header")


class MemberData:
    """A member's bytes, read once, in order."""

    def __init__(self, tar: TarReader, size: int) -> None:
        self.tar = tar
        self.left = size

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (fewer where a chunk ends); all that is left for -1."""
        if n < 0:
            parts = []
            while self.left:
                parts.append(self.read(self.left))
            return b"".join(parts)
        if not self.left or not n:
            return b""
        data = self.tar._some(min(n, self.left))
        self.left -= len(data)
        return data

    def __enter__(self) -> MemberData:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
