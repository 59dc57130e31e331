"""Crashes, backoff, crash loops, health probes and actor faults on a real worker."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import trio

from manman.models import ServerSpec
from manman.worker.agent import WorkerAgent
from manman.worker.runners.base import GameProcess, LaunchContext
from manman.worker.runners.exec import ExecRunner
from tests.conftest import RunningWorker, fake_spec, worker_config

FAST = {"backoff_initial": 0.2, "backoff_max": 5, "reset_after": 60}


async def test_crash_is_restarted_with_doubling_backoff(worker: RunningWorker) -> None:
    api = worker.api
    await api.post("/server", fake_spec("c1", restart={"policy": "on-failure", "max_restarts": 5,
                                                      **FAST}, desired_state="running"),
                   expect=201)
    s = await api.wait_for("c1", state="running")
    pids = [s["pid"]]
    for n in (1, 2):
        await api.post("/server/c1/command", {"data": "crash 7"}, expect=202)
        s = await api.wait_for("c1", state="running", restarts=n)
        pids.append(s["pid"])
    assert len(set(pids)) == 3
    page = await api.get("/server/c1/log?since=0&limit=10000")
    notes = [ln["text"] for ln in page["lines"] if ln["stream"] == "manman"]
    assert any("exited with code 7" in t and "restarting in 0.2s" in t for t in notes)
    assert any("restarting in 0.4s" in t for t in notes)


async def test_crash_loop_ends_in_failed(worker: RunningWorker) -> None:
    api = worker.api
    await api.post("/server", fake_spec("c2", "--crash-after", "0.05", "--exit-code", "9",
                                        restart={"policy": "on-failure", "max_restarts": 2,
                                                 "backoff_initial": 0.05, "backoff_max": 0.1,
                                                 "reset_after": 60},
                                        desired_state="running"), expect=201)
    s = await api.wait_for("c2", state="failed", timeout=20)
    assert s["restarts"] == 2 and s["exit_code"] == 9
    assert "crash loop: 3 crashes" in s["error"]
    actor = worker.agent.get("c2")  # no further restart: none is scheduled, no run is left
    assert actor.machine.backoff_token is None and actor.run is None
    assert (await api.get("/server/c2"))["state"] == "failed"
    # a person starts it again: counts reset
    await api.post("/server/c2/start", expect=202)
    s = await api.wait_for("c2", state="failed", timeout=20)
    assert s["restarts"] == 2


async def test_policies_never_and_always_and_clean_exit(worker: RunningWorker) -> None:
    api = worker.api
    await api.post("/server", fake_spec("never", restart={"policy": "never"},
                                        desired_state="running"), expect=201)
    await api.post("/server", fake_spec("clean", desired_state="running"), expect=201)
    await api.post("/server", fake_spec("always", restart={"policy": "always", **FAST},
                                        desired_state="running"), expect=201)
    for name in ("never", "clean", "always"):
        await api.wait_for(name, state="running")
    await api.post("/server/never/command", {"data": "crash 4"}, expect=202)
    s = await api.wait_for("never", state="failed")
    assert s["exit_code"] == 4 and "restart policy: never" in s["error"]
    # exit 0 under on-failure: a clean stop, and the desired state follows
    await api.post("/server/clean/command", {"data": "quit"}, expect=202)
    s = await api.wait_for("clean", state="stopped")
    assert s["exit_code"] == 0 and s["desired_state"] == "stopped" and s["error"] is None
    # exit 0 under always: restarted
    await api.post("/server/always/command", {"data": "quit"}, expect=202)
    s = await api.wait_for("always", state="running", restarts=1)


async def test_stop_cancels_a_scheduled_restart(worker: RunningWorker) -> None:
    api = worker.api
    await api.post("/server", fake_spec("c3", restart={"policy": "on-failure", "max_restarts": 5,
                                                      "backoff_initial": 2, "reset_after": 60},
                                        desired_state="running"), expect=201)
    await api.wait_for("c3", state="running")
    await api.post("/server/c3/command", {"data": "crash"}, expect=202)
    await api.wait_for("c3", state="crashed")
    await api.post("/server/c3/shutdown", expect=202)
    s = await api.wait_for("c3", state="stopped")
    assert s["desired_state"] == "stopped"
    actor = worker.agent.get("c3")  # the scheduled restart is cancelled, no run is left
    assert actor.machine.backoff_token is None and actor.run is None
    assert (await api.get("/server/c3"))["state"] == "stopped"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_failing_tcp_health_probe_counts_as_a_crash(worker: RunningWorker) -> None:
    api = worker.api
    port = free_port()
    await api.post("/server", fake_spec("h1", "--tcp-port", str(port),
                                        health={"tcp_port": port, "interval": 0.2,
                                                "timeout": 0.5, "failures": 2},
                                        restart={"policy": "on-failure", **FAST},
                                        ready_pattern="^Server ready$",
                                        desired_state="running"), expect=201)
    s = await api.wait_for("h1", state="running")
    probe = await api.get("/server/h1/health")
    assert probe["process_alive"] is True and probe["tcp_ok"] is True
    actor = worker.agent.get("h1")
    with trio.fail_after(10):  # healthy probes do nothing
        while actor.machine.probes_passed < 3:
            await trio.sleep(0.05)
    assert (await api.get("/server/h1"))["pid"] == s["pid"]
    await api.post("/server/h1/command", {"data": "close-port"}, expect=202)
    s2 = await api.wait_for("h1", state="running", restarts=1, timeout=10)
    assert s2["pid"] != s["pid"]
    page = await api.get("/server/h1/log?since=0&limit=10000")
    assert any("health check failed: tcp port" in ln["text"] for ln in page["lines"])


class FlakyRunner(ExecRunner):
    """A runner with a bug: its first spawn raises something nobody expects."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def spawn(self, ctx: LaunchContext) -> GameProcess:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in a runner")
        return await super().spawn(ctx)


async def test_a_fault_inside_one_actor_restarts_that_actor_only(
        tmp_path: Path, bg: trio.Nursery) -> None:
    agent = WorkerAgent(worker_config(tmp_path).worker)
    await bg.start(agent.run)
    steady = await agent.create(ServerSpec(**_spec("steady", desired_state="running")))
    with trio.fail_after(10):
        while steady.status.state != "running":
            await trio.sleep(0.02)
    steady_pid = steady.status.pid
    flaky_runner = FlakyRunner()
    agent.exec_runner = flaky_runner  # used by servers created from now on
    await agent.create(ServerSpec(**_spec("flaky", desired_state="running")))
    with trio.fail_after(15):
        while agent.get("flaky").status.state != "running":
            await trio.sleep(0.02)
    assert flaky_runner.calls == 2
    assert agent.get("flaky") is not None and agent.get("steady") is steady
    assert steady.status.state == "running" and steady.status.pid == steady_pid
    notes = [ln.text for ln in await agent.get("flaky").broker.history(0, 100)]
    assert any("internal error" in t for t in notes)
    agent.request_shutdown()
    with trio.fail_after(20):
        await agent.stopped.wait()


def _spec(name: str, **kw: Any) -> dict[str, Any]:
    spec = fake_spec(name, **kw)
    return spec
