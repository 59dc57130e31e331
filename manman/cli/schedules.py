"""`manman schedule ls|add|rm|run|runs SERVER …`: a server's schedules through the host."""

from __future__ import annotations

import argparse
import json
from typing import Any

from manman.cli.client import ClientError, HostClient

ACTIONS = ("start", "stop", "restart", "kill", "command", "backup", "update", "wait", "notify")


def parse_task(text: str) -> dict[str, Any]:
    """`ACTION[:PAYLOAD]`: 'command:say restart in 5 min', 'wait:300', 'restart'."""
    action, sep, payload = text.partition(":")
    action = action.strip()
    if action not in ACTIONS:
        raise ClientError(f"--task {text!r}: the action is one of {', '.join(ACTIONS)}")
    task: dict[str, Any] = {"action": action}
    if sep:
        task["payload"] = payload
    return task


def add_schedule_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser,
                          verb_common: argparse.ArgumentParser, out: argparse.ArgumentParser,
                          run: Any) -> None:
    group = sub.add_parser("schedule", parents=[common],
                           help="list, add, remove and run a server's schedules")
    verbs = group.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("ls", parents=[verb_common, out], help="list a server's schedules")
    p.add_argument("server", help="id or name")
    p.set_defaults(func=run(cmd_ls))
    p = verbs.add_parser("add", parents=[verb_common, out], help="add a schedule")
    p.add_argument("server", help="id or name")
    p.add_argument("--cron", required=True, help="five fields: '0 5 * * *'")
    p.add_argument("--tz", default="UTC", help="an IANA time zone (default UTC)")
    p.add_argument("--task", action="append", required=True, metavar="ACTION[:PAYLOAD]",
                   help="in order (repeat): 'command:say hi', 'wait:300', 'restart'")
    p.add_argument("--id", help="the schedule's id (default: the next sN)")
    p.add_argument("--name")
    p.add_argument("--only-when-state", help="run only when the server is in this state")
    p.add_argument("--players-max", type=int, help="run only with at most this many players")
    p.add_argument("--defer-max", type=float, default=0,
                   help="seconds to wait for the only-when conditions before skipping")
    p.add_argument("--disabled", action="store_true", help="add it disabled")
    p.set_defaults(func=run(cmd_add))
    for verb, helptext, fn in (("rm", "remove a schedule", cmd_rm),
                               ("run", "run a schedule now (ignoring only-when)", cmd_run),
                               ("runs", "a schedule's last runs", cmd_runs)):
        p = verbs.add_parser(verb, parents=[verb_common, out], help=helptext)
        p.add_argument("server", help="id or name")
        p.add_argument("schedule", help="the schedule's id")
        p.set_defaults(func=run(fn))


def _base(client: HostClient, server: str) -> str:
    return f"/server/{client.server(server)['id']}/schedule"


def _tasks(s: dict[str, Any]) -> str:
    return ", ".join(t["action"] + (f":{t['payload']}" if t.get("payload") else "")
                     for t in s["tasks"])


def _show(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def cmd_ls(args: argparse.Namespace, client: HostClient) -> int:
    schedules = client.call("GET", _base(client, args.server))["schedules"]
    if args.json:
        _show(schedules)
        return 0
    rows = [[s["id"], s["cron"], s["timezone"], "yes" if s["enabled"] else "no",
             s["next_run_at"] or "-", _tasks(s)] for s in schedules]
    headers = ["id", "cron", "tz", "enabled", "next run (UTC)", "tasks"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_add(args: argparse.Namespace, client: HostClient) -> int:
    body: dict[str, Any] = {"cron": args.cron, "timezone": args.tz,
                            "tasks": [parse_task(t) for t in args.task],
                            "enabled": not args.disabled, "defer_max": args.defer_max}
    if args.id:
        body["id"] = args.id
    if args.name:
        body["name"] = args.name
    if args.only_when_state or args.players_max is not None:
        body["only_when"] = {k: v for k, v in (("state", args.only_when_state),
                                               ("players_max", args.players_max))
                             if v is not None}
    s = client.call("POST", _base(client, args.server), json=body)
    if args.json:
        _show(s)
    else:
        print(f"schedule {s['id']} added: next run {s['next_run_at'] or '-'} (UTC)")
    return 0


def cmd_rm(args: argparse.Namespace, client: HostClient) -> int:
    r = client.call("DELETE", f"{_base(client, args.server)}/{args.schedule}")
    if args.json:
        _show(r)
    else:
        print(f"schedule {args.schedule} removed")
    return 0


def cmd_run(args: argparse.Namespace, client: HostClient) -> int:
    r = client.call("POST", f"{_base(client, args.server)}/{args.schedule}/run")
    if args.json:
        _show(r)
    else:
        print(f"schedule {args.schedule}: run {r['id']} started")
    return 0


def cmd_runs(args: argparse.Namespace, client: HostClient) -> int:
    runs = client.call("GET", f"{_base(client, args.server)}/{args.schedule}/runs")["runs"]
    if args.json:
        _show(runs)
        return 0
    for r in runs:
        line = f"#{r['id']}  {r['started_at']}  {r['trigger']:<6}  {r['status']}"
        if r.get("reason"):
            line += f"  ({r['reason']})"
        print(line)
        for t in r["tasks"]:
            if t.get("skipped"):
                print(f"    {t['action']:<8} skipped: {t['skipped']}")
            else:
                print(f"    {t['action']:<8} "
                      f"{'ok' if t['ok'] else 'failed: ' + (t['error'] or '')}")
    return 0
