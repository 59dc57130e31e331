"""The server state machine and the restart policy: pure code, no I/O, no clock.

`ServerMachine` holds what a server is doing (its state, the desired state, the current run
and its flags, a start waiting for a stop or an install, a pending restart, shutdown). Each
command (`start`, `stop`, …) and event (`spawned`, `exited`, …) changes it and returns the
effects the actor must carry out (spawn, write the stop command, kill, install, sleep …).
A command the state does not accept raises `Conflict` and changes nothing. Time comes in as
an argument, so every race is a plain function call in a test.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Literal

from manman.backoff import exponential
from manman.errors import Conflict
from manman.models import DiskFull, QueryStatus, RestartSpec, ServerSpec, ServerStatus

Desired = Literal["running", "stopped"]

# the states a command is accepted in; anything else is a 409 and changes nothing
ALLOWED: dict[str, frozenset[str]] = {
    "start": frozenset({"created", "stopped", "crashed", "failed"}),
    "stop": frozenset({"starting", "running", "crashed"}),
    "restart": frozenset({"starting", "running", "stopped", "crashed", "failed"}),
    "kill": frozenset({"installing", "starting", "running", "stopping"}),
    "install": frozenset({"created", "stopped", "crashed", "failed", "starting", "running"}),
    "command": frozenset({"starting", "running"}),
    "delete": frozenset({"created", "stopped", "crashed", "failed"}),
}

# states with a live game process (or one being spawned)
LIVE = frozenset({"starting", "running", "stopping"})


def check(action: str, state: str) -> None:
    """Raise Conflict when `action` is not accepted in `state`."""
    if state not in ALLOWED[action]:
        raise Conflict(f"cannot {action} a server that is {state}", code="invalid_state")


# -- effects: what the actor does for the machine --------------------------------------------


@dataclass(frozen=True, slots=True)
class Changed:
    """The status changed: stamp it, show it to viewers, persist it (batched), report it."""


@dataclass(frozen=True, slots=True)
class Persist:
    """The spec or desired state changed: persist (batched) and report."""


@dataclass(frozen=True, slots=True)
class Report:
    """The query's answer changed (players, ok, …): report it to the host, with no save and
    no state message (a probe every few seconds must cost no disk write)."""


@dataclass(frozen=True, slots=True)
class Note:
    """A line from manman in the server's console."""

    text: str


@dataclass(frozen=True, slots=True)
class Spawn:
    """Start a new run of the game (after persisting its instance token); report `spawned`
    or `spawn_failed`, then `exited`."""

    run: int


@dataclass(frozen=True, slots=True)
class Adopt:
    """Take the process found at recovery as this run; report `exited` when it ends."""

    run: int


@dataclass(frozen=True, slots=True)
class WatchReady:
    """Look for this pattern in the run's output; report `ready_seen` on the first match."""

    run: int
    pattern: str


@dataclass(frozen=True, slots=True)
class WriteStop:
    """Write the stop command to the run's stdin (given at most min(timeout, 5) s); report
    `stop_write_failed` if it cannot be written, else `stop_overdue` after `timeout`."""

    run: int
    line: str
    timeout: float


@dataclass(frozen=True, slots=True)
class Terminate:
    """Send `signal` to the run (SIGTERM: `docker stop`; another: `docker kill --signal`);
    report `stop_overdue` after `timeout`."""

    run: int
    timeout: float
    signal: str = "SIGTERM"


@dataclass(frozen=True, slots=True)
class Kill:
    """Kill the run now."""

    run: int


@dataclass(frozen=True, slots=True)
class StartInstall:
    """Run the installer; report `install_done`."""


@dataclass(frozen=True, slots=True)
class CancelInstall:
    """Cancel the install in progress (it still reports `install_done`)."""


@dataclass(frozen=True, slots=True)
class StartBackoff:
    """Sleep `delay` seconds, then report `backoff_elapsed(token)`."""

    token: int
    delay: float


@dataclass(frozen=True, slots=True)
class CancelBackoff:
    """The backoff sleep in progress is not needed any more."""


