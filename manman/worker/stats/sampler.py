"""One pass every `stats_interval` over all running servers (not a task per server): exec
servers from their own cgroup's files where the worker made one, else their process tree
from one read of /proc, docker containers from their cgroup files (else one `docker stats`
call for all), disk from the worker's disk check (manman.worker.disk; without one, a walk
at most every `disk_interval` a server). In monitor mode (worker.limits) a run's use over
a limit is warned of once on its console."""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from array import array
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import trio

from manman.models import ServerStats, StatsPoint
from manman.worker import machine
from manman.worker.limits.manager import cgroup_limited
from manman.worker.runners.docker import container_name
from manman.worker.stats import cgroup, disk, docker_stats, procfs
from manman.worker.stats.history import History

if TYPE_CHECKING:
    from manman.worker.actor import ServerActor
    from manman.worker.agent import WorkerAgent

log = logging.getLogger("manman.worker.stats")

HISTORY_FILE = "stats-history.bin"
SAVE_INTERVAL = 600.0  # the history is saved this often and at shutdown, never per sample
_encode = msgspec.json.Encoder().encode


class StatsFeed:
    """The latest `stats` frame of one server, encoded once for every viewer."""

    def __init__(self) -> None:
        self.frame: str | None = None
        self.version = 0
        self._wake = trio.Event()

    def publish(self, stats: ServerStats) -> None:
        self.frame = _encode({"type": "stats", "cpu": stats.cpu, "memory": stats.memory,
                              "disk": stats.disk, "at": stats.at}).decode()
        self.version += 1
        self._wake.set()
        self._wake = trio.Event()

    async def wait(self, version: int) -> None:
        if self.version == version:
            await self._wake.wait()


