"""Schedules, the pure part: cron in time zones across daylight saving, what a schedule may
hold (422 reasons), and the runner's logic under trio's MockClock against a small server
simulation (the protocol the worker's actor target implements)."""

from __future__ import annotations

import itertools
import random
import re
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import pytest
import trio
import trio.testing

from manman import errors, models
from manman.schedules import backup_gaps, check, cron, edit
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


def _backup(expr: str, tz: str = "UTC", sid: str | None = None, enabled: bool = True,
            tasks: list[dict] | None = None) -> models.Schedule:
    return msgspec.convert({"id": sid, "cron": expr, "timezone": tz, "enabled": enabled,
                            "tasks": tasks or [{"action": "backup"}]}, models.Schedule)


def test_backups_at_most_every_15_minutes_per_server() -> None:
    sched = _backup
    now = _ts(2024, 6, 1, 0, 0)
    check.check_backup_interval([sched("*/15 * * * *")], now)
    check.check_backup_interval([sched("0 */6 * * *"), sched("30 */6 * * *")], now)
    with pytest.raises(ValueError, match="every 15 minutes"):
        check.check_backup_interval([sched("*/10 * * * *")], now)
    with pytest.raises(ValueError, match="0 s apart"):  # two schedules at the same time
        check.check_backup_interval([sched("0 3 * * *"), sched("0 3 * * *")], now)
    check.check_backup_interval([sched("0 3 * * *"), sched("0 3 * * *", enabled=False)], now)
    # days apart: Monday 03:00 and Tuesday 03:05 never meet
    check.check_backup_interval([sched("0 3 * * 1"), sched("5 3 * * 2")], now)
    # the last backup of a day and the first of the next
    with pytest.raises(ValueError, match="600 s apart"):
        check.check_backup_interval([sched("55 23 * * *"), sched("5 0 * * *")], now)


def _why(schedules: list[models.Schedule], now: float = _ts(2026, 12, 2, 7, 0)) -> str:
    with pytest.raises(ValueError) as e:
        check.check_backup_interval(schedules, now)
    return str(e.value)


def test_two_backups_of_one_run_count_with_their_waits_and_delays() -> None:
    why = _why([_backup("0 4 * * *", sid="s1", tasks=[
        {"action": "backup"}, {"action": "wait", "payload": "60"}, {"action": "backup"}])])
    assert why == ("schedule s1: the backup of tasks[2] would start 60 s after the one of "
                   "tasks[0]; at most one every 15 minutes per server")
    why = _why([_backup("0 4 * * *", sid="s1", tasks=[
        {"action": "backup"}, {"action": "stop"}, {"action": "backup", "delay": 899}])])
    assert "899 s after" in why
    # 15 minutes of waits and delays between them: allowed
    check.check_backup_interval([_backup("0 4 * * *", tasks=[
        {"action": "backup"}, {"action": "wait", "payload": "600"},
        {"action": "backup", "delay": 300}])], _ts(2026, 12, 2, 7, 0))
    # a run's later backup against another schedule's: 03:00 + 1 h of waits = 04:00
    why = _why([_backup("0 3 * * *", sid="a", tasks=[
        {"action": "stop"}, {"action": "wait", "payload": "3600"}, {"action": "backup"}]),
        _backup("5 4 * * *", sid="b")])
    assert "300 s apart (a at 2026-12-02T04:00:00Z, b at 2026-12-02T04:05:00Z)" in why


