"""steamcmd installs on a real worker, against the steamcmd emulator (a real process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from tests.conftest import Client, RunningWorker, pids_with, steamcmd_emulator, worker_config


@pytest.fixture
async def steam_worker(tmp_path: Path, bg: trio.Nursery, monkeypatch: pytest.MonkeyPatch
                       ) -> Any:
    from manman.worker.main import run_worker

    steamcmd = steamcmd_emulator(tmp_path, monkeypatch)
    handle = await bg.start(run_worker, worker_config(tmp_path, steamcmd=str(steamcmd),
                                                      install_timeout=3))
    w = RunningWorker(handle, Client(handle.url, "test-worker-token"))
    yield w
    await w.shutdown()
    await w.api.aclose()


def steam_spec(name: str, app: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "game_id": f"steamcmd:{app}", "executable": "game/server.sh",
            "stop_command": "quit", "stop_timeout": 5, "ready_pattern": "^Server ready$",
            **kw}


async def test_install_progress_console_files_and_start(steam_worker: RunningWorker) -> None:
    w = steam_worker
    api = w.api
    s = await api.post("/server", steam_spec("cs", "1000"), expect=201)
    assert s["state"] == "installing"
    url = w.url.replace("http://", "ws://") + f"/server/{s['id']}/log/ws?since=0&token=" + \
        api.token
    progress: list[float] = []
    states: list[str] = []
    async with open_websocket_url(url) as ws:
        with trio.fail_after(15):
            while not states or states[-1] != "stopped":
                f = json.loads(await ws.get_message())
                if f["type"] == "state":
                    states.append(f["state"])
                    if f["install_progress"] is not None:
                        progress.append(f["install_progress"])
    assert progress == sorted(progress) and progress[-1] == 100.0 and len(set(progress)) >= 5
    s = await api.get("/server/cs")
    assert s["state"] == "stopped" and s["error"] is None
    page = await api.get("/server/cs/log?since=0&limit=1000")
    install = [ln["text"] for ln in page["lines"] if ln["stream"] == "install"]
    assert "Success! App '1000' fully installed." in install
    assert "[----] Update complete, launching Steamcmd..." in install  # first-run self-update
    assert sum("45.21" in t for t in install) == 1  # a stalled line is shown once
    files = w.agent.data_dir / "servers" / s["id"] / "files"
    assert (files / "game" / "server.sh").is_file()
    await api.post("/server/cs/start", expect=202)
    await api.wait_for("cs", state="running")
    # the game runs from its install directory
    page = await api.get("/server/cs/log?since=0&limit=1000")
    assert any(ln["text"].startswith(f"cwd={files} ") for ln in page["lines"])


async def test_locale_commas_and_cr_line_ends(steam_worker: RunningWorker) -> None:
    s = await steam_worker.api.post("/server", steam_spec("c2", "1010"), expect=201)
    s = await steam_worker.api.wait_for(s["id"], state="stopped")
    assert s["install_progress"] == 100.0


@pytest.mark.parametrize(("app", "error"), [
    ("380870", "ERROR! Failed to install app '380870' (No subscription)"),
    ("222860", "ERROR! Failed to install app '222860' (Invalid platform)"),  # exit code 0
    ("740", "Error! App '740' state is 0x202 after update job."),
    ("1030", "ERROR! Timed out waiting for AppInfo update."),
    ("1040", "Waiting for user info...FAILED (Timed out)"),
    ("1060", "steamcmd exited with code 7"),
    ("1070", "steamcmd ended without reporting success"),
    ("1050", "steamcmd timed out after 3s"),
])
async def test_failures_end_in_failed_with_the_reason(steam_worker: RunningWorker, app: str,
                                                      error: str) -> None:
    api = steam_worker.api
    s = await api.post("/server", steam_spec(f"f{app}", app, desired_state="running"),
                       expect=201)
    s = await api.wait_for(s["id"], state="failed", timeout=15)
    assert s["error"] == error and s["pid"] is None
    page = await api.get(f"/server/{s['id']}/log?since=0&limit=1000")
    assert any(error in ln["text"] for ln in page["lines"] if ln["stream"] == "manman")
    # nothing of steamcmd is left running (the hung one was killed)
    assert pids_with(f"+app_update\0{app}\0") == []


async def test_update_of_a_running_server(steam_worker: RunningWorker) -> None:
    api = steam_worker.api
    s = await api.post("/server", steam_spec("up", "1020", desired_state="running"),
                       expect=201)
    s = await api.wait_for(s["id"], state="running", timeout=20)
    await api.post(f"/server/{s['id']}/install", expect=202)
    seen = set()
    with trio.fail_after(20):
        while True:
            cur = await api.get(f"/server/{s['id']}")
            seen.add(cur["state"])
            if cur["state"] == "running" and cur["pid"] != s["pid"]:
                break
            await trio.sleep(0.02)
    assert {"stopping", "installing"} <= seen
    version = steam_worker.agent.data_dir / "servers" / s["id"] / "files" / "game" / \
        "version.txt"
    assert len(version.read_text().splitlines()) == 2


async def test_concurrent_installs_of_one_app_are_serialised(
        steam_worker: RunningWorker) -> None:
    api = steam_worker.api
    a = await api.post("/server", steam_spec("a", "1020"), expect=201)
    b = await api.post("/server", steam_spec("b", "1020"), expect=201)
    a = await api.wait_for(a["id"], state="stopped", timeout=20)
    b = await api.wait_for(b["id"], state="stopped", timeout=20)
    assert a["error"] is None and b["error"] is None  # the emulator fails a concurrent run
    d = steam_worker.agent.data_dir / "servers"
    assert (d / a["id"] / "files" / "game" / "server.sh").is_file()
    assert (d / b["id"] / "files" / "game" / "server.sh").is_file()
    page = await api.get(f"/server/{b['id']}/log?since=0")
    page_a = await api.get(f"/server/{a['id']}/log?since=0")
    waited = [p for p in (page, page_a)
              if any("waiting for another install" in ln["text"] for ln in p["lines"])]
    assert len(waited) == 1


async def test_missing_steamcmd(tmp_path: Path, bg: trio.Nursery) -> None:
    from manman.worker.main import run_worker

    handle = await bg.start(run_worker, worker_config(tmp_path, steamcmd="/nonexistent/steamcmd"))
    api = Client(handle.url, "test-worker-token")
    s = await api.post("/server", steam_spec("m", "1000"), expect=201)
    s = await api.wait_for(s["id"], state="failed")
    assert s["error"].startswith("cannot run steamcmd (/nonexistent/steamcmd)")
    handle.agent.request_shutdown()
    await handle.agent.stopped.wait()
    await api.aclose()


async def test_a_start_during_the_install_starts_it_after(steam_worker: RunningWorker) -> None:
    api = steam_worker.api
    s = await api.post("/server", steam_spec("later", "1020"), expect=201)
    assert s["state"] == "installing" and s["desired_state"] == "stopped"
    await api.request("PUT", "/server/later", 200, json={"desired_state": "running"})
    s = await api.wait_for("later", state="running", timeout=20)
    assert s["install_progress"] is None or s["install_progress"] == 100.0


async def test_delete_of_an_installing_server_cancels_the_install(
        steam_worker: RunningWorker) -> None:
    api = steam_worker.api
    s = await api.post("/server", steam_spec("gone", "1050"), expect=201)  # 1050 hangs
    assert s["state"] == "installing"
    await api.request("DELETE", "/server/gone?stop=true&purge=true")
    with trio.fail_after(2):  # well before the 3 s install timeout would fail it
        while (await api.request("GET", "/server/gone")).status_code != 404:
            await trio.sleep(0.05)
    assert pids_with("+app_update\x001050\x00") == []
    # the worker and its other servers go on
    await api.post("/server", steam_spec("next", "1000"), expect=201)
    await api.wait_for("next", state="stopped", timeout=15)


async def test_a_start_during_an_install_does_not_swallow_a_later_update(
        steam_worker: RunningWorker) -> None:
    api = steam_worker.api
    await api.post("/server", steam_spec("upd", "1020", desired_state="running"), expect=201)
    # a stop and a start while it installs: the start is remembered, then done
    await api.request("PUT", "/server/upd", 200, json={"desired_state": "stopped"})
    await api.request("PUT", "/server/upd", 200, json={"desired_state": "running"})
    await api.wait_for("upd", state="running", timeout=20)
    await api.post("/server/upd/install", expect=202)  # a game update: installs again
    await api.wait_line("upd", "Success! App '1020' fully installed.", since=0)
    with trio.fail_after(20):
        while True:
            page = await api.get("/server/upd/log?since=0&limit=10000")
            done = [ln for ln in page["lines"]
                    if ln["text"] == "Success! App '1020' fully installed."]
            if len(done) == 2:
                break
            await trio.sleep(0.1)
    await api.wait_for("upd", state="running", timeout=20)


# each shipped steamcmd preset's required variables, with values its rules take
PRESET_VARS: dict[str, dict[str, str]] = {
    "valheim": {"password": "hunter22"}, "project-zomboid": {"admin_password": "zomboid-1"},
    "rust": {"rcon_password": "rcon-secret-1"}}


async def test_every_steamcmd_preset_installs_and_runs_the_game_in_its_place(
        tmp_path: Path, bg: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    """All of them at once on one worker: installed through the emulator, the fake game at
    each preset's executable, started with the preset's arguments, stopped its way."""
    from manman.presets import PresetCatalog
    from manman.worker.main import run_worker

    presets = [p for p in PresetCatalog.load() if p.game_id.startswith("steamcmd:")]
    assert len(presets) == 8
    monkeypatch.setenv("STEAMCMD_EMU_EXECUTABLES", json.dumps(
        {p.game_id.split(":")[1]: p.executable for p in presets}))
    steamcmd = steamcmd_emulator(tmp_path, monkeypatch)
    handle = await bg.start(run_worker, worker_config(tmp_path, steamcmd=str(steamcmd)))
    api = Client(handle.url, "test-worker-token")
    w = RunningWorker(handle, api)
    try:
        for p in presets:
            # every port `auto`: what the machine listens on never decides this test
            ports = {q.name: "auto" for q in p.ports if q.follows is None}
            await api.post("/server", {"name": p.name, "preset": p.name, "ports": ports,
                                       "vars": PRESET_VARS.get(p.name, {})}, expect=201)

        async def one(name: str) -> None:
            s = await api.wait_for(name, state="stopped", timeout=60)
            assert s["install_progress"] == 100.0 and s["preset"] == name
            await api.post(f"/server/{name}/start", expect=202)
            await api.wait_line(name, "fakegame starting", timeout=30)
            s = await api.get(f"/server/{name}")
            assert s["pid"] and s["state"] in ("starting", "running")
            await api.post(f"/server/{name}/shutdown", expect=202)
            s = await api.wait_for(name, state="stopped", timeout=30)
            assert s["exit_code"] == 0, (name, s)  # its stop command or signal, not a kill

        async with trio.open_nursery() as nursery:
            for p in presets:
                nursery.start_soon(one, p.name)
    finally:
        await w.shutdown()
        await api.aclose()
