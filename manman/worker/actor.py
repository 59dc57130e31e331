"""ServerActor: the trio shell around one game server.

The actor owns the game process (it may crash and be started again under the same actor) and
runs, in its nursery: the process supervisor (spawn, readers, exit handling, backoff), the
stdin writer fed by a bounded command channel, the health prober, and install jobs. Commands
are checked and applied synchronously (`start()`, `stop()`, …): the state they set is what
serialises them, so there is no await between the 409 check and the change.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from manman.models import ServerSpec, ServerStatus
from manman.worker import machine, procs
from manman.worker.console.broker import LogBroker
from manman.worker.console.lines import LineFramer
from manman.worker.installers.base import InstallContext, Installer, InstallError
from manman.worker.machine import Conflict
from manman.worker.runners.base import GameProcess, LaunchContext, Runner, RunRecord, SpawnError

log = logging.getLogger("manman.worker.actor")

STDIN_QUEUE = 64
READ_SIZE = 1 << 16


class Busy(Exception):
    """The server cannot take this now (HTTP 503): e.g. its console input queue is full."""


@dataclass(eq=False)
class Run:
    """One life of the game process."""

    instance: str
    proc: GameProcess | None = None
    spawned: trio.Event = field(default_factory=trio.Event)
    exited: trio.Event = field(default_factory=trio.Event)
    exit_code: int | None = None
    stop_requested: bool = False
    kill_requested: bool = False  # a user's kill, not the escalation of a stop
    crash_reason: str | None = None  # set by the health prober before it kills


@dataclass
class ActorHooks:
    """How an actor tells its worker that something changed."""

    changed: Callable[[ServerActor], None]  # persist (batched) and report to the host
    persist_now: Callable[[ServerActor], Awaitable[None]]  # before a spawn: no orphan unrecorded
    installed: Callable[[str, bool, float], None] | None = None  # method, ok, seconds


class ServerActor:
    """One game server: state, process, console and policy."""

    def __init__(self, server_id: str, spec: ServerSpec, *, generation: int, server_dir: Path,
                 runner: Runner, installer: Installer, broker: LogBroker, hooks: ActorHooks,
                 status: ServerStatus | None = None, installed: bool = False,
                 crash_times: tuple[float, ...] = ()) -> None:
        self.id = server_id
        self.spec = spec
        self.generation = generation
        self.desired_state = spec.desired_state
        self.server_dir = server_dir
        self.files_dir = server_dir / "files"
        self.runner = runner
        self.installer = installer
        self.broker = broker
        self.hooks = hooks
        self.status = status or ServerStatus()
        self.installed = installed or not installer.needed
        self.crash_times = crash_times
        self.run: Run | None = None
        self.leftover: RunRecord | None = None  # set by the worker when recovering
        self._ready_re: re.Pattern[str] | None = None
        self._nursery: trio.Nursery | None = None
        self._backoff: trio.CancelScope | None = None
        self._install_scope: trio.CancelScope | None = None  # made before the task runs
        self._install_done = trio.Event()
        self._stdin_send, self._stdin_recv = trio.open_memory_channel[str](STDIN_QUEUE)
        self._closing = False  # shutdown() began: nothing starts again
        # a start (desired running) that came while stopping or installing: acted on after
        self._start_pending = False
        self.started = trio.Event()

    # -- the actor's life -----------------------------------------------------------------

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. A game process still running then is abandoned (exec: killed;
        docker: left running for the next worker to re-attach)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._stdin_writer)
            nursery.start_soon(self._health_prober)
            await self._recover()
            self.started.set()
            task_status.started()

    async def _recover(self) -> None:
        """Come back from a stored state: re-adopt or remove a leftover process, then act on
        the desired state."""
        record, self.leftover = self.leftover, None
        if record is not None:
            proc = await self.runner.adopt(record, self.spec, since=self.broker.last_ts)
            if proc is not None:
                run = Run(instance=record.instance or _new_instance(), proc=proc)
                run.spawned.set()
                self._begin_run(run, proc, adopted=True)
                if self.desired_state != "running":  # the old worker died while stopping it
                    self._spawn_task(self._stop_run, self._begin_stop())
                return
            killed = await self.runner.remove_leftover(record)
            if killed:
                self.broker.note(f"stopped {len(killed)} leftover process(es) of an earlier worker")
        state = self.status.state
        if state != "failed":
            state = "stopped" if self.installed else "created"
        self._set(state=state, ready=False, pid=None, install_progress=None)
        if state == "failed":
            return  # a crash loop or failed install waits for a person, even across restarts
        if not self.installed:
            self._start_install(then_start=self.desired_state == "running")
        elif self.desired_state == "running":
            self._launch_soon()

    # -- commands (sync: check and change with no await in between) --------------------------

    def start(self) -> None:
        machine.check("start", self.status.state)
        self._start_fresh()

    def _start_fresh(self) -> None:
        """A person's start: the crash count begins again; install first if needed."""
        self.desired_state = "running"
        self._cancel_backoff()
        self.status.restarts = 0
        self.crash_times = ()
        if not self.installed:
            self._start_install(then_start=True)
        else:
            self._launch_soon()

    def _begin_stop(self) -> Run:
        """Enter `stopping` now; the caller starts the task that stops the run."""
        run = self.run
        assert run is not None
        run.stop_requested = True
        self._set(state="stopping")
        return run

    def stop(self) -> None:
        machine.check("stop", self.status.state)
        self.desired_state = "stopped"
        if self.status.state == "crashed":
            self._cancel_backoff()
            self._set(state="stopped")
            self.broker.note("restart cancelled: stopped")
            return
        self._spawn_task(self._stop_run, self._begin_stop())

    def restart(self) -> None:
        machine.check("restart", self.status.state)
        if self.status.state in machine.LIVE:
            self.desired_state = "running"
            self.status.restarts = 0
            self.crash_times = ()
            self._spawn_task(self._stop_then, self._begin_stop(), self._launch_soon)
        else:
            self._start_fresh()

    def kill(self) -> None:
        machine.check("kill", self.status.state)
        self.desired_state = "stopped"
        if self.status.state == "installing":
            if self._install_scope is not None:
                self._install_scope.cancel()
            return
        run = self.run
        assert run is not None
        run.kill_requested = True
        self._set(state="stopping")
        if run.proc is not None:
            self._spawn_task(run.proc.kill)

    def install(self) -> None:
        machine.check("install", self.status.state)
        if self.status.state in machine.LIVE:
            self._spawn_task(partial(self._stop_then, install=True), self._begin_stop(),
                             lambda: self._start_install(then_start=True))
        else:
            self._cancel_backoff()
            self._start_install(then_start=self.desired_state == "running"
                                and self.status.state != "failed")

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
        self._closing = False

    def update_spec(self, spec: ServerSpec, generation: int, restart_on_change: bool) -> None:
        """Apply a new spec: its desired state acts at once; other changes take effect on the
        next start, or now with restart_on_change."""
        other_changed = _without_desired(spec) != _without_desired(self.spec)
        self.spec = spec
        self.generation = generation
        state = self.status.state
        try:
            if spec.desired_state == "running":
                if state in ("created", "stopped", "crashed", "failed"):
                    self.start()
                elif restart_on_change and other_changed and state in ("starting", "running"):
                    self.restart()
                elif state in ("stopping", "installing") and self.desired_state != "running":
                    self._start_pending = True  # (a restart or reinstall starts by itself)
            elif state in ("starting", "running", "crashed"):
                self.stop()
        except Conflict as e:  # the spec is kept; the action waits for a state that allows it
            self.broker.note(f"spec updated; not applied now: {e}")
        self.desired_state = spec.desired_state
        self.hooks.changed(self)

    async def shutdown(self, keep_desired: bool = False) -> None:
        """Stop the game gracefully (worker shutdown, delete); returns when it has exited.
        keep_desired: a worker restart, after which a server that should run runs again."""
        self._closing = True
        if not keep_desired:
            self.desired_state = "stopped"
            if self.status.state == "installing" and self._install_scope is not None:
                self._install_scope.cancel()  # a delete: the install is not wanted any more
                await self._install_done.wait()
        self._cancel_backoff()
        # an install in progress is cancelled with the actor and stays `installing` on disk,
        # so the next worker installs again instead of calling it failed
        run = self.run
        if run is not None:
            if not run.stop_requested and not run.kill_requested:
                await self._stop_run(self._begin_stop())
            await run.exited.wait()
        elif self.status.state == "crashed":
            self._set(state="stopped")

    def record(self) -> RunRecord:
        run = self.run
        pid = run.proc.pid if run and run.proc else None
        return RunRecord(self.id, pid, procs.start_time(pid) if pid else None,
                         run.instance if run else None)

    # -- process supervision ---------------------------------------------------------------

    def _spawn_task(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        assert self._nursery is not None, "actor not serving"
        self._nursery.start_soon(fn, *args)

    def _launch_soon(self) -> None:
        """Enter `starting` now (so later commands see it) and spawn in the background."""
        run = Run(instance=_new_instance())
        self.run = run
        self._start_pending = False  # it is starting now
        self._set(state="starting", ready=False, pid=None, exit_code=None, error=None,
                  install_progress=None)
        self._spawn_task(self._launch, run)

    async def _launch(self, run: Run) -> None:
        ctx = LaunchContext(self.id, self.spec, self.files_dir, run.instance)
        try:
            await self.hooks.persist_now(self)  # the instance token is on disk before a process
            proc = await self.runner.spawn(ctx)
        except (SpawnError, OSError) as e:  # OSError: a disk that cannot take the state
            if not isinstance(e, SpawnError):
                e = SpawnError(f"{type(e).__name__}: {e}")
            if self.run is run:
                self.run = None
            run.spawned.set()
            run.exited.set()
            self.desired_state = "stopped"
            self._set(state="failed", error=str(e), pid=None)
            self.broker.note(f"failed to start: {e}")
            return
        except BaseException:  # a bug: the actor is rebuilt; whoever waits on this run goes on
            run.spawned.set()
            run.exited.set()
            raise
        run.proc = proc
        run.spawned.set()
        self._begin_run(run, proc, adopted=False)

    def _begin_run(self, run: Run, proc: GameProcess, adopted: bool) -> None:
        self.run = run
        now = time.time()
        self.broker.note(f"{'re-attached' if adopted else 'started'} (pid {proc.pid})")
        if run.kill_requested:
            self._spawn_task(proc.kill)
        elif run.stop_requested:
            pass  # _stop_run is waiting for `spawned`
        elif adopted or not self.spec.ready_pattern:
            self._set(state="running", ready=True, pid=proc.pid, started_at=now)
        else:
            self._ready_re = re.compile(self.spec.ready_pattern)
            self._set(pid=proc.pid, started_at=now)
        self._spawn_task(self._supervise, run, proc)

    async def _supervise(self, run: Run, proc: GameProcess) -> None:
        code: int | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, run, proc.stdout, "stdout")
                if proc.stderr is not None:
                    nursery.start_soon(self._read, run, proc.stderr, "stderr")
                code = await proc.wait()
                await proc.cleanup()
                # what the pipes still hold is read; a grandchild holding them open is not
                # waited for
                nursery.cancel_scope.deadline = trio.current_time() + 2
        finally:
            if code is None:
                proc.abandon()
            run.exit_code = code
            run.exited.set()  # set even when this task fails: stop and delete wait for it
        # (cancelled, self.run stays: the worker records it, a rebuilt actor re-attaches)
        self.run = None
        self._ready_re = None
        self._after_exit(run, code)

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
            lines = framer.feed(data)
            if lines:
                publish(name, lines)
                if self._ready_re is not None and run is self.run:
                    self._check_ready(lines)
        publish(name, framer.flush())

    def _check_ready(self, lines: list[str]) -> None:
        pattern = self._ready_re
        assert pattern is not None
        for text in lines:
            if pattern.search(text):
                self._ready_re = None
                if self.status.state == "starting":
                    self._set(state="running", ready=True)
                return

    def _after_exit(self, run: Run, code: int | None) -> None:
        how = machine.describe_exit(code)
        if run.stop_requested or run.kill_requested:
            self._set(state="stopped", ready=False, pid=None, exit_code=code)
            self.broker.note(f"stopped ({how})")
            if self._take_pending_start():
                self._start_fresh()
            return
        decision = machine.after_exit(self.spec.restart, self.crash_times, time.time(), code,
                                        run.crash_reason)
        self.crash_times = decision.crash_times
        if decision.state == "stopped":
            self.desired_state = "stopped"
            self._set(state="stopped", ready=False, pid=None, exit_code=code)
            self.broker.note(f"exited ({how}); restart policy {self.spec.restart.policy}: "
                             "not restarting")
        elif decision.state == "failed":
            self._set(state="failed", ready=False, pid=None, exit_code=code,
                      error=decision.error)
            self.broker.note(f"failed: {decision.error}")
        else:
            delay = decision.delay or 0.0
            self._set(state="crashed", ready=False, pid=None, exit_code=code,
                      error=decision.error)
            self.broker.note(f"crashed ({decision.error}); restarting in {delay:g}s")
            self._spawn_task(self._restart_after, delay)

    async def _restart_after(self, delay: float) -> None:
        with trio.CancelScope() as scope:
            self._backoff = scope
            await trio.sleep(delay)
        if self._backoff is scope:
            self._backoff = None
        if scope.cancelled_caught or self.status.state != "crashed" or self._closing:
            return
        self.status.restarts += 1
        self._launch_soon()

    def _take_pending_start(self) -> bool:
        """A start that arrived while stopping or installing is due now (not after a
        shutdown began, nor when a later stop or kill changed the desired state)."""
        pending, self._start_pending = self._start_pending, False
        return pending and self.desired_state == "running" and not self._closing

    def _cancel_backoff(self) -> None:
        if self._backoff is not None:
            self._backoff.cancel()
            self._backoff = None

    async def _stop_run(self, run: Run) -> None:
        """stop_command (or SIGTERM), wait stop_timeout, then kill; returns once exited."""
        await run.spawned.wait()
        proc = run.proc
        if proc is None or run.exited.is_set():
            await run.exited.wait()
            return
        timeout = self.spec.stop_timeout
        sent = False
        if self.spec.stop_command is not None:
            with trio.move_on_after(min(timeout, 5)):
                try:
                    await proc.write_line(self.spec.stop_command)
                    sent = True
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
        if not sent:
            await proc.terminate(timeout)
        with trio.move_on_after(timeout):
            await run.exited.wait()
        if not run.exited.is_set():
            self.broker.note(f"did not stop within {timeout:g}s: killing")
            await proc.kill()
            await run.exited.wait()

    async def _stop_then(self, run: Run, then: Callable[[], None], *, install: bool = False
                         ) -> None:
        """Restart and reinstall: the next step only if nobody killed, stopped or deleted it
        meanwhile (a reinstall still installs, and starts only if still wanted)."""
        await self._stop_run(run)
        if self.status.state != "stopped" or run.kill_requested or self._closing:
            return
        if install or self.desired_state == "running":
            then()

    # -- installs --------------------------------------------------------------------------

    def _start_install(self, then_start: bool) -> None:
        # the scope exists at once: a kill or delete before the task runs still cancels it
        self._install_scope, self._install_done = trio.CancelScope(), trio.Event()
        self._set(state="installing", install_progress=0.0, error=None, ready=False)
        self._spawn_task(self._install, then_start)

    async def _install(self, then_start: bool) -> None:
        ctx = InstallContext(self.id, self.spec, self.files_dir,
                             publish=lambda lines: self.broker.publish("install", lines),
                             progress=self._set_progress)
        error: str | None = None
        began = time.monotonic()
        scope, done = self._install_scope or trio.CancelScope(), self._install_done
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
            self._install_scope = None
            done.set()
        pending = self._take_pending_start()  # consumed whatever the outcome
        if scope.cancelled_caught:
            error = "install cancelled"
        if self.hooks.installed is not None and self.installer.needed:
            self.hooks.installed(self.spec.install_method, error is None,
                                 time.monotonic() - began)
        if error is not None:
            self.desired_state = "stopped"
            self._set(state="failed", error=error, install_progress=None)
            self.broker.note(f"install failed: {error}")
            return
        self.installed = True
        self._set(state="stopped", install_progress=100.0)
        self.broker.note("installed")
        if (then_start or pending) and self.desired_state == "running" and not self._closing:
            self._launch_soon()

    def _set_progress(self, value: float) -> None:
        if value != self.status.install_progress:
            self._set(install_progress=value)

    # -- console input, health ----------------------------------------------------------------

    async def _stdin_writer(self) -> None:
        async for line in self._stdin_recv:
            run = self.run
            if run is None or run.proc is None:
                self.broker.note(f"not sent (server not running): {line[:200]}")
                continue
            try:
                await run.proc.write_line(line)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self.broker.note(f"not sent (console input closed): {line[:200]}")

    async def _health_prober(self) -> None:
        failures = 0
        while True:
            health = self.spec.health
            await trio.sleep(health.interval)
            run = self.run
            if health.tcp_port is None or self.status.state != "running" or run is None:
                failures = 0
                continue
            if await tcp_probe("127.0.0.1", health.tcp_port, health.timeout):
                failures = 0
                continue
            failures += 1
            # a stop may have begun while the probe waited: a graceful stop is not a crash
            if failures >= health.failures and run is self.run and run.proc is not None \
                    and self.status.state == "running" and not run.stop_requested \
                    and not run.kill_requested:
                failures = 0
                run.crash_reason = (f"health check failed: tcp port {health.tcp_port} "
                                    f"not accepting connections ({health.failures} probes)")
                self.broker.note(run.crash_reason)
                await run.proc.kill()

    async def probe(self) -> dict[str, object]:
        """An on-demand health check (command type `health`)."""
        alive = self.run is not None and self.run.proc is not None
        result: dict[str, object] = {"state": self.status.state, "process_alive": alive}
        port = self.spec.health.tcp_port
        if port is not None and alive:
            result["tcp_port"] = port
            result["tcp_ok"] = await tcp_probe("127.0.0.1", port, self.spec.health.timeout)
        return result

    # -- state -------------------------------------------------------------------------------

    def _set(self, **changes: object) -> None:
        st = self.status
        for key, value in changes.items():
            setattr(st, key, value)
        st.updated_at = time.time()
        self.broker.set_state({"state": st.state, "ready": st.ready, "pid": st.pid,
                               "exit_code": st.exit_code, "restarts": st.restarts,
                               "install_progress": st.install_progress})
        self.hooks.changed(self)


def _new_instance() -> str:
    return secrets.token_hex(12)


def _without_desired(spec: ServerSpec) -> tuple[object, ...]:
    return tuple(getattr(spec, f) for f in spec.__struct_fields__ if f != "desired_state")


async def tcp_probe(host: str, port: int, timeout: float) -> bool:
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False
