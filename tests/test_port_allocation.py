"""`auto` ports end to end: placed by the worker, shown as numbers, filled into args and env,
kept over a worker restart; a taken port or a full range is 409, on a standalone worker and
on the host, and leaves nothing behind."""

from __future__ import annotations

import json
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import (
    Client,
    ManmanProcess,
    RunningHost,
    RunningWorker,
    fake_spec,
    worker_config,
    write_config,
)
from tests.test_cli import manman, out


def free_block(n: int) -> int:
    """The first of `n` consecutive ports nothing uses on tcp nor udp now (above 20000)."""
    from manman.worker.listening import port_free

    base = random.randrange(20000, 40000)
    while not all(port_free(p, proto) for p in range(base, base + n)
                  for proto in ("tcp", "udp")):
        base += n
    return base


def game_spec(name: str, **fields: Any) -> dict[str, Any]:
    """The fake game announcing its port in its banner, listening on it over tcp."""
    return fake_spec(name, "--banner", "game on {{port.game}}", "--tcp-port", "{{port.game}}",
                     ports=[{"name": "game", "protocol": "tcp", "port": "auto"}], **fields)


def sh_spec(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "game_id": "exec:/bin/sh",
            "args": ["-c", 'echo "env port $GAME_PORT"; echo "Server ready"; read x'],
            "env": {"GAME_PORT": "{{port.game}}"}, "stop_timeout": 2,
            "ready_pattern": "^Server ready$",
            "ports": [{"name": "game", "protocol": "udp", "port": "auto"}], **fields}


@pytest.fixture
async def ranged(tmp_path: Path, bg: trio.Nursery) -> AsyncIterator[tuple[RunningWorker, int]]:
    """A standalone worker whose port_range is three ports nothing listens on."""
    from manman.worker.main import run_worker

    base = free_block(3)
    handle = await bg.start(run_worker, worker_config(tmp_path,
                                                      port_range=f"{base}-{base + 2}"))
    w = RunningWorker(handle, Client(handle.url, "test-worker-token"))
    yield w, base
    await w.shutdown()
    await w.api.aclose()


async def test_standalone_worker_places_fills_and_refuses(
        ranged: tuple[RunningWorker, int]) -> None:
    w, base = ranged
    api = w.api
    # something else listens on the first port of the range: skipped
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", base))
        other.listen(1)
        a = await api.post("/server", game_spec("a", desired_state="running"), expect=201)
    port = base + 1
    assert a["allocated_ports"] == {"game": port}
    assert a["ports"] == [{"port": port, "protocol": "tcp", "name": "game", "follows": None,
                           "offset": 1}]
    pid = (await api.wait_for("a", state="running"))["pid"]
    await api.wait_line("a", f"game on {port}")
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # args carried the number: the game listens on it
    # env too, on udp: the first udp port of the range is free
    b = await api.post("/server", sh_spec("b", desired_state="running"), expect=201)
    assert b["allocated_ports"] == {"game": base}
    await api.wait_line("b", f"env port {base}")

    before = await api.get("/server")
    # a fixed port another server holds: 409 naming it, nothing made
    r = await api.request("POST", "/server", json=fake_spec(
        "c", ports=[{"port": port, "protocol": "tcp"}]))
    assert r.status_code == 409, r.text
    assert r.json()["error"] == {"code": "port_taken",
                                 "message": f"port {port}/tcp is used by server a"}
    await api.get("/server/c", expect=404)
    # two more fit on tcp (b's udp port is apart), then the range is full: 409
    d = await api.post("/server", game_spec("d"), expect=201)
    assert d["allocated_ports"] == {"game": base}  # nothing listens there any more
    e = await api.post("/server", game_spec("e"), expect=201)
    assert e["allocated_ports"] == {"game": base + 2}
    r = await api.request("POST", "/server", json=game_spec("f"))
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_free_port", r.text
    await api.get("/server/f", expect=404)
    names = {s["name"] for s in (await api.get("/server"))["servers"]}
    assert names == {s["name"] for s in before["servers"]} | {"d", "e"}
    # a PUT onto another's port: 409, the server unchanged
    r = await api.request("PUT", "/server/d", json={"ports": [{"port": port}]})
    assert r.status_code == 409 and "server a" in r.json()["error"]["message"], r.text
    assert (await api.get("/server/d"))["ports"][0]["port"] == base
    # a PUT that keeps its auto port keeps the number
    d2 = await api.request("PUT", "/server/d", json={"stop_timeout": 3}, expect=200)
    assert d2.json()["allocated_ports"] == d["allocated_ports"]
    # the other servers undisturbed
    a2 = await api.get("/server/a")
    assert (a2["state"], a2["pid"], a2["allocated_ports"]) == ("running", pid, {"game": port})
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    # a deleted server's port is free again
    await api.request("DELETE", "/server/e", expect=200)
    await api.post("/server", game_spec("f"), expect=201)


