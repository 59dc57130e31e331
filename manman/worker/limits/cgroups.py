"""One cgroup per exec server, made by the worker beneath its own: detection at start, the
limit files, the server's processes, its use and its OOM kills.

The parsing and the file values are pure functions; the I/O is `detect` and `ServerCgroup`.
Server cgroups live at `<controller>/<worker's own path>/manman/<owner>/<server id>`: the
owner token is the worker's (its data dir's), so two workers in one cgroup never prune
each other's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Literal

from manman.models import Limits
from manman.worker.stats.cgroup import memory_usage, paths, stat_value

Mode = Literal["cgroup2", "cgroup1", "none"]
ROOT = "/sys/fs/cgroup"
PERIOD_US = 100_000  # the CFS period; the quota is cpus × this
NEEDED = ("memory", "cpu", "pids")
# the wrapper that spawns the game: it joins the cgroups, then execs the game with the same
# pid, so no instruction of the game (nor any child) runs outside them, and nothing but
# async-signal-safe code runs between fork and exec in the worker (no preexec_fn)
JOIN_SCRIPT = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; ' \
              'exec "$@"'


# -- pure ------------------------------------------------------------------------------------

def v1_files(limits: Limits | None) -> list[tuple[str, str, str]]:
    """(controller, file, value) in the order they are written; None: no limit at all.
    memsw (memory + swap) goes to unlimited first, so the memory limit may rise above it,
    then equal to the memory limit, so swap cannot take the game past it."""
    lim = limits or Limits()
    mem = str(lim.memory_mb << 20) if lim.memory_mb is not None else "-1"
    quota = str(max(1000, round(lim.cpus * PERIOD_US))) if lim.cpus is not None else "-1"
    return [("memory", "memory.memsw.limit_in_bytes", "-1"),
            ("memory", "memory.limit_in_bytes", mem),
            ("memory", "memory.memsw.limit_in_bytes", mem),
            ("cpu", "cpu.cfs_period_us", str(PERIOD_US)),
            ("cpu", "cpu.cfs_quota_us", quota),
            ("pids", "pids.max", str(lim.pids) if lim.pids is not None else "max")]


def v2_files(limits: Limits | None) -> list[tuple[str, str, str]]:
    lim = limits or Limits()
    mem = str(lim.memory_mb << 20) if lim.memory_mb is not None else "max"
    quota = str(max(1000, round(lim.cpus * PERIOD_US))) if lim.cpus is not None else "max"
    return [("", "memory.max", mem),
            ("", "memory.swap.max", "0" if lim.memory_mb is not None else "max"),
            ("", "cpu.max", f"{quota} {PERIOD_US}"),
            ("", "pids.max", str(lim.pids) if lim.pids is not None else "max")]


# files that a kernel may lack (no swap accounting): skipped, never an error
OPTIONAL_FILES = frozenset({"memory.memsw.limit_in_bytes", "memory.swap.max"})


def v1_mounts(text: str) -> dict[str, str]:
    """/proc/self/mounts → {v1 controller: its mount point}; a co-mounted `cpu,cpuacct`
    gives both the same one."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 4 and f[2] == "cgroup":
            for opt in f[3].split(","):
                out.setdefault(opt, f[1].replace("\\040", " "))
    return out


def oom_kill_count(text: str) -> int:
    """`oom_kill N` of v1 memory.oom_control or v2 memory.events (0 when absent)."""
    return stat_value(text, "oom_kill") or 0


def enforced(limits: Limits) -> list[str]:
    """The limits a cgroup enforces for this spec (disk_mb is not one of them)."""
    return [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in (("memory_mb", limits.memory_mb), ("cpus", limits.cpus),
                         ("pids", limits.pids)) if v is not None]


def oom_reason(memory_mb: int | None) -> str:
    return f"out of memory (limit {memory_mb} MiB)" if memory_mb is not None \
        else "out of memory"


# -- detection -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hierarchy:
    """Where this worker makes its servers' cgroups (detected once at start)."""

    mode: Mode
    bases: dict[str, str] = field(default_factory=dict)  # controller ("" for v2): directory
    reason: str = ""  # mode none: why

    def server_dirs(self, owner: str, server_id: str) -> dict[str, str]:
        return {c: f"{b}/{owner}/{server_id}" for c, b in self.bases.items()}

    def owner_dirs(self, owner: str) -> list[str]:
        return sorted({f"{b}/{owner}" for b in self.bases.values()})


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def detect(root: str = ROOT, self_cgroup: str | None = None, mounts: str | None = None
           ) -> Hierarchy:
    """cgroup v2 where the worker's own cgroup is delegated to it (memory, cpu and pids
    usable below it), else the v1 controllers where they are mounted (under `root`)
    writable, else none. `self_cgroup`, `mounts`: the text of /proc/self/cgroup and
    /proc/self/mounts (read when not given)."""
    try:
        own = paths(self_cgroup if self_cgroup is not None else _read("/proc/self/cgroup"))
        mounted = v1_mounts(mounts if mounts is not None else _read("/proc/self/mounts"))
    except OSError as e:
        return Hierarchy("none", reason=f"cannot read /proc/self: {e.strerror}")
    v2 = _detect_v2(root, own)
    if v2.mode != "none":
        return v2
    v1 = _detect_v1(root, own, mounted)
    if v1.mode != "none":
        return v1
    return Hierarchy("none", reason=f"{v1.reason}; {v2.reason}")


