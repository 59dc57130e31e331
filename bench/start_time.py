"""Start to running: `POST /server/{id}/start` until the worker reports `running` (the game's
ready line seen), for an exec server and a docker server; median of 5 each.

Baselines in the same run: the same game started bare until it prints its ready line (the
fake game as a child process; the container with `docker run -i`). Needs root and Debian's
docker.io + busybox-static for the docker half (it starts its own dockerd).

    .venv/bin/python bench/start_time.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import PYTHON, ROOT, Manman, client, wait_state, worker_config
from tests.dockerd import DockerUnavailable, running_dockerd

IMAGE = "manman-test/busybox:latest"
FAKEGAME = str(ROOT / "tests" / "fakegame.py")
DOCKER_GAME = 'echo "Server ready"; while read -r l; do [ "$l" = quit ] && exit 0; done'


async def bare(argv: list[str]) -> float:
    """Seconds from spawn to the ready line, without manman."""
    t0 = time.perf_counter()
    proc = await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    buf = b""
    while b"Server ready" not in buf:
        buf += await proc.stdout.receive_some(4096)
    elapsed = time.perf_counter() - t0
    await proc.stdin.send_all(b"quit\n")
    await proc.wait()
    return elapsed


async def through_manman(nursery: trio.Nursery, spec: dict[str, object], runs: int,
                         network: str = "") -> list[float]:
    extra = f'docker_network = "{network}"' if network else ""
    worker = Manman(["worker", "--config", str(worker_config(extra))])
    url = await worker.start(nursery)
    api = client(url)
    try:
        r = await api.post("/server", json=spec)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        await wait_state(api, sid, "stopped")
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            r = await api.post(f"/server/{sid}/start")
            assert r.status_code == 202, r.text
            with trio.fail_after(60):
                while (await api.get(f"/server/{sid}")).json()["state"] != "running":
                    await trio.sleep(0.002)
            times.append(time.perf_counter() - t0)
            await api.post(f"/server/{sid}/shutdown")
            await wait_state(api, sid, "stopped")
        return times
    finally:
        await api.aclose()
        await worker.stop()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    out: dict[str, object] = {"runs": args.runs}
    async with trio.open_nursery() as nursery:
        exec_spec = {"name": "ex", "game_id": f"exec:{PYTHON}", "args": ["-u", FAKEGAME],
                     "stop_command": "quit", "ready_pattern": "^Server ready$"}
        base = [await bare([PYTHON, "-u", FAKEGAME]) for _ in range(args.runs)]
        got = await through_manman(nursery, exec_spec, args.runs)
        out["exec"] = _summary(got, base)
        try:
            with running_dockerd(IMAGE) as host:
                os.environ["DOCKER_HOST"] = host
                docker_spec = {"name": "dk", "game_id": f"docker:{IMAGE}",
                               "args": ["sh", "-c", DOCKER_GAME], "stop_command": "quit",
                               "ready_pattern": "^Server ready$"}
                base = [await bare(["docker", "run", "-i", "--rm", "--network", "none", IMAGE,
                                    "sh", "-c", DOCKER_GAME]) for _ in range(args.runs)]
                got = await through_manman(nursery, docker_spec, args.runs, network="none")
                out["docker"] = _summary(got, base)
        except DockerUnavailable as e:
            out["docker"] = f"skipped: {e}"
        nursery.cancel_scope.cancel()
    print(json.dumps(out, indent=2))


def _summary(got: list[float], base: list[float]) -> dict[str, float]:
    m, b = statistics.median(got), statistics.median(base)
    return {"start_to_running_median_ms": round(m * 1000, 1),
            "baseline_bare_start_median_ms": round(b * 1000, 1),
            "ratio_to_baseline": round(m / b, 2)}


if __name__ == "__main__":
    trio.run(main)
