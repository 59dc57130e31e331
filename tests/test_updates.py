"""UpdateMachine: every auto_update path and race as plain calls (time is an argument)."""

from __future__ import annotations

from typing import Any

from manman.models import AutoUpdateSpec
from manman.worker.machine import Note
from manman.worker.updates import (
    Announce,
    Effect,
    RunCheck,
    RunUpdate,
    ScheduleCheck,
    ShowBuilds,
    UpdateMachine,
    WaitGrace,
)


def setup(mode: str = "when_empty", running: bool = True, players: int | None = 3,
          **policy: Any) -> UpdateMachine:
    m = UpdateMachine()
    assert m.configure(AutoUpdateSpec(mode=mode, **policy), 0.0) == \
        ([] if mode == "off" else [ScheduleCheck(0.0)])
    m.running_changed(running, 0.0)
    m.players_counted(players, 0.0)
    return m


def of(effects: list[Effect], cls: type) -> list[Any]:
    return [e for e in effects if isinstance(e, cls)]


def notes(effects: list[Effect]) -> list[str]:
    return [e.text for e in of(effects, Note)]


def check(m: UpdateMachine, now: float, installed: int | None, latest: int) -> list[Effect]:
    [run] = m.check_due(now)
    assert isinstance(run, RunCheck) and m.phase == "checking"
    return m.checked(run.token, installed, latest, now)


def test_off_checks_nothing_and_updates_nothing() -> None:
    m = setup("off")
    assert m.check_due(0.0) == [] and m.next_check is None
    # the game's plea is shown, not acted on
    fx = m.restart_needed(5.0)
    assert of(fx, ShowBuilds) == [ShowBuilds(None, None, True)]
    assert notes(fx) == ["the game asks for an update"] and not of(fx, RunUpdate)
    assert m.restart_needed(6.0) == []


def test_notify_shows_the_builds_and_never_updates() -> None:
    m = setup("notify")
    fx = check(m, 0.0, 100, 100)
    assert fx == [ScheduleCheck(600.0), ShowBuilds(100, 100, False)]
    fx = check(m, 600.0, 100, 101)
    assert fx == [ScheduleCheck(1200.0), Note("update available: build 101 (installed: 100)"),
                  ShowBuilds(100, 101, True)]
    assert check(m, 1200.0, 100, 101) == [ScheduleCheck(1800.0)]  # nothing new to say
    assert m.phase == "idle" and m.update_available
    assert m.players_counted(0, 1300.0) == []


def test_a_rollback_is_an_update_and_no_manifest_is_none() -> None:
    m = setup("notify")
    assert ShowBuilds(100, 99, True) in check(m, 0.0, 100, 99)
    m = setup("notify")
    assert ShowBuilds(None, 99, False) in check(m, 0.0, None, 99)


def test_when_empty_waits_for_zero_players() -> None:
    m = setup("when_empty", players=3)
    fx = check(m, 0.0, 100, 101)
    assert notes(fx)[-1] == "update waits for the server to empty (players: 3)"
    assert not of(fx, RunUpdate) and m.phase == "waiting_empty"
    assert m.players_counted(1, 10.0) == []
    assert m.players_counted(None, 11.0) == []  # a failed query is not an empty server
    fx = m.players_counted(0, 20.0)
    assert of(fx, RunUpdate) == [RunUpdate()] and m.phase == "updating"
    assert m.players_counted(0, 21.0) == []  # once
    fx = m.update_finished(True, 101, 60.0)
    assert fx == [Note("updated to build 101"), ShowBuilds(101, 101, False)]
    assert m.phase == "idle" and not m.update_available


def test_when_empty_with_an_unknown_count_waits() -> None:
    m = setup("when_empty", players=None)
    fx = check(m, 0.0, 100, 101)
    assert "players: unknown" in notes(fx)[-1] and m.phase == "waiting_empty"


def test_a_stopped_server_or_an_empty_one_is_updated_at_once() -> None:
    for mode in ("when_empty", "immediate"):
        m = setup(mode, running=False, announce_command="say bye")
        fx = check(m, 0.0, 100, 101)
        assert of(fx, RunUpdate) and not of(fx, Announce) and not of(fx, WaitGrace)
        m = setup(mode, players=0, announce_command="say bye")
        fx = check(m, 0.0, 100, 101)
        assert of(fx, RunUpdate) and not of(fx, Announce)


def test_when_empty_and_the_server_stops_meanwhile() -> None:
    m = setup("when_empty", players=2)
    check(m, 0.0, 100, 101)
    assert of(m.running_changed(False, 5.0), RunUpdate)


