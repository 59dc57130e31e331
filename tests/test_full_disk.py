"""A worker whose data directory fills up (issue 11, items 6–8): shutdown still ends, a
desired-state change that cannot be saved is refused and not applied, and a start that cannot
record its run says so in the status and once in the log. Each test mounts a small tmpfs of
its own (`tiny_disk`) and fills it."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import trio

from tests.conftest import Client, ManmanProcess, fake_spec, processes_under, write_config

TOKEN = "full-disk-token"


def worker_on(disk: Any, tmp_path: Path) -> tuple[Path, Path]:
    """A standalone worker's config whose data_dir is on the tiny disk."""
    data = disk.path / "data"
    cfg = write_config(tmp_path / "worker.toml", f"""
[worker]
host_url = ""
listen = "127.0.0.1:0"
data_dir = "{data}"
api_token = "{TOKEN}"
""")
    return cfg, data


def stop_all(worker: ManmanProcess, data: Path) -> None:
    """Last resort for a test that failed half-way: the worker, and any game it left (before
    the tiny disk is unmounted and their directory cannot be told any more)."""
    import os

    worker.stop()
    for pid in processes_under(data):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def fill_when_saved(disk: Any) -> None:
    """Fill the disk once the worker's batched save of the last change is done: a save cut
    short by the fill leaves SQLite pages allocated that a later, smaller one could use."""
    await trio.sleep(0.3)
    disk.fill()


def stored(data: Path, server_id: str) -> tuple[str, str]:
    """(desired_state, spec's desired_state) of one server as the SQLite file holds them."""
    conn = sqlite3.connect(f"file:{data / 'worker.sqlite3'}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT desired_state, json_extract(spec, '$.desired_state') "
                           "FROM servers WHERE id = ?", (server_id,)).fetchone()
    finally:
        conn.close()
    assert row is not None, f"server {server_id} is not in the SQLite file"
    return row[0], row[1]


async def test_sigterm_on_a_full_disk_exits_in_time_and_leaves_no_game(
        tiny_disk: Any, tmp_path: Path, bg: trio.Nursery) -> None:
    cfg, data = worker_on(tiny_disk, tmp_path)
    worker = ManmanProcess(["worker", "--config", str(cfg)])
    try:
        api = Client(await worker.start(bg), TOKEN)
        # it ignores its stop command: killed after its stop_timeout, while the disk is full
        await api.post("/server", fake_spec("g", "--child", "--ignore-stop",
                                            desired_state="running", stop_timeout=2),
                       expect=201)
        await api.wait_for("g", state="running")
        assert len(processes_under(data)) >= 2  # the game and its child
        await api.aclose()
        await fill_when_saved(tiny_disk)
        assert worker.proc is not None
        began = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        # the stop timeout (2 s) plus a few seconds; before the fix it never exited
        with trio.move_on_after(8):
            await worker.proc.wait()
        log = "\n".join(worker.log)
        assert worker.proc.returncode is not None, f"still running after 8 s:\n{log}"
        assert time.monotonic() - began < 8
        assert worker.proc.returncode == 0, log
        assert processes_under(data) == set()
        assert "Traceback" not in log, log
        # said once by the batched saves, once by the final save: no traceback, no repeats
        assert sum("cannot save the servers' state" in line for line in worker.log) == 1, log
        assert sum("cannot save the servers' last state" in line for line in worker.log) == 1
    finally:
        stop_all(worker, data)


