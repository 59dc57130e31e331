"""Prometheus metrics (prometheus-client) for the host and the worker.

Counts of what happens (requests, installs) are counters updated as it happens; what the
fleet looks like (servers by state, console totals, viewers) is read from live state when
scraped, so the console and heartbeat paths pay nothing for it. Each API has its own
registry: `manman up` serves host and worker from one process.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # for types only: the HTTP kit does not depend on either side at run time
    from manman.host.fleet import Fleet
    from manman.host.lastbackup import LastBackups
    from manman.host.webhooks.delivery import Dispatcher
    from manman.models import ServerSpec, ServerStats, ServerStatus
    from manman.worker.agent import WorkerAgent
    from manman.worker.backups.manager import BackupManager
    from manman.worker.hostlink import HostLink
    from manman.worker.schedules.service import WorkerSchedules

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ApiMetrics:
    """One API's registry and its request counts (the API's `RequestObserver`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("manman_api_requests", "API requests answered",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("manman_api_request_seconds", "API request latency",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1,
                                          2.5, 10))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _by(name: str, doc: str, label: str, tally: Tally[str]) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=[label])
    for key, n in sorted(tally.items()):
        g.add_metric([key], n)
    return g


def _players_gauge() -> GaugeMetricFamily:
    # only servers whose players are known (health.query answered, or player_patterns)
    return GaugeMetricFamily("manman_server_players",
                             "Players on the server, from its query or console", labels=["server"])


def _stats_gauges(servers: Iterable[tuple[str, ServerStats | None]]) -> Iterator[Metric]:
    """The last live sample of each running server (docs/spec.md "Live stats")."""
    cpu = GaugeMetricFamily("manman_server_cpu_ratio",
                            "CPU used, in cores (1 = one core busy), over the last sample",
                            labels=["server"])
    mem = GaugeMetricFamily("manman_server_memory_bytes", "Memory used by the game",
                            labels=["server"])
    disk = GaugeMetricFamily("manman_server_disk_bytes", "Bytes under the files directory",
                             labels=["server"])
    for name, st in servers:
        if st is not None:
            cpu.add_metric([name], st.cpu / 100)
            mem.add_metric([name], st.memory)
            if st.disk is not None:
                disk.add_metric([name], st.disk)
    yield from (cpu, mem, disk)


def _last_backup_gauges(servers: Iterable[tuple[str, int, float]]) -> Iterator[Metric]:
    """(server name, bytes, finished at) of each server's newest good backup."""
    size = GaugeMetricFamily("manman_backup_last_ok_bytes",
                             "Size of the server's newest good backup", labels=["server"])
    at = GaugeMetricFamily("manman_backup_last_ok_timestamp_seconds",
                           "When the server's newest good backup ended (unix seconds)",
                           labels=["server"])
    for name, n, t in servers:
        size.add_metric([name], n)
        at.add_metric([name], t)
    yield from (size, at)


def _by_result(name: str, doc: str, tallies: Iterable[tuple[str, Tally[str]]],
               results: tuple[str, ...]) -> CounterMetricFamily:
    """A counter by server and result, every result shown (0 before the first)."""
    c = CounterMetricFamily(name, doc, labels=["server", "result"])
    for server, tally in tallies:
        for result in results:
            c.add_metric([server, result], tally.get(result, 0))
    return c


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc)
    c.add_metric([], value)
    return c


class LiveCollector(Collector):
    """Metrics read from live state at scrape time."""

    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        yield from self._collect()


class WorkerMetrics(ApiMetrics):
    """The worker's metrics; also the agent's `InstallObserver`."""

    def __init__(self) -> None:
        super().__init__()
        self.installs = Histogram(
            "manman_install_seconds", "Install durations", ["method", "result"],
            registry=self.registry, buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600))

    def install_finished(self, method: str, ok: bool, seconds: float) -> None:
        self.installs.labels(method, "ok" if ok else "failed").observe(seconds)

    def watch(self, agent: WorkerAgent, link: HostLink | None,
              backups: BackupManager | None = None,
              schedules: WorkerSchedules | None = None) -> None:
        """Read the servers (and the host link's heartbeats, the backups, the schedules' runs)
        at each scrape."""
        self.registry.register(LiveCollector(partial(_worker_state, agent, link)))
        if backups is not None:
            self.registry.register(LiveCollector(partial(_backups, agent, backups)))
        if schedules is not None:
            self.registry.register(LiveCollector(partial(_schedule_runs, agent, schedules)))


