"""The webhook events, as pure functions: a server's, of its status before and after a change
(the worker records them as they happen, manman.worker.events; the host derives them from
reports only for workers that send none), a backup's, of its records' states, and a
worker's, of its status before and after the host's sweep."""

from __future__ import annotations

from typing import Any

from manman import models

SERVER_EVENTS = ("server.ready", "server.stopped", "server.crashed", "server.failed",
                 "server.update_available", "server.updated", "server.disk_full")
BACKUP_EVENTS = ("backup.ok", "backup.failed")
SCHEDULE_EVENTS = ("schedule.failed",)
PLAYER_EVENTS = ("player.joined", "player.left")
WORKER_EVENTS = ("worker.unknown", "worker.alive", "worker.expired")
TEST_EVENT = "webhook.test"
EVENTS = frozenset(SERVER_EVENTS + BACKUP_EVENTS + SCHEDULE_EVENTS + PLAYER_EVENTS
                   + WORKER_EVENTS)
# recorded by the worker where they happen (manman.worker.events); the worker.* stay the host's
SERVER_SIDE = frozenset(SERVER_EVENTS + BACKUP_EVENTS + SCHEDULE_EVENTS + PLAYER_EVENTS)

Derived = tuple[str, dict[str, Any]]  # (event, data)


def _players(obs: models.ObservedServer | None) -> int | None:
    if obs is None or obs.query is None or not obs.query.ok:
        return None
    return obs.query.players


def server_events(before: models.ObservedServer | None, after: models.ObservedServer
                  ) -> list[Derived]:
    """What changed between two statuses of one server. `before` is None for the first one
    seen (nothing is derived from it: no transition is known). Two statuses far apart (a
    host that was away compares with the last report it saved) still tell what changed; a
    crash the restart policy already recovered from shows as a higher `restarts` count."""
    if before is None:
        return []
    out: list[Derived] = []
    state = after.state
    if state != before.state or after.ready != before.ready:
        if state == "running" and after.ready and not (before.state == "running"
                                                       and before.ready):
            out.append(("server.ready", {"pid": after.pid}))
        elif state == "stopped" and before.state != "stopped":
            out.append(("server.stopped", {"exit_code": after.exit_code}))
        elif state == "failed" and before.state != "failed":
            out.append(("server.failed", {"error": after.error, "exit_code": after.exit_code}))
    # `restarts` counts the restarts after crashes in this run: each is a crash, but for the
    # one already reported as `crashed`; a crash not restarted yet is the state itself
    crashes = max(0, after.restarts - before.restarts)
    crashes -= 1 if crashes and before.state == "crashed" else 0
    crashes += 1 if state == "crashed" and (before.state != "crashed" or
                                            after.restarts > before.restarts) else 0
    if crashes:
        out.append(("server.crashed", {"exit_code": after.exit_code, "error": after.error,
                                       "restarts": after.restarts, "crashes": crashes}))
    if after.update_available and not before.update_available:
        out.append(("server.update_available", {"installed_build": after.installed_build,
                                                "latest_build": after.latest_build}))
    if before.installed_build and after.installed_build \
            and after.installed_build != before.installed_build:
        out.append(("server.updated", {"from_build": before.installed_build,
                                       "to_build": after.installed_build}))
    if after.disk_full is not None and before.disk_full is None:
        out.append(("server.disk_full", {"used": after.disk_full.used,
                                         "limit": after.disk_full.limit}))
    failure = after.schedule_failure
    if failure is not None and failure != before.schedule_failure:
        out.append(("schedule.failed", {"schedule_id": failure.schedule_id,
                                        "run_id": failure.run_id, "reason": failure.reason}))
    was, now = _players(before), _players(after)
    if was is not None and now is not None and now != was:
        # counts, not names: what a query or the player patterns tell
        out.append(("player.joined" if now > was else "player.left",
                    {"players": now, "change": now - was}))
    return out


def backup_events(before: dict[str, str], after: list[dict[str, Any]]) -> list[Derived]:
    """Backups that ended since `before` (each backup's state then, by id); `after` is the
    records now."""
    out: list[Derived] = []
    for b in after:
        state = b.get("state")
        if state in ("ok", "failed") and before.get(b.get("id", "")) != state:
            data = {k: b.get(k) for k in ("id", "name", "bytes", "sha256", "error")}
            out.append((f"backup.{state}", data))
    return out


def worker_event(before: str | None, now: str) -> str | None:
    """A worker's status change as seen by the host's sweep: `unknown` when it misses its
    heartbeats, `alive` when it is heard from again; `expired` when the liveness judge
    retires it (worker_expiry without a heartbeat)."""
    if now == "expired":
        return "worker.expired"
    if now == "unknown" and before in ("alive", "frozen"):
        return "worker.unknown"
    if now in ("alive", "frozen") and before == "unknown":
        return "worker.alive"
    return None
