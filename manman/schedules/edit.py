"""A server's schedule list, changed one schedule at a time (the routes of the host and of a
standalone worker): each answers the new list, checked when the spec is."""

from __future__ import annotations

import msgspec

from manman import errors
from manman.models import Schedule


def find(schedules: list[Schedule], sid: str) -> Schedule:
    for s in schedules:
        if s.id == sid:
            return s
    raise errors.NotFound(f"schedule {sid[:64]} not found")


def added(schedules: list[Schedule], new: Schedule) -> list[Schedule]:
    if new.id is not None and any(s.id == new.id for s in schedules):
        raise errors.Exists(f"a schedule with id {new.id} exists")
    return [*schedules, msgspec.structs.replace(new)]


def replaced(schedules: list[Schedule], sid: str, new: Schedule) -> list[Schedule]:
    find(schedules, sid)
    if new.id is not None and new.id != sid:
        raise errors.Invalid("id: a schedule's id cannot change")
    new = msgspec.structs.replace(new, id=sid)
    return [new if s.id == sid else s for s in schedules]


def removed(schedules: list[Schedule], sid: str) -> list[Schedule]:
    find(schedules, sid)
    return [s for s in schedules if s.id != sid]
