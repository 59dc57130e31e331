"""Request and answer bodies of the HTTP APIs: commands, errors, console pages, stats."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from manman.models.status import Server
from manman.models.types import MAX_LINE


class ServerList(Struct):
    servers: list[Server]


CommandType = Literal["start", "stop", "restart", "kill", "install", "health", "command"]


class Command(Struct, forbid_unknown_fields=True):
    type: CommandType
    data: Annotated[str, Meta(max_length=MAX_LINE)] | None = None


class ConsoleInput(Struct, forbid_unknown_fields=True):
    data: Annotated[str, Meta(max_length=MAX_LINE)]


class CommandAccepted(Struct, omit_defaults=True):
    command_id: str
    delivered: bool
    result: dict[str, Any] | None = None  # what a `health` command found


class ErrorBody(Struct):
    code: str
    message: str


class ErrorReply(Struct):
    error: ErrorBody


class Line(Struct, gc=False):
    """One console line: the unit of the console protocol."""

    seq: int
    ts: float
    stream: str
    text: str


class LogPage(Struct, omit_defaults=True):
    lines: list[Line]
    next_seq: int
    first_seq: int
    websocket_url: str | None = None
    token: str | None = None


class StatsPoint(Struct, gc=False):
    """One minute of a server's stats: mean CPU %, peak memory, last disk size."""

    at: float
    cpu: float
    memory: int
    disk: int | None


class StatsHistory(Struct):
    id: str
    interval: int  # seconds a point covers
    points: list[StatsPoint]