def _backups(agent: WorkerAgent, backups: BackupManager) -> Iterator[Metric]:
    actors = list(agent.actors.values())
    yield _by_result("manman_backups", "Backups ended since the worker started, by result",
                     ((a.spec.name, backups.outcomes.get(a.id, Tally())) for a in actors),
                     ("ok", "failed"))
    last = ((a.spec.name, b.bytes, b.finished_at or 0.0) for a in actors
            if (b := backups.last_ok(a.id)) is not None)
    yield from _last_backup_gauges(last)


def _schedule_runs(agent: WorkerAgent, schedules: WorkerSchedules) -> Iterator[Metric]:
    # only servers with schedules (their runner exists)
    yield _by_result("manman_schedule_runs", "Schedule runs ended since the worker started, "
                     "by result", ((a.spec.name, ss.results) for a in agent.actors.values()
                                   if (ss := schedules.servers.get(a.id)) is not None),
                     ("ok", "failed", "skipped"))


def _worker_state(agent: WorkerAgent, link: HostLink | None) -> Iterator[Metric]:
    yield _by("manman_servers", "Servers by state", "state",
              Tally(a.status.state for a in agent.actors.values()))
    restarts = GaugeMetricFamily("manman_server_restarts",
                                 "Automatic restarts since the last start by a person",
                                 labels=["server"])
    lines = CounterMetricFamily("manman_console_lines", "Console lines read",
                                labels=["server"])
    size = CounterMetricFamily("manman_console_bytes", "Console JSON bytes stored",
                               labels=["server"])
    gaps = CounterMetricFamily("manman_console_gaps", "Gap frames sent to viewers",
                               labels=["server"])
    viewers = GaugeMetricFamily("manman_console_viewers", "Live console viewers",
                                labels=["server"])
    players = _players_gauge()
    ooms = CounterMetricFamily("manman_server_oom_kills",
                               "Runs ended by an OOM kill under the server's memory limit",
                               labels=["server"])
    for a in agent.actors.values():
        name = a.spec.name
        restarts.add_metric([name], a.status.restarts)
        ooms.add_metric([name], agent.oom_kills.get(a.id, 0))
        lines.add_metric([name], a.broker.lines_total)
        size.add_metric([name], a.broker.bytes_total)
        gaps.add_metric([name], a.broker.gaps)
        viewers.add_metric([name], a.broker.viewers)
        q = a.status.query
        if q is not None and q.players is not None:
            players.add_metric([name], q.players)
    yield from (restarts, lines, size, gaps, viewers, players, ooms)
    yield _update_available((a.spec, a.status) for a in agent.actors.values())
    yield _disk_full((a.spec.name, a.spec.limits.disk_mb, a.status.disk_full is not None)
                     for a in agent.actors.values())
    yield from _stats_gauges((a.spec.name, a.status.stats) for a in agent.actors.values())
    if link is not None:
        yield _counter("manman_heartbeats_sent", "Heartbeats the host answered",
                       link.heartbeats_sent)
        yield _counter("manman_heartbeats_failed", "Heartbeats the host did not answer",
                       link.heartbeats_failed)
        if link.events is not None:
            st = link.events.status()
            queued = GaugeMetricFamily("manman_events_queued",
                                       "Webhook events the host has not acknowledged yet")
            queued.add_metric([], st.queued)
            yield queued
            yield _counter("manman_events_dropped",
                           "Webhook events dropped: the queue was over its bound", st.dropped)


UPDATE_AVAILABLE_DOC = "1 when Steam offers a build other than the one installed (steamcmd)"


