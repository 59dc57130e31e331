"""Process trees from /proc: pure parsing apart from the one read of every process."""

from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(slots=True)
class Proc:
    pid: int
    ppid: int
    pgrp: int
    ticks: int  # utime + stime + cutime + cstime: a reaped child's time moves to its parent
    rss: int  # bytes


def parse_stat(text: str, page: int = PAGE) -> Proc | None:
    """One /proc/<pid>/stat line; the command name may hold spaces and parentheses, so the
    fields are read after its last ')' (proc(5))."""
    head, sep, rest = text.rpartition(")")
    if not sep:
        return None
    f = rest.split()
    try:
        pid = int(head.split("(", 1)[0])
        # f[0] is field 3 (state): ppid 4, pgrp 5, utime 14, stime 15, cutime 16, cstime 17,
        # rss 24
        return Proc(pid, int(f[1]), int(f[2]), int(f[11]) + int(f[12]) + int(f[13]) + int(f[14]),
                    int(f[21]) * page)
    except (ValueError, IndexError):
        return None


def read_all(proc: str = "/proc") -> dict[int, Proc]:
    """Every process now (those that end during the read are skipped)."""
    out: dict[int, Proc] = {}
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat") as f:
                p = parse_stat(f.read())
        except OSError:
            continue
        if p is not None:
            out[p.pid] = p
    return out


def children_index(procs: dict[int, Proc]) -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in procs.values():
        kids.setdefault(p.ppid, []).append(p.pid)
    return kids


def groups_index(procs: dict[int, Proc]) -> dict[int, list[int]]:
    by: dict[int, list[int]] = {}
    for p in procs.values():
        by.setdefault(p.pgrp, []).append(p.pid)
    return by


def tree(procs: dict[int, Proc], kids: dict[int, list[int]], groups: dict[int, list[int]],
         root: int) -> list[Proc]:
    """The root, its process group (the game runs in a session of its own) and every
    descendant (one that left the group with setsid is still its child). The indexes are
    made once per pass: 200 servers cost one scan of /proc, not 200."""
    seen: set[int] = set()
    stack = [root, *groups.get(root, ())]
    out: list[Proc] = []
    while stack:
        pid = stack.pop()
        if pid in seen or pid not in procs:
            continue
        seen.add(pid)
        out.append(procs[pid])
        stack.extend(kids.get(pid, ()))
    return out


def cpu_percent(ticks_before: int, ticks_now: int, seconds: float, tck: int = CLK_TCK) -> float:
    """% of one core over the interval; a process that left the tree makes the sum drop:
    counted as 0, never negative."""
    if seconds <= 0:
        return 0.0
    return max(0, ticks_now - ticks_before) / tck / seconds * 100.0


def machine_cpu(text: str) -> tuple[int, int]:
    """(busy, total) jiffies from the first line of /proc/stat."""
    f = [int(x) for x in text.split("\n", 1)[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)  # idle + iowait
    total = sum(f[:8])  # guest time is already counted in user
    return total - idle, total
