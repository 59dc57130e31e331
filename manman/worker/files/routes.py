"""The file manager's routes on the worker: list, read, write (streamed), mkdir, rename,
delete, all beneath the server's files directory (manman.worker.files.safe)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import msgspec
import trio
from quart import Response, request

from manman import errors
from manman.http.app import Api, json_response, query_int
from manman.http.auth import Principal
from manman.worker.files.archive import make_archive
from manman.worker.files.extract import extract as extract_archive
from manman.worker.files.safe import Entry, FilesTree, Listing

CHUNK = 256 * 1024
WRITE_BATCH = 1 << 20  # bytes gathered before one write in a thread
IDLE_TIMEOUT = 60.0  # an upload that sends nothing for this long is dropped
PAGE: dict[str, object] = {"type": "integer", "minimum": 1, "maximum": 10000}


class PathBody(msgspec.Struct, forbid_unknown_fields=True):
    path: str


class RenameBody(msgspec.Struct, forbid_unknown_fields=True):
    from_: str = msgspec.field(name="from")
    to: str


class ExtractBody(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    to: str | None = None  # a new directory; default: beside the archive, named after it


class ArchiveBody(msgspec.Struct, forbid_unknown_fields=True):
    to: str  # the archive's path; its suffix names the format
    paths: list[str] = msgspec.field(default_factory=list)  # none: the whole directory


class Ok(msgspec.Struct):
    ok: bool


def query_path() -> str:
    return request.args.get("path", "")


def declared_length(limit: int) -> int:
    """The upload's Content-Length, checked against `limit` before any byte is read."""
    length = request.content_length
    if length is None:
        raise errors.LengthRequired("an upload must declare its size (Content-Length)")
    if length > limit:
        raise errors.TooLarge(f"the upload is {length} bytes; at most {limit} are accepted")
    return length


async def file_chunks(fd: int, size: int) -> AsyncIterator[bytes]:
    """`size` bytes of `fd` (what it had when opened), then it is closed."""
    try:
        offset = 0
        while offset < size:
            data = await trio.to_thread.run_sync(os.pread, fd, min(CHUNK, size - offset),
                                                 offset)
            if not data:  # the file shrank: the client sees a short body
                return
            offset += len(data)
            yield data
    finally:
        os.close(fd)


class DiskRoom(Protocol):
    """A server's disk limit, as the file manager needs it (manman.worker.disk)."""

    async def room(self, server_id: str) -> int | None:
        """Bytes the limit leaves now (None: no limit)."""

    async def freed(self, server_id: str) -> None:
        """Files were deleted: judge the limit again now."""


