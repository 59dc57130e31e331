"""Restoring a backup into a server's files directory, with the extractor's safety rules.

The archive is read once: its bytes are hashed as they are decompressed, and each member is
checked (manman.worker.files.extract: no absolute path, no `..`, no link out of the tree, no
device or fifo) and written into a fresh hidden directory inside the files directory, with
the same descriptor walk that never follows a link. Only when the whole archive is written
and its sha256 is the one recorded is anything moved into place: with `truncate`, over an
emptied files directory; without, over what is there (a file the backup holds replaces the
present one, others stay). A damaged archive or a bad member removes the hidden directory
and leaves the files as they were. Everything here blocks.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import zstandard

from manman import errors
from manman.worker.backups.tarread import Ahead, TarReader, TooBig
from manman.worker.backups.writer import CHUNK, BackupCancelled
from manman.worker.files.extract import MAX_HEADER, Seen, Staging, _tar_member
from manman.worker.files.safe import DIR_FLAGS, FilesTree

BLOCK = 4096  # a file's size on disk is whole blocks of this (ext4, xfs)
MAX_BYTES = 1 << 62  # the archive is ours, its sha256 checked: the disk is the limit


class Corrupt(errors.Invalid):
    code = "corrupt_backup"


class _Hashing:
    """The archive file, hashed as it is read."""

    def __init__(self, f: object) -> None:
        self.f = f
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.f.read(n)  # type: ignore[attr-defined]
        self.sha.update(data)
        return data

    def rest(self) -> str:
        """The sha256 of the whole file, once the rest of it is read."""
        while self.read(CHUNK):
            pass
        return self.sha.hexdigest()


def restore_backup(archive: Path, sha256: str, files_dir: Path, truncate: bool,
                   cancel: threading.Event) -> None:
    try:
        _restore(archive, sha256, files_dir, truncate, cancel)
    except (errors.ManmanError, BackupCancelled, MemoryError):
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise errors.InsufficientStorage(f"disk full while restoring ({e.strerror}); the "
                                             "files were left as they were") from None
        raise errors.Invalid(f"the restore failed: {e}") from None
    except Exception as e:  # the archive libraries' many ways of saying "damaged"
        raise Corrupt(f"the archive cannot be read ({type(e).__name__}: {str(e)[:200]}); "
                      "nothing was restored") from None


def unpacked_size(archive: Path) -> int:
    """The bytes the archive's members would take on disk (read through once, nothing
    written): what a restore would add, checked against the server's disk limit first."""
    try:
        with open(archive, "rb") as f:
            reader = zstandard.ZstdDecompressor().stream_reader(f, read_size=CHUNK)
            total = 0
            for ti, _ in _members(lambda: reader.read(CHUNK)):
                # as the disk check counts: whole blocks, a block a directory
                total += -(-ti.size // BLOCK) * BLOCK if ti.isreg() else BLOCK
            return total
    except OSError as e:
        raise errors.Invalid(f"the backup cannot be read: {e}") from None
    except Exception as e:  # the archive libraries' many ways of saying "damaged"
        raise Corrupt(f"the archive cannot be read ({type(e).__name__}: {str(e)[:200]}); "
                      "nothing was restored") from None


def _damaged(found: str, sha256: str) -> Corrupt:
    return Corrupt(f"the archive's sha256 is {found}, not the {sha256} recorded when it was "
                   "made: it is damaged; nothing was restored")


def _restore(archive_path: Path, sha256: str, files_dir: Path, truncate: bool,
             cancel: threading.Event) -> None:
    with open(archive_path, "rb") as f:
        src = _Hashing(f)
        tree = FilesTree(files_dir)
        with tree.directory(()) as root:
            staging = Staging(root, f".manman-extract-{secrets.token_hex(8)}", MAX_BYTES)
            try:
                try:
                    _unpack(src, staging, cancel)
                except (BackupCancelled, MemoryError):
                    raise
                except Exception:
                    found = src.rest()  # a damaged archive says so, whatever broke first
                    if found != sha256:
                        raise _damaged(found, sha256) from None
                    raise
                found = src.rest()
                if found != sha256:
                    raise _damaged(found, sha256)
                if truncate:
                    for name in os.listdir(root):
                        if name != staging.name:
                            _remove(root, name)
                _merge(staging.fd, root)
            finally:
                staging.remove()


def _unpack(src: _Hashing, staging: Staging, cancel: threading.Event) -> None:
    """Every member checked and written below `staging` (Invalid naming a bad one)."""
    reader = zstandard.ZstdDecompressor().stream_reader(
        src, read_size=CHUNK)  # type: ignore[arg-type]  # any object with read()
    ahead = Ahead(reader.read, CHUNK)
    try:
        files: Seen = set()
        for ti, data in _members(ahead.next_chunk):
            if cancel.is_set():
                raise BackupCancelled
            m = _tar_member(ti, files)
            try:
                staging.write(m, data if m.kind == "file" else None)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT) or e.errno is None:
                    raise
                raise errors.Invalid(f"the archive's member {m.raw[:200]!r} cannot be "
                                     f"written ({os.strerror(e.errno)}); nothing was "
                                     "restored") from None
    finally:
        ahead.close()  # before the rest of the archive is hashed: one reader of the file


def _members(next_chunk: Callable[[], bytes]) -> Iterator[tuple[tarfile.TarInfo, Any]]:
    try:
        yield from TarReader(next_chunk, MAX_HEADER).members()
    except TooBig as e:
        raise errors.Invalid(f"the archive has a {e.args[0]}-byte extension header (at most "
                             f"{MAX_HEADER}); nothing was extracted") from None


def _remove(dfd: int, name: str) -> None:
    """A name beneath `dfd`: a directory with all in it (never through a link), else the
    name itself."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dfd)
    else:
        os.unlink(name, dir_fd=dfd)


def _merge(src: int, dst: int) -> None:
    """Move everything in `src` into `dst`: directories present in both are merged, any
    other name present in `dst` is replaced."""
    for name in os.listdir(src):
        here = os.stat(name, dir_fd=src, follow_symlinks=False)
        try:
            there: os.stat_result | None = os.stat(name, dir_fd=dst, follow_symlinks=False)
        except FileNotFoundError:
            there = None
        if there is not None and stat.S_ISDIR(here.st_mode) and stat.S_ISDIR(there.st_mode):
            sub_src = os.open(name, DIR_FLAGS, dir_fd=src)
            try:
                sub_dst = os.open(name, DIR_FLAGS, dir_fd=dst)
                try:
                    _merge(sub_src, sub_dst)
                finally:
                    os.close(sub_dst)
            finally:
                os.close(sub_src)
            continue
        if there is not None:
            _remove(dst, name)
        os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)


def remove_quietly(path: Path) -> None:
    with suppress(OSError):
        path.unlink()
