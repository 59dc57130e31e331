"""`manman worker`: the agent, its API, and (with a host_url) its link to the host."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import trio

from manman.config import Config
from manman.http import auth
from manman.http.app import serve, settle_gc
from manman.http.metrics import WorkerMetrics
from manman.http.signals import Stopper
from manman.limits import report_open_files
from manman.presets import PresetCatalog, operator_dir
from manman.worker.agent import WorkerAgent
from manman.worker.api import WorkerSecrets, build_worker_api
from manman.worker.backups.manager import BackupManager
from manman.worker.backups.report import BackupReporter
from manman.worker.disk.watch import DiskWatch
from manman.worker.schedules.service import WorkerSchedules
from manman.worker.stats.sampler import StatsSampler

if TYPE_CHECKING:
    from manman.worker.hostlink import HostLink

log = logging.getLogger("manman.worker")


@dataclass
class WorkerHandle:
    """A running worker, for `manman up` and tests."""

    agent: WorkerAgent
    url: str
    secrets: WorkerSecrets
    link: HostLink | None = None
    schedules: WorkerSchedules | None = None
    sampler: StatsSampler | None = None


async def run_worker(cfg: Config, *, handle_signals: bool = False,
                     task_status: trio.TaskStatus[WorkerHandle] = trio.TASK_STATUS_IGNORED
                     ) -> None:
    """Run a worker until it is shut down (POST /shutdown, SIGINT/SIGTERM, or its host).
    Needs the asyncio bridge loop open (manman.aio.open_loop)."""
    wcfg = cfg.worker
    # a standalone worker makes servers from presets itself; a joined one gets specs
    catalog = PresetCatalog.load(operator_dir(wcfg.data_dir)) if wcfg.standalone \
        else PresetCatalog({})
    metrics = WorkerMetrics()
    agent = WorkerAgent(wcfg, installs=metrics)
    stopper = Stopper(agent.request_shutdown)
    agent_up = False

    async def give_up_start() -> None:
        """The start failed (a host that refuses this worker) or a signal ended it: the
        servers already relaunched stop gracefully."""
        if agent_up:
            agent.request_shutdown()
            await agent.stopped.wait()

    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(stopper.watch)
        try:
            with stopper.starting:
                await nursery.start(agent.run)
                agent_up = True
                backups = BackupManager(agent, wcfg.effective_backup_dir())
                await nursery.start(backups.run)
                # on the worker: a host outage stops none
                schedules = WorkerSchedules(agent, backups)
                agent.add_observer(schedules)
                await nursery.start(schedules.run)
                disk = DiskWatch(agent, wcfg.disk_check_interval)
                agent.disk = disk
                agent.add_observer(disk)
                await nursery.start(disk.run)
                sampler = StatsSampler(agent, wcfg.stats_interval)
                if wcfg.stats_interval > 0:
                    await nursery.start(sampler.run)
                link: HostLink | None = None
                if wcfg.standalone:
                    admin_secret = wcfg.api_token or auth.load_or_create_token(
                        wcfg.data_dir / "api-token")
                else:
                    from manman.worker.events import EventQueue
                    from manman.worker.hostlink import HostLink

                    assert agent.store is not None
                    # the webhook events, recorded here so that none is lost while the host
                    # is away; saved before the store closes
                    events = EventQueue(agent, agent.store)
                    await events.load(backups)
                    agent.add_observer(events)
                    agent.player_listeners.append(events.players_changed)
                    agent.before_close.append(events.flush)
                    nursery.start_soon(events.run)
                    link = HostLink(agent, wcfg, events)
                    link.runs = schedules
                    agent.add_observer(link)
                    admin_secret = await link.identity()
                metrics.watch(agent, link, backups, schedules)
                secrets = WorkerSecrets(admin_secret)
                api = build_worker_api(agent, secrets, metrics, catalog, schedules, backups,
                                       sampler, link.events if link is not None else None)
                stop_api = trio.Event()
                url = await nursery.start(partial(serve, header_timeout=wcfg.header_timeout),
                                         api.app, wcfg.listen, stop_api)
                if wcfg.standalone:
                    await cfg.seed(agent.name_taken, agent.create)
                else:
                    assert link is not None
                    await nursery.start(link.run, wcfg.effective_advertise_url(url))
                    nursery.start_soon(BackupReporter(link, backups).run)
                log.info("worker %s listening on %s", wcfg.effective_name(), url)
                report_open_files()
                settle_gc()
                stopper.started()
                task_status.started(WorkerHandle(agent, url, secrets, link, schedules, sampler))
        except BaseException as e:
            if not isinstance(e, trio.Cancelled):
                await give_up_start()  # before the error is reported
            raise
        if not stopper.up:  # a signal while starting (a host that does not answer)
            await give_up_start()
            nursery.cancel_scope.cancel()
            return
        await agent.stopped.wait()
        stop_api.set()
        if link is not None:
            await link.closing()
        nursery.cancel_scope.cancel()
