"""Liveness across real processes: a worker that stops heartbeating is `unknown`, comes back
`alive` with its servers' real states, converges to what changed meanwhile, and after
worker_expiry is retired: 410, it stops its servers and exits."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import trio

from manman.worker import procs
from tests.conftest import (
    JOIN,
    Client,
    ManmanProcess,
    RunningHost,
    fake_spec,
    pids_with,
    write_config,
)


def worker_toml(tmp_path: Path, host_url: str, name: str) -> Path:
    return write_config(tmp_path / f"{name}.toml", f"""
[worker]
name = "{name}"
host_url = "{host_url}"
join_token = "{JOIN}"
listen = "127.0.0.1:0"
data_dir = "{tmp_path / name}"
heartbeat_interval = 0.2
""")


async def worker_status(api: Client, name: str) -> str:
    workers = (await api.get("/worker"))["workers"]
    return next(w["status"] for w in workers if w["name"] == name)


async def wait_status(api: Client, name: str, status: str, timeout: float = 15) -> None:
    with trio.fail_after(timeout):
        while await worker_status(api, name) != status:
            await trio.sleep(0.05)


async def worker_with_a_running_server(bg: trio.Nursery, api: Client, config: str, name: str,
                                       marker: str) -> None:
    """Start a worker process, give it a running server whose command line holds `marker`,
    then stop the worker gracefully (SIGTERM): the server's desired state stays running."""
    proc = ManmanProcess(["worker", "--config", config])
    try:
        await proc.start(bg)
        await wait_status(api, name, "alive")
        wid = next(w["id"] for w in (await api.get("/worker"))["workers"] if w["name"] == name)
        await api.post("/server", fake_spec(f"{name}1", "--banner", marker, worker_id=wid,
                                            desired_state="running"), expect=201)
        await api.wait_for(f"{name}1", state="running")
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
        assert pids_with(marker) == []
    finally:
        proc.stop()


async def test_unknown_then_back_and_converges(tmp_path: Path, host: RunningHost,
                                               bg: trio.Nursery) -> None:
    api = host.api
    proc = ManmanProcess(["worker", "--config", str(worker_toml(tmp_path, host.url, "lv"))])
    try:
        await proc.start(bg)
        await wait_status(api, "lv", "alive")
        wid = (await api.get("/worker"))["workers"][0]["id"]
        await api.post("/server", fake_spec("s1", worker_id=wid, desired_state="running"),
                       expect=201)
        await api.post("/server", fake_spec("s2", worker_id=wid, desired_state="running"),
                       expect=201)
        await api.post("/server", fake_spec("s3", worker_id=wid, desired_state="running"),
                       expect=201)
        s1 = await api.wait_for("s1", state="running")
        await api.wait_for("s2", state="running")
        s3 = await api.wait_for("s3", state="running")
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGSTOP)  # no heartbeats, no answers: a partition
        await wait_status(api, "lv", "unknown")
        s = await api.get("/server/s1")
        assert s["state"] == "unknown" and s["worker_status"] == "unknown"
        # desired state changes while the worker is away
        r = await api.post("/server/s2/command", {"type": "stop"}, expect=202)
        assert r["delivered"] is False
        r = await api.request("POST", "/server/s1/command", json={"type": "command",
                                                                   "data": "say x"})
        assert r.status_code == 503
        gen = (await api.get("/server/s2"))["generation"]
        # a change that asks for a restart, then one that does not: the restart still happens
        await api.request("PUT", "/server/s3", 200, json={
            "args": [*s3["args"], "--banner", "second life"], "restart_on_change": True})
        r = await api.request("PUT", "/server/s3", 200, json={"stop_timeout": 4})
        gen3 = r.json()["generation"]
        proc.proc.send_signal(signal.SIGCONT)
        await wait_status(api, "lv", "alive")
        s = await api.wait_for("s1", state="running")
        assert s["pid"] == s1["pid"]  # the game kept running through it
        s = await api.wait_for("s2", state="stopped", observed_generation=gen)
        assert s["desired_state"] == "stopped"
        s = await api.wait_for("s3", state="running", observed_generation=gen3)
        assert s["pid"] != s3["pid"]
        await api.wait_line("s3", "second life")
    finally:
        if proc.proc is not None and proc.proc.returncode is None:
            proc.proc.send_signal(signal.SIGCONT)
            proc.proc.send_signal(signal.SIGTERM)
            await proc.wait()


