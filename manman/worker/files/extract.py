"""Extracting an archive (tar, tar.gz/bz2/xz, tar.zst when `zstandard` is installed, zip)
of a server's files into a new directory beside it, all or nothing.

Every member is checked before a byte is written, and the whole archive is refused (422,
naming the first bad member) when one is absolute, has `..`, NUL or an over-long name, is a
link pointing outside the extracted tree, a hard link to anything but an earlier file of the
archive, a device or a fifo; or when the archive has more than `MAX_MEMBERS` members or
declares more than the worker's `files_max_extract` bytes in all (a zip bomb is refused, not
unpacked). Members are then written into a fresh hidden directory with the same descriptor
walk as every other file route (nothing is followed), each member checked again and no file
allowed more bytes than it declared; only when all is written is that directory renamed to
its name. Any failure removes it: nothing is left half-extracted.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import secrets
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import IO, Any

from manman import errors
from manman.worker.files.safe import DIR_FLAGS, Entry, FilesTree, entry, os_error, parse

MAX_MEMBERS = 100_000
MAX_LINK = 4096  # bytes of a zip member holding a link's target
CHUNK = 1 << 20
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst", ".tgz", ".tar", ".zip")


MAX_HEADER = 1 << 20  # bytes of a pax or GNU long-name header (tarfile reads one whole)
_BIG_HEADERS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class BoundedTarInfo(tarfile.TarInfo):
    """A member header whose extension header is refused over MAX_HEADER bytes before it
    is read: a few hundred KB of compressed zeros could declare gigabytes."""

    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _BIG_HEADERS and self.size > MAX_HEADER:
            # Invalid, not a HeaderError: tarfile takes that for the archive's end
            raise errors.Invalid(f"the archive has a {self.size}-byte extension header "
                                 f"(at most {MAX_HEADER}); nothing was extracted")
        return super()._proc_member(tf)  # type: ignore[misc]


# the files met so far (a hard link may name only those), each as a 16-byte digest of its
# path: 100,000 paths of up to 4 KiB would otherwise be held whole
Seen = set[bytes]


def _key(parts: tuple[str, ...]) -> bytes:
    return hashlib.blake2b("/".join(parts).encode("utf-8", "surrogateescape"),
                           digest_size=16).digest()


@dataclass
class Member:
    raw: str  # the name as the archive has it (for messages)
    parts: tuple[str, ...]
    kind: str  # file | dir | symlink | hardlink
    size: int = 0
    mode: int = 0o644
    target: str = ""  # symlink: its text; hardlink: the earlier member's path


def _bad(raw: str, why: str) -> errors.Invalid:
    return errors.Invalid(f"the archive's member {raw[:200]!r} {why}; the archive is refused "
                          "whole and nothing was extracted")


def check(raw: str, kind: str, target: str, files: Seen) -> tuple[str, ...]:
    """The member's path, or Invalid naming it."""
    if raw.startswith("/") or raw.startswith("\\") or (len(raw) > 1 and raw[1] == ":"):
        raise _bad(raw, "is an absolute path")
    try:
        parts = parse(raw)
    except errors.Invalid as e:
        raise _bad(raw, f"is not acceptable ({e.message})") from None
    if not parts and kind != "dir":
        raise _bad(raw, "has no name")
    if kind == "symlink":
        if not target or "\x00" in target or target.startswith("/"):
            raise _bad(raw, f"is a link to {target[:200]!r}, outside the archive")
        # `..` only at the start, and no more of them than the link is deep: then each link
        # lands inside by itself, and no chain of links can climb out (a `..` after a name
        # could climb out of a directory that is itself a link)
        steps = [c for c in target.split("/") if c not in ("", ".")]
        ups = next((i for i, c in enumerate(steps) if c != ".."), len(steps))
        if ups > len(parts) - 1 or ".." in steps[ups:]:
            raise _bad(raw, f"is a link to {target[:200]!r}, outside the archive")
    elif kind == "hardlink":
        try:
            linked = parse(target)
        except errors.Invalid:
            linked = ()
        if _key(linked) not in files:
            raise _bad(raw, f"is a hard link to {target[:200]!r}, not an earlier file of "
                            "the archive")
    return parts


