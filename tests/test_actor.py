"""The actor as the trio shell of its machine: a fake runner (a game that lives in trio, no
process) under a MockClock that jumps, so backoffs and stop timeouts run in virtual time."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from manman.errors import Busy
from manman.models import ServerSpec
from manman.worker.actor import ActorHooks, ServerActor
from manman.worker.console.broker import LogBroker
from manman.worker.installers.base import InstallContext, NoInstall
from manman.worker.runners.base import LaunchContext, RunRecord


@dataclass(eq=False)
class FakeGame:
    """A GameProcess in trio: `quit` on stdin ends it with 0, `crash N` with N, SIGTERM with
    -SIGTERM unless it ignores it, kill with -SIGKILL."""

    pid: int | None
    instance: str
    ignore_stop: bool = False
    ignore_term: bool = False
    stdin: list[str] = field(default_factory=list)
    code: int | None = None
    done: trio.Event = field(default_factory=trio.Event)
    abandoned: bool = False
    stdout: trio.abc.ReceiveStream = field(init=False)
    stderr: trio.abc.ReceiveStream | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._out, self.stdout = trio.testing.memory_stream_one_way_pair()

    async def say(self, *lines: str) -> None:
        await self._out.send_all("".join(f"{line}\n" for line in lines).encode())

    def exit(self, code: int) -> None:
        if self.code is None:
            self.code = code
            self._out.close()
            self.done.set()

    async def write_line(self, line: str) -> None:
        if self.code is not None:
            raise trio.BrokenResourceError
        self.stdin.append(line)
        if line == "quit" and not self.ignore_stop:
            self.exit(0)
        elif line.startswith("crash "):
            self.exit(int(line.split()[1]))

    async def terminate(self, timeout: float, sig: str = "SIGTERM") -> None:
        if not self.ignore_term:
            self.exit(-signal.SIGTERM)

    async def kill(self) -> None:
        self.exit(-signal.SIGKILL)

    async def wait(self) -> int:
        await self.done.wait()
        assert self.code is not None
        return self.code

    async def exit_reason(self) -> str | None:
        return None

    async def cleanup(self) -> None:
        return None

    def abandon(self) -> None:
        self.abandoned = True


class FakeRunner:
    """Spawns FakeGames; `life` runs in the test's nursery as each game's own behaviour."""

    name = "fake"

    def __init__(self, nursery: trio.Nursery,
                 life: Callable[[FakeGame], Any] | None = None, **game: Any) -> None:
        self.nursery = nursery
        self.life = life
        self.game = game
        self.games: list[FakeGame] = []
        self.spawn_times: list[float] = []
        self.leftover: FakeGame | None = None
        self.removed: list[int] = []
        self.adopting: trio.Event | None = None  # set: adopt waits for it (a slow recovery)
        self.adopt_called = trio.Event()

    async def spawn(self, ctx: LaunchContext) -> FakeGame:
        game = FakeGame(1000 + len(self.games), ctx.instance, **self.game)
        self.games.append(game)
        self.spawn_times.append(trio.current_time())
        if self.life is not None:
            self.nursery.start_soon(self.life, game)
        return game

    async def adopt(self, record: RunRecord, spec: ServerSpec, since: float | None = None
                    ) -> FakeGame | None:
        self.adopt_called.set()
        if self.adopting is not None:
            await self.adopting.wait()
        return self.leftover

    async def remove_leftover(self, record: RunRecord) -> list[int]:
        return self.removed


class Watch:
    """The actor's hooks: every change wakes whoever waits for a condition on the actor."""

    def __init__(self) -> None:
        self._changed = trio.Event()
        self.states: list[str] = []
        self.calls = 0

    def changed(self, actor: ServerActor) -> None:
        self.calls += 1
        if not self.states or self.states[-1] != actor.status.state:
            self.states.append(actor.status.state)
        self._changed.set()
        self._changed = trio.Event()

    async def persist_now(self, actor: ServerActor) -> None:
        return None

    async def until(self, condition: Callable[[], bool]) -> None:
        with trio.fail_after(10_000):  # virtual seconds
            while not condition():
                await self._changed.wait()


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


def make_spec(**fields: Any) -> ServerSpec:
    return msgspec.convert({"name": "fake", "game_id": "exec:/bin/game", **fields}, ServerSpec)


