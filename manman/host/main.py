"""`manman host` (the control plane) and `manman up` (host + a worker, one process)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

import msgspec
import trio

from manman import errors
from manman.config import Config
from manman.host import audit
from manman.host.api import build_host_api
from manman.host.control import HostControl
from manman.host.embedded import EmbeddedPostgres
from manman.host.fleet import Fleet
from manman.host.relay import HostSecrets, Relay
from manman.host.spool import FILE_NAME, Spool
from manman.host.store import HostStore
from manman.host.webhooks.delivery import Dispatcher, Policy
from manman.host.webhooks.model import OwnApi
from manman.host.webhooks.service import Webhooks, add_webhook_routes
from manman.http import auth
from manman.http.app import serve, settle_gc
from manman.http.signals import Stopper
from manman.limits import report_open_files
from manman.presets import PresetCatalog, operator_dir

log = logging.getLogger("manman.host")


@dataclass
class HostHandle:
    """A running host, for `manman up` and tests."""

    url: str
    secrets: HostSecrets
    control: HostControl
    stop_event: trio.Event
    stopped: trio.Event
    webhooks: Webhooks | None = None

    def stop(self) -> None:
        self.stop_event.set()


def host_secrets(cfg: Config) -> HostSecrets:
    d = cfg.host.data_dir
    return HostSecrets(
        admin_token=cfg.host.admin_token or auth.load_or_create_token(d / "admin-token"),
        join_token=cfg.host.join_token or auth.load_or_create_token(d / "join-token"),
        host_secret=auth.load_or_create_token(d / "host-secret"))


async def run_host(cfg: Config, *, handle_signals: bool = False,
                   task_status: trio.TaskStatus[HostHandle] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the host API until stopped (SIGINT/SIGTERM or `HostHandle.stop`). Needs the
    asyncio bridge loop open."""
    hcfg = cfg.host
    hcfg.data_dir.mkdir(parents=True, exist_ok=True)
    # a preset file at fault stops the host before anything else starts
    catalog = PresetCatalog.load(operator_dir(hcfg.data_dir))
    secrets = host_secrets(cfg)
    embedded = None
    stopped = trio.Event()
    store: HostStore | None = None
    control: HostControl | None = None
    relay = Relay(secrets)
    stop = trio.Event()
    stopper = Stopper(stop.set)
    try:
        async with trio.open_nursery() as loops:
            if handle_signals:
                loops.start_soon(stopper.watch)
            with stopper.starting:
                db_url = hcfg.database_url
                if not db_url:
                    embedded = EmbeddedPostgres(hcfg.data_dir)
                    db_url = await embedded.start()
                store = await _open_store(db_url, bool(hcfg.database_url))
                fleet = Fleet(store, hcfg.worker_timeout, hcfg.worker_expiry,
                              Spool(hcfg.data_dir / FILE_NAME))
                await fleet.load()
                control = HostControl(store, fleet, relay)
                await control.forget_deleted_on_retired()
                await control.last_backups.load(store)
                hooks = Webhooks(store, fleet, Dispatcher(store, Policy(
                    timeout=hcfg.webhook_timeout, retry_initial=hcfg.webhook_retry_initial)))
                api = build_host_api(control, secrets, hcfg.console_token_ttl, catalog,
                                     hooks.dispatcher)
                await hooks.load()
                add_webhook_routes(api, hooks)
                fleet.watcher = hooks
                control.events_sink = hooks.take_events
                await loops.start(hooks.dispatcher.run)
                await loops.start(control.run, hcfg.flush_interval, stop)
                loops.start_soon(audit.prune_loop, store, hcfg.audit_days)
                async with trio.open_nursery() as api_nursery:
                    url = await api_nursery.start(
                        partial(serve, header_timeout=hcfg.header_timeout), api.app,
                        hcfg.listen, stop)
                    log.info("host listening on %s", url)
                    hooks.dispatcher.own = OwnApi.of(url)
                    report_open_files()
                    settle_gc()
                    stopper.started()
                    task_status.started(HostHandle(url, secrets, control, stop, stopped,
                                                   hooks))
            # `stop` was set and the API has drained (or a signal ended the start-up): the
            # loops go too
            loops.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await relay.aclose()
            if store is not None:
                try:
                    if control is not None:
                        await control.fleet.flush()
                finally:
                    await store.close()
            if embedded is not None:
                await embedded.stop()
            stopped.set()


async def _open_store(url: str, configured: bool) -> HostStore:
    try:
        return await HostStore.open(url)
    except Exception as e:  # refused, a bad password, no such database: the URL's trouble
        if not configured:
            raise
        text = f"{type(e).__name__}: {e}"
        password = urlsplit(url).password
        if password:
            text = text.replace(password, "***")
        raise errors.StartupError(
            f"host.database_url: cannot connect to PostgreSQL: {text}") from None


async def run_up(cfg: Config, *, handle_signals: bool = False,
                 task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
    """A host with its embedded PostgreSQL and one worker joined to it, in one process."""
    from manman.worker.main import run_worker

    stopper = Stopper()
    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(stopper.watch)
        with stopper.starting:
            host: HostHandle = await nursery.start(run_host, cfg)
            wcfg = msgspec.structs.replace(cfg.worker, host_url=host.url,
                                           join_token=host.secrets.join_token)
            worker = await nursery.start(run_worker, msgspec.structs.replace(cfg, worker=wcfg))
            await cfg.seed(host.control.fleet.name_taken, host.control.create_server,
                           worker.link.worker_id)
            _banner(cfg, host)
            stopper.started()
            task_status.started((host, worker))
        if not stopper.up:  # a signal while starting: what started is cancelled and cleaned
            nursery.cancel_scope.cancel()
            return
        async with trio.open_nursery() as wait:
            wait.start_soon(_until, stopper.requested, wait.cancel_scope)
            wait.start_soon(_until, worker.agent.stopped, wait.cancel_scope)
        worker.agent.request_shutdown()
        await worker.agent.stopped.wait()
        host.stop()
        await host.stopped.wait()
        nursery.cancel_scope.cancel()  # the signal watcher


async def _until(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _banner(cfg: Config, host: HostHandle) -> None:
    config = f" --config {cfg.path}" if cfg.path else ""
    names = [s.get("name") for s in cfg.servers]
    first = names[0] if names else "<server>"
    print(f"""
manman is up.
  host API     {host.url}   (admin token in {cfg.host.data_dir / 'admin-token'})
  servers      manman servers{config}
  console      manman logs {first} -f{config}
  send a line  manman send {first} "say hello"{config}
  web console  {host.url}/
Ctrl-C stops the servers, the worker and the host.
""", file=sys.stderr, flush=True)