def _detect_v2(root: str, own: dict[str, str]) -> Hierarchy:
    mnt = root if os.path.exists(f"{root}/cgroup.controllers") else f"{root}/unified"
    if "" not in own or not os.path.exists(f"{mnt}/cgroup.controllers"):
        return Hierarchy("none", reason="no cgroup v2 hierarchy")
    d = f"{mnt}{own['']}".rstrip("/")
    try:
        missing = set(NEEDED) - set(_read(f"{d}/cgroup.controllers").split())
        if missing:
            return Hierarchy("none", reason=f"cgroup v2: {d} lacks the controllers "
                                            f"{', '.join(sorted(missing))}")
        if not os.access(d, os.W_OK):
            return Hierarchy("none", reason=f"cgroup v2: {d} is not delegated to this user")
        base = f"{d}/manman"
        os.makedirs(base, exist_ok=True)
        enable = " ".join(f"+{c}" for c in NEEDED)
        try:
            _write(f"{d}/cgroup.subtree_control", enable)
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            # a cgroup with processes of its own cannot hand controllers down: the worker
            # moves into a leaf beside manman/ (the usual shape of a delegated cgroup)
            os.makedirs(f"{d}/worker", exist_ok=True)
            _write(f"{d}/worker/cgroup.procs", str(os.getpid()))
            _write(f"{d}/cgroup.subtree_control", enable)
        _write(f"{base}/cgroup.subtree_control", enable)
    except OSError as e:
        return Hierarchy("none", reason=f"cgroup v2: {d}: {e.strerror or e}")
    return Hierarchy("cgroup2", {"": base})


def _detect_v1(root: str, own: dict[str, str], mounted: dict[str, str]) -> Hierarchy:
    found: dict[str, str] = {}
    for ctrl in (*NEEDED, "cpuacct"):
        mnt = mounted.get(ctrl)
        d = f"{mnt}{own.get(ctrl, '/')}".rstrip("/")
        problem = None
        if mnt is None or not mnt.startswith(f"{root}/"):
            problem = f"cgroup v1: no {ctrl} controller mounted under {root}"
        elif not os.path.exists(f"{d}/cgroup.procs"):
            problem = f"cgroup v1: no cgroup {d}"
        elif not os.access(d, os.W_OK):
            problem = f"cgroup v1: {d} is not writable"
        if problem is None:
            found[ctrl] = d
        elif ctrl != "cpuacct":  # cpuacct only feeds the stats (they fall back to /proc)
            return Hierarchy("none", reason=problem)
    # manman/ beneath each is made with the first server's cgroup, removed with the last
    return Hierarchy("cgroup1", {c: f"{d}/manman" for c, d in found.items()})


# -- one server's cgroup ---------------------------------------------------------------------

class BelowUse(Exception):
    """A memory limit under what the game uses now: not applied to the running game."""

    def __init__(self, used: int) -> None:
        super().__init__(used)
        self.used = used


