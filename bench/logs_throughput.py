"""`manman logs -f` throughput: lines/s printed to a pipe (not a terminal) while a server
floods, against a bare websocket client reading the same stream through the same host.

A host process (embedded PostgreSQL) and a worker process joined to it; the server prints N
lines as fast as it can. Both readers go through the host's console proxy.

    .venv/bin/python bench/logs_throughput.py [--lines 300000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import trio
from trio_websocket import open_websocket_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ADMIN, PYTHON, ROOT, client, host_and_worker
from bench.console_throughput import CHILD


async def run_once(api: httpx.AsyncClient, host_url: str, name: str, lines: int,
                   reader: str) -> float:
    """Seconds from start until the reader has all `lines` child lines."""
    r = await api.post("/server", json={"name": name, "game_id": f"exec:{PYTHON}",
                                        "args": ["-c", CHILD, str(lines)],
                                        "restart": {"policy": "never"}})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    with trio.fail_after(30):
        while (await api.get(f"/server/{sid}")).json()["state"] != "stopped":
            await trio.sleep(0.05)
    since = (await api.get(f"/server/{sid}/log?limit=1")).json()["next_seq"]
    done = trio.Event()
    t0 = [0.0]

    async def cli() -> None:
        proc = await trio.lowlevel.open_process(
            [PYTHON, "-m", "manman", "logs", name, "-f", "--since", str(since),
             "--host-url", host_url, "--token", ADMIN],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=str(ROOT))
        assert proc.stdout is not None
        count = 0
        try:
            while count < lines:
                data = await proc.stdout.receive_some(1 << 16)
                count += data.count(b"player joined the server")
        finally:
            proc.kill()
            await proc.wait()
        done.set()

    async def bare() -> None:
        url = host_url.replace("http", "ws") + f"/server/{sid}/log/ws?since={since}"
        count = 0
        async with open_websocket_url(url, extra_headers=[("Authorization", f"Bearer {ADMIN}")],
                                      receive_buffer_size=None, max_message_size=4 << 20) as ws:
            while count < lines:
                count += (await ws.get_message()).count("player joined the server")
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cli if reader == "cli" else bare)
        await trio.sleep(1.0)  # the reader is connected and waiting
        t0[0] = time.perf_counter()
        r = await api.post(f"/server/{sid}/command", json={"type": "start"})
        assert r.status_code == 202, r.text
        with trio.fail_after(300):
            await done.wait()
    return time.perf_counter() - t0[0]


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lines", type=int, default=300_000)
    args = p.parse_args()
    async with trio.open_nursery() as nursery:
        host, host_url, worker, _, _ = await host_and_worker(
            nursery, "manman-bench-logs-", "heartbeat_interval = 1")
        try:
            async with client(host_url, ADMIN) as api:
                base = await run_once(api, host_url, "bare", args.lines, "bare")
                cli = await run_once(api, host_url, "cli", args.lines, "cli")
        finally:
            await worker.stop()
            await host.stop()
        nursery.cancel_scope.cancel()
    print(json.dumps({
        "lines": args.lines,
        "baseline_bare_websocket_lines_per_s": round(args.lines / base),
        "manman_logs_f_lines_per_s": round(args.lines / cli),
        "ratio_to_baseline": round(base / cli, 2),
    }, indent=2))


if __name__ == "__main__":
    trio.run(main)
