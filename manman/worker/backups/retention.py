"""Which backups a server's retention limits remove: pure, for the manager to apply."""

from __future__ import annotations

from manman.models import BackupSpec
from manman.worker.backups.model import Backup

DAY = 86400.0


def to_prune(backups: list[Backup], spec: BackupSpec, now: float) -> list[Backup]:
    """The oldest unlocked `ok` backups over `keep_last`, older than `keep_days`, or beyond
    `max_bytes` in all (0: no such limit). A locked backup is never pruned, and neither is
    the newest: a limit smaller than one backup keeps that one."""
    kept = sorted((b for b in backups if b.state == "ok"), key=lambda b: b.created_at)
    if not kept:
        return []
    newest = kept[-1]
    out: list[Backup] = []

    def drop(b: Backup) -> None:
        out.append(b)
        kept.remove(b)

    if spec.keep_days:
        for b in [b for b in kept if not b.locked and b is not newest
                  and now - b.created_at > spec.keep_days * DAY]:
            drop(b)
    if spec.keep_last:
        while len(kept) > spec.keep_last:
            victim = next((b for b in kept if not b.locked and b is not newest), None)
            if victim is None:
                break
            drop(victim)
    if spec.max_bytes:
        while sum(b.bytes for b in kept) > spec.max_bytes:
            victim = next((b for b in kept if not b.locked and b is not newest), None)
            if victim is None:
                break
            drop(victim)
    return out


MAX_FAILED = 10  # failed records kept per server: a backup failing every minute adds one each


def failed_to_forget(backups: list[Backup]) -> list[Backup]:
    """The unlocked `failed` records beyond the newest MAX_FAILED (they have no archive;
    without a bound they grow the list, the store and every report forever)."""
    failed = sorted((b for b in backups if b.state == "failed"), key=lambda b: b.created_at)
    return [b for b in failed[:-MAX_FAILED] if not b.locked]
