"""The client verbs of the `manman` command: workers, servers, server …, send, logs, console.

They talk to a host: its URL and admin token come from --host-url/--token, MANMAN_URL /
MANMAN_TOKEN, or (on the host's machine) the config and the host's data_dir. Errors are one
line on stderr with exit code 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
import trio

from manman.cli.client import ClientError, Follow, Frame, HostClient, discover, follow_console
from manman.config import Config

MAX_VAR_FILE = 1 << 16  # a variable is a line or a key, not a file to upload


def add_client_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser,
                        verb_common: argparse.ArgumentParser) -> None:
    """Register the client verbs (verb_common: the options again, for `server`'s verbs)."""
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="print raw JSON (for scripts)")

    p = sub.add_parser("workers", parents=[common, out], help="list workers")
    p.set_defaults(func=_run(cmd_workers))
    p = sub.add_parser("servers", parents=[common, out], help="list servers")
    p.add_argument("--worker", help="only this worker's (id or name)")
    p.add_argument("--state", help="only servers in this state")
    p.set_defaults(func=_run(cmd_servers))

    p = sub.add_parser("presets", parents=[common, out], help="list the games' presets")
    p.set_defaults(func=_run(cmd_presets))
    preset = sub.add_parser("preset", parents=[common], help="show a preset")
    preset_verbs = preset.add_subparsers(dest="verb", required=True, metavar="VERB")
    v = preset_verbs.add_parser("show", parents=[verb_common, out],
                                help="a preset's variables and ports")
    v.add_argument("preset", help="its name, e.g. valheim")
    v.set_defaults(func=_run(cmd_preset_show))

    server = sub.add_parser("server", parents=[common], help="create, show, change servers")
    verbs = server.add_subparsers(dest="verb", required=True, metavar="VERB")
    c = verbs.add_parser("create", parents=[verb_common, out], help="create a server")
    c.add_argument("name", nargs="?", help="the server's name (or in --file)")
    c.add_argument("game_id", nargs="?", help="steamcmd:<app>, docker:<image> or exec:<path>")
    c.add_argument("--preset", help="make it from this preset (`manman presets`)")
    c.add_argument("--var", action="append", dest="vars", metavar="NAME=VALUE",
                   help="a variable of the preset (repeat)")
    c.add_argument("--var-file", action="append", dest="var_files", metavar="NAME=PATH",
                   help="a variable read from a file, - for standard input (a password "
                        "kept out of the command line, which any user can see in ps)")
    c.add_argument("--port", action="append", dest="ports", metavar="NAME=N|auto",
                   help="a port of the preset: a number, or auto for the worker to pick")
    _spec_flags(c)
    c.set_defaults(func=_run(cmd_create))
    for verb, helptext in (("show", "show one server"), ("start", "start it"),
                           ("stop", "stop it gracefully"), ("restart", "stop, then start"),
                           ("kill", "kill its processes now"),
                           ("install", "install or update its game")):
        v = verbs.add_parser(verb, parents=[verb_common, out], help=helptext)
        v.add_argument("server", help="id or name")
        v.set_defaults(func=_run(cmd_show if verb == "show" else cmd_power), action=verb)
    d = verbs.add_parser("delete", parents=[verb_common, out], help="stop and delete a server")
    d.add_argument("server", help="id or name")
    d.add_argument("--purge", action="store_true", help="also delete its files")
    d.set_defaults(func=_run(cmd_delete))
    u = verbs.add_parser("update", parents=[verb_common, out], help="change a server's spec")
    u.add_argument("server", help="id or name")
    _spec_flags(u)
    u.add_argument("--restart", action="store_true",
                   help="restart it now if running (default: on its next start)")
    u.set_defaults(func=_run(cmd_update))

    s = sub.add_parser("send", parents=[common, out], help="send one console line")
    s.add_argument("server", help="id or name")
    s.add_argument("line", help="the line, e.g. \"say hello\"")
    s.set_defaults(func=_run(cmd_send))

    lg = sub.add_parser("logs", parents=[common], help="print a server's console")
    lg.add_argument("server", help="id or name")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    lg.add_argument("--since", type=int, help="from this seq")
    lg.add_argument("--tail", type=int, default=100, help="the last N lines (default 100)")
    lg.add_argument("--json", action="store_true", help="one JSON line per console line")
    lg.set_defaults(func=_run(cmd_logs))

    co = sub.add_parser("console", parents=[common], help="live console with input")
    co.add_argument("server", help="id or name")
    co.add_argument("--tail", type=int, default=50, help="lines of history to show first")
    co.set_defaults(func=_run(cmd_console))

    from manman.cli.files import add_files_commands

    add_files_commands(sub, common, verb_common, out, _run)
    from manman.cli.schedules import add_schedule_commands

    add_schedule_commands(sub, common, verb_common, out, _run)

    from manman.cli.backups import add_backup_commands

    add_backup_commands(sub, common, verb_common, out, _run)
    from manman.cli.top import add_top_command

    add_top_command(sub, common, out, _run)

    from manman.cli.automation import add_automation_commands

    add_automation_commands(sub, common, verb_common, out, _run)


