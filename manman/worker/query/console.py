"""Players counted from console lines, for games with no query protocol (type `console`)."""

from __future__ import annotations

import re
import time

from manman.worker.query.result import QueryResult

# names remembered at most: a flood of join lines cannot grow memory without bound
MAX_TRACKED = 4096


class PlayerCounter:
    """Counts joins minus leaves, never below zero.

    When the join pattern has a group named `name`, players are tracked by name: a repeated
    join or a leave of someone never seen changes nothing.
    """

    __slots__ = ("_by_name", "_count", "_join", "_leave", "_names", "changed_at")

    def __init__(self, join: str, leave: str) -> None:
        try:
            self._join = re.compile(join)
            self._leave = re.compile(leave)
        except (re.error, OverflowError, RecursionError) as e:
            raise ValueError(f"player_patterns: not a valid regular expression: {e}") from None
        self._by_name = "name" in self._join.groupindex and "name" in self._leave.groupindex
        self._names: set[str] = set()
        self._count = 0
        self.changed_at = 0.0

    @property
    def count(self) -> int:
        return len(self._names) if self._by_name else self._count

    def feed(self, line: str) -> bool:
        """Look at one console line; True when the count changed."""
        before = self.count
        match = self._join.search(line)
        if match is not None:
            if self._by_name:
                if len(self._names) < MAX_TRACKED:
                    self._names.add(match.group("name"))
            else:
                self._count += 1
        else:
            match = self._leave.search(line)
            if match is None:
                return False
            if self._by_name:
                self._names.discard(match.group("name"))
            elif self._count > 0:
                self._count -= 1
        if self.count == before:
            return False
        self.changed_at = time.time()
        return True

    def reset(self) -> None:
        """The server (re)started: nobody is connected."""
        self._names.clear()
        self._count = 0
        self.changed_at = time.time()

    def result(self) -> QueryResult:
        return QueryResult(ok=True, players=self.count, checked_at=time.time())
