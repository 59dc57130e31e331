"""The backup routes on the worker (docs/spec.md, "Backups")."""

from __future__ import annotations

import os

import trio
from quart import Response

from manman.http.app import Api, json_response
from manman.http.auth import Principal
from manman.worker.agent import WorkerAgent
from manman.worker.backups.manager import BackupManager
from manman.worker.backups.model import (
    Backup,
    BackupCreate,
    BackupList,
    BackupLock,
    Deleted,
    RestoreBody,
)
from manman.worker.files.routes import file_chunks


def _open(path: str) -> tuple[int, int]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return fd, os.fstat(fd).st_size


def add_backup_routes(api: Api, agent: WorkerAgent, backups: BackupManager) -> None:
    @api.route("GET", "/server/{server_id}/backup", response=BackupList,
               summary="The server's backups, oldest first")
    async def list_backups(who: Principal, server_id: str) -> Response:
        return json_response(BackupList(backups.of_server(agent.get(server_id).id)))

    @api.route("POST", "/server/{server_id}/backup", body=BackupCreate, response=Backup,
               status=202, errors=(409, 507),
               summary="Make a backup of the server's files, in the background (one at a "
                       "time per server)")
    async def create_backup(who: Principal, server_id: str, body: BackupCreate) -> Response:
        return json_response(await backups.create(agent.get(server_id), body), 202)

    @api.route("GET", "/server/{server_id}/backup/{backup_id}", response=Backup,
               summary="One backup")
    async def get_backup(who: Principal, server_id: str, backup_id: str) -> Response:
        return json_response(backups.get(agent.get(server_id).id, backup_id))

    @api.route("PUT", "/server/{server_id}/backup/{backup_id}", body=BackupLock,
               response=Backup, errors=(507,),
               summary="Lock a backup (never pruned nor deleted) or unlock it")
    async def lock_backup(who: Principal, server_id: str, backup_id: str,
                          body: BackupLock) -> Response:
        return json_response(await backups.set_locked(agent.get(server_id).id, backup_id,
                                                      body.locked))

    @api.route("DELETE", "/server/{server_id}/backup/{backup_id}", response=Deleted,
               errors=(409, 507), summary="Delete an unlocked backup and its archive")
    async def delete_backup(who: Principal, server_id: str, backup_id: str) -> Response:
        await backups.delete(agent.get(server_id).id, backup_id)
        return json_response(Deleted(backup_id, True))

    @api.route("POST", "/server/{server_id}/backup/{backup_id}/restore", body=RestoreBody,
               response=Backup, errors=(409, 422, 507),
               summary="Restore a backup into the stopped server's files (sha256 checked "
                       "first; truncate: empty the files directory first)")
    async def restore_backup(who: Principal, server_id: str, backup_id: str,
                             body: RestoreBody) -> Response:
        return json_response(await backups.restore(agent.get(server_id), backup_id,
                                                   body.truncate))

    @api.route("GET", "/server/{server_id}/backup/{backup_id}/download",
               media="application/zstd", errors=(409,),
               summary="The backup's tar.zst archive, streamed")
    async def download_backup(who: Principal, server_id: str, backup_id: str) -> Response:
        path = backups.open_archive(agent.get(server_id).id, backup_id)
        fd, size = await trio.to_thread.run_sync(_open, str(path))
        resp = Response(file_chunks(fd, size), content_type="application/zstd")
        resp.headers["Content-Length"] = str(size)
        resp.headers["Content-Disposition"] = f'attachment; filename="{backup_id}.tar.zst"'
        return resp
