"""A server's files directory, reached only from below: every path is resolved one component
at a time from a descriptor of the files directory (`dir_fd` + `O_NOFOLLOW`), so `..`, an
absolute path or a symbolic link can never lead out of it, not even one the game swaps in
between two calls (each call re-walks from the root and holds descriptors, not names).

Symbolic links are listed (type `link`, with their target text) but never followed, neither
in the middle of a path nor at its end. A regular file with more than one hard link is
neither read nor written: its other name may be outside the tree (a game running as the
worker's user can `ln` any file it can reach, e.g. the worker's own api-token), and from
inside we cannot tell. Deleting or renaming such a name is allowed: it touches only the name.

Everything here is blocking (system calls); the API runs it in a thread.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import msgspec

from manman import errors
from manman.worker.files.denylist import Denylist

MAX_NAME = 255  # bytes: the limit of Linux file systems
MAX_PATH = 4096
MAX_DEPTH = 256

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a fifo the game left must not hang; it is refused after the fstat
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Entry(msgspec.Struct):
    name: str
    type: str  # file | dir | link | other (a fifo, socket or device the game made)
    size: int
    mode: int  # permission bits (st_mode & 0o7777)
    mtime: float
    target: str | None = None  # a link's text, never followed


class Listing(msgspec.Struct):
    entries: list[Entry]
    next_cursor: str | None


def parse(path: str) -> tuple[str, ...]:
    """A path relative to the files directory → its components ('' and '.' dropped);
    Invalid for NUL, an absolute path, `..`, a name over 255 bytes or a path over 4096."""
    if "\x00" in path:
        raise errors.Invalid("a path may not contain NUL")
    if path.startswith("/"):
        raise errors.Invalid("absolute paths are not accepted: paths are relative to the "
                             "server's files directory")
    try:
        encoded = os.fsencode(path)
    except UnicodeEncodeError:
        raise errors.Invalid("the path is not valid text") from None
    if len(encoded) > MAX_PATH:
        raise errors.Invalid(f"the path is longer than {MAX_PATH} bytes")
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    for p in parts:
        if p == "..":
            raise errors.Invalid("'..' is not accepted in a path")
        if len(os.fsencode(p)) > MAX_NAME:
            raise errors.Invalid(f"a name in the path is longer than {MAX_NAME} bytes")
    if len(parts) > MAX_DEPTH:
        raise errors.Invalid(f"the path is deeper than {MAX_DEPTH} directories")
    return parts


def _shown(parts: tuple[str, ...]) -> str:
    return "/".join(parts)[:300] or "/"


def os_error(e: OSError, parts: tuple[str, ...]) -> errors.ManmanError:
    """A system call's failure on `parts` as the caller's error."""
    where = _shown(parts)
    if e.errno == errno.ENOENT:
        return errors.NotFound(f"{where}: no such file or directory")
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return errors.Invalid(f"{where}: not a directory, or a symbolic link (links are "
                              "not followed)")
    if e.errno == errno.EEXIST:
        return errors.Exists(f"{where}: exists")
    if e.errno == errno.ENOTEMPTY:
        return errors.Conflict(f"{where}: directory not empty")
    if e.errno == errno.EISDIR:
        return errors.Invalid(f"{where}: is a directory")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return errors.InsufficientStorage(f"{where}: no space left on the device")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return errors.Forbidden(f"{where}: permission denied")
    if e.errno in (errno.EINVAL, errno.ENAMETOOLONG, errno.EXDEV):
        return errors.Invalid(f"{where}: {os.strerror(e.errno)}")
    raise e


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def entry(dir_fd: int, name: str) -> Entry:
    """The entry `name` of a directory, as it is (a link is not followed)."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    kind = _kind(st.st_mode)
    target = None
    if kind == "link":
        raw = os.readlink(os.fsencode(name), dir_fd=dir_fd)
        target = raw.decode("utf-8", "replace")
    return Entry(name, kind, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime, target)


def _check_single_link(st: os.stat_result, parts: tuple[str, ...]) -> None:
    if st.st_nlink > 1:
        raise errors.Invalid(f"{_shown(parts)}: has {st.st_nlink} hard links; a file with "
                             "another name (maybe outside the files directory) is not "
                             "read or written")


