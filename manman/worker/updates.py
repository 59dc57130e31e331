"""Steam build updates: when to check and when to update, as pure code (no I/O, no clock).

`UpdateMachine` follows one steamcmd server's `auto_update` policy. Its owner feeds it what
happens — a check falling due, a check's answer, the player count, the server starting or
stopping, the game asking for an update (a `restart_needed_patterns` line), the grace running
out, an update ending — with the time as an argument, and carries out the effects it returns:
run a check, schedule the next, write the announce command, sleep the grace, stop + update +
start, note in the console, show the builds in the status.

Modes: `off` checks nothing; `notify` checks and shows `update_available`; `when_empty` also
updates once the query counts 0 players (an unknown count waits); `immediate` announces,
waits `grace` seconds, then updates. A server that is not running, or counts 0 players, is
updated at once (no one to warn). A failed update is tried again after the next check, so at
most once per `check_interval`; a game's plea for an update within `check_interval` of the last
update is not acted on (a game that keeps asking while Steam still serves the same build would
otherwise restart in a loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from manman.models import AutoUpdateSpec
from manman.worker.machine import Note

Phase = Literal["idle", "checking", "waiting_empty", "grace", "updating"]


# -- effects ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScheduleCheck:
    """Call `check_due` at `at` (the machine's time), replacing any earlier schedule; None
    means no check is scheduled."""

    at: float | None


@dataclass(frozen=True, slots=True)
class RunCheck:
    """Read the installed build and ask steamcmd for the latest; report `checked(token, …)`
    or `check_failed(token, …)`."""

    token: int


@dataclass(frozen=True, slots=True)
class Announce:
    """Write this line to the game's console (stdin)."""

    line: str


@dataclass(frozen=True, slots=True)
class WaitGrace:
    """Sleep `seconds`, then report `grace_elapsed(token)`."""

    token: int
    seconds: float


@dataclass(frozen=True, slots=True)
class RunUpdate:
    """Stop the game if it runs, update it (`app_update … validate`), start it again if it
    ran; report `update_finished`."""


@dataclass(frozen=True, slots=True)
class ShowBuilds:
    """The builds or `update_available` changed: put them in the server's status."""

    installed: int | None
    latest: int | None
    update_available: bool


Effect = ScheduleCheck | RunCheck | Announce | WaitGrace | RunUpdate | ShowBuilds | Note


class UpdateMachine:
    def __init__(self, policy: AutoUpdateSpec | None = None) -> None:
        self.policy = AutoUpdateSpec() if policy is None else policy
        self.phase: Phase = "idle"
        self.installed: int | None = None
        self.latest: int | None = None
        self.update_available = False
        self.running = False
        self.players: int | None = None  # None: unknown
        self.next_check: float | None = None
        self._check_token = 0
        self._grace_token = 0
        self._asked = False  # the game asked for an update while a check ran
        self._last_update_end: float | None = None
        self._last_error: str | None = None
        self._shown: tuple[int | None, int | None, bool] = (None, None, False)

    # -- policy ------------------------------------------------------------------------------

    def configure(self, policy: AutoUpdateSpec, now: float) -> list[Effect]:
        """A new policy (also the first one). Checking starts at once when it was off."""
        was = self.policy.mode
        self.policy = policy
        out: list[Effect] = []
        if policy.mode != was and self.phase in ("waiting_empty", "grace"):
            self._grace_token += 1  # a pending update starts again the new way, or not at all
            self.phase = "idle"
            if policy.mode in ("off", "notify"):
                out.append(Note(f"update cancelled: auto_update is now {policy.mode}"))
            else:
                out += self._begin(now)
        if policy.mode == "off":
            if self.phase == "checking":  # its answer is of no use now
                self._check_token += 1
                self.phase = "idle"
            self._asked = False
            if self.next_check is not None:
                self.next_check = None
                out.append(ScheduleCheck(None))
            return out
        at = now if was == "off" or self.next_check is None else \
            min(self.next_check, now + policy.check_interval)
        if self.phase != "checking" and at != self.next_check:
            self.next_check = at
            out.append(ScheduleCheck(at))
        return out

    # -- checks ------------------------------------------------------------------------------

    def check_due(self, now: float) -> list[Effect]:
        """The scheduled check time came."""
        if self.policy.mode == "off" or self.next_check is None or now < self.next_check:
            return []  # a timer that outlived its schedule
        if self.phase != "idle":  # a check runs, or an update waits or runs: ask later
            return self._schedule(now)
        self.phase = "checking"
        self.next_check = None
        self._check_token += 1
        return [RunCheck(self._check_token)]

    def checked(self, token: int, installed: int | None, latest: int, now: float
                ) -> list[Effect]:
        """A check's answer: the build installed (None: no manifest) and Steam's latest."""
        if token != self._check_token or self.phase != "checking":
            return []
        self.phase = "idle"
        self._last_error = None
        self.installed, self.latest = installed, latest
        newer = installed is not None and latest != installed  # a rollback is an update too
        asked, self._asked = self._asked, False
        out = self._schedule(now)
        if newer and not self.update_available:
            out.append(Note(f"update available: build {latest} (installed: {installed})"))
        self.update_available = newer or asked
        out += self._show()
        if self.update_available:
            out += self._begin(now)
        return out

    def check_failed(self, token: int, error: str, now: float) -> list[Effect]:
        """A check could not tell (steamcmd failed, timed out, printed no build)."""
        if token != self._check_token or self.phase != "checking":
            return []
        self.phase = "idle"
        out = self._schedule(now)
        if error != self._last_error:  # Steam down: one note, not one per interval
            self._last_error = error
            out.append(Note(f"update check failed: {error}"))
        if self._asked:  # the game knows it is out of date: no need for steamcmd's word
            self._asked = False
            out += self._begin(now)
        return out

    # -- what the game and its players say -----------------------------------------------------

    def restart_needed(self, now: float) -> list[Effect]:
        """The game printed a line of its `restart_needed_patterns`."""
        if self.phase in ("waiting_empty", "grace", "updating"):
            return []  # already on it (the game repeats the line)
        if self.phase == "checking":  # acted on once the check ends, whatever it says
            if self._asked:
                return []
            self._asked = True
            return [Note("the game asks for an update")]
        if self._last_update_end is not None and \
                now < self._last_update_end + self.policy.check_interval:
            return []  # just updated: Steam may not serve the new build yet
        out: list[Effect] = []
        if not self.update_available:
            self.update_available = True
            out.append(Note("the game asks for an update"))
            out += self._show()
        return out + self._begin(now)

    def players_counted(self, players: int | None, now: float) -> list[Effect]:
        """The query's player count (None: the query could not tell)."""
        self.players = players
        if players == 0 and self.phase in ("waiting_empty", "grace"):
            return self._update()
        return []

    def running_changed(self, running: bool, now: float) -> list[Effect]:
        """The game started or stopped (a new run's player count is unknown)."""
        if running == self.running:
            return []
        self.running = running
        self.players = None
        if not running and self.phase in ("waiting_empty", "grace"):
            return self._update()  # stopped: no one to wait for or warn
        return []

    def grace_elapsed(self, token: int, now: float) -> list[Effect]:
        if token != self._grace_token or self.phase != "grace":
            return []
        return self._update()

    # -- updates -----------------------------------------------------------------------------

    def update_finished(self, ok: bool, installed: int | None, now: float,
                        error: str | None = None) -> list[Effect]:
        """An update ended, this machine's or the operator's (it satisfies a waiting one)."""
        out: list[Effect] = []
        ours = self.phase == "updating"
        if self.phase in ("waiting_empty", "grace", "updating"):
            self._grace_token += 1
            self.phase = "idle"
        elif self.phase == "checking" and self.policy.mode != "off":
            self._check_token += 1  # its answer may predate this update: ask again
            self.phase = "idle"
            self.next_check = now
            out.append(ScheduleCheck(now))
        self._last_update_end = now
        if ok:
            self._asked = False
            self.installed = installed
            self.update_available = installed is not None and self.latest is not None and \
                installed != self.latest
            if ours:
                out.append(Note(f"updated to build {installed}" if installed is not None
                                else "updated"))
            elif installed is not None:
                out.append(Note(f"installed build {installed}"))
        elif ours:  # (an operator's failed install is the server machine's to tell)
            out.append(Note(f"update failed: {error or 'unknown error'}; trying again after "
                            "the next check"))
        return out + self._show()

    # -- inside ------------------------------------------------------------------------------

    def _schedule(self, now: float) -> list[Effect]:
        self.next_check = now + self.policy.check_interval
        return [ScheduleCheck(self.next_check)]

    def _show(self) -> list[Effect]:
        shown = (self.installed, self.latest, self.update_available)
        if shown == self._shown:
            return []
        self._shown = shown
        return [ShowBuilds(*shown)]

    def _begin(self, now: float) -> list[Effect]:
        """An update is wanted: start it the policy's way."""
        mode = self.policy.mode
        if mode in ("off", "notify") or self.phase != "idle":
            return []
        if not self.running or self.players == 0:
            return self._update()
        if mode == "when_empty":
            self.phase = "waiting_empty"
            count = "unknown" if self.players is None else str(self.players)
            return [Note(f"update waits for the server to empty (players: {count})")]
        out: list[Effect] = []
        if self.policy.announce_command:
            out.append(Announce(self.policy.announce_command))
        if self.policy.grace <= 0:
            return out + self._update()
        self.phase = "grace"
        self._grace_token += 1
        return [*out, Note(f"update in {self.policy.grace:g}s"),
                WaitGrace(self._grace_token, self.policy.grace)]

    def _update(self) -> list[Effect]:
        self._grace_token += 1  # a grace still sleeping ends unheard
        self.phase = "updating"
        return [Note("updating: stop, update, start"), RunUpdate()]