def _spec_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", "-f", dest="file",
                   help="a spec as JSON or TOML (- for stdin); flags override it")
    p.add_argument("--worker", help="the worker (id or name)")
    p.add_argument("--executable")
    p.add_argument("--arg", action="append", dest="args", metavar="ARG",
                   help="an argument (repeat)")
    p.add_argument("--env", action="append", metavar="KEY=VALUE", help="(repeat)")
    p.add_argument("--stop-command")
    p.add_argument("--stop-timeout", type=float)
    p.add_argument("--ready-pattern")
    p.add_argument("--set", action="append", metavar="FIELD=JSON",
                   help="any spec field, its value as JSON: --set 'ports=[{\"port\": 27015}]'")
    p.add_argument("--start", action="store_true", help="desired_state running")
    for flag, kind, what in (("--memory-mb", int, "MiB of memory"),
                             ("--cpus", float, "cores (0.5: half of one)"),
                             ("--pids", int, "processes and threads")):
        p.add_argument(flag, type=_limit(kind), metavar="N|none",
                       help=f"limit: {what} at most (none: no limit); see `server show`")


_NO_LIMIT = object()  # --memory-mb none: the limit goes


def _limit(kind: type) -> Any:
    def parse(text: str) -> Any:
        return _NO_LIMIT if text == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error
    return parse


def _run(fn: Any) -> Any:
    def runner(args: argparse.Namespace, cfg: Config) -> int:
        try:
            url, token = discover(cfg, args.host_url, args.token)
            client = HostClient(url, token)
            try:
                return int(fn(args, client) or 0)
            finally:
                client.close()
        except ClientError as e:
            print(f"manman: {e}", file=sys.stderr)
            return 1

    return runner


# -- output ---------------------------------------------------------------------------------

def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _players(query: dict[str, Any] | None) -> str:
    """`3/24`, `3` when the game hides its slots, `-` when unknown."""
    if not query or query.get("players") is None:
        return "-"
    slots = query.get("max_players")
    return f"{query['players']}/{slots}" if slots is not None else str(query["players"])


# -- verbs ----------------------------------------------------------------------------------

def cmd_workers(args: argparse.Namespace, api: HostClient) -> int:
    workers = api.call("GET", "/worker")["workers"]
    if args.json:
        _print_json(workers)
        return 0
    now = time.time()
    _table([[w["name"], w["id"], w["status"], str(w["servers"]),
             _age(now - w["last_heartbeat"]) if w["last_heartbeat"] else "-",
             _worker_limits(w.get("capacity") or {}), w["api_url"]]
            for w in workers], ["name", "id", "status", "servers", "heartbeat", "limits",
                                "api"])
    return 0


def _worker_limits(capacity: dict[str, Any]) -> str:
    """How the worker enforces exec servers' limits: `cgroup2`, `none (monitor)`, `-`."""
    mode = capacity.get("limits")
    if not isinstance(mode, str):
        return "-"  # a worker that did not say
    return mode if capacity.get("limits_setting") != "monitor" else f"{mode} (monitor)"


def _worker_id(api: HostClient, key: str) -> str:
    for w in api.call("GET", "/worker")["workers"]:
        if key in (w["id"], w["name"]):
            return w["id"]
    raise ClientError(f"worker {key} not found")


