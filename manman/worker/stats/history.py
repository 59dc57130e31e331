"""A day of one server's stats at one-minute resolution, in one fixed array (compact: 46 KB
a server whatever it does, no object per point)."""

from __future__ import annotations

from array import array

from manman import errors

MINUTES = 24 * 60
FIELDS = 4  # minute start (s), cpu % (mean over the minute), memory (max), disk (last)
_NAN = float("nan")


class History:
    __slots__ = ("_cpu", "_disk", "_mem", "_minute", "_n", "ring")

    def __init__(self, ring: array | None = None) -> None:
        self.ring = ring if ring is not None and len(ring) == MINUTES * FIELDS else \
            array("d", [0.0]) * (MINUTES * FIELDS)
        self._minute = -1  # the minute being accumulated
        self._n = 0
        self._cpu = 0.0
        self._mem = 0
        self._disk = _NAN

    def add(self, at: float, cpu: float, memory: int, disk: int | None) -> None:
        minute = int(at // 60)
        if minute != self._minute:
            self._minute, self._n, self._cpu, self._mem, self._disk = minute, 0, 0.0, 0, _NAN
        self._n += 1
        self._cpu += cpu
        self._mem = max(self._mem, memory)
        if disk is not None:
            self._disk = float(disk)
        self._write()

    def _write(self) -> None:
        """The minute so far goes in its slot at once: a read sees the running minute."""
        i = (self._minute % MINUTES) * FIELDS
        self.ring[i:i + FIELDS] = array("d", (self._minute * 60.0, self._cpu / self._n,
                                              float(self._mem), self._disk))

    def points(self, since: float = 0.0, now: float | None = None
               ) -> list[tuple[float, float, int, int | None]]:
        """(minute start, cpu, memory, disk) from `since`, oldest first, at most a day."""
        ring = self.ring
        newest = self._minute * 60.0 if now is None else now
        oldest = max(since - 59, newest - MINUTES * 60 + 1)  # a minute that overlaps `since`
        out = []
        for i in range(0, len(ring), FIELDS):
            at = ring[i]
            if at > 0 and at >= oldest:
                disk = ring[i + 3]
                out.append((at, round(ring[i + 1], 2), int(ring[i + 2]),
                            None if disk != disk else int(disk)))
        out.sort()
        return out


def parse_since(raw: str | None) -> float:
    """`?since=` of a stats history: a Unix time (seconds), 0 when absent."""
    if raw is None:
        return 0.0
    try:
        since = float(raw)
    except ValueError:
        raise errors.Invalid("query parameter since must be a number (Unix seconds)") from None
    if not 0 <= since < 1e11:
        raise errors.Invalid("query parameter since must be a Unix time in seconds")
    return since
