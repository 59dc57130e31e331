"""Command latency: `POST /server/{id}/command` on the host → the line on the game's stdin →
the game's echo seen by a websocket viewer on the host (proxied from the worker).

A host process (embedded PostgreSQL) and a worker process joined to it; the game is the
tests' fake game server. Prints p50/p99 over N commands, and the baseline: the same round
trip through the worker's own API and websocket (no host), with the ratios. Target
(issue 4): p50 under 5 ms, p99 under 25 ms.

    .venv/bin/python bench/command_latency.py [--commands 1000]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

import trio
from trio_websocket import open_websocket_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ADMIN, PYTHON, ROOT, RawClient, build_request, client, host_and_worker


async def measure(http_url: str, ws_url: str, token: str, server_id: str, path: str,
                  body_of: object, n: int) -> list[float]:
    """Latency from sending the command to seeing its echo on the websocket."""
    host, port = http_url.split("//")[1].rsplit(":", 1)
    client = RawClient(host, int(port))
    lat: list[float] = []
    async with open_websocket_url(f"{ws_url}?tail=0&token={token}",
                                  receive_buffer_size=None) as ws:
        await ws.get_message()  # hello
        for i in range(-20, n):  # the first 20 warm up connections and caches
            want = f'"said: c{i}"'
            request = build_request("POST", path, token, body_of(f"say c{i}"))  # type: ignore
            t0 = time.perf_counter()
            status = await client.roundtrip(request)
            assert status == 202, status
            while want not in await ws.get_message():
                pass
            if i >= 0:
                lat.append(time.perf_counter() - t0)
    await client.aclose()
    return lat


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--commands", type=int, default=1000)
    args = p.parse_args()
    async with trio.open_nursery() as nursery:
        host, host_url, worker, worker_url, d = await host_and_worker(
            nursery, "manman-bench-latency-")
        try:
            async with client(host_url, ADMIN) as api:
                r = await api.post("/server", json={
                    "name": "echo", "game_id": f"exec:{PYTHON}",
                    "args": ["-u", str(ROOT / "tests" / "fakegame.py")],
                    "stop_command": "quit", "ready_pattern": "^Server ready$",
                    "desired_state": "running"})
                assert r.status_code == 201, r.text
                sid = r.json()["id"]
                with trio.fail_after(30):
                    while (await api.get(f"/server/{sid}")).json()["state"] != "running":
                        await trio.sleep(0.05)
            db = sqlite3.connect(d / "worker" / "worker.sqlite3")
            worker_token = db.execute(
                "SELECT value FROM meta WHERE key='worker_token'").fetchone()[0]
            db.close()
            host_ws = host_url.replace("http", "ws") + f"/server/{sid}/log/ws"
            worker_ws = worker_url.replace("http", "ws") + f"/server/{sid}/log/ws"
            via_host = await measure(
                host_url, host_ws, ADMIN, sid, f"/server/{sid}/command",
                lambda line: json.dumps({"type": "command", "data": line}).encode(),
                args.commands)
            direct = await measure(
                worker_url, worker_ws, worker_token, sid, f"/server/{sid}/command",
                lambda line: json.dumps({"data": line}).encode(), args.commands)
        finally:
            await worker.stop()
            await host.stop()
        nursery.cancel_scope.cancel()
    out = {
        "commands": args.commands,
        "baseline_worker_direct_ms": {"p50": round(pct(direct, 0.5), 2),
                                      "p99": round(pct(direct, 0.99), 2)},
        "via_host_ms": {"p50": round(pct(via_host, 0.5), 2),
                        "p99": round(pct(via_host, 0.99), 2)},
        "ratio_p50_host_to_direct": round(pct(via_host, 0.5) / pct(direct, 0.5), 2),
        "ratio_p99_host_to_direct": round(pct(via_host, 0.99) / pct(direct, 0.99), 2),
        "targets_ms": {"p50": 5, "p99": 25},
        "met": pct(via_host, 0.5) < 5 and pct(via_host, 0.99) < 25,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    trio.run(main)