def cmd_servers(args: argparse.Namespace, api: HostClient) -> int:
    params = {}
    if args.worker:
        params["worker_id"] = _worker_id(api, args.worker)
    if args.state:
        params["state"] = args.state
    servers = api.call("GET", "/server", params=params)["servers"]
    if args.json:
        _print_json(servers)
        return 0
    names = {w["id"]: w["name"] for w in api.call("GET", "/worker")["workers"]}
    now = time.time()
    _table([[s["name"], names.get(s["worker_id"], s["worker_id"] or "-"), s["game_id"],
             _state_cell(s),
             _players(s.get("query")),
             _age(now - s["started_at"]) if s["state"] == "running" and s["started_at"]
             else "-", str(s["restarts"])]
            for s in servers],
           ["name", "worker", "game", "state", "players", "uptime", "restarts"])
    return 0


def _state_cell(s: dict[str, Any]) -> str:
    """The state, an install's progress, and UPDATE when Steam offers a newer build."""
    text = s["state"]
    if s["install_progress"] is not None and s["state"] == "installing":
        text += f" {s['install_progress']:.0f}%"
    if s.get("update_available"):
        text += " UPDATE"
    return text


def _spec_from_args(args: argparse.Namespace, api: HostClient) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if args.file:
        try:
            raw = sys.stdin.read() if args.file == "-" else _read(args.file)
        except UnicodeDecodeError:
            raise ClientError("cannot read the spec from stdin: not UTF-8 text") from None
        try:
            spec = json.loads(raw)
        except ValueError:
            try:
                spec = tomllib.loads(raw)
            except tomllib.TOMLDecodeError as e:
                raise ClientError(f"{args.file}: neither JSON nor TOML ({e})") from None
        if not isinstance(spec, dict):
            raise ClientError(f"{args.file}: a spec is an object")
    if getattr(args, "name", None):
        spec["name"] = args.name
    if getattr(args, "game_id", None):
        spec["game_id"] = args.game_id
    if args.worker:
        spec["worker_id"] = _worker_id(api, args.worker)
    for field in ("executable", "stop_command", "stop_timeout", "ready_pattern"):
        if getattr(args, field) is not None:
            spec[field] = getattr(args, field)
    if args.args is not None:
        spec["args"] = args.args
    for item in args.env or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ClientError(f"--env {item}: expected KEY=VALUE")
        spec.setdefault("env", {})[key] = value
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ClientError(f"--set {item}: expected FIELD=JSON")
        try:
            spec[key] = json.loads(value)
        except ValueError:
            spec[key] = value  # a plain string needs no quotes
    if args.start:
        spec["desired_state"] = "running"
    for field in ("memory_mb", "cpus", "pids"):
        value = getattr(args, field)
        if value is not None:
            limits = spec.setdefault("limits", {})
            if not isinstance(limits, dict):
                raise ClientError("limits: expected an object")
            limits[field] = None if value is _NO_LIMIT else value
    return spec


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ClientError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ClientError(f"cannot read {path}: not UTF-8 text") from None


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ClientError(f"{flag} {key[:64]}: expected NAME=VALUE")
        out[key] = value
    return out


def read_value_file(flag: str, path: str) -> str:
    """A value (a password) from a file or stdin, without its final line break; `flag`
    names it in an error."""
    try:
        if path == "-":
            text = sys.stdin.read(MAX_VAR_FILE + 1)
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read(MAX_VAR_FILE + 1)
    except (OSError, UnicodeDecodeError) as e:
        raise ClientError(f"{flag}: cannot read {path[:200]}: "
                          f"{getattr(e, 'strerror', None) or e}") from None
    if len(text) > MAX_VAR_FILE:
        raise ClientError(f"{flag}: over {MAX_VAR_FILE} characters")
    return text.removesuffix("\n").removesuffix("\r")


def _preset_request(args: argparse.Namespace, spec: dict[str, Any]) -> None:
    """--preset, --var and --port into the body of a create from a preset."""
    if args.preset is None:
        if args.vars or args.ports or args.var_files:
            raise ClientError("--var, --var-file and --port need --preset")
        return
    spec["preset"] = args.preset
    spec["vars"] = _pairs(args.vars, "--var")  # the host checks each against its type
    from_files = _pairs(args.var_files, "--var-file")
    if list(from_files.values()).count("-") > 1:
        raise ClientError("--var-file: only one variable can be read from standard input")
    for name, path in from_files.items():
        spec["vars"][name] = read_value_file(f"--var-file {name}", path)
    ports: dict[str, int | str] = {}
    for name, value in _pairs(args.ports, "--port").items():
        if value != "auto" and not value.isdigit():
            raise ClientError(f"--port {name}: a port number or auto")
        ports[name] = value if value == "auto" else int(value)
    if ports:
        spec["ports"] = ports