class FilesTree:
    """One server's files directory (created on first use); `denylist`: the spec's
    `file_denylist`, paths no route reads or writes (the backups' walk has none)."""

    def __init__(self, root: Path, denylist: Denylist | None = None) -> None:
        self.root = root
        self.denylist = denylist or Denylist()

    def _open_root(self) -> int:
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:  # the files directory itself may not be a link either
            return os.open(self.root, DIR_FLAGS)
        except OSError as e:
            raise os_error(e, ()) from None

    @contextmanager
    def directory(self, parts: tuple[str, ...]) -> Iterator[int]:
        """A descriptor of the directory at `parts`, walked from the root without following
        any link."""
        fd = self._open_root()
        try:
            for i, name in enumerate(parts):
                try:
                    child = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    raise os_error(e, parts[:i + 1]) from None
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _named(parts: tuple[str, ...], what: str) -> tuple[tuple[str, ...], str]:
        if not parts:
            raise errors.Invalid(f"{what} needs a path below the files directory")
        return parts[:-1], parts[-1]

    def list(self, path: str, cursor: str | None, limit: int) -> Listing:
        """Entries sorted by name, `limit` of them after `cursor` (the last name of the page
        before). Names that are not UTF-8 are left out: JSON cannot carry them."""
        parts = parse(path)
        self.denylist.check(parts)  # a denied name is listed, its contents are not
        with self.directory(parts) as fd:
            names = []
            with os.scandir(fd) as it:
                for e in it:
                    if (cursor is None or e.name > cursor) and _utf8(e.name):
                        names.append(e.name)
            names.sort()
            out: list[Entry] = []
            for name in names:
                if len(out) == limit:
                    break
                try:
                    out.append(entry(fd, name))
                except FileNotFoundError:  # gone since the listing
                    continue
        more = len(names) > limit and out
        return Listing(out, out[-1].name if more else None)

    def open_read(self, path: str) -> tuple[int, int]:
        """(a descriptor, its size) of the regular file at `path`."""
        parts = parse(path)
        where, name = self._named(parts, "reading")
        self.denylist.check(parts)
        with self.directory(where) as dfd:
            try:
                fd = os.open(name, _READ, dir_fd=dfd)
            except OSError as e:
                raise os_error(e, parts) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise errors.Invalid(f"{_shown(parts)}: not a regular file")
            _check_single_link(st, parts)
            os.set_blocking(fd, True)
            return fd, st.st_size
        except BaseException:
            os.close(fd)
            raise

    def mkdir(self, path: str) -> Entry:
        parts = parse(path)
        where, name = self._named(parts, "mkdir")
        self.denylist.check(parts)
        with self.directory(where) as dfd:
            try:
                os.mkdir(name, 0o755, dir_fd=dfd)
                return entry(dfd, name)
            except OSError as e:
                raise os_error(e, parts) from None

    def rename(self, src: str, dst: str) -> Entry:
        """Move `src` to `dst`; an existing `dst` is not replaced (409)."""
        sparts, dparts = parse(src), parse(dst)
        swhere, sname = self._named(sparts, "rename")
        dwhere, dname = self._named(dparts, "rename")
        self.denylist.check(sparts)
        self.denylist.check(dparts)
        with self.directory(swhere) as sfd, self.directory(dwhere) as dfd:
            try:
                st = os.stat(sname, dir_fd=sfd, follow_symlinks=False)
            except OSError as e:
                raise os_error(e, sparts) from None
            if stat.S_ISDIR(st.st_mode):  # nothing denied may move out of (or into) denial
                self.denylist.check_below(sfd, sname, sparts, dparts)
            try:
                os.stat(dname, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                raise errors.Exists(f"{_shown(dparts)}: exists")
            try:
                os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
                return entry(dfd, dname)
            except OSError as e:
                raise os_error(e, dparts) from None

    def delete(self, path: str) -> None:
        """Remove a file, a link (not what it points to) or a whole directory."""
        parts = parse(path)
        where, name = self._named(parts, "delete")
        self.denylist.check(parts)
        with self.directory(where) as dfd:
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    self.denylist.check_below(dfd, name, parts)
                    # the fd-based rmtree: it never follows a link out of the tree
                    shutil.rmtree(name, dir_fd=dfd)
                else:
                    os.unlink(name, dir_fd=dfd)
            except OSError as e:
                raise os_error(e, parts) from None

    def upload(self, path: str) -> Upload:
        return Upload(self, parse(path))


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Upload:
    """A new file's bytes go to a temporary file beside the target; `commit` renames it over
    the target, `abort` removes it. Nothing is ever written through an existing name."""

    def __init__(self, tree: FilesTree, parts: tuple[str, ...]) -> None:
        where, self.name = tree._named(parts, "writing")
        tree.denylist.check(parts)
        self.parts = parts
        self.mode = 0o644
        with tree.directory(where) as dfd:
            self.dir_fd = os.dup(dfd)
        try:
            self._check_target()
            self.temp = f".manman-upload-{secrets.token_hex(8)}"
            try:
                self.fd = os.open(self.temp, _TEMP, 0o600, dir_fd=self.dir_fd)
            except OSError as e:
                raise os_error(e, parts) from None
        except BaseException:
            os.close(self.dir_fd)
            raise
        self.done = False

    def _check_target(self) -> None:
        try:
            st = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        except OSError as e:
            raise os_error(e, self.parts) from None
        if stat.S_ISLNK(st.st_mode):
            raise errors.Invalid(f"{_shown(self.parts)}: is a symbolic link (links are not "
                                 "followed)")
        if not stat.S_ISREG(st.st_mode):
            raise errors.Invalid(f"{_shown(self.parts)}: not a regular file")
        _check_single_link(st, self.parts)
        self.mode = stat.S_IMODE(st.st_mode)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as e:
            raise os_error(e, self.parts) from None

    def commit(self) -> Entry:
        try:
            os.fchmod(self.fd, self.mode)
            os.fsync(self.fd)
            self._check_target()  # the game may have swapped the target meanwhile
            os.rename(self.temp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            self.done = True
            return entry(self.dir_fd, self.name)
        except OSError as e:
            raise os_error(e, self.parts) from None
        finally:
            self.close()

    def close(self) -> None:
        """Remove the temporary file unless committed; idempotent."""
        if self.fd < 0:
            return
        os.close(self.fd)
        self.fd = -1
        if not self.done:
            with suppress(OSError):
                os.unlink(self.temp, dir_fd=self.dir_fd)
        os.close(self.dir_fd)
