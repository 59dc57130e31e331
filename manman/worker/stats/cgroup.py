"""A container's use from its cgroup files and network namespace, read directly (no docker
call a pass); None where a file is not readable (the caller then asks `docker stats`)."""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "/sys/fs/cgroup"


@dataclass(slots=True)
class CgroupSample:
    cpu_ns: int  # CPU time used since the cgroup began
    memory: int  # usage less inactive_file, as the docker CLI computes it
    net_rx: int | None  # bytes since the namespace began (all interfaces but lo)
    net_tx: int | None


def paths(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup → {controller: path}; the unified (v2) hierarchy is under ""."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def stat_value(text: str, key: str) -> int | None:
    """One `key value` line of memory.stat or cpu.stat."""
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v)
    return None


def memory_usage(usage: int, stat: str, v2: bool) -> int:
    """docker/cli calculateMemUsageUnixNoCache (cli/command/container/stats_helpers.go):
    cgroup v2 subtracts `inactive_file`, v1 `total_inactive_file` (when below the usage)."""
    inactive = stat_value(stat, "inactive_file" if v2 else "total_inactive_file") or 0
    return usage - inactive if inactive < usage else usage


def net_bytes(text: str) -> tuple[int, int]:
    """(rx, tx) bytes of /proc/<pid>/net/dev: every interface of the namespace but lo."""
    rx = tx = 0
    for line in text.splitlines()[2:]:
        name, _, data = line.partition(":")
        f = data.split()
        if name.strip() != "lo" and len(f) >= 9:
            rx += int(f[0])
            tx += int(f[8])
    return rx, tx


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def sample(pid: int, root: str = ROOT) -> CgroupSample | None:
    """The cgroup of the container whose main process is `pid` (visible in this pid
    namespace, as with a local dockerd)."""
    try:
        groups = paths(_read(f"/proc/{pid}/cgroup"))
        if "memory" in groups and "cpuacct" in groups:  # v1 controllers
            mem_dir = f"{root}/memory{groups['memory']}"
            usage = int(_read(f"{mem_dir}/memory.usage_in_bytes"))
            memory = memory_usage(usage, _read(f"{mem_dir}/memory.stat"), v2=False)
            cpu_ns = int(_read(f"{root}/cpuacct{groups['cpuacct']}/cpuacct.usage"))
        elif "" in groups:  # the unified hierarchy
            d = f"{root}{groups['']}"
            usage = int(_read(f"{d}/memory.current"))
            memory = memory_usage(usage, _read(f"{d}/memory.stat"), v2=True)
            cpu_ns = (stat_value(_read(f"{d}/cpu.stat"), "usage_usec") or 0) * 1000
        else:
            return None
    except (OSError, ValueError):
        return None
    try:
        rx, tx = net_bytes(_read(f"/proc/{pid}/net/dev"))
    except (OSError, ValueError):
        return CgroupSample(cpu_ns, memory, None, None)
    return CgroupSample(cpu_ns, memory, rx, tx)