def test_backups_that_meet_once_a_year_or_once_in_28_years_are_refused() -> None:
    # every 20 minutes, and 03:05 on 1 January: 5 minutes apart once a year
    why = _why([_backup("*/20 * * * *", sid="s1"), _backup("5 3 1 1 *", sid="s2")])
    assert why.startswith("schedules: backups would run 300 s apart (s1 at "
                          "2027-01-01T03:00:00Z, s2 at 2027-01-01T03:05:00Z)"), why
    # the fifth Monday of February is a 29 February: in 2044 (28 years after 2016)
    why = _why([_backup("0 3 * 2 1#5"), _backup("5 3 29 2 *")])
    assert "2044-02-29T03:00:00Z" in why
    check.check_backup_interval([_backup("0 3 * 2 1#5"), _backup("5 3 28 2 *")],
                                _ts(2026, 12, 2, 7, 0))
    # spring forward: 02:30 runs at the jump, 03:00, as the 03:00 schedule does
    why = _why([_backup("30 2 * * *", "Europe/Berlin"), _backup("0 3 * * *", "Europe/Berlin")])
    assert "0 s apart" in why and "2027-03-28T01:00:00Z" in why
    # fall back: 01:00 and 02:00 (first pass) stay an hour apart
    check.check_backup_interval([_backup("0 1 * * *", "Europe/Berlin"),
                                 _backup("0 2 * * *", "Europe/Berlin")], _ts(2026, 12, 2, 7, 0))
    # two zones: Santiago's 19:15 meets Berlin's 01:15 the day Chile's summer time ends
    why = _why([_backup("15 1 * * *", "Europe/Berlin"),
                _backup("15 19 * * *", "America/Santiago")])
    assert "0 s apart" in why and "2027-04-04T23:15:00Z" in why


def test_saved_specs_are_read_whatever_the_backup_limit_says_now() -> None:
    """A spec saved before the check was made stricter still loads (host and worker stores,
    the host's heartbeat answer); a new or changed one is refused."""
    schedules = [{"cron": "*/20 * * * *", "tasks": [{"action": "backup"}]},
                 {"cron": "5 3 1 1 *", "tasks": [{"action": "backup"}]}]
    assert "300 s apart" in _refused(schedules)
    with check.stored_specs():
        assert len(_spec(schedules).schedules) == 2
    assert "300 s apart" in _refused(schedules)


DAY_FIELDS = ["* * *", "1 * *", "L * *", "LW * *", "31 * *", "29 2 *", "* * 1", "* * 0",
              "* * 7", "* * 5L", "* * 1#5", "* * MON#1", "1,15 * 5", "13 * 5", "*/2 * 3",
              "1-7 * */2", "* 2 1-5", "L 2 SUN", "15 6-8 SAT,SUN", "*/10 * 2#2", "LW 12 *",
              "1 1 0L", "?" if False else "28-31 * FRI"]


