"""Webhooks: one host process (embedded PostgreSQL) delivering 1,000 events to a receiver on
127.0.0.1, against the idle figures of the same run.

A simulated worker (no processes) reports 100 servers; each heartbeat flips all of them
between running (ready) and stopped, so each one makes 100 events (`server.ready` or
`server.stopped`) for one generic hook with a secret. As a worker of this version does, the
heartbeat carries the 100 events it recorded (`events`, taken into the outbox in one
transaction); `--derived` measures an older worker's heartbeat instead, whose events the host
derives from the status. Prints the host's CPU seconds while idle and while delivering, the
heartbeat latency in both, and the events' latency from `at` (when they happened) to the
receiver reading them.

    .venv/bin/python bench/webhooks.py [--events 1000] [--derived]
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
from bench.common import ADMIN, JOIN, Manman, proc_cpu_seconds
from tests.receiver import Receiver

SERVERS = 100


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def heartbeat(servers: list[str], running: bool, seq: int | None, changed: bool) -> bytes:
    """A heartbeat; with `seq` (the last event sent before), a worker of this version's:
    the events of the flip when `changed`, else an empty list (nothing new)."""
    now = time.time()
    body: dict[str, object] = {
        "status": "alive", "generations": {s: 1 for s in servers},
        "servers": [{"id": s, "observed_generation": 1,
                     "state": "running" if running else "stopped", "ready": running,
                     "restarts": 0, "updated_at": now} for s in servers]}
    if seq is not None:
        event = "server.ready" if running else "server.stopped"
        body["events"] = [{"seq": seq + i + 1, "at": now, "event": event, "server_id": s,
                           "data": {}} for i, s in enumerate(servers)] if changed else []
    return msgspec.json.encode(body)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--idle-seconds", type=float, default=5)
    p.add_argument("--derived", action="store_true",
                   help="an older worker: no `events`, the host derives them")
    args = p.parse_args()
    seq: int | None = None if args.derived else 0
    beats = max(1, args.events // SERVERS)
    d = Path(tempfile.mkdtemp(prefix="manman-bench-webhooks-"))
    cfg = d / "host.toml"
    cfg.write_text(f'[host]\nlisten = "127.0.0.1:0"\ndata_dir = "{d / "host"}"\n'
                   f'admin_token = "{ADMIN}"\njoin_token = "{JOIN}"\nworker_timeout = 3600\n'
                   'worker_expiry = 0\n')
    async with trio.open_nursery() as nursery:
        rx: Receiver = await nursery.start(Receiver().serve)
        host = Manman(["host", "--config", str(cfg)])
        url = await host.start(nursery)
        admin = {"Authorization": f"Bearer {ADMIN}"}
        try:
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                creds = (await http.post("/worker", json={"name": "sim"}, headers={
                    "Authorization": f"Bearer {JOIN}"})).json()
                wid, token = creds["worker_id"], creds["token"]
                auth = {"Authorization": f"Bearer {token}"}
                await http.post(f"/worker/{wid}", json={"name": "sim", "api_url": ""},
                                headers=auth)
                servers = []
                for i in range(SERVERS):
                    r = await http.post("/server", headers=admin, json={
                        "name": f"s{i}", "worker_id": wid, "game_id": "exec:/bin/true"})
                    servers.append(r.json()["id"])
                r = await http.post(f"/worker/{wid}/health", headers=auth,
                                    content=heartbeat(servers, False, seq, False))
                assert r.status_code == 200, r.text
                r = await http.post("/webhook", headers=admin, json={
                    "url": rx.url("/ok"), "secret": "bench",
                    "events": ["server.ready", "server.stopped"]})
                assert r.status_code == 201, r.text

                async def beat(running: bool, changed: bool) -> float:
                    nonlocal seq
                    t = time.perf_counter()
                    r = await http.post(f"/worker/{wid}/health", headers=auth,
                                        content=heartbeat(servers, running, seq, changed))
                    assert r.status_code == 200, r.text
                    if seq is not None and changed:
                        seq += len(servers)
                        assert r.json()["events_acked"] == seq, r.text
                    return time.perf_counter() - t

                # idle: the same heartbeats, nothing changes
                idle_lat: list[float] = []
                cpu0, t0 = proc_cpu_seconds(host.pid), time.perf_counter()
                while time.perf_counter() - t0 < args.idle_seconds:
                    idle_lat.append(await beat(False, False))
                    await trio.sleep(0.1)
                idle_cpu = proc_cpu_seconds(host.pid) - cpu0
                idle_s = time.perf_counter() - t0
                # events: each heartbeat flips every server
                busy_lat: list[float] = []
                cpu0, t0 = proc_cpu_seconds(host.pid), time.perf_counter()
                for n in range(beats):
                    busy_lat.append(await beat(n % 2 == 0, True))
                    await trio.sleep(0.1)
                with trio.fail_after(120):
                    while len(rx.on("/ok")) < beats * SERVERS:
                        await trio.sleep(0.01)
                busy_s = time.perf_counter() - t0
                busy_cpu = proc_cpu_seconds(host.pid) - cpu0
        finally:
            await host.stop()
        nursery.cancel_scope.cancel()
    got = rx.on("/ok")
    wall_at = time.time() - time.monotonic()  # the receiver keeps monotonic times
    lat = [r.at + wall_at - json.loads(r.body)["at"] for r in got]
    print(json.dumps({
        "servers": SERVERS, "events": len(got),
        "path": "derived from the status (older worker)" if args.derived
        else "sent by the worker (events in the heartbeat)",
        "idle": {"seconds": round(idle_s, 2), "host_cpu_seconds": round(idle_cpu, 3),
                 "host_cpu_percent": round(100 * idle_cpu / idle_s, 1),
                 "heartbeat_p50_ms": round(pct(idle_lat, 0.5), 2),
                 "heartbeat_p99_ms": round(pct(idle_lat, 0.99), 2)},
        "delivering": {"seconds": round(busy_s, 2), "host_cpu_seconds": round(busy_cpu, 3),
                       "host_cpu_percent": round(100 * busy_cpu / busy_s, 1),
                       "host_cpu_ms_per_event": round(1000 * busy_cpu / max(1, len(got)), 3),
                       "heartbeat_p50_ms": round(pct(busy_lat, 0.5), 2),
                       "heartbeat_p99_ms": round(pct(busy_lat, 0.99), 2),
                       "event_latency_p50_ms": round(pct(lat, 0.5), 1),
                       "event_latency_p99_ms": round(pct(lat, 0.99), 1),
                       "event_latency_max_ms": round(max(lat) * 1000, 1)},
    }, indent=2))


if __name__ == "__main__":
    trio.run(main)
