"""docker game servers against a real dockerd: install, console, stop, kill, crash, and a
worker SIGKILL + restart that re-attaches to the running container."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import (
    DOCKER_IMAGE,
    Client,
    ManmanProcess,
    RunningWorker,
    pids_with,
    worker_config,
    write_config,
)

GAME = """echo "docker game starting"
echo "Server ready"
while read -r line; do
  case "$line" in
    quit) echo "stopping"; exit 0 ;;
    "crash "*) echo "crashing"; exit ${line#crash } ;;
    "say "*) echo "said: ${line#say }" ;;
    *) echo "unknown: $line" ;;
  esac
done
sleep 1000
"""


def docker_spec(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "game_id": f"docker:{DOCKER_IMAGE}", "args": ["sh", "-c", GAME],
            "env": {"GREETING": "hi"}, "stop_command": "quit", "stop_timeout": 5,
            "ready_pattern": "^Server ready$", **kw}


def docker(host: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True,
                          env={**os.environ, "DOCKER_HOST": host})


@pytest.fixture
async def docker_worker(docker_host: str, tmp_path: Path, bg: trio.Nursery,
                        monkeypatch: pytest.MonkeyPatch) -> Any:
    from manman.worker.main import run_worker

    monkeypatch.setenv("DOCKER_HOST", docker_host)
    handle = await bg.start(run_worker, worker_config(tmp_path, docker_network="none"))
    w = RunningWorker(handle, Client(handle.url, "test-worker-token"))
    yield w
    await w.shutdown()
    await w.api.aclose()


async def test_docker_server_life(docker_worker: RunningWorker, docker_host: str) -> None:
    api = docker_worker.api
    s = await api.post("/server", docker_spec("dk", restart={
        "policy": "on-failure", "backoff_initial": 0.2}), expect=201)
    s = await api.wait_for("dk", state="stopped", timeout=30)
    assert s["install_progress"] == 100.0
    page = await api.get("/server/dk/log?since=0")
    assert any("is present" in ln["text"] for ln in page["lines"] if ln["stream"] == "install")
    await api.post("/server/dk/start", expect=202)
    s = await api.wait_for("dk", state="running", timeout=30)
    name = f"manman-{s['id']}"
    running = docker(docker_host, "inspect", "-f", "{{.State.Running}} {{.Config.Env}}", name)
    assert running.stdout.startswith("true") and "GREETING=hi" in running.stdout
    mounts = docker(docker_host, "inspect", "-f", "{{range .Mounts}}{{.Source}}{{end}}", name)
    assert mounts.stdout.strip() == str(docker_worker.agent.data_dir / "servers" / s["id"] /
                                        "files")
    await api.post("/server/dk/command", {"data": "say from the api"}, expect=202)
    await api.wait_line("dk", "said: from the api")
    # an idle worker for longer than trio's idle worker threads live (10 s): the docker CLI
    # helpers forked from those threads must outlive them
    await trio.sleep(11)
    await api.post("/server/dk/command", {"data": "say still here"}, expect=202)
    await api.wait_line("dk", "said: still here")
    s = await api.get("/server/dk")
    assert s["state"] == "running" and s["restarts"] == 0
    # crash: restarted by the policy, in a new container
    await api.post("/server/dk/command", {"data": "crash 3"}, expect=202)
    s = await api.wait_for("dk", state="running", restarts=1, timeout=30)
    await api.wait_line("dk", "crashing")  # its last words reached the console
    # stop: the stop command, the container is gone afterwards
    await api.post("/server/dk/shutdown", expect=202)
    s = await api.wait_for("dk", state="stopped", timeout=30)
    assert s["exit_code"] == 0
    await api.wait_line("dk", "stopping")
    assert docker(docker_host, "inspect", name).returncode != 0
    # kill
    await api.post("/server/dk/start", expect=202)
    await api.wait_for("dk", state="running", timeout=30)
    await api.post("/server/dk/kill", expect=202)
    s = await api.wait_for("dk", state="stopped", timeout=30)
    assert s["exit_code"] == 137
    assert docker(docker_host, "inspect", name).returncode != 0


async def test_auto_ports_are_published_with_their_numbers(
        docker_host: str, tmp_path: Path, bg: trio.Nursery,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from manman.worker.main import run_worker
    from tests.test_port_allocation import free_block

    # -p needs a bridge network: a user-defined one (the tests' dockerd has no default)
    net = f"mmports{os.getpid()}"
    assert docker(docker_host, "network", "create", "-d", "bridge", net).returncode == 0
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    base = free_block(4)
    handle = await bg.start(run_worker, worker_config(
        tmp_path, docker_network=net, port_range=f"{base}-{base + 3}"))
    w = RunningWorker(handle, Client(handle.url, "test-worker-token"))
    try:
        spec = docker_spec("dp", desired_state="running", env={"GAME_PORT": "{{port.game}}"},
                           ports=[{"name": "game", "protocol": "udp", "port": "auto"},
                                  {"name": "query", "protocol": "tcp", "port": "auto",
                                   "follows": "game", "offset": 1}])
        spec["args"] = ["sh", "-c", 'echo "port $GAME_PORT"; ' + GAME]
        s = await w.api.post("/server", spec, expect=201)
        assert s["allocated_ports"] == {"game": base, "query": base + 1}
        s = await w.api.wait_for("dp", state="running", timeout=30)
        await w.api.wait_line("dp", f"port {base}")
        bound = docker(docker_host, "inspect", "-f", "{{json .HostConfig.PortBindings}}",
                       f"manman-{s['id']}")
        assert json.loads(bound.stdout) == {
            f"{base}/udp": [{"HostIp": "", "HostPort": str(base)}],
            f"{base + 1}/tcp": [{"HostIp": "", "HostPort": str(base + 1)}]}
        await w.api.post("/server/dp/kill", expect=202)
        await w.api.wait_for("dp", state="stopped", timeout=30)
    finally:
        await w.shutdown()
        await w.api.aclose()
        docker(docker_host, "network", "rm", net)

async def test_a_stop_signal_reaches_the_container(docker_worker: RunningWorker) -> None:
    # a game that reads no stdin and ignores SIGTERM: `docker kill --signal SIGINT` stops it
    api = docker_worker.api
    game = ("trap 'echo got SIGINT; exit 0' INT; trap '' TERM; echo 'Server ready'; "
            "while true; do sleep 0.2; done")
    await api.post("/server", docker_spec("dks", args=["sh", "-c", game], stop_command=None,
                                          stop_signal="SIGINT", stop_timeout=30,
                                          desired_state="running"), expect=201)
    await api.wait_for("dks", state="running", timeout=30)
    with trio.fail_after(15):  # well inside stop_timeout: the signal did it, not a kill
        await api.post("/server/dks/shutdown", expect=202)
        s = await api.wait_for("dks", state="stopped", timeout=15)
    assert s["exit_code"] == 0
    await api.wait_line("dks", "got SIGINT")


async def test_pull_failure_is_failed_with_the_reason(docker_worker: RunningWorker) -> None:
    api = docker_worker.api
    await api.post("/server", {"name": "nope", "game_id": "docker:manman-test/absent:1"},
                   expect=201)
    s = await api.wait_for("nope", state="failed", timeout=60)
    # no registry is reachable here: the daemon's own words are the reason
    assert s["error"].startswith("Error response from daemon:"), s["error"]
    page = await api.get("/server/nope/log?since=0")
    assert any(ln["text"] == "docker pull manman-test/absent:1" for ln in page["lines"])


async def test_sigkill_restart_reattaches_and_strays_are_removed(
        docker_host: str, tmp_path: Path, bg: trio.Nursery) -> None:
    cfg = write_config(tmp_path / "w.toml", f"""
