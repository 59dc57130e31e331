"""The audit trail: every change through the host's API, in PostgreSQL, read back by
`GET /audit`; a real host, real PostgreSQL, a real worker and game."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import trio
from trio_websocket import open_websocket_url

from manman.host import audit
from manman.host.spool import Spool
from tests.conftest import ADMIN, JOIN, RunningHost, fake_spec


def test_actions_are_named_for_the_route() -> None:
    assert audit.action_of("POST", "/server") == "server.create"
    assert audit.action_of("PUT", "/server/{server_id}") == "server.update"
    assert audit.action_of("DELETE", "/server/{server_id}") == "server.delete"
    assert audit.action_of("POST", "/server/{server_id}/files/rename") == "server.files.rename"
    assert audit.action_of("PUT", "/server/{server_id}/files/content") == \
        "server.files.content.update"
    assert audit.action_of("POST", "/webhook/{id}/test") == "webhook.test"
    assert audit.action_of("POST", "/worker") == "worker.join"
    assert audit.action_of("DELETE", "/worker/{worker_id}") == "worker.retire"
    # a POST to a collection (it answers GET too) creates; to an action, is that action
    listed = frozenset({"/server/{server_id}/schedule"})
    assert audit.action_of("POST", "/server/{server_id}/schedule", listed) == \
        "server.schedule.create"
    assert audit.action_of("POST", "/server/{server_id}/schedule/{sid}/run", listed) == \
        "server.schedule.run"
    assert audit.action_of("DELETE", "/server/{server_id}/schedule/{sid}", listed) == \
        "server.schedule.delete"


def test_a_spooled_command_row_of_an_older_host_becomes_an_audit_row(tmp_path: Path) -> None:
    path = tmp_path / "pending-commands.jsonl"
    path.write_text('["command",["c1",1.5,"admin@10.0.0.1","s1","w1","command","say hi",'
                    'true,"delivered"]]\n')
    rows, _ = Spool(path).load()
    assert rows == [("c1", 1.5, "admin", "10.0.0.1", "server.command", "s1", "w1",
                     "/server/s1/command", None, "say hi", "delivered")]


async def test_every_change_is_recorded_and_read_back(host: RunningHost, hosted: Any) -> None:
    started = time.time()
    w = await hosted("wa")
    wid = w.handle.link.worker_id
    api = host.api
    s = await api.post("/server", fake_spec("au", worker_id=wid, desired_state="running"),
                       expect=201)
    await api.wait_for("au", state="running")
    await api.request("PUT", "/server/au", json={"stop_timeout": 7}, expect=200)
    await api.post("/server/au/command", {"type": "command", "data": "say from http"},
                   expect=202)
    await api.post("/server/au/command", {"type": "command", "data": "two\nlines"},
                   expect=422)  # refused, recorded all the same
    base = host.url.replace("http://", "ws://") + f"/server/{s['id']}/log/ws"
    async with open_websocket_url(f"{base}?token={ADMIN}&tail=0") as ws:
        assert json.loads(await ws.get_message())["type"] == "hello"
        await ws.send_message(json.dumps({"type": "ping"}))
        await ws.send_message(json.dumps({"type": "command", "data": "say from ws"}))
        await api.wait_line("au", "said: from ws")
    await api.request("PUT", f"/worker/{wid}", json={"name": "wa2"}, expect=200)
    # no valid token: not recorded (anybody could fill the table); a wrong kind of token is
    r = await api.http.post("/server", json={}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = await api.http.put("/server/au", json={}, headers={"Authorization": f"Bearer {JOIN}"})
    assert r.status_code == 403
    await api.request("DELETE", "/server/au", expect=None)
    # reads and the workers' heartbeats are not changes
    await api.get("/server")

    page = await api.get(f"/audit?since={started}")
    rows = list(reversed(page["entries"]))
    got = [(e["action"], e["status"], e["detail"]) for e in rows]
    assert got == [
        ("worker.join", 201, None), ("worker.register", 200, None),
        ("server.create", 201, None), ("server.update", 200, None),
        ("server.command", 202, "say from http"), ("server.command", 422, "two\nlines"),
        ("server.console", None, "say from ws"), ("worker.update", 200, None),
        ("server.update", 403, None), ("server.delete", rows[-1]["status"], None)], got
    assert rows[-1]["status"] in (200, 202)
    by = {e["action"]: e for e in rows}
    assert by["server.create"]["server_id"] == s["id"] and by["server.create"]["actor"] == "admin"
    assert by["server.create"]["source"] == "127.0.0.1"
    assert by["server.create"]["worker_id"] == wid and by["server.create"]["target"] == "/server"
    assert rows[4]["result"] == "delivered" and rows[4]["target"] == "/server/au/command"
    assert rows[5]["result"].startswith("invalid:")
    assert by["worker.join"]["actor"] == "join" and by["worker.register"]["actor"] == \
        f"worker:{wid}"
    assert by["server.console"]["actor"] == "admin" and by["server.console"]["server_id"] == \
        s["id"]
    assert rows[-2]["actor"] == "join"  # the 403: who tried

    # filters: a server (by id, the name is gone), an action prefix, a time window
    mine = (await api.get(f"/audit?server_id={s['id']}"))["entries"]
    assert {e["server_id"] for e in mine} == {s["id"]} and len(mine) == 7
    cmds = (await api.get("/audit?action=server.command"))["entries"]
    assert [e["detail"] for e in cmds] == ["two\nlines", "say from http"]
    workers = (await api.get("/audit?action=worker"))["entries"]
    assert [e["action"] for e in workers] == ["worker.update", "worker.register", "worker.join"]
    assert (await api.get("/audit?action=serv"))["entries"] == []  # whole words only
    later = rows[4]["at"]
    window = (await api.get(f"/audit?since={later}&until={rows[6]['at'] + 1e-6}"))["entries"]
    assert [e["action"] for e in window] == ["server.console", "server.command",
                                              "server.command"]
    # pages, newest first, with a cursor
    seen: list[str] = []
    cursor = ""
    while True:
        page = await api.get(f"/audit?since={started}&limit=3{cursor}")
        seen.extend(e["id"] for e in page["entries"])
        assert len(page["entries"]) <= 3
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == [e["id"] for e in reversed(rows)]
    for bad in ("limit=0", "limit=1001", "since=x", "cursor=-1", "cursor=abc", "action=a%00b",
                "server_id=0%00", "action=" + "x" * 201):
        r = await api.request("GET", f"/audit?{bad}")
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid", bad


async def test_rows_older_than_audit_days_are_pruned(host: RunningHost) -> None:
    store = host.control.store
    now = time.time()
    for n, age_days in enumerate((100, 91, 89, 1)):
        await store.execute("INSERT INTO audit (id, at, actor, action) VALUES ($1, $2, "
                            "'admin', 'server.create')", f"old{n}", now - age_days * 86400)
    assert await audit.prune(store, 90, now) == 2
    rows = await store.fetch("SELECT id FROM audit WHERE id LIKE 'old%' ORDER BY at")
    assert [r["id"] for r in rows] == ["old2", "old3"]
    with trio.fail_after(5):
        assert await audit.prune(store, 2, now) == 1
    rows = await store.fetch("SELECT id FROM audit WHERE id LIKE 'old%'")
    assert [r["id"] for r in rows] == ["old3"]


async def test_a_preset_secret_is_not_in_the_audit(host: RunningHost, hosted: Any) -> None:
    """A command quoting a preset's secret value: the console shows it masked, and so does
    the audit (from the command route and from the console proxy)."""
    import msgspec

    w = await hosted("ws")
    api = host.api
    s = await api.post("/server", fake_spec("sa", worker_id=w.handle.link.worker_id,
                                            desired_state="running"), expect=201)
    await api.wait_for("sa", state="running")
    rec = host.control.fleet.servers[s["id"]]
    rec.spec = msgspec.structs.replace(rec.spec, secret_values=["hunter2-rcon"])
    await api.post("/server/sa/command", {"type": "command", "data": "say hunter2-rcon"},
                   expect=202)
    base = host.url.replace("http://", "ws://") + f"/server/{s['id']}/log/ws"
    async with open_websocket_url(f"{base}?token={ADMIN}&tail=0") as ws:
        assert json.loads(await ws.get_message())["type"] == "hello"
        await ws.send_message(json.dumps({"type": "command", "data": "say ws hunter2-rcon"}))
        await api.wait_line("sa", "said: ws", prefix=True)
    with trio.fail_after(10):
        while len(rows := (await api.get(f"/audit?server_id={s['id']}&action=server"
                                         ))["entries"]) < 3:
            await trio.sleep(0.1)
    text = json.dumps(rows)
    assert "hunter2" not in text and "say ws" in text and "say " in text, text
