"""The backup routes on the host: each relayed to the server's worker, which keeps the
backups (manman.worker.backups); an archive is streamed through, never held whole. A server
whose worker is away answers 503."""

from __future__ import annotations

import time

import msgspec
from quart import Response

from manman import errors
from manman.host import audit
from manman.host.control import HostControl
from manman.host.files import _json, _relay_body
from manman.host.relay import Unreachable
from manman.http.app import Api, json_response
from manman.http.auth import Principal
from manman.worker.backups.model import (
    Backup,
    BackupCreate,
    BackupList,
    BackupLock,
    Deleted,
    RestoreBody,
)

RESTORE_CALL = 3600.0  # the worker answers a restore once all is written

# a worker's report replaces the server's list whole, in one statement (an id of another
# server's backup is left alone: a worker may not rewrite another's records)
_REPLACE = """
WITH incoming AS (SELECT r->>'id' AS id, r FROM jsonb_array_elements($2::jsonb) AS r),
gone AS (DELETE FROM backups WHERE server_id = $1
         AND id NOT IN (SELECT id FROM incoming))
INSERT INTO backups (id, server_id, record, updated_at)
SELECT id, $1, r, $3 FROM incoming
ON CONFLICT (id) DO UPDATE SET record = excluded.record, updated_at = excluded.updated_at
WHERE backups.server_id = excluded.server_id
"""
_STATES = "SELECT id, record->>'state' AS state FROM backups WHERE server_id = $1"
_LIST = ("SELECT record FROM backups WHERE server_id = $1 "
         "ORDER BY (record->>'created_at')::double precision")


def _decode_backup(content: bytes) -> Backup:
    try:
        return msgspec.json.decode(content, type=Backup)
    except msgspec.MsgspecError:
        raise errors.WorkerError("the worker answered something that is not a backup"
                                 ) from None


class Ack(msgspec.Struct):
    ok: bool


def add_backup_routes(api: Api, control: HostControl) -> None:
    relay = control.relay

    async def call(method: str, server_id: str, tail: str = "",
                   body: msgspec.Struct | None = None, timeout: float = 30.0) -> bytes:
        s = control.server(server_id)
        w = control.reachable_worker(s)
        return await relay.call(w, method, f"/server/{s.id}/backup{tail}",
                                json=None if body is None else msgspec.to_builtins(body),
                                timeout=timeout)

    @api.route("GET", "/server/{server_id}/backup", response=BackupList,
               errors=(404, 502, 503),
               summary="The server's backups, oldest first (while its worker is away, as "
                       "the worker last reported them)")
    async def list_backups(who: Principal, server_id: str) -> Response:
        s = control.server(server_id)
        if control.fleet.reachable(control.worker(s.worker_id)):
            try:
                return _json(await call("GET", server_id))
            except Unreachable:
                pass  # gone since its last heartbeat: its last report answers
        rows = await control.store.fetch(_LIST, s.id)
        return json_response(BackupList([msgspec.convert(r["record"], Backup) for r in rows]))

    @api.route("POST", "/server/{server_id}/backup-report", auth="report", body=BackupList,
               response=Ack, errors=(403, 404, 422, 503),
               summary="A worker's report of one of its servers' backups: the whole list")
    async def backup_report(who: Principal, server_id: str, body: BackupList) -> Response:
        s = control.server(server_id)
        if s.worker_id != who.worker_id:
            raise errors.Forbidden("this server belongs to another worker")
        if any(b.server_id != s.id for b in body.backups):
            raise errors.Invalid("a backup of another server is in the report")
        watcher = control.fleet.watcher
        if watcher is not None and not watcher.derives(s):
            watcher = None  # no hook, or a worker that sends its events: no read
        before: dict[str, str] = {}
        if watcher is not None:  # what ended since the last report is an event (webhooks)
            rows = await control.store.fetch(_STATES, s.id)
            before = {r["id"]: r["state"] for r in rows}
        await control.store.execute(_REPLACE, s.id, body.backups, time.time(),
                                    what="the backup list")
        control.last_backups.reported(s.id, body.backups)
        if watcher is not None:
            watcher.backups_changed(s, before, msgspec.to_builtins(body.backups))
        return json_response(Ack(True))

    @api.route("POST", "/server/{server_id}/backup", body=BackupCreate, response=Backup,
               status=202, errors=(404, 409, 502, 503, 507),
               summary="Make a backup of the server's files, in the background")
    async def create_backup(who: Principal, server_id: str, body: BackupCreate) -> Response:
        audit.note(detail=audit.detail_of(body))
        content = await call("POST", server_id, body=body)
        made = _decode_backup(content)
        audit.note(detail=audit.detail_of({"backup": made.id, "name": made.name,
                                           "locked": made.locked}))
        resp = _json(content)
        resp.status_code = 202
        return resp

    @api.route("GET", "/server/{server_id}/backup/{backup_id}", response=Backup,
               errors=(404, 502, 503), summary="One backup")
    async def get_backup(who: Principal, server_id: str, backup_id: str) -> Response:
        return _json(await call("GET", server_id, f"/{backup_id}"))

    @api.route("PUT", "/server/{server_id}/backup/{backup_id}", body=BackupLock,
               response=Backup, errors=(404, 502, 503, 507),
               summary="Lock a backup (never pruned nor deleted) or unlock it")
    async def lock_backup(who: Principal, server_id: str, backup_id: str,
                          body: BackupLock) -> Response:
        audit.note(detail=audit.detail_of({"backup": backup_id, "locked": body.locked}))
        return _json(await call("PUT", server_id, f"/{backup_id}", body))

    @api.route("DELETE", "/server/{server_id}/backup/{backup_id}", response=Deleted,
               errors=(404, 409, 502, 503, 507), summary="Delete an unlocked backup")
    async def delete_backup(who: Principal, server_id: str, backup_id: str) -> Response:
        audit.note(detail=audit.detail_of({"backup": backup_id}))
        return _json(await call("DELETE", server_id, f"/{backup_id}"))

    @api.route("POST", "/server/{server_id}/backup/{backup_id}/restore", body=RestoreBody,
               response=Backup, errors=(404, 409, 422, 502, 503, 507),
               summary="Restore a backup into the stopped server's files")
    async def restore_backup(who: Principal, server_id: str, backup_id: str,
                             body: RestoreBody) -> Response:
        audit.note(detail=audit.detail_of({"backup": backup_id, "truncate": body.truncate}))
        return _json(await call("POST", server_id, f"/{backup_id}/restore", body,
                                RESTORE_CALL))

    @api.route("GET", "/server/{server_id}/backup/{backup_id}/download",
               media="application/zstd", errors=(404, 409, 502, 503),
               summary="The backup's tar.zst archive, streamed from the worker")
    async def download_backup(who: Principal, server_id: str, backup_id: str) -> Response:
        s = control.server(server_id)
        w = control.reachable_worker(s)
        r = await relay.open_stream(w, "GET", f"/server/{s.id}/backup/{backup_id}/download",
                                    params={})
        resp = Response(_relay_body(r), content_type="application/zstd")
        for header in ("content-length", "content-disposition"):
            if header in r.headers:
                resp.headers[header] = r.headers[header]
        return resp
