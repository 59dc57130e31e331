"""health.query wired into the worker: real game processes (tests/fakegame.py), real UDP and
TCP responders started by the test (tests/responders.py), real workers and a real host."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import RunningHost, RunningWorker, fake_spec
from tests.responders import A2SResponder, SlpResponder, closed_port

FAST = {"initial_delay": 0, "interval": 0.1, "timeout": 0.3}


async def a2s(nursery: trio.Nursery, mode: str, **info: Any) -> A2SResponder:
    responder = A2SResponder(mode, **info)
    await nursery.start(responder.run)
    return responder


def a2s_spec(name: str, port: int, *args: str, failures: int = 3, **fields: Any
             ) -> dict[str, Any]:
    """The fake game with an A2S query on `port`, named through `{{port.query}}`."""
    fields.setdefault("ports", [{"name": "query", "port": port, "protocol": "udp"}])
    query = {"type": "a2s", "port": "{{port.query}}", "failures": failures, **FAST}
    return fake_spec(name, *args, health={"query": query}, desired_state="running", **fields)


async def wait_query(api: Any, server: str, timeout: float = 10, **want: Any
                     ) -> dict[str, Any]:
    """Poll until the server's `query` has every field in `want`."""
    last: dict[str, Any] = {}
    with trio.move_on_after(timeout):
        while True:
            last = await api.get(f"/server/{server}")
            q = last.get("query") or {}
            if all(q.get(k) == v for k, v in want.items()):
                return last
            await trio.sleep(0.05)
    raise AssertionError(f"{server}: query never had {want}; last: {last}")


def stored_status(worker: RunningWorker, server_id: str) -> dict[str, Any]:
    """The status the worker last wrote to its SQLite store."""
    with sqlite3.connect(worker.agent.data_dir / "worker.sqlite3") as db:
        (raw,) = db.execute("SELECT status FROM servers WHERE id = ?", (server_id,)).fetchone()
    status: dict[str, Any] = json.loads(raw)
    return status


async def test_a2s_with_the_challenge_players_in_status(worker: RunningWorker,
                                                        nursery: trio.Nursery) -> None:
    game = await a2s(nursery, "challenge", players=3, max_players=24, map_name="de_dust2")
    api = worker.api
    s = await api.post("/server", a2s_spec("cs", game.port), expect=201)
    s = await wait_query(api, "cs", ok=True, players=3, max_players=24, map="de_dust2",
                         version="1.38.7.9")
    assert s["state"] == "running" and s["query"]["error"] is None
    assert s["query"]["latency_ms"] >= 0 and s["query"]["checked_at"] > 0
    assert "name" not in s["query"]  # the server's own name is not part of status
    # the challenge was answered: the bare request, then one carrying the 4 bytes
    assert game.requests[1].endswith(b"\x11\x22\x33\x44")
    # the worker's metrics
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{worker.url}/metrics")).text
    assert 'manman_server_players{server="cs"} 3.0' in text
    # probes do not write the store: the answer changes, the stored status does not
    await trio.sleep(0.3)
    before = stored_status(worker, s["id"])
    game.info["players"] = 7
    await wait_query(api, "cs", players=7)
    await trio.sleep(0.3)
    assert stored_status(worker, s["id"]) == before
    # a stop ends the query: nobody is on a stopped server
    await api.post("/server/cs/shutdown", expect=202)
    s = await api.wait_for("cs", state="stopped")
    assert s["query"] is None


async def test_a2s_without_the_challenge(worker: RunningWorker, nursery: trio.Nursery) -> None:
    game = await a2s(nursery, "plain", players=0, max_players=10)
    await worker.api.post("/server", a2s_spec("plain", game.port), expect=201)
    await wait_query(worker.api, "plain", ok=True, players=0, max_players=10)
    assert set(game.requests) == {game.requests[0]}  # never a challenge


async def test_a_server_that_stops_answering_crashes(worker: RunningWorker,
                                                     nursery: trio.Nursery) -> None:
    game = await a2s(nursery, "challenge")
    api = worker.api
    # a long backoff keeps it `crashed` long enough to see
    await api.post("/server", a2s_spec("quiet", game.port, failures=3,
                                       restart={"backoff_initial": 60}), expect=201)
    s = await wait_query(api, "quiet", ok=True)
    pid = s["pid"]
    game.answering = False
    s = await api.wait_for("quiet", state="crashed")
    reason = "health check failed: a2s query did not answer (3 probes): no A2S reply within 0.3s"
    assert s["error"] == reason and s["pid"] is None and s["query"] is None
    await api.wait_line("quiet", reason)
    assert s["exit_code"] is not None and pid


