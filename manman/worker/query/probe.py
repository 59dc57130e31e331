"""One game query by type, and the plain TCP connect probe: the entry point for the prober."""

from __future__ import annotations

import time
from typing import Literal

import trio

from manman.worker.query.a2s import query_a2s
from manman.worker.query.result import QueryResult, elapsed_ms, failed
from manman.worker.query.slp import query_minecraft

QueryType = Literal["a2s", "minecraft", "tcp", "console"]
NETWORK_TYPES: tuple[QueryType, ...] = ("a2s", "minecraft", "tcp")


async def query_tcp(host: str, port: int, timeout: float) -> QueryResult:
    """Does the port accept a connection? Players stay unknown."""
    started = time.perf_counter()
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as e:
            return failed(f"tcp port {port}: {e.strerror or e}")
        connected = time.perf_counter()
        await stream.aclose()
        return QueryResult(ok=True, latency_ms=elapsed_ms(started, connected),
                           checked_at=time.time())
    return failed(f"tcp port {port}: no connection within {timeout:g}s")


async def query(kind: QueryType, host: str, port: int, timeout: float) -> QueryResult:
    """Probe a server over the network; `console` has no network probe (see PlayerCounter)."""
    if kind == "a2s":
        return await query_a2s(host, port, timeout)
    if kind == "minecraft":
        return await query_minecraft(host, port, timeout)
    if kind == "tcp":
        return await query_tcp(host, port, timeout)
    raise ValueError(f"query type {kind!r} is not probed over the network")
