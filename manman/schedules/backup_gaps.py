"""Backups at most every 15 minutes per server, over every fire of its enabled schedules to
come: each backup task at its fire time plus the `delay`s and `wait`s before it.

Sound over the calendar's whole period, at a bounded cost. Dates and weekdays repeat every
28 years (10,227 days) from 1901 to 2099, and so do the daylight-saving rules, which name
dates ("the last Sunday of March"): any two backups that would ever start less than 15
minutes apart have a copy within the 28 years from today. Those years are not walked fire by
fire (a fire every 15 minutes is a million fires). Each schedule's days are a bitmask over
them, made from the cron's day fields with masks of the calendar (month, day of month, day
of week, `L`, `LW`, `#n`); on a day whose UTC offset does not change, the backups start at
the same seconds after that day's midnight, so one day's starts stand for every day of the
mask. A day the offset changes on is computed by cronsim itself, once per kind of change (its
offsets and its moment), as the worker fires it. Two groups of starts can then only meet on
the same day or on the next (each group is put on the day it starts on), which an AND of
their masks answers.
"""

from __future__ import annotations

import calendar
import itertools
import time as _time
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING

from cronsim import CronSim, CronSimError

from manman.schedules import cron

if TYPE_CHECKING:
    from manman.models import Schedule

MIN_GAP = 15 * 60  # seconds between two backup starts of one server, at least
DAY = 86400
CYCLE_DAYS = 10227  # 28 Gregorian years: the same dates on the same weekdays
# tasks shift a backup by at most 20 x (a 7-day delay + a 1-day wait): covered past the cycle
SPAN_DAYS = 20 * 8 + 5
DAYS = CYCLE_DAYS + SPAN_DAYS
_EPOCH = date(1970, 1, 1).toordinal()


def _midnight(ordinal: int) -> int:
    """The UTC instant (epoch seconds) of that date's midnight in UTC."""
    return (ordinal - _EPOCH) * DAY


# -- the calendar and the time zones as bitmasks over DAYS days from day0 ---------------------


@dataclass(frozen=True, slots=True)
class CalendarMasks:
    months: dict[int, int]  # 1..12
    doms: dict[int, int]  # 1..31
    last_dom: int  # the last day of its month (L)
    last_weekday: int  # the last Monday-to-Friday of its month (LW)
    dows: dict[int, int]  # 0 (Sunday)..6
    nth: dict[tuple[int, int], int]  # (weekday, 1..5): the nth such weekday of the month
    last_dow: dict[int, int]  # the last such weekday of its month


