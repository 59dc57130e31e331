"""A standalone worker driven over HTTP, with the fake game server as a real process."""

from __future__ import annotations

import os
import signal

import trio

from manman.worker import procs
from tests.conftest import RunningWorker, fake_spec


async def test_status_and_auth(worker: RunningWorker) -> None:
    st = await worker.api.get("/status")
    assert st["status"] == "alive" and st["servers"] == 0 and "resources" in st
    r = await worker.api.http.get("/status", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = await worker.api.http.get("/status", headers={"Authorization": ""})
    assert r.status_code == 401


async def test_create_start_ready_command_stop(worker: RunningWorker) -> None:
    api = worker.api
    s = await api.post("/server", fake_spec("alpha", "--ready-after", "0.3"), expect=201)
    assert s["state"] == "stopped" and s["desired_state"] == "stopped" and s["generation"] == 1
    s = await api.post("/server/alpha/start", expect=202)
    assert s["state"] == "starting"
    s = await api.wait_for("alpha", state="starting", timeout=2)
    assert s["ready"] is False
    s = await api.wait_for("alpha", state="running")
    assert s["ready"] is True and s["pid"] and s["started_at"]
    # console input reaches stdin, the answer reaches the console
    r = await api.post("/server/alpha/command", {"data": "say hi there"}, expect=202)
    assert r["delivered"] is True
    await api.wait_line("alpha", "said: hi there")
    page = await api.get("/server/alpha/log?since=0")
    seqs = [ln["seq"] for ln in page["lines"]]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert page["next_seq"] == seqs[-1] + 1
    pid = s["pid"]
    # a change of other fields keeps what POST /start asked: the server runs on
    s = await api.request("PUT", "/server/alpha", json={"stop_timeout": 7}, expect=200)
    await trio.sleep(0.5)
    s = await api.get("/server/alpha")
    assert s["state"] == "running" and s["pid"] == pid and s["desired_state"] == "running"
    await api.post("/server/alpha/shutdown", expect=202)
    s = await api.wait_for("alpha", state="stopped")
    assert s["exit_code"] == 0 and s["pid"] is None
    assert not procs.is_running(pid)
    page = await api.get("/server/alpha/log?since=0&limit=1000")
    assert any(ln["text"] == "stopping" for ln in page["lines"])


async def test_commands_in_the_wrong_state_are_409_and_change_nothing(
        worker: RunningWorker) -> None:
    api = worker.api
    await api.post("/server", fake_spec("beta"), expect=201)
    before = await api.get("/server/beta")
    for action in ("shutdown", "kill"):
        r = await api.request("POST", f"/server/beta/{action}")
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "invalid_state"
    r = await api.request("POST", "/server/beta/command", json={"data": "say x"})
    assert r.status_code == 409
    after = await api.get("/server/beta")
    assert after["state"] == before["state"] == "stopped"
    await api.post("/server/beta/start", expect=202)
    await api.wait_for("beta", state="running")
    r = await api.request("POST", "/server/beta/start")
    assert r.status_code == 409
    r = await api.request("DELETE", "/server/beta")
    assert r.status_code == 409  # must be stopped first
    assert (await api.get("/server/beta"))["state"] == "running"


async def test_bad_input_is_4xx_with_error_json(worker: RunningWorker) -> None:
    api = worker.api
    cases = [
        ({"name": "Bad Name", "game_id": "exec:/bin/true"}, 422),
        ({"name": "ok", "game_id": "nope:1"}, 422),
        ({"name": "ok", "game_id": "exec:/bin/true", "unknown": 1}, 422),
        ({"name": "ok", "game_id": "exec:/bin/true", "stop_timeout": "x"}, 422),
        ({"name": "ok", "game_id": "exec:/bin/true", "args": ["a\x00b"]}, 422),
        ({"name": "ok", "game_id": "exec:/bin/true", "ready_pattern": "("}, 422),
        ({"name": "ok", "game_id": "steamcmd:abc"}, 422),
        ({"name": "ok", "game_id": "exec:/bin/true", "restart": {"policy": "sometimes"}}, 422),
    ]
    for body, status in cases:
        r = await api.request("POST", "/server", json=body)
        assert r.status_code == status, (body, r.text)
        assert set(r.json()["error"]) == {"code", "message"}
    r = await api.request("POST", "/server", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    r = await api.request("POST", "/server", content=b"x" * (2 << 20))
    assert r.status_code == 413 and "error" in r.json()
    r = await api.request("GET", "/server/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await api.request("GET", "/no/such/route")
    assert r.status_code == 404 and "error" in r.json()
    await api.post("/server", fake_spec("dup"), expect=201)
    r = await api.request("POST", "/server", json=fake_spec("dup"))
    assert r.status_code == 409
    assert len((await api.get("/server"))["servers"]) == 1


async def test_kill_restart_delete_and_purge(worker: RunningWorker) -> None:
    api = worker.api
    s = await api.post("/server", fake_spec("gamma", "--ignore-stop", "--ignore-term",
                                            desired_state="running"), expect=201)
    sid = s["id"]
    s = await api.wait_for(sid, state="running")
    pid1 = s["pid"]
    await api.post(f"/server/{sid}/restart", expect=202)
    s = await api.wait_for(sid, state="running", timeout=20)
    assert s["pid"] != pid1 and not procs.is_running(pid1)
    await api.post(f"/server/{sid}/kill", expect=202)
    s = await api.wait_for(sid, state="stopped")
    assert s["exit_code"] == -signal.SIGKILL
    files = worker.agent.data_dir / "servers" / sid
    assert files.is_dir()
    r = await api.request("DELETE", f"/server/{sid}?purge=true")
    assert r.status_code == 200, r.text
    assert not files.exists()
    r = await api.request("GET", f"/server/{sid}")
    assert r.status_code == 404


async def test_stop_timeout_kills_the_whole_process_group(worker: RunningWorker) -> None:
    api = worker.api
    await api.post("/server", fake_spec("delta", "--ignore-stop", "--ignore-term", "--child",
                                        stop_timeout=0.5, desired_state="running"), expect=201)
    s = await api.wait_for("delta", state="running")
    await api.post("/server/delta/command", {"data": "spawn"}, expect=202)
    with trio.fail_after(5):
        while True:
            page = await api.get("/server/delta/log?since=0&limit=1000")
            kids = [int(ln["text"].split()[1]) for ln in page["lines"]
                    if ln["text"].startswith("child ")]
            if kids:
                break
            await trio.sleep(0.02)
    members = [p for p in _group_members(s["pid"])]
    assert len(members) >= 3  # the game, its --child, its spawned child
    await api.post("/server/delta/shutdown", expect=202)
    s = await api.wait_for("delta", state="stopped", timeout=10)
    assert s["exit_code"] == -signal.SIGKILL
    for pid in members:
        assert not procs.is_running(pid), pid


async def test_a_stop_signal_stops_a_game_that_reads_no_stdin(worker: RunningWorker) -> None:
    # the game ignores its console and SIGTERM: only the spec's SIGINT stops it in time
    api = worker.api
    spec = fake_spec("sig", "--ignore-stop", "--ignore-term", stop_timeout=20,
                     desired_state="running", stop_signal="SIGINT")
    del spec["stop_command"]
    await api.post("/server", spec, expect=201)
    await api.wait_for("sig", state="running")
    with trio.fail_after(5):  # well inside the stop_timeout: no kill was needed
        await api.post("/server/sig/shutdown", expect=202)
        s = await api.wait_for("sig", state="stopped")
    assert s["exit_code"] == 0
    await api.wait_line("sig", "got SIGINT, saving, bye")


async def test_missing_executable_fails_with_reason(worker: RunningWorker) -> None:
    api = worker.api
    await api.post("/server", {"name": "ghost", "game_id": "exec:/nonexistent/game",
                               "desired_state": "running"}, expect=201)
    s = await api.wait_for("ghost", state="failed")
    assert "not found" in s["error"]


async def test_freeze_unfreeze(worker: RunningWorker) -> None:
    api = worker.api
    await api.post("/server", fake_spec("eps", desired_state="running"), expect=201)
    await api.wait_for("eps", state="running")
    assert (await api.post("/freeze", expect=200))["status"] == "frozen"
    r = await api.request("POST", "/server/eps/shutdown")
    assert r.status_code == 409 and r.json()["error"]["code"] == "frozen"
    r = await api.request("POST", "/server", json=fake_spec("zeta"))
    assert r.status_code == 409
    # running servers keep running, and their console still works
    await api.post("/server/eps/command", {"data": "say still here"}, expect=202)
    assert (await api.get("/status"))["status"] == "frozen"
    assert (await api.post("/unfreeze", expect=200))["status"] == "alive"
    await api.post("/server/eps/shutdown", expect=202)
    await api.wait_for("eps", state="stopped")


async def test_update_spec_generation_and_restart_on_change(worker: RunningWorker) -> None:
    api = worker.api
    await api.post("/server", fake_spec("eta", "--banner", "v1", desired_state="running"),
                   expect=201)
    s = await api.wait_for("eta", state="running")
    pid = s["pid"]
    args = ["-u", s["args"][1], "--banner", "v2"]
    s = (await api.request("PUT", "/server/eta", json={"args": args}, expect=200)).json()
    assert s["generation"] == 2 and s["args"] == args
    # a restart would have begun before the PUT answered (the actor applies a spec with no
    # await): still running, same process, without restart_on_change
    now = await api.get("/server/eta")
    assert (now["state"], now["pid"]) == ("running", pid)
    await api.request("PUT", "/server/eta", json={"stop_timeout": 3, "restart_on_change": True},
                      expect=200)
    s = await api.wait_for("eta", state="running", timeout=10)
    with trio.fail_after(10):
        while (s := await api.get("/server/eta"))["pid"] in (pid, None):
            await trio.sleep(0.02)
    await api.wait_line("eta", "v2")
    r = await api.request("PUT", "/server/eta", json={"game_id": "exec:/bin/sh"})
    assert r.status_code == 422


def _group_members(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid and procs.is_running(int(entry)):
                    out.append(int(entry))
            except ProcessLookupError:
                pass
    return out


async def test_a_start_while_stopping_runs_it_again_after_the_stop(worker: RunningWorker) -> None:
    """The host's `start` arriving during a slow stop (a spec with desired running) is not
    lost: the server starts again once the stop is done."""
    api = worker.api
    s = await api.post("/server", fake_spec("again", "--ignore-stop", stop_timeout=1,
                                            desired_state="running"), expect=201)
    first = (await api.wait_for("again", state="running"))["pid"]
    await api.post("/server/again/shutdown", expect=202)
    s = await api.get("/server/again")
    assert s["state"] == "stopping"
    s = (await api.request("PUT", "/server/again", 200,
                           json={"desired_state": "running"})).json()
    assert s["desired_state"] == "running"
    s = await api.wait_for("again", state="running", timeout=15)
    assert s["pid"] != first and not procs.is_running(first)
