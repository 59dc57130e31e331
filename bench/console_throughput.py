"""Console throughput: a child printing lines as fast as it can → worker → websocket viewers.

Prints lines/s end to end for 1 viewer and for 10 viewers at once (each), checking that no
line is lost (seq contiguous, no gap frame), and the baseline: the same child read by a bare
trio pipe reader in this process. Targets (issue 2): ≥100,000 lines/s with 1 viewer, each of
10 viewers ≥30,000 lines/s, zero lost.

    .venv/bin/python bench/console_throughput.py [--lines N] [--viewers-many 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import trio
from trio_websocket import open_websocket_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import PYTHON, TOKEN, Manman, client, now, wait_state, worker_config

# ~60-byte lines, like a game's console; written in big chunks: "as fast as it can"
CHILD = r"""
import sys
n = int(sys.argv[1])
w = sys.stdout.write
step = 5000
for i in range(0, n, step):
    w("".join(f"[12:00:00] line {j:09d} player joined the server with some text\n"
              for j in range(i, min(n, i + step))))
sys.stdout.flush()
"""


async def baseline(lines: int) -> float:
    """The child read by a bare trio pipe reader: lines/s."""
    proc = await trio.lowlevel.open_process([PYTHON, "-c", CHILD, str(lines)],
                                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    count = 0
    t0 = now()
    while data := await proc.stdout.receive_some(65536):
        count += data.count(b"\n")
    elapsed = now() - t0
    await proc.wait()
    assert count == lines, count
    return lines / elapsed


class Viewer:
    """Counts child lines, checking seq contiguity frame by frame at C speed."""

    def __init__(self) -> None:
        self.count = 0
        self.next_seq: int | None = None
        self.gaps = 0
        self.done_at = 0.0

    def frame(self, raw: str) -> None:
        if raw.startswith('{"type":"gap"'):
            self.gaps += 1
            return
        if not raw.startswith('{"type":"lines"'):
            return
        first = int(raw[raw.index('"seq":') + 6:raw.index(",", raw.index('"seq":'))])
        last_at = raw.rindex('"seq":')
        last = int(raw[last_at + 6:raw.index(",", last_at)])
        n = raw.count('"seq":')
        if n != last - first + 1 or (self.next_seq is not None and first != self.next_seq):
            self.gaps += 1
        self.next_seq = last + 1
        self.count += raw.count("player joined the server")


async def run_viewers(url: str, server: str, n_viewers: int, lines: int, api: object
                      ) -> tuple[float, list[Viewer]]:
    ws_url = url.replace("http://", "ws://") + f"/server/{server}/log/ws?tail=0&token={TOKEN}"
    viewers = [Viewer() for _ in range(n_viewers)]
    all_done = trio.Event()
    remaining = [n_viewers]
    t0 = [0.0]

    async def view(v: Viewer, ready: trio.Event) -> None:
        async with open_websocket_url(ws_url, receive_buffer_size=None,
                                      max_message_size=4 << 20) as ws:
            await ws.get_message()  # hello
            ready.set()
            while v.count < lines:
                v.frame(await ws.get_message())
            v.done_at = now()
            remaining[0] -= 1
            if remaining[0] == 0:
                all_done.set()

    async with trio.open_nursery() as nursery:
        for v in viewers:
            ready = trio.Event()
            nursery.start_soon(view, v, ready)
            await ready.wait()
        t0[0] = now()
        r = await api.post(f"/server/{server}/start")  # type: ignore[attr-defined]
        assert r.status_code == 202, r.text
        with trio.fail_after(300):
            await all_done.wait()
    return t0[0], viewers


async def end_to_end(nursery: trio.Nursery, lines: int, n_viewers: int) -> list[float]:
    worker = Manman(["worker", "--config", str(worker_config())])
    url = await worker.start(nursery)
    api = client(url)
    try:
        spec = {"name": "flood", "game_id": f"exec:{PYTHON}", "args": ["-c", CHILD, str(lines)],
                "restart": {"policy": "never"}}
        r = await api.post("/server", json=spec)
        assert r.status_code == 201, r.text
        t0, viewers = await run_viewers(url, "flood", n_viewers, lines, api)
        rates = []
        for v in viewers:
            if v.gaps:
                raise SystemExit(f"FAIL: a viewer lost lines ({v.gaps} gaps)")
            rates.append(lines / (v.done_at - t0))
        await wait_state(api, "flood", "stopped")
        return rates
    finally:
        await api.aclose()
        await worker.stop()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lines", type=int, default=500_000)
    p.add_argument("--viewers-many", type=int, default=10)
    args = p.parse_args()
    async with trio.open_nursery() as nursery:
        base = await baseline(args.lines)
        one = (await end_to_end(nursery, args.lines, 1))[0]
        many = await end_to_end(nursery, args.lines, args.viewers_many)
        nursery.cancel_scope.cancel()
    result = {
        "lines": args.lines,
        "baseline_pipe_reader_lines_per_s": round(base),
        "one_viewer_lines_per_s": round(one),
        "one_viewer_ratio_to_baseline": round(one / base, 3),
        f"{args.viewers_many}_viewers_min_lines_per_s": round(min(many)),
        f"{args.viewers_many}_viewers_ratio_to_baseline": round(min(many) / base, 3),
        "lost_lines": 0,
        "targets": {"one_viewer": 100_000, "each_of_many": 30_000},
        "met": one >= 100_000 and min(many) >= 30_000,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    trio.run(main)