def cmd_create(args: argparse.Namespace, api: HostClient) -> int:
    spec = _spec_from_args(args, api)
    _preset_request(args, spec)
    if "name" not in spec or ("game_id" not in spec and "preset" not in spec):
        raise ClientError("a server needs a name and a game_id or --preset (arguments or "
                          "--file)")
    server = api.call("POST", "/server", json=spec)
    return _after_install(args, api, server, "created")


def _after_install(args: argparse.Namespace, api: HostClient, server: dict[str, Any],
                   verb: str, before: float = 0.0) -> int:
    """Follow an install to its end (a progress bar on a terminal), then print the outcome.
    `before` is the server's updated_at before the command: older news is not the outcome."""
    server = _watch(api, server, before)
    if args.json:
        _print_json(server)
    else:
        print(f"{server['name']} {verb}: {server['state']}"
              + (f" ({server['error']})" if server.get("error") else ""))
    return 1 if server["state"] == "failed" else 0


def _watch(api: HostClient, server: dict[str, Any], before: float) -> dict[str, Any]:
    """Poll until the worker has acted: past `created`, past `installing`, and newer than
    `before` (give up on a worker that does not answer after 15 s)."""
    patience = time.monotonic() + 15
    bar = None
    if sys.stdout.isatty():
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        bar = Progress(TextColumn(f"installing {server['name']}"), BarColumn(),
                       TaskProgressColumn(), transient=True)
        bar.start()
        task = bar.add_task("install", total=100)
    try:
        while True:
            server = api.server(server["id"])
            if server["state"] == "installing":
                patience = float("inf")  # an install may take hours; it reports progress
                if bar is not None:
                    bar.update(task, completed=server["install_progress"] or 0)
            elif time.monotonic() > patience or (
                    server["state"] != "created" and server["updated_at"] > before):
                return server
            time.sleep(0.1)
    finally:
        if bar is not None:
            bar.stop()


def cmd_presets(args: argparse.Namespace, api: HostClient) -> int:
    presets = api.call("GET", "/preset")["presets"]
    if args.json:
        _print_json(presets)
        return 0
    _table([[p["name"], str(p["version"]), p["game_id"], p["title"],
             " ".join(v["name"] + ("*" if v["required"] else "") for v in p["variables"])]
            for p in presets], ["name", "version", "game", "title", "variables"])
    return 0


def cmd_preset_show(args: argparse.Namespace, api: HostClient) -> int:
    p = api.call("GET", f"/preset/{quote(args.preset, safe='')}")
    if args.json:
        _print_json(p)
        return 0
    print(f"{p['title']} ({p['name']} version {p['version']}, {p['game_id']})")
    stop = p["stop_command"] or p["stop_signal"] or "SIGTERM"
    print(f"stop: {stop} (timeout {p['stop_timeout']:g}s)"
          + (f"; query: {p['query']['type']}" if p.get("query") else ""))
    if p["ports"]:
        print("ports:")
        _table([[q["name"], q["protocol"],
                 str(q["default"]) if q["follows"] is None
                 else f"{q['follows']}+{q['offset']}", q["description"]]
                for q in p["ports"]], ["name", "protocol", "default", "description"])
    if p["variables"]:
        print("variables (--var NAME=VALUE; * required):")
        _table([[v["name"] + ("*" if v["required"] else ""), v["type"],
                 "" if v["default"] is None else json.dumps(v["default"]),
                 v["rule"] or "", v["description"]]
                for v in p["variables"]], ["name", "type", "default", "rule", "description"])
    return 0


