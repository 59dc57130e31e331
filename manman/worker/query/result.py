"""What one game query found: the result every probe returns, and the one parse error."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import trio
from msgspec import Struct

from manman.models import QueryStatus

# QueryStatus's strings are bounded (the host refuses longer ones in a report)
_TEXT_MAX = 256


class ParseError(ValueError):
    """A reply that is not what the protocol says: truncated, wrong header, oversized."""


class QueryResult(Struct, frozen=True, kw_only=True, gc=False):
    """One probe's outcome; `ok=False` always carries a short `error`."""

    ok: bool
    players: int | None = None
    max_players: int | None = None
    map: str | None = None
    version: str | None = None
    # the server's own name (A2S) or MOTD (Minecraft), for people; not part of status
    name: str | None = None
    latency_ms: float | None = None
    checked_at: float = 0.0
    error: str | None = None


def failed(reason: str) -> QueryResult:
    """A failed probe, stamped now; the reason is cut so a hostile reply cannot bloat status."""
    return QueryResult(ok=False, error=reason[:200], checked_at=time.time())


def elapsed_ms(started: float, ended: float) -> float:
    return round((ended - started) * 1000.0, 3)


async def guarded(exchange: Callable[[], Awaitable[QueryResult]], *, protocol: str, reply: str,
                  timeout: float) -> QueryResult:
    """Run one probe's exchange: a timeout, a bad reply or a socket error is an `ok=False`
    result, never a raise."""
    try:
        with trio.move_on_after(timeout):
            return await exchange()
        return failed(f"no {reply} reply within {timeout:g}s")
    except ParseError as e:
        return failed(str(e))
    except (OSError, trio.BrokenResourceError) as e:
        return failed(f"{protocol}: {getattr(e, 'strerror', None) or e or type(e).__name__}")


def as_status(result: QueryResult) -> QueryStatus:
    """What the server's status shows of a probe: everything but the server's own name."""
    return QueryStatus(ok=result.ok, players=result.players, max_players=result.max_players,
                       map=_cut(result.map), version=_cut(result.version),
                       latency_ms=result.latency_ms, checked_at=result.checked_at,
                       error=_cut(result.error))


def _cut(text: str | None) -> str | None:
    return text if text is None or len(text) <= _TEXT_MAX else text[:_TEXT_MAX]