def add_file_routes(api: Api, files_of: Callable[[str], FilesTree], max_upload: int,
                    max_extract: int, disk: DiskRoom | None = None) -> None:
    """`files_of(server_id)`: that server's tree (NotFound for no such server)."""

    async def run(fn: Callable[..., object], *args: object) -> object:
        return await trio.to_thread.run_sync(fn, *args)

    @api.route("GET", "/server/{server_id}/files", response=Listing,
               query={"path": "string", "cursor": "string", "limit": PAGE},
               errors=(403, 404, 422), summary="A directory of the server's files, by name")
    async def list_files(who: Principal, server_id: str) -> Response:
        tree = files_of(server_id)
        limit = query_int("limit", 1000, lo=1, hi=10000)
        listing = await run(tree.list, query_path(), request.args.get("cursor"), limit)
        return json_response(listing)

    @api.route("GET", "/server/{server_id}/files/content", query={"path": "string"},
               media="application/octet-stream", errors=(403, 404, 422),
               summary="A file's bytes, streamed")
    async def read_file(who: Principal, server_id: str) -> Response:
        tree = files_of(server_id)
        opened = await run(tree.open_read, query_path())
        assert isinstance(opened, tuple)
        fd, size = opened
        resp = Response(file_chunks(fd, size), content_type="application/octet-stream")
        resp.headers["Content-Length"] = str(size)
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp

    @api.route("PUT", "/server/{server_id}/files/content", query={"path": "string"},
               response=Entry, errors=(403, 404, 411, 413, 422, 507), stream_body=True,
               summary="Write a file: the raw body, streamed to a temporary file, then "
                       "renamed over the target")
    async def write_file(who: Principal, server_id: str) -> Response:
        tree = files_of(server_id)
        length = declared_length(max_upload)
        room = await disk.room(server_id) if disk is not None else None
        if room is not None and length > room:  # before a byte is read
            raise errors.DiskLimit(f"the upload is {length} bytes; the server's disk limit "
                                   f"(limits.disk_mb) leaves room for {max(room, 0)}")
        upload = await trio.to_thread.run_sync(tree.upload, query_path())
        try:
            received = 0
            batch = bytearray()
            chunks = request.body.__aiter__()
            while True:
                with trio.move_on_after(IDLE_TIMEOUT) as idle:
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                if idle.cancelled_caught:
                    raise errors.BadRequest("the upload stalled")
                received += len(chunk)
                if received > length:
                    raise errors.Invalid("the body is longer than its Content-Length")
                batch += chunk
                if len(batch) >= WRITE_BATCH:
                    await trio.to_thread.run_sync(upload.write, bytes(batch))
                    batch.clear()
            if received != length:
                raise errors.Invalid(f"the body ended after {received} of its "
                                     f"{length} bytes")
            await trio.to_thread.run_sync(upload.write, bytes(batch))
            written = await trio.to_thread.run_sync(upload.commit)
        finally:
            upload.close()  # nothing is left behind unless committed (a cancel too)
        return json_response(written)

    @api.route("POST", "/server/{server_id}/files/mkdir", body=PathBody, response=Entry,
               errors=(403, 404, 409, 422), summary="Make a directory (its parent must exist)")
    async def mkdir(who: Principal, server_id: str, body: PathBody) -> Response:
        return json_response(await run(files_of(server_id).mkdir, body.path))

    @api.route("POST", "/server/{server_id}/files/rename", body=RenameBody, response=Entry,
               errors=(403, 404, 409, 422),
               summary="Move a file or directory (an existing target is not replaced)")
    async def rename(who: Principal, server_id: str, body: RenameBody) -> Response:
        return json_response(await run(files_of(server_id).rename, body.from_, body.to))

    @api.route("POST", "/server/{server_id}/files/delete", body=PathBody, response=Ok,
               errors=(403, 404, 422),
               summary="Delete a file, a link (not its target) or a directory with all in it")
    async def delete(who: Principal, server_id: str, body: PathBody) -> Response:
        await run(files_of(server_id).delete, body.path)
        if disk is not None:  # back under its limit: startable now, not at the next check
            await disk.freed(server_id)
        return json_response(Ok(True))

    @api.route("POST", "/server/{server_id}/files/extract", body=ExtractBody, response=Entry,
               errors=(403, 404, 409, 422, 507),
               summary="Extract a tar, tar.gz/bz2/xz/zst or zip archive into a new directory, "
                       "all or nothing (a bad member refuses the whole archive)")
    async def extract(who: Principal, server_id: str, body: ExtractBody) -> Response:
        tree = files_of(server_id)
        room = await disk.room(server_id) if disk is not None else None
        return json_response(await run(extract_archive, tree, body.path, body.to, max_extract,
                                       room))

    @api.route("POST", "/server/{server_id}/files/archive", body=ArchiveBody, response=Entry,
               errors=(403, 404, 422, 507),
               summary="Make a tar, tar.gz, tar.zst or zip archive of some files (links kept "
                       "as links, never followed)")
    async def archive(who: Principal, server_id: str, body: ArchiveBody) -> Response:
        tree = files_of(server_id)
        return json_response(await run(make_archive, tree, body.paths, body.to))