async def test_allocation_survives_a_worker_process_restart(tmp_path: Path,
                                                            bg: trio.Nursery) -> None:
    base = free_block(10)
    token = "ports-restart-token"
    cfg = write_config(tmp_path / "worker.toml", f"""
[worker]
host_url = ""
listen = "127.0.0.1:0"
data_dir = "{tmp_path / 'data'}"
api_token = "{token}"
port_range = "{base}-{base + 9}"
""")
    first = ManmanProcess(["worker", "--config", str(cfg)])
    second = ManmanProcess(["worker", "--config", str(cfg)])
    try:
        api = Client(await first.start(bg), token)
        # idle first: it takes base; the running one base + 1
        idle = await api.post("/server", sh_spec("idle"), expect=201)
        live = await api.post("/server", game_spec("live", desired_state="running"),
                              expect=201)
        assert idle["allocated_ports"] == {"game": base}
        assert live["allocated_ports"] == {"game": base}  # tcp: apart from idle's udp
        await api.wait_line("live", f"game on {base}")
        await api.post("/shutdown", expect=202)
        assert await first.wait() == 0
        await api.aclose()

        api = Client(await second.start(bg), token)
        live2 = await api.wait_for("live", state="running")
        assert live2["allocated_ports"] == {"game": base}
        assert (await api.get("/server/idle"))["allocated_ports"] == {"game": base}
        page = await api.get("/server/live/log?since=0&limit=1000")
        assert [ln["text"] for ln in page["lines"]].count(f"game on {base}") == 2
        await api.post("/shutdown", expect=202)
        assert await second.wait() == 0
        await api.aclose()
    finally:
        first.stop()
        second.stop()


