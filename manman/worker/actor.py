"""ServerActor: the trio shell around one game server.

What to do is decided by `machine.ServerMachine`; the actor carries out the effects it
returns (spawn, write the stop command, terminate, kill, install, sleep out a backoff, console
notes, persistence) and feeds it what happens (a process spawned or exited, a ready line, a
failed health probe, an install's end). In its nursery run those effects' tasks, the readers
of each run, the stdin writer fed by a bounded command channel, and the health prober.
Commands are synchronous: the machine checks and changes the state with no await between.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import trio

from manman import ports
from manman.backoff import Backoff
from manman.errors import Busy, InsufficientStorage
from manman.models import ServerSpec, ServerStatus, redact
from manman.ports import query_port
from manman.worker import machine, procs
from manman.worker.console.broker import LogBroker
from manman.worker.console.lines import LineFramer
from manman.worker.installers.base import InstallContext, Installer, InstallError
from manman.worker.installers.steam_builds import SteamBuilds
from manman.worker.machine import Desired, Effect, ServerMachine
from manman.worker.query import PlayerCounter, QueryResult, query
from manman.worker.query.result import as_status, failed
from manman.worker.runners.base import GameProcess, LaunchContext, Runner, RunRecord, SpawnError
from manman.worker.updater import Updater

__all__ = ["ActorHooks", "Run", "ServerActor", "tcp_probe"]

log = logging.getLogger("manman.worker.actor")

STDIN_QUEUE = 64
READ_SIZE = 1 << 16
INPUT_CLOSED = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass(eq=False)
class Run:
    """One life of the game process: what the actor holds of it (the machine has the rest)."""

    id: int  # the machine's run id
    instance: str  # the token in the process's environment, to find it again
    proc: GameProcess | None = None
    spawned: trio.Event = field(default_factory=trio.Event)
    exited: trio.Event = field(default_factory=trio.Event)
    ready_re: re.Pattern[str] | None = None  # while waiting for the ready line
    wake: trio.Event = field(default_factory=trio.Event)  # a command while it waits to begin
    players: PlayerCounter | None = None  # counting join/leave lines (player_patterns)
    adopted: bool = False  # re-attached after a worker restart: who is on is not known


class _Held(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class ActorHooks:
    """How an actor tells its worker that something changed."""

    changed: Callable[[ServerActor], None]  # persist (batched) and report to the host
    persist_now: Callable[[ServerActor], Awaitable[None]]  # before a spawn: no orphan unrecorded
    installed: Callable[[str, bool, float], None] | None = None  # method, ok, seconds
    # the query's answer changed: report it to the host, not saved (probes are frequent)
    reported: Callable[[ServerActor], None] | None = None
    # at each start: the numbers of the `auto` ports (raises SpawnError when none is free)
    ports: Callable[[ServerActor], dict[str, int]] | None = None
    # before each start: why the server may not start yet (a restore under way), or None;
    # the start waits, `starting` with that error, until `wake_launch` or a retry finds none
    hold: Callable[[ServerActor], str | None] | None = None
    # players who joined or left, by name, from the player patterns (in order; how many more
    # a flood had; the count after), before the count they changed is reported
    players: Callable[[ServerActor, list[tuple[str, str, int]], int, int], None] | None = None
    # a run ended for a reason its exit code does not say (an OOM kill): the metrics
    exit_reason: Callable[[ServerActor, str], None] | None = None


class ServerActor:
    """One game server: its machine, its process, its console."""

    def __init__(self, server_id: str, spec: ServerSpec, *, generation: int, server_dir: Path,
                 runner: Runner, installer: Installer, broker: LogBroker, hooks: ActorHooks,
                 status: ServerStatus | None = None, installed: bool = False,
                 crash_times: tuple[float, ...] = (), desired: Desired | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 builds: SteamBuilds | None = None, update_min_interval: float = 60.0) -> None:
        self.id = server_id
        self.generation = generation
        self.machine = ServerMachine(spec, status=status, crash_times=crash_times,
                                     installed=installed or not installer.needed,
                                     desired=desired)
        self.server_dir = server_dir
        self.files_dir = server_dir / "files"
        self.runner = runner
        self.installer = installer
        self.broker = broker
        self.hooks = hooks
        self.run: Run | None = None
        self.leftover: RunRecord | None = None  # set by the worker when recovering
        self.started = trio.Event()
        self._now = wall_clock
        self._nursery: trio.Nursery | None = None
        self._adopted: tuple[str, GameProcess] | None = None
        self._backoff: trio.CancelScope | None = None
        # made with the effect, before the task runs: a kill or delete then still cancels it
        self._install_scope = trio.CancelScope()
        self._install_done = trio.Event()
        self._stdin_send, self._stdin_recv = trio.open_memory_channel[str](STDIN_QUEUE)
        # steamcmd servers: Steam build checks and auto_update
        self.updater = Updater(self, builds, update_min_interval) if builds else None

    # -- the machine's data, under the names the worker uses ----------------------------------

    @property
    def spec(self) -> ServerSpec:
        return self.machine.spec

    @property
    def status(self) -> ServerStatus:
        return self.machine.status

    @property
    def installed(self) -> bool:
        return self.machine.installed

    @property
    def crash_times(self) -> tuple[float, ...]:
        return self.machine.crash_times

    @property
    def desired_state(self) -> Desired:
        return self.machine.desired

    # -- the actor's life -----------------------------------------------------------------

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. A game process still running then is abandoned (exec: killed;
        docker: left running for the next worker to re-attach)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._stdin_writer)
            nursery.start_soon(self._health_prober)
            await self._recover()
            if self.updater is not None:
                nursery.start_soon(self.updater.serve)
            self.started.set()
            task_status.started()

    async def _recover(self) -> None:
        """Re-adopt or remove a process left by an earlier worker, then let the machine act
        on the desired state."""
        record, self.leftover = self.leftover, None
        removed = 0
        if record is not None:
            proc = await self.runner.adopt(record, self.spec, since=self.broker.last_ts)
            if proc is not None:
                self._adopted = (record.instance or _new_instance(), proc)
                self._apply(self.machine.recovered(self._now(), adopted=True, pid=proc.pid))
                return
            removed = len(await self.runner.remove_leftover(record))
        self._apply(self.machine.recovered(self._now(), removed=removed))

    # -- commands (sync: the machine checks and changes with no await in between) -----------

    def start(self) -> None:
        self._apply(self._recovered().start())

    def stop(self) -> None:
        self._apply(self._recovered().stop())

    def restart(self) -> None:
        self._apply(self._recovered().restart())

    def kill(self) -> None:
        self._apply(self._recovered().kill())

    def install(self) -> None:
        self._apply(self._recovered().install())

    def run_update(self) -> None:
        """A Steam build update (the updater's): stop, install, start again if it ran."""
        self._apply(self._recovered().update())

    def _recovered(self) -> ServerMachine:
        """The machine, once recovery is over: until the actor knows whether a process is
        left from before, a start could spawn a second one beside it."""
        if not self.started.is_set():
            raise Busy("the server is being recovered; try again")
        return self.machine

    def disk_measured(self, used: int, limit: int | None) -> None:
        """The disk check's total (manman.worker.disk): over or back under the limit."""
        if self.started.is_set():  # (recovering: the next check judges it)
            self._apply(self.machine.disk_measured(used, limit, self._now()))

    def send_console(self, line: str) -> None:
        machine.check("command", self.status.state)
        try:
            self._stdin_send.send_nowait(line)
        except trio.WouldBlock:
            raise Busy("console input queue is full; try again") from None

    def check_deletable(self) -> None:
        machine.check("delete", self.status.state)

    def reopen(self) -> None:
        """A delete that did not go through after shutdown(): restarts work again."""
        self.machine.reopen()

    def update_spec(self, spec: ServerSpec, generation: int, restart_on_change: bool) -> None:
        """Apply a new spec: its desired state acts at once; other changes take effect on the
        next start, or now with restart_on_change."""
        m = self._recovered()
        self.generation = generation
        self._apply(m.update_spec(spec, restart_on_change))
        if self.updater is not None:
            self.updater.spec_changed(spec)

    async def shutdown(self, keep_desired: bool = False) -> None:
        """Stop the game gracefully (worker shutdown, delete); returns when it has exited.
        keep_desired: a worker restart, after which a server that should run runs again."""
        effects = self.machine.shutdown(keep_desired)
        self._apply(effects)
        # an install left running is cancelled with the actor and stays `installing` on
        # disk, so the next worker installs again instead of calling it failed
        if any(isinstance(e, machine.CancelInstall) for e in effects):
            await self._install_done.wait()
        if self.run is not None:
            await self.run.exited.wait()

    def record(self) -> RunRecord:
        run = self.run
        pid = run.proc.pid if run and run.proc else None
        return RunRecord(self.id, pid, procs.start_time(pid) if pid else None,
                         run.instance if run else None)

    # -- effects -----------------------------------------------------------------------------

    def _apply(self, effects: list[Effect]) -> None:
        changed = persist = report = False  # once per batch: one state message, save, report
        for effect in effects:
            match effect:
                case machine.Changed():
                    changed = True
                case machine.Persist():
                    persist = True
                case machine.Report():
                    report = True
                case machine.Note(text):  # may quote a command line: no secret in it
                    self.broker.note(redact(text, self.spec.secret_values))
                case machine.Spawn(run_id):
                    self.run = Run(run_id, _new_instance())
                    self._spawn_task(self._launch, self.run)
                case machine.Adopt(run_id):
                    assert self._adopted is not None
                    (instance, proc), self._adopted = self._adopted, None
                    self.run = Run(run_id, instance, proc, adopted=True)
                    self.run.spawned.set()
                    self._spawn_task(self._supervise, self.run, proc)
                case machine.WatchReady(run_id, pattern):
                    if run := self._live(run_id):
                        run.ready_re = re.compile(pattern)
                case machine.WriteStop(run_id, line, timeout):
                    if run := self._live(run_id):
                        self._spawn_task(self._write_stop, run, line, timeout)
                case machine.Terminate(run_id, timeout, sig):
                    if run := self._live(run_id):
                        self._spawn_task(self._terminate, run, timeout, sig)
                case machine.Kill(run_id):
                    if (run := self._live(run_id)) and run.proc is not None:
                        self._spawn_task(run.proc.kill)
                case machine.StartInstall():
                    self._install_scope, self._install_done = trio.CancelScope(), trio.Event()
                    self._spawn_task(self._install, self._install_scope, self._install_done)
                case machine.CancelInstall():
                    self._install_scope.cancel()
                case machine.StartBackoff(token, delay):
                    self._backoff = trio.CancelScope()
                    self._spawn_task(self._restart_after, self._backoff, token, delay)
                case machine.CancelBackoff():
                    if self._backoff is not None:
                        self._backoff.cancel()
                        self._backoff = None
                case machine.UpdateCalledOff(reason):
                    if self.updater is not None:
                        self.updater.update_called_off(reason)
        if changed:
            st = self.status
            st.updated_at = self._now()
            self.broker.set_state({"state": st.state, "ready": st.ready, "pid": st.pid,
                                   "exit_code": st.exit_code, "restarts": st.restarts,
                                   "install_progress": st.install_progress})
        if changed or persist:
            self.hooks.changed(self)
        elif report and self.hooks.reported is not None:
            self.hooks.reported(self)
        run = self.run
        if run is not None and run.proc is None:  # waiting to begin: let it look again
            run.wake.set()
        if changed and self.updater is not None:
            self.updater.state_seen()

    def wake_launch(self) -> None:
        """What held a start back is over: a start waiting to begin looks again now."""
        run = self.run
        if run is not None and run.proc is None:
            run.wake.set()

    def status_changed(self) -> None:
        """A status field outside the machine's changed (the builds): stamp and report."""
        self.status.updated_at = self._now()
        self.hooks.changed(self)

    def _live(self, run_id: int) -> Run | None:
        """The current run if it is this one and has not exited."""
        run = self.run
        return run if run is not None and run.id == run_id and not run.exited.is_set() else None

    def _spawn_task(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        assert self._nursery is not None, "actor not serving"
        self._nursery.start_soon(fn, *args)

    # -- process supervision ---------------------------------------------------------------

    async def _launch(self, run: Run) -> None:
        try:
            ctx = LaunchContext(self.id, self._launch_spec(), self.files_dir, run.instance,
                                note=self.broker.note)
            if not await self._record(run):
                return
            proc = await self.runner.spawn(ctx)
        except (SpawnError, OSError) as e:  # OSError: a disk that cannot take the state
            if not isinstance(e, SpawnError):
                e = SpawnError(f"{type(e).__name__}: {e}")
            if self.run is run:
                self.run = None
            run.spawned.set()
            run.exited.set()
            self._apply(self.machine.spawn_failed(run.id, str(e)))
            return
        except BaseException:  # a bug: the actor is rebuilt; whoever waits on this run goes on
            run.spawned.set()
            run.exited.set()
            raise
        run.proc = proc
        run.spawned.set()
        self._apply(self.machine.spawned(run.id, proc.pid, self._now()))
        self._spawn_task(self._supervise, run, proc)

    def _launch_spec(self) -> ServerSpec:
        """The spec as launched: ports placed, `{{port.NAME}}` filled in."""
        allocated = self.hooks.ports(self) if self.hooks.ports else self.status.allocated_ports
        try:
            return ports.resolve(self.spec, allocated)
        except ValueError as e:
            raise SpawnError(str(e)) from None

    async def _record(self, run: Run) -> bool:
        """Save the run's instance token before its process exists (no orphan unrecorded).
        On a full disk it waits for space, retrying, its status's error saying why; False
        when a stop, kill or shutdown called the start off meanwhile."""
        backoff = Backoff(0.5, 10)
        waited = False
        while True:
            try:
                held = self.hooks.hold(self) if self.hooks.hold is not None else None
                if held is not None:
                    raise _Held(held)
                await self.hooks.persist_now(self)
            except (InsufficientStorage, _Held) as e:
                if not waited:  # once: the status says it for as long as it lasts
                    log.warning("server %s cannot start: %s; it starts when that is over",
                                self.id, e.message)
                    waited = True
                self._apply(self.machine.launch_blocked(run.id, e.message))
                run.wake = trio.Event()
                if self.machine.launch_wanted(run.id):
                    with trio.move_on_after(backoff.next()):
                        await run.wake.wait()
                if not self.machine.launch_wanted(run.id):
                    if self.run is run:
                        self.run = None
                    run.spawned.set()
                    run.exited.set()
                    self._apply(self.machine.launch_called_off(run.id))
                    return False
                continue
            if waited:
                log.info("server %s: its start is saved now; starting", self.id)
            return True

    async def _supervise(self, run: Run, proc: GameProcess) -> None:
        code: int | None = None
        reason: str | None = None
        spec = self.spec
        # a re-attached game's players stay unknown: counting from 0, a join and a leave
        # would read as empty with everyone from before still on
        if machine.counts_players(spec) and spec.player_patterns is not None \
                and not run.adopted:
            run.players = PlayerCounter(spec.player_patterns.join, spec.player_patterns.leave)
        prober = trio.CancelScope()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, run, proc.stdout, "stdout")
                if proc.stderr is not None:
                    nursery.start_soon(self._read, run, proc.stderr, "stderr")
                if machine.ready_by_query(spec):
                    nursery.start_soon(self._query_prober, run, spec, prober)
                code = await proc.wait()
                prober.cancel()
                # before cleanup: docker's goes with rm. A clean exit is not an OOM crash,
                # even when a helper of the game was killed for memory earlier
                reason = await proc.exit_reason() if code != 0 else None
                if reason is not None and self.hooks.exit_reason is not None:
                    self.hooks.exit_reason(self, reason)
                await proc.cleanup()
                # what the pipes still hold is read; a grandchild holding them open is not
                # waited for
                nursery.cancel_scope.deadline = trio.current_time() + 2
        finally:
            if code is None:
                proc.abandon()
            run.exited.set()  # set even when this task fails: stop and delete wait for it
        # (cancelled, self.run stays: the worker records it, a rebuilt actor re-attaches)
        if self.run is run:
            self.run = None
        run.ready_re = None
        self._apply(self.machine.exited(run.id, code, self._now(), reason))

    async def _read(self, run: Run, stream: trio.abc.ReceiveStream, name: str) -> None:
        framer = LineFramer()
        publish = self.broker.publish
        while True:
            try:
                data = await stream.receive_some(READ_SIZE)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                break
            if not data:
                break
            lines = framer.feed(cast(bytes, data))
            if lines:
                publish(name, lines)
                if run.ready_re is not None:
                    self._check_ready(run, run.ready_re, lines)
                if run.players is not None:
                    self._count_players(run, run.players, lines)
                if self.updater is not None and self.updater.patterns:
                    self.updater.lines(lines)
        publish(name, framer.flush())

    def _check_ready(self, run: Run, pattern: re.Pattern[str], lines: list[str]) -> None:
        for text in lines:
            if pattern.search(text):
                run.ready_re = None
                self._apply(self.machine.ready_seen(run.id))
                return

    def _count_players(self, run: Run, counter: PlayerCounter, lines: list[str]) -> None:
        feed = counter.feed
        changed = False
        for text in lines:
            changed |= feed(text)
        if changed:  # one report per batch of lines, not per join
            if self.hooks.players is not None:  # each by name (a join and leave in one batch)
                self.hooks.players(self, *counter.take_changes(), counter.count)
            self._apply(self.machine.players_counted(run.id, counter.count, self._now()))

    async def _query_prober(self, run: Run, spec: ServerSpec, scope: trio.CancelScope) -> None:
        """Ask the game (health.query, on loopback) every `interval` while this run lives."""
        q = spec.health.query
        assert q is not None and q.type != "console"
        with scope:
            due = trio.current_time()
            while True:
                due = max(due + q.interval, trio.current_time())
                await trio.sleep_until(due)
                port = query_port(spec, self.status.allocated_ports)
                result: QueryResult
                if port is None:
                    result = failed(f"query port {q.port} has no number yet")
                else:
                    result = await query(q.type, "127.0.0.1", port, q.timeout)
                if run.exited.is_set():
                    return
                self._apply(self.machine.query_answered(run.id, as_status(result), self._now()))
                if run.ready_re is not None and self.status.ready:
                    run.ready_re = None  # ready by the query: the line is not looked for

    async def _write_stop(self, run: Run, line: str, timeout: float) -> None:
        assert run.proc is not None
        sent = False
        with trio.move_on_after(min(timeout, 5)):
            try:
                await run.proc.write_line(line)
                sent = True
            except INPUT_CLOSED:
                pass
        if sent:
            await self._stop_deadline(run, timeout)
        else:
            self._apply(self.machine.stop_write_failed(run.id, timeout))

    async def _terminate(self, run: Run, timeout: float, sig: str = "SIGTERM") -> None:
        assert run.proc is not None
        await run.proc.terminate(timeout, sig)
        await self._stop_deadline(run, timeout)

    async def _stop_deadline(self, run: Run, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await run.exited.wait()
        if not run.exited.is_set():
            self._apply(self.machine.stop_overdue(run.id, timeout))

    async def _restart_after(self, scope: trio.CancelScope, token: int, delay: float) -> None:
        with scope:
            await trio.sleep(delay)
        if self._backoff is scope:
            self._backoff = None
        if not scope.cancelled_caught:
            self._apply(self.machine.backoff_elapsed(token))

    # -- installs --------------------------------------------------------------------------

    async def _install(self, scope: trio.CancelScope, done: trio.Event) -> None:
        ctx = InstallContext(self.id, self.spec, self.files_dir,
                             publish=lambda lines: self.broker.publish("install", lines),
                             progress=lambda value: self._apply(
                                 self.machine.install_progress(value)))
        error: str | None = None
        began = time.monotonic()
        try:
            with scope:
                try:
                    await self.installer.install(ctx)
                except InstallError as e:
                    error = str(e)
                except Exception as e:  # a disk or permission error: failed, not a loop
                    log.exception("install of %s failed", self.id)
                    error = f"{type(e).__name__}: {e}"
        finally:
            done.set()
        if scope.cancelled_caught:
            error = "install cancelled"
        if self.hooks.installed is not None and self.installer.needed:
            self.hooks.installed(self.spec.install_method, error is None,
                                 time.monotonic() - began)
        self._apply(self.machine.install_done(error))
        if self.updater is not None:
            await self.updater.install_ended(error)

    # -- console input, health ----------------------------------------------------------------

    async def _stdin_writer(self) -> None:
        async for line in self._stdin_recv:
            run = self.run
            if run is None or run.proc is None:
                self.broker.note(f"not sent (server not running): {line[:200]}")
                continue
            try:
                await run.proc.write_line(line)
            except INPUT_CLOSED:
                self.broker.note(f"not sent (console input closed): {line[:200]}")

    async def _health_prober(self) -> None:
        while True:
            health = self.spec.health
            await trio.sleep(health.interval)
            run = self.run
            if health.tcp_port is None or self.status.state != "running" or run is None:
                self.machine.probe_idle()
            elif await tcp_probe("127.0.0.1", health.tcp_port, health.timeout):
                self.machine.probe_ok()
            else:
                self._apply(self.machine.probe_failed(run.id))

    async def probe(self) -> dict[str, object]:
        """An on-demand health check (command type `health`)."""
        alive = self.run is not None and self.run.proc is not None
        result: dict[str, object] = {"state": self.status.state, "process_alive": alive}
        port = self.spec.health.tcp_port
        if port is not None and alive:
            result["tcp_port"] = port
            result["tcp_ok"] = await tcp_probe("127.0.0.1", port, self.spec.health.timeout)
        return result


def _new_instance() -> str:
    return secrets.token_hex(12)


async def tcp_probe(host: str, port: int, timeout: float) -> bool:
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False