@dataclass(frozen=True, slots=True)
class UpdateCalledOff:
    """A build update will not install after all (a kill or shutdown ended its stop)."""

    reason: str


Effect = (Changed | Persist | Report | Note | Spawn | Adopt | WatchReady | WriteStop | Terminate
          | Kill | StartInstall | CancelInstall | StartBackoff | CancelBackoff | UpdateCalledOff)


@dataclass
class RunFlags:
    """What the machine knows of one life of the game process."""

    id: int
    spawned: bool = False  # the process exists (spawned or adopted)
    stop_requested: bool = False
    kill_requested: bool = False  # a person's kill, not the escalation of a stop
    # after the stop: a restart, a reinstall, a build update
    then: Literal["start", "install", "update"] | None = None
    awaiting_ready: bool = False
    crash_reason: str | None = None  # set when the health probe kills it
    query_failures: int = 0  # failed query probes in a row, counted after initial_delay


class ServerMachine:
    """One server's lifecycle, as data. Commands raise Conflict (nothing changed) or return
    effects; events from a run that is not the current one are ignored."""

    def __init__(self, spec: ServerSpec, *, status: ServerStatus | None = None,
                 installed: bool = False, crash_times: tuple[float, ...] = (),
                 desired: Desired | None = None) -> None:
        self.spec = spec
        self.status = status or ServerStatus()
        self.desired: Desired = desired or spec.desired_state
        self.installed = installed
        self.crash_times = crash_times
        self.run: RunFlags | None = None
        self.pending_start = False  # a start that came while stopping or installing
        self.closing = False  # shutdown began: nothing starts again
        self.installing = False  # an install job is running
        self.updating = False  # ...and it is a build update: failing, it keeps the old build
        self.install_then_start = False
        self.backoff_token: int | None = None  # the token of the restart being waited for
        self.probe_failures = 0  # in a row
        self.probes_passed = 0
        self._ids = 0
        # a start the disk limit held back: made once the files are under it again
        self.disk_blocked = False
        if spec.limits.disk_mb is None:  # (a limit removed while the worker was away)
            self.status.disk_full = None

    @property
    def state(self) -> str:
        return self.status.state

    # -- commands ----------------------------------------------------------------------------

    def start(self) -> list[Effect]:
        out: list[Effect] = []
        self._start(out)
        return out

    def stop(self) -> list[Effect]:
        out: list[Effect] = []
        self._stop(out)
        return out

    def restart(self) -> list[Effect]:
        out: list[Effect] = []
        self._restart(out)
        return out

    def kill(self) -> list[Effect]:
        check("kill", self.state)
        out: list[Effect] = []
        self.desired = "stopped"
        if self.state == "installing":
            if self.installing:
                out.append(CancelInstall())
            return out
        run = self.run
        assert run is not None
        run.kill_requested = True
        self._set(out, state="stopping")
        if run.spawned:
            out.append(Kill(run.id))
        return out  # (a run still spawning is killed once `spawned`)

    def install(self) -> list[Effect]:
        check("install", self.state)
        out: list[Effect] = []
        if self.state in LIVE:
            self._begin_stop(out, then="install")
        else:
            self._cancel_backoff(out)
            self._start_install(out, then_start=self.desired == "running"
                                and self.state != "failed")
        return out

    def update(self) -> list[Effect]:
        """A Steam build update (auto_update): as `install` (stop, install, start again if
        it ran), but a failed one leaves the server as it was, not `failed`."""
        check("install", self.state)
        out: list[Effect] = []
        if self.state in LIVE:
            self._begin_stop(out, then="update")
        else:
            self._cancel_backoff(out)
            self._start_install(out, then_start=self.desired == "running"
                                and self.state != "failed", update=True)
        return out

    def update_spec(self, spec: ServerSpec, restart_on_change: bool) -> list[Effect]:
        """A new spec: its desired state acts at once; other changes take effect on the next
        start, or now with restart_on_change. An action the state refuses is noted, not
        raised: the spec is kept and the action waits for a state that allows it."""
        other_changed = _without_desired(spec) != _without_desired(self.spec)
        self.spec = spec
        state = self.state
        out: list[Effect] = []
        try:
            if spec.desired_state == "running":
                if state in ("created", "stopped", "crashed", "failed"):
                    self._start(out)
                elif restart_on_change and other_changed and state in ("starting", "running"):
                    self._restart(out)
                elif state in ("stopping", "installing") and self.desired != "running":
                    self.pending_start = True  # (a restart or reinstall starts by itself)
            elif state in ("starting", "running", "crashed"):
                self._stop(out)
        except Conflict as e:
            if e.code == "disk_full" and state not in LIVE:
                self._cancel_backoff(out)
                self._launch(out)  # held back: stopped, saying why; started once under
            else:
                out.append(Note(f"spec updated; not applied now: {e}"))
        self.desired = spec.desired_state
        out.append(Persist())
        return out

    def shutdown(self, keep_desired: bool) -> list[Effect]:
        """Stop for good (worker shutdown, delete). keep_desired: a worker restart, after
        which a server that should run runs again; without it an install is cancelled."""
        out: list[Effect] = []
        self.closing = True
        if not keep_desired:
            self.desired = "stopped"
            if self.state == "installing" and self.installing:
                out.append(CancelInstall())
        self._cancel_backoff(out)
        run = self.run
        if run is not None:
            if not run.stop_requested and not run.kill_requested:
                self._begin_stop(out)
        elif self.state == "crashed":
            self._set(out, state="stopped")
        return out

    def reopen(self) -> None:
        """A delete that did not go through after shutdown(): restarts work again."""
        self.closing = False

    # -- events --------------------------------------------------------------------------------

    def recovered(self, now: float, *, adopted: bool = False, pid: int | None = None,
                  removed: int = 0) -> list[Effect]:
        """Back from a stored state: a leftover process was re-adopted (`adopted`, its pid)
        or `removed` processes of it were killed; then act on the desired state."""
        out: list[Effect] = []
        self.status.query = None  # an answer from an earlier life of the worker is stale
        if adopted:
            run = self._new_run()
            run.spawned = True
            out.append(Adopt(run.id))
            self._begin_run(out, run, pid, now, adopted=True)
            if self.desired != "running":  # the old worker died while stopping it
                self._begin_stop(out)
            return out
        if removed:
            out.append(Note(f"stopped {removed} leftover process(es) of an earlier worker"))
        state = self.state
        if state != "failed":
            state = "stopped" if self.installed else "created"
        self._set(out, state=state, ready=False, pid=None, install_progress=None)
        if state == "failed":
            return out  # a crash loop or failed install waits for a person, even across restarts
        if not self.installed:
            self._start_install(out, then_start=self.desired == "running")
        elif self.desired == "running":
            self._launch(out)
        return out

    def spawned(self, run_id: int, pid: int | None, now: float) -> list[Effect]:
        run = self._current(run_id)
        if run is None:
            return []
        run.spawned = True
        out: list[Effect] = []
        if self.status.error is not None:  # why it had to wait (launch_blocked): over
            self._set(out, error=None)
        self._begin_run(out, run, pid, now, adopted=False)
        return out

    def launch_blocked(self, run_id: int, error: str) -> list[Effect]:
        """The run cannot begin yet (its record cannot be saved: a full disk); the actor
        retries. It stays `starting`, and `error` says why."""
        out: list[Effect] = []
        if self._current(run_id) is not None and self.status.error != error:
            self._set(out, error=error)
        return out

    def launch_wanted(self, run_id: int) -> bool:
        """A run waiting to begin should still begin (no stop, kill or shutdown came)."""
        run = self._current(run_id)
        return run is not None and not (run.stop_requested or run.kill_requested)

    def launch_called_off(self, run_id: int) -> list[Effect]:
        """A stop, kill or shutdown came while the run waited to begin: it ends as asked,
        with no process ever started."""
        run = self._current(run_id)
        if run is None:
            return []
        self.run = None
        self.status.error = None  # (the wait's reason; stamped by the change below)
        out: list[Effect] = []
        self._ended_as_asked(out, run, None, "stopped before it started")
        return out

    def spawn_failed(self, run_id: int, error: str) -> list[Effect]:
        if self._current(run_id) is None:
            return []
        self.run = None
        out: list[Effect] = []
        self.desired = "stopped"
        self._set(out, state="failed", error=error, pid=None)
        out.append(Note(f"failed to start: {error}"))
        return out

    def ready_seen(self, run_id: int) -> list[Effect]:
        run = self._current(run_id)
        if run is None or not run.awaiting_ready:
            return []
        run.awaiting_ready = False
        out: list[Effect] = []
        if self.state == "starting":
            self._set(out, state="running", ready=True)
        return out

    def query_answered(self, run_id: int, answer: QueryStatus, now: float) -> list[Effect]:
        """One probe of `health.query` of this run. An answer marks a server still waiting
        for its ready line ready; `failures` failed ones in a row, counted from
        `initial_delay` after the start and only while `running`, kill it as a crash."""
        run = self._current(run_id)
        query = self.spec.health.query
        if run is None or not run.spawned or run.stop_requested or run.kill_requested:
            return []
        out: list[Effect] = []
        if _query_news(self.status.query, answer):
            out.append(Report())
        self.status.query = answer
        if answer.ok:
            run.query_failures = 0
            if run.awaiting_ready and self.state == "starting":
                run.awaiting_ready = False
                self._set(out, state="running", ready=True)
                kind = query.type if query is not None else "query"
                out.append(Note(
                    f"ready: the game answered its {kind} query"
                    + ("; its ready line was not seen" if self.spec.ready_pattern else "")))
            return out
        started = self.status.started_at
        if query is None or self.state != "running" or started is None \
                or now - started < query.initial_delay:
            return out
        run.query_failures += 1
        if run.query_failures < query.failures:
            return out
        run.query_failures = 0
        run.crash_reason = (f"health check failed: {query.type} query did not answer "
                            f"({query.failures} probes): {answer.error or 'no answer'}")
        out += [Note(run.crash_reason), Kill(run.id)]
        return out

    def players_counted(self, run_id: int, players: int, now: float) -> list[Effect]:
        """The console's join and leave lines (player_patterns) changed the count."""
        if self._current(run_id) is None:
            return []
        answer = QueryStatus(ok=True, players=players, checked_at=now)
        news = _query_news(self.status.query, answer)
        self.status.query = answer
        return [Report()] if news else []

    def disk_measured(self, used: int, limit: int | None, now: float) -> list[Effect]:
        """The files use `used` bytes (`limit`: limits.disk_mb in bytes, None: no limit).
        Over it: noted once; no start begins until they are under it again (a running game
        is left running). Back under: a start it held back is made, if still wanted."""
        out: list[Effect] = []
        full = self.status.disk_full
        if limit is not None and used > limit:
            if full is None:
                self._set(out, disk_full=DiskFull(used=used, limit=limit, at=now))
                out.append(Note(f"disk limit reached: the files use {_mib(used)}, over "
                                f"limits.disk_mb ({_mib(limit)}); the server is not started "
                                "again until they are under it"))
            return out
        if full is None:
            return out
        blocked, self.disk_blocked = self.disk_blocked, False
        changes: dict[str, object] = {"disk_full": None}
        if self.status.error is not None and self.status.error.startswith(DISK_FULL_ERROR):
            changes["error"] = None
        self._set(out, **changes)
        out.append(Note(f"disk back under its limit ({_mib(used)} used): the server may "
                        "start again"))
        if blocked and self.desired == "running" and self.state == "stopped" \
                and self.installed and not self.closing and self.run is None:
            self._launch(out)
        return out

    def stop_write_failed(self, run_id: int, timeout: float) -> list[Effect]:
        """The stop command could not be written: terminate instead."""
        return [Terminate(run_id, timeout)] if self._current(run_id) else []

    def stop_overdue(self, run_id: int, timeout: float) -> list[Effect]:
        """`timeout` passed since the graceful stop began: kill it if it still runs."""
        if self._current(run_id) is None:
            return []
        return [Note(f"did not stop within {timeout:g}s: killing"), Kill(run_id)]

    def probe_ok(self) -> None:
        """A tcp health probe passed: the failure count restarts."""
        self.probe_failures = 0
        self.probes_passed += 1

    def probe_idle(self) -> None:
        """Nothing to probe (no port, not running): the failure count restarts."""
        self.probe_failures = 0

    def probe_failed(self, run_id: int) -> list[Effect]:
        """A tcp health probe of this run failed; enough in a row kill it as a crash (only
        while `running`: a stop that began meanwhile is not a crash)."""
        self.probe_failures += 1
        health = self.spec.health
        run = self._current(run_id)
        if self.probe_failures < health.failures or run is None or self.state != "running":
            return []
        self.probe_failures = 0
        run.crash_reason = (f"health check failed: tcp port {health.tcp_port} "
                            f"not accepting connections ({health.failures} probes)")
        return [Note(run.crash_reason), Kill(run.id)]

    def exited(self, run_id: int, code: int | None, now: float, reason: str | None = None
               ) -> list[Effect]:
        """The run's process is gone with this exit code (None: unknown); `reason`: why,
        when the code does not say (an OOM kill under the memory limit)."""
        run = self._current(run_id)
        if run is None:
            return []
        self.run = None
        self.status.query = None  # (stamped with the state change below)
        out: list[Effect] = []
        how = describe_exit(code)
        if run.stop_requested or run.kill_requested:
            self._ended_as_asked(out, run, code, f"stopped ({how})")
            return out
        decision = after_exit(self.spec.restart, self.crash_times, now, code,
                              run.crash_reason or reason)
        self.crash_times = decision.crash_times
        if decision.state == "stopped":
            self.desired = "stopped"
            self._set(out, state="stopped", ready=False, pid=None, exit_code=code)
            out.append(Note(f"exited ({how}); restart policy {self.spec.restart.policy}: "
                            "not restarting"))
        elif decision.state == "failed":
            self._set(out, state="failed", ready=False, pid=None, exit_code=code,
                      error=decision.error)
            out.append(Note(f"failed: {decision.error}"))
        else:
            delay = decision.delay or 0.0
            self._set(out, state="crashed", ready=False, pid=None, exit_code=code,
                      error=decision.error)
            out.append(Note(f"crashed ({decision.error}); restarting in {delay:g}s"))
            self._ids += 1
            self.backoff_token = self._ids
            out.append(StartBackoff(self.backoff_token, delay))
        return out

    def backoff_elapsed(self, token: int) -> list[Effect]:
        if token != self.backoff_token:
            return []  # cancelled, or an older one
        self.backoff_token = None
        out: list[Effect] = []
        if self.state != "crashed" or self.closing:
            return out
        self.status.restarts += 1
        self._launch(out)
        return out

    def install_progress(self, value: float) -> list[Effect]:
        out: list[Effect] = []
        if value != self.status.install_progress:
            self._set(out, install_progress=value)
        return out

    def install_done(self, error: str | None) -> list[Effect]:
        """The install job ended: `error` None when it succeeded."""
        self.installing = False
        updating, self.updating = self.updating, False
        pending = self._take_pending_start()  # consumed whatever the outcome
        out: list[Effect] = []
        if error is not None and updating:  # the installed build stays (the update tells why)
            self._set(out, state="stopped", install_progress=None)
            if (self.install_then_start or pending) and self.desired == "running" \
                    and not self.closing:
                self._launch(out)
            return out
        if error is not None:
            self.desired = "stopped"
            self._set(out, state="failed", error=error, install_progress=None)
            out.append(Note(f"install failed: {error}"))
            return out
        self.installed = True
        self._set(out, state="stopped", install_progress=100.0)
        out.append(Note("installed"))
        if (self.install_then_start or pending) and self.desired == "running" \
                and not self.closing:
            self._launch(out)
        return out

    # -- steps ---------------------------------------------------------------------------------

    def _ended_as_asked(self, out: list[Effect], run: RunFlags, code: int | None, note: str
                        ) -> None:
        """A run ended by a stop or kill: `stopped`, then what was asked next (a start that
        came meanwhile, the start of a restart, a reinstall)."""
        self._set(out, state="stopped", ready=False, pid=None, exit_code=code)
        out.append(Note(note))
        proceed = run.then is not None and not run.kill_requested and not self.closing
        if run.then == "update" and not proceed:
            out.append(UpdateCalledOff("killed" if run.kill_requested else "shutting down"))
        if self._take_pending_start():
            if run.then == "update" and proceed:
                out.append(UpdateCalledOff("a start came first"))
            self._start_fresh(out)
        elif proceed:
            if run.then in ("install", "update"):  # a reinstall installs even if a stop came
                self._start_install(out, then_start=True, update=run.then == "update")
            elif self.desired == "running":  # a stop during a restart wins
                self._launch(out)

    def _start(self, out: list[Effect]) -> None:
        check("start", self.state)
        self._check_disk("start")
        self._start_fresh(out)

    def _check_disk(self, action: str) -> None:
        full = self.status.disk_full
        if full is not None:
            raise Conflict(f"cannot {action}: {DISK_FULL_ERROR} (the files use "
                           f"{_mib(full.used)}, over {_mib(full.limit)}); delete files first",
                           code="disk_full")

    def _start_fresh(self, out: list[Effect]) -> None:
        """A person's start: the crash count begins again; install first if needed."""
        self.desired = "running"
        self._cancel_backoff(out)
        self.status.restarts = 0
        self.crash_times = ()
        if not self.installed:
            self._start_install(out, then_start=True)
        else:
            self._launch(out)

    def _stop(self, out: list[Effect]) -> None:
        check("stop", self.state)
        self.desired = "stopped"
        if self.state == "crashed":
            self._cancel_backoff(out)
            self._set(out, state="stopped")
            out.append(Note("restart cancelled: stopped"))
            return
        self._begin_stop(out)

    def _restart(self, out: list[Effect]) -> None:
        check("restart", self.state)
        self._check_disk("restart")
        if self.state in LIVE:
            self.desired = "running"
            self.status.restarts = 0
            self.crash_times = ()
            self._begin_stop(out, then="start")
        else:
            self._start_fresh(out)

    def _begin_stop(self, out: list[Effect],
                    then: Literal["start", "install", "update"] | None = None) -> None:
        """Enter `stopping`; the stop itself begins once the process exists."""
        run = self.run
        assert run is not None
        run.stop_requested = True
        run.then = then
        self._set(out, state="stopping")
        if run.spawned:
            self._stop_effects(out, run)

    def _stop_effects(self, out: list[Effect], run: RunFlags) -> None:
        timeout = self.spec.stop_timeout
        if self.spec.stop_command is not None:
            out.append(WriteStop(run.id, self.spec.stop_command, timeout))
        else:  # a game that reads no stdin stops on its own signal (Valheim: SIGINT)
            out.append(Terminate(run.id, timeout, self.spec.stop_signal or "SIGTERM"))

    def _launch(self, out: list[Effect]) -> None:
        """Enter `starting` now (so later commands see it); the actor spawns. Over the disk
        limit it stays `stopped` instead, and starts once the files are under it."""
        full = self.status.disk_full
        if full is not None:
            self.disk_blocked = True
            self.pending_start = False
            error = f"{DISK_FULL_ERROR}: not started until the files are under it"
            if self.status.error != error or self.state != "stopped":
                self._set(out, state="stopped", ready=False, pid=None, error=error,
                          install_progress=None)
                out.append(Note(f"not started: the files use {_mib(full.used)}, over "
                                f"limits.disk_mb ({_mib(full.limit)})"))
            return
        run = self._new_run()
        self.pending_start = False  # it is starting now
        self._set(out, state="starting", ready=False, pid=None, exit_code=None, error=None,
                  install_progress=None, query=None)
        out.append(Spawn(run.id))

    def _begin_run(self, out: list[Effect], run: RunFlags, pid: int | None, now: float,
                   adopted: bool) -> None:
        out.append(Note(f"{'re-attached' if adopted else 'started'} (pid {pid})"))
        if run.kill_requested:
            out.append(Kill(run.id))
        elif run.stop_requested:
            self._stop_effects(out, run)
        else:
            if counts_players(self.spec) and not adopted:  # (re-attached: not known)
                self.status.query = QueryStatus(ok=True, players=0, checked_at=now)
            if adopted or not (self.spec.ready_pattern or ready_by_query(self.spec)):
                self._set(out, state="running", ready=True, pid=pid, started_at=now)
                return
            run.awaiting_ready = True
            if self.spec.ready_pattern:
                out.append(WatchReady(run.id, self.spec.ready_pattern))
            self._set(out, pid=pid, started_at=now)

    def _start_install(self, out: list[Effect], then_start: bool, update: bool = False
                       ) -> None:
        self.installing = True
        self.updating = update
        self.install_then_start = then_start
        self._set(out, state="installing", install_progress=0.0, error=None, ready=False)
        out.append(StartInstall())

    def _take_pending_start(self) -> bool:
        """A start that arrived while stopping or installing is due now (not after a
        shutdown began, nor when a later stop or kill changed the desired state)."""
        pending, self.pending_start = self.pending_start, False
        return pending and self.desired == "running" and not self.closing

    def _cancel_backoff(self, out: list[Effect]) -> None:
        if self.backoff_token is not None:
            self.backoff_token = None
            out.append(CancelBackoff())

    def _new_run(self) -> RunFlags:
        self._ids += 1
        self.run = RunFlags(self._ids)
        return self.run

    def _current(self, run_id: int) -> RunFlags | None:
        run = self.run
        return run if run is not None and run.id == run_id else None

    def _set(self, out: list[Effect], **changes: object) -> None:
        st = self.status
        for key, value in changes.items():
            setattr(st, key, value)
        if not out or not isinstance(out[-1], Changed):
            out.append(Changed())


