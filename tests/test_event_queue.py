"""The worker's durable queue of webhook events (issue 14): events recorded on the worker
while its host is away reach the hooks once the host is back, each once and in order; a
worker restart keeps them (SQLite); the host takes a seq once (a re-send is skipped); the
queue's bound drops the oldest and counts them; a worker that sends no events (an older
one) still has its events derived. Real host, real PostgreSQL, real workers and games."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from manman import models
from manman.worker import events as worker_events
from manman.worker.agent import WorkerAgent
from manman.worker.events import EventQueue
from manman.worker.store import WorkerStore
from tests.conftest import (
    ADMIN,
    JOIN,
    Client,
    RunningHost,
    fake_spec,
    host_config,
    hosted_worker_config,
    worker_config,
)
from tests.receiver import Receiver
from tests.test_pg_outage import OwnPostgres, db, own_pg, pg  # noqa: F401 (its fixtures)

PLAYERS = {"join": [r"^Player (?P<player>\w+) joined$"],
           "leave": [r"^Player (?P<player>\w+) left$"]}
WATCHED = ["server.crashed", "server.ready", "server.stopped", "player.joined", "player.left"]


def free_port() -> int:
    with socket.socket() as s:  # the next host must listen where the worker looks for it
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def received(rx: Receiver, path: str, n: int, timeout: float = 15) -> list[dict[str, Any]]:
    with trio.fail_after(timeout):
        while len(rx.on(path)) < n:
            await trio.sleep(0.05)
    return [json.loads(r.body) for r in rx.on(path)]


def seq_of(body: dict[str, Any]) -> int:
    return int(body["id"].rsplit("-", 1)[1])


async def stop(handle: Any) -> None:
    handle.stop()
    with trio.fail_after(20):
        await handle.stopped.wait()


async def wait_status(actor: Any, timeout: float = 15, **want: Any) -> None:
    with trio.fail_after(timeout):
        while any(getattr(actor.status, k) != v for k, v in want.items()):
            await trio.sleep(0.05)


async def settled(worker: Any) -> None:
    """The worker's events so far are the host's (none is left for a hook made later)."""
    with trio.fail_after(10):
        while worker.link.events.status().queued:
            await trio.sleep(0.05)


async def wait_players(actor: Any, n: int) -> None:
    with trio.fail_after(10):
        while actor.status.query is None or actor.status.query.players != n:
            await trio.sleep(0.05)


async def stop_worker(worker: Any) -> None:
    """A worker run in this process, stopped gracefully (its games' stops are events)."""
    if not worker.agent.stopped.is_set():
        worker.agent.request_shutdown()
        with trio.fail_after(30):
            await worker.agent.stopped.wait()


async def stop_all(worker: Any, *hosts: Any) -> None:
    await stop_worker(worker)
    for h in hosts:
        if h is not None and not h.stopped.is_set():
            await stop(h)


async def test_events_while_the_host_is_away_arrive_once_in_order(
        tmp_path: Path, database_url: str, bg: trio.Nursery) -> None:
    """The host stops; the game crashes and the worker restarts it; a player joins and
    leaves. The next host gets all of it from the worker: crashed, ready, joined, left."""
    from manman.host.main import run_host
    from manman.worker.main import run_worker

    rx: Receiver = await bg.start(Receiver().serve)
    cfg = host_config(tmp_path, database_url, listen=f"127.0.0.1:{free_port()}")
    host = await bg.start(run_host, cfg)
    worker = await bg.start(run_worker, hosted_worker_config(tmp_path, host.url, "wq"))
    again = None
    wapi = Client(worker.url, worker.secrets.admin_secret)
    try:
        api = Client(host.url, ADMIN)
        s = await api.post("/server", fake_spec(
            "q1", worker_id=worker.link.worker_id, desired_state="running",
            health={"query": {"type": "console"}}, player_patterns=PLAYERS), expect=201)
        await api.wait_for("q1", state="running", ready=True)
        await settled(worker)
        await api.post("/webhook", {"url": rx.url("/ok"), "events": WATCHED}, expect=201)
        await api.aclose()
        await stop(host)
        actor = worker.agent.actors[s["id"]]
        # the host is away: a crash the worker recovers from, a player who comes and goes
        await wapi.post(f"/server/{s['id']}/command", {"data": "crash"}, expect=202)
        await wait_status(actor, restarts=1, state="running", ready=True)
        await wait_players(actor, 0)
        await wapi.post(f"/server/{s['id']}/command", {"data": "echo Player alice joined"},
                        expect=202)
        await wait_players(actor, 1)
        await wapi.post(f"/server/{s['id']}/command", {"data": "echo Player alice left"},
                        expect=202)
        await wait_players(actor, 0)
        # a join and a leave in one batch of lines: the count ends where it began, yet
        # both are events, by name
        await wapi.post(f"/server/{s['id']}/command",
                        {"data": "lines Player bob joined|Player bob left"}, expect=202)
        with trio.fail_after(5):  # saved in SQLite within the flush delay
            while (await wapi.get("/status"))["events"]["queued"] < 6:
                await trio.sleep(0.05)
        text = (await wapi.request("GET", "/metrics", 200)).text
        assert "manman_events_queued 6.0" in text and "manman_events_dropped_total 0.0" in text
        assert rx.requests == []
        again = await bg.start(run_host, cfg)
        bodies = await received(rx, "/ok", 6)
        assert [b["event"] for b in bodies] == ["server.crashed", "server.ready",
                                                "player.joined", "player.left",
                                                "player.joined", "player.left"]
        seqs = [seq_of(b) for b in bodies]
        assert seqs == sorted(seqs) and len(set(seqs)) == 6
        assert [b["at"] for b in bodies] == sorted(b["at"] for b in bodies)
        assert bodies[0]["data"]["crashes"] == 1 and bodies[0]["server"]["id"] == s["id"]
        assert [(b["data"]["player"], b["data"]["players"]) for b in bodies[2:]] == \
            [("alice", 1), ("alice", 0), ("bob", 1), ("bob", 0)]
        # acknowledged: the worker forgot them; nothing comes twice
        with trio.fail_after(5):
            while (await wapi.get("/status"))["events"] != {"queued": 0, "dropped": 0}:
                await trio.sleep(0.05)
        await trio.sleep(0.6)
        assert len(rx.on("/ok")) == 6
        row = await again.control.store.fetch("SELECT events_acked FROM workers WHERE id = $1",
                                              worker.link.worker_id)
        assert row[0]["events_acked"] >= seqs[-1]
    finally:
        await wapi.aclose()
        await stop_all(worker, host, again)


async def test_a_worker_restart_keeps_the_events_it_has_not_sent(
        tmp_path: Path, database_url: str, bg: trio.Nursery) -> None:
    """Events recorded while the host is away are in the worker's SQLite: a worker that
    stops (its servers' stops are events too) and starts again still sends them."""
    from manman.host.main import run_host
    from manman.worker.main import run_worker

    rx: Receiver = await bg.start(Receiver().serve)
    cfg = host_config(tmp_path, database_url, listen=f"127.0.0.1:{free_port()}")
    host = await bg.start(run_host, cfg)
    wcfg = hosted_worker_config(tmp_path, host.url, "wr")
    worker = await bg.start(run_worker, wcfg)
    wid = worker.link.worker_id
    again = None
    try:
        api = Client(host.url, ADMIN)
        s = await api.post("/server", fake_spec("r1", worker_id=wid, desired_state="running"),
                           expect=201)
        await api.wait_for("r1", state="running", ready=True)
        await settled(worker)
        await api.post("/webhook", {"url": rx.url("/ok"), "events": WATCHED}, expect=201)
        await api.aclose()
        await stop(host)
        async with httpx.AsyncClient(base_url=worker.url, headers={
                "Authorization": f"Bearer {worker.secrets.admin_secret}"}) as wapi:
            r = await wapi.post(f"/server/{s['id']}/command", json={"data": "crash"})
            assert r.status_code == 202, r.text
        await wait_status(worker.agent.actors[s["id"]], restarts=1, state="running",
                          ready=True)
        await stop_worker(worker)  # stops the game: `server.stopped`
        # in the worker's SQLite, as its next run finds them
        store = await WorkerStore.open(wcfg.worker.data_dir / "worker.sqlite3")
        try:
            kept = await store.load_events()
        finally:
            await store.close()
        assert [e.event for e in kept] == ["server.crashed", "server.ready", "server.stopped"]
        assert [e.seq for e in kept] == sorted(e.seq for e in kept)
        again = await bg.start(run_host, cfg)
        worker = await bg.start(run_worker, wcfg)
        assert worker.link.worker_id == wid
        bodies = await received(rx, "/ok", 4)  # and the ready of the server started again
        assert [b["event"] for b in bodies[:3]] == ["server.crashed", "server.ready",
                                                    "server.stopped"]
        assert [seq_of(b) for b in bodies[:3]] == [e.seq for e in kept]
        assert seq_of(bodies[3]) > kept[-1].seq  # the seq goes on after a restart
        await trio.sleep(0.6)
        assert len({b["id"] for b in (json.loads(r.body) for r in rx.on("/ok"))}) == \
            len(rx.on("/ok")) == 4
    finally:
        await stop_all(worker, host, again)


async def test_an_event_goes_out_before_the_next_heartbeat_is_due(
        host: RunningHost, hosted: Any, bg: trio.Nursery) -> None:
    """Events wait for no heartbeat_interval: one is sent within moments of being saved."""
    rx: Receiver = await bg.start(Receiver().serve)
    w = await hosted("slowbeat", heartbeat_interval=4.0)
    api = host.api
    s = await api.post("/server", fake_spec("f1", worker_id=w.handle.link.worker_id,
                                            desired_state="running"), expect=201)
    await api.wait_for("f1", state="running", ready=True, timeout=20)
    await settled(w.handle)
    await api.post("/webhook", {"url": rx.url("/ok"), "events": ["server.crashed"]},
                   expect=201)
    t0 = trio.current_time()
    await w.api.post(f"/server/{s['id']}/command", {"data": "crash"}, expect=202)
    await received(rx, "/ok", 1, timeout=3)
    assert trio.current_time() - t0 < 2.0


async def _join(api: Client, name: str) -> tuple[str, dict[str, str]]:
    creds = await api.post("/worker", {"name": name}, expect=201,
                           headers={"Authorization": f"Bearer {JOIN}"})
    auth = {"Authorization": f"Bearer {creds['token']}"}
    # no api_url: the host never calls it; its calls are made here
    await api.post(f"/worker/{creds['worker_id']}", {"name": name, "api_url": ""},
                   expect=200, headers=auth)
    return creds["worker_id"], auth


def _ev(seq: int, event: str, server_id: str, **data: Any) -> dict[str, Any]:
    return {"seq": seq, "at": 1700000000.0 + seq, "event": event, "server_id": server_id,
            "data": data}


async def test_the_host_takes_a_seq_once(host: RunningHost, bg: trio.Nursery) -> None:
    """A heartbeat sent again (its answer lost) carries events the host took: skipped, no
    second delivery; after a host restart too (the seq is in PostgreSQL)."""
    rx: Receiver = await bg.start(Receiver().serve)
    api = host.api
    wid, auth = await _join(api, "raw")
    s = await api.post("/server", {"name": "k1", "worker_id": wid,
                                   "game_id": "exec:/bin/true"}, expect=201)
    await api.post("/webhook", {"url": rx.url("/ok"), "events": ["server.crashed",
                                                                 "server.ready"]}, expect=201)

    async def beat(events: Any, expect: int = 200) -> Any:
        return await api.post(f"/worker/{wid}/health", {
            "status": "alive", "servers": [], "generations": {s["id"]: 1},
            "events": events}, expect=expect, headers=auth)

    first = [_ev(1, "server.crashed", s["id"], exit_code=3, error=None, restarts=0,
                 crashes=1),
             _ev(2, "player.joined", s["id"], players=1, change=1),  # no hook wants it
             _ev(3, "server.ready", "no-such-server", pid=1),  # a server deleted since
             _ev(4, "server.ready", s["id"], pid=7)]
    assert (await beat(first))["events_acked"] == 4
    bodies = await received(rx, "/ok", 2)
    assert [(b["event"], b["id"]) for b in bodies] == [("server.crashed", f"{wid}-1"),
                                                       ("server.ready", f"{wid}-4")]
    assert (await beat(first))["events_acked"] == 4  # the same again: nothing new
    assert (await beat([]))["events_acked"] == 4
    assert (await beat([*first[3:], _ev(5, "server.crashed", s["id"], crashes=1)]))[
        "events_acked"] == 5
    await received(rx, "/ok", 3)
    await trio.sleep(0.5)
    assert [json.loads(r.body)["id"] for r in rx.on("/ok")] == \
        [f"{wid}-1", f"{wid}-4", f"{wid}-5"]
    rows = await host.control.store.fetch("SELECT events_acked FROM workers WHERE id = $1", wid)
    assert rows[0]["events_acked"] == 5
    # bad events: 422, and nothing taken
    for bad in ([_ev(0, "server.ready", s["id"])], [{"seq": 6, "event": "server.ready"}],
                [_ev(6, "x" * 65, s["id"])], [_ev(6, "server.ready", "s" * 65)],
                [{**_ev(6, "server.ready", s["id"]), "extra": 1}]):
        r = await api.request("POST", f"/worker/{wid}/health", headers=auth, json={
            "status": "alive", "servers": [], "generations": {}, "events": bad})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid", (bad, r.text)
    assert len(rx.on("/ok")) == 3


async def test_a_restarted_host_skips_what_it_took(
        tmp_path: Path, database_url: str, bg: trio.Nursery) -> None:
    from manman.host.main import run_host

    rx: Receiver = await bg.start(Receiver().serve)
    cfg = host_config(tmp_path, database_url)
    first = await bg.start(run_host, cfg)
    api = Client(first.url, ADMIN)
    again = None
    try:
        wid, auth = await _join(api, "raw2")
        s = await api.post("/server", {"name": "k2", "worker_id": wid,
                                       "game_id": "exec:/bin/true"}, expect=201)
        await api.post("/webhook", {"url": rx.url("/ok"), "events": ["server.crashed"]},
                       expect=201)
        sent = [_ev(1, "server.crashed", s["id"], crashes=1),
                _ev(2, "server.crashed", s["id"], crashes=1)]
        beat = {"status": "alive", "servers": [], "generations": {}, "events": sent}
        r = await api.post(f"/worker/{wid}/health", beat, expect=200, headers=auth)
        assert r["events_acked"] == 2
        await received(rx, "/ok", 2)
        await api.aclose()
        await stop(first)
        again = await bg.start(run_host, cfg)
        api = Client(again.url, ADMIN)
        # its answer was lost: the worker sends them again, and one more
        beat["events"] = [*sent, _ev(3, "server.crashed", s["id"], crashes=1)]
        r = await api.post(f"/worker/{wid}/health", beat, expect=200, headers=auth)
        assert r["events_acked"] == 3
        await received(rx, "/ok", 3)
        await trio.sleep(0.5)
        assert [seq_of(json.loads(r.body)) for r in rx.on("/ok")] == [1, 2, 3]
    finally:
        await api.aclose()
        for h in (first, again):
            if h is not None and not h.stopped.is_set():
                await stop(h)


async def test_an_older_worker_still_has_its_events_derived(
        host: RunningHost, bg: trio.Nursery) -> None:
    """A heartbeat without `events` (a worker before the queue): the host derives the events
    from its reports. Once a worker sends `events`, none is derived from its reports."""
    rx: Receiver = await bg.start(Receiver().serve)
    api = host.api
    await api.post("/webhook", {"url": rx.url("/ok"), "events": ["server.crashed"]},
                   expect=201)
    out = {}
    for name in ("old", "new"):
        wid, auth = await _join(api, name)
        s = await api.post("/server", {"name": f"{name}-s", "worker_id": wid,
                                       "game_id": "exec:/bin/true"}, expect=201)
        beat: dict[str, Any] = {"status": "alive", "servers": [], "generations": {}}
        if name == "new":
            beat["events"] = []
        reply = await api.post(f"/worker/{wid}/health", beat, expect=200, headers=auth)
        assert reply.get("events_acked") == (0 if name == "new" else None)
        for state in ("running", "crashed"):
            await api.post(f"/server/{s['id']}/health", {
                "id": s["id"], "observed_generation": 1, "state": state}, expect=200,
                headers=auth)
        out[name] = s["id"]
    bodies = await received(rx, "/ok", 1)
    await trio.sleep(0.5)
    assert [b["server"]["id"] for b in bodies] == [out["old"]]
    assert len(rx.on("/ok")) == 1


# -- the queue itself, on a real SQLite file ------------------------------------------------


async def test_the_queue_keeps_its_order_and_bound_across_restarts(
        tmp_path: Path, aio_loop: object, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = WorkerAgent(worker_config(tmp_path).worker)
    path = tmp_path / "worker.sqlite3"
    store = await WorkerStore.open(path)
    q = EventQueue(agent, store)
    await q.load()
    for i in range(3):
        q.record("s1", "player.joined", {"players": i + 1, "change": 1})
    assert q.status() == models.EventQueueStatus(queued=3, dropped=0)
    assert q.batch() == []  # only saved events are sent
    assert await q.flush()
    assert [e.seq for e in q.batch()] == [1, 2, 3]
    await q.ack(2)  # the host took 1 and 2
    await store.close()
    # a restart: what is left, and the seq goes on
    store = await WorkerStore.open(path)
    q = EventQueue(agent, store)
    await q.load()
    assert [e.seq for e in q.batch()] == [3]
    q.record("s1", "player.left", {"players": 2, "change": -1})
    assert q.seq == 4
    # over the bound: the oldest go, counted, in memory and in SQLite
    monkeypatch.setattr(worker_events, "MAX_EVENTS", 3)
    for _ in range(3):
        q.record("s1", "server.ready", {"pid": 1})
    assert await q.flush()
    assert [e.seq for e in q.batch()] == [5, 6, 7]
    assert q.status() == models.EventQueueStatus(queued=3, dropped=2)
    assert [e.seq for e in await store.load_events()] == [5, 6, 7]
    # and by age
    monkeypatch.setattr(worker_events, "MAX_AGE", 0.0)
    q.record("s1", "server.stopped", {"exit_code": 0})
    assert await q.flush()
    assert q.status() == models.EventQueueStatus(queued=1, dropped=5)
    await store.close()
    store = await WorkerStore.open(path)
    q = EventQueue(agent, store)
    await q.load()
    assert q.dropped == 5 and q.seq == 8 and [e.seq for e in q.batch()] == [8]
    await store.close()


# -- PostgreSQL away: the host takes nothing, the worker keeps them ------------------------


async def test_while_postgres_is_down_the_host_takes_no_event(
        tmp_path: Path, db: str, pg: OwnPostgres,  # noqa: F811 (the fixtures)
        bg: trio.Nursery) -> None:
    from manman.host.main import run_host

    rx: Receiver = await bg.start(Receiver().serve)
    handle = await bg.start(run_host, host_config(tmp_path, db))
    api = Client(handle.url, ADMIN)
    try:
        wid, auth = await _join(api, "pgw")
        s = await api.post("/server", {"name": "p1", "worker_id": wid,
                                       "game_id": "exec:/bin/true"}, expect=201)
        await api.post("/webhook", {"url": rx.url("/ok"), "events": ["server.crashed"]},
                       expect=201)
        beat = {"status": "alive", "servers": [], "generations": {},
                "events": [_ev(1, "server.crashed", s["id"], crashes=1)]}
        pg.stop()
        # the heartbeat is answered (from memory), the event not taken: sent again later
        r = await api.post(f"/worker/{wid}/health", beat, expect=200, headers=auth)
        assert r["events_acked"] == 0
        await trio.sleep(0.3)
        assert rx.requests == []
        pg.start()
        with trio.fail_after(15):
            while (await api.post(f"/worker/{wid}/health", beat, expect=200,
                                  headers=auth))["events_acked"] != 1:
                await trio.sleep(0.2)
        bodies = await received(rx, "/ok", 1)
        await trio.sleep(0.5)
        assert len(rx.on("/ok")) == 1 and bodies[0]["id"] == f"{wid}-1"
    finally:
        await api.aclose()
        await stop(handle)


async def test_events_over_a_hooks_backlog_leave_no_outbox_rows(
        host: RunningHost, bg: trio.Nursery, monkeypatch: Any) -> None:
    """A hook whose backlog is full (a receiver dead for long): events beyond it are dropped
    and counted, and their outbox rows go too, so the table stays bounded."""
    from manman.host.webhooks import delivery

    monkeypatch.setattr(delivery, "PENDING_PER_HOOK", 0)  # the backlog is full from the start
    rx: Receiver = await bg.start(Receiver().serve)
    api = host.api
    wid, auth = await _join(api, "full")
    s = await api.post("/server", {"name": "f1", "worker_id": wid,
                                   "game_id": "exec:/bin/true"}, expect=201)
    await api.post("/webhook", {"url": rx.url("/ok"), "events": ["server.crashed"]},
                   expect=201)
    dropped = host.handle.webhooks.dispatcher.dropped
    r = await api.post(f"/worker/{wid}/health", {
        "status": "alive", "servers": [], "generations": {},
        "events": [_ev(n, "server.crashed", s["id"], crashes=1) for n in (1, 2, 3)]},
        expect=200, headers=auth)
    assert r["events_acked"] == 3
    assert host.handle.webhooks.dispatcher.dropped == dropped + 3
    with trio.fail_after(5):
        while (await host.control.store.fetch("SELECT count(*) AS n FROM webhook_outbox")
               )[0]["n"]:
            await trio.sleep(0.05)
    assert rx.on("/ok") == []
