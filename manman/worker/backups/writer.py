"""Writing one backup: a tar.zst (zstd level 3) of a server's files directory, streamed in
constant memory, its sha256 and size taken as it is written, throttled to `write_limit` MiB/s.

The tree is walked from a descriptor of the files directory with `O_NOFOLLOW` at every step,
as the file routes do (manman.worker.files.safe): a symbolic link is stored as a link and
never followed, so nothing outside the tree can be read through one. A file with more than one
hard link (its other name may be outside the tree), a link pointing out of the tree (a
restore would refuse it), a fifo, socket or device is left out and counted. `backup.paths`
narrows what is taken; a `.manmanignore` at the root (gitignore syntax, `pathspec`) leaves
matching paths out.

The archive is written to a hidden temporary file beside its final name, synced, then renamed:
a failure (a full disk) or a cancel removes it, and no half archive ever has the final name.
Everything here blocks; the manager runs it in a thread.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pathspec
import zstandard

from manman import errors
from manman.worker.files.extract import check
from manman.worker.files.safe import DIR_FLAGS, FilesTree, parse

IGNORE_FILE = ".manmanignore"
MAX_IGNORE_BYTES = 1 << 20
LEVEL = 3
# one compression thread beside the reading one: the pipeline of `tar | zstd`, no more
THREADS = 1
CHUNK = 1 << 20
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
# what the file routes and restores leave while they work: never backed up
_OURS = (".manman-upload-", ".manman-extract-")
MIB = 1024 * 1024


class BackupCancelled(Exception):
    """The worker is stopping: the partial archive is removed."""


@dataclass
class Written:
    bytes: int
    sha256: str
    skipped: int  # hard-linked files, fifos, sockets and devices left out


class Sink:
    """The archive's bytes on their way to disk: hashed, counted and paced."""

    def __init__(self, out: IO[bytes], limit_mib: float, cancel: threading.Event,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0
        self.rate = limit_mib * MIB  # bytes per second; 0: as fast as it goes
        self.cancel = cancel
        self.clock = clock
        self.began = clock()

    def write(self, data: bytes | memoryview) -> int:
        if self.cancel.is_set():
            raise BackupCancelled
        self.out.write(data)
        self.sha.update(data)
        self.size += len(data)
        if self.rate:
            ahead = self.size / self.rate - (self.clock() - self.began)
            if ahead > 0 and self.cancel.wait(ahead):  # wakes at once on a cancel
                raise BackupCancelled
        return len(data)

    def flush(self) -> None:
        self.out.flush()


class _Exactly:
    """`size` bytes of a file that may change while it is read (a live game's): a file that
    shrank is padded with zeros, one that grew is cut, so the tar stream stays whole."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f = f
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n) if n else b""
        if len(data) < n:
            data += bytes(n - len(data))
        self.left -= len(data)
        return data


def ignore_spec(root_fd: int) -> pathspec.PathSpec | None:
    """The `.manmanignore` at the root (never followed if a link), or None."""
    try:
        fd = os.open(IGNORE_FILE, _READ, dir_fd=root_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = f.read(MAX_IGNORE_BYTES).decode("utf-8", "replace")
    return pathspec.GitIgnoreSpec.from_lines(text.splitlines())


class _Walk:
    def __init__(self, tar: tarfile.TarFile, ignore: pathspec.PathSpec | None) -> None:
        self.tar = tar
        self.ignore = ignore
        self.skipped = 0

    def add(self, dfd: int, name: str, arc: str) -> None:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:  # gone since it was listed (a live game)
            return
        is_dir = stat.S_ISDIR(st.st_mode)
        if self.ignore is not None and self.ignore.match_file(arc + ("/" if is_dir else "")):
            return
        ti = tarfile.TarInfo(arc)
        ti.mode, ti.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
        if stat.S_ISLNK(st.st_mode):
            ti.type = tarfile.SYMTYPE
            ti.linkname = os.fsdecode(os.readlink(os.fsencode(name), dir_fd=dfd))
            try:  # a link out of the tree would make the restore refuse the whole archive
                check(arc, "symlink", ti.linkname, set())
            except errors.Invalid:
                self.skipped += 1
                return
            self.tar.addfile(ti)
        elif is_dir:
            try:
                sub = os.open(name, DIR_FLAGS, dir_fd=dfd)
            except OSError:  # swapped for a link since the stat: not followed
                self.skipped += 1
                return
            try:
                ti.type = tarfile.DIRTYPE
                self.tar.addfile(ti)
                for child in sorted(os.listdir(sub)):
                    if not child.startswith(_OURS):
                        self.add(sub, child, f"{arc}/{child}")
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            self._file(dfd, name, ti)
        else:
            self.skipped += 1

    def _file(self, dfd: int, name: str, ti: tarfile.TarInfo) -> None:
        try:
            fd = os.open(name, _READ, dir_fd=dfd)
        except OSError:  # gone, or swapped for a link or a fifo: not followed
            self.skipped += 1
            return
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)  # what is read, not what the name was a moment ago
            if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
                self.skipped += 1
                return
            os.set_blocking(fd, True)
            ti.size = st.st_size
            self.tar.addfile(ti, _Exactly(f, st.st_size))


def write_backup(files_dir: Path, dest: Path, paths: list[str], write_limit_mib: float,
                 cancel: threading.Event) -> Written:
    """The archive `dest` of the files directory (or of `paths` in it)."""
    wanted = [parse(p) for p in paths]
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = dest.with_name(f".{dest.name}.partial")
    out = open(temp, "wb")  # noqa: SIM115 (closed below, removed on failure)
    try:
        sink = Sink(out, write_limit_mib, cancel)
        zw = zstandard.ZstdCompressor(level=LEVEL, threads=THREADS).stream_writer(
            sink, closefd=False)  # type: ignore[arg-type]  # any object with write()
        # written straight into the compressor: no tar record buffering in between
        tar = tarfile.TarFile(fileobj=zw, mode="w", copybufsize=CHUNK,
                              format=tarfile.PAX_FORMAT)
        tree = FilesTree(files_dir)
        with tree.directory(()) as root:
            walk = _Walk(tar, ignore_spec(root))
            if not wanted:
                for child in sorted(os.listdir(root)):
                    if not child.startswith(_OURS):
                        walk.add(root, child, child)
            for parts in wanted:
                if not parts:
                    raise errors.Invalid("backup.paths: a path must name something")
                try:
                    with tree.directory(parts[:-1]) as dfd:
                        walk.add(dfd, parts[-1], "/".join(parts))
                except errors.NotFound:  # a path the game has not made (yet)
                    continue
        tar.close()
        zw.close()
        out.flush()
        os.fsync(out.fileno())
        out.close()
        os.rename(temp, dest)
        return Written(sink.size, sink.sha.hexdigest(), walk.skipped)
    except BaseException:
        with suppress(OSError):  # first: closing flushes, which fails again on a full disk
            os.unlink(temp)
        with suppress(OSError):
            out.close()
        raise


def file_sha256(path: Path, cancel: threading.Event) -> tuple[int, str]:
    """(size, sha256) of a stored archive."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while data := f.read(CHUNK):
            if cancel.is_set():
                raise BackupCancelled
            sha.update(data)
            size += len(data)
    return size, sha.hexdigest()
