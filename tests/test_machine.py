"""The server state machine and the restart policy (pure: no I/O, no clock): the 409 table
against a real machine in every state, every race as a sequence of calls, the policy."""

from __future__ import annotations

import copy
import itertools
import signal
from typing import Any

import msgspec
import pytest

from manman.errors import Conflict as DomainConflict
from manman.models import STATES, QueryStatus, RestartSpec, ServerSpec, ServerStatus
from manman.worker.machine import (
    ALLOWED,
    LIVE,
    Adopt,
    CancelBackoff,
    CancelInstall,
    Changed,
    Conflict,
    Effect,
    ExitDecision,
    Kill,
    Note,
    Persist,
    Report,
    ServerMachine,
    Spawn,
    StartBackoff,
    StartInstall,
    Terminate,
    UpdateCalledOff,
    WatchReady,
    WriteStop,
    after_exit,
    backoff,
    check,
    describe_exit,
)

# The table as docs/spec.md gives it; a change to ALLOWED must change this on purpose.
EXPECTED: dict[str, set[str]] = {
    "start": {"created", "stopped", "crashed", "failed"},
    "stop": {"starting", "running", "crashed"},
    "restart": {"starting", "running", "stopped", "crashed", "failed"},
    "kill": {"installing", "starting", "running", "stopping"},
    "install": {"created", "stopped", "crashed", "failed", "starting", "running"},
    "command": {"starting", "running"},
    "delete": {"created", "stopped", "crashed", "failed"},
}
WORKER_STATES = [s for s in STATES if s != "unknown"]


def test_table_is_the_reviewed_one() -> None:
    assert {k: set(v) for k, v in ALLOWED.items()} == EXPECTED
    for allowed in ALLOWED.values():
        assert allowed <= set(WORKER_STATES)


def test_live_states() -> None:
    assert {"starting", "running", "stopping"} == LIVE


@pytest.mark.parametrize(("action", "state"),
                         list(itertools.product(sorted(EXPECTED), STATES)))
def test_check_every_action_in_every_state(action: str, state: str) -> None:
    if state in EXPECTED[action]:
        assert check(action, state) is None
        return
    with pytest.raises(Conflict) as info:
        check(action, state)
    assert info.value.code == "invalid_state"
    assert action in str(info.value) and state in str(info.value)


def test_nothing_is_accepted_in_unknown() -> None:
    for action in ALLOWED:
        with pytest.raises(Conflict):
            check(action, "unknown")


def test_commands_need_a_live_process() -> None:
    assert ALLOWED["command"] <= LIVE
    assert "stopping" not in ALLOWED["command"]


def test_delete_only_without_a_process() -> None:
    assert not (ALLOWED["delete"] & LIVE)
    assert "installing" not in ALLOWED["delete"]


def test_conflict_default_code() -> None:
    e = Conflict("nope")
    assert e.code == "conflict" and str(e) == "nope"
    assert Conflict is DomainConflict  # the one domain error, not a worker-only class


# -- describe_exit ------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "text"), [
    (None, "exited"),
    (0, "exited with code 0"),
    (1, "exited with code 1"),
    (137, "exited with code 137"),
    (-signal.SIGKILL, "killed by SIGKILL"),
    (-signal.SIGTERM, "killed by SIGTERM"),
    (-signal.SIGSEGV, "killed by SIGSEGV"),
    (-200, "killed by signal 200"),
])
def test_describe_exit(code: int | None, text: str) -> None:
    assert describe_exit(code) == text


# -- backoff ------------------------------------------------------------------------------