async def serve(nursery: trio.Nursery, tmp_path: Path, spec: ServerSpec, runner: FakeRunner,
                installer: Any = None, leftover: RunRecord | None = None
                ) -> tuple[ServerActor, Watch]:
    watch = Watch()
    actor = ServerActor("s1", spec, generation=1, server_dir=tmp_path, runner=runner,
                        installer=installer or NoInstall(), broker=LogBroker(tmp_path / "logs"),
                        hooks=ActorHooks(changed=watch.changed, persist_now=watch.persist_now),
                        wall_clock=trio.current_time)
    actor.leftover = leftover
    await nursery.start(actor.serve)
    return actor, watch


async def serve_running(nursery: trio.Nursery, tmp_path: Path, spec: ServerSpec,
                        runner: FakeRunner) -> tuple[ServerActor, Watch]:
    actor, watch = await serve(nursery, tmp_path, spec, runner)
    await watch.until(lambda: actor.status.state == "running")
    return actor, watch


async def notes(actor: ServerActor) -> list[str]:
    return [ln.text for ln in await actor.broker.history(0, 1000) if ln.stream == "manman"]


async def crash_at_once(game: FakeGame) -> None:
    game.exit(3)


async def test_crashes_restart_after_a_doubling_capped_backoff_then_fail(
        tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeRunner(nursery, crash_at_once)
    spec = make_spec(desired_state="running", restart={
        "max_restarts": 4, "backoff_initial": 1, "backoff_max": 4, "reset_after": 600})
    began = trio.current_time()
    actor, watch = await serve(nursery, tmp_path, spec, runner)
    await watch.until(lambda: actor.status.state == "failed")
    assert [t - began for t in runner.spawn_times] == [0, 1, 3, 7, 11]  # waits 1, 2, 4, 4
    assert actor.status.restarts == 4 and actor.status.exit_code == 3
    assert actor.status.error is not None
    assert actor.status.error.startswith("crash loop: 5 crashes within 600s (max_restarts 4)")
    assert watch.states == ["starting", "running", "crashed"] * 4 + ["starting", "running",
                                                                     "failed"]
    assert "crashed (exited with code 3); restarting in 4s" in await notes(actor)
    await trio.sleep(1000)  # virtual: every timer due has fired; nothing restarts a failure
    assert len(runner.games) == 5 and actor.status.state == "failed"


async def test_crashes_further_apart_than_reset_after_never_loop(
        tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    async def crash_later(game: FakeGame) -> None:
        await trio.sleep(100)
        game.exit(1)

    runner = FakeRunner(nursery, crash_later)
    spec = make_spec(desired_state="running", restart={
        "max_restarts": 1, "backoff_initial": 5, "reset_after": 50})
    actor, watch = await serve(nursery, tmp_path, spec, runner)
    await watch.until(lambda: len(runner.games) == 6)
    assert actor.status.restarts == 5 and actor.crash_times[-1] - actor.crash_times[0] == 0
    gaps = [b - a for a, b in zip(runner.spawn_times, runner.spawn_times[1:], strict=False)]
    assert gaps == [105] * 5  # always the first backoff: earlier crashes are forgotten


async def test_a_stop_during_the_backoff_cancels_the_restart(
        tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeRunner(nursery, crash_at_once)
    spec = make_spec(desired_state="running", restart={"backoff_initial": 30})
    actor, watch = await serve(nursery, tmp_path, spec, runner)
    await watch.until(lambda: actor.status.state == "crashed")
    actor.stop()
    assert actor.status.state == "stopped" and actor.desired_state == "stopped"
    await trio.sleep(1000)  # virtual: the 30 s backoff would have fired long ago
    assert len(runner.games) == 1 and actor.status.state == "stopped"
    assert "restart cancelled: stopped" in await notes(actor)


async def test_a_stop_that_is_ignored_kills_after_stop_timeout(
        tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeRunner(nursery, ignore_stop=True)
    spec = make_spec(desired_state="running", stop_command="quit", stop_timeout=30)
    actor, watch = await serve_running(nursery, tmp_path, spec, runner)
    game = runner.games[0]
    actor.stop()
    began = trio.current_time()
    await watch.until(lambda: actor.status.state == "stopped")
    assert trio.current_time() - began == 30
    assert game.stdin == ["quit"] and game.code == -signal.SIGKILL
    assert actor.status.exit_code == -signal.SIGKILL and actor.run is None
    assert "did not stop within 30s: killing" in await notes(actor)


async def test_without_a_stop_command_it_is_terminated(
        tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeRunner(nursery)
    spec = make_spec(desired_state="running")
    actor, watch = await serve_running(nursery, tmp_path, spec, runner)
    actor.stop()
    await watch.until(lambda: actor.status.state == "stopped")
    assert runner.games[0].code == -signal.SIGTERM and runner.games[0].stdin == []


async def test_ready_line_makes_it_running(
        tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    async def slow_start(game: FakeGame) -> None:
        await game.say("loading")
        await trio.sleep(20)
        await game.say("Server ready", "Server ready")

    runner = FakeRunner(nursery, slow_start)
    spec = make_spec(desired_state="running", ready_pattern="^Server ready$")
    began = trio.current_time()
    actor, watch = await serve(nursery, tmp_path, spec, runner)
    await watch.until(lambda: actor.status.pid is not None)
    assert actor.status.state == "starting" and not actor.status.ready
    await watch.until(lambda: actor.status.state == "running")
    assert trio.current_time() - began == 20 and actor.status.ready
    assert actor.status.pid == runner.games[0].pid


async def test_a_restart_during_which_a_stop_comes_ends_stopped(
        tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeRunner(nursery, ignore_stop=True)
    spec = make_spec(desired_state="running", stop_command="quit", stop_timeout=5)
    actor, watch = await serve_running(nursery, tmp_path, spec, runner)
    actor.restart()
    actor.update_spec(make_spec(desired_state="stopped", stop_command="quit", stop_timeout=5),
                      2, restart_on_change=False)
    await watch.until(lambda: actor.status.state == "stopped")
    await trio.sleep(100)  # virtual: whatever was scheduled has run
    assert len(runner.games) == 1 and actor.status.state == "stopped"
    assert actor.generation == 2


async def test_a_restart_runs_a_new_game(
        tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeRunner(nursery)
    spec = make_spec(desired_state="running")
    actor, watch = await serve_running(nursery, tmp_path, spec, runner)
    first = actor.status.pid
    actor.restart()
    await watch.until(lambda: actor.status.state == "running" and actor.status.pid != first)
    assert len(runner.games) == 2 and runner.games[0].code == -signal.SIGTERM


async def test_a_kill_during_an_install_cancels_it(
        tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    class Hanging:
        needed = True
        cancelled = False

        async def install(self, ctx: InstallContext) -> None:
            ctx.progress(10.0)
            try:
                await trio.sleep_forever()
            finally:
                self.cancelled = True

    installer = Hanging()
    runner = FakeRunner(nursery)
    actor, watch = await serve(nursery, tmp_path, make_spec(desired_state="running"), runner,
                               installer)
    await watch.until(lambda: actor.status.install_progress == 10.0)
    actor.kill()
    await watch.until(lambda: actor.status.state == "failed")
    assert installer.cancelled and actor.status.error == "install cancelled"
    assert runner.games == [] and not actor.installed


async def test_an_install_then_a_start(
        tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    class Quick:
        needed = True

        async def install(self, ctx: InstallContext) -> None:
            await trio.sleep(3)
            ctx.publish(["fetched"])

    runner = FakeRunner(nursery)
    actor, watch = await serve(nursery, tmp_path, make_spec(desired_state="running"), runner,
                               Quick())
    assert actor.status.state == "installing"
    await watch.until(lambda: actor.status.state == "running")
    # (`stopped` between is within one step: nobody sees it)
    assert actor.installed and watch.states == ["installing", "starting", "running"]


async def test_a_leftover_is_adopted_and_stopped_when_not_wanted(
        tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeRunner(nursery)
    runner.leftover = FakeGame(77, "old-token")
    actor, watch = await serve(nursery, tmp_path, make_spec(stop_command="quit"), runner,
                               leftover=RunRecord("s1", 77, None, "old-token"))
    assert actor.status.state == "stopping"
    await watch.until(lambda: actor.status.state == "stopped")
    assert runner.leftover.stdin == ["quit"] and runner.games == []
    assert "re-attached (pid 77)" in await notes(actor)


async def test_a_leftover_that_is_wanted_keeps_running(
        tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeRunner(nursery)
    runner.leftover = FakeGame(77, "old-token")
    actor, _ = await serve(nursery, tmp_path, make_spec(desired_state="running"), runner,
                           leftover=RunRecord("s1", 77, None, "old-token"))
    assert actor.status.state == "running" and actor.status.pid == 77
    assert actor.record().instance == "old-token"


async def test_a_worker_restart_stops_the_game_and_keeps_it_wanted(
        tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeRunner(nursery)
    actor, _ = await serve_running(nursery, tmp_path, make_spec(desired_state="running",
                                                        stop_command="quit"), runner)
    await actor.shutdown(keep_desired=True)
    assert runner.games[0].code == 0 and actor.status.state == "stopped"
    assert actor.desired_state == "running" and len(runner.games) == 1


async def test_console_lines_reach_the_game_and_a_full_queue_is_busy(
        tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeRunner(nursery)
    actor, _ = await serve_running(nursery, tmp_path, make_spec(desired_state="running"), runner)
    accepted = []
    with pytest.raises(Busy):  # no checkpoint in between: the writer cannot drain the queue
        for i in range(100):
            actor.send_console(f"say {i}")
            accepted.append(f"say {i}")
    assert len(accepted) in (64, 65)  # the queue, and maybe one the waiting writer took
    await trio.testing.wait_all_tasks_blocked()
    assert runner.games[0].stdin == accepted


async def test_a_command_during_recovery_is_busy_and_never_spawns_beside_the_leftover(
        tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeRunner(nursery)
    runner.leftover = FakeGame(77, "old-token")
    runner.adopting = trio.Event()
    watch = Watch()
    actor = ServerActor("s1", make_spec(desired_state="running"), generation=1,
                        server_dir=tmp_path, runner=runner, installer=NoInstall(),
                        broker=LogBroker(tmp_path / "logs"),
                        hooks=ActorHooks(changed=watch.changed, persist_now=watch.persist_now),
                        wall_clock=trio.current_time)
    actor.leftover = RunRecord("s1", 77, None, "old-token")
    nursery.start_soon(actor.serve)
    await runner.adopt_called.wait()
    for command in (actor.start, actor.restart, actor.stop, actor.kill):
        with pytest.raises(Busy):
            command()
    with pytest.raises(Busy):
        actor.update_spec(make_spec(desired_state="running", args=["-x"]), 2, True)
    runner.adopting.set()
    await actor.started.wait()
    await watch.until(lambda: actor.status.state == "running")
    assert runner.games == [] and actor.status.pid == 77 and actor.generation == 1
    actor.restart()  # after recovery, commands act again
    await watch.until(lambda: len(runner.games) == 1)


async def test_one_batch_of_effects_is_one_state_message_and_one_report(
        tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    from manman.worker import machine
    actor, watch = await serve(nursery, tmp_path, make_spec(), FakeRunner(nursery))
    calls, version = watch.calls, actor.broker.state_version
    actor._apply([machine.Changed(), machine.Note("one"), machine.Changed(), machine.Persist()])
    assert (watch.calls, actor.broker.state_version) == (calls + 1, version + 1)
    actor._apply([machine.Persist(), machine.Persist()])
    assert (watch.calls, actor.broker.state_version) == (calls + 2, version + 1)
    actor._apply([machine.Note("no change")])
    assert (watch.calls, actor.broker.state_version) == (calls + 2, version + 1)


async def test_a_re_attached_game_keeps_its_player_count_unknown(
        tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    """After a worker restart nobody knows who is on: a join then a leave must not read as
    an empty server (when_empty would update with every earlier player still on)."""
    runner = FakeRunner(nursery)
    runner.leftover = FakeGame(77, "old-token")
    patterns = {"join": [r"^(?P<player>\w+) joined$"], "leave": [r"^(?P<player>\w+) left$"]}
    spec = make_spec(desired_state="running", player_patterns=patterns)
    actor, _ = await serve(nursery, tmp_path, spec, runner,
                           leftover=RunRecord("s1", 77, None, "old-token"))
    assert actor.status.state == "running" and actor.status.query is None
    await runner.leftover.say("Fred joined", "Fred left")
    await trio.testing.wait_all_tasks_blocked()
    assert actor.status.query is None
    # a fresh start counts from 0 again
    actor.restart()
    await trio.testing.wait_all_tasks_blocked()
    game = runner.games[-1]
    await game.say("Fred joined")
    await trio.testing.wait_all_tasks_blocked()
    assert actor.status.query is not None and actor.status.query.players == 1
