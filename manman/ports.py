"""Port allocation, pure: which numbers a server's ports take on its worker.

A port is fixed (a number) or `auto`: the worker places it in its `port_range`, where no
other server of the worker holds that number on that protocol. A port that `follows` another
is that port's number plus `offset`, so a leader and its followers take a block together.
The worker (and the host, to refuse before saving) call `place`; the worker then launches
the spec `resolve` makes, with every `{{port.NAME}}` filled in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from manman import errors
from manman.models import PortSpec, ServerSpec

DEFAULT_RANGE = "27000-27999"
_PORT_REF = re.compile(r"\{\{port\.([a-z][a-z0-9_]{0,31})\}\}")

# (number, protocol) → the name of the server holding it
Taken = Mapping[tuple[int, str], str]


@dataclass(frozen=True)
class PortRange:
    lo: int
    hi: int  # inclusive

    def __str__(self) -> str:
        return f"{self.lo}-{self.hi}"

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.lo <= port <= self.hi


def parse_range(text: str) -> PortRange:
    """'27000-27999' → PortRange; raises ValueError saying what is wrong."""
    lo, sep, hi = text.strip().partition("-")
    lo, hi = lo.strip(), hi.strip()
    if not sep or not lo.isdigit() or not hi.isdigit():
        raise ValueError(f"expected FIRST-LAST, e.g. {DEFAULT_RANGE}, got {text!r}")
    r = PortRange(int(lo), int(hi))
    if not 1 <= r.lo <= r.hi <= 65535:
        raise ValueError(f"expected 1 <= FIRST <= LAST <= 65535, got {text!r}")
    return r


def range_of(capacity: Mapping[str, Any]) -> PortRange | None:
    """The port range a worker reported in its registration; None if it gave none."""
    text = capacity.get("port_range")
    if not isinstance(text, str):
        return None
    try:
        return parse_range(text)
    except ValueError:
        return None


def _leader(spec: ServerSpec, p: PortSpec) -> PortSpec | None:
    return next((q for q in spec.ports if q.name == p.follows), None) if p.follows else None


def is_auto(spec: ServerSpec, p: PortSpec) -> bool:
    """Placed by the worker: `auto` and not derived from a fixed leader."""
    leader = _leader(spec, p)
    return (leader if leader is not None else p).port == "auto"


def numbers(spec: ServerSpec, allocated: Mapping[str, int]) -> list[tuple[PortSpec, int | None]]:
    """Each port with its number: fixed, allocated (followers: leader + offset), or None
    for an `auto` port not placed yet."""
    by_name: dict[str, int | None] = {}
    out: list[tuple[PortSpec, int | None]] = []
    for p in spec.ports:
        n: int | None
        if p.follows is not None and (base := by_name.get(p.follows)) is not None:
            n = base + p.offset
        elif p.follows is not None:
            n = None  # its leader is auto and not placed
        elif isinstance(p.port, int):
            n = p.port
        else:
            n = allocated.get(p.name or "")
        if p.name is not None:
            by_name[p.name] = n
        out.append((p, n))
    return out


def protocols(p: PortSpec) -> list[str]:
    """`tcp+udp` holds its number on both."""
    return p.protocol.split("+")


def held(spec: ServerSpec, allocated: Mapping[str, int]) -> set[tuple[int, str]]:
    """The (number, protocol) pairs a server holds on its worker."""
    return {(n, proto) for p, n in numbers(spec, allocated) if n is not None
            for proto in protocols(p)}


def unplaced(spec: ServerSpec, allocated: Mapping[str, int]) -> bool:
    return any(n is None for _, n in numbers(spec, allocated))


def check_fixed(spec: ServerSpec, taken: Taken) -> None:
    """Conflict (409 `port_taken`) naming the server that holds one of the spec's fixed
    ports (and followers of a fixed port)."""
    for p, n in numbers(spec, {}):
        if n is None:
            continue
        for proto in protocols(p):
            if (owner := taken.get((n, proto))) is not None:
                raise errors.Conflict(f"port {n}/{proto} is used by server {owner}",
                                      "port_taken")


def _always(port: int, protocol: str) -> bool:
    return True


def _fits(base: int, block: Sequence[tuple[int, str]], prange: PortRange,
          held_by: tuple[Taken, set[tuple[int, str]]],
          free: Callable[[int, str], bool] | None) -> bool:
    """The block of ports at `base` is in range, held by nobody, and (free given) not in
    use on this machine."""
    keys = [(base + off, proto) for off, proto in block]
    if any(k[0] not in prange or k in held_by[0] or k in held_by[1] for k in keys):
        return False
    return free is None or all(free(*k) for k in keys)


def allocate(spec: ServerSpec, prange: PortRange, taken: Taken,
             previous: Mapping[str, int] | None = None,
             free: Callable[[int, str], bool] = _always) -> dict[str, int]:
    """The number of every `auto` port (by name; followers too). A number in `previous`
    is kept while still valid (in range, held by no other server); a new one must also
    pass `free` (nothing else listens there). Conflict (409 `no_free_port`) when the range
    has no room."""
    previous = previous or {}
    mine: set[tuple[int, str]] = held(spec, {})  # the fixed ones
    out: dict[str, int] = {}
    for lead in spec.ports:
        if lead.follows is not None or not is_auto(spec, lead):
            continue
        assert lead.name is not None  # validate_spec: an auto port has a name
        block = [(0, proto) for proto in protocols(lead)] + [
            (f.offset, proto) for f in spec.ports if f.follows == lead.name
            for proto in protocols(f)]
        width = max(off for off, _ in block)
        kept = previous.get(lead.name)
        if kept is not None and _fits(kept, block, prange, (taken, mine), None):
            base: int | None = kept
        else:
            base = next((b for b in range(prange.lo, prange.hi - width + 1)
                         if _fits(b, block, prange, (taken, mine), free)), None)
        if base is None:
            raise errors.Conflict(f"no free port for {lead.name} in port_range {prange}",
                                  "no_free_port")
        for off, proto in block:
            mine.add((base + off, proto))
        out[lead.name] = base
        for f in spec.ports:
            if f.follows == lead.name and f.name is not None:
                out[f.name] = base + f.offset
    # followers of a fixed port: shown as numbers too
    for p, n in numbers(spec, out):
        if p.port == "auto" and p.name is not None and p.name not in out and n is not None:
            out[p.name] = n
    return out


def place(spec: ServerSpec, prange: PortRange | None, taken: Taken,
          previous: Mapping[str, int] | None = None,
          free: Callable[[int, str], bool] = _always) -> dict[str, int]:
    """check_fixed, then allocate (prange None: the range is not known, auto ports stay
    unplaced)."""
    check_fixed(spec, taken)
    if prange is None:
        return {}
    return allocate(spec, prange, taken, previous, free)


def taken_by(servers: Sequence[tuple[str, ServerSpec, Mapping[str, int]]]) -> dict[
        tuple[int, str], str]:
    """What (name, spec, allocated) servers hold: the `taken` of the others."""
    out: dict[tuple[int, str], str] = {}
    for name, spec, allocated in servers:
        for key in held(spec, allocated):
            out.setdefault(key, name)
    return out


def _fill(text: str, by_name: Mapping[str, int]) -> str:
    return _PORT_REF.sub(lambda m: str(by_name[m.group(1)]) if m.group(1) in by_name
                         else m.group(0), text)


def resolve(spec: ServerSpec, allocated: Mapping[str, int]) -> ServerSpec:
    """The spec the runner launches: every port a number, every `{{port.NAME}}` in the
    executable, args, env and health.query.port filled in. ValueError when an `auto`
    port has no number yet."""
    if not spec.ports:
        return spec
    placed = numbers(spec, allocated)
    by_name: dict[str, int] = {}
    ports: list[PortSpec] = []
    for p, n in placed:
        if n is None:
            raise ValueError(f"port {p.name}: no number allocated")
        if p.name is not None:
            by_name[p.name] = n
        ports.append(msgspec.structs.replace(p, port=n))
    health = spec.health
    query = health.query
    if query is not None and isinstance(query.port, str):
        name = _PORT_REF.fullmatch(query.port)
        if name is not None and name.group(1) in by_name:
            health = msgspec.structs.replace(health, query=msgspec.structs.replace(
                query, port=by_name[name.group(1)]))
    return msgspec.structs.replace(
        spec, ports=ports, health=health,
        executable=_fill(spec.executable, by_name) if spec.executable else spec.executable,
        args=[_fill(a, by_name) for a in spec.args],
        env={k: _fill(v, by_name) for k, v in spec.env.items()})


def query_port(spec: ServerSpec, allocated: Mapping[str, int]) -> int | None:
    """health.query.port as a number (None: no query, a console one, or not placed)."""
    query = spec.health.query
    if query is None or query.port is None:
        return None
    if isinstance(query.port, int):
        return query.port
    m = _PORT_REF.fullmatch(query.port)
    if m is None:
        return None
    for p, n in numbers(spec, allocated):
        if p.name == m.group(1):
            return n
    return None
