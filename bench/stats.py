"""Cost of the live stats: one worker with N running servers sampled every 5 s, against the
same worker with sampling off (`stats_interval = 0`), measured in the same run; and the
memory of 24 h of history for N servers.

Each server is a sleeping process whose files directory holds `--files` small files (the
disk walk, at most once a minute a server, is part of the cost: the window is 60 s so each
server's files are walked once in it). The worker's CPU time (utime + stime, its threads
included) is read over the window after start-up. Goals (issue 15): under 2% of one core
for 200 servers at 5 s; under 30 MB of history for 200 servers x 24 h.

    .venv/bin/python bench/stats.py [--servers 200] [--interval 5] [--window 60] [--files 100]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (
    Manman,
    client,
    proc_cpu_seconds,
    proc_rss_mb,
    wait_state,
    worker_config,
)


async def measure(nursery: trio.Nursery, servers: int, interval: float, window: float,
                  files: int) -> dict[str, float]:
    cfg = worker_config(f"stats_interval = {interval}")
    worker = Manman(["worker", "--config", str(cfg)])
    url = await worker.start(nursery)
    api = client(url)
    try:
        for i in range(servers):
            r = await api.post("/server", json={
                "name": f"s-{i:03d}", "game_id": "exec:sleep", "args": ["3600"],
                "desired_state": "running"})
            assert r.status_code == 201, r.text
            d = cfg.parent / "data" / "servers" / r.json()["id"] / "files"
            d.mkdir(parents=True, exist_ok=True)
            for k in range(files):
                (d / f"f{k}.dat").write_bytes(b"x" * 1000)
        for i in range(servers):
            await wait_state(api, f"s-{i:03d}", "running", timeout=120)
        await trio.sleep(max(interval, 1) + 5)  # the first pass and its disk walks settle
        cpu0 = proc_cpu_seconds(worker.pid)
        await trio.sleep(window)
        cpu = (proc_cpu_seconds(worker.pid) - cpu0) / window * 100
        listed = (await api.get("/server")).json()["servers"]
        assert sum(s["state"] == "running" for s in listed) == servers
        if interval > 0:
            sampled = [s for s in listed if s["stats"] and s["stats"]["disk"] is not None]
            assert len(sampled) == servers, f"{len(sampled)} of {servers} sampled"
        return {"cpu_percent_of_one_core": cpu, "rss_mb": proc_rss_mb(worker.pid)}
    finally:
        await api.aclose()
        await worker.stop()


def history_memory(servers: int) -> dict[str, float]:
    """A full day of points for every server, as the worker holds it, and saved."""
    from manman.worker.stats.history import MINUTES, History

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    start = time.time() - MINUTES * 60
    rings = [History() for _ in range(servers)]
    for h in rings:
        for m in range(MINUTES):
            h.add(start + m * 60, 12.5, 1 << 30, 5 << 30)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    points = sum(len(h.points(0)) for h in rings)
    saved = sum(len(h.ring.tobytes()) for h in rings)
    return {"history_mb": round(used / 1e6, 2), "points": points,
            "saved_file_mb": round(saved / 1e6, 2)}


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--servers", type=int, default=200)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--window", type=float, default=60.0)
    p.add_argument("--files", type=int, default=100)
    args = p.parse_args()
    async with trio.open_nursery() as nursery:
        off = await measure(nursery, args.servers, 0, args.window, args.files)
        on = await measure(nursery, args.servers, args.interval, args.window, args.files)
        nursery.cancel_scope.cancel()
    cost = on["cpu_percent_of_one_core"] - off["cpu_percent_of_one_core"]
    mem = history_memory(args.servers)
    print(json.dumps({
        "servers": args.servers, "interval_s": args.interval, "window_s": args.window,
        "files_per_server": args.files,
        "sampling_off": {k: round(v, 2) for k, v in off.items()},
        "sampling_on": {k: round(v, 2) for k, v in on.items()},
        "sampling_cost_percent_of_one_core": round(cost, 2),
        "cpu_ratio_on_to_off": round(on["cpu_percent_of_one_core"]
                                     / max(off["cpu_percent_of_one_core"], 0.01), 2),
        **mem,
        "target_percent_of_one_core": 2, "target_history_mb": 30,
        "met": cost < 2 and mem["history_mb"] < 30,
    }, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    trio.run(main)
