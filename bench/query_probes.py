"""CPU of game queries: one worker probing N servers by A2S every 5 s, against the same worker
with probes off, measured in the same run.

Each server is a tiny sleeping process; its game query is answered by one responder process
(this script with --serve) holding N UDP ports, each demanding the S2C_CHALLENGE first, as
Source servers do since Dec 2020 (so every probe is two round trips). The worker's CPU time
(utime + stime) is read over a fixed window after start-up. Goal (issue 12): 200 servers
probed every 5 s cost under 3% of one core.

    .venv/bin/python bench/query_probes.py [--servers 200] [--interval 5] [--window 30]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (
    PYTHON,
    Manman,
    client,
    proc_cpu_seconds,
    proc_rss_mb,
    wait_state,
    worker_config,
)

REQUEST = b"\xff\xff\xff\xffTSource Engine Query\x00"
CHALLENGE = b"\x0a\x0b\x0c\x0d"


def info_reply(players: int) -> bytes:
    """S2A_INFO as the Valve wiki lays it out (no extra data)."""
    def s(text: str) -> bytes:
        return text.encode() + b"\x00"
    return (b"\xff\xff\xff\xff\x49\x11" + s("bench") + s("de_dust2") + s("csgo")
            + s("Counter-Strike") + struct.pack("<H", 730)
            + bytes([players, 24, 0, ord("d"), ord("l"), 0, 1]) + s("1.0.0"))


async def serve(count: int) -> None:
    """N UDP ports answering A2S_INFO with the challenge; prints the ports as one JSON line."""
    socks = []
    for _ in range(count):
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        socks.append(sock)
    print(json.dumps([s.getsockname()[1] for s in socks]), flush=True)

    async def answer(sock: trio.socket.SocketType, players: int) -> None:
        reply = info_reply(players)
        while True:
            data, addr = await sock.recvfrom(2048)
            if data == REQUEST:
                await sock.sendto(b"\xff\xff\xff\xff\x41" + CHALLENGE, addr)
            elif data == REQUEST + CHALLENGE:
                await sock.sendto(reply, addr)

    async with trio.open_nursery() as nursery:
        for i, sock in enumerate(socks):
            nursery.start_soon(answer, sock, i % 25)


async def measure(nursery: trio.Nursery, ports: list[int], probes: bool, interval: float,
                  window: float) -> dict[str, float]:
    worker = Manman(["worker", "--config", str(worker_config())])
    url = await worker.start(nursery)
    api = client(url)
    try:
        for i, port in enumerate(ports):
            spec: dict[str, object] = {
                "name": f"q-{i:03d}", "game_id": "exec:sleep", "args": ["3600"],
                "desired_state": "running",
                "ports": [{"name": "query", "port": port, "protocol": "udp"}]}
            if probes:
                spec["health"] = {"query": {"type": "a2s", "port": "{{port.query}}",
                                            "interval": interval, "initial_delay": 0}}
            r = await api.post("/server", json=spec)
            assert r.status_code == 201, r.text
        # with probes, `running` means the query answered (no ready_pattern)
        for i in range(len(ports)):
            await wait_state(api, f"q-{i:03d}", "running", timeout=120)
        await trio.sleep(interval + 2)  # let start-up work settle
        cpu0 = proc_cpu_seconds(worker.pid)
        await trio.sleep(window)
        cpu = (proc_cpu_seconds(worker.pid) - cpu0) / window * 100
        servers = (await api.get("/server")).json()["servers"]
        assert sum(s["state"] == "running" for s in servers) == len(ports)
        if probes:
            fresh = [s for s in servers if s["query"] and s["query"]["ok"]
                     and s["query"]["players"] is not None]
            assert len(fresh) == len(ports), f"{len(fresh)} of {len(ports)} answered"
        return {"cpu_percent_of_one_core": cpu, "rss_mb": proc_rss_mb(worker.pid)}
    finally:
        await api.aclose()
        await worker.stop()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--servers", type=int, default=200)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--window", type=float, default=30.0)
    p.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        await serve(args.serve)
        return
    responder = await trio.lowlevel.open_process(
        [PYTHON, __file__, "--serve", str(args.servers)], stdout=subprocess.PIPE)
    try:
        assert responder.stdout is not None
        buf = b""
        with trio.fail_after(30):
            while b"\n" not in buf:
                buf += await responder.stdout.receive_some(65536)
        ports: list[int] = json.loads(buf.split(b"\n", 1)[0])
        async with trio.open_nursery() as nursery:
            off = await measure(nursery, ports, False, args.interval, args.window)
            on = await measure(nursery, ports, True, args.interval, args.window)
            nursery.cancel_scope.cancel()
        cost = on["cpu_percent_of_one_core"] - off["cpu_percent_of_one_core"]
        print(json.dumps({
            "servers": args.servers, "interval_s": args.interval, "window_s": args.window,
            "probes_per_second": round(args.servers / args.interval, 1),
            "probes_off": {k: round(v, 2) for k, v in off.items()},
            "probes_on": {k: round(v, 2) for k, v in on.items()},
            "probe_cost_percent_of_one_core": round(cost, 2),
            "cpu_ratio_on_to_off": round(on["cpu_percent_of_one_core"]
                                         / max(off["cpu_percent_of_one_core"], 0.01), 2),
            "cpu_us_per_probe": round(cost / 100 / (args.servers / args.interval) * 1e6),
            "target_percent_of_one_core": 3,
            "met": on["cpu_percent_of_one_core"] < 3,
        }, indent=2))
    finally:
        responder.kill()
        await responder.wait()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    trio.run(main)
