"""Records the host accepted but PostgreSQL does not hold yet (the audit trail, observed
states), kept on disk in `<host data_dir>/pending-commands.jsonl` until it does.

Each flush appends its batch, one JSON line a record, with one write and one fsync, before
the batch goes to PostgreSQL; once PostgreSQL holds every record the file is emptied. A
host that crashes finds them at its next start and writes them again: command rows are
inserted with ON CONFLICT DO NOTHING and observed states are plain updates, so a record
written twice is harmless. The file is bounded (SPOOL_BOUND): what does not fit is dropped
and counted, never the records already kept.

Blocking file I/O: the host calls these methods in a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

log = logging.getLogger("manman.host.spool")

SPOOL_BOUND = 64 << 20
FILE_NAME = "pending-commands.jsonl"

CommandRow = tuple[Any, ...]  # the `audit` table's columns, in order (manman.host.audit)
ObservedRow = tuple[str, Any, int]  # server id, observed state, observed generation


class Record(msgspec.Struct, array_like=True):
    kind: str  # "audit" | "observed" ("command": a row of the table before `audit`)
    row: list[Any]


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Record).decode


class Spool:
    def __init__(self, path: Path, bound: int = SPOOL_BOUND) -> None:
        self.path = path
        self.bound = bound
        self.size = 0  # bytes of records kept (on disk, or in memory while the disk fails)
        self.disk_ok = True

    def load(self) -> tuple[list[CommandRow], list[ObservedRow]]:
        """What a previous run left: command rows in order, and the last observed state of
        each server. A line torn by a crash mid-write is cut off the file."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], []
        end = data.rfind(b"\n") + 1
        if end < len(data):  # the tail of a write a crash cut short
            with open(self.path, "r+b") as f:
                f.truncate(end)
            data = data[:end]
        commands: list[CommandRow] = []
        observed: dict[str, ObservedRow] = {}
        bad = 0
        for line in data.splitlines():
            try:
                rec = _decode(line)
            except msgspec.DecodeError:
                bad += 1
                continue
            if rec.kind == "audit":
                commands.append(tuple(rec.row))
            elif rec.kind == "command" and (converted := from_command_row(rec.row)):
                commands.append(converted)
            elif rec.kind == "observed" and len(rec.row) == 3:
                observed[rec.row[0]] = (rec.row[0], rec.row[1], rec.row[2])
        if bad:
            log.warning("%s: skipped %d unreadable lines", self.path, bad)
        self.size = len(data)
        return commands, list(observed.values())

    def append(self, commands: list[CommandRow], observed: list[ObservedRow]
               ) -> tuple[int, int]:
        """Keep a flush's batch: observed states first, then command rows, as many as fit
        within the bound. Returns (command rows kept, observed states kept); the caller drops
        the command rows that did not fit."""
        lines: list[bytes] = []
        room = self.bound - self.size
        kept_observed, room = _fit("observed", observed, room, lines)
        kept_commands, room = _fit("audit", commands, room, lines)
        if lines:
            data = b"".join(lines)
            self._write(data)
            self.size += len(data)
        return kept_commands, kept_observed

    def _write(self, data: bytes) -> None:
        """Append whole lines or none (a short write is cut back), then fsync."""
        created = not self.path.exists()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as e:
            self._disk_failed(e)
            return
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            except OSError as e:
                os.ftruncate(fd, start)
                self._disk_failed(e)
                return
        finally:
            os.close(fd)
        if created:  # the new name itself must survive a power cut
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        if not self.disk_ok:
            self.disk_ok = True
            log.info("%s: writing again", self.path)

    def _disk_failed(self, e: OSError) -> None:
        # the records stay in memory (and count against the bound) until PostgreSQL has them
        if self.disk_ok:
            self.disk_ok = False
            log.warning("%s: cannot write (%s): records wait in memory only", self.path, e)

    def clear(self) -> None:
        """PostgreSQL holds everything: start over with an empty file."""
        if self.size:
            # left as it is, its records are written again at the next start: harmless
            with contextlib.suppress(OSError):
                os.truncate(self.path, 0)
            self.size = 0


def from_command_row(old: list[Any]) -> CommandRow | None:
    """A `commands` row a host before the audit table spooled: the audit row it becomes."""
    if len(old) != 9:
        return None
    cid, at, actor, server_id, worker_id, kind, data, _delivered, result = old
    who, _, source = str(actor).partition("@")
    return (cid, at, who, source, f"server.{kind}", server_id, worker_id,
            f"/server/{server_id or ''}/command", None, data, result)



def _fit(kind: str, rows: Sequence[Sequence[Any]], room: int, lines: list[bytes]
         ) -> tuple[int, int]:
    """Encode rows of one kind onto `lines` while they fit in `room` bytes; returns how many
    fit and the room left."""
    kept = 0
    for row in rows:
        line = _encode(Record(kind, list(row))) + b"\n"
        if len(line) > room:
            break
        lines.append(line)
        room -= len(line)
        kept += 1
    return kept, room
