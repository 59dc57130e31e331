"""Players counted from console lines, for games with no query protocol (`player_patterns`)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from manman.worker.query.result import QueryResult

# names remembered at most: a flood of join lines cannot grow memory without bound
MAX_TRACKED = 4096
# a longer "name" is not a player's (games cap theirs far below) but a chat line a loose
# pattern caught: not tracked, so memory stays under MAX_TRACKED * MAX_NAME
MAX_NAME = 256
# joins and leaves kept by name between two `take_changes` (a batch of console lines); a
# flood beyond is still counted, only not named one by one
MAX_CHANGES = 100


def _compile(patterns: Sequence[str], kind: str) -> tuple[re.Pattern[str], ...]:
    out = []
    for i, p in enumerate(patterns):
        try:
            rx = re.compile(p)
        except (re.error, OverflowError, RecursionError) as e:
            raise ValueError(f"player_patterns.{kind}[{i}]: not a valid regular expression: "
                             f"{e}") from None
        if "player" not in rx.groupindex:
            raise ValueError(f"player_patterns.{kind}[{i}]: needs a (?P<player>…) group")
        out.append(rx)
    return tuple(out)


class PlayerCounter:
    """The players on, tracked by name from join and leave lines: a repeated join, or the
    leave of someone never seen, changes nothing. Each pattern has a `(?P<player>…)` group.
    A new counter (one per run of the game) starts at zero."""

    __slots__ = ("_join", "_leave", "_names", "changed_at", "changes", "unnamed")

    def __init__(self, join: Sequence[str], leave: Sequence[str]) -> None:
        self._join = _compile(join, "join")
        self._leave = _compile(leave, "leave")
        self._names: set[str] = set()
        self.changed_at = 0.0
        # ("joined" | "left", name, players after it), in order, since the last take
        self.changes: list[tuple[str, str, int]] = []
        self.unnamed = 0  # changes beyond MAX_CHANGES since the last take

    def _changed(self, kind: str, name: str) -> None:
        self.changed_at = time.time()
        if len(self.changes) < MAX_CHANGES:
            self.changes.append((kind, name, len(self._names)))
        else:
            self.unnamed += 1

    def take_changes(self) -> tuple[list[tuple[str, str, int]], int]:
        """The joins and leaves by name since the last take, and how many more there were."""
        out, unnamed = self.changes, self.unnamed
        self.changes, self.unnamed = [], 0
        return out, unnamed

    @property
    def count(self) -> int:
        return len(self._names)

    def feed(self, line: str) -> bool:
        """Look at one console line; True when the count changed."""
        for rx in self._join:
            m = rx.search(line)
            if m is not None:
                name = m.group("player")
                if name is None or len(name) > MAX_NAME or name in self._names \
                        or len(self._names) >= MAX_TRACKED:
                    return False
                self._names.add(name)
                self._changed("joined", name)
                return True
        for rx in self._leave:
            m = rx.search(line)
            if m is not None:
                name = m.group("player")
                if name not in self._names:
                    return False
                self._names.discard(name)
                self._changed("left", name)
                return True
        return False

    def reset(self) -> None:
        """The server (re)started: nobody is connected."""
        self._names.clear()
        self.changed_at = time.time()

    def result(self) -> QueryResult:
        return QueryResult(ok=True, players=self.count, checked_at=time.time())
