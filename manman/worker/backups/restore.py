"""Restoring a backup into a server's files directory, with the extractor's safety rules.

The archive's sha256 is checked against the one recorded before anything is touched: a
damaged archive fails the restore and leaves the files as they were. Every member is then
checked (manman.worker.files.extract: no absolute path, no `..`, no link out of the tree, no
device or fifo) before any is written, and the archive is refused whole if one fails. Members
are written into a fresh hidden directory inside the files directory, with the same
descriptor walk that never follows a link; only once all is written are they moved into
place: with `truncate`, over an emptied files directory; without, over what is there (a
file the backup holds replaces the present one, others stay). Everything here blocks.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import threading
from contextlib import suppress
from pathlib import Path

from manman import errors
from manman.worker.backups.writer import BackupCancelled, file_sha256
from manman.worker.files.extract import Archive, Staging
from manman.worker.files.safe import DIR_FLAGS, FilesTree


class Corrupt(errors.Invalid):
    code = "corrupt_backup"


def restore_backup(archive: Path, sha256: str, files_dir: Path, truncate: bool,
                   cancel: threading.Event) -> None:
    _, found = file_sha256(archive, cancel)
    if found != sha256:
        raise Corrupt(f"the archive's sha256 is {found}, not the {sha256} recorded when it "
                      "was made: it is damaged; nothing was restored")
    try:
        _restore(archive, files_dir, truncate, cancel)
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


def _restore(archive_path: Path, files_dir: Path, truncate: bool,
             cancel: threading.Event) -> None:
    with open(archive_path, "rb") as f:
        archive = Archive(f)
        total = 0
        for m, _ in archive.members():  # each member checked before any is written
            total += m.size
        tree = FilesTree(files_dir)
        with tree.directory(()) as root:
            staging = Staging(root, f".manman-extract-{secrets.token_hex(8)}", total)
            try:
                for m, source in archive.members():
                    if cancel.is_set():
                        raise BackupCancelled
                    try:
                        staging.write(m, source)
                    except OSError as e:
                        if e.errno in (errno.ENOSPC, errno.EDQUOT) or e.errno is None:
                            raise
                        raise errors.Invalid(f"the archive's member {m.raw[:200]!r} cannot be "
                                             f"written ({os.strerror(e.errno)}); nothing was "
                                             "restored") from None
                if truncate:
                    for name in os.listdir(root):
                        if name != staging.name:
                            _remove(root, name)
                _merge(staging.fd, root)
            finally:
                staging.remove()


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
