"""The wire types of the backup routes (docs/spec.md, "Backups")."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

BackupState = Literal["pending", "running", "ok", "failed"]
BackupName = Annotated[str, Meta(min_length=1, max_length=128,
                                 extra_json_schema={"pattern": r"^[^\x00-\x1f\x7f]*$"})]


class Backup(msgspec.Struct, kw_only=True):
    id: str
    server_id: str
    name: str
    state: BackupState
    bytes: int = 0
    sha256: str | None = None
    locked: bool = False
    created_at: float
    finished_at: float | None = None
    error: str | None = None
    # bytes of the files read into it so far (all of them once `ok`), and, while it runs,
    # the files' size on disk when it began (an estimate for a progress bar), else null
    read_bytes: int = 0
    total_bytes: int | None = None


class BackupList(msgspec.Struct):
    backups: list[Backup]


class BackupCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: BackupName | None = None
    locked: bool = False

    def __post_init__(self) -> None:
        if self.name is not None and any(ord(c) < 32 or ord(c) == 127 for c in self.name):
            raise ValueError("name must not contain control characters")


class BackupLock(msgspec.Struct, forbid_unknown_fields=True):
    locked: bool


class RestoreBody(msgspec.Struct, forbid_unknown_fields=True):
    truncate: bool = False  # empty the files directory first


class Deleted(msgspec.Struct):
    id: str
    deleted: bool
