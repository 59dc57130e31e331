"""Schedules, the pure part: cron in time zones across daylight saving, what a schedule may
hold (422 reasons), and the runner's logic under trio's MockClock against a small server
simulation (the protocol the worker's actor target implements)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import msgspec
import pytest
import trio
import trio.testing

from manman import errors, models
from manman.schedules import check, cron, edit
from manman.schedules.views import KEEP_RUNS, view
from manman.worker.schedules.run import holds
from manman.worker.schedules.server import ServerSchedules
from manman.worker.schedules.target import Snapshot, Watches

BERLIN = ZoneInfo("Europe/Berlin")


def _ts(*args: int, tz: ZoneInfo = BERLIN, fold: int = 0) -> float:
    return datetime(*args, tzinfo=tz, fold=fold).timestamp()  # type: ignore[misc]


def _utc(ts: float | None) -> str | None:
    return cron.iso(ts)


# -- cron and daylight saving -------------------------------------------------------------


def test_next_fire_is_utc_and_strictly_after() -> None:
    at = _ts(2024, 6, 1, 4, 59, 30, tz=ZoneInfo("UTC"))
    assert _utc(cron.next_fire("0 5 * * *", "UTC", at)) == "2024-06-01T05:00:00Z"
    on_it = _ts(2024, 6, 1, 5, 0, tz=ZoneInfo("UTC"))
    assert _utc(cron.next_fire("0 5 * * *", "UTC", on_it)) == "2024-06-02T05:00:00Z"
    # 05:00 in Berlin's summer is 03:00 UTC
    assert _utc(cron.next_fire("0 5 * * *", "Europe/Berlin", at)) == "2024-06-02T03:00:00Z"


def test_spring_forward_a_time_in_the_skipped_hour_runs_once_at_the_jump() -> None:
    # 2024-03-31, Europe/Berlin: 02:00 → 03:00; 02:30 does not exist that day
    before = _ts(2024, 3, 30, 12, 0)
    times = cron.fires("30 2 * * *", "Europe/Berlin", before, 3)
    assert [_utc(t) for t in times] == [
        "2024-03-31T01:00:00Z",  # 03:00 CEST: once, at the first minute after the jump
        "2024-04-01T00:30:00Z",  # 02:30 CEST the next day
        "2024-04-02T00:30:00Z"]


def test_fall_back_a_time_in_the_repeated_hour_runs_once() -> None:
    # 2024-10-27, Europe/Berlin: 03:00 CEST → 02:00 CET; 02:30 happens twice
    before = _ts(2024, 10, 26, 12, 0)
    times = cron.fires("30 2 * * *", "Europe/Berlin", before, 2)
    assert [_utc(t) for t in times] == ["2024-10-27T00:30:00Z",  # first pass (CEST)
                                        "2024-10-28T01:30:00Z"]  # next day (CET)
    # asked during the second pass of that hour: not again that day
    second_pass = _ts(2024, 10, 27, 2, 10, fold=1)
    assert _utc(cron.next_fire("30 2 * * *", "Europe/Berlin", second_pass)) == \
        "2024-10-28T01:30:00Z"
    # a schedule every 30 minutes does run in both passes: it names no wall time
    half = cron.fires("*/30 * * * *", "Europe/Berlin", _ts(2024, 10, 27, 1, 50), 4)
    assert [b - a for a, b in itertools.pairwise(half)] == [1800.0] * 3


# -- what a schedule may hold -------------------------------------------------------------


def _spec(schedules: list[dict], game_id: str = "exec:/bin/true") -> models.ServerSpec:
    return msgspec.convert({"name": "s", "game_id": game_id, "schedules": schedules},
                           models.ServerSpec)


def _refused(schedules: list[dict], game_id: str = "exec:/bin/true") -> str:
    with pytest.raises(msgspec.ValidationError) as e:
        _spec(schedules, game_id)
    return str(e.value)


def test_schedule_defaults_ids_and_awaits() -> None:
    spec = _spec([{"cron": "0 5 * * *", "tasks": [
        {"action": "command", "payload": "say restart in 5 min"},
        {"action": "wait", "payload": "300"}, {"action": "restart"}]},
        {"id": "s1x", "cron": "*/10 * * * *", "tasks": [{"action": "stop"}]},
        {"cron": "0 * * * *", "tasks": [{"action": "start", "await": "ready"}]}])
    s = spec.schedules
    assert [x.id for x in s] == ["s1", "s1x", "s2"]
    assert s[0].timezone == "UTC" and s[0].enabled and s[0].defer_max == 0
    assert [t.await_ for t in s[0].tasks] == ["none", "none", "done"]
    assert s[2].tasks[0].await_ == "ready"
    # "await" on the wire
    assert msgspec.to_builtins(s[0].tasks[2])["await"] == "done"


def test_refusals_have_reasons() -> None:
    task = [{"action": "restart"}]
    assert "five fields" in _refused([{"cron": "0 5 * * * *", "tasks": task}])
    assert "cron" in _refused([{"cron": "0 25 * * *", "tasks": task}])
    assert "day-of-month" in _refused([{"cron": "0 0 30 2 *", "tasks": task}])
    assert "IANA" in _refused([{"cron": "0 5 * * *", "timezone": "Mars/Olympus",
                                "tasks": task}])
    assert "IANA" in _refused([{"cron": "0 5 * * *", "timezone": "../../etc/passwd",
                                "tasks": task}])
    assert "needs a payload" in _refused([{"cron": "0 5 * * *",
                                           "tasks": [{"action": "command"}]}])
    assert "seconds" in _refused([{"cron": "0 5 * * *",
                                   "tasks": [{"action": "wait", "payload": "soon"}]}])
    assert "takes no payload" in _refused([{"cron": "0 5 * * *",
                                            "tasks": [{"action": "stop", "payload": "x"}]}])
    assert "one line" in _refused([{"cron": "0 5 * * *",
                                    "tasks": [{"action": "command", "payload": "a\nb"}]}])
    assert "at most 20" in _refused([{"cron": "0 5 * * *", "tasks": task * 21}]) or \
        "length" in _refused([{"cron": "0 5 * * *", "tasks": task * 21}])
    assert "twice" in _refused([{"id": "a", "cron": "0 5 * * *", "tasks": task},
                                {"id": "a", "cron": "0 6 * * *", "tasks": task}])
    # updates only for steamcmd servers; backups at most every 15 minutes (below)
    assert _spec([{"cron": "0 */6 * * *", "tasks": [{"action": "backup"}]}]).schedules[0] \
        .tasks[0].await_ == "done"
    assert "every 15 minutes" in _refused([{"cron": "*/5 * * * *",
                                            "tasks": [{"action": "backup"}]}])
    assert "update: not available" in _refused([{"cron": "0 5 * * *",
                                                 "tasks": [{"action": "update"}]}])
    ok = _spec([{"cron": "0 5 * * *", "tasks": [{"action": "update"}]}], "steamcmd:896660")
    assert ok.schedules[0].tasks[0].await_ == "done"


def test_backups_at_most_every_15_minutes_per_server() -> None:
    def sched(expr: str, enabled: bool = True) -> models.Schedule:
        return models.Schedule(cron=expr, enabled=enabled,
                               tasks=[models.ScheduleTask(action="backup")])

    now = _ts(2024, 6, 1, 0, 0)
    check.check_backup_interval([sched("*/15 * * * *")], now)
    check.check_backup_interval([sched("0 */6 * * *"), sched("30 */6 * * *")], now)
    with pytest.raises(ValueError, match="every 15 minutes"):
        check.check_backup_interval([sched("*/10 * * * *")], now)
    with pytest.raises(ValueError, match="0 s apart"):  # two schedules at the same time
        check.check_backup_interval([sched("0 3 * * *"), sched("0 3 * * *")], now)
    check.check_backup_interval([sched("0 3 * * *"), sched("0 3 * * *", enabled=False)], now)


def test_view_carries_next_run_at_in_utc_and_edits() -> None:
    s = _spec([{"cron": "0 5 * * *", "timezone": "America/New_York",
                "tasks": [{"action": "restart"}]}]).schedules
    now = _ts(2024, 1, 10, 0, 0, tz=ZoneInfo("UTC"))
    assert view(s[0], now).next_run_at == "2024-01-10T10:00:00Z"
    off = msgspec.structs.replace(s[0], enabled=False)
    assert view(off, now).next_run_at is None
    with pytest.raises(errors.NotFound):
        edit.find(s, "nope")
    with pytest.raises(errors.Exists):
        edit.added(s, msgspec.structs.replace(s[0]))
    with pytest.raises(errors.Invalid):
        edit.replaced(s, "s1", msgspec.structs.replace(s[0], id="other"))
    assert edit.removed(s, "s1") == []


def test_only_when() -> None:
    ow = models.OnlyWhen(state="running", players_max=0)
    assert holds(ow, Snapshot("running", True, 1.0, 0))
    assert not holds(ow, Snapshot("running", True, 1.0, 2))
    assert not holds(ow, Snapshot("running", True, 1.0, None))  # not known: does not hold
    assert not holds(ow, Snapshot("stopped", False, None, 0))
    assert holds(None, Snapshot("stopped", False, None, None))


# -- the runner, under MockClock -----------------------------------------------------------

EPOCH = _ts(2024, 6, 1, 4, 50, tz=ZoneInfo("UTC"))  # what trio.current_time() 0 stands for


class SimServer:
    """A server as the runner sees it: power actions take a second each; a command is
    recorded; it can be told to fail its start."""

    def __init__(self, nursery: trio.Nursery, state: str = "running") -> None:
        self.nursery = nursery
        self.watches = Watches()
        self.state = state
        self.ready = state == "running"
        self.started_at: float | None = 0.0 if state == "running" else None
        self.players: int | None = 0
        self.log: list[tuple[float, str]] = []
        self.fail_start = False

    def snapshot(self) -> Snapshot:
        return Snapshot(self.state, self.ready, self.started_at, self.players)

    def _set(self, state: str, ready: bool = False) -> None:
        self.state, self.ready = state, ready
        if state == "running":
            self.started_at = trio.current_time()
        self.watches.changed(state)

    async def _go(self, *steps: tuple[float, str, bool]) -> None:
        for delay, state, ready in steps:
            await trio.sleep(delay)
            self._set(state, ready)

    async def power(self, action: str) -> None:
        self.log.append((trio.current_time(), action))
        if action == "start" and self.state == "running":
            raise errors.Conflict("cannot start a server that is running", "invalid_state")
        if action in ("stop", "kill"):
            self._set("stopping")
            self.nursery.start_soon(self._go, (1, "stopped", False))
        elif action == "start":
            self._set("starting")
            end = "failed" if self.fail_start else "running"
            self.nursery.start_soon(self._go, (0.5, end, False), (0.5, end, end == "running"))
        elif action == "restart":
            self._set("stopping")
            self.nursery.start_soon(self._go, (1, "stopped", False), (0, "starting", False),
                                    (1, "running", False), (1, "running", True))

    def command(self, line: str) -> None:
        self.log.append((trio.current_time(), f"command {line}"))

    def update(self) -> None:
        self.log.append((trio.current_time(), "update"))
        self._set("stopping")
        self.nursery.start_soon(self._go, (1, "installing", False), (5, "starting", False),
                                (1, "running", True))

    def note(self, text: str) -> None:
        self.log.append((trio.current_time(), f"note {text}"))


def _schedule(expr: str, *tasks: dict, **fields: object) -> models.Schedule:
    spec = _spec([{"cron": expr, "tasks": list(tasks), **fields}], "steamcmd:1")
    return spec.schedules[0]


async def _loop(nursery: trio.Nursery, sim: SimServer) -> ServerSchedules:
    ss = ServerSchedules("srv", sim, lambda: EPOCH + trio.current_time())
    await nursery.start(ss.serve)
    return ss


async def test_restart_with_warning_runs_in_order_at_5(autojump_clock: trio.testing.MockClock
                                                       ) -> None:
    async with trio.open_nursery() as nursery:
        sim = SimServer(nursery)
        ss = await _loop(nursery, sim)
        ss.set_schedules([_schedule("0 5 * * *", {"action": "command", "payload": "say bye"},
                                    {"action": "wait", "payload": "300"},
                                    {"action": "restart"},
                                    {"action": "command", "payload": "say back"})])
        await trio.sleep(600 + 300 + 60)  # 05:00 + the wait + the restart
        five = 600.0
        assert sim.log == [(five, "command say bye"), (five + 300, "restart"),
                           (five + 302, "command say back")]  # once the restart was done
        (run,) = ss.history("s1")
        assert run.status == "ok" and run.trigger == "cron"
        assert run.due_at == "2024-06-01T05:00:00Z"
        assert run.started_at == "2024-06-01T05:00:00Z"
        assert run.ended_at == "2024-06-01T05:05:02Z"
        assert [t.ok for t in run.tasks] == [True] * 4
        assert ss.next_at["s1"] == EPOCH + five + 86400
        nursery.cancel_scope.cancel()


async def test_stop_then_start_does_not_race(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        sim = SimServer(nursery)
        ss = await _loop(nursery, sim)
        ss.set_schedules([_schedule("0 5 * * *", {"action": "stop"}, {"action": "start"},
                                    {"action": "command", "payload": "say up",
                                     "await": "none"})])
        await trio.sleep(700)
        # the start waited for the stop to be done; the command for the start (running)
        assert sim.log == [(600.0, "stop"), (601.0, "start"), (601.5, "command say up")]
        assert ss.history("s1")[0].status == "ok"
        nursery.cancel_scope.cancel()


async def test_await_ready_and_timeout_and_continue_on_failure(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        sim = SimServer(nursery, state="stopped")
        ss = await _loop(nursery, sim)
        ss.set_schedules([_schedule(
            "0 5 * * *",
            {"action": "start", "await": "ready"},
            {"action": "command", "payload": "say ready", "await": "stopped", "timeout": 5,
             "continue_on_failure": True},
            {"action": "notify", "payload": "done"})])
        await trio.sleep(700)
        assert sim.log == [(600.0, "start"), (601.0, "command say ready"),
                           (606.0, "note done")]
        (run,) = ss.history("s1")
        assert run.status == "failed" and run.reason == \
            "task 2 (command): timed out after 5 s"
        assert [t.ok for t in run.tasks] == [True, False, True]
        nursery.cancel_scope.cancel()


async def test_a_failure_stops_the_run(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        sim = SimServer(nursery, state="stopped")
        sim.fail_start = True
        ss = await _loop(nursery, sim)
        ss.set_schedules([_schedule("0 5 * * *", {"action": "start"},
                                    {"action": "command", "payload": "never"})])
        await trio.sleep(700)
        assert sim.log == [(600.0, "start")]
        (run,) = ss.history("s1")
        assert run.status == "failed" and "failed to start" in (run.reason or "")
        assert len(run.tasks) == 1
        nursery.cancel_scope.cancel()


async def test_update_awaits_the_install_and_the_start(autojump_clock: trio.testing.MockClock
                                                       ) -> None:
    async with trio.open_nursery() as nursery:
        sim = SimServer(nursery)
        ss = await _loop(nursery, sim)
        ss.set_schedules([_schedule("0 5 * * *", {"action": "update"},
                                    {"action": "command", "payload": "say updated"})])
        await trio.sleep(700)
        assert sim.log == [(600.0, "update"), (607.0, "command say updated")]
        nursery.cancel_scope.cancel()


async def test_only_when_defers_then_runs_or_skips(autojump_clock: trio.testing.MockClock
                                                   ) -> None:
    async with trio.open_nursery() as nursery:
        sim = SimServer(nursery)
        sim.players = 3
        ss = await _loop(nursery, sim)
        ss.set_schedules([_schedule("0 5 * * *", {"action": "restart"},
                                    only_when={"state": "running", "players_max": 0},
                                    defer_max=1800)])
        await trio.sleep(600 + 900)
        assert sim.log == []  # deferred
        sim.players = 0
        sim.watches.changed(sim.state)  # the query's count changed
        await trio.sleep(1)
        assert sim.log == [(1500.0, "restart")]
        # the next day nobody leaves: skipped after defer_max
        sim.players = 2
        await trio.sleep(86400 + 1800)
        runs = ss.history("s1")
        assert [r.status for r in runs] == ["skipped", "ok"]
        assert runs[0].reason == "only_when did not hold within defer_max (1800 s)"
        # a manual run ignores only_when
        ss.fire(ss.schedules["s1"], "manual", None)
        await trio.sleep(5)
        assert sim.log[-1][1] == "restart" and ss.history("s1")[0].trigger == "manual"
        nursery.cancel_scope.cancel()


async def test_a_fire_while_the_last_run_goes_is_skipped_and_recorded(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        sim = SimServer(nursery)
        ss = await _loop(nursery, sim)
        # every minute, a run of 150 s
        ss.set_schedules([_schedule("* * * * *", {"action": "wait", "payload": "150"})])
        await trio.sleep(60 * 4 + 1)
        runs = ss.history("s1")
        assert [r.status for r in reversed(runs)] == ["ok", "skipped", "skipped", "running"]
        assert runs[1].reason == "run 1 was still going"
        with pytest.raises(errors.Conflict):  # a manual run while one goes: 409
            ss.fire(ss.schedules["s1"], "manual", None)
        nursery.cancel_scope.cancel()


async def test_history_keeps_the_last_50_and_changes_apply(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        sim = SimServer(nursery)
        ss = await _loop(nursery, sim)
        s = _schedule("* * * * *", {"action": "command", "payload": "tick"})
        ss.set_schedules([s])
        await trio.sleep(60 * 60 + 1)  # past the 60th fire, not at it
        runs = ss.history("s1")
        assert len(runs) == KEEP_RUNS and runs[0].id == 60 and runs[-1].id == 11
        # disabled: no more fires; the same list again changes nothing
        ss.set_schedules([msgspec.structs.replace(s, enabled=False)])
        await trio.sleep(300)
        assert ss.history("s1")[0].id == 60 and ss.next_at["s1"] is None
        ss.set_schedules([])  # removed
        assert ss.history("s1") == [] and not ss.schedules
        nursery.cancel_scope.cancel()


def test_iso_is_utc() -> None:
    assert cron.iso(datetime(2024, 1, 1, tzinfo=UTC).timestamp()) == "2024-01-01T00:00:00Z"