def test_backoff_doubles_from_initial() -> None:
    p = RestartSpec(backoff_initial=1, backoff_max=300)
    assert [backoff(p, n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 32, 64]


def test_backoff_caps_at_max() -> None:
    p = RestartSpec(backoff_initial=1, backoff_max=300)
    assert backoff(p, 9) == 256
    assert backoff(p, 10) == 300
    assert backoff(p, 11) == 300
    assert backoff(p, 10_000) == 300  # no overflow on absurd counts


def test_backoff_fractional_and_zero() -> None:
    assert backoff(RestartSpec(backoff_initial=0.25, backoff_max=1), 2) == 0.5
    assert backoff(RestartSpec(backoff_initial=0.25, backoff_max=1), 4) == 1
    assert backoff(RestartSpec(backoff_initial=0, backoff_max=300), 5) == 0


def test_backoff_max_below_initial_wins() -> None:
    assert backoff(RestartSpec(backoff_initial=10, backoff_max=3), 1) == 3


def test_backoff_no_crash_no_delay() -> None:
    p = RestartSpec()
    assert backoff(p, 0) == 0
    assert backoff(p, -1) == 0


# -- after_exit ---------------------------------------------------------------------------


def policy(name: str = "on-failure", **kw: float) -> RestartSpec:
    return RestartSpec(policy=name, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["never", "on-failure"])
def test_clean_exit_is_stopped_when_policy_does_not_restart_it(name: str) -> None:
    d = after_exit(policy(name), (1.0, 2.0), now=10.0, exit_code=0)
    assert d == ExitDecision("stopped", None, None, (1.0, 2.0))


def test_clean_exit_with_always_restarts() -> None:
    d = after_exit(policy("always"), (), now=10.0, exit_code=0)
    assert d.state == "crashed"
    assert d.delay == 1.0
    assert d.error == "exited with code 0"
    assert d.crash_times == (10.0,)


@pytest.mark.parametrize("code", [1, 2, 255, -signal.SIGKILL, None])
def test_failed_exit_with_never_fails(code: int | None) -> None:
    d = after_exit(policy("never"), (5.0,), now=10.0, exit_code=code)
    assert d.state == "failed" and d.delay is None
    assert d.error == f"{describe_exit(code)} (restart policy: never)"
    assert d.crash_times == (5.0,)  # nothing restarts, nothing to count


@pytest.mark.parametrize("name", ["on-failure", "always"])
@pytest.mark.parametrize("code", [1, -signal.SIGSEGV, None])
def test_failed_exit_is_a_crash_with_restart(name: str, code: int | None) -> None:
    d = after_exit(policy(name), (), now=100.0, exit_code=code)
    assert d.state == "crashed"
    assert d.delay == 1.0
    assert d.error == describe_exit(code)
    assert d.crash_times == (100.0,)


@pytest.mark.parametrize("name", ["on-failure", "always"])
def test_health_failure_is_a_crash_even_with_exit_code_zero(name: str) -> None:
    d = after_exit(policy(name), (), now=1.0, exit_code=0, reason="health check failed 3 times")
    assert d.state == "crashed"
    assert d.error == "health check failed 3 times"
    assert d.crash_times == (1.0,)


def test_health_failure_with_never_fails_with_the_reason() -> None:
    d = after_exit(policy("never"), (), now=1.0, exit_code=0, reason="tcp probe failed")
    assert d.state == "failed"
    assert d.error == "tcp probe failed (restart policy: never)"


def test_health_failure_reason_wins_over_exit_code() -> None:
    d = after_exit(policy(), (), now=1.0, exit_code=-signal.SIGKILL, reason="not responding")
    assert d.error == "not responding"


def test_backoff_grows_with_each_crash_in_the_window() -> None:
    p = policy(max_restarts=10, backoff_initial=1, backoff_max=300, reset_after=600)
    times: tuple[float, ...] = ()
    delays = []
    for i in range(6):
        d = after_exit(p, times, now=float(i), exit_code=1)
        assert d.state == "crashed"
        delays.append(d.delay)
        times = d.crash_times
    assert delays == [1, 2, 4, 8, 16, 32]
    assert times == (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)


def test_crash_loop_fails_after_max_restarts() -> None:
    p = policy(max_restarts=5, reset_after=600)
    times: tuple[float, ...] = ()
    for i in range(5):  # five crashes: five restarts allowed
        d = after_exit(p, times, now=10.0 * i, exit_code=1)
        assert d.state == "crashed", i
        times = d.crash_times
    d = after_exit(p, times, now=50.0, exit_code=1)
    assert d.state == "failed" and d.delay is None
    assert d.error is not None
    assert d.error.startswith("crash loop: 6 crashes within 600s (max_restarts 5)")
    assert d.error.endswith("last: exited with code 1")
    assert len(d.crash_times) == 6


def test_crash_loop_with_always_counts_clean_exits() -> None:
    p = policy("always", max_restarts=2, reset_after=60)
    d = after_exit(p, (1.0, 2.0), now=3.0, exit_code=0)
    assert d.state == "failed"
    assert d.error is not None and "last: exited with code 0" in d.error


def test_crash_loop_error_names_a_health_reason() -> None:
    d = after_exit(policy(max_restarts=1), (0.0,), now=1.0, exit_code=0, reason="probe failed")
    assert d.state == "failed"
    assert d.error is not None and d.error.endswith("last: probe failed")


def test_crashes_outside_the_window_are_forgotten() -> None:
    p = policy(max_restarts=2, reset_after=100)
    old = (0.0, 10.0, 20.0)  # would be a crash loop if still counted
    d = after_exit(p, old, now=200.0, exit_code=1)
    assert d.state == "crashed"
    assert d.crash_times == (200.0,)
    assert d.delay == 1.0  # backoff starts over too


def test_window_keeps_only_recent_crashes() -> None:
    p = policy(max_restarts=5, reset_after=100)
    d = after_exit(p, (0.0, 50.0, 120.0), now=140.0, exit_code=1)
    assert d.crash_times == (50.0, 120.0, 140.0)
    assert d.delay == 4.0


def test_window_edge_exactly_reset_after_is_forgotten() -> None:
    p = policy(max_restarts=1, reset_after=100)
    assert after_exit(p, (0.0,), now=100.0, exit_code=1).state == "crashed"
    assert after_exit(p, (0.5,), now=100.0, exit_code=1).state == "failed"


def test_max_restarts_zero_fails_on_first_crash() -> None:
    p = policy(max_restarts=0)
    d = after_exit(p, (), now=1.0, exit_code=1)
    assert d.state == "failed"
    assert d.error is not None and "max_restarts 0" in d.error
    # a clean exit is still a clean stop, not a failure
    assert after_exit(p, (), now=1.0, exit_code=0).state == "stopped"


def test_max_restarts_zero_with_always_fails_on_any_exit() -> None:
    assert after_exit(policy("always", max_restarts=0), (), now=1.0, exit_code=0).state == \
        "failed"


def test_reset_after_zero_never_loops() -> None:
    p = policy(max_restarts=1, reset_after=0)
    times: tuple[float, ...] = ()
    for i in range(5):
        d = after_exit(p, times, now=float(i), exit_code=1)
        assert d.state == "crashed" and d.delay == 1.0
        times = d.crash_times


def test_after_exit_does_not_mutate_its_input() -> None:
    times = (1.0, 2.0)
    after_exit(policy(), times, now=3.0, exit_code=1)
    assert times == (1.0, 2.0)


def test_exit_decision_is_frozen() -> None:
    d = after_exit(policy(), (), now=1.0, exit_code=1)
    with pytest.raises(AttributeError):
        d.state = "running"  # type: ignore[misc]


# -- the machine: helpers ------------------------------------------------------------------

NOW = 1000.0


def spec(**fields: Any) -> ServerSpec:
    return msgspec.convert({"name": "s", "game_id": "exec:/bin/game", **fields}, ServerSpec)


def kinds(effects: list[Effect]) -> list[type]:
    return [type(e) for e in effects]


def notes(effects: list[Effect]) -> list[str]:
    return [e.text for e in effects if isinstance(e, Note)]


def only(effects: list[Effect], kind: type) -> Any:
    found = [e for e in effects if isinstance(e, kind)]
    assert len(found) == 1, effects
    return found[0]


def run_id(m: ServerMachine) -> int:
    assert m.run is not None
    return m.run.id


def stopped(**fields: Any) -> ServerMachine:
    m = ServerMachine(spec(**fields), installed=True)
    assert kinds(m.recovered(NOW)) == [Changed]
    assert m.state == "stopped"
    return m


def starting(**fields: Any) -> ServerMachine:
    m = stopped(**fields)
    m.start()
    assert m.state == "starting"
    return m


def running(**fields: Any) -> ServerMachine:
    m = starting(**fields)
    m.spawned(run_id(m), 4242, NOW)
    assert m.state == "running"
    return m


def crashed(**fields: Any) -> ServerMachine:
    m = running(**fields)
    m.exited(run_id(m), 1, NOW)
    assert m.state == "crashed"
    return m


def in_state(state: str) -> ServerMachine:
    """A machine brought into `state` the way a server gets there."""
    if state == "created":
        return ServerMachine(spec())
    if state == "installing":
        m = ServerMachine(spec())
        m.start()
        return m
    if state == "stopping":
        m = running()
        m.stop()
        return m
    if state == "failed":
        m = running(restart={"policy": "never"})
        m.exited(run_id(m), 1, NOW)
        return m
    if state == "unknown":  # the host's word for a worker that is away: never a worker's state
        return ServerMachine(spec(), status=ServerStatus(state="unknown"))
    return {"stopped": stopped, "starting": starting, "running": running,
            "crashed": crashed}[state]()


def snapshot(m: ServerMachine) -> dict[str, Any]:
    return copy.deepcopy(vars(m))


# -- the 409 table, every action in every state, on the machine itself -----------------------

COMMANDS = ("start", "stop", "restart", "kill", "install")

# what each accepted command does: the state after it and the effects, in order
OUTCOME: dict[tuple[str, str], tuple[str, list[type]]] = {
    ("start", "created"): ("installing", [Changed, StartInstall]),
    ("start", "stopped"): ("starting", [Changed, Spawn]),
    ("start", "crashed"): ("starting", [CancelBackoff, Changed, Spawn]),
    ("start", "failed"): ("starting", [Changed, Spawn]),
    ("stop", "starting"): ("stopping", [Changed]),  # the stop waits for the spawn
    ("stop", "running"): ("stopping", [Changed, Terminate]),
    ("stop", "crashed"): ("stopped", [CancelBackoff, Changed, Note]),
    ("restart", "starting"): ("stopping", [Changed]),
    ("restart", "running"): ("stopping", [Changed, Terminate]),
    ("restart", "stopped"): ("starting", [Changed, Spawn]),
    ("restart", "crashed"): ("starting", [CancelBackoff, Changed, Spawn]),
    ("restart", "failed"): ("starting", [Changed, Spawn]),
    ("kill", "installing"): ("installing", [CancelInstall]),
    ("kill", "starting"): ("stopping", [Changed]),  # the kill waits for the spawn
    ("kill", "running"): ("stopping", [Changed, Kill]),
    ("kill", "stopping"): ("stopping", [Changed, Kill]),
    ("install", "created"): ("installing", [Changed, StartInstall]),
    ("install", "stopped"): ("installing", [Changed, StartInstall]),
    ("install", "crashed"): ("installing", [CancelBackoff, Changed, StartInstall]),
    ("install", "failed"): ("installing", [Changed, StartInstall]),
    ("install", "starting"): ("stopping", [Changed]),
    ("install", "running"): ("stopping", [Changed, Terminate]),
}


def test_the_outcomes_cover_exactly_the_accepted_commands() -> None:
    assert set(OUTCOME) == {(a, s) for a in COMMANDS for s in EXPECTED[a]}


@pytest.mark.parametrize(("action", "state"), list(itertools.product(COMMANDS, STATES)))
def test_every_command_in_every_state(action: str, state: str) -> None:
    m = in_state(state)
    assert m.state == state
    before = snapshot(m)
    if (action, state) not in OUTCOME:
        with pytest.raises(Conflict) as info:
            getattr(m, action)()
        assert info.value.code == "invalid_state"
        assert str(info.value) == f"cannot {action} a server that is {state}"
        assert snapshot(m) == before  # a refusal changes nothing
        return
    effects = getattr(m, action)()
    after, expected = OUTCOME[action, state]
    assert m.state == after
    assert kinds(effects) == expected


@pytest.mark.parametrize("state", STATES)
def test_console_input_and_delete_follow_the_table(state: str) -> None:
    m = in_state(state)
    for action in ("command", "delete"):
        if state in EXPECTED[action]:
            check(action, m.state)
        else:
            with pytest.raises(Conflict):
                check(action, m.state)


# -- a run's life --------------------------------------------------------------------------


def test_a_start_spawns_and_no_ready_pattern_is_running_at_once() -> None:
    m = starting()
    assert m.status.pid is None and not m.status.ready
    effects = m.spawned(run_id(m), 77, NOW)
    assert notes(effects) == ["started (pid 77)"]
    assert m.state == "running" and m.status.ready and m.status.pid == 77
    assert m.status.started_at == NOW


def test_a_ready_pattern_keeps_it_starting_until_the_line() -> None:
    m = starting(ready_pattern="^ready$")
    r = run_id(m)
    effects = m.spawned(r, 77, NOW)
    assert only(effects, WatchReady) == WatchReady(r, "^ready$")
    assert m.state == "starting" and m.status.pid == 77 and not m.status.ready
    assert kinds(m.ready_seen(r)) == [Changed]
    assert m.state == "running" and m.status.ready
    assert m.ready_seen(r) == []  # only the first line counts


def test_the_stop_command_is_written_and_a_failed_write_terminates() -> None:
    m = running(stop_command="quit", stop_timeout=7)
    r = run_id(m)
    assert only(m.stop(), WriteStop) == WriteStop(r, "quit", 7)
    assert m.stop_write_failed(r, 7) == [Terminate(r, 7)]


def test_a_stop_signal_is_sent_instead_of_sigterm_then_the_usual_deadline() -> None:
    m = running(stop_signal="SIGINT", stop_timeout=9)
    r = run_id(m)
    assert only(m.stop(), Terminate) == Terminate(r, 9, "SIGINT")
    assert m.stop_overdue(r, 9) == [Note("did not stop within 9s: killing"), Kill(r)]
    # a restart and a shutdown stop it the same way
    m = running(stop_signal="SIGINT")
    assert only(m.restart(), Terminate).signal == "SIGINT"
    m = running(stop_signal="SIGQUIT")
    assert only(m.shutdown(keep_desired=True), Terminate).signal == "SIGQUIT"


def test_a_stop_that_overruns_its_timeout_kills() -> None:
    m = running(stop_timeout=3)
    r = run_id(m)
    assert only(m.stop(), Terminate) == Terminate(r, 3)
    assert m.stop_overdue(r, 3) == [Note("did not stop within 3s: killing"), Kill(r)]
    effects = m.exited(r, -signal.SIGKILL, NOW)
    assert m.state == "stopped" and m.status.exit_code == -signal.SIGKILL
    assert notes(effects) == ["stopped (killed by SIGKILL)"]
    assert m.stop_overdue(r, 3) == []  # a deadline after the exit does nothing


def test_a_spawn_failure_is_failed_and_stops_wanting_to_run() -> None:
    m = starting()
    effects = m.spawn_failed(run_id(m), "executable not found")
    assert m.state == "failed" and m.status.error == "executable not found"
    assert m.desired == "stopped" and m.run is None
    assert notes(effects) == ["failed to start: executable not found"]


def test_a_clean_exit_under_on_failure_is_a_stop_that_sticks() -> None:
    m = running()
    effects = m.exited(run_id(m), 0, NOW)
    assert m.state == "stopped" and m.desired == "stopped" and m.status.exit_code == 0
    assert not any(isinstance(e, (Spawn, StartBackoff)) for e in effects)


def test_changes_are_reported_once_per_step() -> None:
    m = running()
    effects = m.exited(run_id(m), 1, NOW)
    assert kinds(effects) == [Changed, Note, StartBackoff]


# -- crashes, the backoff, the crash loop -----------------------------------------------------


def test_crashes_back_off_doubling_then_the_loop_fails() -> None:
    m = running(restart={"max_restarts": 3, "backoff_initial": 1, "backoff_max": 3,
                         "reset_after": 600})
    delays = []
    for i in range(3):
        effects = m.exited(run_id(m), 2, NOW + i)
        assert m.state == "crashed" and m.status.error == "exited with code 2"
        wait = only(effects, StartBackoff)
        delays.append(wait.delay)
        assert notes(effects) == [f"crashed (exited with code 2); restarting in {wait.delay:g}s"]
        assert kinds(m.backoff_elapsed(wait.token)) == [Changed, Spawn]
        assert m.status.restarts == i + 1
        m.spawned(run_id(m), 100 + i, NOW + i)
    assert delays == [1, 2, 3]
    effects = m.exited(run_id(m), 2, NOW + 3)
    assert m.state == "failed" and not any(isinstance(e, StartBackoff) for e in effects)
    assert m.status.error is not None and m.status.error.startswith("crash loop: 4 crashes")
    assert m.desired == "running"  # failed waits for a person; it did not stop wanting to run


def test_a_person_start_after_a_crash_loop_counts_again() -> None:
    m = running(restart={"max_restarts": 0})
    m.exited(run_id(m), 1, NOW)
    assert m.state == "failed" and len(m.crash_times) == 1
    m.status.restarts = 4
    m.start()
    assert m.state == "starting" and m.status.restarts == 0 and not m.crash_times


def test_a_backoff_that_elapses_after_a_stop_does_nothing() -> None:
    m = crashed()
    token = m.backoff_token
    assert token is not None
    m.stop()
    assert m.backoff_elapsed(token) == []
    assert m.state == "stopped" and m.status.restarts == 0


def test_an_old_backoff_does_not_restart_twice() -> None:
    m = crashed()
    old = m.backoff_token
    assert old is not None
    m.start()  # a person's start during the backoff: starting now
    m.spawned(run_id(m), 5, NOW)
    m.exited(run_id(m), 1, NOW + 1)
    assert m.state == "crashed" and m.backoff_token != old
    assert m.backoff_elapsed(old) == []
    assert m.state == "crashed"


def test_a_health_probe_kills_a_run_as_a_crash_with_its_reason() -> None:
    m = running(health={"tcp_port": 27015, "failures": 3})
    r = run_id(m)
    assert m.probe_failed(r) == [] and m.probe_failed(r) == []
    m.probe_ok()  # a good probe starts the count again
    assert m.probes_passed == 1
    assert m.probe_failed(r) == [] and m.probe_failed(r) == []
    m.probe_idle()  # so does an interval with nothing to probe
    assert m.probe_failed(r) == [] and m.probe_failed(r) == []
    effects = m.probe_failed(r)
    reason = "health check failed: tcp port 27015 not accepting connections (3 probes)"
    assert effects == [Note(reason), Kill(r)]
    m.exited(r, -signal.SIGKILL, NOW)
    assert m.state == "crashed" and m.status.error == reason


# -- health.query ---------------------------------------------------------------------------

A2S = {"ports": [{"name": "query", "port": 27016, "protocol": "udp"}],
       "health": {"query": {"type": "a2s", "port": "{{port.query}}", "initial_delay": 30,
                            "interval": 5, "failures": 2}}}
OK = QueryStatus(ok=True, players=3, max_players=24, map="de_dust2", latency_ms=0.4,
                 checked_at=NOW)
DOWN = QueryStatus(ok=False, error="no A2S reply within 2s", checked_at=NOW)


def test_a_query_answer_marks_ready_when_the_ready_line_never_came() -> None:
    m = starting(ready_pattern="^Ready$", **A2S)
    r = run_id(m)
    effects = m.spawned(r, 4242, NOW)
    assert m.state == "starting" and WatchReady(r, "^Ready$") in effects
    assert m.query_answered(r, DOWN, NOW + 1) == [Report()]  # not ready yet: no crash count
    effects = m.query_answered(r, OK, NOW + 2)
    assert m.state == "running" and m.status.ready and m.status.query == OK
    assert notes(effects) == ["ready: the game answered its a2s query; its ready line was "
                              "not seen"]
    assert m.ready_seen(r) == []  # the line coming late changes nothing


def test_with_a_query_and_no_ready_pattern_the_first_answer_is_ready() -> None:
    m = starting(**A2S)
    r = run_id(m)
    effects = m.spawned(r, 4242, NOW)
    assert m.state == "starting" and not any(isinstance(e, WatchReady) for e in effects)
    effects = m.query_answered(r, OK, NOW + 5)
    assert m.state == "running" and notes(effects) == ["ready: the game answered its a2s query"]


def test_query_failures_count_after_initial_delay_and_crash_the_run() -> None:
    m = starting(**A2S)
    r = run_id(m)
    m.spawned(r, 4242, NOW)
    m.query_answered(r, OK, NOW + 5)
    for t in (10, 20, 29):  # within initial_delay (30 s from the start): not counted
        m.query_answered(r, DOWN, NOW + t)
    assert m.state == "running"
    assert m.query_answered(r, DOWN, NOW + 31) == []  # 1 of 2; no news: not reported again
    m.query_answered(r, OK, NOW + 36)  # an answer starts the count again
    assert m.query_answered(r, DOWN, NOW + 41) == [Report()]
    effects = m.query_answered(r, DOWN, NOW + 46)
    reason = "health check failed: a2s query did not answer (2 probes): no A2S reply within 2s"
    assert effects == [Note(reason), Kill(r)]
    m.exited(r, -signal.SIGKILL, NOW + 47)
    assert m.state == "crashed" and m.status.error == reason and m.status.query is None


def test_only_news_is_reported() -> None:
    m = starting(**A2S)
    r = run_id(m)
    m.spawned(r, 4242, NOW)
    m.query_answered(r, OK, NOW + 5)
    later = msgspec.structs.replace(OK, latency_ms=9.0, checked_at=NOW + 10)
    assert m.query_answered(r, later, NOW + 10) == []
    assert m.status.query == later  # kept all the same: the heartbeat carries it
    more = msgspec.structs.replace(later, players=4)
    assert m.query_answered(r, more, NOW + 15) == [Report()]


def test_query_answers_of_an_old_run_or_during_a_stop_change_nothing() -> None:
    m = starting(**A2S)
    r = run_id(m)
    m.spawned(r, 4242, NOW)
    assert m.query_answered(r + 1, OK, NOW) == []
    m.stop()
    assert m.query_answered(r, OK, NOW) == [] and m.state == "stopping"


def test_players_from_console_lines() -> None:
    patterns = {"join": [r"(?P<player>\w+) joined"], "leave": [r"(?P<player>\w+) left"]}
    m = starting(player_patterns=patterns)
    r = run_id(m)
    m.spawned(r, 4242, NOW)
    assert m.state == "running"  # no network query: ready as before
    assert m.status.query == QueryStatus(ok=True, players=0, checked_at=NOW)
    assert m.players_counted(r, 2, NOW + 1) == [Report()]
    assert m.status.query is not None and m.status.query.players == 2
    m.stop()
    m.exited(r, 0, NOW + 2)
    assert m.status.query is None
    m.start()
    assert m.status.query is None  # a new run: counted from zero once it runs
    m.spawned(run_id(m), 4243, NOW + 3)
    assert m.status.query is not None and m.status.query.players == 0


def test_a_failing_probe_during_a_stop_is_not_a_crash() -> None:
    m = running(health={"tcp_port": 27015, "failures": 1})
    r = run_id(m)
    m.stop()
    assert m.probe_failed(r) == []
    m.exited(r, 0, NOW)
    assert m.state == "stopped"


def test_an_exit_during_a_stop_is_a_stop_whatever_its_code() -> None:
    m = running()
    r = run_id(m)
    m.stop()
    effects = m.exited(r, 3, NOW)
    assert m.state == "stopped" and m.status.exit_code == 3 and m.crash_times == ()
    assert notes(effects) == ["stopped (exited with code 3)"]


# -- races ---------------------------------------------------------------------------------


def test_a_restart_stops_then_starts_a_new_run() -> None:
    m = running()
    first = run_id(m)
    m.restart()
    effects = m.exited(first, -signal.SIGTERM, NOW)
    assert m.state == "starting" and run_id(m) != first
    assert only(effects, Spawn) == Spawn(run_id(m))


def test_a_stop_during_a_restart_wins() -> None:
    m = running()
    r = run_id(m)
    m.restart()
    effects = m.update_spec(spec(desired_state="stopped"), restart_on_change=False)
    assert kinds(effects) == [Persist] and m.desired == "stopped"
    effects = m.exited(r, 0, NOW)
    assert m.state == "stopped" and m.run is None
    assert not any(isinstance(e, Spawn) for e in effects)


def test_a_kill_during_a_restart_does_not_start_it_again() -> None:
    m = running()
    r = run_id(m)
    m.restart()
    assert kinds(m.kill()) == [Changed, Kill]
    assert m.desired == "stopped"
    assert not any(isinstance(e, Spawn) for e in m.exited(r, -signal.SIGKILL, NOW))
    assert m.state == "stopped"


def test_a_kill_during_a_stop_kills_and_ends_stopped() -> None:
    m = running(stop_command="quit")
    r = run_id(m)
    m.stop()
    assert m.kill() == [Changed(), Kill(r)]
    m.exited(r, -signal.SIGKILL, NOW)
    assert m.state == "stopped" and m.desired == "stopped"


def test_a_stop_or_kill_before_the_spawn_acts_once_it_is_spawned() -> None:
    m = starting(stop_command="quit")
    r = run_id(m)
    assert kinds(m.stop()) == [Changed]
    assert kinds(m.spawned(r, 9, NOW)) == [Note, WriteStop]
    assert m.state == "stopping" and m.status.pid is None
    m = starting()
    r = run_id(m)
    m.kill()
    assert m.spawned(r, 9, NOW) == [Note("started (pid 9)"), Kill(r)]


def test_a_start_while_stopping_runs_after_the_stop() -> None:
    m = running()
    r = run_id(m)
    m.stop()
    effects = m.update_spec(spec(desired_state="running"), restart_on_change=False)
    assert kinds(effects) == [Persist] and m.pending_start
    effects = m.exited(r, 0, NOW)
    assert m.state == "starting" and only(effects, Spawn).run == run_id(m)
    assert not m.pending_start


def test_a_start_then_a_stop_while_stopping_stays_stopped() -> None:
    m = running()
    r = run_id(m)
    m.stop()
    m.update_spec(spec(desired_state="running"), restart_on_change=False)
    m.update_spec(spec(desired_state="stopped"), restart_on_change=False)
    m.exited(r, 0, NOW)
    assert m.state == "stopped"


def test_a_start_while_installing_runs_after_the_install() -> None:
    m = ServerMachine(spec())
    m.recovered(NOW)
    assert m.state == "installing" and m.desired == "stopped"
    m.update_spec(spec(desired_state="running"), restart_on_change=False)
    assert m.pending_start
    effects = m.install_done(None)
    assert kinds(effects) == [Changed, Note, Changed, Spawn]
    assert m.installed and m.state == "starting" and not m.pending_start


def test_a_stop_and_a_start_during_an_install_then_a_later_update_installs_again() -> None:
    m = ServerMachine(spec(desired_state="running"))
    m.recovered(NOW)  # installs, then starts
    m.update_spec(spec(desired_state="stopped"), restart_on_change=False)
    m.update_spec(spec(desired_state="running"), restart_on_change=False)
    m.install_done(None)
    r = run_id(m)
    m.spawned(r, 1, NOW)
    assert kinds(m.install()) == [Changed, Terminate]  # a game update of a running server
    effects = m.exited(r, 0, NOW)
    assert m.state == "installing" and StartInstall in kinds(effects)
    m.install_done(None)
    assert m.state == "starting"


def test_a_reinstall_installs_even_when_a_stop_came_but_does_not_start() -> None:
    m = running()
    r = run_id(m)
    m.install()
    m.update_spec(spec(desired_state="stopped"), restart_on_change=False)
    m.exited(r, 0, NOW)
    assert m.state == "installing"
    assert not any(isinstance(e, Spawn) for e in m.install_done(None))
    assert m.state == "stopped"


def test_a_build_update_stops_installs_and_starts_again() -> None:
    m = running()
    r = run_id(m)
    m.update()
    assert m.state == "stopping"
    m.exited(r, 0, NOW)
    assert m.state == "installing" and m.updating
    effects = m.install_done(None)
    assert m.state == "starting" and Spawn in kinds(effects) and not m.updating


def test_a_failed_build_update_starts_the_installed_build_again_not_failed() -> None:
    m = running()
    r = run_id(m)
    m.update()
    m.exited(r, 0, NOW)
    effects = m.install_done("Error! App '1' state is 0x202 after update job.")
    assert m.state == "starting" and Spawn in kinds(effects)
    assert m.status.error is None and m.installed and m.desired == "running"
    # an operator's failed install is still a failure
    m = stopped()
    m.install()
    m.install_done("ERROR! x")
    assert m.state == "failed"


def test_a_failed_build_update_of_a_stopped_server_leaves_it_stopped() -> None:
    m = stopped()
    assert StartInstall in kinds(m.update())
    assert Spawn not in kinds(m.install_done("ERROR! x"))
    assert m.state == "stopped"


def test_a_kill_during_a_build_updates_stop_calls_the_update_off() -> None:
    m = running()
    r = run_id(m)
    m.update()
    m.kill()
    effects = m.exited(r, -9, NOW)
    assert UpdateCalledOff("killed") in effects and StartInstall not in kinds(effects)
    assert m.state == "stopped"


def test_a_build_update_is_refused_where_an_install_is() -> None:
    m = running()
    m.stop()
    with pytest.raises(Conflict):
        m.update()


def test_a_kill_during_an_install_cancels_it() -> None:
    m = ServerMachine(spec(desired_state="running"))
    m.recovered(NOW)
    assert m.kill() == [CancelInstall()]
    assert m.state == "installing" and m.desired == "stopped"
    effects = m.install_done("install cancelled")
    assert m.state == "failed" and m.status.error == "install cancelled"
    assert notes(effects) == ["install failed: install cancelled"]
    assert not m.installed


def test_a_delete_during_an_install_cancels_it_and_nothing_starts() -> None:
    m = ServerMachine(spec(desired_state="running"))
    m.recovered(NOW)
    m.update_spec(spec(desired_state="running"), restart_on_change=False)
    assert m.shutdown(keep_desired=False) == [CancelInstall()]
    assert not any(isinstance(e, Spawn) for e in m.install_done(None))
    assert m.state == "stopped"


def test_a_worker_restart_leaves_an_install_running_and_the_desired_state_as_it_is() -> None:
    m = ServerMachine(spec(desired_state="running"))
    m.recovered(NOW)
    assert m.shutdown(keep_desired=True) == []
    assert m.state == "installing" and m.desired == "running"


def test_a_worker_restart_stops_the_game_but_keeps_it_wanted() -> None:
    m = running()
    r = run_id(m)
    assert kinds(m.shutdown(keep_desired=True)) == [Changed, Terminate]
    assert m.desired == "running" and m.closing
    effects = m.exited(r, 0, NOW)
    assert m.state == "stopped" and not any(isinstance(e, Spawn) for e in effects)


def test_a_delete_of_a_crashed_server_cancels_its_restart() -> None:
    m = crashed()
    token = m.backoff_token
    assert token is not None
    assert kinds(m.shutdown(keep_desired=False)) == [CancelBackoff, Changed]
    assert m.state == "stopped" and m.desired == "stopped"
    assert m.backoff_elapsed(token) == []


def test_a_shutdown_during_a_restart_does_not_start_it_again() -> None:
    m = running()
    r = run_id(m)
    m.restart()
    assert m.shutdown(keep_desired=True) == []  # the stop is under way already
    assert not any(isinstance(e, Spawn) for e in m.exited(r, 0, NOW))
    assert m.state == "stopped"


def test_a_reopened_server_restarts_again() -> None:
    m = running()
    m.shutdown(keep_desired=False)
    m.reopen()
    assert not m.closing
    m.exited(run_id(m), 0, NOW)
    m.start()
    m.spawned(run_id(m), 3, NOW)
    effects = m.exited(run_id(m), 1, NOW)
    token = only(effects, StartBackoff).token
    assert kinds(m.backoff_elapsed(token)) == [Changed, Spawn]


def test_events_of_an_old_run_are_ignored() -> None:
    m = running(health={"tcp_port": 1, "failures": 1})
    old = run_id(m)
    m.restart()
    m.exited(old, 0, NOW)
    new = run_id(m)
    before = snapshot(m)
    assert m.exited(old, 1, NOW) == []
    assert m.spawned(old, 5, NOW) == []
    assert m.spawn_failed(old, "x") == []
    assert m.ready_seen(old) == []
    assert m.stop_overdue(old, 1) == [] and m.stop_write_failed(old, 1) == []
    assert m.probe_failed(old) == []
    m.probe_idle()
    assert snapshot(m) == before and run_id(m) == new


def test_restart_on_change_restarts_only_for_a_real_change() -> None:
    m = running(args=["v1"])
    assert kinds(m.update_spec(spec(args=["v1"], desired_state="running"), True)) == [Persist]
    assert kinds(m.update_spec(spec(args=["v2"], desired_state="running"), False)) == [Persist]
    assert m.state == "running" and m.spec.args == ["v2"]
    effects = m.update_spec(spec(args=["v3"], desired_state="running"), True)
    assert kinds(effects) == [Changed, Terminate, Persist]
    assert m.run is not None and m.run.then == "start"


def test_a_spec_that_wants_it_stopped_stops_it() -> None:
    for make in (starting, running, crashed):
        m = make()
        m.update_spec(spec(), restart_on_change=False)
        assert m.state in ("stopping", "stopped") and m.desired == "stopped"


def test_a_spec_that_wants_it_running_starts_it() -> None:
    m = stopped()
    effects = m.update_spec(spec(desired_state="running"), restart_on_change=False)
    assert kinds(effects) == [Changed, Spawn, Persist]


# -- recovery ------------------------------------------------------------------------------


@pytest.mark.parametrize(("installed", "desired", "state", "effect"), [
    (True, "stopped", "stopped", None),
    (True, "running", "starting", Spawn),
    (False, "stopped", "installing", StartInstall),
    (False, "running", "installing", StartInstall),
])
def test_recovery_without_a_leftover(installed: bool, desired: str, state: str,
                                     effect: type | None) -> None:
    m = ServerMachine(spec(desired_state=desired), installed=installed,
                      status=ServerStatus(state="running", pid=5, ready=True))
    effects = m.recovered(NOW)
    assert m.state == state and m.status.pid is None
    assert (effect in kinds(effects)) if effect else kinds(effects) == [Changed]
    if not installed:
        assert m.install_then_start == (desired == "running")


def test_recovery_notes_the_leftovers_it_removed() -> None:
    m = ServerMachine(spec(), installed=True)
    assert notes(m.recovered(NOW, removed=2)) == [
        "stopped 2 leftover process(es) of an earlier worker"]


def test_failed_survives_a_worker_restart() -> None:
    m = ServerMachine(spec(desired_state="running"), installed=True,
                      status=ServerStatus(state="failed", error="crash loop"))
    assert kinds(m.recovered(NOW)) == [Changed]
    assert m.state == "failed" and m.status.error == "crash loop"


def test_an_adopted_process_is_running_at_once() -> None:
    m = ServerMachine(spec(desired_state="running", ready_pattern="x"), installed=True)
    effects = m.recovered(NOW, adopted=True, pid=12)
    r = run_id(m)
    assert effects[:2] == [Adopt(r), Note("re-attached (pid 12)")]
    assert m.state == "running" and m.status.pid == 12 and m.status.ready


def test_an_adopted_process_that_should_be_stopped_is_stopped() -> None:
    m = ServerMachine(spec(stop_command="quit"), installed=True)
    effects = m.recovered(NOW, adopted=True, pid=12)
    r = run_id(m)
    assert m.state == "stopping" and WriteStop(r, "quit", 30) in effects
    m.exited(r, 0, NOW)
    assert m.state == "stopped"


def test_install_progress_reports_changes_only() -> None:
    m = ServerMachine(spec())
    m.start()
    assert kinds(m.install_progress(40.0)) == [Changed]
    assert m.install_progress(40.0) == []
    assert m.status.install_progress == 40.0


# -- a start that waits for disk space to record its run ------------------------------------


def test_a_blocked_launch_stays_starting_and_says_why_once() -> None:
    m = starting()
    rid = run_id(m)
    assert kinds(m.launch_blocked(rid, "disk full: x")) == [Changed]
    assert (m.state, m.status.error, m.status.pid) == ("starting", "disk full: x", None)
    assert m.launch_blocked(rid, "disk full: x") == []  # the same reason: no new change
    assert m.launch_wanted(rid)
    m.spawned(rid, 4242, NOW)
    assert (m.state, m.status.error) == ("running", None)


def test_a_stop_calls_a_blocked_launch_off() -> None:
    m = starting()
    rid = run_id(m)
    m.launch_blocked(rid, "disk full: x")
    m.stop()
    assert not m.launch_wanted(rid)
    out = m.launch_called_off(rid)
    assert kinds(out) == [Changed, Note] and notes(out) == ["stopped before it started"]
    assert (m.state, m.status.error, m.desired, m.run) == ("stopped", None, "stopped", None)
    assert m.launch_called_off(rid) == []  # (once)


def test_a_restart_calls_a_blocked_launch_off_and_launches_again() -> None:
    m = starting()
    rid = run_id(m)
    m.launch_blocked(rid, "disk full: x")
    m.restart()
    out = m.launch_called_off(rid)
    assert Spawn in kinds(out) and m.state == "starting" and run_id(m) != rid


def test_a_shutdown_calls_a_blocked_launch_off_for_good() -> None:
    m = starting()
    rid = run_id(m)
    m.shutdown(keep_desired=True)
    assert not m.launch_wanted(rid)
    out = m.launch_called_off(rid)
    assert Spawn not in kinds(out) and m.state == "stopped" and m.desired == "running"


def test_a_blocked_launch_of_an_older_run_is_ignored() -> None:
    m = starting()
    assert m.launch_blocked(run_id(m) + 1, "disk full: x") == []
    assert not m.launch_wanted(run_id(m) + 1)
    assert m.status.error is None
