"""`manman backup create|ls|restore|lock|unlock|rm|download SERVER [ID] [-o FILE]`: a server's
backups through the host. A download is streamed to a temporary file beside its name, with a
progress bar on a terminal."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import httpx

from manman.cli.client import ClientError, HostClient
from manman.cli.files import CHUNK, _refusal

WAIT_POLL = 0.5


def add_backup_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser,
                        verb_common: argparse.ArgumentParser, out: argparse.ArgumentParser,
                        run: Any) -> None:
    backup = sub.add_parser("backup", parents=[common],
                            help="make, list, restore, lock and delete a server's backups")
    verbs = backup.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("create", parents=[verb_common, out], help="make a backup now")
    p.add_argument("server", help="id or name")
    p.add_argument("--name", help="default: the time it is made")
    p.add_argument("--lock", action="store_true", help="never prune it")
    p.add_argument("--no-wait", action="store_true", help="return once it is accepted")
    p.set_defaults(func=run(cmd_create))
    p = verbs.add_parser("ls", parents=[verb_common, out], help="list the backups")
    p.add_argument("server", help="id or name")
    p.set_defaults(func=run(cmd_ls))
    p = verbs.add_parser("restore", parents=[verb_common, out],
                         help="restore a backup into the stopped server")
    p.add_argument("server", help="id or name")
    p.add_argument("id", help="the backup's id")
    p.add_argument("--truncate", action="store_true", help="empty the files directory first")
    p.set_defaults(func=run(cmd_restore))
    for verb, locked in (("lock", True), ("unlock", False)):
        p = verbs.add_parser(verb, parents=[verb_common, out],
                             help="never prune or delete it" if locked else "undo lock")
        p.add_argument("server", help="id or name")
        p.add_argument("id", help="the backup's id")
        p.set_defaults(func=run(cmd_lock), locked=locked)
    p = verbs.add_parser("rm", parents=[verb_common, out], help="delete an unlocked backup")
    p.add_argument("server", help="id or name")
    p.add_argument("id", help="the backup's id")
    p.set_defaults(func=run(cmd_rm))
    p = verbs.add_parser("download", parents=[verb_common], help="save a backup's archive")
    p.add_argument("server", help="id or name")
    p.add_argument("id", help="the backup's id")
    p.add_argument("-o", "--output", help="default: ID.tar.zst; - for stdout")
    p.set_defaults(func=run(cmd_download))


def _base(client: HostClient, server: str) -> str:
    return f"/server/{client.server(server)['id']}/backup"


def _line(b: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b["created_at"]))
    lock = "locked" if b["locked"] else "-"
    tail = f"  {b['error']}" if b["error"] else ""
    return f"{b['id']}  {b['state']:<7} {b['bytes']:>12} {when}  {lock:<6} {b['name']}{tail}"


def _show(args: argparse.Namespace, b: dict[str, Any]) -> None:
    print(json.dumps(b, indent=2) if args.json else _line(b))


def cmd_create(args: argparse.Namespace, client: HostClient) -> int:
    base = _base(client, args.server)
    body: dict[str, Any] = {"locked": args.lock}
    if args.name:
        body["name"] = args.name
    b = client.call("POST", base, json=body)
    if not args.no_wait:
        b = _wait(client, f"{base}/{b['id']}", b)
    _show(args, b)
    return 1 if b["state"] == "failed" else 0


def _wait(client: HostClient, url: str, b: dict[str, Any]) -> dict[str, Any]:
    """Polls until the backup is done; a bar of the files read on a terminal (its end is the
    files' size on disk as the backup began: an estimate, so it may stop short or run over)."""
    if not sys.stderr.isatty():
        while b["state"] in ("pending", "running"):
            time.sleep(WAIT_POLL)
            b = client.call("GET", url)
        return b
    from rich.progress import DownloadColumn, Progress, TimeElapsedColumn

    with Progress(*Progress.get_default_columns()[:-1], DownloadColumn(), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task(f"backup {b['name']}", total=None)
        while b["state"] in ("pending", "running"):
            time.sleep(WAIT_POLL)
            b = client.call("GET", url)
            total = b.get("total_bytes")
            bar.update(task, completed=b.get("read_bytes", 0),
                       total=max(total, b.get("read_bytes", 0)) if total else None)
    return b


def cmd_ls(args: argparse.Namespace, client: HostClient) -> int:
    backups = client.call("GET", _base(client, args.server))["backups"]
    if args.json:
        print(json.dumps(backups, indent=2))
        return 0
    print(f"{'ID':<16}  {'STATE':<7} {'BYTES':>12} {'CREATED':<19}  {'LOCK':<6} NAME")
    for b in backups:
        print(_line(b))
    return 0


def cmd_restore(args: argparse.Namespace, client: HostClient) -> int:
    url = f"{_base(client, args.server)}/{args.id}/restore"
    body = {"truncate": args.truncate}
    if sys.stderr.isatty():  # one call that answers when done: a spinner and the time taken
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(SpinnerColumn(), TextColumn("restoring {task.description}"),
                      TimeElapsedColumn(), transient=True) as bar:
            bar.add_task(args.id, total=None)
            b = client.call("POST", url, json=body, timeout=3600)
    else:
        b = client.call("POST", url, json=body, timeout=3600)
    print(json.dumps(b, indent=2) if args.json else f"restored {b['name']} ({b['id']})")
    return 0


def cmd_lock(args: argparse.Namespace, client: HostClient) -> int:
    b = client.call("PUT", f"{_base(client, args.server)}/{args.id}",
                    json={"locked": args.locked})
    _show(args, b)
    return 0


def cmd_rm(args: argparse.Namespace, client: HostClient) -> int:
    r = client.call("DELETE", f"{_base(client, args.server)}/{args.id}")
    print(json.dumps(r, indent=2) if args.json else f"{args.id}: deleted")
    return 0


def cmd_download(args: argparse.Namespace, client: HostClient) -> int:
    url = f"{_base(client, args.server)}/{args.id}/download"
    output = args.output or f"{args.id}.tar.zst"
    try:
        with client.http.stream("GET", url, timeout=60) as r:
            if r.status_code != 200:
                raise _refusal(r)
            size = int(r.headers.get("content-length", 0)) or None
            if output == "-":
                for chunk in r.iter_raw(CHUNK):
                    sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                return 0
            _save_with_progress(r, output, size)
    except httpx.HTTPError as e:
        raise ClientError(f"the transfer failed: {type(e).__name__}") from None
    print(f"{output}: {os.path.getsize(output)} bytes", file=sys.stderr)
    return 0


def _save_with_progress(r: httpx.Response, output: str, size: int | None) -> None:
    """Into a temporary file beside `output`, renamed over it once whole; a bar on a
    terminal."""
    folder = os.path.dirname(os.path.abspath(output))
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".manman-get-")
    try:
        with os.fdopen(fd, "wb") as f:
            if sys.stderr.isatty():
                from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

                with Progress(*Progress.get_default_columns(), DownloadColumn(),
                              TransferSpeedColumn(), transient=True) as bar:
                    task = bar.add_task("download", total=size)
                    for chunk in r.iter_raw(CHUNK):
                        f.write(chunk)
                        bar.advance(task, len(chunk))
            else:
                for chunk in r.iter_raw(CHUNK):
                    f.write(chunk)
        os.replace(temp, output)
    except BaseException:
        os.unlink(temp)
        raise
