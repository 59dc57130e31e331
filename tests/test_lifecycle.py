"""The server state machine and the restart policy (pure: no I/O, no clock)."""

from __future__ import annotations

import itertools
import signal

import pytest

from manman.models import STATES, RestartSpec
from manman.worker.machine import (
    ALLOWED,
    LIVE,
    Conflict,
    ExitDecision,
    after_exit,
    backoff,
    check,
    describe_exit,
)

# The table as reviewed against SPEC.md; a change to ALLOWED must change this on purpose.
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
