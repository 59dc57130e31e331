"""Faults and races: a full disk, a stop during a restart, concurrent creates, a host that
was down longer than worker_expiry, console tokens that would renew themselves."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing
from trio_websocket import open_websocket_url

from manman.errors import Conflict
from manman.http import auth
from manman.models import ServerSpec
from tests.conftest import ADMIN, Client, RunningHost, RunningWorker, fake_spec


async def test_a_full_disk_keeps_the_game_and_its_console_running(worker: RunningWorker
                                                                  ) -> None:
    api = worker.api
    s = await api.post("/server", fake_spec("full"), expect=201)
    logs = worker.agent.data_dir / "servers" / s["id"] / "logs"
    # the first segment the console writes is /dev/full: every write fails with ENOSPC
    (logs / f"console-{0:020d}.jsonl").symlink_to("/dev/full")
    await api.post("/server/full/start", expect=202)
    await api.wait_for("full", state="running")
    await api.post("/server/full/command", {"data": "say still here"}, expect=202)
    await api.wait_line("full", "said: still here")  # from memory: nothing reached the disk
    assert worker.agent.get("full").broker.files.write_errors >= 1
    assert (await api.get("/status"))["status"] == "alive"
    await api.post("/server/full/shutdown", expect=202)
    await api.wait_for("full", state="stopped")


async def test_a_stop_during_a_restart_wins(worker: RunningWorker) -> None:
    api = worker.api
    await api.post("/server", fake_spec("rs", "--ignore-stop", stop_timeout=1,
                                        desired_state="running"), expect=201)
    await api.wait_for("rs", state="running")
    await api.post("/server/rs/restart", expect=202)  # stopping: waits out stop_timeout
    await api.request("PUT", "/server/rs", json={"desired_state": "stopped"}, expect=200)
    s = await api.wait_for("rs", state="stopped", timeout=10)
    # every task (the restart's own among them) has done all it could: a start it made
    # would show now
    with trio.fail_after(10):
        await trio.testing.wait_all_tasks_blocked()
    s = await api.get("/server/rs")
    assert s["state"] == "stopped" and s["desired_state"] == "stopped", s


async def test_concurrent_creates_of_one_server_make_one(worker: RunningWorker) -> None:
    spec = ServerSpec(**fake_spec("twin"))
    results: list[object] = []

    async def create() -> None:
        try:
            results.append(await worker.agent.create(spec, "abc123", 1))
        except Conflict as e:
            results.append(e)

    async with trio.open_nursery() as n:
        n.start_soon(create)
        n.start_soon(create)
    assert sum(isinstance(r, Conflict) for r in results) == 1
    assert [a.id for a in worker.agent.actors.values()] == ["abc123"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_host_down_longer_than_worker_expiry_retires_nobody(
        tmp_path: Path, database_url: str, bg: trio.Nursery) -> None:
    from manman.host.main import run_host
    from tests.conftest import host_config, start_hosted_worker

    listen = f"127.0.0.1:{free_port()}"
    cfg = host_config(tmp_path, database_url, listen=listen, worker_expiry=2)
    first: Any = await bg.start(run_host, cfg)

    class Shim:  # start_hosted_worker wants something with a url
        url = first.url

    w = await start_hosted_worker(bg, tmp_path, Shim(), "patient")  # type: ignore[arg-type]
    api = Client(first.url, ADMIN)
    s = await api.post("/server", fake_spec("p1", worker_id=w.handle.link.worker_id,
                                            desired_state="running"), expect=201)
    await api.wait_for("p1", state="running")
    await api.aclose()
    first.stop()
    await first.stopped.wait()
    await trio.sleep(3)  # the host is away longer than worker_expiry
    second: Any = await bg.start(run_host, cfg)
    api = Client(second.url, ADMIN)
    with trio.fail_after(10):
        while (await api.get(f"/worker/{w.handle.link.worker_id}"))["status"] != "alive":
            await trio.sleep(0.1)
    sweeps = second.control.liveness_sweeps
    with trio.fail_after(10):  # three liveness sweeps later: still there, still running
        while second.control.liveness_sweeps < sweeps + 3:
            await trio.sleep(0.1)
    assert (await api.get(f"/worker/{w.handle.link.worker_id}"))["status"] == "alive"
    assert (await api.get(f"/server/{s['id']}"))["state"] == "running"
    assert not w.agent.shutdown_requested.is_set()
    await w.shutdown()
    await api.aclose()
    second.stop()
    await second.stopped.wait()


async def test_a_console_token_cannot_renew_itself(host: RunningHost, hosted: Any) -> None:
    w = await hosted("renew")
    s = await host.api.post("/server", fake_spec("r1", worker_id=w.handle.link.worker_id),
                            expect=201)
    key = host.handle.secrets.console_key(host.fleet.workers[w.handle.link.worker_id])
    short = auth.sign_console_token(key, s["id"], [auth.READ], 30, time.time())
    page = await host.api.get(f"/server/{s['id']}/log?limit=1",
                              headers={"Authorization": f"Bearer {short}"})
    got = auth.verify_console_token(key, page["token"])
    mine = auth.verify_console_token(key, short)
    assert got["exp"] <= mine["exp"] and got["scope"] == auth.READ


async def test_a_client_that_keeps_breaking_rules_is_closed_with_1008(
        worker: RunningWorker) -> None:
    s = await worker.api.post("/server", fake_spec("rules", desired_state="running"),
                              expect=201)
    await worker.api.wait_for("rules", state="running")
    url = worker.url.replace("http://", "ws://") + \
        f"/server/{s['id']}/log/ws?token={worker.api.token}"
    async with open_websocket_url(url) as ws:
        await ws.get_message()
        for _ in range(25):
            await ws.send_message("{not json")
        with trio.fail_after(10):
            while ws.closed is None:
                try:
                    json.loads(await ws.get_message())
                except Exception:  # the close ends the loop
                    break
        assert ws.closed is not None and ws.closed.code == 1008
