"""The server state machine and the restart policy: pure code, no I/O, no clock.

The actor asks `check` before it acts on a command, and `after_exit` when the game process
has exited without being asked to. Everything here is decided from values passed in.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from manman.models import RestartSpec

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


class Conflict(Exception):
    """A command that does not fit the server's state (HTTP 409)."""

    def __init__(self, message: str, code: str = "conflict") -> None:
        super().__init__(message)
        self.code = code


def check(action: str, state: str) -> None:
    """Raise Conflict when `action` is not accepted in `state`."""
    if state not in ALLOWED[action]:
        raise Conflict(f"cannot {action} a server that is {state}", code="invalid_state")


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
    if crashes <= 0:
        return 0.0
    delay = policy.backoff_initial * (2.0 ** min(crashes - 1, 64))
    return min(delay, policy.backoff_max)


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
