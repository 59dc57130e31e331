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
            # the store holds the worker's identity; consoles may hold a game's secrets
            assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
            assert stat.S_IMODE((tmp_path / "data" / "worker.sqlite3").stat().st_mode) == 0o600
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


def _fails_with(tmp_path: Path, section: str, keys: dict[str, str], needle: str) -> str:
    """Run `manman <section>` on a config of these keys: exit 1, one line naming the trouble,
    no traceback. Returns stderr."""
    body = "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    cfg = write_config(tmp_path / f"{len(list(tmp_path.iterdir()))}.toml",
                       f"[{section}]\n{body}")
    r = run_manman(section, "--config", str(cfg))
    assert r.returncode == 1 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    return r.stderr


def test_start_up_failures_an_operator_can_fix_are_one_line(tmp_path: Path) -> None:
    import socket

    standalone = {"host_url": "", "listen": "127.0.0.1:0", "data_dir": str(tmp_path / "data"),
                  "api_token": "t"}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        _fails_with(tmp_path, "worker",
                    {**standalone, "listen": f"127.0.0.1:{busy.getsockname()[1]}"},
                    "address already in use")
    (tmp_path / "afile").write_text("")
    _fails_with(tmp_path, "worker", {**standalone, "data_dir": str(tmp_path / "afile" / "sub")},
                "Not a directory")
    _fails_with(tmp_path, "worker", {"host_url": "http://127.0.0.1:9", "listen": "127.0.0.1:0",
                                     "data_dir": str(tmp_path / "data3")}, "worker.join_token")
    err = _fails_with(tmp_path, "host", {
        "listen": "127.0.0.1:0", "data_dir": str(tmp_path / "host"),
        "database_url": "postgresql://u:hunter2@127.0.0.1:9/x"}, "host.database_url")
    assert "hunter2" not in err


def test_client_flags_before_the_verb_and_bad_urls(tmp_path: Path) -> None:
    r = run_manman("server", "--host-url", "http://127.0.0.1:9", "--token", "x", "show", "a")
    assert r.returncode == 1 and "cannot reach the host at http://127.0.0.1:9" in r.stderr
    r = run_manman("servers", "--host-url", "http://[::1", "--token", "x")
    assert r.returncode == 1 and "not a host URL" in r.stderr, r.stderr
    bad = tmp_path / "spec.json"
    bad.write_bytes(b"\xff\xfe{")
    r = run_manman("server", "create", "--host-url", "http://127.0.0.1:9", "--token", "x",
                   "--file", str(bad))
    assert r.returncode == 1 and "not UTF-8" in r.stderr, r.stderr
    r = run_manman("worker", "--host-url", "http://x:1")  # a client flag on a service: usage
    assert r.returncode == 2 and "Traceback" not in r.stderr
