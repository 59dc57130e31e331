"""Steam build updates end to end: a real worker, the steamcmd emulator publishing builds,
the fake game as the installed server (docs/spec.md, "Steam build updates")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests import steamcmd_emulator as emu
from tests.conftest import Client, RunningHost, RunningWorker, steamcmd_emulator, worker_config
from tests.test_cli import manman
from tests.test_web_console import CHROMIUM, in_browser, open_server, sign_in

APP = "1000"
FIRST = str(emu.DEFAULT_BUILD)
NEXT = str(emu.DEFAULT_BUILD + 1)
RESTART_LINE = "Your server needs to be restarted in order to receive the latest update."


@pytest.fixture
async def steam_worker(tmp_path: Path, bg: trio.Nursery, monkeypatch: pytest.MonkeyPatch
                       ) -> Any:
    from manman.worker.main import run_worker

    steamcmd = steamcmd_emulator(tmp_path, monkeypatch)
    handle = await bg.start(run_worker, worker_config(
        tmp_path, steamcmd=str(steamcmd), install_timeout=10, update_check_min_interval=0.5))
    w = RunningWorker(handle, Client(handle.url, "test-worker-token"))
    yield w
    await w.shutdown()
    await w.api.aclose()


def home() -> str:
    return os.environ["STEAMCMD_EMU_HOME"]


def spec(name: str, **auto_update: Any) -> dict[str, Any]:
    return {"name": name, "game_id": f"steamcmd:{APP}", "executable": "game/server.sh",
            "stop_command": "quit", "stop_timeout": 5, "ready_pattern": "^Server ready$",
            "desired_state": "running", "auto_update": auto_update}


async def notes(api: Client, server: str) -> list[str]:
    page = await api.get(f"/server/{server}/log?since=0&limit=10000")
    return [ln["text"] for ln in page["lines"] if ln["stream"] == "manman"]


async def test_notify_shows_the_new_build_after_a_spec_change_without_a_restart(
        steam_worker: RunningWorker) -> None:
    api = steam_worker.api
    await api.post("/server", spec("n"), expect=201)  # auto_update off
    s = await api.wait_for("n", state="running", timeout=20)
    # shown after any install, whatever the mode
    assert s["installed_build"] == FIRST and s["update_available"] is False
    pid = s["pid"]
    emu.publish(home(), APP, NEXT)
    r = await api.request("PUT", "/server/n", json={"auto_update": {
        "mode": "notify", "check_interval": 1}})
    assert r.status_code == 200, r.text
    s = await api.wait_for("n", update_available=True, timeout=20)
    assert s["latest_build"] == NEXT and s["installed_build"] == FIRST
    assert s["state"] == "running" and s["pid"] == pid  # notify: the game is left alone
    assert f"update available: build {NEXT} (installed: {FIRST})" in await notes(api, "n")
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{steam_worker.url}/metrics")).text
    assert 'manman_server_update_available{server="n"} 1.0' in text


async def test_immediate_announces_waits_grace_then_stops_updates_and_starts(
        steam_worker: RunningWorker) -> None:
    api = steam_worker.api
    await api.post("/server", spec("im", mode="immediate", check_interval=1, grace=0.5,
                                   announce_command="say update in 0.5s"), expect=201)
    s = await api.wait_for("im", state="running", installed_build=FIRST, timeout=20)
    old_pid = s["pid"]
    emu.publish(home(), APP, NEXT)
    announced = await api.wait_line("im", "said: update in 0.5s", timeout=20)
    s = await api.wait_for("im", state="running", installed_build=NEXT, timeout=30)
    assert s["pid"] != old_pid and s["update_available"] is False and s["latest_build"] == NEXT
    page = await api.get("/server/im/log?since=0&limit=10000")
    after = [ln["text"] for ln in page["lines"] if ln["seq"] > announced["seq"]]
    assert "update in 0.5s" in await notes(api, "im")
    # after the announce and its grace: stop → update → start, in that order
    steps = ["updating: stop, update, start", "stopping",
             f"Success! App '{APP}' fully installed.", f"updated to build {NEXT}",
             "Server ready"]
    at = [after.index(t) for t in steps]
    assert at == sorted(at), after


async def test_a_mode_change_during_the_grace_ends_the_grace(
        steam_worker: RunningWorker) -> None:
    api = steam_worker.api
    await api.post("/server", spec("g", mode="immediate", check_interval=1, grace=3600,
                                   announce_command="say update in an hour"), expect=201)
    s = await api.wait_for("g", state="running", installed_build=FIRST, timeout=20)
    emu.publish(home(), APP, NEXT)
    await api.wait_line("g", "said: update in an hour", timeout=20)
    updater = steam_worker.agent.actors[s["id"]].updater
    assert updater is not None and updater.machine.phase == "grace"
    assert updater._grace_scope is not None
    scope = updater._grace_scope
    r = await api.request("PUT", "/server/g", json={"auto_update": {
        "mode": "notify", "check_interval": 1}})
    assert r.status_code == 200, r.text
    # the hour's sleep is over now, not in an hour (each change used to leave one behind)
    assert scope.cancel_called and updater._grace_scope is None
    s = await api.wait_for("g", update_available=True, timeout=20)
    assert s["pid"] == (await api.get("/server/g"))["pid"] and s["installed_build"] == FIRST


async def test_a_restart_needed_line_from_the_game_triggers_the_update(
        steam_worker: RunningWorker) -> None:
    api = steam_worker.api
    body = spec("rn", mode="immediate", check_interval=1, grace=0)
    body["restart_needed_patterns"] = ["needs to be restarted in order to receive"]
    await api.post("/server", body, expect=201)
    s = await api.wait_for("rn", state="running", installed_build=FIRST, timeout=20)
    await trio.sleep(1.2)  # a plea right after an install is not acted on (check_interval)
    # Steam still serves the old build (its cache lags): the game's word is enough
    await api.post("/server/rn/command", {"data": f"echo {RESTART_LINE}"}, expect=202)
    await api.wait_line("rn", "the game asks for an update", timeout=10)
    await api.wait_line("rn", f"updated to build {FIRST}", timeout=30)
    s2 = await api.wait_for("rn", state="running", timeout=20)
    assert s2["pid"] != s["pid"]


async def test_a_failed_update_keeps_the_old_build_running_and_is_tried_again(
        steam_worker: RunningWorker) -> None:
    api = steam_worker.api
    await api.post("/server", spec("f", mode="immediate", check_interval=1, grace=0),
                   expect=201)
    await api.wait_for("f", state="running", installed_build=FIRST, timeout=20)
    emu.fail_updates(home(), APP)
    emu.publish(home(), APP, NEXT)
    error = f"Error! App '{APP}' state is 0x202 after update job."
    await api.wait_line("f", f"update failed: {error}; trying again after the next check",
                        timeout=30)
    s = await api.wait_for("f", state="running", timeout=20)
    assert s["installed_build"] == FIRST and s["update_available"] is True
    assert s["error"] is None
    emu.fail_updates(home(), APP, failing=False)
    s = await api.wait_for("f", state="running", installed_build=NEXT, timeout=30)
    assert s["update_available"] is False


async def test_the_builds_reach_the_host(host: RunningHost, hosted: Any, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    steamcmd = steamcmd_emulator(tmp_path, monkeypatch)
    w = await hosted("ws", steamcmd=str(steamcmd), install_timeout=10,
                     update_check_min_interval=0.5)
    body = spec("h", mode="notify", check_interval=1)
    body["worker_id"] = w.handle.link.worker_id
    await host.api.post("/server", body, expect=201)
    await host.api.wait_for("h", state="running", installed_build=FIRST, timeout=30)
    emu.publish(home(), APP, NEXT)
    s = await host.api.wait_for("h", update_available=True, timeout=30)
    assert s["latest_build"] == NEXT and s["installed_build"] == FIRST
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{host.url}/metrics")).text
    assert 'manman_server_update_available{server="h"} 1.0' in text
    # where a user looks: the CLI's list and show, the web console
    r = await manman(host, "servers")
    header, row = r.stdout.decode().splitlines()
    assert row[header.index("STATE"):].split()[:2] == ["running", "UPDATE"], row
    r = await manman(host, "server", "show", "h")
    shown = r.stdout.decode()
    assert f"installed_build:      {FIRST}" in shown and "auto_update:          notify" in shown
    assert f"update_available:     yes: build {NEXT} (installed: {FIRST})" in shown
    if os.path.exists(CHROMIUM):
        out: dict[str, Any] = {}
        await trio.to_thread.run_sync(in_browser, host.url, out, web_update_shown)
        assert out["flag"] == f"update available: build {NEXT}"
        assert out["build"] == f"{FIRST} — update available: build {NEXT}"
        assert not out["problems"], out["problems"]


def web_update_shown(page: Any, out: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    sign_in(page)
    row = open_server(page, "h")
    flag = row.locator(".update-flag")
    expect(flag).to_be_visible()
    out["flag"] = flag.get_attribute("title")
    expect(page.locator("#detail-build-row")).to_be_visible()
    out["build"] = page.locator("#detail-build").text_content()


JOIN = r"^Player (?P<player>\w+) joined$"
LEAVE = r"^Player (?P<player>\w+) left$"


async def wait_players(api: Client, server: str, players: int, timeout: float = 10
                       ) -> dict[str, Any]:
    """Poll until the server's query counts `players`."""
    last: dict[str, Any] = {}
    with trio.move_on_after(timeout):
        while True:
            last = await api.get(f"/server/{server}")
            if (last.get("query") or {}).get("players") == players:
                return last
            await trio.sleep(0.05)
    raise AssertionError(f"{server} never counted {players} players; last: {last}")


