"""Heartbeats: N simulated workers (no real processes), 10 servers each, against one host
process on its embedded PostgreSQL.

Prints heartbeats/s handled (closed loop: as fast as the host answers), p50/p99 latency at
the target rate of 1,000 heartbeats/s (open loop), and the baseline: `GET /healthz` on the
same host with the same client (the HTTP stack's own ceiling), with the ratio. Target
(issue 4): 1,000 heartbeats/s (5,000 workers at a 5 s interval) on 2 cores.

    .venv/bin/python bench/heartbeats.py [--workers 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgspec
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import Manman, RawClient, build_request

ADMIN, JOIN = "bench-admin", "bench-join"
SERVERS_PER_WORKER = 10


async def setup(url: str, workers: int, concurrency: int = 8) -> list[bytes]:
    """Join and register N workers with 10 servers each; their heartbeat requests."""
    requests: list[bytes] = [b""] * workers
    admin = {"Authorization": f"Bearer {ADMIN}"}

    async def one(http: httpx.AsyncClient, i: int) -> None:
        r = await http.post("/worker", json={"name": f"sim-{i}"},
                            headers={"Authorization": f"Bearer {JOIN}"})
        creds = r.json()
        wid, token = creds["worker_id"], creds["token"]
        # no api_url: simulated workers are never called back
        r = await http.post(f"/worker/{wid}", json={"name": f"sim-{i}", "api_url": ""},
                            headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        servers, gens = [], {}
        for j in range(SERVERS_PER_WORKER):
            r = await http.post("/server", headers=admin, json={
                "name": f"sim-{i}-{j}", "worker_id": wid, "game_id": "exec:/bin/true"})
            assert r.status_code == 201, r.text
            sid = r.json()["id"]
            gens[sid] = 1
            servers.append({"id": sid, "observed_generation": 1, "state": "running",
                            "ready": True, "pid": 1000 + j, "restarts": 0,
                            "started_at": time.time(), "updated_at": time.time()})
        body = msgspec.json.encode({"status": "alive", "servers": servers,
                                    "generations": gens})
        requests[i] = build_request("POST", f"/worker/{wid}/health", token, body)

    async def lane(k: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            for i in range(k, workers, concurrency):
                await one(http, i)

    async with trio.open_nursery() as n:
        for k in range(concurrency):
            n.start_soon(lane, k)
    return requests


async def closed_loop(host: str, port: int, requests: list[bytes], seconds: float,
                      connections: int = 32) -> tuple[float, list[float]]:
    """As fast as the host answers: requests/s and latencies."""
    lat: list[float] = []
    done = [0]
    deadline = trio.current_time() + seconds

    async def conn(k: int) -> None:
        c = RawClient(host, port)
        i = k
        while trio.current_time() < deadline:
            t = time.perf_counter()
            status = await c.roundtrip(requests[i % len(requests)])
            lat.append(time.perf_counter() - t)
            assert status == 200, status
            done[0] += 1
            i += connections
        await c.aclose()

    t0 = time.perf_counter()
    async with trio.open_nursery() as n:
        for k in range(connections):
            n.start_soon(conn, k)
    return done[0] / (time.perf_counter() - t0), lat


async def open_loop(host: str, port: int, requests: list[bytes], rate: float,
                    seconds: float, connections: int = 64) -> list[float]:
    """Heartbeats sent on a schedule of `rate`/s; latency from the scheduled time."""
    lat: list[float] = []
    total = int(rate * seconds)
    start = trio.current_time() + 0.2

    async def conn(k: int) -> None:
        c = RawClient(host, port)
        for i in range(k, total, connections):
            due = start + i / rate
            await trio.sleep_until(due)
            status = await c.roundtrip(requests[i % len(requests)])
            lat.append(trio.current_time() - due)
            assert status == 200, status
        await c.aclose()

    async with trio.open_nursery() as n:
        for k in range(connections):
            n.start_soon(conn, k)
    return lat


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=5000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rate", type=float, default=1000)
    args = p.parse_args()
    d = Path(tempfile.mkdtemp(prefix="manman-bench-host-"))
    cfg = d / "host.toml"
    cfg.write_text(f'[host]\nlisten = "127.0.0.1:0"\ndata_dir = "{d / "host"}"\n'
                   f'admin_token = "{ADMIN}"\njoin_token = "{JOIN}"\nworker_timeout = 3600\n'
                   'worker_expiry = 0\n')
    async with trio.open_nursery() as nursery:
        host = Manman(["host", "--config", str(cfg)])
        url = await host.start(nursery)
        hostname, port = url.split("//")[1].rsplit(":", 1)
        try:
            t = time.perf_counter()
            requests = await setup(url, args.workers)
            setup_s = time.perf_counter() - t
            healthz = [build_request("GET", "/healthz", "x")]
            base_rate, _ = await closed_loop(hostname, int(port), healthz, args.seconds / 2)
            hb_rate, hb_lat = await closed_loop(hostname, int(port), requests, args.seconds)
            at_rate = await open_loop(hostname, int(port), requests, args.rate, args.seconds)
        finally:
            await host.stop()
        nursery.cancel_scope.cancel()
    print(json.dumps({
        "simulated_workers": args.workers,
        "servers_per_heartbeat": SERVERS_PER_WORKER,
        "setup_seconds": round(setup_s, 1),
        "baseline_healthz_requests_per_s": round(base_rate),
        "heartbeats_per_s_closed_loop": round(hb_rate),
        "ratio_to_baseline": round(hb_rate / base_rate, 3),
        "closed_loop_p99_ms": round(pct(hb_lat, 0.99), 2),
        f"at_{int(args.rate)}_per_s": {"p50_ms": round(pct(at_rate, 0.5), 2),
                                       "p99_ms": round(pct(at_rate, 0.99), 2),
                                       "sent": len(at_rate)},
        "target_heartbeats_per_s": 1000,
        "met": hb_rate >= 1000,
    }, indent=2))


if __name__ == "__main__":
    trio.run(main)
