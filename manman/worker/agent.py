"""The worker: supervises one ServerActor per server, persists their state in batches, and
comes back after a crash or SIGKILL with the same servers and no orphaned game process."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec
import trio

from manman import errors, models, ports
from manman.backoff import Backoff
from manman.config import WorkerConfig
from manman.models import ServerSpec, ServerStatus
from manman.worker import listening, machine, procs
from manman.worker.actor import ActorHooks, ServerActor
from manman.worker.console.broker import LogBroker
from manman.worker.disk.watch import DiskWatch
from manman.worker.installers.base import Installer, NoInstall
from manman.worker.installers.steam_builds import SteamBuilds
from manman.worker.limits.cgroups import BelowUse
from manman.worker.limits.manager import WorkerLimits
from manman.worker.runners.base import Runner, RunRecord, SpawnError
from manman.worker.runners.docker import DockerProcess, DockerRunner
from manman.worker.runners.exec import ExecProcess, ExecRunner
from manman.worker.store import StoredServer, WorkerStore

log = logging.getLogger("manman.worker")

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


# what the API's power routes ask of a server
Action = Literal["start", "stop", "kill", "restart", "install"]
# a process, an install or a pending restart: a delete with stop=true waits for it to end
_STOP_BEFORE_DELETE = machine.LIVE | {"installing", "crashed"}
# what a power action makes of the desired state (an install keeps it)
_DESIRED_AFTER: dict[Action, machine.Desired] = {
    "start": "running", "restart": "running", "stop": "stopped", "kill": "stopped"}


class ServerObserver(Protocol):
    """Told of every change of a server's state, and of its deletion (the host link)."""

    def server_changed(self, actor: ServerActor) -> None: ...


class InstallObserver(Protocol):
    """Told of every install that ended (the metrics)."""

    def install_finished(self, method: str, ok: bool, seconds: float) -> None: ...


def new_server_id() -> str:
    return secrets.token_hex(6)


@contextlib.contextmanager
def invalid_values() -> Iterator[None]:
    """The one place a ValueError (a value manman.models refuses) becomes `errors.Invalid`."""
    try:
        yield
    except ValueError as e:
        raise errors.Invalid(str(e)) from None


@dataclass
class RunnerAndInstaller:
    """How the servers of one install method are installed and run."""

    runner: Runner
    installer: Installer
    builds: SteamBuilds | None = None  # steamcmd: the build checks of auto_update