def _update_available(servers: Iterable[tuple[ServerSpec, ServerStatus]]) -> GaugeMetricFamily:
    """One series per steamcmd server (others take no Steam builds)."""
    g = GaugeMetricFamily("manman_server_update_available", UPDATE_AVAILABLE_DOC,
                          labels=["server"])
    for spec, status in servers:
        if spec.install_method == "steamcmd":
            g.add_metric([spec.name], 1 if status.update_available else 0)
    return g


def _disk_full(servers: Iterable[tuple[str, int | None, bool]]) -> GaugeMetricFamily:
    """One series per server with limits.disk_mb: (name, limit, over it)."""
    g = GaugeMetricFamily("manman_server_disk_full",
                          "1 while the server's files are over its limits.disk_mb",
                          labels=["server"])
    for name, limit, full in servers:
        if limit is not None:
            g.add_metric([name], 1 if full else 0)
    return g


def host_metrics(fleet: Fleet, last_backups: LastBackups | None = None,
                 dispatcher: Dispatcher | None = None) -> ApiMetrics:
    m = ApiMetrics()

    def collect() -> Iterator[Metric]:
        yield _by("manman_workers", "Workers by status", "status",
                  Tally(fleet.worker_status(w) for w in fleet.workers.values()))
        servers = [fleet.server_view(s) for s in fleet.servers.values() if not s.deleting]
        yield _by("manman_servers", "Servers by state", "state", Tally(v.state for v in servers))
        g = GaugeMetricFamily("manman_server_update_available", UPDATE_AVAILABLE_DOC,
                              labels=["server"])
        for v in servers:
            if v.game_id.startswith("steamcmd:"):
                g.add_metric([v.name], 1 if v.update_available else 0)
        yield g
        players = _players_gauge()
        for s in fleet.servers.values():
            q = s.observed.query if s.observed is not None and not s.deleting else None
            if q is not None and q.players is not None:
                players.add_metric([s.name], q.players)
        yield players
        yield _disk_full((v.name, v.limits.disk_mb, v.disk_full is not None) for v in servers)
        yield from _stats_gauges((s.spec.name, s.observed.stats) for s in fleet.servers.values()
                                 if s.observed is not None and not s.deleting)
        yield _counter("manman_heartbeats_received", "Heartbeats received",
                       fleet.heartbeats_received)
        yield _counter("manman_heartbeats_missed",
                       "Times a worker became unknown for missing heartbeats",
                       fleet.heartbeats_missed)
        pending = GaugeMetricFamily("manman_host_pending_records",
                                    "Records (audit trail, observed states) waiting for "
                                    "PostgreSQL", labels=["kind"])
        for kind, n in sorted(fleet.pending_records().items()):
            pending.add_metric([kind], n)
        yield pending
        yield _counter("manman_host_schedule_runs_stored",
                       "Schedule runs the workers reported with their heartbeats, written to "
                       "PostgreSQL", fleet.schedule_runs_stored)
        yield _counter("manman_host_records_dropped",
                       "Audit records dropped because the spool was full",
                       fleet.records_dropped)
        up = GaugeMetricFamily("manman_host_database_up",
                               "1 when PostgreSQL answered the last call, else 0")
        up.add_metric([], 1 if fleet.store.health.up else 0)
        yield up
        if last_backups is not None:
            yield from _last_backup_gauges(
                (rec.name, n, at) for sid, (n, at) in sorted(last_backups.by_server.items())
                if (rec := fleet.servers.get(sid)) is not None and not rec.deleting)
        if dispatcher is not None:
            attempts = CounterMetricFamily("manman_webhook_attempts",
                                           "Webhook delivery attempts, by outcome",
                                           labels=["outcome"])
            for outcome in ("ok", "failed", "error"):
                attempts.add_metric([outcome], dispatcher.attempts.get(outcome, 0))
            yield attempts
            pending = GaugeMetricFamily("manman_webhook_deliveries_pending",
                                        "Webhook deliveries under way (in flight or waiting "
                                        "for a retry)")
            pending.add_metric([], dispatcher.pending())
            yield pending
            yield _counter("manman_webhook_events_dropped",
                           "Webhook events dropped because a queue was full",
                           dispatcher.dropped)

    m.registry.register(LiveCollector(collect))
    return m