class StatsSampler:
    def __init__(self, agent: WorkerAgent, interval: float, disk_interval: float = 60.0) -> None:
        self.agent = agent
        self.interval = interval
        self.disk_interval = disk_interval
        self.history: dict[str, History] = {}
        self.feeds: dict[str, StatsFeed] = {}
        self._cpu: dict[str, tuple[float, int]] = {}  # id: (monotonic, ticks) of the last pass
        self._cg_cpu: dict[str, tuple[float, int]] = {}  # id: (monotonic, ns): exec cgroups
        self._warned: dict[str, tuple[int | None, set[str]]] = {}  # monitor: id: (pid, kinds)
        self._counts: dict[str, int] = {}  # monitor with a pids limit: processes last pass
        self._net: dict[str, tuple[float, int, int]] = {}
        self._disk: dict[str, tuple[float, int]] = {}  # id: (monotonic measured, bytes)
        self._machine_cpu: tuple[int, int] | None = None
        self.machine_cpu = 0.0  # % of all cores, over the last pass
        self.passes = 0
        self.path = Path(agent.cfg.data_dir) / HISTORY_FILE

    def feed(self, server_id: str) -> StatsFeed:
        return self.feeds.setdefault(server_id, StatsFeed())

    # -- the loop ------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.to_thread.run_sync(self.load)
        task_status.started()
        saved = trio.current_time()
        try:
            while True:
                started = trio.current_time()
                try:
                    await self.sample()
                except Exception:  # one bad pass must not end the stats
                    log.exception("stats pass failed")
                if started - saved >= SAVE_INTERVAL:
                    saved = started
                    await trio.to_thread.run_sync(self.save)
                await trio.sleep_until(started + self.interval)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.save)

    async def sample(self) -> None:
        """One pass over every server."""
        self.passes += 1
        now, mono = time.time(), time.monotonic()
        live: list[ServerActor] = []
        for actor in list(self.agent.actors.values()):
            if actor.status.state in machine.LIVE and actor.status.pid is not None:
                live.append(actor)
            else:
                self._forget(actor)
        execs = [a for a in live if a.spec.install_method != "docker"]
        # monitor mode: limits not enforced, their use watched
        watched = set() if self.agent.limits.enforcing else \
            {a.id for a in execs if cgroup_limited(a.spec)}
        dockers = [a for a in live if a.spec.install_method == "docker"]
        samples: dict[str, tuple[float, int, float | None, float | None]] = {}
        if execs:
            samples.update(await trio.to_thread.run_sync(self._exec_samples, execs, mono,
                                                         watched))
        if dockers:
            direct, rest = await trio.to_thread.run_sync(self._cgroup_samples, dockers, mono)
            samples.update(direct)
            if rest:  # cgroup files not readable here (another pid or cgroup namespace)
                samples.update(await self._docker_samples(rest, mono))
        await self._machine()
        watch = self.agent.disk
        if watch is not None:  # kept up to date incrementally (manman.worker.disk)
            for a in live:
                used = watch.used(a.id)
                if used is not None:
                    self._disk[a.id] = (mono, used)
        due = [] if watch is not None else [
            a for a in live if mono - self._disk.get(a.id, (-math.inf, 0))[0]
            >= self.disk_interval]
        if due:
            sizes = await trio.to_thread.run_sync(
                lambda: [(a.id, disk.tree_bytes(str(a.files_dir))) for a in due])
            for sid, size in sizes:
                self._disk[sid] = (mono, size)
        for actor in live:
            got = samples.get(actor.id)
            if got is None:
                continue
            cpu, memory, rx, tx = got
            if actor.id in watched:
                self._watch(actor, cpu, memory)
            d = self._disk.get(actor.id)
            stats = ServerStats(cpu=round(cpu, 2), memory=memory,
                                disk=d[1] if d else None, net_rx=rx, net_tx=tx, at=now)
            # memory only: no save, no report (the next heartbeat carries it)
            actor.status.stats = stats
            self.history.setdefault(actor.id, History()).add(now, stats.cpu, memory, stats.disk)
            feed = self.feeds.get(actor.id)
            if feed is not None:
                feed.publish(stats)
        for sid in self.history.keys() - self.agent.actors.keys():  # deleted servers
            del self.history[sid]
            self.feeds.pop(sid, None)

    def _watch(self, actor: ServerActor, cpu: float, memory: int) -> None:
        """Monitor mode: once a run, a console warning for each limit its use went over."""
        lim = actor.spec.limits
        pid, kinds = self._warned.get(actor.id, (None, set()))
        if pid != actor.status.pid:
            pid, kinds = actor.status.pid, set()
        over = []
        if lim.memory_mb is not None and memory > lim.memory_mb << 20:
            over.append(("memory_mb", f"memory {memory >> 20} MiB over memory_mb "
                                      f"{lim.memory_mb}"))
        if lim.cpus is not None and cpu > lim.cpus * 100:
            over.append(("cpus", f"CPU {cpu:.0f}% over cpus {lim.cpus:g}"))
        count = self._counts.get(actor.id)
        if lim.pids is not None and count is not None and count > lim.pids:
            over.append(("pids", f"{count} processes over pids {lim.pids}"))
        for kind, text in over:
            if kind not in kinds:
                kinds.add(kind)
                actor.broker.note(f"warning: {text} (not enforced: worker.limits = monitor)")
        self._warned[actor.id] = (pid, kinds)

    def _forget(self, actor: ServerActor) -> None:
        actor.status.stats = None
        self._cpu.pop(actor.id, None)
        self._cg_cpu.pop(actor.id, None)
        self._counts.pop(actor.id, None)
        self._warned.pop(actor.id, None)
        self._net.pop(actor.id, None)
        self._disk.pop(actor.id, None)

    def _exec_samples(self, actors: list[ServerActor], mono: float,
                      watched: frozenset[str] | set[str] = frozenset()
                      ) -> dict[str, tuple[float, int, float | None, float | None]]:
        """In a thread: the server's cgroup (a few small files: it holds every descendant),
        else one read of /proc for all the exec servers without one."""
        out: dict[str, tuple[float, int, float | None, float | None]] = {}
        rest = []
        limits = self.agent.limits
        for a in actors:
            group = limits.group(a.id)
            got = group.sample() if group is not None else None
            if group is None or got is None:
                rest.append(a)
                continue
            cpu_ns, memory = got
            before = self._cg_cpu.get(a.id)
            self._cg_cpu[a.id] = (mono, cpu_ns)
            cpu = 0.0
            if before is not None and mono > before[0]:
                cpu = max(0, cpu_ns - before[1]) / 1e9 / (mono - before[0]) * 100
            if a.id in watched and a.spec.limits.pids is not None:
                self._counts[a.id] = len(group.pids())
            out[a.id] = (cpu, memory, None, None)
        if not rest:
            return out
        procs = procfs.read_all()
        kids = procfs.children_index(procs)
        groups = procfs.groups_index(procs)
        for a in rest:
            assert a.status.pid is not None
            members = procfs.tree(procs, kids, groups, a.status.pid)
            if a.id in watched:
                self._counts[a.id] = len(members)
            ticks = sum(p.ticks for p in members)
            rss = sum(p.rss for p in members)
            before = self._cpu.get(a.id)
            self._cpu[a.id] = (mono, ticks)
            cpu = procfs.cpu_percent(before[1], ticks, mono - before[0]) if before else 0.0
            out[a.id] = (cpu, rss, None, None)  # network: see docs/spec.md (exec has none)
        return out

    def _cgroup_samples(self, actors: list[ServerActor], mono: float
                        ) -> tuple[dict[str, tuple[float, int, float | None, float | None]],
                                   list[ServerActor]]:
        """In a thread: the containers whose cgroup files are readable, and the others."""
        out: dict[str, tuple[float, int, float | None, float | None]] = {}
        rest: list[ServerActor] = []
        for a in actors:
            assert a.status.pid is not None
            c = cgroup.sample(a.status.pid)
            if c is None:
                rest.append(a)
                continue
            before = self._cpu.get(a.id)
            self._cpu[a.id] = (mono, c.cpu_ns)
            cpu = 0.0
            if before is not None and mono > before[0]:
                cpu = max(0, c.cpu_ns - before[1]) / 1e9 / (mono - before[0]) * 100
            rx, tx = self._net_rate(a.id, mono, c.net_rx, c.net_tx)
            out[a.id] = (cpu, c.memory, rx, tx)
        return out, rest

    def _net_rate(self, sid: str, mono: float, rx_total: int | None, tx_total: int | None
                  ) -> tuple[float | None, float | None]:
        """Bytes/s since the previous pass (None on the first, or without counters)."""
        if rx_total is None or tx_total is None:
            return None, None
        before = self._net.get(sid)
        self._net[sid] = (mono, rx_total, tx_total)
        if before is None or mono <= before[0]:
            return None, None
        return (max(0, rx_total - before[1]) / (mono - before[0]),
                max(0, tx_total - before[2]) / (mono - before[0]))

    async def _docker_samples(self, actors: list[ServerActor], mono: float
                              ) -> dict[str, tuple[float, int, float | None, float | None]]:
        names = {container_name(a.id): a.id for a in actors}
        docker = self.agent.cfg.docker
        if shutil.which(docker) is None:
            return {}
        with trio.move_on_after(max(10.0, self.interval * 2)):
            r = await trio.run_process([docker, "stats", "--no-stream", "--format",
                                        "{{json .}}", *names], capture_stdout=True,
                                       capture_stderr=True, check=False)
            parsed = docker_stats.parse(r.stdout.decode("utf-8", "replace"))
            out: dict[str, tuple[float, int, float | None, float | None]] = {}
            for name, c in parsed.items():
                sid = names.get(name)
                if sid is None:
                    continue
                rx, tx = self._net_rate(sid, mono, c.net_rx, c.net_tx)
                out[sid] = (c.cpu, c.memory, rx, tx)
            return out
        return {}

    async def _machine(self) -> None:
        try:
            text = await trio.Path("/proc/stat").read_text()
        except OSError:
            return
        busy, total = procfs.machine_cpu(text)
        if self._machine_cpu is not None and total > self._machine_cpu[1]:
            self.machine_cpu = round(100.0 * (busy - self._machine_cpu[0])
                                     / (total - self._machine_cpu[1]), 2)
        self._machine_cpu = (busy, total)

    # -- answers ---------------------------------------------------------------------------

    def points(self, server_id: str, since: float) -> list[StatsPoint]:
        h = self.history.get(server_id)
        if h is None:
            return []
        return [StatsPoint(at, cpu, mem, d) for at, cpu, mem, d in h.points(since, time.time())]

    def totals(self) -> dict[str, object]:
        """The sum over this worker's servers, and the machine's CPU."""
        stats = [a.status.stats for a in self.agent.actors.values() if a.status.stats]
        return {"cpu": round(self.machine_cpu, 2),
                "servers": {"cpu": round(sum(s.cpu for s in stats), 2),
                            "memory": sum(s.memory for s in stats),
                            "disk": sum(s.disk or 0 for s in stats)}}

    # -- saved with the worker's state ---------------------------------------------------------

    def save(self) -> None:
        """The rings, written whole (atomic rename): at shutdown and every SAVE_INTERVAL."""
        data = msgspec.msgpack.encode({sid: h.ring.tobytes() for sid, h in self.history.items()})
        tmp = self.path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
        except OSError as e:  # a full disk: the history is lost, the worker is not
            log.warning("cannot save the stats history: %s", e)

    def load(self) -> None:
        try:
            raw = msgspec.msgpack.decode(self.path.read_bytes(), type=dict[str, bytes])
        except (OSError, msgspec.MsgspecError):
            return
        for sid, blob in raw.items():
            ring = array("d")
            ring.frombytes(blob[: len(blob) // 8 * 8])
            self.history[sid] = History(ring)
