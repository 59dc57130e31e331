"""`manman worker` as a user runs it: config errors, the generated api token, exit codes."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import trio

from tests.conftest import PYTHON, Client, ManmanProcess, write_config


def run_manman(*args: str, env: dict[str, str] | None = None, timeout: float = 30
               ) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([PYTHON, "-m", "manman", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_bad_config_stops_with_one_line_naming_the_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", '[worker]\nheartbeat_interval = "soon"\n')
    r = run_manman("worker", "--config", str(cfg))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "worker.heartbeat_interval" in lines[0], r.stderr


def test_unknown_key_and_env_override_errors(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", "[worker]\nlisten_on = 1\n")
    r = run_manman("worker", "--config", str(cfg))
    assert r.returncode == 1 and r.stderr.strip() == "manman: config: unknown key worker.listen_on"
    cfg = write_config(tmp_path / "d.toml", "")
    r = run_manman("worker", "--config", str(cfg), env={"MANMAN_WORKER_LISTEN": "nowhere"})
    assert r.returncode == 1 and "worker.listen" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_manman("worker", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 1 and "not found" in r.stderr


def test_usage_errors_exit_2() -> None:
    assert run_manman().returncode == 2
    assert run_manman("frobnicate").returncode == 2


async def test_standalone_worker_generates_its_api_token_once(tmp_path: Path,
                                                              bg: trio.Nursery) -> None:
    cfg = write_config(tmp_path / "w.toml", f"""
[worker]
host_url = ""
listen = "127.0.0.1:0"
data_dir = "{tmp_path / 'data'}"
""")
    token_file = tmp_path / "data" / "api-token"
    tokens = []
    for _ in range(2):
        w = ManmanProcess(["worker", "--config", str(cfg)],
                          env={"MANMAN_WORKER_API_TOKEN": ""})
        try:
            url = await w.start(bg)
            assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
            token = token_file.read_text().strip()
            tokens.append(token)
            assert len(token) >= 32
            api = Client(url, token)
            assert (await api.get("/status"))["status"] == "alive"
            r = await api.http.get("/status", headers={"Authorization": "Bearer nope"})
            assert r.status_code == 401
            await api.post("/shutdown", expect=202)
            await api.aclose()
            assert await w.wait() == 0
        finally:
            w.stop()
    assert tokens[0] == tokens[1]