class ServerCgroup:
    """The cgroup (v2) or cgroups (v1, one per controller) of one server."""

    def __init__(self, hierarchy: Hierarchy, owner: str, server_id: str) -> None:
        self.v2 = hierarchy.mode == "cgroup2"
        self.dirs = hierarchy.server_dirs(owner, server_id)
        self.unique = sorted(set(self.dirs.values()))  # co-mounted controllers: one directory

    def _dir(self, ctrl: str) -> str:
        return self.dirs["" if self.v2 else ctrl]

    def create(self, limits: Limits | None) -> None:
        """Make the cgroup if needed and write its limits (None: unlimited). Raises OSError."""
        if self.v2:  # v2 hands controllers down one level at a time: the owner's too
            owner = os.path.dirname(self.dirs[""])
            os.makedirs(owner, exist_ok=True)
            _write(f"{owner}/cgroup.subtree_control", " ".join(f"+{c}" for c in NEEDED))
        for d in self.unique:
            os.makedirs(d, exist_ok=True)
        for ctrl, name, value in (v2_files if self.v2 else v1_files)(limits):
            try:
                _write(f"{self._dir(ctrl)}/{name}", value)
            except FileNotFoundError:
                if name not in OPTIONAL_FILES:
                    raise

    def change(self, limits: Limits) -> None:
        """New limits for the game running in it. A memory limit below what it uses now is
        refused (BelowUse): v2 would OOM-kill the game, v1 refuse or reclaim. On v1 the swap
        limit never stays unlimited: it moves first when the limit rises, after when it
        falls. Raises OSError."""
        mem_dir = self._dir("memory")
        new = limits.memory_mb << 20 if limits.memory_mb is not None else None
        if new is not None:
            used = int(_read(f"{mem_dir}/memory.current" if self.v2
                             else f"{mem_dir}/memory.usage_in_bytes"))
            if new < used:
                raise BelowUse(used)
        files = (v2_files if self.v2 else v1_files)(limits)
        if not self.v2:
            value = str(new) if new is not None else "-1"
            current = int(_read(f"{mem_dir}/memory.limit_in_bytes"))
            memory = [("memory", "memory.memsw.limit_in_bytes", value),
                      ("memory", "memory.limit_in_bytes", value)]
            if new is not None and new < current:
                memory.reverse()
            files = memory + [f for f in files if f[0] != "memory"]
        for ctrl, name, value in files:
            try:
                _write(f"{self._dir(ctrl)}/{name}", value)
            except FileNotFoundError:
                if name not in OPTIONAL_FILES:
                    raise

    def join_files(self) -> list[str]:
        """The cgroup.procs files a new process is written to."""
        return [f"{d}/cgroup.procs" for d in self.unique]

    def pids(self) -> list[int]:
        out: set[int] = set()
        for d in self.unique:
            with contextlib.suppress(OSError, ValueError):
                out.update(int(x) for x in _read(f"{d}/cgroup.procs").split())
        return sorted(out)

    def oom_kills(self) -> int | None:
        try:
            d = self._dir("memory")
            return oom_kill_count(_read(f"{d}/memory.events" if self.v2
                                        else f"{d}/memory.oom_control"))
        except (OSError, KeyError, ValueError):
            return None

    def sample(self) -> tuple[int, int] | None:
        """(CPU ns since the cgroup began, memory less inactive file cache), or None."""
        try:
            if self.v2:
                d = self.dirs[""]
                cpu = (stat_value(_read(f"{d}/cpu.stat"), "usage_usec") or 0) * 1000
                mem = memory_usage(int(_read(f"{d}/memory.current")),
                                   _read(f"{d}/memory.stat"), v2=True)
                return cpu, mem
            d = self.dirs["memory"]
            cpu = int(_read(f"{self.dirs['cpuacct']}/cpuacct.usage"))
            mem = memory_usage(int(_read(f"{d}/memory.usage_in_bytes")),
                               _read(f"{d}/memory.stat"), v2=False)
            return cpu, mem
        except (OSError, KeyError, ValueError):
            return None

    def kill_all(self, wait: float = 2.0) -> list[int]:
        """SIGKILL every process in the cgroup (a fork bomb too: until none is left)."""
        killed: set[int] = set()
        deadline = time.monotonic() + wait
        while pids := self.pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        return sorted(killed)

    def remove(self) -> bool:
        """Kill what is left in it, then remove it; False when it could not be."""
        self.kill_all()
        ok = True
        for d in self.unique:
            ok &= _rmdir(d)
        return ok


def _rmdir(d: str, tries: int = 50) -> bool:
    """A cgroup directory goes once its last process is gone (the kernel may take a moment
    after the exit); its control files go with it."""
    for _ in range(tries):
        try:
            os.rmdir(d)
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno != errno.EBUSY:
                return False
            time.sleep(0.02)
    return False


def server_ids(hierarchy: Hierarchy, owner: str) -> set[str]:
    """The servers that have a cgroup of this worker now."""
    out: set[str] = set()
    for d in hierarchy.owner_dirs(owner):
        with contextlib.suppress(OSError):
            out.update(e.name for e in os.scandir(d) if e.is_dir())
    return out


def remove_owner(hierarchy: Hierarchy, owner: str) -> None:
    """The owner's directories once they hold no server's cgroup (a stopped worker), and
    v1's manman/ when no other worker uses it (v2's keeps the controllers it hands down)."""
    for d in hierarchy.owner_dirs(owner):
        _rmdir(d, tries=1)
    if hierarchy.mode == "cgroup1":
        for d in set(hierarchy.bases.values()):
            _rmdir(d, tries=1)
