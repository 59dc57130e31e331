"""What a schedule run acts on and watches: one server, through a small protocol, so the
run logic is tested with trio's MockClock and runs against the actor unchanged."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import trio


@dataclass(frozen=True, slots=True)
class Snapshot:
    state: str
    ready: bool
    started_at: float | None
    players: int | None  # the query's (or player_patterns') count; None: not known


@dataclass
class Watch:
    """The states a server went through since the watch began (every one, even those that
    lasted no checkpoint), and a wake at each change of its status."""

    seen: list[str] = field(default_factory=list)
    _event: trio.Event = field(default_factory=trio.Event)

    def saw(self, state: str) -> None:
        if not self.seen or self.seen[-1] != state:
            self.seen.append(state)
        self._event.set()

    async def next(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


class Watches:
    """The open watches of one server, told of each change by the worker's observer."""

    def __init__(self) -> None:
        self._by_id: dict[int, Watch] = {}

    @contextlib.contextmanager
    def open(self, state: str) -> Iterator[Watch]:
        w = Watch()
        w.seen.append(state)
        self._by_id[id(w)] = w
        try:
            yield w
        finally:
            self._by_id.pop(id(w), None)

    def changed(self, state: str) -> None:
        for w in self._by_id.values():
            w.saw(state)


class Target(Protocol):
    watches: Watches

    def snapshot(self) -> Snapshot: ...

    async def power(self, action: str) -> None: ...  # start|stop|restart|kill; ManmanError

    def command(self, line: str) -> None: ...

    def update(self) -> None: ...

    async def backup(self, wait: bool) -> None: ...  # TaskFailed when it failed

    def note(self, text: str) -> None: ...