def cmd_show(args: argparse.Namespace, api: HostClient) -> int:
    s = api.server(args.server)
    if args.json:
        _print_json(s)
        return 0
    for key in ("name", "id", "worker_id", "game_id", "preset", "state", "ready", "pid", "restarts",
                "exit_code", "error", "install_progress", "desired_state", "generation",
                "observed_generation", "worker_status", "executable", "args", "stop_command",
                "ready_pattern", "installed_build", "latest_build"):
        value = s.get(key)
        if value is not None and value != []:
            print(f"{key + ':':22}{value if not isinstance(value, list) else ' '.join(value)}")
    query = s.get("query")
    if query:
        seen = "ok" if query["ok"] else f"failing: {query.get('error') or '?'}"
        extra = [f"{k} {query[k]}" for k in ("map", "version") if query.get(k)]
        print(f"{'players:':22}{_players(query)} (query {', '.join([seen, *extra])})")
    limits = _limits_text(s.get("limits") or {})
    if limits:
        print(f"{'limits:':22}{limits}")
    if s.get("stats"):
        from manman.cli.top import stats_text

        print(f"{'stats:':22}{stats_text(s['stats'])}")
    disk_line = _disk_text(s)
    if disk_line:
        print(f"{'disk:':22}{disk_line}")
    if s["game_id"].startswith("steamcmd:"):
        au = s.get("auto_update") or {}
        mode = au.get("mode", "off")
        every = f", every {au['check_interval']:g}s" if mode != "off" else ""
        print(f"{'auto_update:':22}{mode}{every}")
        if s.get("update_available"):
            print(f"{'update_available:':22}yes: build {s.get('latest_build')} "
                  f"(installed: {s.get('installed_build')})")
    return 0


def _disk_text(s: dict[str, Any]) -> str | None:
    """Disk use against limits.disk_mb, when there is a limit (docs/spec.md "Disk limit")."""
    from manman.cli.top import size

    limit = (s.get("limits") or {}).get("disk_mb")
    full = s.get("disk_full")
    if limit is None and not full:
        return None
    used = full["used"] if full else (s.get("stats") or {}).get("disk")
    text = f"{size(used) if used is not None else '?'} of {limit} MiB (limits.disk_mb)"
    if full:
        text += ": over the limit, not started until files are deleted"
    return text


def _limits_text(limits: dict[str, Any]) -> str:
    """`memory 512 MiB, cpus 1.5, pids 200`: the limits set, in the spec's order
    (disk_mb has its own line: `disk:`)."""
    units = {"memory_mb": ("memory", " MiB"), "cpus": ("cpus", ""), "pids": ("pids", "")}
    return ", ".join(f"{units[k][0]} {v:g}{units[k][1]}" for k, v in limits.items()
                     if v is not None and k in units)


def cmd_power(args: argparse.Namespace, api: HostClient) -> int:
    s = api.server(args.server)
    r = api.call("POST", f"/server/{s['id']}/command", json={"type": args.action})
    if args.action == "install":
        return _after_install(args, api, s, "installed", before=s["updated_at"])
    if args.json:
        _print_json(r)
    else:
        how = "delivered" if r["delivered"] else "queued: the worker applies it when it is back"
        print(f"{s['name']}: {args.action} {how}")
    return 0


def cmd_delete(args: argparse.Namespace, api: HostClient) -> int:
    s = api.server(args.server)
    r = api.call("DELETE", f"/server/{s['id']}", params={"purge": str(args.purge).lower()})
    if args.json:
        _print_json(r)
    else:
        print(f"{s['name']}: deleted" if r["deleted"]
              else f"{s['name']}: deleted here; the worker removes it when it is back")
    return 0


def cmd_update(args: argparse.Namespace, api: HostClient) -> int:
    s = api.server(args.server)
    spec = _spec_from_args(args, api)
    if spec.get("worker_id") == s["worker_id"]:
        del spec["worker_id"]  # naming its own worker is no change
    if isinstance(spec.get("limits"), dict):  # a PUT replaces them: the others are kept
        spec["limits"] = {**(s.get("limits") or {}), **spec["limits"]}
    if args.restart:
        spec["restart_on_change"] = True
    if not spec:
        raise ClientError("nothing to change: give flags or --file")
    r = api.call("PUT", f"/server/{s['id']}", json=spec)
    if args.json:
        _print_json(r)
    else:
        print(f"{r['name']}: generation {r['generation']}")
    return 0