def _bits(n: int) -> bytearray:
    return bytearray((n + 7) // 8)


def _set(b: bytearray, i: int) -> None:
    b[i >> 3] |= 1 << (i & 7)


def _int(b: bytearray) -> int:
    return int.from_bytes(b, "little")


@lru_cache(maxsize=2)
def calendar_masks(day0: int, n: int = DAYS) -> CalendarMasks:
    months = {m: _bits(n) for m in range(1, 13)}
    doms = {d: _bits(n) for d in range(1, 32)}
    dows = {w: _bits(n) for w in range(7)}
    nth = {(w, k): _bits(n) for w in range(7) for k in range(1, 6)}
    last_dow = {w: _bits(n) for w in range(7)}
    last_dom, last_weekday = _bits(n), _bits(n)
    first = date.fromordinal(day0)
    i = 0
    y, m, d = first.year, first.month, first.day
    while i < n:
        weekday, length = calendar.monthrange(y, m)  # Monday 0 of the 1st, days in month
        lwd = length - max(0, (weekday + length - 1) % 7 - 4)  # Saturday -1, Sunday -2
        while d <= length and i < n:
            w = (weekday + d - 1 + 1) % 7  # 0 Sunday, as cron counts
            _set(months[m], i)
            _set(doms[d], i)
            _set(dows[w], i)
            _set(nth[(w, (d + 6) // 7)], i)
            if d + 7 > length:
                _set(last_dow[w], i)
            if d == length:
                _set(last_dom, i)
            if d == lwd:
                _set(last_weekday, i)
            d += 1
            i += 1
        y, m, d = (y + 1, 1, 1) if m == 12 else (y, m + 1, 1)
    return CalendarMasks(
        months={k: _int(v) for k, v in months.items()}, doms={k: _int(v) for k, v in doms.items()},
        last_dom=_int(last_dom), last_weekday=_int(last_weekday),
        dows={k: _int(v) for k, v in dows.items()}, nth={k: _int(v) for k, v in nth.items()},
        last_dow={k: _int(v) for k, v in last_dow.items()})


def day_mask(cs: CronSim, cal: CalendarMasks) -> int:
    """The days the cron fires on, as cronsim's match_day and month test say (Debian cron's
    rules: day of month OR day of week, AND when either starts with `*`)."""
    months = 0
    for m in cs.months:
        months |= cal.months[m]
    dom = 0
    for item in cs.days:
        if item == CronSim.LAST:
            dom |= cal.last_dom
        elif item == CronSim.LAST_WEEKDAY:
            dom |= cal.last_weekday
        else:
            dom |= cal.doms[item]
    dow = 0
    for spec in cs.weekdays:
        if isinstance(spec, tuple):
            w, k = spec
            dow |= cal.last_dow[w % 7] if k == CronSim.LAST else cal.nth[(w % 7, k)]
        else:
            dow |= cal.dows[spec % 7]
    return months & ((dom & dow) if cs.day_and else (dom | dow))


@dataclass(frozen=True, slots=True)
class ZoneDays:
    stable: dict[int, int]  # UTC offset (s) all day long -> the days
    changes: dict[tuple[int, int, int], tuple[int, int]]  # (before, after, moment) -> days, one


@lru_cache(maxsize=64)
def zone_days(tz: str, day0: int, n: int = DAYS) -> ZoneDays:
    """The days by UTC offset (at each local midnight); a day whose next midnight has another
    offset changes it: those are kept by the kind of change (the offsets, and the moment
    after the day's UTC midnight), with one day of each kind."""
    z = cron.zone(tz)
    offsets = []
    d = datetime.combine(date.fromordinal(day0), time())  # naive: the first pass (fold 0)
    one = timedelta(days=1)
    for _ in range(n + 1):
        off = z.utcoffset(d)
        offsets.append(int(off.total_seconds()) if off is not None else 0)
        d += one
    stable: dict[int, int] = {}
    changes: dict[tuple[int, int, int], tuple[int, int]] = {}
    i = 0
    while i < n:
        a = offsets[i]
        j = i
        while j < n and offsets[j + 1] == a:
            j += 1
        if j > i:  # days i..j-1 keep offset a all day long
            stable[a] = stable.get(a, 0) | (((1 << (j - i)) - 1) << i)
        if j < n:  # day j changes it
            b = offsets[j + 1]
            base = _midnight(day0 + j)
            lo, hi = base - a, base + DAY - b  # the day's local midnights, in UTC
            while hi - lo > 1:  # the first second of the new offset
                mid = (lo + hi) // 2
                off = datetime.fromtimestamp(mid, z).utcoffset()
                if off is not None and int(off.total_seconds()) == a:
                    lo = mid
                else:
                    hi = mid
            mask, first = changes.get((a, b, hi - base), (0, day0 + j))
            changes[(a, b, hi - base)] = (mask | (1 << j), first)
        i = j + 1
    return ZoneDays(stable=stable, changes=changes)


def fires_on(minute: str, hour: str, tz: str, ordinal: int) -> list[float]:
    """The fire times of `minute hour * * *` on that local date, as the worker fires them
    (cronsim's daylight-saving rules), in seconds after the date's UTC midnight."""
    z = cron.zone(tz)
    d = date.fromordinal(ordinal)
    start = datetime.combine(d - timedelta(days=1), time(23, 59), tzinfo=z)
    out: list[float] = []
    for when in CronSim(f"{minute} {hour} * * *", start):
        if when.date() > d:
            break
        ts = when.timestamp()
        if when.date() == d and (not out or ts > out[-1]):
            out.append(ts)
    base = _midnight(ordinal)
    return [ts - base for ts in out]


# -- the check ------------------------------------------------------------------------------


def backup_offsets(s: Schedule) -> list[tuple[float, int]]:
    """(seconds after the fire, task index) of each backup task: the `delay`s and `wait`s
    before it (the other tasks' own time only delays it more)."""
    from manman.schedules.check import wait_seconds

    at, out = 0.0, list[tuple[float, int]]()
    for j, task in enumerate(s.tasks):
        at += task.delay
        if task.action == "backup":
            out.append((at, j))
        elif task.action == "wait":
            at += wait_seconds(task.payload)
    return out


@dataclass(slots=True)
class _Group:
    """Backup starts that happen on every day of `days`, at `starts` seconds after that
    day's UTC midnight (each with the index of its schedule)."""

    days: int
    starts: list[tuple[float, int]]


def _place(groups: list[_Group], days: int, base: list[float], offsets: list[float],
           index: int) -> None:
    """The starts `base + offset` of fires on `days`, each on the day it falls on."""
    by_day: dict[int, list[tuple[float, int]]] = {}
    for b in base:
        for o in offsets:
            x = b + o
            q = int(x // DAY)
            by_day.setdefault(q, []).append((x - q * DAY, index))
    for q, starts in by_day.items():
        starts.sort()
        groups.append(_Group(days << q if q >= 0 else days >> -q, starts))


class TooClose(ValueError):
    pass


def _refuse(schedules: list[Schedule], day0: int, day_bits: int, a: tuple[float, int],
            b: tuple[float, int], b_day: int = 0) -> TooClose:
    if day_bits >> 1:  # day0 is yesterday (a zone ahead of UTC): an example from today on
        day_bits = day_bits >> 1 << 1
    low = day_bits & -day_bits
    day = day0 + low.bit_length() - 1
    ta, tb = _midnight(day) + a[0], _midnight(day + b_day) + b[0]
    if tb < ta:
        ta, tb, a, b = tb, ta, b, a
    sa, sb = schedules[a[1]].id, schedules[b[1]].id
    return TooClose(f"schedules: backups would run {tb - ta:.0f} s apart ({sa} at "
                    f"{cron.iso(ta)}, {sb} at {cron.iso(tb)}); at most one every "
                    f"{MIN_GAP // 60} minutes per server")


def check(schedules: list[Schedule], now: float) -> None:
    """TooClose (a ValueError) when two backup tasks of the server's enabled schedules would
    ever start less than MIN_GAP apart."""
    mine = [s for s in schedules if s.enabled and any(t.action == "backup" for t in s.tasks)]
    if not mine:
        return
    for s in mine:  # two backups of one run
        in_run = backup_offsets(s)
        for (a, i), (b, j) in itertools.pairwise(in_run):
            if b - a < MIN_GAP:
                raise TooClose(
                    f"schedule {s.id}: the backup of tasks[{j}] would start {b - a:.0f} s "
                    f"after the one of tasks[{i}]; at most one every {MIN_GAP // 60} "
                    "minutes per server")
    day0 = datetime.fromtimestamp(now, UTC).date().toordinal() - 1
    cal = calendar_masks(day0)
    parsed = []
    for s in mine:
        try:
            cs = CronSim(s.cron, datetime(2000, 1, 1))
        except CronSimError as e:
            raise ValueError(f"cron: {e}") from None
        parsed.append((s, cs, day_mask(cs, cal), zone_days(s.timezone, day0)))
    groups: list[_Group] = []
    for index, (s, cs, days, zd) in enumerate(parsed):
        seconds = sorted(h * 3600 + m * 60 for h in cs.hours for m in cs.minutes)
        offsets = [o for o, _ in backup_offsets(s)]
        for off, mask in zd.stable.items():
            if days & mask:
                _place(groups, days & mask, [t - off for t in seconds], offsets, index)
    _check_groups(groups, mine, day0)  # the common days first: a dense cron stops here
    for index, (s, _cs, days, zd) in enumerate(parsed):
        offsets = [o for o, _ in backup_offsets(s)]
        minute, hour = s.cron.split()[:2]
        for mask, one in zd.changes.values():
            if days & mask:
                _place(groups, days & mask, fires_on(minute, hour, s.timezone, one), offsets,
                       index)
    _check_groups(groups, mine, day0)


def _check_groups(groups: list[_Group], schedules: list[Schedule], day0: int) -> None:
    for g in groups:  # one day of one group
        for a, b in itertools.pairwise(g.starts):
            if b[0] - a[0] < MIN_GAP:
                raise _refuse(schedules, day0, g.days, a, b)
    ordered = sorted(groups, key=lambda g: g.starts[0][0])
    for gi, g in enumerate(ordered):  # two groups on one day: only those whose starts overlap
        g_lo, g_hi = g.starts[0][0], g.starts[-1][0]
        for h in ordered[gi + 1:]:
            if h.starts[0][0] >= g_hi + MIN_GAP:
                break  # and every later one starts later still
            if h.starts[-1][0] + MIN_GAP <= g_lo:
                continue
            both = g.days & h.days
            if not both:
                continue
            merged = sorted(g.starts + h.starts)
            for a, b in itertools.pairwise(merged):
                if b[0] - a[0] < MIN_GAP:
                    raise _refuse(schedules, day0, both, a, b)
    # a group's last start of a day and another's (or its own) first of the next day
    late = [g for g in groups if g.starts[-1][0] > DAY - MIN_GAP]
    early = [h for h in groups if h.starts[0][0] < MIN_GAP]
    for g in late:
        for h in early:
            if DAY + h.starts[0][0] - g.starts[-1][0] < MIN_GAP:
                both = (h.days >> 1) & g.days
                if both:
                    raise _refuse(schedules, day0, both, g.starts[-1], h.starts[0], 1)


def measure(schedules: list[Schedule], now: float | None = None) -> float:
    """Seconds one check takes (for the bench and the tests)."""
    t = _time.perf_counter()
    check(schedules, _time.time() if now is None else now)
    return _time.perf_counter() - t
