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


async def test_backup_schedule_file_and_webhook_calls_name_what_they_changed(
        host: RunningHost, hosted: Any) -> None:
    """Each call through the host is a row with its action and a detail naming the file,
    the new id, the hook's URL (never its secret, credentials nor a file's content); and
    `manman audit --server S` shows only that server's rows."""
    from tests.test_cli import manman, out

    started = time.time()
    w = await hosted("wd")
    api = host.api
    wid = w.handle.link.worker_id
    s = await api.post("/server", fake_spec("fa", worker_id=wid), expect=201)
    other = await api.post("/server", fake_spec("fb", worker_id=wid), expect=201)
    await w.api.wait_for(s["id"])
    await api.post("/server/fa/files/mkdir", {"path": "mods"}, expect=200)
    await api.request("PUT", "/server/fa/files/content", 200,
                      params={"path": "mods/level.dat?x"}, content=b"CONTENT-NOT-LOGGED")
    await api.post("/server/fa/files/rename", {"from": "mods/level.dat?x", "to": "lvl.dat"},
                   expect=200)
    await api.post("/server/fa/files/delete", {"path": "../../etc/passwd"}, expect=422)
    await api.post("/server/fa/files/archive", {"to": "a.zip", "paths": [
        "lvl.dat", "mods", "lvl.dat", "mods", "x" * 500]}, expect=None)
    await api.post("/server/fa/files/delete", {"path": "lvl.dat"}, expect=200)
    b = await api.post("/server/fa/backup", {"name": "nightly"}, expect=202)
    with trio.fail_after(15):
        while (await api.get(f"/server/fa/backup/{b['id']}"))["state"] != "ok":
            await trio.sleep(0.05)
    await api.request("PUT", f"/server/fa/backup/{b['id']}", 200, json={"locked": True})
    await api.post(f"/server/fa/backup/{b['id']}/restore", {"truncate": True}, expect=200)
    await api.request("DELETE", f"/server/fa/backup/{b['id']}", 409)  # locked
    sch = await api.post("/server/fa/schedule", {"cron": "0 4 * * *", "tasks": [
        {"action": "notify", "payload": "hi"}]}, expect=201)
    run = await api.post(f"/server/fa/schedule/{sch['id']}/run", expect=202)
    await api.request("DELETE", f"/server/fa/schedule/{sch['id']}", 200)
    await api.post("/server/fb/files/mkdir", {"path": "elsewhere"}, expect=200)
    hook = await api.post("/webhook", {
        "url": "http://user:pw@127.0.0.1:9/hook/path?token=QUERY-SECRET#frag",
        "events": ["server.ready"], "secret": "SIGNING-SECRET"}, expect=201)
    await api.request("PUT", f"/webhook/{hook['id']}", 200, json={
        "url": "http://127.0.0.1:9/api/webhooks/1/DISCORD-TOKEN", "kind": "discord"})
    await api.request("DELETE", f"/webhook/{hook['id']}", 200)

    rows = list(reversed((await api.get(f"/audit?since={started}&limit=1000"))["entries"]))
    got = [(e["action"], e["status"], json.loads(e["detail"]) if e["detail"] else None)
           for e in rows if e["action"] not in ("worker.join", "worker.register",
                                                 "server.create")]
    assert got == [
        ("server.files.mkdir", 200, {"path": "mods"}),
        ("server.files.content.update", 200, {"path": "mods/level.dat?x", "bytes": 18}),
        ("server.files.rename", 200, {"from": "mods/level.dat?x", "to": "lvl.dat"}),
        ("server.files.delete", 422, {"path": "../../etc/passwd"}),
        ("server.files.archive", got[4][1], {"to": "a.zip", "paths": [
            "lvl.dat", "mods", "lvl.dat", "\u2026 2 more"]}),
        ("server.files.delete", 200, {"path": "lvl.dat"}),
        ("server.backup.create", 202, {"backup": b["id"], "name": "nightly", "locked": False}),
        ("server.backup.update", 200, {"backup": b["id"], "locked": True}),
        ("server.backup.restore", 200, {"backup": b["id"], "truncate": True}),
        ("server.backup.delete", 409, {"backup": b["id"]}),
        ("server.schedule.create", 201, {"schedule": sch["id"], "cron": "0 4 * * *"}),
        ("server.schedule.run", 202, {"schedule": sch["id"], "run": run["id"]}),
        ("server.schedule.delete", 200, {"schedule": sch["id"]}),
        ("server.files.mkdir", 200, {"path": "elsewhere"}),
        ("webhook.create", 201, {"webhook": hook["id"], "url": "http://127.0.0.1:9/hook/path",
                                 "kind": "generic"}),
        ("webhook.update", 200, {"webhook": hook["id"], "fields": ["url", "kind"],
                                 "url": "http://127.0.0.1:9/\u2026"}),
        ("webhook.delete", 200, None)], got
    text = json.dumps(rows)
    for secret in ("CONTENT-NOT-LOGGED", "QUERY-SECRET", "SIGNING-SECRET", "DISCORD-TOKEN",
                   "pw@", "frag"):
        assert secret not in text, secret
    assert all(len(e["detail"] or "") <= audit.MAX_TEXT for e in rows)
    by_server = {e["action"]: e["server_id"] for e in rows if e["action"].startswith("server.")}
    assert by_server["server.backup.create"] == s["id"]

    # the CLI: --server, by name, only its rows
    r = await manman(host, "audit", "--server", "fb", "--json")
    assert r.returncode == 0, r.stderr
    mine = json.loads(out(r))
    assert [(e["action"], e["server_id"]) for e in mine] == [
        ("server.files.mkdir", other["id"]), ("server.create", other["id"])]
    r = await manman(host, "audit", "--server", "fa")
    lines = out(r).splitlines()
    assert len(lines) == 1 + 14 and "server.files.mkdir" in lines[-2]
    assert '"path":"mods"' in lines[-2] and "elsewhere" not in out(r)


async def test_the_prune_loop_prunes_at_its_start_and_then_again(host: RunningHost) -> None:
    store = host.control.store
    now = time.time()

    async def old(name: str) -> None:
        await store.execute("INSERT INTO audit (id, at, actor, action) VALUES ($1, $2, "
                            "'admin', 'server.create')", name, now - 10 * 86400)

    async def left() -> list[str]:
        return [r["id"] for r in await store.fetch(
            "SELECT id FROM audit WHERE id LIKE 'loop%' ORDER BY id")]

    await old("loop-a")
    await store.execute("INSERT INTO audit (id, at, actor, action) VALUES ('loop-new', $1, "
                        "'admin', 'server.create')", now)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(audit.prune_loop, store, 5, 0.2)
        with trio.fail_after(5):
            while "loop-a" in await left():
                await trio.sleep(0.02)
        await old("loop-b")  # after the first round: the next one takes it
        with trio.fail_after(5):
            while "loop-b" in await left():
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert await left() == ["loop-new"]
    # 0 days: kept forever, the loop returns at once
    with trio.fail_after(1):
        await audit.prune_loop(store, 0, 0.01)
