"""Idle cost of many servers: one worker with N idle servers (a tiny sleeping process each).

Prints the worker's RSS and CPU use over an idle window, and the same for a worker with no
servers measured in the same run (the baseline), with the ratios. Targets (issue 2): 200
servers, RSS under 150 MB, idle CPU under 5% of one core.

    .venv/bin/python bench/actors.py [--servers 200] [--window 20]
"""

from __future__ import annotations

import argparse
import json
import sys
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


async def measure(nursery: trio.Nursery, servers: int, window: float) -> dict[str, float]:
    worker = Manman(["worker", "--config", str(worker_config())])
    url = await worker.start(nursery)
    api = client(url)
    try:
        for i in range(servers):
            r = await api.post("/server", json={
                "name": f"idle-{i:03d}", "game_id": "exec:sleep", "args": ["3600"],
                "desired_state": "running", "health": {"interval": 5}})
            assert r.status_code == 201, r.text
        for i in range(servers):
            await wait_state(api, f"idle-{i:03d}", "running")
        await trio.sleep(3)  # let start-up work settle
        cpu0 = proc_cpu_seconds(worker.pid)
        await trio.sleep(window)
        cpu = (proc_cpu_seconds(worker.pid) - cpu0) / window * 100
        rss = proc_rss_mb(worker.pid)
        running = sum(1 for s in (await api.get("/server")).json()["servers"]
                      if s["state"] == "running")
        assert running == servers, running
        return {"rss_mb": rss, "cpu_percent_of_one_core": cpu}
    finally:
        await api.aclose()
        await worker.stop()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--servers", type=int, default=200)
    p.add_argument("--window", type=float, default=20.0)
    args = p.parse_args()
    async with trio.open_nursery() as nursery:
        base = await measure(nursery, 0, args.window)
        many = await measure(nursery, args.servers, args.window)
        nursery.cancel_scope.cancel()
    print(json.dumps({
        "servers": args.servers,
        "idle_window_s": args.window,
        "baseline_0_servers": {k: round(v, 2) for k, v in base.items()},
        f"with_{args.servers}_servers": {k: round(v, 2) for k, v in many.items()},
        "rss_ratio_to_baseline": round(many["rss_mb"] / base["rss_mb"], 2),
        "rss_per_server_kb": round((many["rss_mb"] - base["rss_mb"]) * 1024 / max(1,
                                                                                  args.servers)),
        "targets": {"rss_mb": 150, "cpu_percent_of_one_core": 5},
        "met": many["rss_mb"] < 150 and many["cpu_percent_of_one_core"] < 5,
    }, indent=2))


if __name__ == "__main__":
    trio.run(main)
