"""`manman audit` (the host's audit trail) and `manman webhook
ls|add|rm|test|enable|disable|deliveries`."""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from manman.cli.client import ClientError, HostClient

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: float | None = None) -> float:
    """`90s`, `15m`, `1h`, `7d`, `2w` ago, or unix seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if m:
        return (time.time() if now is None else now) - float(m[1]) * _UNITS[m[2]]
    try:
        return float(text)
    except ValueError:
        raise ClientError(f"--since {text}: expected a duration (90s, 15m, 1h, 7d) or unix "
                          "seconds") from None


def add_automation_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser,
                            verb_common: argparse.ArgumentParser, out: argparse.ArgumentParser,
                            run: Any) -> None:
    p = sub.add_parser("audit", parents=[common, out],
                       help="what was changed through the host, by whom (newest first)")
    p.add_argument("--server", help="one server (id or name)")
    p.add_argument("--action", help="an action or its prefix: server.command, webhook")
    p.add_argument("--since", help="a duration (1h, 7d) or unix seconds")
    p.add_argument("--limit", type=int, default=100, help="at most this many rows (100)")
    p.set_defaults(func=run(cmd_audit))

    hook = sub.add_parser("webhook", parents=[common], help="notifications to a URL")
    verbs = hook.add_subparsers(dest="verb", required=True, metavar="VERB")
    v = verbs.add_parser("ls", parents=[verb_common, out], help="list webhooks")
    v.set_defaults(func=run(cmd_webhook_ls))
    v = verbs.add_parser("add", parents=[verb_common, out], help="add a webhook")
    v.add_argument("url")
    v.add_argument("--kind", choices=("generic", "discord", "slack"), default="generic")
    v.add_argument("--event", action="append", dest="events", required=True,
                   help="an event (repeat): server.crashed, worker.expired, ...")
    v.add_argument("--server", help="only this server's events (id or name)")
    v.add_argument("--secret", help="signs a generic hook's bodies")
    v.add_argument("--secret-file", metavar="PATH",
                   help="the secret from a file, - for stdin (kept out of ps)")
    v.add_argument("--disabled", action="store_true")
    v.set_defaults(func=run(cmd_webhook_add))
    v = verbs.add_parser("rm", parents=[verb_common, out], help="delete a webhook")
    v.add_argument("id")
    v.set_defaults(func=run(cmd_webhook_rm))
    v = verbs.add_parser("test", parents=[verb_common, out], help="send a test event now")
    v.add_argument("id")
    v.set_defaults(func=run(cmd_webhook_test))
    for verb, enabled in (("enable", True), ("disable", False)):
        v = verbs.add_parser(verb, parents=[verb_common, out],
                             help="send its events again" if enabled else "send it nothing")
        v.add_argument("id")
        v.set_defaults(func=run(cmd_webhook_enable), enabled=enabled)
    v = verbs.add_parser("deliveries", parents=[verb_common, out],
                         help="its last attempts (newest first), with status and latency")
    v.add_argument("id")
    v.set_defaults(func=run(cmd_webhook_deliveries))


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _table(rows: list[list[str]], headers: list[str]) -> None:
    from manman.cli.verbs import _table as table

    table(rows, headers)


def cmd_audit(args: argparse.Namespace, api: HostClient) -> int:
    params: dict[str, str] = {}
    if args.server:
        params["server_id"] = args.server
    if args.action:
        params["action"] = args.action
    if args.since:
        params["since"] = repr(parse_since(args.since))
    if args.limit < 1:
        raise ClientError("--limit must be at least 1")
    entries: list[dict[str, Any]] = []
    while len(entries) < args.limit:
        params["limit"] = str(min(1000, args.limit - len(entries)))
        page = api.call("GET", "/audit", params=params)
        entries.extend(page["entries"])
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    _table([[_when(e["at"]), e["actor"], e["source"], e["action"], e["target"],
             str(e["status"]) if e["status"] is not None else "-",
             (e["detail"] or e["result"] or "")[:80]] for e in entries],
           ["time", "actor", "source", "action", "target", "status", "detail"])
    return 0


def cmd_webhook_ls(args: argparse.Namespace, api: HostClient) -> int:
    hooks = api.call("GET", "/webhook")["webhooks"]
    if args.json:
        print(json.dumps(hooks, indent=2))
        return 0
    _table([[h["id"], h["kind"], "yes" if h["enabled"] else "no", h["server_id"] or "*",
             ",".join(h["events"]), h["url"]] for h in hooks],
           ["id", "kind", "enabled", "server", "events", "url"])
    return 0


def cmd_webhook_add(args: argparse.Namespace, api: HostClient) -> int:
    body: dict[str, Any] = {"url": args.url, "kind": args.kind, "events": args.events,
                            "enabled": not args.disabled}
    if args.server:
        body["server_id"] = api.server(args.server)["id"]
    if args.secret and args.secret_file:
        raise ClientError("give --secret or --secret-file, not both")
    if args.secret:
        body["secret"] = args.secret
    elif args.secret_file:
        from manman.cli.verbs import read_value_file

        body["secret"] = read_value_file("--secret-file", args.secret_file)
    hook = api.call("POST", "/webhook", json=body)
    print(json.dumps(hook, indent=2) if args.json else hook["id"])
    return 0


def cmd_webhook_rm(args: argparse.Namespace, api: HostClient) -> int:
    api.call("DELETE", f"/webhook/{args.id}")
    if not args.json:
        print(f"webhook {args.id} deleted")
    return 0


def cmd_webhook_test(args: argparse.Namespace, api: HostClient) -> int:
    result = api.call("POST", f"/webhook/{args.id}/test")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    status = result["status"] if result["status"] is not None else result["error"]
    print(f"{'ok' if result['ok'] else 'failed'}: {status} in {result['latency_ms']:.0f} ms")
    return 0 if result["ok"] else 1


def cmd_webhook_enable(args: argparse.Namespace, api: HostClient) -> int:
    hook = api.call("PUT", f"/webhook/{args.id}", json={"enabled": args.enabled})
    print(json.dumps(hook, indent=2) if args.json else
          f"webhook {hook['id']} {'enabled' if hook['enabled'] else 'disabled'}")
    return 0


def cmd_webhook_deliveries(args: argparse.Namespace, api: HostClient) -> int:
    attempts = api.call("GET", f"/webhook/{args.id}/deliveries")["deliveries"]
    if args.json:
        print(json.dumps(attempts, indent=2))
        return 0
    _table([[_when(a["at"]), a["event"], a["event_id"], str(a["attempt"]),
             "ok" if a["ok"] else "failed",
             str(a["status"]) if a["status"] is not None else "-",
             f"{a['latency_ms']:.0f} ms",
             _when(a["next_attempt_at"]) if a["next_attempt_at"] else "-",
             (a["error"] or "")[:60]] for a in attempts],
           ["time", "event", "id", "try", "result", "status", "latency", "retry at", "error"])
    return 0