DISK_FULL_ERROR = "over its disk limit"


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def ready_by_query(spec: ServerSpec) -> bool:
    """A query over the network marks the server ready when it answers."""
    query = spec.health.query
    return query is not None and query.type != "console"


def counts_players(spec: ServerSpec) -> bool:
    """Players come from console lines: player_patterns, where no network query counts them."""
    return spec.player_patterns is not None and not ready_by_query(spec)


def _query_news(before: QueryStatus | None, after: QueryStatus) -> bool:
    """Worth reporting: anything but the time and latency of the probe changed."""
    return before is None or (before.ok, before.players, before.max_players, before.map,
                              before.version, before.error) != (
        after.ok, after.players, after.max_players, after.map, after.version, after.error)


def _without_desired(spec: ServerSpec) -> tuple[object, ...]:
    return tuple(getattr(spec, f) for f in spec.__struct_fields__ if f != "desired_state")


# -- the restart policy ---------------------------------------------------------------------


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with code {code}"


@dataclass(frozen=True)
class ExitDecision:
    """What to do after an unrequested exit."""

    state: str  # "crashed" (restart after `delay`), "failed" or "stopped"
    delay: float | None
    error: str | None
    crash_times: tuple[float, ...]


def backoff(policy: RestartSpec, crashes: int) -> float:
    """Delay before the restart that follows the `crashes`-th crash in the window (1-based)."""
    return exponential(policy.backoff_initial, policy.backoff_max, crashes)


def after_exit(policy: RestartSpec, crash_times: tuple[float, ...], now: float,
               exit_code: int | None, reason: str | None = None) -> ExitDecision:
    """Decide on an exit nobody asked for. `reason` (e.g. a failed health check) makes it a
    crash whatever the exit code; crash_times are earlier crashes, oldest first."""
    failed_run = reason is not None or exit_code != 0
    why = reason or describe_exit(exit_code)
    if not failed_run and policy.policy != "always":
        return ExitDecision("stopped", None, None, crash_times)
    if policy.policy == "never":
        return ExitDecision("failed", None, f"{why} (restart policy: never)", crash_times)
    recent = (*(t for t in crash_times if now - t < policy.reset_after), now)
    if len(recent) > policy.max_restarts:
        return ExitDecision(
            "failed", None,
            f"crash loop: {len(recent)} crashes within {policy.reset_after:g}s "
            f"(max_restarts {policy.max_restarts}); last: {why}", recent)
    return ExitDecision("crashed", backoff(policy, len(recent)), why, recent)
