"""The file manager's routes on the host: each relayed to the server's worker, which does the
path checks (manman.worker.files); file bodies are streamed both ways, never held whole."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import msgspec
import trio
from quart import Response, request

from manman import errors
from manman.host import audit
from manman.host.control import HostControl
from manman.host.fleet import WorkerRec
from manman.http.app import Api
from manman.http.auth import Principal
from manman.worker.files.routes import (
    PAGE,
    ArchiveBody,
    ExtractBody,
    Ok,
    PathBody,
    RenameBody,
)
from manman.worker.files.safe import Entry, Listing

SLOW_CALL = 60.0  # deleting or moving a large tree takes a while on the worker
EXTRACT_CALL = 1800.0  # the worker answers an extraction once all is written


def _json(content: bytes) -> Response:
    return Response(content, content_type="application/json")


async def _relay_body(r: httpx.Response) -> AsyncIterator[bytes]:
    """The worker's body as it comes; the upstream answer is closed however this ends (a
    viewer that goes away cancels it)."""
    try:
        async for chunk in r.aiter_raw():
            yield chunk
    finally:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await r.aclose()


async def _request_chunks() -> AsyncIterator[bytes]:
    async for chunk in request.body:
        yield chunk


def add_file_routes(api: Api, control: HostControl) -> None:
    relay = control.relay

    def target(server_id: str) -> tuple[WorkerRec, str]:
        s = control.server(server_id)
        return control.reachable_worker(s), s.id

    def passed(*names: str) -> dict[str, str]:
        return {n: v for n in names if (v := request.args.get(n)) is not None}

    @api.route("GET", "/server/{server_id}/files", response=Listing,
               query={"path": "string", "cursor": "string", "limit": PAGE},
               errors=(403, 404, 422, 502, 503), summary="A directory of the server's files")
    async def list_files(who: Principal, server_id: str) -> Response:
        w, sid = target(server_id)
        return _json(await relay.call(w, "GET", f"/server/{sid}/files",
                                      params=passed("path", "cursor", "limit")))

    @api.route("GET", "/server/{server_id}/files/content", query={"path": "string"},
               media="application/octet-stream", errors=(403, 404, 422, 502, 503),
               summary="A file's bytes, streamed from the worker")
    async def read_file(who: Principal, server_id: str) -> Response:
        w, sid = target(server_id)
        r = await relay.open_stream(w, "GET", f"/server/{sid}/files/content",
                                    params=passed("path"))
        resp = Response(_relay_body(r), content_type="application/octet-stream")
        if "content-length" in r.headers:
            resp.headers["Content-Length"] = r.headers["content-length"]
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp

    @api.route("PUT", "/server/{server_id}/files/content", query={"path": "string"},
               response=Entry, errors=(403, 404, 411, 413, 422, 502, 503, 507), stream_body=True,
               summary="Write a file: the raw body, streamed to the worker (which checks "
                       "the size against its files_max_upload before writing)")
    async def write_file(who: Principal, server_id: str) -> Response:
        length = request.content_length
        audit.note(detail=audit.detail_of({"path": request.args.get("path"), "bytes": length}))
        w, sid = target(server_id)
        if length is None:
            raise errors.LengthRequired("an upload must declare its size (Content-Length)")
        r = await relay.open_stream(w, "PUT", f"/server/{sid}/files/content",
                                    params=passed("path"), content=_request_chunks(),
                                    headers={"Content-Length": str(length)})
        try:
            return _json(await r.aread())
        finally:
            await r.aclose()

    async def post(server_id: str, verb: str, body: msgspec.Struct,
                   timeout: float = SLOW_CALL) -> Response:
        audit.note(detail=audit.detail_of(body))  # its paths: what the call changes
        w, sid = target(server_id)
        return _json(await relay.call(w, "POST", f"/server/{sid}/files/{verb}",
                                      json=msgspec.to_builtins(body), timeout=timeout))

    @api.route("POST", "/server/{server_id}/files/mkdir", body=PathBody, response=Entry,
               errors=(403, 404, 409, 422, 502, 503), summary="Make a directory")
    async def mkdir(who: Principal, server_id: str, body: PathBody) -> Response:
        return await post(server_id, "mkdir", body)

    @api.route("POST", "/server/{server_id}/files/rename", body=RenameBody, response=Entry,
               errors=(403, 404, 409, 422, 502, 503),
               summary="Move a file or directory (an existing target is not replaced)")
    async def rename(who: Principal, server_id: str, body: RenameBody) -> Response:
        return await post(server_id, "rename", body)

    @api.route("POST", "/server/{server_id}/files/delete", body=PathBody, response=Ok,
               errors=(403, 404, 422, 502, 503),
               summary="Delete a file, a link (not its target) or a directory with all in it")
    async def delete(who: Principal, server_id: str, body: PathBody) -> Response:
        return await post(server_id, "delete", body)

    @api.route("POST", "/server/{server_id}/files/extract", body=ExtractBody, response=Entry,
               errors=(403, 404, 409, 422, 502, 503, 507),
               summary="Extract an archive into a new directory, all or nothing")
    async def extract(who: Principal, server_id: str, body: ExtractBody) -> Response:
        return await post(server_id, "extract", body, EXTRACT_CALL)

    @api.route("POST", "/server/{server_id}/files/archive", body=ArchiveBody, response=Entry,
               errors=(403, 404, 422, 502, 503, 507),
               summary="Make an archive of some of the server's files")
    async def archive(who: Principal, server_id: str, body: ArchiveBody) -> Response:
        return await post(server_id, "archive", body, EXTRACT_CALL)
