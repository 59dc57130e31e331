"""The bytes below one files directory, kept up to date by directory: one full walk, then
only the directories inotify marked are read again (docs/spec.md, "Disk limit").

Counted as `du` counts (manman.worker.stats.disk.tree_bytes, the full walk this must always
agree with): allocated blocks, hard links once, symbolic links not followed, the top
directory itself not counted. What is kept is a record per directory (not per file: a tree
of a million files costs its directories' count): the bytes of its entries (files, links,
its subdirectories' own blocks), its subdirectories by (device, inode), and its names of
files with more than one link, counted apart once per inode. Everything here blocks: it runs
in a thread, one at a time per tree (`lock`).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("manman.worker.disk")

Key = tuple[int, int]  # (st_dev, st_ino)

# a watch that cannot be added for lack of room: the tree is walked whole instead
OUT_OF_WATCHES = (errno.ENOSPC, errno.ENOMEM, errno.EMFILE)


class Watches(Protocol):
    def add(self, path: str) -> int: ...

    def remove(self, wd: int) -> None: ...


class WatchLimit(Exception):
    """No more inotify watches (fs.inotify.max_user_watches)."""


@dataclass(slots=True)
class _Dir:
    own: int = 0  # bytes of its entries, multi-linked files apart
    subdirs: dict[str, Key] = field(default_factory=dict)
    linked: dict[str, Key] = field(default_factory=dict)  # names of files with nlink > 1
    wd: int = -1


@dataclass(slots=True)
class Batch:
    """What inotify said since the last refresh."""

    dirty: set[int] = field(default_factory=set)  # wds whose entries changed
    parents: set[int] = field(default_factory=set)  # wds that gained or lost an entry
    ignored: set[int] = field(default_factory=set)  # wds the kernel dropped
    walk: bool = False  # start over: a full walk


class TreeUsage:
    """One files directory's bytes. `watches` None: every refresh is a full walk."""

    def __init__(self, root: str, watches: Watches | None) -> None:
        self.root = root
        self.watches = watches
        self.lock = threading.Lock()
        self.total = 0
        self.measured = False
        self.fallback = watches is None  # no watches (none possible, or none left)
        self.statted = 0  # entries read, ever (the tests count a refresh's cost with it)
        self.walks = 0
        self._dirs: dict[str, _Dir] = {}
        self._links: dict[Key, list[int]] = {}  # key: [names seen, bytes]
        self._wds: dict[int, str] = {}  # wd: directory (relative; "" the top)
        # during a refresh: link counts read, and inodes newly seen under a second name
        self._nlinks: dict[Key, int] = {}
        self._suspects: set[Key] | None = None
        self.pending = Batch(walk=True)  # filled by the event reader (trio's thread)

    # -- events (the trio thread) ------------------------------------------------------

    def take(self) -> Batch:
        batch, self.pending = self.pending, Batch()
        return batch

    def top_wd(self) -> int:
        top = self._dirs.get("")
        return top.wd if top is not None else -1

    # -- refresh (a thread) ------------------------------------------------------------

    def refresh(self, batch: Batch) -> int:
        """Apply what `batch` says; returns the total."""
        with self.lock:
            for wd in batch.ignored:
                path = self._wds.pop(wd, None)
                if path == "":  # the top directory itself is gone: look again for it
                    batch.walk = True
            if batch.walk or self.fallback or "" not in self._dirs:
                self._walk_all()
            else:
                self._apply(batch)
            self.measured = True
            return self.total

    def close(self) -> None:
        """Drop the watches (the server is deleted)."""
        with self.lock:
            for wd in self._wds:
                self._unwatch(wd)
            self._wds.clear()
            self._dirs.clear()

    def _apply(self, batch: Batch) -> None:
        paths = {p for wd in batch.dirty if (p := self._wds.get(wd)) is not None}
        for wd in batch.parents:
            p = self._wds.get(wd)
            if p:  # (the top directory's own blocks are not counted)
                paths.add(p.rpartition("/")[0])
        gone: set[int] = set()
        self._suspects = set()
        try:
            for path in sorted(paths, key=lambda p: (p.count("/"), p)):  # parents first
                if path in self._dirs:
                    self._rescan(path, gone)
        except WatchLimit:
            self._give_up_watching()
            self._walk_all()
            return
        finally:
            suspects, self._suspects = self._suspects, None
            nlinks, self._nlinks = self._nlinks, {}
        for wd in gone - self._wds.keys():  # moved out of the tree, or deleted
            self._unwatch(wd)
        # a hard link made to a file counted as singly linked: its first name is in a
        # directory no event marked (the kernel tells only the file's own watches of its new
        # link count), so it is counted twice. Rare (games hardly make hard links): a walk.
        if any(self._links.get(k, (0,))[0] < nlinks.get(k, 0) for k in suspects):
            self._walk_all()

    def _walk_all(self) -> None:
        self.walks += 1
        old = set(self._wds)
        self.total = 0
        self._dirs.clear()
        self._links.clear()
        self._wds.clear()
        try:
            if not self.fallback:
                try:
                    self._add_tree("")
                except WatchLimit:
                    self._give_up_watching()
                    self.total = 0
                    self._dirs.clear()
                    self._links.clear()
            if self.fallback:
                self._add_tree("")
        finally:
            self._nlinks.clear()  # (a walk sees every name: its counts are whole)
            for wd in old - self._wds.keys():
                self._unwatch(wd)

    def _give_up_watching(self) -> None:
        log.warning("disk of %s: no inotify watch left (fs.inotify.max_user_watches); "
                    "walking it whole every check instead", self.root)
        self.fallback = True
        for wd in self._wds:
            self._unwatch(wd)
        self._wds.clear()

    def _unwatch(self, wd: int) -> None:
        if self.watches is not None:
            with suppress(OSError):
                self.watches.remove(wd)

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path) if path else self.root

    def _watch(self, path: str) -> int:
        if self.fallback or self.watches is None:
            return -1
        try:
            wd = self.watches.add(self._full(path))
        except OSError as e:
            if e.errno in OUT_OF_WATCHES:
                raise WatchLimit from None
            return -1  # gone meanwhile, or not a directory any more: the parent says so
        self._wds[wd] = path
        return wd

    def _read(self, path: str) -> tuple[_Dir, Iterable[tuple[str, Key]]] | None:
        """One directory's entries, read now: its record (no wd yet) and its subdirectories;
        None when it is not there (or not a directory) any more. The link count of each
        multi-linked file is left in `_nlinks` (for `_suspect`)."""
        d = _Dir()
        subdirs: list[tuple[str, Key]] = []
        try:
            with os.scandir(self._full(path)) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    self.statted += 1
                    size = st.st_blocks * 512
                    if stat.S_ISDIR(st.st_mode):
                        subdirs.append((e.name, (st.st_dev, st.st_ino)))
                        d.own += size
                    elif st.st_nlink > 1 and not stat.S_ISLNK(st.st_mode):
                        key = (st.st_dev, st.st_ino)
                        d.linked[e.name] = key
                        self._nlinks[key] = st.st_nlink
                        self._seen(key, size)
                    else:
                        d.own += size
        except OSError:
            return None
        d.subdirs = dict(subdirs)
        return d, subdirs

    def _seen(self, key: Key, size: int) -> None:
        """Bytes of a multi-linked inode, as read now (its count is kept by _link)."""
        entry = self._links.get(key)
        if entry is None:
            self._links[key] = [0, size]
        elif entry[1] != size:
            if entry[0]:
                self.total += size - entry[1]
            entry[1] = size

    def _link(self, key: Key, delta: int) -> None:
        entry = self._links[key]
        before = entry[0]
        entry[0] += delta
        if before == 0 and entry[0] > 0:
            self.total += entry[1]
        elif before > 0 and entry[0] == 0:
            self.total -= entry[1]
            del self._links[key]

    def _add_tree(self, top: str) -> None:
        """A directory not counted yet, and all below it: watched before it is read, so a
        change made meanwhile is an event for the next refresh."""
        stack = [top]
        while stack:
            path = stack.pop()
            wd = self._watch(path)
            got = self._read(path)
            if got is None:
                continue
            d, subdirs = got
            d.wd = wd
            self._dirs[path] = d
            self.total += d.own
            for key in d.linked.values():
                self._link(key, +1)
            if self._suspects is not None:  # (a refresh's new directory, not a walk)
                self._suspects.update(d.linked.values())
            prefix = path + "/" if path else ""
            stack.extend(prefix + name for name, _ in subdirs)

    def _drop_tree(self, top: str, gone: set[int]) -> None:
        stack = [top]
        while stack:
            path = stack.pop()
            d = self._dirs.pop(path, None)
            if d is None:
                continue
            self.total -= d.own
            for key in d.linked.values():
                self._link(key, -1)
            if d.wd >= 0 and self._wds.get(d.wd) == path:
                del self._wds[d.wd]
                gone.add(d.wd)
            stack.extend(f"{path}/{name}" if path else name for name in d.subdirs)

    def _rescan(self, path: str, gone: set[int]) -> None:
        old = self._dirs[path]
        got = self._read(path)
        if got is None:  # gone: its parent's rescan drops it (the event marked the parent)
            return
        new, _ = got
        new.wd = old.wd
        self.total += new.own - old.own
        for key in new.linked.values():
            self._link(key, +1)
        for key in old.linked.values():
            self._link(key, -1)
        if self._suspects is not None:
            self._suspects.update(k for n, k in new.linked.items() if old.linked.get(n) != k)
        prefix = path + "/" if path else ""
        for name, key in old.subdirs.items():
            if new.subdirs.get(name) != key:
                self._drop_tree(prefix + name, gone)
        self._dirs[path] = new
        for name, key in new.subdirs.items():
            if old.subdirs.get(name) != key:
                self._add_tree(prefix + name)
