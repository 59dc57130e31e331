"""The backup routes on the host: each relayed to the server's worker, which keeps the
backups (manman.worker.backups); an archive is streamed through, never held whole. A server
whose worker is away answers 503."""

from __future__ import annotations

import msgspec
from quart import Response

from manman.host.control import HostControl
from manman.host.files import _json, _relay_body
from manman.http.app import Api
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
               errors=(404, 502, 503), summary="The server's backups, oldest first")
    async def list_backups(who: Principal, server_id: str) -> Response:
        return _json(await call("GET", server_id))

    @api.route("POST", "/server/{server_id}/backup", body=BackupCreate, response=Backup,
               status=202, errors=(404, 409, 502, 503, 507),
               summary="Make a backup of the server's files, in the background")
    async def create_backup(who: Principal, server_id: str, body: BackupCreate) -> Response:
        resp = _json(await call("POST", server_id, body=body))
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
        return _json(await call("PUT", server_id, f"/{backup_id}", body))

    @api.route("DELETE", "/server/{server_id}/backup/{backup_id}", response=Deleted,
               errors=(404, 409, 502, 503, 507), summary="Delete an unlocked backup")
    async def delete_backup(who: Principal, server_id: str, backup_id: str) -> Response:
        return _json(await call("DELETE", server_id, f"/{backup_id}"))

    @api.route("POST", "/server/{server_id}/backup/{backup_id}/restore", body=RestoreBody,
               response=Backup, errors=(404, 409, 422, 502, 503, 507),
               summary="Restore a backup into the stopped server's files")
    async def restore_backup(who: Principal, server_id: str, backup_id: str,
                             body: RestoreBody) -> Response:
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
