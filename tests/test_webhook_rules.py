"""Which hooks get which events: a disabled hook gets nothing, a hook scoped to a server gets
none of another server's, the cap of 1,000 hooks, and `worker.expired` from a worker that
went silent. Real host, real PostgreSQL, a real worker and games, a real receiver."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import trio

from manman.host.webhooks.service import MAX_HOOKS
from tests.conftest import JOIN, Client, RunningHost, fake_spec, host_config
from tests.receiver import Receiver


async def receiver(bg: trio.Nursery) -> Receiver:
    r: Receiver = await bg.start(Receiver().serve)
    return r


async def until(what: Any, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not what():
            await trio.sleep(0.05)


def events_on(rx: Receiver, path: str) -> list[tuple[str, str]]:
    return [(b["event"], b["server"]["name"]) for b in
            (json.loads(r.body) for r in rx.on(path))]


async def test_disabled_hooks_get_nothing_and_scoped_ones_only_their_server(
        host: RunningHost, hosted: Any, bg: trio.Nursery) -> None:
    rx = await receiver(bg)
    w = await hosted("wr")
    api = host.api
    wid = w.handle.link.worker_id
    for name in ("one", "two"):
        await api.post("/server", fake_spec(name, worker_id=wid), expect=201)
        await api.wait_for(name, state="stopped")
    wanted = ["server.ready", "server.stopped"]
    await api.post("/webhook", {"url": rx.url("/all"), "events": wanted}, expect=201)
    await api.post("/webhook", {"url": rx.url("/one"), "events": wanted, "server_id": "one"},
                   expect=201)
    off = await api.post("/webhook", {"url": rx.url("/off"), "events": wanted,
                                      "enabled": False}, expect=201)
    assert off["enabled"] is False
    for name in ("two", "one"):
        await api.post(f"/server/{name}/command", {"type": "start"}, expect=202)
        await api.wait_for(name, state="running", ready=True)
    await until(lambda: len(rx.on("/all")) >= 2 and rx.on("/one"))
    await trio.sleep(0.5)  # a delivery that should not be would have come with the others
    assert sorted(events_on(rx, "/all")) == [("server.ready", "one"), ("server.ready", "two")]
    assert events_on(rx, "/one") == [("server.ready", "one")]
    assert rx.on("/off") == []
    assert (await api.get(f"/webhook/{off['id']}/deliveries"))["deliveries"] == []
    # enabled again: it gets the next events (and only those)
    await api.request("PUT", f"/webhook/{off['id']}", 200, json={"enabled": True})
    await api.post("/server/two/command", {"type": "stop"}, expect=202)
    await api.wait_for("two", state="stopped")
    await until(lambda: rx.on("/off"))
    await trio.sleep(0.3)
    assert events_on(rx, "/off") == [("server.stopped", "two")]
    assert events_on(rx, "/one") == [("server.ready", "one")]  # two's stop is not its
    # disabled while its delivery waits for a retry: no further attempt
    host.handle.webhooks.dispatcher.policy.retry_initial = 0.3
    rx.override["/off"] = 503
    await api.post("/server/one/command", {"type": "stop"}, expect=202)
    await until(lambda: len(rx.on("/off")) == 2)
    await api.request("PUT", f"/webhook/{off['id']}", 200, json={"enabled": False})
    await trio.sleep(1.0)
    assert len(rx.on("/off")) == 2


async def test_at_most_1000_hooks(host: RunningHost, bg: trio.Nursery) -> None:
    rx = await receiver(bg)
    api = host.api
    first = await api.post("/webhook", {"url": rx.url("/ok"), "events": ["server.ready"]},
                           expect=201)
    # the rest straight into PostgreSQL (a POST each would take a while), then loaded as a
    # host start loads them
    now = time.time()
    await host.control.store.execute(
        "INSERT INTO webhooks (id, url, kind, events, server_id, secret, enabled, created_at, "
        "updated_at) SELECT 'bulk' || n, $1, 'generic', '[\"server.ready\"]'::jsonb, NULL, "
        "NULL, false, $2 + n, $2 + n FROM generate_series(1, $3) AS n", rx.url("/ok"), now,
        MAX_HOOKS - 1)
    await host.handle.webhooks.load()
    assert len((await api.get("/webhook"))["webhooks"]) == MAX_HOOKS
    r = await api.request("POST", "/webhook", json={"url": rx.url("/ok"),
                                                    "events": ["server.ready"]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "too_many", r.text
    assert "1000" in r.json()["error"]["message"]
    rows = await host.control.store.fetch("SELECT count(*) AS n FROM webhooks")
    assert rows[0]["n"] == MAX_HOOKS  # nothing written
    # one deleted: room for one more
    await api.request("DELETE", f"/webhook/{first['id']}", 200)
    await api.post("/webhook", {"url": rx.url("/ok"), "events": ["server.ready"]},
                   expect=201)
    r = await api.request("POST", "/webhook", json={"url": rx.url("/ok"),
                                                    "events": ["server.ready"]})
    assert r.status_code == 409


async def test_a_silent_worker_expires_and_a_hook_hears_it(
        tmp_path: Path, database_url: str, bg: trio.Nursery) -> None:
    """A worker that heartbeats once, then never again: `worker.unknown` after
    worker_timeout, then `worker.expired` after worker_expiry (it is retired)."""
    from manman.host.main import run_host

    rx = await receiver(bg)
    handle = await bg.start(run_host, host_config(tmp_path, database_url,
                                                  worker_timeout=0.5, worker_expiry=1.5))
    api = Client(handle.url, "test-admin-token")
    try:
        await api.post("/webhook", {"url": rx.url("/ok"),
                                    "events": ["worker.unknown", "worker.expired"]},
                       expect=201)
        creds = await api.post("/worker", {"name": "gone"}, expect=201,
                               headers={"Authorization": f"Bearer {JOIN}"})
        auth = {"Authorization": f"Bearer {creds['token']}"}
        wid = creds["worker_id"]
        await api.post(f"/worker/{wid}", {"name": "gone", "api_url": ""}, expect=200,
                       headers=auth)
        await api.post(f"/worker/{wid}/health", {"status": "alive", "servers": [],
                                                 "generations": {}}, expect=200, headers=auth)
        await until(lambda: len(rx.on("/ok")) >= 2, timeout=15)
        bodies = [json.loads(r.body) for r in rx.on("/ok")]
        assert [(b["event"], b["worker"]["id"], b["data"]["status"]) for b in bodies] == [
            ("worker.unknown", wid, "unknown"), ("worker.expired", wid, "expired")]
    finally:
        await api.aclose()
        handle.stop()
        with trio.fail_after(20):
            await handle.stopped.wait()