async def test_a_change_that_cannot_be_saved_is_refused_and_not_applied(
        tiny_disk: Any, tmp_path: Path, bg: trio.Nursery) -> None:
    cfg, data = worker_on(tiny_disk, tmp_path)
    worker = ManmanProcess(["worker", "--config", str(cfg)])
    try:
        api = Client(await worker.start(bg), TOKEN)
        g = await api.post("/server", fake_spec("g", desired_state="running"), expect=201)
        running = await api.wait_for("g", state="running")
        await fill_when_saved(tiny_disk)

        for method, path, body in (("POST", "/server/g/shutdown", None),
                                   ("POST", "/server/g/kill", None),
                                   ("POST", "/server/g/restart", None),
                                   ("PUT", "/server/g", {"desired_state": "stopped"}),
                                   ("DELETE", "/server/g?stop=true", None),
                                   ("POST", "/server", fake_spec("new"))):
            r = await api.request(method, path, json=body)
            assert r.status_code == 507, (method, path, r.text)
            assert r.json()["error"]["code"] == "insufficient_storage", r.text
            assert r.json()["error"]["message"].startswith("disk full: ")
        s = await api.get("/server/g")
        assert (s["state"], s["desired_state"], s["pid"]) == ("running", "running",
                                                              running["pid"])
        assert (await api.get("/server/new", expect=404))["error"]["code"] == "not_found"
        await trio.sleep(0.3)  # nothing stops it later either
        assert (await api.get("/server/g"))["pid"] == running["pid"]
        assert "Traceback" not in "\n".join(worker.log)

        # space again: the store holds what runs, and a restart keeps it so
        tiny_disk.free()
        await api.aclose()
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGTERM)
        assert await worker.wait() == 0
        assert stored(data, g["id"]) == ("running", "running")
        worker = ManmanProcess(["worker", "--config", str(cfg)])
        api = Client(await worker.start(bg), TOKEN)
        await api.wait_for("g", state="running", desired_state="running")
        assert [s["name"] for s in (await api.get("/server"))["servers"]] == ["g"]

        # and a change made with space is saved, and kept by a restart
        await api.post("/server/g/shutdown", expect=202)
        assert stored(data, g["id"]) == ("stopped", "running")
        await api.wait_for("g", state="stopped")
        await api.post("/shutdown", expect=202)
        assert await worker.wait() == 0
        worker = ManmanProcess(["worker", "--config", str(cfg)])
        api = Client(await worker.start(bg), TOKEN)
        await trio.sleep(0.3)
        s = await api.get("/server/g")
        assert (s["state"], s["desired_state"]) == ("stopped", "stopped")
        await api.post("/shutdown", expect=202)
        assert await worker.wait() == 0
        assert processes_under(data) == set()
        await api.aclose()
    finally:
        stop_all(worker, data)


async def test_a_start_on_a_full_disk_says_disk_full_once_and_starts_when_space_returns(
        tiny_disk: Any, tmp_path: Path, bg: trio.Nursery) -> None:
    cfg, data = worker_on(tiny_disk, tmp_path)
    worker = ManmanProcess(["worker", "--config", str(cfg)])
    try:
        api = Client(await worker.start(bg), TOKEN)
        restart = {"policy": "on-failure", "backoff_initial": 0.1, "backoff_max": 0.1}
        await api.post("/server", fake_spec("g", desired_state="running", restart=restart),
                       expect=201)
        first = await api.wait_for("g", state="running")
        await fill_when_saved(tiny_disk)
        # it crashes; its restart cannot record the new process before it begins
        await api.post("/server/g/command", {"data": "crash"}, expect=202)
        s = await api.wait_for("g", state="starting", pid=None, timeout=10)
        with trio.move_on_after(10):
            while not (s["error"] or "").startswith("disk full: "):
                await trio.sleep(0.05)
                s = await api.get("/server/g")
        assert s["error"].startswith("disk full: "), s
        await trio.sleep(3)  # retries meanwhile: no new process, no new log line
        s = await api.get("/server/g")
        assert (s["state"], s["pid"]) == ("starting", None)
        assert s["error"].startswith("disk full: ")
        log = "\n".join(worker.log)
        assert "Traceback" not in log and "actor fault" not in log, log
        assert sum("cannot start" in line for line in worker.log) == 1, log
        assert processes_under(data) == set()

        tiny_disk.free()
        s = await api.wait_for("g", state="running", timeout=20)
        assert s["error"] is None and s["pid"] not in (None, first["pid"])
        await api.post("/shutdown", expect=202)
        assert await worker.wait() == 0
        assert processes_under(data) == set()
        await api.aclose()
    finally:
        stop_all(worker, data)


async def test_a_stop_while_a_start_waits_for_space_ends_it(
        tiny_disk: Any, tmp_path: Path, bg: trio.Nursery) -> None:
    """The worker's shutdown (which needs no save first) ends a start that waits for space
    at once: nothing begins, and the worker exits."""
    cfg, data = worker_on(tiny_disk, tmp_path)
    worker = ManmanProcess(["worker", "--config", str(cfg)])
    try:
        api = Client(await worker.start(bg), TOKEN)
        restart = {"policy": "on-failure", "backoff_initial": 0.1, "backoff_max": 0.1}
        await api.post("/server", fake_spec("g", desired_state="running", restart=restart),
                       expect=201)
        await api.wait_for("g", state="running")
        await fill_when_saved(tiny_disk)
        await api.post("/server/g/command", {"data": "crash"}, expect=202)
        with trio.move_on_after(10):
            while not ((await api.get("/server/g"))["error"] or "").startswith("disk full"):
                await trio.sleep(0.05)
        s = await api.get("/server/g")
        assert (s["state"], (s["error"] or "")[:10]) == ("starting", "disk full:"), s
        await api.aclose()
        assert worker.proc is not None
        began = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        assert await worker.wait(timeout=10) == 0
        assert time.monotonic() - began < 5
        assert processes_under(data) == set()
    finally:
        stop_all(worker, data)