async def unchanged(api: Client, server: str, seconds: float, **same: Any) -> None:
    """For `seconds` (some player polls and check ticks of the updater), every look at the
    server still shows `same` and no update began."""
    end = trio.current_time() + seconds
    while trio.current_time() < end:
        s = await api.get(f"/server/{server}")
        assert {k: s[k] for k in same} == same, s
        await trio.sleep(0.1)
    assert "updating: stop, update, start" not in await notes(api, server)


async def test_when_empty_waits_for_the_last_player_to_leave_by_query(
        steam_worker: RunningWorker) -> None:
    api = steam_worker.api
    body = spec("we", mode="when_empty", check_interval=1)
    body["health"] = {"query": {"type": "console"}}
    body["player_patterns"] = {"join": [JOIN], "leave": [LEAVE]}
    await api.post("/server", body, expect=201)
    s = await api.wait_for("we", state="running", installed_build=FIRST, timeout=20)
    pid = s["pid"]
    assert s["query"]["players"] == 0  # counted from the console: nobody yet
    await api.post("/server/we/command", {"data": "echo Player alice joined"}, expect=202)
    await wait_players(api, "we", 1)
    emu.publish(home(), APP, NEXT)
    # a check found the build and the machine saw the player: it waits
    await api.wait_line("we", "update waits for the server to empty (players: 1)", timeout=20)
    s = await api.wait_for("we", latest_build=NEXT, update_available=True, timeout=5)
    assert s["installed_build"] == FIRST and s["pid"] == pid
    await unchanged(api, "we", 3.5, state="running", pid=pid, installed_build=FIRST)
    await api.post("/server/we/command", {"data": "echo Player alice left"}, expect=202)
    gone = await api.wait_line("we", "Player alice left", timeout=10)
    s = await api.wait_for("we", state="running", installed_build=NEXT, timeout=30)
    assert s["pid"] != pid and s["update_available"] is False and s["latest_build"] == NEXT
    page = await api.get("/server/we/log?since=0&limit=10000")
    after = [ln["text"] for ln in page["lines"] if ln["seq"] > gone["seq"]]
    steps = ["updating: stop, update, start", "stopping", f"updated to build {NEXT}",
             "Server ready"]
    at = [after.index(t) for t in steps]
    assert at == sorted(at), after


async def test_when_empty_with_no_query_waits_until_the_server_stops(
        steam_worker: RunningWorker) -> None:
    api = steam_worker.api
    await api.post("/server", spec("wu", mode="when_empty", check_interval=1), expect=201)
    s = await api.wait_for("wu", state="running", installed_build=FIRST, timeout=20)
    pid = s["pid"]
    assert s["query"] is None
    emu.publish(home(), APP, NEXT)
    await api.wait_line("wu", "update waits for the server to empty (players: unknown)",
                        timeout=20)
    await api.wait_for("wu", latest_build=NEXT, update_available=True, timeout=5)
    await unchanged(api, "wu", 3.5, state="running", pid=pid, installed_build=FIRST)
    # stopped: no one to wait for, the update runs and the server stays stopped
    await api.request("POST", "/server/wu/shutdown", expect=202)
    s = await api.wait_for("wu", state="stopped", installed_build=NEXT, timeout=30)
    assert s["update_available"] is False
    assert f"updated to build {NEXT}" in await notes(api, "wu")