def cmd_send(args: argparse.Namespace, api: HostClient) -> int:
    s = api.server(args.server)
    r = api.call("POST", f"/server/{s['id']}/command",
                 json={"type": "command", "data": args.line})
    if args.json:
        _print_json(r)
    return 0


# -- the console ----------------------------------------------------------------------------

class OutputClosed(Exception):
    """Whoever read our stdout went away (`manman logs -f | head`): not a network error."""


class Printer:
    """Console frames to stdout: one write per frame, gaps as visible marker lines."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = sys.stdout.buffer
        self.encode = msgspec.json.Encoder().encode

    def frame(self, f: Frame) -> None:
        try:
            self._frame(f)
        except BrokenPipeError:
            raise OutputClosed() from None

    def _frame(self, f: Frame) -> None:
        if f.type == "lines" and f.lines:
            if self.as_json:
                data = b"\n".join(self.encode(ln) for ln in f.lines) + b"\n"
            else:
                data = "".join(_text(ln) for ln in f.lines).encode("utf-8", "replace")
            self.out.write(data)
        elif f.type == "gap":
            self.out.write(f"--- lines {f.from_seq}..{f.to_seq} skipped ({f.reason}) ---\n"
                           .encode())
        elif f.type == "state" and not self.as_json:
            self.out.write(f"--- state: {f.state} ---\n".encode())
        elif f.type == "error":
            sys.stderr.write(f"manman: console: {f.message} ({f.code})\n")
        self.out.flush()


def _text(line: dict[str, Any]) -> str:
    stream = line["stream"]
    if stream in ("stdout", "stderr"):
        return line["text"] + "\n"
    return f"[{stream}] {line['text']}\n"


def cmd_logs(args: argparse.Namespace, api: HostClient) -> int:
    s = api.server(args.server)
    printer = Printer(args.json)
    if not args.follow:
        since = args.since
        if since is None:
            page = api.call("GET", f"/server/{s['id']}/log", params={"limit": args.tail})
            printer.frame(Frame(type="lines", lines=page["lines"]))
            return 0
        while True:
            page = api.call("GET", f"/server/{s['id']}/log",
                            params={"since": since, "limit": 10000})
            if not page["lines"]:
                return 0
            printer.frame(Frame(type="lines", lines=page["lines"]))
            since = page["next_seq"]
    return _follow(api, s["id"], Follow(args.since, args.tail), printer.frame, None)


def _follow(api: HostClient, server_id: str, start: Follow, on_frame: Any,
            outgoing: Any) -> int:
    def status(message: str) -> None:
        sys.stderr.write(f"manman: {message}\n")

    async def main() -> None:
        await follow_console(api.url, api.token, server_id, start, on_frame, outgoing, status)

    _run_console(main)
    return 0


def _run_console(main: Any) -> None:
    """trio.run for the live views: Ctrl-C, or a reader that went away (`| head`), ends them
    quietly; a refused console is one line (raised inside their nurseries, these arrive in
    exception groups)."""
    refused: ClientError | None = None
    try:
        trio.run(main)
    except* KeyboardInterrupt:
        pass
    except* OutputClosed:
        # nothing more can be written: point stdout at /dev/null so exiting does not complain
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except* ClientError as group:
        first = group.exceptions[0]
        refused = first if isinstance(first, ClientError) else ClientError(str(first))
    if refused is not None:
        raise refused


def cmd_console(args: argparse.Namespace, api: HostClient) -> int:
    s = api.server(args.server)
    printer = Printer(False)
    interactive = sys.stdin.isatty()

    async def main() -> None:
        send, receive = trio.open_memory_channel[str](16)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_stdin, send, nursery.cancel_scope)
            await follow_console(api.url, api.token, s["id"], Follow(None, args.tail),
                                 printer.frame, receive,
                                 lambda m: sys.stderr.write(f"manman: {m}\n"))

    if interactive:
        print(f"console of {s['name']}: type a line and Enter to send it; Ctrl-C or Ctrl-D to "
              "leave", file=sys.stderr)
    _run_console(main)
    return 0


async def _read_stdin(send: trio.MemorySendChannel[str], scope: trio.CancelScope) -> None:
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    buf = b""
    while data := await stdin.receive_some(4096):
        buf += data
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if line:
                await send.send(line)
    await trio.sleep(0.5)  # let the last line go out
    scope.cancel()  # Ctrl-D: leave
