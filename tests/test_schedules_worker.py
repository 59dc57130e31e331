"""Schedules on a real standalone worker with the fake game: the routes, their refusals, and
a schedule that fires within seconds in real time (the worker's cron clock set to just
before a minute begins)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import msgspec
import trio

from manman import models
from manman.schedules.runs import ReportedRun, ScheduleRun
from tests.conftest import Client, RunningWorker, fake_spec, worker_config

RESTART_AT_FIVE = {"cron": "0 5 * * *", "timezone": "Europe/Berlin", "tasks": [
    {"action": "command", "payload": "say restart in 5 min"},
    {"action": "wait", "payload": "300"}, {"action": "restart"}]}


async def _runs(worker: RunningWorker, sid: str, want: int, timeout: float = 20
                ) -> list[dict[str, Any]]:
    with trio.move_on_after(timeout):
        while True:
            runs = (await worker.api.get(f"/server/alpha/schedule/{sid}/runs"))["runs"]
            done = [r for r in runs if r["status"] != "running"]
            if len(done) >= want:
                return runs
            await trio.sleep(0.05)
    raise AssertionError(f"schedule {sid}: not {want} runs ended: {runs}")


async def test_schedule_routes_and_refusals(worker: RunningWorker) -> None:
    api = worker.api
    await api.post("/server", fake_spec("alpha"), expect=201)
    assert await api.get("/server/alpha/schedule") == {"schedules": []}
    s = await api.post("/server/alpha/schedule", RESTART_AT_FIVE, expect=201)
    assert s["id"] == "s1" and s["timezone"] == "Europe/Berlin" and s["enabled"] is True
    assert s["tasks"][2]["await"] == "done" and s["tasks"][0]["await"] == "none"
    assert s["next_run_at"].endswith("Z")
    # the schedule is in the spec (pushed with it, converging like it)
    server = await api.get("/server/alpha")
    assert server["schedules"][0]["id"] == "s1" and server["generation"] == 2
    assert (await api.get("/server/alpha/schedule/s1"))["cron"] == "0 5 * * *"
    s = await api.request("PUT", "/server/alpha/schedule/s1", 200,
                          json={**RESTART_AT_FIVE, "enabled": False})
    assert s.json()["next_run_at"] is None and s.json()["enabled"] is False
    r = await api.request("POST", "/server/alpha/schedule",
                          json={**RESTART_AT_FIVE, "id": "s1"})
    assert r.status_code == 409, r.text
    for bad, why in [({**RESTART_AT_FIVE, "cron": "0 5 * *"}, "five fields"),
                     ({**RESTART_AT_FIVE, "timezone": "Nowhere/Land"}, "IANA"),
                     ({**RESTART_AT_FIVE, "cron": "* * * * *", "tasks": [
                         {"action": "backup"}]}, "every 15 minutes"),
                     ({**RESTART_AT_FIVE, "tasks": [
                         {"action": "backup"}, {"action": "wait", "payload": "60"},
                         {"action": "backup"}]},
                      "the backup of tasks[2] would start 60 s after the one of tasks[0]"),
                     ({**RESTART_AT_FIVE, "tasks": [{"action": "update"}]},
                      "update: not available"),
                     ({**RESTART_AT_FIVE, "tasks": [{"action": "restart"}] * 21}, "")]:
        r = await api.request("POST", "/server/alpha/schedule", json=bad)
        assert r.status_code == 422, r.text
        assert why in r.json()["error"]["message"]
    # a backup every 20 minutes, and one 5 minutes after 03:00 on 1 January
    await api.post("/server/alpha/schedule", {"id": "b1", "cron": "*/20 * * * *",
                                              "tasks": [{"action": "backup"}]}, expect=201)
    r = await api.request("POST", "/server/alpha/schedule", json={
        "cron": "5 3 1 1 *", "tasks": [{"action": "backup"}]})
    assert r.status_code == 422, r.text
    assert "300 s apart (b1 at " in r.json()["error"]["message"]
    assert "-01-01T03:05:00Z)" in r.json()["error"]["message"]
    await api.request("DELETE", "/server/alpha/schedule/b1", 200)
    for method, path in [("GET", "/server/alpha/schedule/nope"),
                         ("DELETE", "/server/alpha/schedule/nope"),
                         ("POST", "/server/alpha/schedule/nope/run"),
                         ("GET", "/server/alpha/schedule/nope/runs"),
                         ("GET", "/server/nobody/schedule")]:
        r = await api.request(method, path)
        assert r.status_code == 404, (path, r.text)
    assert await api.get("/server/alpha/schedule/s1/runs") == {"runs": []}
    r = await api.request("DELETE", "/server/alpha/schedule/s1", 200)
    assert r.json() == {"id": "s1", "deleted": True}
    assert await api.get("/server/alpha/schedule") == {"schedules": []}


async def test_a_schedule_fires_in_real_time_and_runs_now(worker: RunningWorker,
                                                         tmp_path: Path, bg: trio.Nursery
                                                         ) -> None:
    api = worker.api
    await api.post("/server", fake_spec("alpha", "--ready-after", "0.2"), expect=201)
    await api.post("/server/alpha/start", expect=202)
    first = await api.wait_for("alpha", state="running", ready=True)
    # the worker reads its crons by a clock 1.5 s before the next minute begins
    now = time.time()
    offset = (60 - now % 60) - 1.5
    schedules = worker.handle.schedules
    schedules.set_wall(lambda: time.time() + offset)
    s = await api.post("/server/alpha/schedule", {"cron": "* * * * *", "tasks": [
        {"action": "command", "payload": "say tick"},
        {"action": "restart", "await": "ready"},
        {"action": "command", "payload": "say back"}]}, expect=201)
    fired = time.monotonic()
    (run,) = await _runs(worker, s["id"], 1, timeout=15)
    assert time.monotonic() - fired < 10
    assert run["status"] == "ok", str(run)
    assert run["trigger"] == "cron" and [t["ok"] for t in run["tasks"]] == [True] * 3
    await api.wait_line("alpha", "said: tick")
    back = await api.wait_line("alpha", "said: back")
    server = await api.get("/server/alpha")
    assert server["pid"] != first["pid"] and server["ready"] is True  # restarted, then said
    assert server["started_at"] < back["ts"]
    # now, by hand (only_when would not hold: nobody is counted)
    schedules.set_wall(time.time)
    await api.request("PUT", f"/server/alpha/schedule/{s['id']}", 200, json={
        "cron": "0 5 * * *", "only_when": {"players_max": 0},
        "tasks": [{"action": "command", "payload": "say manual"}]})
    r = await api.post(f"/server/alpha/schedule/{s['id']}/run", expect=202)
    assert r["trigger"] == "manual"
    await api.wait_line("alpha", "said: manual")
    runs = await _runs(worker, s["id"], 2)
    assert [x["trigger"] for x in runs] == ["manual", "cron"] and runs[0]["status"] == "ok"
    # the runs are saved with the server: a new worker on the same data shows them
    await worker.shutdown()
    from manman.worker.main import run_worker

    handle = await bg.start(run_worker, worker_config(tmp_path))
    again = Client(handle.url, "test-worker-token")
    try:
        runs = (await again.get(f"/server/alpha/schedule/{s['id']}/runs"))["runs"]
        assert [(x["trigger"], x["status"]) for x in runs] == [("manual", "ok"), ("cron", "ok")]
    finally:
        handle.agent.request_shutdown()
        with trio.fail_after(30):
            await handle.agent.stopped.wait()
        await again.aclose()


async def _host_runs(api: Client, server: str, sid: str, want: int,
                     timeout: float = 10) -> list[dict[str, Any]]:
    with trio.fail_after(timeout):
        while len(runs := (await api.get(f"/server/{server}/schedule/{sid}/runs"))["runs"]) \
                < want:
            await trio.sleep(0.05)
    return runs


async def _db_runs(host: Any, server_id: str) -> list[tuple[str, int]]:
    rows = await host.control.store.fetch(
        "SELECT schedule_id, run_id FROM schedule_runs WHERE server_id = $1 "
        "ORDER BY schedule_id, run_id", server_id)
    return [(r["schedule_id"], r["run_id"]) for r in rows]


async def test_a_task_delay_is_waited_in_real_time(worker: RunningWorker) -> None:
    api = worker.api
    await api.post("/server", fake_spec("alpha"), expect=201)
    await api.post("/server/alpha/start", expect=202)
    await api.wait_for("alpha", state="running")
    await api.post("/server/alpha/schedule", {"cron": "0 5 * * *", "tasks": [
        {"action": "command", "payload": "say first"},
        {"action": "command", "payload": "say second", "delay": 0.7}]}, expect=201)
    started = time.monotonic()
    await api.post("/server/alpha/schedule/s1/run", expect=202)
    first = await api.wait_line("alpha", "said: first")
    second = await api.wait_line("alpha", "said: second")
    # stamped as the game's echoes are read: a few ms either way (without the delay: ~1 ms)
    assert 0.7 - 0.05 <= second["ts"] - first["ts"] < 0.7 + 1.0
    assert time.monotonic() - started >= 0.7
    (run,) = await _runs(worker, "s1", 1)
    assert run["status"] == "ok"


async def test_host_schedules_travel_with_the_spec_and_runs_are_reported_to_the_host(
        host: Any, hosted: Any) -> None:
    w = await hosted("ws")
    api = host.api
    s = await api.post("/server", fake_spec("hs", worker_id=w.handle.link.worker_id,
                                            desired_state="running"), expect=201)
    await api.wait_for("hs", state="running")
    made = await api.post("/server/hs/schedule", {
        "cron": "0 5 * * *", "tasks": [{"action": "command", "payload": "say from host"}]},
        expect=201)
    assert made["id"] == "s1" and made["next_run_at"].endswith("Z")
    assert (await api.get("/server/hs"))["generation"] == s["generation"] + 1
    # pushed with the spec: the worker holds it, and its routes show it
    actor = w.agent.get("hs")
    assert [x.id for x in actor.spec.schedules] == ["s1"]
    assert (await w.api.get(f"/server/{s['id']}/schedule/s1"))["cron"] == "0 5 * * *"
    r = await api.request("POST", "/server/hs/schedule", json={
        "cron": "0 5 * * *", "tasks": [{"action": "update"}]})
    assert r.status_code == 422 and "not available" in r.json()["error"]["message"]
    assert await api.get("/server/hs/schedule/s1/runs") == {"runs": []}
    run = await api.post("/server/hs/schedule/s1/run", expect=202)
    assert run["trigger"] == "manual"
    await api.wait_line("hs", "said: from host")
    # the run, once ended, comes to the host with a heartbeat: the host answers from its store
    (stored,) = await _host_runs(api, "hs", "s1", 1)
    on_worker = (await w.api.get(f"/server/{s['id']}/schedule/s1/runs"))["runs"]
    assert stored == on_worker[0] and stored["status"] == "ok"
    # taken: the next heartbeats carry no run (nothing at all on the wire)
    link = w.handle.link
    with trio.fail_after(5):
        while link.heartbeat_body().schedule_runs:
            await trio.sleep(0.05)
    assert b"schedule_runs" not in msgspec.json.encode(link.heartbeat_body())
    # a run sent again (its answer lost) is kept once
    again = models.Heartbeat(schedule_runs=[ReportedRun(s["id"], msgspec.convert(
        stored, ScheduleRun))] * 2)
    for _ in range(2):
        r = await link.http.post(f"/worker/{link.worker_id}/health",
                                 content=msgspec.json.encode(again), headers=link._auth())
        assert r.status_code == 200 and r.json()["runs_taken"] == 2, r.text
    assert await _db_runs(host, s["id"]) == [("s1", 1)]
    assert len((await api.get("/server/hs/schedule/s1/runs"))["runs"]) == 1
    metrics = (await api.request("GET", "/metrics", 200)).text
    assert re.search(r"^manman_host_schedule_runs_stored_total 5\.0$", metrics, re.M), metrics
    await api.request("PUT", "/server/hs/schedule/s1", 200, json={
        "cron": "30 4 * * 1", "timezone": "Asia/Tokyo",
        "tasks": [{"action": "notify", "payload": "hi"}]})
    assert w.agent.get("hs").spec.schedules[0].timezone == "Asia/Tokyo"
    assert (await api.get("/server/hs"))["state"] == "running"  # nothing stopped it
    assert len(await _host_runs(api, "hs", "s1", 1)) == 1  # a changed schedule keeps its runs
    # the worker away: the runs still answer, from the host's store
    await w.shutdown()
    with trio.fail_after(20):
        while (await api.get("/server/hs"))["state"] != "unknown":
            await trio.sleep(0.1)
    assert (await api.get("/server/hs/schedule/s1/runs"))["runs"] == [stored]
    assert (await api.get("/server/hs/schedule"))["schedules"][0]["id"] == "s1"
    # a schedule removed takes its runs with it (one added again under its id has none)
    await api.request("DELETE", "/server/hs/schedule/s1", 200)
    assert (await api.get("/server/hs"))["schedules"] == []
    assert await _db_runs(host, s["id"]) == []
    await api.post("/server/hs/schedule", {"id": "s1", "cron": "0 5 * * *",
                                           "tasks": [{"action": "stop"}]}, expect=201)
    assert await api.get("/server/hs/schedule/s1/runs") == {"runs": []}


async def test_runs_of_a_deleted_server_go_with_it(host: Any, hosted: Any) -> None:
    w = await hosted("wd")
    api = host.api
    s = await api.post("/server", fake_spec("gone", worker_id=w.handle.link.worker_id),
                       expect=201)
    await api.post("/server/gone/schedule", {
        "cron": "0 5 * * *", "tasks": [{"action": "notify", "payload": "x"}]}, expect=201)
    await api.post("/server/gone/schedule/s1/run", expect=202)
    await _host_runs(api, "gone", "s1", 1)
    assert await _db_runs(host, s["id"]) == [("s1", 1)]
    await api.request("DELETE", "/server/gone")
    with trio.fail_after(20):
        while (await api.request("GET", "/server/gone")).status_code != 404:
            await trio.sleep(0.1)
    assert await _db_runs(host, s["id"]) == []


async def test_a_schedule_fires_while_its_host_is_down(host: Any, hosted: Any) -> None:
    w = await hosted("wo")
    api = host.api
    s = await api.post("/server", fake_spec("out", worker_id=w.handle.link.worker_id,
                                            desired_state="running"), expect=201)
    await api.wait_for("out", state="running")
    await api.post("/server/out/schedule", {
        "cron": "* * * * *", "tasks": [{"action": "command", "payload": "say no host"}]},
        expect=201)
    host.handle.stop()
    with trio.fail_after(20):
        await host.handle.stopped.wait()
    offset = (60 - time.time() % 60) - 1.5  # the worker's cron clock: a minute begins soon
    w.handle.schedules.set_wall(lambda: time.time() + offset)
    with trio.fail_after(15):
        while not (runs := (await w.api.get(f"/server/{s['id']}/schedule/s1/runs"))["runs"]) \
                or runs[0]["status"] == "running":
            await trio.sleep(0.05)
    assert runs[0]["status"] == "ok" and runs[0]["trigger"] == "cron"
    await w.api.wait_line(s["id"], "said: no host")


async def test_a_backup_task_makes_a_backup_and_awaits_it(worker: RunningWorker) -> None:
    api = worker.api
    await api.post("/server", fake_spec("bk"), expect=201)
    files = worker.agent.get("bk").files_dir
    files.mkdir(parents=True, exist_ok=True)
    (files / "world.dat").write_bytes(b"w" * 1000)
    await api.post("/server/bk/schedule", {"cron": "0 4 * * *", "tasks": [
        {"action": "backup"}, {"action": "notify", "payload": "backed up"}]}, expect=201)
    await api.post("/server/bk/schedule/s1/run", expect=202)
    with trio.fail_after(20):
        while (runs := (await api.get("/server/bk/schedule/s1/runs"))["runs"])[0][
                "status"] == "running":
            await trio.sleep(0.05)
    assert runs[0]["status"] == "ok", runs[0]
    backups = (await api.get("/server/bk/backup"))["backups"]
    # awaited: the backup had ended ok before the next task ran
    assert [b["state"] for b in backups] == ["ok"] and backups[0]["bytes"] > 0
    assert runs[0]["tasks"][0]["ended_at"] <= runs[0]["tasks"][1]["started_at"]


async def test_no_more_than_32_schedules_one_at_a_time(worker: RunningWorker) -> None:
    """The spec holds at most 32 schedules: the one-at-a-time route keeps to it too (a 33rd
    was kept, and then the spec no longer decoded at the worker's next start)."""
    api = worker.api
    await api.post("/server", fake_spec("alpha"), expect=201)
    for _ in range(32):
        await api.post("/server/alpha/schedule", RESTART_AT_FIVE, expect=201)
    r = await api.request("POST", "/server/alpha/schedule", 422, json=RESTART_AT_FIVE)
    assert "32" in r.json()["error"]["message"]
    assert len((await api.get("/server/alpha/schedule"))["schedules"]) == 32
