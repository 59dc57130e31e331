"""`docker stats --no-stream` read: one call a pass for every container (pure parsing)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

# docker prints memory in binary units (go-units BytesSize) and network in decimal ones
# (HumanSize): both are read
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9.]+)\s*([a-zA-Z]*)\s*$")


@dataclass(slots=True)
class ContainerSample:
    cpu: float  # % of one core
    memory: int  # bytes, as the docker CLI computes it (usage less inactive_file)
    net_rx: int  # bytes since the container started
    net_tx: int


def size(text: str) -> int:
    m = _SIZE.match(text)
    if m is None:
        return 0
    return int(float(m.group(1)) * _UNITS.get(m.group(2).lower() or "b", 1))


def parse(output: str) -> dict[str, ContainerSample]:
    """Lines of `--format '{{json .}}'` by container name; unreadable lines are skipped."""
    out: dict[str, ContainerSample] = {}
    for line in output.splitlines():
        try:
            row = msgspec.json.decode(line)
            rx, _, tx = str(row.get("NetIO", "")).partition("/")
            out[str(row["Name"])] = ContainerSample(
                cpu=float(str(row.get("CPUPerc", "0")).rstrip("%") or 0),
                memory=size(str(row.get("MemUsage", "")).partition("/")[0]),
                net_rx=size(rx), net_tx=size(tx))
        except (msgspec.DecodeError, KeyError, ValueError, AttributeError):
            continue
    return out