def test_immediate_announces_then_waits_the_grace() -> None:
    m = setup("immediate", players=4, announce_command="say Update in 30s", grace=30)
    fx = check(m, 0.0, 100, 101)
    [wait] = of(fx, WaitGrace)
    assert fx[-3:] == [Announce("say Update in 30s"), Note("update in 30s"), wait]
    assert wait.seconds == 30 and m.phase == "grace"
    assert m.players_counted(2, 10.0) == []
    assert m.grace_elapsed(wait.token - 1, 15.0) == []  # an older sleep
    fx = m.grace_elapsed(wait.token, 30.0)
    assert of(fx, RunUpdate) and m.phase == "updating"
    assert m.grace_elapsed(wait.token, 31.0) == []


def test_immediate_without_announce_or_grace() -> None:
    m = setup("immediate", grace=10)
    fx = check(m, 0.0, 100, 101)
    assert not of(fx, Announce) and of(fx, WaitGrace)
    m = setup("immediate", grace=0, announce_command="say now")
    fx = check(m, 0.0, 100, 101)
    assert of(fx, Announce) == [Announce("say now")] and of(fx, RunUpdate)
    assert fx.index(Announce("say now")) < fx.index(RunUpdate())


def test_the_grace_ends_early_when_no_one_is_left_and_its_sleep_is_then_ignored() -> None:
    m = setup("immediate", grace=30)
    [wait] = of(check(m, 0.0, 100, 101), WaitGrace)
    assert of(m.players_counted(0, 5.0), RunUpdate)
    assert m.grace_elapsed(wait.token, 30.0) == []
    m = setup("immediate", grace=30)
    [wait] = of(check(m, 0.0, 100, 101), WaitGrace)
    assert of(m.running_changed(False, 5.0), RunUpdate)  # stopped by the operator
    assert m.grace_elapsed(wait.token, 30.0) == []


def test_the_games_plea_starts_the_same_flow_once() -> None:
    m = setup("when_empty", players=2)
    check(m, 0.0, 100, 100)
    fx = m.restart_needed(10.0)
    assert notes(fx)[0] == "the game asks for an update"
    assert ShowBuilds(100, 100, True) in fx and m.phase == "waiting_empty"
    assert m.restart_needed(11.0) == []  # the game repeats itself
    assert of(m.players_counted(0, 12.0), RunUpdate)
    assert m.restart_needed(13.0) == []  # during the update
    m.update_finished(True, 101, 40.0)
    assert m.restart_needed(50.0) == []  # just updated: Steam may lag; no restart loop
    assert m.restart_needed(40.0 + 600.0) != []  # an interval later it counts again


def test_a_plea_during_a_check_is_acted_on_after_it_whatever_it_says() -> None:
    m = setup("immediate", grace=5)
    [run] = m.check_due(0.0)
    assert m.restart_needed(1.0) == [Note("the game asks for an update")]
    assert m.restart_needed(1.5) == []  # said once
    fx = m.checked(run.token, 100, 100, 2.0)  # steamcmd does not know yet
    assert ShowBuilds(100, 100, True) in fx and of(fx, WaitGrace)
    m = setup("immediate", grace=5)
    [run] = m.check_due(0.0)
    m.restart_needed(1.0)
    fx = m.check_failed(run.token, "ERROR! Timed out waiting for AppInfo update.", 2.0)
    assert of(fx, WaitGrace) and ScheduleCheck(602.0) in fx


def test_a_failed_update_is_tried_again_after_the_next_check() -> None:
    m = setup("when_empty", running=False)
    assert of(check(m, 0.0, 100, 101), RunUpdate)
    fx = m.update_finished(False, None, 30.0, error="Error! App '1' state is 0x202 after "
                           "update job.")
    assert notes(fx) == ["update failed: Error! App '1' state is 0x202 after update job.; "
                         "trying again after the next check"]
    assert m.update_available and m.phase == "idle"
    assert m.check_due(300.0) == []  # not before the interval
    assert of(check(m, 600.0, 100, 101), RunUpdate)


def test_an_update_that_lands_short_of_latest_stays_available() -> None:
    m = setup("when_empty", running=False)
    check(m, 0.0, 100, 102)
    fx = m.update_finished(True, 101, 30.0)
    assert ShowBuilds(101, 102, True) in fx and m.phase == "idle"


def test_checks_wait_while_an_update_is_pending_or_running() -> None:
    m = setup("when_empty", players=5)
    check(m, 0.0, 100, 101)
    assert m.check_due(600.0) == [ScheduleCheck(1200.0)] and m.phase == "waiting_empty"
    m.players_counted(0, 700.0)
    assert m.check_due(1200.0) == [ScheduleCheck(1800.0)] and m.phase == "updating"


