"""When a schedule fires: cronsim over zoneinfo, in the schedule's time zone, answered in UTC.

Daylight saving, as cronsim does it (Debian cron's rules):
- spring forward: a time in the skipped hour (02:30 in Europe/Berlin on the last Sunday
  of March) fires once, at the first minute after the jump (03:00 local);
- fall back: a time in the repeated hour fires once, on its first pass (summer time).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError


def zone(name: str) -> ZoneInfo:
    """An IANA zone; ValueError for a name that is none."""
    if name.startswith("/") or ".." in name.split("/") or "\x00" in name:
        raise ValueError(f"timezone: {name[:64]!r} is not an IANA time zone")
    try:
        return _zone(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"timezone: {name[:64]!r} is not an IANA time zone") from None


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def check_cron(expr: str) -> None:
    """Five fields (minute hour day-of-month month day-of-week), as cronsim reads them."""
    if len(expr.split()) != 5:
        raise ValueError("cron: needs five fields: minute hour day-of-month month day-of-week")
    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as e:
        raise ValueError(f"cron: {e}") from None


def next_fire(expr: str, tz: str, after: float) -> float | None:
    """The first time strictly after `after` (epoch seconds) the cron fires; None: never."""
    times = fires(expr, tz, after, 1)
    return times[0] if times else None


def fires(expr: str, tz: str, after: float, count: int) -> list[float]:
    """The next `count` fire times (fewer when the cron stops firing)."""
    return list(itertools.islice(iter_fires(expr, tz, after), count))


def iter_fires(expr: str, tz: str, after: float) -> Iterator[float]:
    """The fire times strictly after `after`, in order, for as long as the cron fires."""
    start = datetime.fromtimestamp(after, zone(tz))
    try:
        for when in CronSim(expr, start):
            ts = when.timestamp()
            # started in the second pass of a repeated hour, cronsim can answer the first
            if ts > after:
                yield ts
    except (CronSimError, OverflowError):  # no more (cronsim gives up after 50 years)
        return


def iso(ts: float | None) -> str | None:
    """A time as the schedule answers show it: ISO 8601 in UTC."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
