"""Which loopback port a server's query goes to: a number, or `{{port.NAME}}` of its ports."""

from __future__ import annotations

from collections.abc import Mapping

from manman.models import PortSpec, ServerSpec

_REF_HEAD, _REF_TAIL = "{{port.", "}}"


def query_port(spec: ServerSpec, allocated: Mapping[str, int]) -> int | None:
    """The port `health.query` names; None when there is none or it is not placed yet."""
    query = spec.health.query
    if query is None or query.port is None:
        return None
    if isinstance(query.port, int):
        return query.port
    return port_number(spec.ports, allocated, query.port[len(_REF_HEAD):-len(_REF_TAIL)])


def port_number(ports: list[PortSpec], allocated: Mapping[str, int], name: str) -> int | None:
    """A named port as a number: placed by the worker (`auto`), fixed in the spec, or
    `offset` above the port it follows."""
    placed = allocated.get(name)
    if placed is not None:
        return placed
    for p in ports:
        if p.name == name:
            if isinstance(p.port, int):
                return p.port
            if p.follows is not None:
                base = port_number(ports, allocated, p.follows)
                return None if base is None else base + p.offset
            return None
    return None
