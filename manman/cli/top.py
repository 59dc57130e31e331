"""`manman top`: every server's live CPU, memory, disk and players, refreshed until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from manman.cli.client import HostClient


def add_top_command(sub: argparse._SubParsersAction, common: argparse.ArgumentParser,
                    out: argparse.ArgumentParser, run: Callable[[Any], Any]) -> None:
    p = sub.add_parser("top", parents=[common, out],
                       help="servers by CPU, memory, disk and players, refreshing")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true", help="print the table once and exit")
    p.set_defaults(func=run(cmd_top))


def size(n: int | None) -> str:
    """Bytes as 1.5G, 300M, 12K."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" or value >= 10 else f"{value:.1f}{unit}"
        value /= 1024
    return "-"


def stats_text(st: dict[str, Any] | None) -> str:
    """The latest sample, as `manman server show` prints it."""
    if not st:
        return "-"
    text = f"cpu {st['cpu']:.1f}%  mem {size(st['memory'])}  disk {size(st.get('disk'))}"
    if st.get("net_rx") is not None:
        text += f"  net rx {size(int(st['net_rx']))}/s tx {size(int(st['net_tx'] or 0))}/s"
    return text + f"  ({max(0, time.time() - st['at']):.0f}s ago)"


def rows(servers: list[dict[str, Any]]) -> list[list[str]]:
    """Busiest first; servers with no sample (not running) last, by name."""
    def key(s: dict[str, Any]) -> tuple[float, str]:
        return (-(s["stats"]["cpu"] if s.get("stats") else -1.0), s["name"])

    out = []
    for s in sorted(servers, key=key):
        st, q = s.get("stats"), s.get("query") or {}
        players = "-" if q.get("players") is None else (
            f"{q['players']}/{q['max_players']}" if q.get("max_players") is not None
            else str(q["players"]))
        out.append([s["name"], s["state"], f"{st['cpu']:.1f}" if st else "-",
                    size(st["memory"]) if st else "-", size(st.get("disk")) if st else "-",
                    players])
    return out


HEADERS = ["name", "state", "cpu%", "mem", "disk", "players"]


def table(servers: list[dict[str, Any]]) -> str:
    body = rows(servers)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
              for i, h in enumerate(HEADERS)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(HEADERS, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(line.rstrip() for line in lines)


def cmd_top(args: argparse.Namespace, api: HostClient) -> int:
    while True:
        servers = api.call("GET", "/server")["servers"]
        if args.json:
            import json

            print(json.dumps([{"name": s["name"], "state": s["state"], "stats": s.get("stats"),
                               "players": (s.get("query") or {}).get("players")}
                              for s in servers]))
        else:
            if not args.once and sys.stdout.isatty():
                print("\x1b[H\x1b[2J", end="")  # clear the screen: a live view
            print(table(servers), flush=True)
        if args.once:
            return 0
        time.sleep(max(0.2, args.interval))
