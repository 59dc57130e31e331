"""The worker's limits of exec and steamcmd servers: which cgroup hierarchy it has (detected
at start), whether it enforces them (worker.limits), and each server's cgroup."""

from __future__ import annotations

import logging
from typing import Literal

from manman import errors
from manman.models import Limits, ServerSpec
from manman.worker.limits import cgroups
from manman.worker.limits.cgroups import Hierarchy, Mode, ServerCgroup

log = logging.getLogger("manman.worker.limits")

Setting = Literal["enforce", "monitor"]


def cgroup_limited(spec: ServerSpec) -> bool:
    """A spec whose limits a cgroup of this worker must enforce (docker has its own)."""
    return spec.install_method != "docker" and bool(cgroups.enforced(spec.limits))


def refusal(capacity: dict[str, object], spec: ServerSpec) -> str | None:
    """The host's check against what its worker reported at registration (`limits`,
    `limits_setting`): the reason to refuse, or None. A worker that said nothing (an older
    one) is not second-guessed: it refuses the spec itself when it cannot start it."""
    if capacity.get("limits") == "none" and capacity.get("limits_setting") == "enforce" \
            and cgroup_limited(spec):
        return (f"limits {', '.join(cgroups.enforced(spec.limits))} cannot be enforced on "
                "this worker: it has no writable cgroup (its worker.limits = \"monitor\" "
                "would run them watched only)")
    return None


class WorkerLimits:
    def __init__(self, setting: Setting = "enforce", root: str = cgroups.ROOT) -> None:
        self.setting: Setting = setting
        self.root = root
        self.hierarchy = Hierarchy("none", reason="not detected yet")
        self.owner = ""

    def start(self, owner: str) -> None:
        """At the worker's start (blocking I/O: a few files of /sys/fs/cgroup)."""
        self.owner = owner
        self.hierarchy = cgroups.detect(self.root)
        if self.hierarchy.mode == "none":
            log.warning("no writable cgroup: limits of exec servers are %s (%s)",
                        "refused" if self.enforcing else "watched only",
                        self.hierarchy.reason)

    @property
    def mode(self) -> Mode:
        return self.hierarchy.mode

    @property
    def enforcing(self) -> bool:
        return self.setting == "enforce"

    def capacity(self) -> dict[str, str]:
        """What the worker's /status and its host's worker view show."""
        return {"limits": self.mode, "limits_setting": self.setting}

    def check(self, spec: ServerSpec) -> None:
        """Refuse (422) limits this worker cannot enforce: never ignored silently."""
        if cgroup_limited(spec) and self.mode == "none" and self.enforcing:
            raise errors.Invalid(
                f"limits {', '.join(cgroups.enforced(spec.limits))} cannot be enforced on "
                f"this worker: no writable cgroup ({self.hierarchy.reason}); remove them, or "
                "set worker.limits = \"monitor\" to run with them watched only")

    def group(self, server_id: str) -> ServerCgroup | None:
        if self.mode == "none" or not self.owner:
            return None
        return ServerCgroup(self.hierarchy, self.owner, server_id)

    def applied(self, spec: ServerSpec) -> Limits | None:
        """What is written to the cgroup: the spec's limits, or none in monitor mode."""
        return spec.limits if self.enforcing else None

    def recover(self, known: set[str]) -> tuple[list[int], list[str]]:
        """At start, before any server runs: the cgroups of this worker's servers stay, the
        processes an earlier worker left in them killed; those of servers it no longer has
        go. Returns (pids killed, server ids whose cgroup was removed)."""
        killed: list[int] = []
        removed: list[str] = []
        for sid in sorted(cgroups.server_ids(self.hierarchy, self.owner)):
            group = self.group(sid)
            if group is None:
                continue
            if sid in known:
                killed += group.kill_all()
            elif group.remove():
                removed.append(sid)
        return killed, removed

    def remove(self, server_id: str) -> None:
        group = self.group(server_id)
        if group is not None and not group.remove():
            log.warning("cannot remove the cgroup of server %s", server_id)

    def close(self, server_ids: set[str]) -> None:
        """A stopped worker: its (empty) cgroups go; a killed one finds them at its start."""
        for sid in server_ids | cgroups.server_ids(self.hierarchy, self.owner):
            self.remove(sid)
        cgroups.remove_owner(self.hierarchy, self.owner)