async def test_expiry_retires_the_worker_which_stops_its_servers(
        tmp_path: Path, database_url: str, bg: trio.Nursery) -> None:
    from manman.host.main import run_host
    from tests.conftest import host_config

    handle: Any = await bg.start(run_host, host_config(tmp_path, database_url,
                                                       worker_expiry=2))
    api = Client(handle.url, "test-admin-token")
    proc = ManmanProcess(["worker", "--config", str(worker_toml(tmp_path, handle.url, "ex"))])
    try:
        await proc.start(bg)
        await wait_status(api, "ex", "alive")
        wid = (await api.get("/worker"))["workers"][0]["id"]
        await api.post("/server", fake_spec("e1", "--child", worker_id=wid,
                                            desired_state="running"), expect=201)
        pid = (await api.wait_for("e1", state="running"))["pid"]
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGSTOP)
        await wait_status(api, "ex", "shutdown", timeout=20)
        proc.proc.send_signal(signal.SIGCONT)
        assert await proc.wait() == 0  # told to go (410 or /shutdown): servers stop, it exits
        assert not procs.is_running(pid)
        # its later calls are answered 410
        token = handle.secrets.worker_token(wid, 1)
        r = await api.http.post(f"/worker/{wid}/health", json={},
                                headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 410
    finally:
        proc.stop()
        await api.aclose()
        handle.stop()
        await handle.stopped.wait()



async def test_worker_retired_while_away_stops_cleanly_when_it_returns(
        tmp_path: Path, host: RunningHost, bg: trio.Nursery) -> None:
    """The common expiry: a machine off for longer than worker_expiry boots again. Its
    worker relaunches what should run, hears 410 at registration, stops it and exits 0."""
    api = host.api
    marker = f"retired-away-{tmp_path.name}"
    config = str(worker_toml(tmp_path, host.url, "ra"))
    await worker_with_a_running_server(bg, api, config, "ra", marker)
    wid = next(w["id"] for w in (await api.get("/worker"))["workers"] if w["name"] == "ra")
    await api.request("DELETE", f"/worker/{wid}")  # unreachable: only marked shut down
    assert await worker_status(api, "ra") == "shutdown"
    proc = ManmanProcess(["worker", "--config", config])
    try:
        await proc.start(bg)
        assert await proc.wait() == 0, "\n".join(proc.log)
        assert not any("Traceback" in line for line in proc.log), "\n".join(proc.log)
        assert pids_with(marker) == []
    finally:
        proc.stop()


async def test_sigterm_while_the_host_is_away_at_start_stops_the_servers(
        tmp_path: Path, host: RunningHost, bg: trio.Nursery) -> None:
    """A worker that restarts while its host is down relaunches what should run and waits to
    register; a SIGTERM then stops those servers and exits 0: no game outlives it."""
    api = host.api
    marker = f"away-at-start-{tmp_path.name}"
    config = str(worker_toml(tmp_path, host.url, "aas"))
    await worker_with_a_running_server(bg, api, config, "aas", marker)
    host.handle.stop()
    await host.handle.stopped.wait()
    proc = ManmanProcess(["worker", "--config", config])
    try:
        await proc.start(bg, ready_text="register: host unreachable")
        with trio.fail_after(10):  # relaunched while the host is away
            while not pids_with(marker):
                await trio.sleep(0.05)
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0, "\n".join(proc.log)
        assert not any("Traceback" in line for line in proc.log), "\n".join(proc.log)
        assert pids_with(marker) == []
    finally:
        proc.stop()


async def test_a_retired_worker_started_again_runs_nothing(
        tmp_path: Path, host: RunningHost, bg: trio.Nursery) -> None:
    """Retired by the host (it answered /shutdown?retire=true): its servers stop for good; a
    later start of that machine's worker (a reboot) launches no game, hears 410, exits 0."""
    api = host.api
    marker = f"retired-live-{tmp_path.name}"
    config = str(worker_toml(tmp_path, host.url, "rl"))
    proc = ManmanProcess(["worker", "--config", config])
    try:
        await proc.start(bg)
        await wait_status(api, "rl", "alive")
        wid = next(w["id"] for w in (await api.get("/worker"))["workers"] if w["name"] == "rl")
        await api.post("/server", fake_spec("rl1", "--banner", marker, worker_id=wid,
                                            desired_state="running"), expect=201)
        await api.wait_for("rl1", state="running")
        await api.request("DELETE", f"/worker/{wid}", expect=200)
        assert await proc.wait() == 0
        assert pids_with(marker) == []
        proc = ManmanProcess(["worker", "--config", config])
        seen: list[int] = []

        async def watch() -> None:
            while True:
                seen.extend(pids_with(marker))
                await trio.sleep(0.02)

        async with trio.open_nursery() as n:
            n.start_soon(watch)
            await proc.start(bg)
            assert await proc.wait() == 0, "\n".join(proc.log)
            n.cancel_scope.cancel()
        assert seen == []
    finally:
        proc.stop()


async def test_a_host_that_does_not_know_the_worker_is_one_line_and_no_game_left(
        tmp_path: Path, database_url: str, host: RunningHost, bg: trio.Nursery) -> None:
    """Its host's data was reset (here: another host secret): registration is refused with
    401; the worker stops what it relaunched, gracefully, and says which file to remove."""
    from manman.host.main import run_host
    from tests.conftest import host_config

    marker = f"unknown-{tmp_path.name}"
    config = str(worker_toml(tmp_path, host.url, "uk"))
    await worker_with_a_running_server(bg, host.api, config, "uk", marker)
    other: Any = await bg.start(run_host, host_config(tmp_path / "other", database_url))
    config = str(worker_toml(tmp_path, other.url, "uk"))
    proc = ManmanProcess(["worker", "--config", config])
    try:
        await proc.start(bg, ready_text="manman: ")
        assert await proc.wait() == 1
        errors = [line for line in proc.log if line.startswith("manman: ")]
        assert len(errors) == 1 and "worker.sqlite3" in errors[0], "\n".join(proc.log)
        assert not any("Traceback" in line for line in proc.log), "\n".join(proc.log)
        assert pids_with(marker) == []
        # stopped gracefully both times (its stop command answered), not killed
        console = "".join(p.read_text() for p in (tmp_path / "uk").glob("servers/*/logs/*"))
        assert console.count('"text":"stopping"') == 2, console[-2000:]
    finally:
        proc.stop()
        other.stop()
        await other.stopped.wait()


async def test_closing_the_link_while_a_report_is_due_is_clean(host: RunningHost,
                                                               hosted: Any) -> None:
    """A state change at the very end of a shutdown wakes the reporter: closing the link
    must end it first, not leave it to post on a closed client (a RuntimeError that took
    the worker down)."""
    w = await hosted("cl")
    s = await host.api.post("/server", fake_spec("cl1", worker_id=w.handle.link.worker_id,
                                                 desired_state="running"), expect=201)
    await host.api.wait_for("cl1", state="running")
    link = w.handle.link
    link.server_changed(w.agent.actors[s["id"]])  # a report is due in 10 ms
    await link.closing()
    # the reporter ended before it took the change: nothing can post on the closed client
    assert link.http.is_closed and s["id"] in link._changed
    # and the host heard the link's last word
    assert host.fleet.workers[link.worker_id].reported == "shutdown"
    await link.closing()  # twice is harmless
    assert link.http.is_closed
