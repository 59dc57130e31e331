"""The console websocket protocol on a real worker: hello, lines, state, gaps, resume, input,
limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from manman.worker.api import issue_console_token
from tests.conftest import Client, RunningWorker, fake_spec, worker_config


def ws_url(worker: RunningWorker, server: str, token: str | None = None, **query: Any) -> str:
    base = worker.url.replace("http://", "ws://")
    q = {"token": token or worker.api.token, **query}
    return f"{base}/server/{server}/log/ws?" + "&".join(f"{k}={v}" for k, v in q.items())


async def recv(ws: Any, timeout: float = 10) -> dict[str, Any]:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())


async def collect_lines(ws: Any, until: str, timeout: float = 10) -> tuple[list[dict], list]:
    """Frames until a line with text `until`; returns (lines, other frames)."""
    lines: list[dict] = []
    other: list[dict] = []
    with trio.fail_after(timeout):
        while True:
            frame = await recv(ws)
            if frame["type"] == "lines":
                lines.extend(frame["lines"])
                if any(ln["text"] == until for ln in frame["lines"]):
                    return lines, other
            else:
                other.append(frame)


async def running(worker: RunningWorker, name: str, *args: str, **fields: Any) -> dict:
    await worker.api.post("/server", fake_spec(name, *args, desired_state="running", **fields),
                          expect=201)
    return await worker.api.wait_for(name, state="running")


async def test_hello_tail_state_live_lines_and_ping(worker: RunningWorker) -> None:
    s = await running(worker, "ws1")
    await worker.api.wait_line("ws1", "Server ready")
    async with open_websocket_url(ws_url(worker, "ws1", tail=2)) as ws:
        hello = await recv(ws)
        assert hello["type"] == "hello" and hello["server_id"] == s["id"]
        assert hello["state"] == "running" and hello["first_seq"] == 0
        first = await recv(ws)
        assert first["type"] == "lines" and len(first["lines"]) == 2
        assert first["lines"][-1]["seq"] == hello["next_seq"] - 1
        assert set(first["lines"][0]) == {"seq", "ts", "stream", "text"}
        state = await recv(ws)
        assert state == {"type": "state", "state": "running", "ready": True, "pid": s["pid"],
                         "exit_code": None, "restarts": 0, "install_progress": None}
        await ws.send_message(json.dumps({"type": "ping"}))
        assert await recv(ws) == {"type": "pong"}
        await ws.send_message(json.dumps({"type": "command", "data": "say over ws"}))
        lines, _ = await collect_lines(ws, "said: over ws")
        seqs = [ln["seq"] for ln in first["lines"] + lines]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        await ws.send_message(json.dumps({"type": "command", "data": "err to stderr"}))
        lines, _ = await collect_lines(ws, "to stderr")
        assert lines[-1]["stream"] == "stderr"
        await worker.api.post("/server/ws1/shutdown", expect=202)
        states = []
        with trio.fail_after(10):
            while not states or states[-1] != "stopped":
                frame = await recv(ws)
                if frame["type"] == "state":
                    states.append(frame["state"])
        assert states == ["stopping", "stopped"]


async def test_since_resume_has_no_gap_and_no_duplicate(worker: RunningWorker) -> None:
    await running(worker, "ws2")
    await worker.api.post("/server/ws2/command", {"data": "flood 3000"}, expect=202)
    await worker.api.wait_line("ws2", "flood 2999")
    async with open_websocket_url(ws_url(worker, "ws2", since=0)) as ws:
        await recv(ws)
        lines, _ = await collect_lines(ws, "flood 1499")
    # a client that dropped right after that line: resume from the next seq
    lines = lines[:next(i for i, ln in enumerate(lines) if ln["text"] == "flood 1499") + 1]
    last = lines[-1]["seq"]
    async with open_websocket_url(ws_url(worker, "ws2", since=last + 1)) as ws:
        hello = await recv(ws)
        more, _ = await collect_lines(ws, "flood 2999")
    seqs = [ln["seq"] for ln in lines + more]
    assert seqs == list(range(0, len(seqs)))
    assert hello["next_seq"] >= seqs[-1] + 1


async def test_console_tokens_read_only_write_wrong_server_expired(
        worker: RunningWorker) -> None:
    s = await running(worker, "ws3")
    other = await running(worker, "ws3b")
    secrets = worker.handle.secrets
    ro = issue_console_token(secrets, s["id"], write=False)
    rw = issue_console_token(secrets, s["id"], write=True)
    async with open_websocket_url(ws_url(worker, "ws3", ro)) as ws:
        assert (await recv(ws))["type"] == "hello"
        await ws.send_message(json.dumps({"type": "command", "data": "say nope"}))
        with trio.fail_after(5):
            while (frame := await recv(ws))["type"] != "error":
                pass
        assert frame["code"] == "forbidden"
    async with open_websocket_url(ws_url(worker, "ws3", rw)) as ws:
        await recv(ws)
        await ws.send_message(json.dumps({"type": "command", "data": "say yes"}))
        await collect_lines(ws, "said: yes")
    # the history route takes the console token too; the admin routes do not
    r = await worker.api.http.get(f"/server/{s['id']}/log",
                                  headers={"Authorization": f"Bearer {ro}"})
    assert r.status_code == 200
    r = await worker.api.http.post(f"/server/{s['id']}/shutdown",
                                   headers={"Authorization": f"Bearer {rw}"})
    assert r.status_code == 403
    r = await worker.api.http.get(f"/server/{other['id']}/log",
                                  headers={"Authorization": f"Bearer {ro}"})
    assert r.status_code == 403
    tampered = ro[:-2] + ("AA" if not ro.endswith("AA") else "BB")
    r = await worker.api.http.get(f"/server/{s['id']}/log",
                                  headers={"Authorization": f"Bearer {tampered}"})
    assert r.status_code == 401
    expired = issue_console_token(secrets, s["id"], write=False, ttl=-5)
    r = await worker.api.http.get(f"/server/{s['id']}/log",
                                  headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired"


async def test_token_expiring_while_open_closes_with_error(worker: RunningWorker) -> None:
    s = await running(worker, "ws4")
    short = issue_console_token(worker.handle.secrets, s["id"], write=False, ttl=1.5)
    async with open_websocket_url(ws_url(worker, "ws4", short)) as ws:
        frames = []
        with trio.fail_after(10):
            try:
                while True:
                    frames.append(await recv(ws))
            except ConnectionClosed:
                pass
        assert frames[-1]["type"] == "error" and frames[-1]["code"] == "token_expired"


async def test_bad_frames_oversize_and_rate_limit(worker: RunningWorker) -> None:
    await running(worker, "ws5")
    async with open_websocket_url(ws_url(worker, "ws5")) as watcher, \
            open_websocket_url(ws_url(worker, "ws5")) as ws:
        await recv(watcher)
        await recv(ws)
        await ws.send_message("x" * (33 * 1024))
        await ws.send_message("{not json")
        await ws.send_message(json.dumps({"type": "dance"}))
        codes = []
        with trio.fail_after(5):
            while len(codes) < 3:
                frame = await recv(ws)
                if frame["type"] == "error":
                    codes.append(frame["code"])
        assert codes == ["frame_too_large", "bad_frame", "bad_frame"]
        await ws.send_message(json.dumps({"type": "ping"}))
        with trio.fail_after(5):
            while (await recv(ws))["type"] != "pong":
                pass
        # 40 commands at once: the burst of 20 passes, the rest is refused
        for i in range(40):
            await ws.send_message(json.dumps({"type": "command", "data": f"say r{i}"}))
        refused = 0
        closed = False
        with trio.move_on_after(3):
            try:
                while True:
                    frame = await recv(ws)
                    if frame["type"] == "error" and frame["code"] == "rate_limited":
                        refused += 1
            except ConnectionClosed:
                closed = True
        assert refused >= 15 and closed  # 3 + 20 violations: the client is disconnected
        # the other viewer saw the accepted commands' answers and is still served
        await collect_lines(watcher, "said: r19")
        await watcher.send_message(json.dumps({"type": "ping"}))
        with trio.fail_after(5):
            while (await recv(watcher))["type"] != "pong":
                pass
    page = await worker.api.get("/server/ws5/log?since=0&limit=10000")
    said = [ln["text"] for ln in page["lines"] if ln["text"].startswith("said: r")]
    assert 20 <= len(said) <= 22 and said[:20] == [f"said: r{i}" for i in range(20)]


async def test_unauthenticated_websocket_is_refused(worker: RunningWorker) -> None:
    await running(worker, "ws6")
    with pytest.raises(Exception) as info:
        async with open_websocket_url(ws_url(worker, "ws6", "wrong")):
            pass
    assert "401" in str(info.value) or "rejected" in str(info.value).lower()


@pytest.fixture
async def small_ring_worker(request: Any, tmp_path: Path, bg: trio.Nursery) -> Any:
    from manman.worker.main import run_worker
    from tests.conftest import RunningWorker

    cfg = worker_config(tmp_path, console_ring_bytes=request.param, log_file_bytes=256 * 1024,
                        log_files_keep=3)
    handle = await bg.start(run_worker, cfg)
    w = RunningWorker(handle, Client(handle.url, "test-worker-token"))
    yield w
    await w.shutdown()
    await w.api.aclose()


@pytest.mark.parametrize("small_ring_worker", [1 << 20], indirect=True)
async def test_slow_viewer_gets_gap_and_never_slows_others(small_ring_worker: Any) -> None:
    worker = small_ring_worker
    await running(worker, "flood")
    # 400k lines at 200k lines/s: more than the 1 MiB ring plus what the kernel buffers for a
    # viewer that reads nothing; a viewer that reads keeps up
    total, rate = 400_000, 200_000
    async with open_websocket_url(ws_url(worker, "flood", tail=0),
                                  receive_buffer_size=None) as fast, \
            open_websocket_url(ws_url(worker, "flood", tail=0)) as slow:
        await recv(fast)
        await recv(slow)
        got: list[int] = []
        started = trio.current_time()
        async with trio.open_nursery() as n:
            n.start_soon(worker.api.post, "/server/flood/command",
                         {"data": f"pace {total} {rate}"})
            with trio.fail_after(30):
                while not got or got[-1] < got[0] + total - 1:
                    frame = await recv(fast)
                    assert frame["type"] != "gap", frame
                    if frame["type"] == "lines":
                        got.extend(ln["seq"] for ln in frame["lines"]
                                   if ln["text"].startswith("paced "))
        took = trio.current_time() - started
        # the fast viewer kept up: every line, in order, no gap; the game was not held back
        assert got == list(range(got[0], got[0] + total))
        assert took < total / rate * 3, took
        # the slow one (it read nothing meanwhile) is skipped forward with a gap
        gaps, seen = [], []
        with trio.fail_after(20):
            while not seen or seen[-1] != got[-1]:
                frame = await recv(slow)
                if frame["type"] == "gap":
                    gaps.append(frame)
                elif frame["type"] == "lines":
                    seen.extend(ln["seq"] for ln in frame["lines"])
        assert gaps and gaps[0]["reason"] == "slow_consumer"
        assert gaps[0]["to_seq"] + 1 <= seen[-1]
    # a resume from before what is stored is told so
    async with open_websocket_url(ws_url(worker, "flood", since=0)) as ws:
        await recv(ws)
        frame = await recv(ws)
        assert frame["type"] == "gap" and frame["reason"] == "expired"
        assert frame["from_seq"] == 0


@pytest.mark.parametrize("small_ring_worker", [500], indirect=True)
async def test_replay_from_files_beyond_the_ring(small_ring_worker: Any) -> None:
    worker = small_ring_worker
    await running(worker, "replay")
    await worker.api.post("/server/replay/command", {"data": "flood 2000"}, expect=202)
    await worker.api.wait_line("replay", "flood 1999")
    page = await worker.api.get("/server/replay/log?since=0&limit=1")
    first = page["first_seq"]
    async with open_websocket_url(ws_url(worker, "replay", since=first)) as ws:
        await recv(ws)
        lines, other = await collect_lines(ws, "flood 1999")
    seqs = [ln["seq"] for ln in lines]
    assert seqs == list(range(first, first + len(seqs)))
    assert not [f for f in other if f["type"] == "gap"]


async def test_replay_of_wide_lines_comes_in_frames_a_client_accepts(
        tmp_path: Path, bg: trio.Nursery) -> None:
    """Lines near the 64 KiB limit replayed from the files (the ring holds none of them): the
    frames stay under 1 MiB, trio-websocket's default, and a history page is bounded too."""
    from manman.worker.main import run_worker

    cfg = worker_config(tmp_path, console_ring_bytes=500, log_file_bytes=32 << 20)
    handle = await bg.start(run_worker, cfg)
    worker = RunningWorker(handle, Client(handle.url, "test-worker-token"))
    try:
        await running(worker, "wide")
        await worker.api.post("/server/wide/command", {"data": "wide 150 60000"}, expect=202)
        with trio.fail_after(20):
            while not (page := await worker.api.get("/server/wide/log?limit=1"))["lines"] or \
                    not page["lines"][0]["text"].startswith("wide 149 "):
                await trio.sleep(0.05)
        async with open_websocket_url(ws_url(worker, "wide", tail=150),
                                      max_message_size=1 << 20) as ws:
            hello = await recv(ws)
            lines, other = await collect_lines(ws, "wide 149 " + "x" * (60000 - 9))
        assert [ln["seq"] for ln in lines] == list(range(hello["next_seq"] - 150,
                                                         hello["next_seq"]))
        assert not [f for f in other if f["type"] == "gap"]
        # history pages: bounded in size, next_seq goes on where one stopped
        since, got = hello["next_seq"] - 150, 0
        while since < hello["next_seq"]:
            r = await worker.api.request("GET", f"/server/wide/log?since={since}&limit=10000")
            assert len(r.content) < 10 << 20
            page = r.json()
            assert page["lines"][0]["seq"] == since
            got += len(page["lines"])
            since = page["next_seq"]
        assert got == 150
    finally:
        await worker.shutdown()
        await worker.api.aclose()
