"""`manman up` on the sample config.toml, as the README's first command runs it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import trio

from manman.worker import procs
from tests.conftest import HERE, Client, ManmanProcess


def postgres_running(data: Path) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"postgres") and str(data).encode() in b" ".join(cmd) \
                    and procs.is_running(int(entry)):
                pids.append(int(entry))
    return pids


def up_env(tmp_path: Path) -> dict[str, str]:
    return {"MANMAN_HOST_LISTEN": "127.0.0.1:0", "MANMAN_WORKER_LISTEN": "127.0.0.1:0",
            "MANMAN_HOST_DATA_DIR": str(tmp_path / "host"),
            "MANMAN_WORKER_DATA_DIR": str(tmp_path / "worker"),
            "MANMAN_WORKER_HEARTBEAT_INTERVAL": "0.5"}


async def test_up_sample_config_demo_server_console_and_clean_exit(
        tmp_path: Path, bg: trio.Nursery) -> None:
    config = str(HERE.parent / "config.toml")
    env = up_env(tmp_path)
    first = ManmanProcess(["up", "--config", config], env=env)
    second = ManmanProcess(["up", "--config", config], env=env)
    try:
        url = await first.start(bg, ready_text="host listening on ")
        token = (tmp_path / "host" / "admin-token").read_text().strip()
        api = Client(url, token)
        s = await api.wait_for("demo", state="running", timeout=30)
        assert s["worker_status"] == "alive"
        await api.post("/server/demo/command", {"type": "command", "data": "say hello"},
                       expect=202)
        await api.wait_line("demo", "[chat] hello")
        assert postgres_running(tmp_path / "host")
        game = s["pid"]
        await api.aclose()

        # killed hard: PostgreSQL and the game outlive it; the next start copes with both
        first.kill9()
        await first.wait()
        assert postgres_running(tmp_path / "host")
        url = await second.start(bg, ready_text="host listening on ")
        api = Client(url, token)
        s = await api.wait_for("demo", state="running", timeout=30)
        assert s["pid"] != game and not procs.is_running(game)
        servers = (await api.get("/server"))["servers"]
        assert [x["name"] for x in servers] == ["demo"]  # not created twice
        await api.aclose()
        # Ctrl-C: the servers, the worker, the host and PostgreSQL all stop
        assert second.proc is not None
        second.proc.send_signal(signal.SIGINT)
        assert await second.wait(timeout=60) == 0
        assert not procs.is_running(s["pid"])
        with trio.fail_after(10):
            while postgres_running(tmp_path / "host"):
                await trio.sleep(0.1)
    finally:
        first.stop()
        second.stop()
        for pid in postgres_running(tmp_path / "host"):
            os.kill(pid, signal.SIGKILL)