@pytest.mark.parametrize("mode", ["truncated", "wrong-header", "oversized"])
async def test_bad_answers_are_failed_probes_not_a_crash(worker: RunningWorker,
                                                         nursery: trio.Nursery,
                                                         mode: str) -> None:
    game = await a2s(nursery, mode)
    api = worker.api
    await api.post("/server", a2s_spec("bad", game.port, failures=1000), expect=201)
    s = await wait_query(api, "bad", ok=False)
    assert s["state"] == "running"  # the ready line made it ready; the query fails
    error = s["query"]["error"]
    assert {"truncated": "truncated", "wrong-header": "wrong header",
            "oversized": "oversized reply"}[mode] in error
    await trio.sleep(0.5)  # many more bad answers: the worker and the server stay up
    s = await api.get("/server/bad")
    assert s["state"] == "running" and s["restarts"] == 0
    assert (await api.get("/status"))["status"] == "alive"


async def test_minecraft_server_list_ping(worker: RunningWorker, nursery: trio.Nursery) -> None:
    mc = SlpResponder("ok")
    port = await nursery.start(mc.run)
    spec = fake_spec("mc", desired_state="running",
                     health={"query": {"type": "minecraft", "port": port, **FAST}})
    await worker.api.post("/server", spec, expect=201)
    await wait_query(worker.api, "mc", ok=True, players=5, max_players=20, version="1.21.4")
    # the handshake named the port it asked
    assert mc.handshakes[0][2] == port


async def test_ready_by_query_when_the_ready_line_never_prints(worker: RunningWorker,
                                                               nursery: trio.Nursery) -> None:
    game = await a2s(nursery, "challenge")
    api = worker.api
    game.answering = False  # the game is still loading
    await api.post("/server", a2s_spec("slow", game.port, "--no-ready"), expect=201)
    s = await api.wait_for("slow", state="starting")
    await trio.sleep(0.5)
    s = await api.get("/server/slow")
    assert s["state"] == "starting" and s["ready"] is False and s["query"]["ok"] is False
    game.answering = True
    s = await api.wait_for("slow", state="running")
    assert s["ready"] is True
    await api.wait_line("slow", "ready: the game answered its a2s query; its ready line was "
                                "not seen")


async def test_query_and_no_ready_pattern_ready_on_first_answer(worker: RunningWorker,
                                                                nursery: trio.Nursery) -> None:
    game = await a2s(nursery, "plain")
    game.answering = False
    api = worker.api
    await api.post("/server", a2s_spec("noline", game.port, ready_pattern=None), expect=201)
    await api.wait_for("noline", state="starting")
    await trio.sleep(0.4)
    assert (await api.get("/server/noline"))["state"] == "starting"
    game.answering = True
    await api.wait_for("noline", state="running")
    await api.wait_line("noline", "ready: the game answered its a2s query")


async def test_an_unplaced_or_closed_query_port_fails_the_probe(worker: RunningWorker) -> None:
    spec = fake_spec("closed", desired_state="running",
                     health={"query": {"type": "tcp", "port": closed_port(), **FAST,
                                       "failures": 1000}})
    await worker.api.post("/server", spec, expect=201)
    s = await wait_query(worker.api, "closed", ok=False)
    assert s["query"]["error"].startswith("tcp port ")


async def test_players_from_console_lines(worker: RunningWorker) -> None:
    api = worker.api
    patterns = {"join": [r"^(?P<player>\w+) joined the game$"],
                "leave": [r"^(?P<player>\w+) left the game$"]}
    await api.post("/server", fake_spec("lines", desired_state="running",
                                        player_patterns=patterns,
                                        health={"query": {"type": "console"}}), expect=201)
    await api.wait_for("lines", state="running")
    await wait_query(api, "lines", ok=True, players=0)
    for line in ("Alex joined the game", "Steve joined the game", "Alex joined the game",
                 "Ghost left the game", "Steve left the game", "Bob joined the game"):
        await api.post("/server/lines/command", {"data": f"echo {line}"}, expect=202)
    await wait_query(api, "lines", players=2)
    # a restart starts the count again
    await api.post("/server/lines/restart", expect=202)
    await api.wait_line("lines", "stopping")
    await wait_query(api, "lines", players=0)


async def test_the_host_shows_the_query_and_the_metric(host: RunningHost, hosted: Any,
                                                       nursery: trio.Nursery,
                                                       tmp_path: Path) -> None:
    game = await a2s(nursery, "challenge", players=4, max_players=16)
    w = await hosted("qw")
    spec = a2s_spec("hosted", game.port, worker_id=w.handle.link.worker_id)
    await host.api.post("/server", spec, expect=201)
    s = await wait_query(host.api, "hosted", ok=True, players=4, max_players=16)
    assert s["state"] == "running" and s["query"]["map"] == "de_dust2"
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{host.url}/metrics")).text
    assert 'manman_server_players{server="hosted"} 4.0' in text
    game.info["players"] = 9
    await wait_query(host.api, "hosted", players=9)
