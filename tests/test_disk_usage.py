"""The incremental disk accounting (manman.worker.disk.usage) on a real directory with real
inotify: after every kind of change its total is what a fresh full walk finds, and a
refresh reads only the directories that changed."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from manman.worker.disk import inotify
from manman.worker.disk.usage import TreeUsage
from manman.worker.disk.watch import Watches, mark
from manman.worker.stats.disk import tree_bytes


class Tracked:
    """A tree watched as the worker watches one: its own Watches on a real inotify."""

    def __init__(self, root: Path, cap: int | None = None) -> None:
        self.root = root
        self.ino = inotify.Inotify()
        self.owner: dict[int, TreeUsage] = {}
        self.watches = (Watches(self.ino, self.owner) if cap is None
                        else CappedWatches(self.ino, self.owner, cap))
        self.tree = TreeUsage(str(root), self.watches)
        self.watches.tree = self.tree
        self.refresh()

    def refresh(self) -> int:
        mark(self.ino.read(), self.owner, [self.tree])
        return self.tree.refresh(self.tree.take())

    def check(self) -> int:
        total = self.refresh()
        assert total == tree_bytes(str(self.root))
        return total

    def close(self) -> None:
        self.tree.close()
        self.ino.close()


class CappedWatches(Watches):
    """The kernel's max_user_watches, reached after `cap` watches (ENOSPC, as the kernel
    says it)."""

    def __init__(self, ino: inotify.Inotify, owner: dict[int, TreeUsage], cap: int) -> None:
        super().__init__(ino, owner)
        self.cap = cap

    def add(self, path: str) -> int:
        if len(self.owner) >= self.cap:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().add(path)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    root = tmp_path / "files"
    root.mkdir()
    return root


def write(path: Path, n: int, mode: str = "wb") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as f:
        f.write(os.urandom(n))


def test_incremental_total_equals_a_full_walk_after_every_kind_of_change(files: Path) -> None:
    write(files / "server.jar", 300_000)
    write(files / "world" / "region" / "r.0.0.mca", 200_000)
    write(files / "world" / "level.dat", 5_000)
    t = Tracked(files)
    try:
        first = t.check()
        assert first > 500_000
        write(files / "logs" / "latest.log", 10_000)  # a new directory with a file
        t.check()
        write(files / "logs" / "latest.log", 70_000, "ab")  # an append
        t.check()
        write(files / "a" / "b" / "c" / "d" / "deep.bin", 40_000)  # nested directories
        t.check()
        (files / "world" / "level.dat").rename(files / "world" / "level.dat_old")  # rename
        t.check()
        os.replace(files / "server.jar", files / "logs" / "server.jar")  # across directories
        t.check()
        (files / "world").rename(files / "a" / "b" / "world")  # a directory moved, nested
        t.check()
        write(files / "a" / "b" / "world" / "region" / "r.1.0.mca", 50_000)  # in the moved
        t.check()
        (files / "world").mkdir()  # a new directory where the moved one was
        write(files / "world" / "new.dat", 8_000)
        t.check()
        (files / "a").rename(files / "old-a")  # a moved tree, then a new one in its place
        write(files / "a" / "b" / "x.bin", 9_000)
        t.check()
        os.truncate(files / "logs" / "latest.log", 0)  # a truncate
        t.check()
        (files / "logs" / "latest.log").unlink()  # deletes
        shutil.rmtree(files / "old-a")
        t.check()
        # hard links: counted once, wherever the names are, until the last name goes
        write(files / "big.bin", 100_000)
        t.check()
        os.link(files / "big.bin", files / "world" / "big-link.bin")
        t.check()
        write(files / "world" / "big-link.bin", 20_000, "ab")  # grown through one name
        t.check()
        (files / "big.bin").unlink()
        t.check()
        # a symbolic link is not followed (to a large file outside, or a directory)
        outside = files.parent / "outside.bin"
        write(outside, 500_000)
        (files / "world" / "to-outside").symlink_to(outside)
        (files / "to-world").symlink_to(files / "world")
        t.check()
        # a directory and a file swapping names
        write(files / "swap" / "in-dir.bin", 30_000)
        write(files / "swapfile", 12_000)
        (files / "swap").rename(files / "tmp-swap")
        (files / "swapfile").rename(files / "swap")
        (files / "tmp-swap").rename(files / "swapfile")
        t.check()
        shutil.rmtree(files / "swapfile")
        for p in list(files.iterdir()):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        assert t.check() == 0
        assert t.tree.walks == 1  # all of it without walking again
    finally:
        t.close()


def test_a_refresh_reads_only_what_changed(files: Path) -> None:
    for d in range(20):  # 20 directories of 50 files: 1,020 entries
        for f in range(50):
            write(files / f"d{d}" / f"f{f}", 100)
    write(files / "logs" / "latest.log", 1_000)
    t = Tracked(files)
    try:
        assert t.tree.statted == 1_000 + 20 + 2  # the one full walk at start
        before = t.tree.statted
        t.check()  # nothing changed: nothing read
        assert t.tree.statted == before
        for _ in range(30):  # a game writing its log: one directory is read again, once
            write(files / "logs" / "latest.log", 10_000, "ab")
        t.check()
        assert t.tree.statted - before == 1
        before = t.tree.statted
        write(files / "d3" / "new", 5_000)  # a new entry: its directory (51), the top (21)
        t.check()
        assert t.tree.statted - before == 51 + 21
        assert t.tree.walks == 1
    finally:
        t.close()


def test_out_of_watches_walks_whole_and_stays_right(files: Path) -> None:
    for d in range(5):
        write(files / f"d{d}" / "f", 4_000)
    t = Tracked(files, cap=3)  # the top and two directories, then ENOSPC
    try:
        assert t.tree.fallback
        assert t.tree.total == tree_bytes(str(files))
        assert not t.owner  # the watches it had are given back
        walks = t.tree.walks
        write(files / "d9" / "g", 20_000)
        t.check()
        assert t.tree.walks == walks + 1  # every check a full walk now
    finally:
        t.close()


def test_a_lost_event_queue_walks_again(files: Path) -> None:
    write(files / "a" / "f", 4_000)
    t = Tracked(files)
    try:
        assert t.tree.walks == 1
        write(files / "a" / "f", 8_000, "ab")
        mark([(-1, inotify.IN_Q_OVERFLOW)], t.owner, [t.tree])  # as the kernel says it
        t.check()
        assert t.tree.walks == 2
        write(files / "a" / "g", 8_000)
        t.check()
        assert t.tree.walks == 2
    finally:
        t.close()


def test_the_files_directory_replaced_or_made_later(tmp_path: Path) -> None:
    root = tmp_path / "files"
    t = Tracked(root)  # not made yet (a server before its install)
    try:
        assert t.check() == 0
        write(root / "a.bin", 10_000)
        t.check()  # looked for again at each check until it is there
        root.rename(tmp_path / "old")
        write(root / "b.bin", 30_000)
        t.check()
        shutil.rmtree(root)
        assert t.check() == 0
        write(root / "c" / "d.bin", 7_000)
        t.check()
        write(root / "c" / "d.bin", 7_000, "ab")
        t.check()
    finally:
        t.close()


def test_a_hard_link_made_in_another_directory(files: Path) -> None:
    write(files / "a" / "x" / "big.bin", 100_000)
    (files / "b").mkdir()
    t = Tracked(files)
    try:
        t.check()
        os.link(files / "a" / "x" / "big.bin", files / "b" / "big.bin")  # a/x is not marked
        t.check()
        (files / "c").mkdir()
        os.link(files / "a" / "x" / "big.bin", files / "c" / "third.bin")
        t.check()
        (files / "a" / "x" / "big.bin").unlink()
        t.check()
        write(files / "b" / "big.bin", 50_000, "ab")
        t.check()
    finally:
        t.close()