class WorkerAgent:
    """All the servers of one machine."""

    def __init__(self, cfg: WorkerConfig, *, installs: InstallObserver | None = None) -> None:
        self.cfg = cfg
        self.data_dir = Path(cfg.data_dir)
        self.actors: dict[str, ServerActor] = {}
        self.status: models.KnownWorkerStatus = "alive"
        self.store: WorkerStore | None = None
        self.shutdown_requested = trio.Event()  # graceful: stop every server, then exit
        self._keep_desired = True
        self.stopped = trio.Event()
        # exec servers' cgroups: the hierarchy is detected at start (run)
        self.limits = WorkerLimits(cfg.limits, cfg.cgroup_root)
        self.exec_runner = ExecRunner(self.limits)
        self.oom_kills: dict[str, int] = {}  # by server id, since the worker started
        self.steamcmd_lock = trio.Lock()  # steamcmd runs one at a time on a worker
        self.owner = ""  # labels this worker's containers (SQLite meta, made once)
        self._docker: DockerRunner | None = None
        self._scopes: dict[str, trio.CancelScope] = {}
        self.removing: set[str] = set()  # stopping now, deleted once stopped
        self._creating: set[str] = set()  # ids and names of creates under way
        self.port_range = ports.parse_range(cfg.port_range)
        # ports placed by creates and updates still being saved: (name, spec, allocated)
        self._placing: dict[str, tuple[str, ServerSpec, dict[str, int]]] = {}
        self._dirty: set[str] = set()
        self._dirty_wake = trio.Event()
        self._store_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._observers: list[ServerObserver] = []
        self._installs = installs
        self.started_at = time.time()
        # asked before each power action; one may refuse it (a restore under way)
        self.guards: list[Callable[[ServerActor, Action], None]] = []
        # asked before each launch: a reason the server may not start yet, or None
        self.holds: list[Callable[[ServerActor], str | None]] = []
        # told of players who joined or left by name (the webhook event queue)
        self.player_listeners: list[
            Callable[[ServerActor, list[tuple[str, str, int]], int, int], None]] = []
        # told of each server deleted with purge: what else it left goes too (its backups)
        self.purgers: list[Callable[[str], Awaitable[None]]] = []
        # every server's disk use and its limit (manman.worker.disk), once started
        self.disk: DiskWatch | None = None
        # save what they hold in the store before it closes (the events of the last stops)
        self.before_close: list[Callable[[], Awaitable[object]]] = []

    def add_observer(self, observer: ServerObserver) -> None:
        self._observers.append(observer)

    # -- runners and installers by install method ----------------------------------------------

    def runner_and_installer(self, spec: ServerSpec) -> RunnerAndInstaller:
        method = spec.install_method
        if method == "exec":
            return RunnerAndInstaller(self.exec_runner, NoInstall())
        if method == "steamcmd":
            from manman.worker.installers.steamcmd import SteamcmdInstaller

            installer = SteamcmdInstaller(self.cfg.steamcmd, self.cfg.install_timeout,
                                          self.steamcmd_lock, self.owner)
            return RunnerAndInstaller(self.exec_runner, installer, SteamBuilds(
                self.cfg.steamcmd, self.steamcmd_lock, installer.env))
        if method == "docker":
            from manman.worker.installers.docker import DockerPull

            runner = self.docker_runner()
            return RunnerAndInstaller(runner, DockerPull(runner.cli, self.cfg.install_timeout))
        raise errors.Invalid(f"unknown install method {method!r}")

    # -- the worker's life -------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[WorkerAgent] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # it holds this worker's token (its API's admin secret) and every console: the
        # owner's alone (a directory someone else owns is left as its owner set it)
        if self.data_dir.stat().st_uid == os.getuid():
            os.chmod(self.data_dir, 0o700)
        else:
            log.warning("data_dir %s belongs to another user: not made owner-only",
                        self.data_dir)
        self.store = await WorkerStore.open(self.data_dir / "worker.sqlite3")
        try:
            frozen = await self.store.get_meta("frozen")
            self.status = "frozen" if frozen == "1" else "alive"
            self.owner = await self.store.get_meta("owner") or ""
            if not self.owner:
                self.owner = secrets.token_hex(8)
                await self.store.set_meta({"owner": self.owner})
            for pid in await trio.to_thread.run_sync(procs.kill_helpers, self.owner):
                log.info("ended helper process %d left by the previous run", pid)
            await trio.to_thread.run_sync(self.limits.start, self.owner)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._persister)
                loaded = await self.store.load()
                # before any server starts: what an earlier worker left in its servers'
                # cgroups is killed (an exec game is never re-attached), and the cgroups
                # of servers deleted while it was down go
                killed, removed = await trio.to_thread.run_sync(
                    self.limits.recover, {s.id for s in loaded})
                for pid in killed:
                    log.info("killed process %d left in a server's cgroup", pid)
                for sid in removed:
                    log.info("removed the cgroup of unknown server %s", sid)
                # a server placed again at its start must avoid those not loaded yet
                self._placing.update({s.id: (s.spec.name, s.spec, s.status.allocated_ports)
                                      for s in loaded})
                for stored in loaded:
                    await self._add_actor(stored, recovering=True)
                    self._placing.pop(stored.id, None)
                nursery.start_soon(self._remove_stray_containers)
                task_status.started(self)
                await self.shutdown_requested.wait()
                await self._stop_all()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self._last_save()
                    for save in self.before_close:
                        await save()
                finally:
                    # even when the save failed: aiosqlite's thread would keep the process
                    for actor in self.actors.values():
                        actor.broker.close()
                    await self.store.close()
                    # exec games are gone (stopped, or killed when abandoned): their cgroups
                    # go too; a worker killed outright finds them at its next start
                    await trio.to_thread.run_sync(self.limits.close, set(self.actors))
            self.stopped.set()

    def docker_runner(self) -> DockerRunner:
        if self._docker is None:
            self._docker = DockerRunner(self.cfg.docker, self.owner, self.cfg.docker_network)
        return self._docker

    async def _remove_stray_containers(self) -> None:
        """Containers labelled as this worker's that belong to no server it knows (a server
        deleted while the worker was down, a crash between create and record)."""
        if shutil.which(self.cfg.docker) is None:
            return
        with trio.move_on_after(60):
            removed = await self.docker_runner().remove_strays(set(self.actors))
            for name in removed:
                log.info("removed stray container %s", name)

    async def _stop_all(self) -> None:
        """Every server stops gracefully (at once, each within its stop_timeout)."""
        self.status = "shutdown"
        async with trio.open_nursery() as nursery:
            for actor in list(self.actors.values()):
                nursery.start_soon(actor.shutdown, self._keep_desired)

    def request_shutdown(self, keep_desired: bool = True) -> None:
        """keep_desired: servers that should run start again with the next worker (a worker
        restart); False when the worker is retired for good."""
        self._keep_desired = keep_desired
        self.shutdown_requested.set()

    # -- servers -----------------------------------------------------------------------------

    def get(self, key: str) -> ServerActor:
        """A server by id or name."""
        actor = self.actors.get(key)
        if actor is None:
            for a in self.actors.values():
                if a.spec.name == key:
                    return a
            raise errors.NotFound(f"server {key[:100]} not found")
        return actor

    def check_writable(self, actor: ServerActor | None = None) -> None:
        if self.status == "frozen":
            raise errors.Conflict("the worker is frozen: it accepts no changes until unfrozen",
                                  "frozen")
        if self.status == "shutdown":
            raise errors.Conflict("the worker is shutting down", "shutting_down")
        if actor is not None and actor.id in self.removing:
            raise errors.Conflict("the server is being deleted", "deleting")

    async def create(self, spec: ServerSpec, server_id: str | None = None,
                     generation: int = 1) -> ServerActor:
        """A new server; `server_id` comes from the host (a standalone worker makes one)."""
        if server_id is None and not self.cfg.standalone:
            # the host would remove it at the next heartbeat: its servers are made there
            raise errors.Conflict("this worker is managed by its host: create servers there",
                                  "managed_by_host")
        self.check_writable()
        if server_id is not None:
            if not _ID_RE.fullmatch(server_id):
                raise errors.Invalid("id must be lowercase letters, digits and '-' (≤ 64)")
            if server_id in self.actors or server_id in self._creating:
                raise errors.Exists(f"a server with id {server_id} exists")
        if spec.name in self._creating or self.name_taken(spec.name):
            raise errors.Exists.server(spec.name)
        self.runner_and_installer(spec)  # refuse an install method this worker cannot run
        if self.cfg.standalone:  # nor limits it cannot enforce (a host checked them: a
            self.limits.check(spec)  # spec it sends anyway fails to start, saying why)
        new_id = server_id or new_server_id()
        allocated = self._place(spec, new_id, {})
        stored = StoredServer(
            id=new_id, spec=spec, generation=generation, desired_state=spec.desired_state,
            status=ServerStatus(updated_at=time.time(), allocated_ports=allocated),
            installed=False, crash_times=(), run_pid=None, run_pid_start=None,
            run_instance=None)
        # id and name are taken before the first await: a push and a heartbeat carrying the
        # same new server must not both create it
        claimed = {stored.id, spec.name}
        self._creating |= claimed
        self._placing[new_id] = (spec.name, spec, allocated)
        try:
            assert self.store is not None
            async with self._store_lock:
                await self.store.save([stored])
            return await self._add_actor(stored, recovering=False)
        finally:
            self._creating -= claimed
            self._placing.pop(new_id, None)

    def creating(self, server_id: str) -> bool:
        """A create of this id is under way (saving it)."""
        return server_id in self._creating

    def name_taken(self, name: str) -> bool:
        return any(a.spec.name == name for a in self.actors.values())

    async def update(self, actor: ServerActor, change: models.ServerUpdate,
                     generation: int | None = None) -> None:
        """A client's change of a server's spec; `generation` from the host (a late push of
        an older one is refused), else the next one. Saved before it is applied."""
        generation_given = generation
        spec, generation = self._updated(actor, change, generation)
        if generation_given is None and spec.desired_state == "running" \
                and actor.desired_state != "running":
            for guard in self.guards:  # a client's start; the host's waits for the hold
                guard(actor, "start")
        # a change that leaves the ports alone is never refused for them
        allocated = self._place(spec, actor.id, actor.status.allocated_ports,
                                strict=spec.ports != actor.spec.ports)
        self._placing[actor.id] = (spec.name, spec, allocated)
        try:
            async with self._saved_first(
                    actor, spec=spec, generation=generation, desired_state=spec.desired_state,
                    status=msgspec.structs.replace(actor.status, allocated_ports=allocated)):
                # checked again: a heartbeat may have changed the server while it was saved
                spec, generation = self._updated(actor, change, generation)
                limits_before = actor.spec.limits
                actor.update_spec(spec, generation, change.restart_on_change)
                actor.status.allocated_ports = allocated
        finally:
            self._placing.pop(actor.id, None)
        if spec.limits != limits_before:
            await self._limits_now(actor)

    async def _limits_now(self, actor: ServerActor) -> None:
        """Changed limits of a running exec server are written to its cgroup at once (else
        they apply at its next start, as for docker)."""
        run = actor.run
        proc = run.proc if run is not None else None
        if isinstance(proc, DockerProcess):
            refused = await proc.update_limits(actor.spec.limits)
            actor.broker.note("new limits applied to the running container" if refused is None
                              else f"new limits not applied to the running container "
                                   f"({refused}); they apply at the next start")
            return
        if not isinstance(proc, ExecProcess) or proc.group is None or not self.limits.enforcing:
            return
        try:
            await trio.to_thread.run_sync(proc.group.change, actor.spec.limits)
        except BelowUse as e:
            actor.broker.note(f"new limits not applied to the running game: it uses "
                              f"{e.used >> 20} MiB, over the new memory limit; they apply at "
                              "the next start")
            return
        except OSError as e:
            actor.broker.note(f"new limits not applied to the running game ({e.strerror or e});"
                              " they apply at the next start")
            return
        proc.memory_mb = actor.spec.limits.memory_mb
        actor.broker.note("new limits applied to the running game")

    # -- ports ---------------------------------------------------------------------------

    def _taken(self, but: str) -> dict[tuple[int, str], str]:
        """The ports the other servers hold (and those of creates and updates under way)."""
        servers = [(a.spec.name, a.spec, a.status.allocated_ports)
                   for a in self.actors.values() if a.id != but]
        servers += [v for k, v in self._placing.items() if k != but]
        return ports.taken_by(servers)

    def _place(self, spec: ServerSpec, server_id: str, previous: dict[str, int],
               strict: bool = True) -> dict[str, int]:
        """The numbers of the spec's `auto` ports. Standalone, a fixed port another server
        holds or a full port_range is refused (409); the host checked both before it sent
        the spec, so a managed worker takes it and places what it can at the next start."""
        if not spec.ports:
            return {}
        taken = self._taken(server_id)
        if strict and self.cfg.standalone:
            return ports.place(spec, self.port_range, taken, previous, listening.port_free)
        try:
            return ports.allocate(spec, self.port_range, taken, previous, listening.port_free)
        except errors.Conflict as e:
            log.warning("server %s: %s; trying again at its start", server_id, e.message)
            return {k: v for k, v in previous.items() if k in {p.name for p in spec.ports}}

    def _launch_ports(self, actor: ServerActor) -> dict[str, int]:
        """At each start: the allocation, kept while still valid, else placed again (a
        spec the host changed by heartbeat, a port_range that changed)."""
        if not actor.spec.ports:
            return {}
        try:
            allocated = ports.allocate(actor.spec, self.port_range, self._taken(actor.id),
                                       actor.status.allocated_ports, listening.port_free)
        except errors.Conflict as e:
            raise SpawnError(e.message) from None
        if allocated != actor.status.allocated_ports:
            actor.status.allocated_ports = allocated  # saved before the spawn (_record)
        return allocated

    def _updated(self, actor: ServerActor, change: models.ServerUpdate,
                 generation: int | None) -> tuple[ServerSpec, int]:
        """The spec and generation an update makes, or the error that refuses it."""
        self.check_writable(actor)
        if change.name is not msgspec.UNSET and change.name != actor.spec.name and \
                self.name_taken(change.name):
            raise errors.Exists.server(change.name)
        with invalid_values():
            spec = models.apply_update(actor.spec, change)
        if change.desired_state is msgspec.UNSET and spec.desired_state != actor.desired_state:
            # a power action (POST /start) changed what the server should do since its spec
            # was written: a change of other fields keeps that, it must not stop the server
            spec = msgspec.structs.replace(spec, desired_state=actor.desired_state)
        if spec.limits != actor.spec.limits and self.cfg.standalone:  # (as at create)
            self.limits.check(spec)
        if generation is None:
            generation = actor.generation + 1
        if generation < actor.generation:  # a late push: a newer spec is already here
            raise errors.Conflict(f"generation {generation} is older than the server's "
                                  f"{actor.generation}", "stale_generation")
        return spec, generation

    async def act(self, actor: ServerActor, action: Action) -> None:
        """A power action asked by a client; refused when the server's state does not allow
        it. Saved (its desired state) before it is applied: on a full disk a stop would be
        undone by a restart, and a start could not record its process."""
        self.check_writable(actor)
        machine.check(action, actor.status.state)  # a refused command saves nothing
        for guard in self.guards:
            guard(actor, action)
        do = {"start": actor.start, "stop": actor.stop, "kill": actor.kill,
              "restart": actor.restart, "install": actor.install}[action]
        async with self._saved_first(actor, desired_state=_DESIRED_AFTER.get(
                action, actor.desired_state)):
            self.check_writable(actor)
            do()

    @contextlib.asynccontextmanager
    async def _saved_first(self, actor: ServerActor, **changes: Any) -> AsyncIterator[None]:
        """Save the server with `changes`, then run the body that applies them (sync code,
        under the store lock: no batched save of the old state comes in between). One that
        cannot be saved raises InsufficientStorage and is not applied: a restart would
        undo it."""
        assert self.store is not None
        row = dataclasses.replace(self._stored(actor), **changes)
        # stamped: a command is a change, and SQLite skips writing a row identical to the
        # stored one, so a restart would pass on a full disk, stop the game and then find
        # it cannot record the new process
        row.status = msgspec.structs.replace(row.status, updated_at=time.time())
        async with self._store_lock:
            await self.store.save([row])
            try:
                yield
            except BaseException:
                # refused after all: the store holds what was not applied; save what is
                self._mark_dirty(actor)
                raise

    def send_console(self, actor: ServerActor, line: str) -> None:
        """One line to the server's stdin (to the actor rebuilt after a fault, if it was)."""
        with invalid_values():
            models.check_console_line(line)
        current = self.actors.get(actor.id)
        if current is None:
            raise errors.NotFound("the server was deleted")
        current.send_console(line)

    async def _add_actor(self, stored: StoredServer, recovering: bool) -> ServerActor:
        actor = self._build_actor(stored)
        if recovering and (stored.run_pid or stored.run_instance):
            actor.leftover = RunRecord(stored.id, stored.run_pid, stored.run_pid_start,
                                       stored.run_instance)
        self.actors[actor.id] = actor
        assert self._nursery is not None
        await self._nursery.start(self._keep_running, actor)
        return actor

    def _build_actor(self, stored: StoredServer, broker: LogBroker | None = None) -> ServerActor:
        how = self.runner_and_installer(stored.spec)
        server_dir = self.data_dir / "servers" / stored.id
        broker = broker or LogBroker(server_dir / "logs", ring_bytes=self.cfg.console_ring_bytes,
                                     file_bytes=self.cfg.log_file_bytes,
                                     files_keep=self.cfg.log_files_keep)
        return ServerActor(
            stored.id, stored.spec, generation=stored.generation, server_dir=server_dir,
            runner=how.runner, installer=how.installer, broker=broker,
            hooks=ActorHooks(changed=self._changed, persist_now=self._persist_now,
                             installed=self._installs.install_finished
                             if self._installs is not None else None,
                             reported=self._reported,
                             ports=self._launch_ports, hold=self._held,
                             players=self._players, exit_reason=self._exit_reason),
            status=stored.status, installed=stored.installed, crash_times=stored.crash_times,
            desired=stored.desired_state, builds=how.builds,
            update_min_interval=self.cfg.update_check_min_interval)

    def _held(self, actor: ServerActor) -> str | None:
        return next((why for hold in self.holds if (why := hold(actor)) is not None), None)

    async def _keep_running(self, actor: ServerActor,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise one actor: a fault inside it is logged and the actor started again; it
        never takes the worker or another server down."""
        with trio.CancelScope() as scope:
            self._scopes[actor.id] = scope
            backoff = Backoff(0.5, 30)
            while True:
                try:
                    await actor.serve(task_status=task_status)
                    return
                except Exception:
                    log.exception("server %s: actor fault; restarting it", actor.id)
                    if actor.started.is_set():
                        task_status = trio.TASK_STATUS_IGNORED
                    record = actor.record()
                    with contextlib.suppress(Exception):
                        actor.broker.note("manman internal error; the server's supervisor "
                                          "restarts")
                    await trio.sleep(backoff.next())
                    actor = self._rebuild(actor, record)

    def _exit_reason(self, actor: ServerActor, reason: str) -> None:
        if reason.startswith("out of memory"):
            self.oom_kills[actor.id] = self.oom_kills.get(actor.id, 0) + 1

    def _rebuild(self, old: ServerActor, record: RunRecord) -> ServerActor:
        stored = self._stored(old)
        new = self._build_actor(stored, broker=old.broker)
        new.leftover = record if (record.pid or record.instance) else None
        self.actors[new.id] = new
        return new

    async def remove(self, actor: ServerActor, *, stop: bool, purge: bool) -> bool:
        """A client's delete: True once deleted; False when the server is still live and
        `stop` asks to stop it first, in the background (its stop_timeout may be longer than
        any client should wait)."""
        if stop and actor.status.state in _STOP_BEFORE_DELETE:
            self.check_writable(actor)
            # the stop is saved first: if the delete cannot be saved later, it stays stopped
            async with self._saved_first(actor, desired_state="stopped"):
                self.delete_later(actor, purge)
            return False
        await self.delete(actor, purge=purge)
        return True

    async def delete(self, actor: ServerActor, *, stop: bool = False, purge: bool = False
                     ) -> None:
        self.check_writable()
        if stop:
            await actor.shutdown()
        assert self.store is not None
        try:
            self.check_writable()  # the worker may have begun to shut down meanwhile
            actor.check_deletable()
            async with self._store_lock:
                # gone from the store first: a delete that cannot be saved is refused
                # (InsufficientStorage) and the server stays (a restart would bring it back)
                await self.store.delete(actor.id)
                scope = self._scopes.pop(actor.id, None)
                if scope is not None:
                    scope.cancel()
                self.actors.pop(actor.id, None)
                self._dirty.discard(actor.id)
        except (errors.Conflict, errors.InsufficientStorage):
            actor.reopen()
            raise
        actor.broker.close(("not_found", "the server was deleted"))
        self.oom_kills.pop(actor.id, None)
        if actor.spec.install_method != "docker":
            await trio.to_thread.run_sync(self.limits.remove, actor.id)
        if purge:
            await trio.to_thread.run_sync(shutil.rmtree, actor.server_dir, True)
            for purger in self.purgers:
                await purger(actor.id)
        for observer in self._observers:
            observer.server_changed(actor)

    def delete_later(self, actor: ServerActor, purge: bool) -> None:
        """Stop a live server gracefully and delete it once stopped, in the background."""
        self.check_writable(actor)
        self.removing.add(actor.id)
        assert self._nursery is not None
        self._nursery.start_soon(self._delete_when_stopped, actor, purge)

    async def _delete_when_stopped(self, actor: ServerActor, purge: bool) -> None:
        try:
            await actor.shutdown()
            await self.delete(actor, purge=purge)
        except (errors.Conflict, errors.InsufficientStorage) as e:
            log.warning("server %s not deleted: %s", actor.id, e)
        finally:
            self.removing.discard(actor.id)

    async def set_frozen(self, frozen: bool) -> None:
        """Saved before it is applied (InsufficientStorage: not applied)."""
        if self._shutting_down():
            raise errors.Conflict("the worker is shutting down", "shutting_down")
        assert self.store is not None
        async with self._store_lock:
            await self.store.set_meta({"frozen": "1" if frozen else None})
            if not self._shutting_down():  # (saved: it holds from the next start)
                self.status = "frozen" if frozen else "alive"

    def _shutting_down(self) -> bool:
        return self.status == "shutdown"

    # -- persistence: batched on state changes, never per console line -----------------------

    def _stored(self, actor: ServerActor) -> StoredServer:
        rec = actor.record()
        return StoredServer(
            id=actor.id, spec=actor.spec, generation=actor.generation,
            desired_state=actor.desired_state, status=actor.status, installed=actor.installed,
            crash_times=actor.crash_times, run_pid=rec.pid, run_pid_start=rec.pid_start,
            run_instance=rec.instance)

    def _changed(self, actor: ServerActor) -> None:
        self._mark_dirty(actor)
        for observer in self._observers:
            observer.server_changed(actor)

    def _players(self, actor: ServerActor, changes: list[tuple[str, str, int]],
                 unnamed: int, count: int) -> None:
        for listener in self.player_listeners:
            listener(actor, changes, unnamed, count)

    def _reported(self, actor: ServerActor) -> None:
        """Observed data that is not saved (the query's answer): the host hears of it."""
        for observer in self._observers:
            observer.server_changed(actor)

    def _mark_dirty(self, actor: ServerActor) -> None:
        self._dirty.add(actor.id)
        self._dirty_wake.set()

    async def _persist_now(self, actor: ServerActor) -> None:
        self._dirty.discard(actor.id)
        assert self.store is not None
        try:
            async with self._store_lock:
                await self.store.save([self._stored(actor)])
        except Exception:
            self._mark_dirty(actor)  # saved in a batch later
            raise

    async def _persister(self) -> None:
        failing_since: float | None = None  # one line when saving fails, one when it works
        while True:
            await self._dirty_wake.wait()
            self._dirty_wake = trio.Event()
            await trio.sleep(0.05)  # a burst of changes becomes one transaction
            try:
                await self.flush()
            except Exception as e:  # a full disk: keep the servers running, try again later
                if failing_since is None:
                    failing_since = time.monotonic()
                    if isinstance(e, errors.InsufficientStorage):
                        log.warning("cannot save the servers' state: %s; retrying every "
                                    "second", e.message)
                    else:
                        log.exception("cannot save the servers' state; retrying every second")
                await trio.sleep(1)
                self._dirty_wake.set()
            else:
                if failing_since is not None:
                    log.info("saved the servers' state again (after %.0f s)",
                             time.monotonic() - failing_since)
                    failing_since = None

    async def _last_save(self) -> None:
        """The final save of a stopping worker: a failure is logged, never raised (a
        shutdown must end). What it loses is observed state only: a desired-state change is
        saved before it is applied, and the next start recovers what runs from the pids."""
        try:
            await self.flush()
        except errors.InsufficientStorage as e:
            log.error("cannot save the servers' last state: %s", e.message)
        except Exception:
            log.exception("cannot save the servers' last state")

    async def flush(self) -> None:
        """Save now the state changes not saved yet (they are saved in batches)."""
        ids, self._dirty = self._dirty, set()
        rows = [self._stored(self.actors[i]) for i in ids if i in self.actors]
        if rows and self.store is not None:
            try:
                async with self._store_lock:
                    await self.store.save(rows)
            except Exception:
                self._dirty |= ids  # saved next time
                raise

    # -- facts -----------------------------------------------------------------------------------

    def resources(self) -> dict[str, object]:
        load1, load5, load15 = os.getloadavg()
        mem: dict[str, int] = {}
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    mem[key] = int(rest.split()[0]) * 1024
        except OSError:
            pass
        return {"cpus": os.cpu_count(), "load": [load1, load5, load15],
                "memory_total": mem.get("MemTotal"), "memory_available": mem.get("MemAvailable"),
                "disk_free": shutil.disk_usage(self.data_dir).free}