class Archive:
    """The members of an open archive file, read twice: once to check, once to write."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.zip: zipfile.ZipFile | None = None
        if zipfile.is_zipfile(f):
            f.seek(0)
            try:
                self.zip = zipfile.ZipFile(f)
            except (zipfile.BadZipFile, OSError) as e:
                raise errors.Invalid(f"not a readable zip archive: {e}") from None

    @contextmanager
    def _tar(self) -> Iterator[tarfile.TarFile]:
        self.f.seek(0)
        source: IO[bytes] = self.f
        if self.f.read(4) == ZSTD_MAGIC:
            try:
                import zstandard
            except ImportError:
                raise errors.Invalid("tar.zst archives need the zstandard library, which "
                                     "this worker does not have") from None
            self.f.seek(0)
            source = zstandard.ZstdDecompressor().stream_reader(self.f)
        self.f.seek(0)
        try:
            tf = tarfile.open(fileobj=source, mode="r|*",  # noqa: SIM115 (closed below)
                              tarinfo=BoundedTarInfo)
        except tarfile.ReadError:
            raise errors.Invalid("not an archive this worker reads (tar, tar.gz, tar.bz2, "
                                 "tar.xz, tar.zst, zip)") from None
        with tf:
            yield tf

    def members(self) -> Iterator[tuple[Member, Any]]:
        """Each member, checked, with what reads its bytes (a file; a zip link's target)."""
        files: Seen = set()
        if self.zip is not None:
            for zi in self.zip.infolist():
                yield self._zip_member(zi, files)
            return
        with self._tar() as tf:
            for ti in tf:
                tf.members.clear()  # type: ignore[attr-defined]  # else it keeps each header
                m = _tar_member(ti, files)
                yield m, (tf.extractfile(ti) if m.kind == "file" else None)

    def _zip_member(self, zi: zipfile.ZipInfo, files: Seen
                    ) -> tuple[Member, Any]:
        assert self.zip is not None
        mode = (zi.external_attr >> 16) if zi.create_system == 3 else 0
        raw = zi.filename
        if stat.S_ISLNK(mode):
            if zi.file_size > MAX_LINK:
                raise _bad(raw, "is a link with an over-long target")
            target = self.zip.read(zi).decode("utf-8", "replace")
            return Member(raw, check(raw, "symlink", target, files), "symlink",
                          target=target), None
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: bits only
            raise _bad(raw, "is a device, fifo or socket")
        if zi.is_dir():
            return Member(raw, check(raw, "dir", "", files), "dir"), None
        parts = check(raw, "file", "", files)
        files.add(_key(parts))
        return (Member(raw, parts, "file", zi.file_size, (mode & 0o777) or 0o644),
                functools.partial(self.zip.open, zi))


def _tar_member(ti: tarfile.TarInfo, files: Seen) -> Member:
    raw = ti.name
    if ti.ischr() or ti.isblk() or ti.isfifo():
        raise _bad(raw, "is a device or fifo")
    if ti.issym():
        return Member(raw, check(raw, "symlink", ti.linkname, files), "symlink",
                      target=ti.linkname)
    if ti.islnk():
        return Member(raw, check(raw, "hardlink", ti.linkname, files), "hardlink",
                      target="/".join(parse(ti.linkname)))
    if ti.isdir():
        return Member(raw, check(raw, "dir", "", files), "dir")
    if not ti.isreg():
        raise _bad(raw, "is of a kind that is not extracted")
    parts = check(raw, "file", "", files)
    files.add(_key(parts))
    return Member(raw, parts, "file", ti.size, ti.mode & 0o777)


def survey(archive: Archive, max_bytes: int) -> tuple[int, int]:
    """(members, bytes) of a whole archive that may be extracted, or Invalid."""
    count = total = 0
    for m, _ in archive.members():
        count += 1
        total += m.size
        if count > MAX_MEMBERS:
            raise errors.Invalid(f"the archive has more than {MAX_MEMBERS} members; it is "
                                 "refused whole and nothing was extracted")
        if total > max_bytes:
            raise errors.Invalid(f"the archive unpacks to more than {max_bytes} bytes "
                                 f"(at {m.raw[:200]!r}); it is refused whole and nothing "
                                 "was extracted")
    return count, total


class Staging:
    """Writes members below a fresh directory, never following anything."""

    def __init__(self, dir_fd: int, name: str, max_bytes: int) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.left = max_bytes
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        self.fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        # the directory the last member went into: an archive's members come by directory,
        # and walking each one's path again cost most of a restore (two syscalls a level)
        self._last: tuple[tuple[str, ...], int] | None = None

    @contextmanager
    def parent(self, parts: tuple[str, ...], create: bool = True) -> Iterator[int]:
        if create and self._last is not None and self._last[0] == parts:
            yield self._last[1]
            return
        fd = os.dup(self.fd)
        try:
            for name in parts:
                if create:
                    with suppress(FileExistsError):
                        os.mkdir(name, 0o755, dir_fd=fd)
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        if not create:
            try:
                yield fd
            finally:
                os.close(fd)
            return
        self._forget_last()
        self._last = (parts, fd)
        yield fd

    def _forget_last(self) -> None:
        if self._last is not None:
            os.close(self._last[1])
            self._last = None

    def write(self, m: Member, source: Any) -> None:
        if m.kind == "dir":
            with self.parent(m.parts):
                return
        with self.parent(m.parts[:-1]) as pfd:
            name = m.parts[-1]
            if m.kind == "symlink":
                os.symlink(m.target, name, dir_fd=pfd)
            elif m.kind == "hardlink":  # a copy: a second link would be refused later
                with self.parent(tuple(m.target.split("/"))[:-1], create=False) as sfd, \
                        os.fdopen(os.open(m.target.split("/")[-1],
                                          os.O_RDONLY | os.O_NOFOLLOW, dir_fd=sfd),
                                  "rb") as src:
                    self._copy(m, pfd, name, src, os.fstat(src.fileno()).st_size)
            else:
                opened = source() if callable(source) else source
                with opened as src:
                    self._copy(m, pfd, name, src, m.size)

    def _copy(self, m: Member, pfd: int, name: str, src: IO[bytes], size: int) -> None:
        fd = os.open(name, _NEW, (m.mode | 0o600) & 0o755, dir_fd=pfd)
        with os.fdopen(fd, "wb") as out:
            written = 0
            while data := src.read(CHUNK):
                written += len(data)
                self.left -= len(data)
                if written > size or self.left < 0:
                    raise _bad(m.raw, "holds more bytes than it declares")
                out.write(data)

    def commit(self, to: str) -> Entry:
        self._forget_last()
        os.fchmod(self.fd, 0o755)
        os.close(self.fd)
        self.fd = -1
        try:
            os.stat(to, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            raise errors.Exists(f"{to}: exists")
        os.rename(self.name, to, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        return entry(self.dir_fd, to)

    def remove(self) -> None:
        self._forget_last()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with suppress(OSError):
            shutil.rmtree(self.name, dir_fd=self.dir_fd)


def default_target(name: str) -> str:
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)]
    return name + ".d"


def extract(tree: FilesTree, path: str, to: str | None, max_bytes: int,
            room: int | None = None) -> Entry:
    """`room`: the bytes the server's disk limit leaves (None: no limit)."""
    try:
        return _extract(tree, path, to, max_bytes, room)
    except (errors.ManmanError, MemoryError):
        raise
    except OSError as e:
        if e.errno is not None:
            raise os_error(e, parse(path)) from None
        raise _unreadable(e) from None
    except Exception as e:  # the archive libraries' many ways of saying "damaged"
        raise _unreadable(e) from None


def _unreadable(e: Exception) -> errors.Invalid:
    return errors.Invalid(f"the archive cannot be read ({type(e).__name__}: {str(e)[:200]}); "
                          "nothing was extracted")


def _extract(tree: FilesTree, path: str, to: str | None, max_bytes: int,
             room: int | None) -> Entry:
    """Extract the archive at `path` into the new directory `to` (default: beside it, named
    after it without its suffix); 409 when `to` exists."""
    source = parse(path)
    if not source:
        raise errors.Invalid("extract needs the archive's path")
    parts = parse(to) if to is not None else (*source[:-1], default_target(source[-1]))
    if not parts:
        raise errors.Invalid("extract needs a new directory to extract into")
    tree.denylist.check(parts)
    fd, _ = tree.open_read(path)
    with os.fdopen(fd, "rb") as f:
        archive = Archive(f)
        _, total = survey(archive, max_bytes)
        if room is not None and total > room:
            raise errors.DiskLimit(f"the archive unpacks to {total} bytes; the server's disk "
                                   f"limit (limits.disk_mb) leaves room for {max(room, 0)}: "
                                   "refused, nothing was extracted")
        with tree.directory(parts[:-1]) as dfd:
            try:
                os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise os_error(e, parts) from None
            else:
                raise errors.Exists(f"{'/'.join(parts)}: exists")
            try:
                staging = Staging(dfd, f".manman-extract-{secrets.token_hex(8)}", max_bytes)
            except OSError as e:
                raise os_error(e, parts) from None
            try:
                for m, source in archive.members():
                    # a denied member refuses the archive whole, as a bad one does
                    tree.denylist.check((*parts, *m.parts))
                    try:
                        staging.write(m, source)
                    except OSError as e:
                        if e.errno in (errno.ENOSPC, errno.EDQUOT) or e.errno is None:
                            raise
                        # e.g. a path through a link an earlier member made: not followed
                        raise _bad(m.raw, f"cannot be written ({os.strerror(e.errno)})"
                                   ) from None
                return staging.commit(parts[-1])
            except BaseException:
                staging.remove()
                raise

