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

import ctypes
import hashlib
import os
import queue
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
from manman.worker.backups.tarstream import TarStream
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
    read: int  # bytes of the files it holds


SYNC_EVERY = 32 * MIB
PACE_SLICE = 128 * 1024  # a paced backup writes this much, then waits its turn
_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Asks the kernel to begin writing a range to disk without waiting (Linux
    sync_file_range(2)): the disk works while the backup goes on."""
    if _sync_file_range is not None:
        _sync_file_range(fd, ctypes.c_int64(offset), ctypes.c_int64(length),
                         _SYNC_FILE_RANGE_WRITE)


class Sink:
    """The archive's bytes on their way to disk: hashed, counted and paced."""

    def __init__(self, out: IO[bytes], limit_mib: float, cancel: threading.Event,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0
        self.synced = 0  # bytes whose writeback has begun
        self.rate = limit_mib * MIB  # bytes per second; 0: as fast as it goes
        self.cancel = cancel
        self.clock = clock
        self.began = clock()

    def write(self, data: bytes | memoryview) -> int:
        if self.rate and len(data) > PACE_SLICE:  # paced in small steps, not 1 MiB bursts
            view = memoryview(data)
            for i in range(0, len(view), PACE_SLICE):
                self._write(view[i:i + PACE_SLICE])
            return len(data)
        return self._write(data)

    def _write(self, data: bytes | memoryview) -> int:
        if self.cancel.is_set():
            raise BackupCancelled
        self.out.write(data)
        self.sha.update(data)
        self.size += len(data)
        if self.size - self.synced >= SYNC_EVERY:  # the final fsync finds little left to do
            self.out.flush()
            start_writeback(self.out.fileno(), self.synced, self.size - self.synced)
            self.synced = self.size
        if self.rate:
            ahead = self.size / self.rate - (self.clock() - self.began)
            if ahead > 0 and self.cancel.wait(ahead):  # wakes at once on a cancel
                raise BackupCancelled
        return len(data)

    def flush(self) -> None:
        self.out.flush()


class SinkThread:
    """The sink in a thread of its own: hashing and writing the compressed bytes overlap
    with reading and compressing, as `tar | zstd > file` overlaps its processes. At most
    `depth` blocks (of CHUNK bytes at most) wait: memory stays constant (8 MiB) and a slow
    disk holds the reader back."""

    def __init__(self, sink: Sink, depth: int = 8) -> None:
        self.sink = sink
        self.queue: queue.Queue[bytes | None] = queue.Queue(depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="backup-sink", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (data := self.queue.get()) is not None:
            if self.error is None:  # after a failure, drain so that no put waits forever
                try:
                    self.sink.write(data)
                except BaseException as e:  # raised again in the reading thread
                    self.error = e

    def write(self, data: bytes | memoryview) -> int:
        if self.error is not None:
            raise self.error
        if self.sink.cancel.is_set():
            raise BackupCancelled
        self.queue.put(bytes(data))  # the compressor reuses its buffer after the call
        return len(data)

    def flush(self) -> None:
        pass  # the file is flushed and synced once, at the end

    def close(self) -> None:
        """Waits for every block to be written; raises what the writing failed with."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """After a failure: nothing more is written, the thread ends."""
        self.error = self.error or BackupCancelled()
        with suppress(queue.Empty):  # blocks not written yet are dropped
            while True:
                self.queue.get_nowait()
        self.queue.put(None)
        # a paced write in progress ends within one block's time; after that the file is
        # unlinked and closed, so a late write can only fail, never leave bytes anywhere
        self.thread.join(timeout=10)


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
    def __init__(self, tar: TarStream, ignore: pathspec.PathSpec | None) -> None:
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
        mode, mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
        if stat.S_ISLNK(st.st_mode):
            target = os.fsdecode(os.readlink(os.fsencode(name), dir_fd=dfd))
            try:  # a link out of the tree would make the restore refuse the whole archive
                check(arc, "symlink", target, set())
            except errors.Invalid:
                self.skipped += 1
                return
            self.tar.entry(arc, mode, mtime, tarfile.SYMTYPE, target)
        elif is_dir:
            try:
                sub = os.open(name, DIR_FLAGS, dir_fd=dfd)
            except OSError:  # swapped for a link since the stat: not followed
                self.skipped += 1
                return
            try:
                self.tar.entry(arc, mode, mtime, tarfile.DIRTYPE)
                for child in sorted(os.listdir(sub)):
                    if not child.startswith(_OURS):
                        self.add(sub, child, f"{arc}/{child}")
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            self._file(dfd, name, arc, mode, mtime)
        else:
            self.skipped += 1

    def _file(self, dfd: int, name: str, arc: str, mode: int, mtime: int) -> None:
        try:
            fd = os.open(name, _READ, dir_fd=dfd)
        except OSError:  # gone, or swapped for a link or a fifo: not followed
            self.skipped += 1
            return
        try:
            st = os.fstat(fd)  # what is read, not what the name was a moment ago
            if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
                self.skipped += 1
                return
            os.set_blocking(fd, True)
            self.tar.file(arc, mode, mtime, fd, st.st_size)
        finally:
            os.close(fd)


class Progress:
    """How far a backup is, read by the event loop while the writing thread goes on."""

    def __init__(self) -> None:
        self.stream: TarStream | None = None

    @property
    def read(self) -> int:
        return self.stream.data if self.stream is not None else 0


def write_backup(files_dir: Path, dest: Path, paths: list[str], write_limit_mib: float,
                 cancel: threading.Event, progress: Progress | None = None) -> Written:
    """The archive `dest` of the files directory (or of `paths` in it)."""
    wanted = [parse(p) for p in paths]
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = dest.with_name(f".{dest.name}.partial")
    out = open(temp, "wb")  # noqa: SIM115 (closed below, removed on failure)
    behind: SinkThread | None = None
    try:
        sink = Sink(out, write_limit_mib, cancel)
        behind = SinkThread(sink)
        # output in 1 MiB blocks, not zstd's 128 KiB: each block is a hand-over to the sink
        # thread, and fewer hand-overs mean fewer waits for the GIL (a backup 1.4x faster)
        zw = zstandard.ZstdCompressor(level=LEVEL, threads=THREADS).stream_writer(
            behind, write_size=CHUNK,  # type: ignore[arg-type]  # any object with write()
            closefd=False)
        tar = TarStream(zw, CHUNK)
        if progress is not None:
            progress.stream = tar
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
        behind.close()
        out.flush()
        os.fsync(out.fileno())
        out.close()
        os.rename(temp, dest)
        return Written(sink.size, sink.sha.hexdigest(), walk.skipped, tar.data)
    except BaseException:
        if behind is not None:
            behind.abort()
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
