"""Webhooks: the routes and their refusals, the payloads, delivery (time-outs, retries,
Retry-After, 5 in flight) against a real HTTP receiver on 127.0.0.1, events from a real
worker's reports, and deliveries a host restart resumes. Real host, real PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import msgspec
import trio

from manman import models
from manman.host.webhooks import events, payloads
from manman.host.webhooks.delivery import Policy, retry_after
from tests.conftest import RunningHost, fake_spec, host_config
from tests.receiver import Receiver

FAST = Policy(timeout=0.5, retry_initial=0.1, retry_max=0.4, give_up_after=3.0)


async def receiver(bg: trio.Nursery) -> Receiver:
    r: Receiver = await bg.start(Receiver().serve)
    return r


def obs(state: str, **kw: Any) -> models.ObservedServer:
    return models.ObservedServer(id="s", state=state, **kw)  # type: ignore[arg-type]


def test_events_derived_from_two_reports() -> None:
    def names(before: Any, after: Any) -> list[str]:
        return [e for e, _ in events.server_events(before, after)]

    assert names(None, obs("running", ready=True)) == []  # no transition known
    assert names(obs("starting"), obs("running", ready=True)) == ["server.ready"]
    assert names(obs("running"), obs("running", ready=True)) == ["server.ready"]
    assert names(obs("running", ready=True), obs("stopping")) == []
    assert names(obs("stopping"), obs("stopped", exit_code=0)) == ["server.stopped"]
    assert names(obs("running", ready=True), obs("crashed", exit_code=1)) == ["server.crashed"]
    # the crash reported, then the policy's restart: not a second crash
    assert names(obs("crashed"), obs("starting", restarts=1)) == []
    # a crash and its restart between two reports (or while the host was away)
    assert names(obs("running", ready=True, restarts=1),
                 obs("running", ready=True, restarts=3)) == ["server.crashed"]
    assert events.server_events(obs("running", restarts=1), obs("running", restarts=3))[0][1][
        "crashes"] == 2
    assert names(obs("crashed"), obs("failed", error="crash loop")) == ["server.failed"]
    assert names(obs("stopped"), obs("stopped", update_available=True)) == \
        ["server.update_available"]
    assert names(obs("running", installed_build="7"), obs("running", installed_build="8")) == \
        ["server.updated"]
    assert names(obs("running"), obs("running", installed_build="8")) == []  # first install
    got = events.backup_events({"b1": "running", "b2": "ok"}, [
        {"id": "b1", "state": "ok", "name": "n", "bytes": 5}, {"id": "b2", "state": "ok"},
        {"id": "b3", "state": "failed", "error": "disk full"}, {"id": "b4", "state": "running"}])
    assert [(e, d["id"]) for e, d in got] == [("backup.ok", "b1"), ("backup.failed", "b3")]
    f1 = models.ScheduleFailure(schedule_id="s1", run_id=1, reason="x", at=1.0)
    f2 = models.ScheduleFailure(schedule_id="s1", run_id=2, reason="x", at=2.0)
    assert names(obs("running"), obs("running", schedule_failure=f1)) == ["schedule.failed"]
    assert names(obs("running", schedule_failure=f1), obs("running", schedule_failure=f1)) == []
    assert names(obs("running", schedule_failure=f1), obs("running", schedule_failure=f2)) == \
        ["schedule.failed"]
    q = models.QueryStatus
    assert names(obs("running", query=q(ok=True, players=2)),
                 obs("running", query=q(ok=True, players=3))) == ["player.joined"]
    assert names(obs("running", query=q(ok=True, players=3)),
                 obs("running", query=q(ok=False, players=None))) == []
    assert events.worker_event("alive", "unknown") == "worker.unknown"
    assert events.worker_event("unknown", "alive") == "worker.alive"
    assert events.worker_event(None, "alive") is None
    assert events.worker_event("unknown", "expired") == "worker.expired"


def test_payloads_in_each_kind() -> None:
    ev = payloads.Event("e1", "server.crashed", 1700000000.5, {"exit_code": 1, "error": None},
                        server={"id": "s1", "name": "mc_@everyone", "worker_id": "w"})
    body, headers = payloads.render("generic", ev, "k")
    assert json.loads(body) == {"id": "e1", "event": "server.crashed", "at": 1700000000.5,
                                "data": {"exit_code": 1, "error": None},
                                "server": {"id": "s1", "name": "mc_@everyone",
                                           "worker_id": "w"}}
    assert headers["X-Manman-Signature"] == \
        "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert "X-Manman-Signature" not in payloads.render("generic", ev, None)[1]
    d = json.loads(payloads.render("discord", ev, None)[0])
    assert d["content"] == "server mc\\_@everyone crashed" and d["allowed_mentions"] == \
        {"parse": []}
    assert d["embeds"][0]["timestamp"] == "2023-11-14T22:13:20.500Z"
    assert d["embeds"][0]["fields"] == [{"name": "exit_code", "value": "1", "inline": True}]
    s = json.loads(payloads.render("slack", ev, None)[0])
    assert s["text"] == "server mc_@everyone crashed"
    assert s["blocks"][0]["text"]["type"] == "mrkdwn"
    joined = payloads.Event("e2", "player.joined", 0, {"player": "*alice*", "players": 3},
                            server={"id": "s1", "name": "mc1", "worker_id": "w"})
    assert json.loads(payloads.render("discord", joined, None)[0])["content"] == \
        "server mc1 \\*alice\\* joined"  # a name is text, not markdown
    assert json.loads(payloads.render("slack", joined, None)[0])["text"] == \
        "server mc1 *alice* joined"
    assert retry_after("3", 0) == 3.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert retry_after("soon", 0) is None


async def test_routes_and_the_urls_refused(host: RunningHost, bg: trio.Nursery) -> None:
    rx = await receiver(bg)
    api = host.api
    hook = await api.post("/webhook", {"url": rx.url("/ok"), "events": ["server.crashed"],
                                       "secret": "shh"}, expect=201)
    assert hook["kind"] == "generic" and hook["has_secret"] and hook["enabled"]
    assert "secret" not in hook and hook["server_id"] is None
    port = host.url.rsplit(":", 1)[1]
    for body, why in [
            ({"url": "http://169.254.169.254/latest/meta-data"}, "link-local"),
            ({"url": "http://[fe80::1]:8080/x"}, "link-local"),
            ({"url": "http://[::ffff:169.254.169.254]/"}, "link-local"),
            ({"url": host.url + "/server"}, "own API"),
            ({"url": f"http://localhost:{port}/worker"}, "own API"),
            ({"url": f"http://0.0.0.0:{port}/"}, "own API"),
            ({"url": "ftp://example.com/"}, "http"),
            ({"url": "http://no-such-host.invalid/"}, "does not resolve"),
            ({"events": ["server.exploded"]}, "unknown"),
            ({"kind": "discord", "secret": "x"}, "generic"),
            ({"server_id": "nope"}, "no server")]:
        r = await api.request("POST", "/webhook", json={"url": rx.url("/ok"),
                                                        "events": ["server.ready"], **body})
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] == "invalid" and why in r.json()["error"]["message"], \
            (body, r.text)
        r = await api.request("PUT", f"/webhook/{hook['id']}", json=body)
        assert r.status_code == 422, (body, r.text)
    assert len((await api.get("/webhook"))["webhooks"]) == 1
    # the test route: one signed attempt now
    result = await api.post(f"/webhook/{hook['id']}/test", expect=200)
    assert result["ok"] and result["status"] == 200 and result["latency_ms"] > 0
    got = rx.on("/ok")[0]
    assert json.loads(got.body)["event"] == "webhook.test"
    assert got.headers["x-manman-signature"] == \
        "sha256=" + hmac.new(b"shh", got.body, hashlib.sha256).hexdigest()
    changed = await api.request("PUT", f"/webhook/{hook['id']}",
                                json={"url": rx.url("/fail"), "kind": "slack",
                                      "events": ["worker.unknown", "server.ready"]}, expect=200)
    assert changed.json()["kind"] == "slack" and not changed.json()["has_secret"]
    assert changed.json()["events"] == ["server.ready", "worker.unknown"]
    result = await api.post(f"/webhook/{hook['id']}/test", expect=200)
    assert not result["ok"] and result["status"] == 500
    log = (await api.get(f"/webhook/{hook['id']}/deliveries"))["deliveries"]
    assert [a["status"] for a in log] == [500, 200]  # newest first
    # kept in PostgreSQL
    rows = await host.control.store.fetch("SELECT kind, events FROM webhooks")
    assert [(r["kind"], r["events"]) for r in rows] == [("slack",
                                                        ["server.ready", "worker.unknown"])]
    await api.request("DELETE", f"/webhook/{hook['id']}", expect=200)
    await api.request("GET", f"/webhook/{hook['id']}", expect=404)
    await api.request("POST", f"/webhook/{hook['id']}/test", expect=404)
    # and every change is in the audit
    actions = [e["action"] for e in (await api.get("/audit?action=webhook"))["entries"]]
    assert actions.count("webhook.create") == 12 and "webhook.delete" in actions
    assert actions.count("webhook.test") == 3  # the 404 too


async def test_delivery_retries_backoff_retry_after_timeouts_and_five_in_flight(
        host: RunningHost, bg: trio.Nursery) -> None:
    rx = await receiver(bg)
    hooks = host.handle.webhooks
    hooks.dispatcher.policy = FAST
    ids = {}
    for path in ("/fail", "/busy", "/hang", "/slow", "/gone"):
        ids[path] = (await host.api.post("/webhook", {"url": rx.url(path),
                                                      "events": ["server.crashed"]},
                                         expect=201))["id"]
    started = time.monotonic()
    for n in range(12):
        hooks.dispatcher.emit("server.crashed", {"n": n},
                              server={"id": "s", "name": "x", "worker_id": "w"})
    with trio.fail_after(15):
        while len(rx.on("/gone")) < 12 or len(rx.on("/slow")) < 12 or \
                hooks.dispatcher.hooks[ids["/fail"]].pending or \
                hooks.dispatcher.hooks[ids["/hang"]].pending or \
                hooks.dispatcher.hooks[ids["/busy"]].pending or \
                hooks.dispatcher.hooks[ids["/slow"]].pending:
            await trio.sleep(0.05)
    took = time.monotonic() - started
    assert took < 8  # gave up after give_up_after (3 s), not a day

    async def log(path: str) -> list[dict[str, Any]]:
        return (await host.api.get(f"/webhook/{ids[path]}/deliveries"))["deliveries"]

    # 500: retried with a growing delay until out of time; the last shows no next attempt
    everything = await log("/fail")
    fails = [a for a in everything if a["event_id"] == everything[0]["event_id"]]
    assert len(fails) >= 4 and all(a["status"] == 500 for a in fails), everything
    assert fails[0]["next_attempt_at"] is None and fails[1]["next_attempt_at"] is not None
    gaps = [b["at"] - a["at"] for a, b in zip(reversed(fails), list(reversed(fails))[1:],
                                              strict=False)]
    assert gaps[0] < gaps[-1] + 0.05 and gaps[0] >= 0.08
    # 429 with Retry-After: 1: the retry waited a second, then got through
    busy = rx.on("/busy")
    assert rx.busy_seen >= 13
    first_429 = [a for a in await log("/busy") if a["status"] == 429]
    assert len(first_429) == 1 and first_429[0]["next_attempt_at"] - first_429[0]["at"] >= 0.99
    retried = [a for a in await log("/busy") if a["event_id"] == first_429[0]["event_id"]]
    assert [a["status"] for a in retried] == [200, 429]
    assert retried[0]["at"] - retried[1]["at"] >= 0.99 and busy
    # a receiver that never answers: the attempt times out (0.5 s), and is retried
    hangs = await log("/hang")
    assert hangs and all(a["status"] is None and "no answer within 0.5 s" in a["error"]
                         for a in hangs)
    assert all(a["latency_ms"] < 1500 for a in hangs)
    # 410: not retried
    assert [a["status"] for a in await log("/gone")] == [410] * 12
    assert len(rx.on("/gone")) == 12
    # twelve events, at most five attempts in flight to one hook
    assert len(rx.on("/slow")) == 12 and rx.max_in_flight["/slow"] == 5
    assert rx.max_in_flight["/hang"] == 5
    slow_at = sorted(r.at for r in rx.on("/slow"))
    assert slow_at[5] - slow_at[0] >= 0.25  # the sixth waited for one of the first five
    assert not [r for r in rx.on("/slow") if r.headers.get("x-manman-signature")]
    # the log in PostgreSQL: the same last attempts of each hook (at most 100)
    for _ in range(3):  # over 100 attempts of one hook: the oldest go
        for n in range(40):
            await hooks.dispatcher.attempt(hooks.dispatcher.hooks[ids["/gone"]],
                                           payloads.Event(f"x{n}", "server.crashed", 0, {}))
    await hooks.dispatcher.write_logs()
    for path, hook_id in ids.items():
        rows = await host.control.store.fetch(
            "SELECT attempt FROM webhook_deliveries WHERE hook_id = $1 ORDER BY seq DESC",
            hook_id)
        assert [r["attempt"] for r in rows] == await log(path), path
        assert len(rows) <= 100
    assert len(await log("/gone")) == 100
    # the outbox is empty once each is done or given up
    rows = await host.control.store.fetch("SELECT count(*) AS n FROM webhook_outbox")
    assert rows[0]["n"] == 0


async def test_events_from_a_worker_reach_a_hook(host: RunningHost, hosted: Any,
                                                 bg: trio.Nursery) -> None:
    rx = await receiver(bg)
    w = await hosted("we")
    api = host.api
    s = await api.post("/server", fake_spec("ev", worker_id=w.handle.link.worker_id),
                       expect=201)
    await api.wait_for("ev", state="stopped")
    await api.post("/webhook", {"url": rx.url("/ok"), "server_id": "ev", "secret": "k",
                                "events": ["server.ready", "server.stopped"]}, expect=201)
    await api.post("/webhook", {"url": rx.url("/other"), "server_id": "ev",
                                "events": ["server.crashed"]}, expect=201)
    await api.post("/server/ev/command", {"type": "start"}, expect=202)
    await api.wait_for("ev", state="running")
    await api.post("/server/ev/command", {"type": "stop"}, expect=202)
    await api.wait_for("ev", state="stopped")
    with trio.fail_after(10):
        while len(rx.on("/ok")) < 2:
            await trio.sleep(0.05)
    bodies = [json.loads(r.body) for r in rx.on("/ok")]
    assert [b["event"] for b in bodies] == ["server.ready", "server.stopped"]
    assert bodies[0]["server"] == {"id": s["id"], "name": "ev",
                                   "worker_id": w.handle.link.worker_id}
    assert all(r.headers["x-manman-signature"] == "sha256=" + hmac.new(
        b"k", r.body, hashlib.sha256).hexdigest() for r in rx.on("/ok"))
    assert rx.on("/other") == []
    # a backup that ends: the worker's backup report is the event's source
    await api.post("/webhook", {"url": rx.url("/backup"), "server_id": "ev",
                                "events": ["backup.ok", "backup.failed"]}, expect=201)
    b = await api.post("/server/ev/backup", {"name": "nightly"}, expect=202)
    with trio.fail_after(15):
        while not rx.on("/backup"):
            await trio.sleep(0.05)
    got = json.loads(rx.on("/backup")[0].body)
    assert got["event"] == "backup.ok" and got["data"]["id"] == b["id"]
    assert got["data"]["name"] == "nightly" and got["data"]["bytes"] > 0
    # a schedule's run that fails (a console command to a stopped server)
    await api.post("/webhook", {"url": rx.url("/sched"), "server_id": "ev",
                                "events": ["schedule.failed"]}, expect=201)
    await api.post("/server/ev/schedule", {"cron": "0 4 * * *", "tasks": [
        {"action": "command", "payload": "say nobody hears"}]}, expect=201)
    await api.post("/server/ev/schedule/s1/run", expect=202)
    with trio.fail_after(15):
        while not rx.on("/sched"):
            await trio.sleep(0.05)
    got = json.loads(rx.on("/sched")[0].body)
    assert got["event"] == "schedule.failed" and got["data"]["schedule_id"] == "s1"
    assert got["data"]["run_id"] == 1 and "task 1 (command)" in got["data"]["reason"]
    assert (await api.get("/server/ev"))["schedule_failure"]["run_id"] == 1


async def test_a_delivery_not_done_is_resumed_by_the_next_host(
        tmp_path: Path, database_url: str, bg: trio.Nursery) -> None:
    from manman.host.main import run_host
    from tests.conftest import ADMIN, Client

    rx = await receiver(bg)
    rx.override["/later"] = 503
    cfg = host_config(tmp_path, database_url, webhook_retry_initial=30.0)
    handle = await bg.start(run_host, cfg)
    api = Client(handle.url, ADMIN)
    try:
        await api.post("/webhook", {"url": rx.url("/later"), "events": ["worker.expired"]},
                       expect=201)
        handle.webhooks.dispatcher.emit("worker.expired", {"status": "expired"},
                                        worker={"id": "w1", "name": "old"})
        with trio.fail_after(5):
            while not rx.on("/later"):
                await trio.sleep(0.05)
        rows = await handle.control.store.fetch("SELECT hook_id FROM webhook_outbox")
        assert len(rows) == 1  # the retry waits 30 s: the host stops first
    finally:
        await api.aclose()
        handle.stop()
        with trio.fail_after(20):
            await handle.stopped.wait()
    rx.override["/later"] = 200
    again = await bg.start(run_host, cfg)
    try:
        with trio.fail_after(10):
            while len(rx.on("/later")) < 2:
                await trio.sleep(0.05)
        first, second = (json.loads(r.body) for r in rx.on("/later"))
        assert first == second and first["event"] == "worker.expired"
        # the deliveries' log, from PostgreSQL: the first host's attempt and this one's
        api = Client(again.url, ADMIN)
        hook_id = (await api.get("/webhook"))["webhooks"][0]["id"]
        with trio.fail_after(5):
            while len(log := (await api.get(f"/webhook/{hook_id}/deliveries"))[
                    "deliveries"]) < 2:
                await trio.sleep(0.05)
        assert [(a["status"], a["attempt"]) for a in log] == [(200, 1), (503, 1)]
        assert log[1]["next_attempt_at"] is not None
        await api.aclose()
        with trio.fail_after(5):
            while (await again.control.store.fetch(
                    "SELECT count(*) AS n FROM webhook_outbox"))[0]["n"]:
                await trio.sleep(0.05)
    finally:
        again.stop()
        with trio.fail_after(20):
            await again.stopped.wait()


async def test_a_crash_while_the_host_was_away_is_sent_by_the_next_host(
        tmp_path: Path, database_url: str, bg: trio.Nursery) -> None:
    """The worker records the crash when it happens and sends it to the next host: a crash
    the restart policy recovered from meanwhile is an event (tests/test_event_queue.py has
    the rest)."""
    import socket

    import httpx

    from manman.host.main import run_host
    from manman.worker.main import run_worker
    from tests.conftest import ADMIN, Client, hosted_worker_config

    rx = await receiver(bg)
    with socket.socket() as s:  # the next host must listen where the worker looks for it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = host_config(tmp_path, database_url, listen=f"127.0.0.1:{port}")
    handle = await bg.start(run_host, cfg)
    worker = await bg.start(run_worker, hosted_worker_config(tmp_path, handle.url, "wa"))
    again = None
    try:
        api = Client(handle.url, ADMIN)
        s = await api.post("/server", fake_spec("cr", worker_id=worker.link.worker_id,
                                                desired_state="running"), expect=201)
        await api.wait_for("cr", state="running")
        await api.post("/webhook", {"url": rx.url("/ok"), "events": ["server.crashed"]},
                       expect=201)
        await api.aclose()
        handle.stop()
        with trio.fail_after(20):
            await handle.stopped.wait()
        # the host is away: the game crashes, and the worker restarts it
        async with httpx.AsyncClient(base_url=worker.url, headers={
                "Authorization": f"Bearer {worker.secrets.admin_secret}"}) as wapi:
            r = await wapi.post(f"/server/{s['id']}/command", json={"data": "crash"})
            assert r.status_code in (200, 202), r.text
        actor = worker.agent.actors[s["id"]]
        with trio.fail_after(15):
            while not (actor.status.restarts == 1 and actor.status.state == "running"):
                await trio.sleep(0.05)
        assert rx.requests == []
        again = await bg.start(run_host, cfg)
        with trio.fail_after(10):
            while not rx.on("/ok"):
                await trio.sleep(0.05)
        body = json.loads(rx.on("/ok")[0].body)
        assert body["event"] == "server.crashed" and body["server"]["id"] == s["id"]
        # as it was at the crash: the policy's restart came after
        assert body["data"]["crashes"] == 1 and body["data"]["restarts"] == 0
        assert len(rx.on("/ok")) == 1
    finally:
        worker.agent.request_shutdown()
        with trio.fail_after(30):
            await worker.agent.stopped.wait()
        for h in (handle, again):
            if h is not None:
                h.stop()
                with trio.fail_after(20):
                    await h.stopped.wait()


async def test_worker_events_unknown_and_alive(host: RunningHost, bg: trio.Nursery) -> None:
    """A worker (its calls made here) that stops heartbeating for worker_timeout (1.5 s)
    is `worker.unknown`; heard from again, `worker.alive`."""
    from tests.conftest import JOIN

    rx = await receiver(bg)
    api = host.api
    await api.post("/webhook", {"url": rx.url("/ok"), "kind": "slack",
                                "events": ["worker.unknown", "worker.alive"]}, expect=201)
    creds = await api.post("/worker", {"name": "quiet"}, expect=201,
                           headers={"Authorization": f"Bearer {JOIN}"})
    auth = {"Authorization": f"Bearer {creds['token']}"}
    wid = creds["worker_id"]
    await api.post(f"/worker/{wid}", {"name": "quiet", "api_url": ""}, expect=200,
                   headers=auth)
    beat = {"status": "alive", "servers": [], "generations": {}}
    await api.post(f"/worker/{wid}/health", beat, expect=200, headers=auth)
    with trio.fail_after(10):
        while not rx.on("/ok"):
            await trio.sleep(0.05)
    await api.post(f"/worker/{wid}/health", beat, expect=200, headers=auth)
    with trio.fail_after(10):
        while len(rx.on("/ok")) < 2:
            await trio.sleep(0.05)
    texts = [json.loads(r.body)["text"] for r in rx.on("/ok")]
    assert texts == ["worker quiet misses its heartbeats", "worker quiet is back"]
    assert json.loads(rx.on("/ok")[0].body)["blocks"][1]["fields"][0]["text"] == \
        "*status*\nunknown"


async def test_an_endless_answer_is_not_read(host: RunningHost, bg: trio.Nursery) -> None:
    """A receiver answering 200 with a body that never ends: the attempt counts as
    delivered at once, and the host reads none of the body (it would hold it all)."""
    sent = 0

    async def endless(stream: trio.SocketStream) -> None:
        nonlocal sent
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            piece = b"%x\r\n%s\r\n" % (1 << 16, b"x" * (1 << 16))
            try:
                while True:
                    await stream.send_all(piece)
                    sent += 1 << 16
            except trio.BrokenResourceError:
                pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    bg.start_soon(trio.serve_listeners, endless, listeners)
    hooks = host.handle.webhooks
    hooks.dispatcher.policy = Policy(timeout=3.0)
    hook_id = (await host.api.post("/webhook", {"url": f"http://127.0.0.1:{port}/x",
                                                "events": ["server.crashed"]},
                                   expect=201))["id"]
    with trio.fail_after(10):
        attempt, retry = await hooks.dispatcher.attempt(
            hooks.dispatcher.hooks[hook_id], payloads.Event("e", "server.crashed", 0, {}))
    assert attempt.ok and attempt.status == 200 and retry is None, attempt
    assert attempt.latency_ms < 2000
    assert sent < 64 << 20  # socket buffers at most, not what the time-out allows


async def test_a_preset_secret_never_leaves_in_a_hook_body(host: RunningHost,
                                                           bg: trio.Nursery) -> None:
    """A failed server's error may quote its command line, and with it a preset's secret
    value: the API masks it (models.server_view), and so must what a hook sends out."""
    from manman.host.fleet import ServerRec

    rx = await receiver(bg)
    await host.api.post("/webhook", {"url": rx.url("/ok"), "events": ["server.failed",
                                                                      "server.crashed"]},
                        expect=201)
    spec = msgspec.convert(fake_spec("sec"), models.ServerSpec)
    spec = msgspec.structs.replace(spec, secret_values=["hunter2-rcon"])
    s = ServerRec("sid", "sec", "wid", spec, 1, 0.0, 0.0)
    error = "exec ./srv +rcon_password hunter2-rcon: exit 1"
    host.handle.webhooks.server_changed(s, obs("running"), obs("failed", error=error))
    host.handle.webhooks.server_changed(s, obs("running"), obs("crashed", error=error))
    with trio.fail_after(10):
        while len(rx.on("/ok")) < 2:
            await trio.sleep(0.05)
    for r in rx.on("/ok"):
        assert b"hunter2" not in r.body and b"rcon_password" in r.body, r.body


class _Rebinding(trio.abc.HostnameResolver):
    """DNS as a rebinding attacker runs it: `rebind.test` answers 127.0.0.1 to the first
    `honest` questions, then a link-local address; other names resolve as usual."""

    def __init__(self, honest: int) -> None:
        self.honest = honest
        self.asked = 0

    async def getaddrinfo(self, host: bytes | str | None, port: Any, family: int = 0,
                          type: int = 0, proto: int = 0, flags: int = 0) -> Any:
        import socket

        name = host.decode() if isinstance(host, bytes) else host
        if name not in ("rebind.test", "honest.test"):
            return await trio.to_thread.run_sync(socket.getaddrinfo, host, port, family,
                                                 type, proto, flags)
        ip = "127.0.0.1"
        if name == "rebind.test":
            self.asked += 1
            ip = "127.0.0.1" if self.asked <= self.honest else "169.254.169.254"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, int(port)))]

    async def getnameinfo(self, sockaddr: Any, flags: int) -> Any:
        raise OSError("not used")


async def test_a_name_rebound_after_the_check_is_not_connected_to(
        host: RunningHost, bg: trio.Nursery) -> None:
    """The check at create and before the attempt see 127.0.0.1; the name then answers a
    link-local address. The connection is refused before any socket is opened to it, and
    an honest name is connected to at the address its check saw."""
    import socket as stdlib_socket

    from trio._socket import _SocketType

    connects: list[Any] = []

    class Recording(_SocketType):
        async def connect(self, address: Any) -> None:
            connects.append(address)
            await super().connect(address)

    class Factory(trio.abc.SocketFactory):
        def socket(self, family: int | None = None, type: int | None = None,
                   proto: int | None = None) -> Any:
            return Recording(stdlib_socket.socket(family or stdlib_socket.AF_INET,
                                                  type or stdlib_socket.SOCK_STREAM,
                                                  proto or 0))

    rx = await receiver(bg)
    port = int(rx.url("/").rsplit(":", 1)[1].split("/")[0])
    resolver = _Rebinding(honest=2)  # the create's check and the attempt's check
    trio.socket.set_custom_hostname_resolver(resolver)
    trio.socket.set_custom_socket_factory(Factory())
    try:
        hooks = host.handle.webhooks
        hooks.dispatcher.policy = FAST
        bad = (await host.api.post("/webhook", {"url": f"http://rebind.test:{port}/bad",
                                                "events": ["server.crashed"]},
                                   expect=201))["id"]
        good = (await host.api.post("/webhook", {"url": f"http://honest.test:{port}/ok",
                                                 "events": ["server.crashed"]},
                                    expect=201))["id"]
        ev = payloads.Event("e", "server.crashed", 0, {})
        with trio.fail_after(10):
            attempt, _ = await hooks.dispatcher.attempt(hooks.dispatcher.hooks[bad], ev)
            ok, _ = await hooks.dispatcher.attempt(hooks.dispatcher.hooks[good], ev)
    finally:
        trio.socket.set_custom_hostname_resolver(None)
        trio.socket.set_custom_socket_factory(None)
    assert not attempt.ok and attempt.status is None
    assert "link-local" in (attempt.error or ""), attempt
    assert resolver.asked == 3  # the attempt's check, then the connection's own lookup
    assert not [a for a in connects if a[0] == "169.254.169.254"], connects
    assert not rx.on("/bad")
    assert ok.ok and len(rx.on("/ok")) == 1
    assert ("127.0.0.1", port) in [tuple(a[:2]) for a in connects]
