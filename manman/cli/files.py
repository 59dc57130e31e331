"""`manman files ls|get|put|mkdir|mv|rm SERVER PATH`: a server's files through the host.
File bodies are streamed (never held whole); stdin is spooled to a temporary file first,
because an upload must declare its size."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import IO, Any

import httpx

from manman.cli.client import ClientError, HostClient

CHUNK = 256 * 1024


def add_files_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser,
                       verb_common: argparse.ArgumentParser, out: argparse.ArgumentParser,
                       run: Any) -> None:
    files = sub.add_parser("files", parents=[common],
                           help="list, read, write and delete a server's files")
    verbs = files.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("ls", parents=[verb_common, out], help="list a directory")
    p.add_argument("server", help="id or name")
    p.add_argument("path", nargs="?", default="", help="below the files directory")
    p.set_defaults(func=run(cmd_ls))
    p = verbs.add_parser("get", parents=[verb_common], help="print or save a file")
    p.add_argument("server", help="id or name")
    p.add_argument("path")
    p.add_argument("-o", "--output", help="write it here (default: stdout)")
    p.set_defaults(func=run(cmd_get))
    p = verbs.add_parser("put", parents=[verb_common, out], help="write a file")
    p.add_argument("server", help="id or name")
    p.add_argument("path")
    p.add_argument("file", nargs="?", default="-", help="the local file (default: stdin)")
    p.set_defaults(func=run(cmd_put))
    p = verbs.add_parser("mkdir", parents=[verb_common, out], help="make a directory")
    p.add_argument("server", help="id or name")
    p.add_argument("path")
    p.set_defaults(func=run(cmd_mkdir))
    p = verbs.add_parser("mv", parents=[verb_common, out], help="move a file or directory")
    p.add_argument("server", help="id or name")
    p.add_argument("path")
    p.add_argument("to")
    p.set_defaults(func=run(cmd_mv))
    p = verbs.add_parser("rm", parents=[verb_common, out], help="delete a file or a directory")
    p.add_argument("server", help="id or name")
    p.add_argument("path")
    p.set_defaults(func=run(cmd_rm))


def _base(client: HostClient, server: str) -> str:
    return f"/server/{client.server(server)['id']}/files"


def _refusal(r: httpx.Response) -> ClientError:
    try:
        err = json.loads(r.read())["error"]
        return ClientError(f"{err['message']} ({r.status_code} {err['code']})")
    except (ValueError, KeyError, TypeError):
        return ClientError(f"host answered {r.status_code}")


def cmd_ls(args: argparse.Namespace, client: HostClient) -> int:
    base = _base(client, args.server)
    entries: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"path": args.path, "limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = client.call("GET", base, params=params)
        entries += page["entries"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["mtime"]))
        name = e["name"] + ("/" if e["type"] == "dir" else "")
        if e["type"] == "link":
            name += f" -> {e['target']}"
        print(f"{e['type']:<5} {e['mode']:04o} {e['size']:>12} {when}  {name}")
    return 0


def cmd_get(args: argparse.Namespace, client: HostClient) -> int:
    base = _base(client, args.server)
    try:
        with client.http.stream("GET", base + "/content", params={"path": args.path},
                                timeout=60) as r:
            if r.status_code != 200:
                raise _refusal(r)
            if args.output:
                _save(r, args.output)
            else:
                for chunk in r.iter_raw(CHUNK):
                    sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
    except httpx.HTTPError as e:
        raise ClientError(f"the transfer failed: {type(e).__name__}") from None
    return 0


def _save(r: httpx.Response, output: str) -> None:
    """Into a temporary file beside `output`, renamed over it once whole."""
    folder = os.path.dirname(os.path.abspath(output))
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".manman-get-")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in r.iter_raw(CHUNK):
                f.write(chunk)
        os.replace(temp, output)
    except BaseException:
        os.unlink(temp)
        raise


def _source(name: str) -> IO[bytes]:
    """The file to upload, open; stdin spooled to a temporary file (its size is needed)."""
    if name == "-":
        spooled = tempfile.TemporaryFile()  # noqa: SIM115 (the caller closes it)
        shutil.copyfileobj(sys.stdin.buffer, spooled, CHUNK)
        spooled.flush()  # its size is read with fstat
        return spooled
    try:
        return open(name, "rb")
    except OSError as e:
        raise ClientError(f"cannot read {name}: {e.strerror}") from None


def cmd_put(args: argparse.Namespace, client: HostClient) -> int:
    base = _base(client, args.server)
    source = _source(args.file)
    try:
        size = os.fstat(source.fileno()).st_size
        source.seek(0)

        def chunks() -> Any:
            left = size
            while left > 0:
                data = source.read(min(CHUNK, left))
                if not data:
                    break
                left -= len(data)
                yield data

        try:
            r = client.http.put(base + "/content", params={"path": args.path},
                                content=chunks(), timeout=60,
                                headers={"Content-Length": str(size)})
        except httpx.HTTPError as e:
            raise ClientError(f"the upload failed: {type(e).__name__}") from None
    finally:
        source.close()
    if r.status_code != 200:
        raise _refusal(r)
    entry = r.json()
    if args.json:
        print(json.dumps(entry, indent=2))
    else:
        print(f"{args.path}: {entry['size']} bytes written")
    return 0


def cmd_mkdir(args: argparse.Namespace, client: HostClient) -> int:
    e = client.call("POST", _base(client, args.server) + "/mkdir", json={"path": args.path})
    print(json.dumps(e, indent=2) if args.json else f"{args.path}: made")
    return 0


def cmd_mv(args: argparse.Namespace, client: HostClient) -> int:
    e = client.call("POST", _base(client, args.server) + "/rename",
                    json={"from": args.path, "to": args.to})
    print(json.dumps(e, indent=2) if args.json else f"{args.path} -> {args.to}")
    return 0


def cmd_rm(args: argparse.Namespace, client: HostClient) -> int:
    r = client.call("POST", _base(client, args.server) + "/delete", json={"path": args.path})
    print(json.dumps(r, indent=2) if args.json else f"{args.path}: deleted")
    return 0