def test_day_masks_are_the_days_cronsim_fires_on() -> None:
    from cronsim import CronSim

    day0 = date(2026, 12, 1).toordinal()
    cal = backup_gaps.calendar_masks(day0)
    for fields in DAY_FIELDS:
        cs = CronSim(f"0 0 {fields}", datetime(2000, 1, 1))
        mask = backup_gaps.day_mask(cs, cal)
        for i in range(0, backup_gaps.DAYS, 7):  # a day of each week, shifted across them
            d = date.fromordinal(day0 + i + (i // 7) % 7)
            j = d.toordinal() - day0
            if j >= backup_gaps.DAYS:
                break
            want = d.month in cs.months and cs.match_day(d)
            assert bool(mask >> j & 1) == want, (fields, d)


def _starts(s: models.Schedule, start: float, end: float) -> list[tuple[float, str]]:
    offsets = backup_gaps.backup_offsets(s)
    out = []
    for t in cron.iter_fires(s.cron, s.timezone, start - 2 * 86400):
        if t > end:
            break
        out += [(t + o, s.id or "") for o, _ in offsets if start <= t + o <= end]
    return out


def test_the_check_agrees_with_the_fires_one_by_one() -> None:
    """Random pairs of schedules (time zones with daylight saving among them): every two
    backups less than 15 minutes apart found fire by fire over 14 months is refused, and a
    refusal's example is two real backup starts."""
    rng = random.Random(14)
    # Santiago and Havana change their clocks at midnight, Lord Howe by half an hour
    zones = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Kolkata",
             "America/Santiago", "America/Havana", "Australia/Lord_Howe"]
    now = _ts(2026, 12, 2, 7, 0)
    end = now + 425 * 86400
    refused = accepted = 0
    for _ in range(40):
        pair = []
        for sid in ("a", "b"):
            minute = rng.choice(["0", "5", "10", "30", "45", "0,30", "*/20"])
            hour = rng.choice(["1", "2", "3", "23", "*/6", "0-3", "2,14"])
            days = rng.choice(["* * *", "* * 1", "1 * *", "L * *", "* * 0", "15 3 *"])
            tasks = rng.choice([[{"action": "backup"}],
                                [{"action": "wait", "payload": "300"}, {"action": "backup"}],
                                [{"action": "backup", "delay": 3600}]])
            pair.append(_backup(f"{minute} {hour} {days}", rng.choice(zones), sid,
                                tasks=tasks))
        starts = sorted(_starts(pair[0], now, end) + _starts(pair[1], now, end))
        close = [(a, b) for a, b in itertools.pairwise(starts) if b[0] - a[0] < 900]
        try:
            check.check_backup_interval(pair, now)
        except ValueError as e:
            refused += 1
            text = str(e)
            if "tasks[" in text:
                continue
            times = re.findall(r"(\w) at (\S+?)[,)]", text)
            assert len(times) == 2, text
            for sid, at in times:  # a real start of that schedule
                ts = datetime.fromisoformat(at).timestamp()
                s = pair[0] if sid == "a" else pair[1]
                assert any(abs(x - ts) < 1 for x, _ in _starts(s, ts - 86400 * 170, ts + 1)), \
                    (text, pair)
        else:
            accepted += 1
            assert not close, (pair, close[:2])
    assert refused and accepted  # both kinds were tried


def test_a_put_with_16_schedules_checks_in_milliseconds() -> None:
    zones = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Sydney"]
    schedules = [_backup(f"{(i % 4) * 15} {(i // 4) * 6 + (i % 4) % 2} * * *",
                         zones[0], f"s{i}", tasks=[
                             {"action": "stop"}, {"action": "backup"},
                             {"action": "wait", "payload": "60"}, {"action": "start"}])
                 for i in range(16)]
    schedules += [_backup("0 12 * * 3", z, f"z{i}") for i, z in enumerate(zones[1:])]
    now = _ts(2026, 12, 2, 7, 0)
    check.check_backup_interval(schedules, now)  # once a day: the calendar and zone masks
    assert backup_gaps.measure(schedules, now) < 0.1
    # the most a server holds: 32 schedules of 20 backup tasks each, a week apart
    most = [_backup(f"{(i // 24) * 30} {i % 24} 1 1 *", "Europe/Berlin", f"y{i}", tasks=[
        {"action": "backup", "delay": 604800 if j else 0} for j in range(20)])
        for i in range(32)]
    check.check_backup_interval(most, now)
    assert backup_gaps.measure(most, now) < 0.1


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

    async def backup(self, wait: bool) -> None:
        self.log.append((trio.current_time(), "backup"))
        if wait:
            await trio.sleep(2)


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


async def test_a_task_waits_its_delay(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        sim = SimServer(nursery)
        ss = await _loop(nursery, sim)
        ss.set_schedules([_schedule("0 5 * * *", {"action": "command", "payload": "a"},
                                    {"action": "command", "payload": "b", "delay": 42.5},
                                    {"action": "stop", "delay": 7},
                                    {"action": "command", "payload": "c", "delay": 0})])
        await trio.sleep(700)
        # the delay counts from the end of the task before (the stop took its second)
        assert sim.log == [(600.0, "command a"), (642.5, "command b"), (649.5, "stop"),
                           (650.5, "command c")]
        (run,) = ss.history("s1")
        assert [t.started_at for t in run.tasks] == [
            "2024-06-01T05:00:00Z", "2024-06-01T05:00:42Z", "2024-06-01T05:00:49Z",
            "2024-06-01T05:00:50Z"]
        nursery.cancel_scope.cancel()


async def test_a_backup_too_soon_after_the_last_is_skipped_and_recorded(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        sim = SimServer(nursery)
        ss = await _loop(nursery, sim)
        backup = _schedule("0 5 * * *", {"action": "backup"}, {"action": "notify",
                                                                "payload": "after"})
        ss.set_schedules([backup])
        await trio.sleep(601)  # 05:00: backed up
        # the cron changed between two fires (each check alone passes): 05:10 is too soon
        ss.set_schedules([msgspec.structs.replace(backup, cron="10 5 * * *")])
        await trio.sleep(600)
        assert [e for _, e in sim.log if not e.startswith("note schedule")] == [
            "backup", "note after", "note after"]
        ok, skipped = reversed(ss.history("s1"))
        assert ok.tasks[0].skipped is None and ok.tasks[0].ok
        assert skipped.status == "ok" and skipped.tasks[0].ok  # the run went on
        assert skipped.tasks[0].skipped == ("the server's last scheduled backup started 600 s "
                                            "before; at most one every 15 minutes")
        assert (1200.0, "note schedule s1: backup skipped: " + skipped.tasks[0].skipped) \
            in sim.log
        # by hand, 15 minutes after the last that ran: it runs
        await trio.sleep(299)
        ss.fire(ss.schedules["s1"], "manual", None)
        await trio.sleep(5)
        assert [t for t, e in sim.log if e == "backup"] == [600.0, 1500.0]
        # a worker started again on these runs still knows the last backup
        again = ServerSchedules("srv", sim, lambda: EPOCH + trio.current_time())
        again.load_runs({"s1": ss.history("s1")}, {})
        assert again.spacing.take() is not None
        nursery.cancel_scope.cancel()


async def test_ended_runs_wait_for_the_host_in_order_and_in_batches(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    from manman.worker.schedules import service

    async with trio.open_nursery() as nursery:
        sim = SimServer(nursery)
        ss = await _loop(nursery, sim)
        ss.set_schedules([_schedule("* * * * *", {"action": "command", "payload": "tick"}),
                          _schedule("*/2 * * * *", {"action": "wait", "payload": "30"}, id="w")])
        await trio.sleep(60 * 6 + 1)
        outbox = service.WorkerSchedules(None)  # type: ignore[arg-type]  # the outbox only
        outbox.servers["srv"] = ss
        # ended runs only (one of `w` still goes), in the order they ended, at most `limit`
        ended = [(r.run.schedule_id, r.run.id) for r in outbox.unreported(100)]
        assert len(ended) == 6 + 2 and all(
            r.status != "running" for r in ss.unreported.values())
        batch = outbox.unreported(4)
        assert [(r.run.schedule_id, r.run.id) for r in batch] == ended[:4]
        outbox.taken(batch)
        assert [(r.run.schedule_id, r.run.id) for r in outbox.unreported(100)] == ended[4:]
        # saved with the runs: a worker started again sends only what the host had not taken
        path = tmp_path / service.RUNS_FILE
        path.write_bytes(service.runs_file(ss))  # as _save_runs writes it (in a thread)
        runs, unreported = service._load_runs(path)
        again = ServerSchedules("srv", sim, lambda: EPOCH + trio.current_time())
        again.load_runs(runs, unreported)
        # (and the run that was going ended with the worker: the host is told)
        assert sorted(again.unreported) == sorted([*ended[4:], ("w", 3)])
        assert again.unreported[("w", 3)].reason == "the worker stopped during the run"
        # a file from before the host kept runs: all of them are sent once
        path.write_bytes(msgspec.json.encode({sid: ss.history(sid) for sid in ss.runs}))
        runs, unreported = service._load_runs(path)
        assert unreported is None
        old = ServerSchedules("srv", sim, lambda: EPOCH + trio.current_time())
        old.load_runs(runs, unreported)
        assert len(old.unreported) == 6 + 3
        # a schedule removed: its runs are not sent (the host drops them too)
        ss.set_schedules([ss.schedules["w"]])
        assert {k[0] for k in ss.unreported} == {"w"}
        nursery.cancel_scope.cancel()


def test_iso_is_utc() -> None:
    assert cron.iso(datetime(2024, 1, 1, tzinfo=UTC).timestamp()) == "2024-01-01T00:00:00Z"
