"""Cost of the incremental disk checks (manman.worker.disk) for N servers, against the full
walk each check would otherwise be: one inotify instance, every directory of every tree
watched; then a "minute" of game activity (each server appends to its log `--writes` times
and makes one new file), read as events and applied by one refresh of every tree.

Reported: the first walk (all trees), the memory the records take, the watches used, the
CPU time to read a minute's events, the refresh of every tree, and the full walk of every
tree (what each check cost before). Goal (issue 15): a check of 200 servers well under the
full walk; no walk at all when nothing changed.

    .venv/bin/python bench/disk_watch.py [--servers 200] [--dirs 10] [--files 25] [--writes 100]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from manman.worker.disk.inotify import Inotify
from manman.worker.disk.usage import TreeUsage
from manman.worker.disk.watch import Watches, mark
from manman.worker.stats.disk import tree_bytes


def build(root: Path, servers: int, dirs: int, files: int) -> list[Path]:
    roots = []
    for s in range(servers):
        top = root / f"s{s:03d}" / "files"
        for d in range(dirs):
            sub = top / f"d{d}" / "nested"
            sub.mkdir(parents=True)
            for f in range(files):
                (sub / f"f{f}").write_bytes(b"x" * 3000)
        (top / "logs").mkdir()
        (top / "logs" / "latest.log").write_bytes(b"")
        roots.append(top)
    return roots


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", type=int, default=200)
    ap.add_argument("--dirs", type=int, default=10)
    ap.add_argument("--files", type=int, default=25)
    ap.add_argument("--writes", type=int, default=100)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        roots = build(Path(tmp), a.servers, a.dirs, a.files)
        ino = Inotify()
        owner: dict[int, TreeUsage] = {}
        trees = []
        for r in roots:
            w = Watches(ino, owner)
            t = TreeUsage(str(r), w)
            w.tree = t
            trees.append(t)
        tracemalloc.start()
        t0 = time.process_time()
        for t in trees:
            t.refresh(t.take())
        first = time.process_time() - t0
        memory = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        t0 = time.process_time()
        for t in trees:
            t.refresh(t.take())
        idle = time.process_time() - t0
        for r in roots:  # a minute of a game: log lines, one new file
            with open(r / "logs" / "latest.log", "ab") as f:
                for _ in range(a.writes):
                    f.write(b"a log line of some length\n")
                    f.flush()
            (r / "d0" / "new.bin").write_bytes(b"y" * 10000)
        t0 = time.process_time()
        events = ino.read()
        mark(events, owner, trees)
        read = time.process_time() - t0
        t0 = time.process_time()
        for t in trees:
            t.refresh(t.take())
        check = time.process_time() - t0
        t0 = time.process_time()
        walked = [tree_bytes(str(r)) for r in roots]
        walk = time.process_time() - t0
        assert walked == [t.total for t in trees]
        assert all(t.walks == 1 for t in trees)
        ino.close()
    print(json.dumps({
        "servers": a.servers, "entries": a.servers * (a.dirs * (a.files + 2) + 2),
        "watches": len(owner), "first_walk_s": round(first, 3),
        "records_mb": round(memory / 1e6, 2), "idle_check_s": round(idle, 4),
        "events": len(events), "read_events_s": round(read, 4),
        "check_s": round(check, 4), "full_walk_s": round(walk, 3)}))


if __name__ == "__main__":
    os.nice(10)
    main()