def test_a_timer_that_outlived_its_schedule_does_nothing() -> None:
    m = setup("notify")
    check(m, 0.0, 1, 1)
    assert m.check_due(599.0) == []
    assert len(m.check_due(600.0)) == 1
    assert m.check_due(600.0) == []  # a check is running: none is scheduled


def test_check_failures_are_noted_once_until_they_change() -> None:
    m = setup("notify")
    for t, error, said in [(0.0, "Login Failure: No Connection", True),
                           (600.0, "Login Failure: No Connection", False),
                           (1200.0, "steamcmd timed out after 120s", True)]:
        [run] = m.check_due(t)
        fx = m.check_failed(run.token, error, t)
        assert ScheduleCheck(t + 600.0) in fx
        assert notes(fx) == ([f"update check failed: {error}"] if said else [])
    check(m, 1800.0, 1, 1)
    [run] = m.check_due(2400.0)
    assert notes(m.check_failed(run.token, "steamcmd timed out after 120s", 2400.0))


def test_an_answer_after_auto_update_went_off_is_ignored() -> None:
    m = setup("immediate")
    [run] = m.check_due(0.0)
    assert m.configure(AutoUpdateSpec(mode="off"), 1.0) == []  # no check was scheduled
    assert m.checked(run.token, 100, 101, 2.0) == []
    assert m.check_failed(run.token, "x", 2.0) == []
    assert m.phase == "idle" and m.check_due(600.0) == []
    # back on: checks start at once
    assert m.configure(AutoUpdateSpec(mode="notify"), 700.0) == [ScheduleCheck(700.0)]
    [run2] = m.check_due(700.0)
    assert run2.token != run.token


def test_turning_off_cancels_the_schedule_and_a_pending_update() -> None:
    m = setup("immediate", grace=30)
    [wait] = of(check(m, 0.0, 100, 101), WaitGrace)
    fx = m.configure(AutoUpdateSpec(mode="off"), 5.0)
    assert fx == [Note("update cancelled: auto_update is now off"), ScheduleCheck(None)]
    assert m.grace_elapsed(wait.token, 30.0) == [] and m.phase == "idle"


def test_a_new_mode_restarts_a_pending_update_its_way() -> None:
    m = setup("when_empty", players=2)
    check(m, 0.0, 100, 101)
    fx = m.configure(AutoUpdateSpec(mode="immediate", announce_command="say bye",
                                      grace=15), 5.0)
    assert of(fx, Announce) == [Announce("say bye")] and m.phase == "grace"
    fx = m.configure(AutoUpdateSpec(mode="notify"), 6.0)
    assert notes(fx) == ["update cancelled: auto_update is now notify"] and m.phase == "idle"


def test_a_shorter_interval_brings_the_next_check_forward() -> None:
    m = setup("notify")
    check(m, 0.0, 1, 1)
    assert m.configure(AutoUpdateSpec(mode="notify", check_interval=60), 10.0) == \
        [ScheduleCheck(70.0)]
    assert m.configure(AutoUpdateSpec(mode="notify", check_interval=900), 20.0) == []


def test_an_operator_update_satisfies_a_pending_one() -> None:
    m = setup("immediate", grace=30)
    [wait] = of(check(m, 0.0, 100, 101), WaitGrace)
    fx = m.update_finished(True, 101, 10.0)  # `POST /server/{id}/install` meanwhile
    assert ShowBuilds(101, 101, False) in fx and m.phase == "idle"
    assert m.grace_elapsed(wait.token, 30.0) == []


def test_an_update_during_a_check_makes_its_answer_stale() -> None:
    m = setup("when_empty", running=False)
    check(m, 0.0, 100, 100)
    [run] = m.check_due(600.0)  # it read the manifest: 100
    fx = m.update_finished(True, 101, 601.0)  # the operator updated meanwhile
    assert ScheduleCheck(601.0) in fx and m.phase == "idle"
    assert m.checked(run.token, 100, 101, 602.0) == []  # would have updated again
    [run2] = m.check_due(601.0)
    assert not of(m.checked(run2.token, 101, 101, 603.0), RunUpdate)


def test_an_operators_install_shows_its_build_and_a_failed_one_says_nothing() -> None:
    m = setup("off")
    assert m.update_finished(True, 100, 5.0) == [Note("installed build 100"),
                                                 ShowBuilds(100, None, False)]
    assert m.update_finished(False, 100, 6.0, error="ERROR! x") == []  # the server tells