async def test_host_refuses_taken_ports_and_a_full_range(host: RunningHost,
                                                         hosted: Any) -> None:
    base = free_block(2)
    w = await hosted("pw", port_range=f"{base}-{base + 1}")
    wid = w.handle.link.worker_id
    api = host.api
    with trio.fail_after(10):
        while host.fleet.workers[wid].capacity.get("port_range") != f"{base}-{base + 1}":
            await trio.sleep(0.02)
    # through the CLI's create from a JSON file
    path = Path(w.agent.data_dir).parent / "ha.json"
    path.write_text(json.dumps(game_spec("ha", worker_id=wid, desired_state="running")))
    r = await manman(host, "server", "create", "--file", str(path))
    assert r.returncode == 0, r.stderr
    a = await api.wait_for("ha", state="running", timeout=20)
    assert a["allocated_ports"] == {"game": base}
    assert a["ports"][0]["port"] == base
    await api.wait_line("ha", f"game on {base}")
    r = await manman(host, "server", "show", "ha", "--json")
    assert json.loads(out(r))["ports"][0]["port"] == base
    # the worker's own answer agrees
    assert (await w.api.get(f"/server/{a['id']}"))["allocated_ports"] == {"game": base}

    before = await api.get("/server")
    r = await api.request("POST", "/server", json=fake_spec(
        "hb", worker_id=wid, ports=[{"port": base, "protocol": "tcp"}]))
    assert r.status_code == 409, r.text
    assert r.json()["error"] == {"code": "port_taken",
                                 "message": f"port {base}/tcp is used by server ha"}
    await api.get("/server/hb", expect=404)
    # the same number on udp is another port
    await api.post("/server", fake_spec("hc", worker_id=wid,
                                        ports=[{"port": base, "protocol": "udp"}]), expect=201)
    # one tcp port left: taken by a server the worker has not placed yet, then none
    await api.post("/server", game_spec("hd", worker_id=wid), expect=201)
    r = await api.request("POST", "/server", json=game_spec("he", worker_id=wid))
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_free_port", r.text
    await api.get("/server/he", expect=404)
    d = await api.wait_for("hd", allocated_ports={"game": base + 1})
    assert d["ports"][0]["port"] == base + 1
    # PUT onto another's port: 409, unchanged
    r = await api.request("PUT", "/server/hc", json={"ports": [{"port": base + 1,
                                                               "protocol": "tcp"}]})
    assert r.status_code == 409 and "server hd" in r.json()["error"]["message"], r.text
    assert (await api.get("/server/hc"))["generation"] == 1
    names = sorted(s["name"] for s in (await api.get("/server"))["servers"])
    assert names == sorted([s["name"] for s in before["servers"]] + ["hc", "hd"])
    a2 = await api.get("/server/ha")
    assert a2["state"] == "running" and a2["pid"] == a["pid"]
    assert a2["allocated_ports"] == {"game": base}


async def test_host_concurrent_creates_never_share_a_port(host: RunningHost,
                                                          hosted: Any) -> None:
    """Two creates at once (each waits on PostgreSQL between its check and its save): one
    gets the port, the other 409 — a fixed port and the range's last auto one alike."""
    base = free_block(1)
    w = await hosted("pc", port_range=f"{base}-{base}")
    wid = w.handle.link.worker_id
    api = host.api
    with trio.fail_after(10):
        while host.fleet.workers[wid].capacity.get("port_range") != f"{base}-{base}":
            await trio.sleep(0.02)
    fixed = [{"port": free_block(1), "protocol": "tcp"}]
    for kind in ("fixed", "auto"):
        codes: list[int] = []

        async def create(name: str, kind: str = kind, codes: list[int] = codes) -> None:
            spec = fake_spec(name, worker_id=wid, ports=fixed) if kind == "fixed" \
                else game_spec(name, worker_id=wid)
            r = await api.request("POST", "/server", json=spec)
            codes.append(r.status_code)

        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                for i in range(2):
                    n.start_soon(create, f"{kind}{i}")
        assert sorted(codes) == [201, 409], (kind, codes)


async def test_a_new_port_range_places_a_server_again_at_its_start(
        tmp_path: Path, bg: trio.Nursery) -> None:
    """A new port_range: a server's number is outside it, so its start places it again,
    around the ports of the others (loaded or not yet: the agent counts both)."""
    from manman.worker.main import run_worker

    old, new = free_block(2), free_block(2)
    first = await bg.start(run_worker, worker_config(tmp_path, port_range=f"{old}-{old + 1}"))
    api = Client(first.url, "test-worker-token")
    a = await api.post("/server", sh_spec("a", desired_state="running"), expect=201)
    assert a["allocated_ports"] == {"game": old}
    await api.wait_for("a", state="running")
    await api.post("/server", sh_spec("b", ports=[
        {"name": "game", "protocol": "udp", "port": new}]), expect=201)
    await RunningWorker(first, api).shutdown()
    await api.aclose()

    second = await bg.start(run_worker, worker_config(tmp_path, port_range=f"{new}-{new + 1}"))
    api = Client(second.url, "test-worker-token")
    try:
        a = await api.wait_for("a", state="running")
        assert a["allocated_ports"] == {"game": new + 1}  # b holds `new`
        await api.wait_line("a", f"env port {new + 1}")
    finally:
        await RunningWorker(second, api).shutdown()
        await api.aclose()
