"""A worker whose data directory fills up (issue 11, items 6–8): shutdown still ends, a
desired-state change that cannot be saved is refused and not applied, and a start that cannot
record its run says so in the status and once in the log. Each test mounts a small tmpfs of
its own (`tiny_disk`) and fills it."""

from __future__ import annotations

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
        tiny_disk.fill()
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
        worker.stop()
