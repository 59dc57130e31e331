"""Linux inotify through libc (ctypes): one instance, watches added and removed by path, its
events read without blocking as (watch descriptor, mask) pairs; names are not decoded (the
disk accounting re-reads a whole directory, it never needs them)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# what changes the blocks below a directory: a file's size (write, truncate, fallocate; mmap
# writes show at close), its link count (a hard link made elsewhere), entries coming and going
DIR_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
            | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW
            | IN_EXCL_UNLINK)
# events that add or remove an entry: the directory's own size may change with them
ENTRIES = IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
SELF_GONE = IN_DELETE_SELF | IN_MOVE_SELF

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (of the name that follows)
READ_SIZE = 1 << 16

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_init1.restype = ctypes.c_int
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_add_watch.restype = ctypes.c_int
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.inotify_rm_watch.restype = ctypes.c_int
        _libc = lib
    return _libc


def _error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


class Inotify:
    """One inotify instance (non-blocking, close-on-exec)."""

    def __init__(self) -> None:
        fd = _lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise _error("inotify_init1")
        self.fd = fd

    def add(self, path: str | bytes, mask: int = DIR_MASK) -> int:
        """The watch descriptor of the directory at `path` (the same one again for a directory
        already watched). OSError: ENOSPC when fs.inotify.max_user_watches is reached."""
        raw = os.fsencode(path)
        wd = _lib().inotify_add_watch(self.fd, raw, mask)
        if wd < 0:
            raise _error(f"inotify_add_watch {raw[-200:]!r}")
        return wd

    def remove(self, wd: int) -> None:
        """Stop watching (a watch already gone, with its directory, is no error)."""
        if self.fd >= 0 and _lib().inotify_rm_watch(self.fd, wd) < 0 \
                and ctypes.get_errno() != errno.EINVAL:
            raise _error("inotify_rm_watch")

    def read(self) -> list[tuple[int, int]]:
        """The events queued now, as (wd, mask); [] when there are none."""
        out: list[tuple[int, int]] = []
        unpack = _HEADER.unpack_from
        while True:
            try:
                buf = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                return out
            pos, end = 0, len(buf)
            while pos < end:
                wd, mask, _cookie, size = unpack(buf, pos)
                out.append((wd, mask))
                pos += 16 + size
            if end < READ_SIZE - 4096:  # a short read: the queue is empty
                return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