[worker]
host_url = ""
listen = "127.0.0.1:0"
data_dir = "{tmp_path / 'data'}"
api_token = "t"
docker_network = "none"
""")
    env = {"DOCKER_HOST": docker_host}
    first = ManmanProcess(["worker", "--config", str(cfg)], env=env)
    second = ManmanProcess(["worker", "--config", str(cfg)], env=env)
    try:
        api = Client(await first.start(bg), "t")
        s = await api.post("/server", docker_spec("keep", desired_state="running"),
                           expect=201)
        s = await api.wait_for("keep", state="running", timeout=30)
        name = f"manman-{s['id']}"
        started = docker(docker_host, "inspect", "-f", "{{.State.StartedAt}}", name).stdout
        await api.post("/server/keep/command", {"data": "say before"}, expect=202)
        before = await api.wait_line("keep", "said: before")
        await api.aclose()
        first.kill9()
        await first.wait()
        # the game keeps running through the worker's death
        assert docker(docker_host, "inspect", "-f", "{{.State.Running}}", name).stdout.strip() \
            == "true"
        owner = _owner(tmp_path / "data")
        stray = docker(docker_host, "create", "--name", "manman-stray", "--label",
                       f"manman.owner={owner}", DOCKER_IMAGE, "true")
        foreign = docker(docker_host, "create", "--name", "manman-foreign", DOCKER_IMAGE, "true")
        assert stray.returncode == 0 and foreign.returncode == 0, stray.stderr
        assert len(pids_with(f"wait\0{name}\0")) == 1  # the dead worker's helper
        api = Client(await second.start(bg), "t")
        s2 = await api.wait_for("keep", state="running", timeout=30)
        assert len(pids_with(f"wait\0{name}\0")) == 1  # only the new worker's
        assert docker(docker_host, "inspect", "-f", "{{.State.StartedAt}}", name).stdout == \
            started  # re-attached, not restarted
        # stdin still works after the re-attach, and seq goes on
        await api.post("/server/keep/command", {"data": "say after"}, expect=202)
        after = await api.wait_line("keep", "said: after")
        assert after["seq"] > before["seq"]
        page = await api.get("/server/keep/log?since=0&limit=1000")
        seqs = [ln["seq"] for ln in page["lines"]]
        assert seqs == list(range(len(seqs)))
        with trio.fail_after(30):
            while docker(docker_host, "inspect", "manman-stray").returncode == 0:
                await trio.sleep(0.1)
        assert docker(docker_host, "inspect", "manman-foreign").returncode == 0
        assert s2["id"] == s["id"]
        await api.post("/shutdown", expect=202)
        assert await second.wait() == 0
        assert docker(docker_host, "inspect", name).returncode != 0  # stopped and removed
        await api.aclose()
    finally:
        first.stop()
        second.stop()
        docker(docker_host, "rm", "-f", "manman-foreign", "manman-stray")


def _owner(data: Path) -> str:
    import sqlite3

    db = sqlite3.connect(data / "worker.sqlite3")
    try:
        return db.execute("SELECT value FROM meta WHERE key = 'owner'").fetchone()[0]
    finally:
        db.close()
