"""The host API end to end: real PostgreSQL, real workers joined over HTTP, real games."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
from trio_websocket import open_websocket_url

from manman import aio
from tests.conftest import ADMIN, JOIN, RunningHost, fake_spec


async def wait_worker(host: RunningHost, worker_id: str, status: str, timeout: float = 10
                      ) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while (w := await host.api.get(f"/worker/{worker_id}"))["status"] != status:
            await trio.sleep(0.05)
    return w


async def test_two_workers_servers_commands_update_delete(host: RunningHost, hosted: Any
                                                          ) -> None:
    w1 = await hosted("w1")
    w2 = await hosted("w2")
    api = host.api
    workers = (await api.get("/worker"))["workers"]
    assert {w["name"] for w in workers} == {"w1", "w2"}
    assert all(w["status"] == "alive" and w["api_url"].startswith("http://127.0.0.1:")
               for w in workers)
    id1, id2 = w1.handle.link.worker_id, w2.handle.link.worker_id
    s1 = await api.post("/server", fake_spec("one", worker_id=id1, desired_state="running"),
                        expect=201)
    s2 = await api.post("/server", fake_spec("two", worker_id=id2), expect=201)
    assert s1["generation"] == 1 and s1["worker_id"] == id1
    # pushed at once: the worker has it before any heartbeat
    assert "one" in [a.spec.name for a in w1.agent.actors.values()]
    await api.wait_for("one", state="running")
    await api.wait_for("two", state="stopped")
    assert [s["name"] for s in (await api.get(f"/server?worker_id={id2}"))["servers"]] == \
        ["two"]
    assert [s["name"] for s in (await api.get("/server?state=running"))["servers"]] == ["one"]
    r = await api.request("POST", "/server", json=fake_spec("one", worker_id=id2))
    assert r.status_code == 409
    # commands
    r = await api.post("/server/two/command", {"type": "start"}, expect=202)
    assert r["delivered"] is True
    await api.wait_for("two", state="running")
    r = await api.post("/server/two/command", {"type": "command", "data": "say via host"},
                       expect=202)
    await api.wait_line("two", "said: via host")
    pid = (await api.get("/server/two"))["pid"]
    await api.post("/server/two/command", {"type": "restart"}, expect=202)
    with trio.fail_after(10):
        while (s := await api.get("/server/two"))["pid"] in (pid, None) or \
                s["state"] != "running":
            await trio.sleep(0.05)
    await api.post("/server/two/command", {"type": "kill"}, expect=202)
    s = await api.wait_for("two", state="stopped")
    assert s["desired_state"] == "stopped"
    r = await api.request("POST", "/server/two/command", json={"type": "kill"})
    assert r.status_code == 409  # not running
    r = await api.request("POST", "/server/two/command", json={"type": "command", "data": "x"})
    assert r.status_code == 409
    h = await api.post("/server/one/command", {"type": "health"}, expect=202)
    assert h["result"]["process_alive"] is True
    # update: generation on the host, observed_generation once the worker applied it
    r = await api.request("PUT", "/server/one", json={"stop_timeout": 7}, expect=200)
    assert r.json()["generation"] == 2
    s = await api.wait_for("one", observed_generation=2)
    assert s["stop_timeout"] == 7 and w1.agent.get("one").spec.stop_timeout == 7
    # delete with purge: a running server stops gracefully, then goes from the worker with
    # its files (after the answer: 202); a stopped one goes at once (200)
    sdir = w1.agent.data_dir / "servers" / s1["id"]
    assert sdir.exists()
    r = await api.request("DELETE", "/server/one?purge=true", expect=202)
    assert r.json() == {"id": s1["id"], "deleted": False}
    assert (await api.request("GET", "/server/one")).status_code == 404
    with trio.fail_after(15):
        while sdir.exists() or s1["id"] in w1.agent.actors or s1["id"] in host.fleet.servers:
            await trio.sleep(0.05)
    s3 = await api.post("/server", fake_spec("three", worker_id=id1), expect=201)
    await api.wait_for("three", state="stopped")
    r = await api.request("DELETE", "/server/three", expect=200)
    assert r.json() == {"id": s3["id"], "deleted": True}
    # every accepted command was recorded
    await host.control.flush()
    rows = await host.control.store.fetch(
        "SELECT action, result, actor, source FROM audit WHERE server_id = $1 AND action <> "
        "'server.create' ORDER BY seq", s2["id"])
    assert [r["action"] for r in rows] == ["server.start", "server.command", "server.restart",
                                           "server.kill", "server.kill", "server.command"]
    assert rows[0]["result"] == "delivered" and rows[0]["actor"] == "admin"
    assert rows[0]["source"] == "127.0.0.1"


async def test_console_through_the_host_resume_without_loss(host: RunningHost, hosted: Any
                                                            ) -> None:
    w = await hosted("wc")
    api = host.api
    s = await api.post("/server", fake_spec("con", worker_id=w.handle.link.worker_id,
                                            desired_state="running"), expect=201)
    await api.wait_for("con", state="running")
    page = await api.get("/server/con/log?since=0")
    assert page["websocket_url"].startswith("ws://127.0.0.1:") and page["token"]
    # the short-lived token works on the worker directly
    async with open_websocket_url(page["websocket_url"] + f"?token={page['token']}") as ws:
        assert json.loads(await ws.get_message())["type"] == "hello"
    base = host.url.replace("http://", "ws://") + f"/server/{s['id']}/log/ws"
    seen: list[int] = []
    async with open_websocket_url(f"{base}?token={ADMIN}&since=0") as ws:
        hello = json.loads(await ws.get_message())
        assert hello["type"] == "hello" and hello["server_id"] == s["id"]
        await ws.send_message(json.dumps({"type": "command", "data": "flood 2000"}))
        with trio.fail_after(10):
            while not seen or seen[-1] < 1000:
                f = json.loads(await ws.get_message())
                if f["type"] == "lines":
                    seen.extend(ln["seq"] for ln in f["lines"])
    # the connection dropped after seq 1000 was shown; resume from the next seq
    seen = [q for q in seen if q <= 1000]
    async with open_websocket_url(f"{base}?token={ADMIN}&since={seen[-1] + 1}") as ws:
        json.loads(await ws.get_message())
        with trio.fail_after(10):
            while True:
                f = json.loads(await ws.get_message())
                if f["type"] == "lines":
                    seen.extend(ln["seq"] for ln in f["lines"])
                    if any(ln["text"] == "flood 1999" for ln in f["lines"]):
                        break
        await ws.send_message(json.dumps({"type": "ping"}))
        with trio.fail_after(5):
            while json.loads(await ws.get_message())["type"] != "pong":
                pass
    assert seen == list(range(seen[0], seen[0] + len(seen)))
    # a read-only console token cannot send commands through the proxy
    ro = await api.get("/server/con/log?limit=1",
                       headers={"Authorization": f"Bearer {page['token']}"})
    assert ro["token"]


async def test_auth_on_the_host(host: RunningHost, hosted: Any) -> None:
    w1 = await hosted("a1")
    w2 = await hosted("a2")
    api = host.api
    s2 = await api.post("/server", fake_spec("b", worker_id=w2.handle.link.worker_id),
                        expect=201)
    t1 = w1.handle.secrets.admin_secret
    for token, status in (("nope", 401), ("x.y.z", 401), (JOIN, 403), (t1, 403)):
        r = await api.http.get("/server", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == status, (token, r.text)
        assert r.json()["error"]["code"] in ("unauthorized", "forbidden")
    # worker 1 cannot report for worker 2's server, nor heartbeat as worker 2
    body = {"id": s2["id"], "state": "crashed"}
    r = await api.http.post(f"/server/{s2['id']}/health", json=body,
                            headers={"Authorization": f"Bearer {t1}"})
    assert r.status_code == 403
    r = await api.http.post(f"/worker/{w2.handle.link.worker_id}/health", json={},
                            headers={"Authorization": f"Bearer {t1}"})
    assert r.status_code == 403
    assert (await api.get("/server/b"))["state"] != "crashed"
    # the join token only joins
    r = await api.http.post("/worker", json={"name": "x"},
                            headers={"Authorization": f"Bearer {JOIN}"})
    assert r.status_code == 201 and r.json()["token"].startswith("mmw_")


def test_each_migration_has_a_version_of_its_own() -> None:
    from manman.host.store import migrations

    versions = [v for v, _, _ in migrations()]
    assert versions == list(range(1, len(versions) + 1)), [n for _, n, _ in migrations()]


async def test_two_hosts_migrate_one_database_at_once(tmp_path: Path, database_url: str,
                                                      bg: trio.Nursery) -> None:
    from manman.host.main import run_host
    from tests.conftest import host_config

    async with trio.open_nursery() as n:
        handles: list[Any] = []

        async def start(i: int) -> None:
            handles.append(await bg.start(run_host, host_config(tmp_path / f"h{i}",
                                                                database_url)))

        n.start_soon(start, 1)
        n.start_soon(start, 2)
    rows = await handles[0].control.store.fetch("SELECT version FROM schema_migrations")
    shipped = sorted(int(p.name[:3]) for p in
                     (Path(__file__).parent.parent / "manman/host/migrations").glob("*.sql"))
    assert sorted(r["version"] for r in rows) == shipped  # each once
    for h in handles:
        h.stop()
        await h.stopped.wait()
    assert aio is not None


async def test_freeze_unfreeze_and_retire_a_worker(host: RunningHost, hosted: Any) -> None:
    w = await hosted("fz")
    api = host.api
    wid = w.handle.link.worker_id
    await api.post("/server", fake_spec("f1", worker_id=wid, desired_state="running"),
                   expect=201)
    s = await api.wait_for("f1", state="running")
    r = await api.request("PUT", f"/worker/{wid}", json={"status": "frozen"}, expect=200)
    assert r.json()["status"] == "frozen" and w.agent.status == "frozen"
    r = await api.request("POST", "/server/f1/command", json={"type": "stop"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "frozen"
    r = await api.request("POST", "/server", json=fake_spec("f2", worker_id=wid))
    assert r.status_code == 409
    # console input still works on a frozen worker; the server keeps running
    await api.post("/server/f1/command", {"type": "command", "data": "say cold"}, expect=202)
    await api.wait_line("f1", "said: cold")
    r = await api.request("PUT", f"/worker/{wid}", json={"status": "alive"}, expect=200)
    assert w.agent.status == "alive"
    # retire: the worker stops its servers and exits; its later calls get 410
    r = await api.request("DELETE", f"/worker/{wid}", expect=200)
    assert r.json()["status"] == "shutdown"
    with trio.fail_after(15):
        await w.agent.stopped.wait()
    from manman.worker import procs

    assert not procs.is_running(s["pid"])
    token = host.handle.secrets.worker_token(wid, 1)
    r = await api.http.post(f"/worker/{wid}/health", json={},
                            headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 410
    assert (await api.get("/server/f1"))["state"] == "unknown"


async def test_generated_tokens_are_files_0600(tmp_path: Path, database_url: str,
                                               bg: trio.Nursery) -> None:
    import stat

    from manman.host.main import run_host
    from tests.conftest import host_config

    cfg = host_config(tmp_path, database_url, admin_token="", join_token="")
    handle = await bg.start(run_host, cfg)
    d = tmp_path / "host"
    for name in ("admin-token", "join-token", "host-secret"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
    admin = (d / "admin-token").read_text().strip()
    from tests.conftest import Client

    api = Client(handle.url, admin)
    assert (await api.get("/worker"))["workers"] == []
    await api.aclose()
    handle.stop()
    await handle.stopped.wait()
    handle2 = await bg.start(run_host, cfg)
    assert (d / "admin-token").read_text().strip() == admin  # reused
    handle2.stop()
    await handle2.stopped.wait()


async def test_restart_of_a_stopped_server_starts_it_once(host: RunningHost, hosted: Any
                                                          ) -> None:
    w = await hosted("rs")
    api = host.api
    # it ignores its stop command while it boots: a second restart would cost stop_timeout
    await api.post("/server", fake_spec("rs1", "--ignore-stop", stop_timeout=10,
                                        worker_id=w.handle.link.worker_id), expect=201)
    await api.wait_for("rs1", state="stopped")
    r = await api.post("/server/rs1/command", {"type": "restart"}, expect=202)
    assert r["delivered"] is True
    # one start takes well under 5 s; a second restart would wait out the 10 s stop_timeout
    s = await api.wait_for("rs1", state="running", timeout=5)
    # two heartbeats later any command still queued for the worker has been delivered
    link = w.handle.link
    sent = link.heartbeats_sent
    with trio.fail_after(5):
        while link.heartbeats_sent < sent + 2:
            await trio.sleep(0.05)
    assert (await api.get("/server/rs1"))["pid"] == s["pid"]
    page = await api.get("/server/rs1/log?since=0&limit=1000")
    assert sum(ln["text"].startswith("started (pid") for ln in page["lines"]) == 1
    # it ignores stop: killed, the worker's shutdown does not wait out stop_timeout
    await api.post("/server/rs1/command", {"type": "kill"}, expect=202)
    await api.wait_for("rs1", state="stopped")


async def test_a_delete_waiting_for_a_worker_that_is_retired_completes(
        host: RunningHost, hosted: Any) -> None:
    gone, other = await hosted("gone"), await hosted("other")
    api = host.api
    wid = gone.handle.link.worker_id
    await api.post("/server", fake_spec("keepname", worker_id=wid), expect=201)
    await api.wait_for("keepname", state="stopped")
    await gone.shutdown()  # the machine goes away
    await wait_worker(host, wid, "shutdown")
    r = await api.request("DELETE", "/server/keepname", expect=202)  # waits for the worker
    r = await api.request("POST", "/server", json=fake_spec(
        "keepname", worker_id=other.handle.link.worker_id))
    assert r.status_code == 409
    await api.request("DELETE", f"/worker/{wid}", expect=200)  # it will never come back
    await api.post("/server", fake_spec("keepname", worker_id=other.handle.link.worker_id),
                   expect=201)
    assert (await api.get(f"/worker/{wid}"))["servers"] == 0


async def test_an_admin_console_through_the_host_outlives_the_console_token_ttl(
        tmp_path: Path, database_url: str, bg: trio.Nursery) -> None:
    from manman.host.main import run_host
    from tests.conftest import host_config, start_hosted_worker

    handle = await bg.start(run_host, host_config(tmp_path, database_url,
                                                  console_token_ttl=1))
    host = RunningHost(handle)
    w = await start_hosted_worker(bg, tmp_path, host, "ttl")
    try:
        s = await host.api.post("/server", fake_spec("t", worker_id=w.handle.link.worker_id,
                                                     desired_state="running"), expect=201)
        await host.api.wait_for("t", state="running")
        base = host.url.replace("http://", "ws://") + f"/server/{s['id']}/log/ws"
        async with open_websocket_url(f"{base}?token={ADMIN}&tail=0") as ws:
            assert json.loads(await ws.get_message())["type"] == "hello"
            await trio.sleep(2.5)  # past console_token_ttl
            await ws.send_message(json.dumps({"type": "command", "data": "say late"}))
            with trio.fail_after(10):
                while True:
                    f = json.loads(await ws.get_message())
                    assert f["type"] != "error", f
                    if f["type"] == "lines" and any(ln["text"] == "said: late"
                                                    for ln in f["lines"]):
                        break
    finally:
        await w.shutdown()
        await host.api.aclose()
        handle.stop()
        await handle.stopped.wait()


async def test_concurrent_creates_and_renames_of_one_name_make_one(host: RunningHost,
                                                                    hosted: Any) -> None:
    w = await hosted("race")
    api, wid = host.api, w.handle.link.worker_id
    statuses: list[int] = []

    async def create(i: int) -> None:
        r = await api.request("POST", "/server", json=fake_spec("same", worker_id=wid))
        statuses.append(r.status_code)

    async with trio.open_nursery() as n:
        for i in range(8):
            n.start_soon(create, i)
    assert sorted(statuses) == [201] + [409] * 7
    others = [(await api.post("/server", fake_spec(f"o{i}", worker_id=wid), expect=201))["id"]
              for i in range(4)]
    statuses.clear()

    async def rename(sid: str) -> None:
        r = await api.request("PUT", f"/server/{sid}", json={"name": "renamed"})
        statuses.append(r.status_code)

    async with trio.open_nursery() as n:
        for sid in others:
            n.start_soon(rename, sid)
    assert sorted(statuses) == [200] + [409] * 3
    names = sorted(s["name"] for s in (await api.get("/server"))["servers"])
    assert names.count("same") == 1 and names.count("renamed") == 1
