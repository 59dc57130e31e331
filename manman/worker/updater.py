"""Updater: the trio shell around one steamcmd server's `updates.UpdateMachine`.

The actor owns one per steamcmd server and tells it what happens (the server's state, an
install's end, console lines, a new spec); the updater feeds that to the machine, with
`trio.current_time()` as its clock, and carries out the effects: a timer for the next check,
the check itself (manifest + steamcmd), the announce line on the game's stdin, the grace
sleep, the update (the actor's stop → `app_update … validate` → start), the builds in the
status, console notes. What to do stays in the machine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec
import trio

from manman.errors import ManmanError
from manman.models import AutoUpdateSpec, ServerSpec
from manman.worker import machine, updates
from manman.worker.installers.steam_builds import SteamBuilds, VdfError
from manman.worker.installers.steamcmd import SteamcmdError

if TYPE_CHECKING:
    from manman.worker.actor import ServerActor

PLAYER_POLL = 1.0  # how often a `when_empty` update looks at the query's player count


class Updater:
    def __init__(self, actor: ServerActor, builds: SteamBuilds, min_interval: float) -> None:
        self.actor = actor
        self.builds = builds
        self.min_interval = min_interval  # the worker's floor under check_interval
        self.machine = updates.UpdateMachine()
        self.patterns: tuple[re.Pattern[str], ...] = ()  # restart_needed_patterns, compiled
        self._pattern_src: list[str] | None = None
        self._asked: AutoUpdateSpec | None = None
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._grace_scope: trio.CancelScope | None = None  # the one grace sleeping, if any

    # -- what the actor tells it ---------------------------------------------------------------

    async def serve(self) -> None:
        """Run in the actor's nursery, once it recovered: the timer of checks and of the
        player count a `when_empty` update waits on."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.spec_changed(self.actor.spec)
            self.state_seen()
            while True:
                at = self.machine.next_check
                deadline = math.inf if at is None else at
                if self.machine.phase == "waiting_empty":
                    deadline = min(deadline, trio.current_time() + PLAYER_POLL)
                with trio.move_on_at(deadline):
                    await self._wake.wait()
                self._wake = trio.Event()
                self._feed_players()
                if at is not None and trio.current_time() >= at:
                    self._do(self.machine.check_due(trio.current_time()))

    def spec_changed(self, spec: ServerSpec) -> None:
        """A new spec (PUT): auto_update and restart_needed_patterns apply at once."""
        if spec.restart_needed_patterns != self._pattern_src:
            self._pattern_src = list(spec.restart_needed_patterns)
            # compiled once per spec (validated on the way in); none: no per-line cost
            self.patterns = tuple(re.compile(p) for p in spec.restart_needed_patterns)
        asked = spec.auto_update
        policy = asked
        if asked.mode != "off" and asked.check_interval < self.min_interval:
            policy = msgspec.structs.replace(asked, check_interval=self.min_interval)
            if asked != self._asked:
                self.actor.broker.note(f"auto_update: checking every {self.min_interval:g}s, "
                                       "this worker's update_check_min_interval")
        self._asked = asked
        if policy != self.machine.policy:
            self._do(self.machine.configure(policy, trio.current_time()))

    def state_seen(self) -> None:
        """The server's status changed: whether the game runs, how many play."""
        running = self.actor.status.state in machine.LIVE
        self._do(self.machine.running_changed(running, trio.current_time()))
        self._feed_players()

    def lines(self, lines: list[str]) -> None:
        """Game output (only called when there are restart_needed_patterns)."""
        patterns = self.patterns
        for text in lines:
            for p in patterns:
                if p.search(text):
                    self._feed_players()  # the count as of now decides when_empty
                    self._do(self.machine.restart_needed(trio.current_time()))
                    return

    async def install_ended(self, error: str | None) -> None:
        """Any install of the server ended (an update's or the operator's): the build on
        disk is shown whatever the mode."""
        installed = await self._installed()
        self._do(self.machine.update_finished(error is None, installed, trio.current_time(),
                                              error))

    def update_called_off(self, reason: str) -> None:
        self._do(self.machine.update_finished(False, self.machine.installed,
                                              trio.current_time(), reason))

    # -- effects -------------------------------------------------------------------------------

    def _do(self, effects: list[updates.Effect]) -> None:
        for effect in effects:
            match effect:
                case updates.ScheduleCheck():
                    self._wake.set()  # the timer looks at machine.next_check again
                case updates.RunCheck(token):
                    self._spawn(self._check, token)
                case updates.Announce(line):
                    try:
                        self.actor.send_console(line)
                    except ManmanError as e:
                        self.actor.broker.note(f"announce not sent: {e.message}")
                case updates.WaitGrace(token, seconds):
                    self._end_grace()  # a grace the machine gave up sleeps no longer
                    self._grace_scope = trio.CancelScope()
                    self._spawn(self._grace, self._grace_scope, token, seconds)
                case updates.RunUpdate():
                    try:
                        self.actor.run_update()
                    except ManmanError as e:  # installing, stopping: tried after a check
                        self._do(self.machine.update_finished(
                            False, self.machine.installed, trio.current_time(), e.message))
                case updates.ShowBuilds(installed, latest, available):
                    st = self.actor.status
                    st.installed_build = None if installed is None else str(installed)
                    st.latest_build = None if latest is None else str(latest)
                    st.update_available = available
                    self.actor.status_changed()
                case machine.Note(text):
                    self.actor.broker.note(text)
        if self.machine.phase == "waiting_empty":
            self._wake.set()  # poll the player count
        if self.machine.phase != "grace":
            self._end_grace()

    def _end_grace(self) -> None:
        if self._grace_scope is not None:
            self._grace_scope.cancel()
            self._grace_scope = None

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        assert self._nursery is not None, "updater not serving"
        self._nursery.start_soon(fn, *args)

    def _feed_players(self) -> None:
        query = self.actor.status.query
        players = query.players if query is not None and query.ok else None
        if players != self.machine.players:
            self._do(self.machine.players_counted(players, trio.current_time()))

    async def _check(self, token: int) -> None:
        actor = self.actor
        app = actor.spec.install_identifier
        try:
            installed = await self.builds.installed(actor.files_dir, app)
            latest = await self.builds.latest(app, actor.server_dir / "steamcmd")
        except (SteamcmdError, VdfError, OSError) as e:
            self._feed_players()  # whoever joined while steamcmd ran counts (when_empty)
            self._do(self.machine.check_failed(token, str(e), trio.current_time()))
        else:
            self._feed_players()
            self._do(self.machine.checked(token, installed, latest, trio.current_time()))

    async def _installed(self) -> int | None:
        try:
            return await self.builds.installed(self.actor.files_dir,
                                               self.actor.spec.install_identifier)
        except VdfError as e:
            self.actor.broker.note(f"cannot read the installed build: {e}")
            return None

    async def _grace(self, scope: trio.CancelScope, token: int, seconds: float) -> None:
        with scope:
            await trio.sleep(seconds)
        if not scope.cancelled_caught:
            self._do(self.machine.grace_elapsed(token, trio.current_time()))
