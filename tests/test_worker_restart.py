"""The worker as a real process: SIGKILL and restart, leftovers, seq continuity, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import trio

from manman.worker import procs
from tests.conftest import PYTHON, Client, ManmanProcess, fake_spec, processes_under, write_config

TOKEN = "restart-test-token"


def standalone_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "worker.toml", f"""
[worker]
host_url = ""
listen = "127.0.0.1:0"
data_dir = "{tmp_path / 'data'}"
api_token = "{TOKEN}"
""")


async def test_sigkill_and_restart_keeps_servers_kills_leftovers_continues_seq(
        tmp_path: Path, bg: trio.Nursery) -> None:
    cfg = standalone_config(tmp_path)
    data = tmp_path / "data"
    first = ManmanProcess(["worker", "--config", str(cfg)])
    second = ManmanProcess(["worker", "--config", str(cfg)])
    try:
        url = await first.start(bg)
        api = Client(url, TOKEN)
        await api.post("/server", fake_spec("keep", "--child", desired_state="running"),
                       expect=201)
        await api.post("/server", fake_spec("idle"), expect=201)
        s = await api.wait_for("keep", state="running")
        await api.post("/server/keep/command", {"data": "flood 500"}, expect=202)
        await api.wait_line("keep", "flood 499")
        before = await api.get("/server/keep/log?since=0&limit=10000")
        old_pids = processes_under(data)
        assert s["pid"] in old_pids and len(old_pids) >= 2  # the game and its child
        await api.aclose()

        first.kill9()
        assert await first.wait() == -signal.SIGKILL
        assert all(procs.is_running(p) for p in old_pids)  # orphans, for now

        url = await second.start(bg)
        api = Client(url, TOKEN)
        s2 = await api.wait_for("keep", state="running")
        assert s2["id"] == s["id"] and s2["pid"] != s["pid"]
        assert (await api.get("/server/idle"))["state"] == "stopped"
        for pid in old_pids:
            assert not procs.is_running(pid), f"leftover {pid} still running"
        # the console goes on where it was: no seq reused, old history still there
        await api.post("/server/keep/command", {"data": "say after restart"}, expect=202)
        line = await api.wait_line("keep", "said: after restart")
        after = await api.get("/server/keep/log?since=0&limit=10000")
        seqs = [ln["seq"] for ln in after["lines"]]
        assert seqs == list(range(len(seqs)))
        assert line["seq"] > before["lines"][-1]["seq"]
        assert after["lines"][:len(before["lines"])] == before["lines"]
        notes = [ln["text"] for ln in after["lines"] if ln["stream"] == "manman"]
        assert any("leftover process" in t for t in notes)

        # a graceful shutdown stops every game and exits 0
        await api.post("/shutdown", expect=202)
        assert await second.wait() == 0
        assert processes_under(data) == set()
        await api.aclose()
    finally:
        first.stop()
        second.stop()


async def test_sigterm_stops_servers_and_exits_0(tmp_path: Path, bg: trio.Nursery) -> None:
    cfg = standalone_config(tmp_path)
    worker = ManmanProcess(["worker", "--config", str(cfg)])
    try:
        url = await worker.start(bg)
        api = Client(url, TOKEN)
        await api.post("/server", fake_spec("t1", "--child", desired_state="running"),
                       expect=201)
        await api.post("/server", fake_spec("t2", "--ignore-stop", "--ignore-term",
                                            stop_timeout=0.5, desired_state="running"),
                       expect=201)
        await api.wait_for("t1", state="running")
        await api.wait_for("t2", state="running")
        assert len(processes_under(tmp_path / "data")) >= 3
        await api.aclose()
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGTERM)
        assert await worker.wait() == 0
        assert processes_under(tmp_path / "data") == set()
        # a worker restart (an upgrade, a reboot): what should run runs again
        worker = ManmanProcess(["worker", "--config", str(cfg)])
        api = Client(await worker.start(bg), TOKEN)
        for name in ("t1", "t2"):
            s = await api.wait_for(name, state="running")
            assert s["desired_state"] == "running"
        await api.post("/shutdown", expect=202)
        assert await worker.wait() == 0
        assert processes_under(tmp_path / "data") == set()
        await api.aclose()
    finally:
        worker.stop()


def test_leftover_check_never_kills_an_unrelated_process() -> None:
    # a group leader like a game (start_new_session), but not one of ours
    unrelated = subprocess.Popen(["sleep", "30"], start_new_session=True)
    marked = subprocess.Popen(["sleep", "30"], env={**os.environ,
                                                     procs.INSTANCE_ENV: "tok-123"})
    try:
        start = procs.start_time(unrelated.pid)
        assert start is not None
        # the recorded pid is there, but with another start time: a reused pid, not ours
        assert procs.kill_leftover(unrelated.pid, start + 1, None, wait=0.2) == []
        assert procs.kill_leftover(unrelated.pid, None, "other-token", wait=0.2) == []
        time.sleep(0.1)
        assert unrelated.poll() is None
        # the instance token in the environment finds ours even with no pid recorded
        assert procs.kill_leftover(None, None, "tok-123") == [marked.pid]
        assert marked.wait(5) == -signal.SIGKILL
        # pid and start time both match: its group is killed
        assert procs.kill_leftover(unrelated.pid, start, None) == [unrelated.pid]
        assert unrelated.wait(5) == -signal.SIGKILL
    finally:
        for p in (unrelated, marked):
            if p.poll() is None:
                p.kill()
            p.wait()


def test_python_is_the_venv_python() -> None:
    assert Path(PYTHON).exists()
