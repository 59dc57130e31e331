"""The heartbeat's answer (`Fleet.reconcile`) and the host's bookkeeping around it, on a real
HostStore and PostgreSQL, with workers that never answer (no worker process: every change
waits for the heartbeat, which these tests play)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from manman import errors, models
from manman.host.control import HostControl
from manman.host.fleet import Fleet, WorkerRec
from manman.host.relay import HostSecrets, Relay
from manman.host.store import HostStore


@pytest.fixture
async def control(database_url: str) -> AsyncIterator[HostControl]:
    store = await HostStore.open(database_url)
    relay = Relay(HostSecrets("admin", "join", "secret"))
    try:
        yield HostControl(store, Fleet(store, worker_timeout=1.5, worker_expiry=0), relay)
    finally:
        await relay.aclose()
        await store.close()


def spec(name: str, w: WorkerRec, **fields: Any) -> models.ServerSpec:
    return models.ServerSpec(name=name, game_id="exec:/bin/true", worker_id=w.id, **fields)


def answer(control: HostControl, w: WorkerRec, held: dict[str, int]
           ) -> tuple[str, dict[str, models.DesiredServer], list[models.RemoveServer]]:
    reply = control.fleet.reconcile(w, held)
    return reply.status, {d.id: d for d in reply.servers}, reply.remove


async def test_a_worker_gets_the_specs_whose_generation_it_lacks(control: HostControl) -> None:
    w, other = await control.join("w"), await control.join("other")
    a = await control.create_server(spec("a", w))
    b = await control.create_server(spec("b", w))
    await control.create_server(spec("elsewhere", other))
    status, desired, remove = answer(control, w, {})
    assert status == "alive" and remove == []
    assert set(desired) == {a.id, b.id}  # never another worker's
    assert desired[a.id].generation == 1 and desired[a.id].spec.name == "a"
    assert desired[a.id].restart is False
    # up to date: nothing; one generation behind: that one
    await control.update_server(b, models.ServerUpdate(stop_timeout=7))
    _, desired, remove = answer(control, w, {a.id: 1, b.id: 1})
    assert list(desired) == [b.id] and remove == []
    assert desired[b.id].generation == 2 and desired[b.id].spec.stop_timeout == 7
    assert answer(control, w, {a.id: 1, b.id: 2})[1:] == ({}, [])


async def test_a_missed_restart_on_change_is_in_the_answer(control: HostControl) -> None:
    w = await control.join("w")
    s = await control.create_server(spec("r", w))
    await control.update_server(s, models.ServerUpdate(stop_timeout=3,
                                                       restart_on_change=True))  # gen 2
    await control.update_server(s, models.ServerUpdate(stop_timeout=4))  # gen 3
    _, desired, _ = answer(control, w, {s.id: 1})
    assert desired[s.id].generation == 3 and desired[s.id].restart is True
    # it already had the change that asked for the restart
    assert answer(control, w, {s.id: 2})[1][s.id].restart is False
    # a worker without the server creates it: nothing to restart
    assert answer(control, w, {})[1][s.id].restart is False


async def test_removals_deleted_servers_it_holds_and_servers_that_are_not_its(
        control: HostControl) -> None:
    w, other = await control.join("w"), await control.join("other")
    keep = await control.create_server(spec("keep", w))
    purged = await control.create_server(spec("purged", w))
    kept_files = await control.create_server(spec("files", w))
    theirs = await control.create_server(spec("theirs", other))
    # the worker is away: the deletes wait for it
    assert await control.delete_server(purged, purge=True) is False
    assert await control.delete_server(kept_files, purge=False) is False
    held = {keep.id: 1, purged.id: 1, kept_files.id: 1, theirs.id: 1, "stranger": 4}
    _, desired, remove = answer(control, w, held)
    assert desired == {}  # a deleting server is never sent again
    assert sorted((r.id, r.purge) for r in remove) == sorted([
        (purged.id, True), (kept_files.id, False), (theirs.id, False), ("stranger", False)])
    # once it no longer holds them, there is nothing to remove
    assert answer(control, w, {keep.id: 1})[1:] == ({}, [])


async def test_a_frozen_worker_is_told_so(control: HostControl) -> None:
    w = await control.join("w")
    await control.create_server(spec("f", w))
    await control.update_worker(w, models.WorkerUpdate(status="frozen"))
    status, desired, _ = answer(control, w, {})
    assert status == "frozen" and len(desired) == 1
    with pytest.raises(errors.Conflict) as refused:
        await control.create_server(spec("g", w))
    assert refused.value.code == "frozen"
    await control.update_worker(w, models.WorkerUpdate(status="alive"))
    assert answer(control, w, {})[0] == "alive"


async def test_a_finished_delete_is_forgotten_by_the_next_flush(control: HostControl) -> None:
    w = await control.join("w")
    s = await control.create_server(spec("gone", w))
    assert await control.delete_server(s, purge=False) is False
    # the worker still holds it: remove it; then it reports it no longer does
    reply = control.heartbeat(w.id, models.Heartbeat(generations={s.id: 1}))
    assert [r.id for r in reply.remove] == [s.id]
    control.heartbeat(w.id, models.Heartbeat(generations={}))
    assert s.id in control.fleet.servers  # memory only until the flush
    await control.flush()
    assert s.id not in control.fleet.servers and not control.fleet.name_taken("gone")
    assert [r["id"] for r in await control.store.load_servers()] == []
    await control.create_server(spec("gone", w))  # the name is free again


async def test_retiring_a_worker_finishes_the_deletes_waiting_for_it(
        control: HostControl) -> None:
    w = await control.join("w")
    s = await control.create_server(spec("waits", w))
    await control.delete_server(s, purge=False)
    with pytest.raises(errors.Exists) as taken:
        await control.create_server(spec("waits", w))
    assert taken.value.code == "exists" and taken.value.message == "a server named waits exists"
    await control.retire_worker(w, "a test")
    assert s.id not in control.fleet.servers
    assert control.fleet.worker_status(w) == "shutdown"
    with pytest.raises(errors.Gone):
        control.check_not_retired(w)


async def test_a_taken_name_is_refused_by_the_database_too(control: HostControl) -> None:
    """A create that raced another past the memory check meets the unique index."""
    w = await control.join("w")
    await control.create_server(spec("dup", w))
    with pytest.raises(errors.Exists) as taken:
        await control.store.insert_server("other-id", "dup", w.id, spec("dup", w), 0.0)
    assert taken.value.message == "a server named dup exists"


async def test_the_server_view_shows_the_reported_status(control: HostControl) -> None:
    w = await control.join("w")
    s = await control.create_server(spec("v", w))
    status = models.ServerStatus(state="running", ready=True, pid=42, restarts=2,
                                 error="x\x00" * 3000, started_at=5.0, updated_at=1.0)
    report = models.ObservedServer.of(s.id, 1, status)
    assert report.error == "x\ufffd" * 2048  # fitted to the wire: 4096 characters, no NUL
    control.fleet.touch(w)  # heard from: its servers' states are believed
    control.report(w.id, s.id, report)
    view = control.fleet.server_view(s)
    assert (view.state, view.ready, view.pid, view.restarts, view.started_at) == (
        "running", True, 42, 2, 5.0)
    assert view.updated_at == s.updated_at  # the later of the report and the spec change
    assert report.status() == models.ServerStatus(
        state="running", ready=True, pid=42, restarts=2, error="x\ufffd" * 2048,
        started_at=5.0, updated_at=1.0)
    with pytest.raises(errors.Invalid):
        control.report(w.id, "another-id", report)


async def test_a_probes_time_alone_is_kept_in_memory_not_written(control: HostControl) -> None:
    w = await control.join("w")
    s = await control.create_server(spec("q", w))
    fleet = control.fleet

    def report(**query: Any) -> None:
        q = models.QueryStatus(**{"ok": True, "players": 3, "max_players": 24,
                                  "latency_ms": 0.5, "checked_at": 100.0, **query})
        fleet.observe(w, models.ObservedServer(id=s.id, observed_generation=1,
                                               state="running", query=q))

    report()
    assert fleet.pending_records()["observed"] == 1
    await fleet.flush()
    assert fleet.pending_records()["observed"] == 0
    report(latency_ms=0.7, checked_at=105.0)  # only the probe's time and latency
    assert fleet.pending_records()["observed"] == 0
    view = fleet.server_view(fleet.servers[s.id])
    assert view.query is not None and view.query.checked_at == 105.0  # shown all the same
    report(players=4, checked_at=110.0)  # news: written
    assert fleet.pending_records()["observed"] == 1


async def test_a_query_text_with_nul_is_still_written(control: HostControl) -> None:
    """A game's reply may hold U+0000 (SLP's JSON version name): PostgreSQL's jsonb refuses
    it, and every later record of the server would be dropped with it."""
    w = await control.join("w")
    s = await control.create_server(spec("qn", w))
    fleet = control.fleet
    q = models.QueryStatus(ok=True, players=1, version="1.21\x00evil", map="de\x00x",
                           error=None, checked_at=1.0)
    fleet.observe(w, models.ObservedServer(id=s.id, observed_generation=1, state="running",
                                           query=q))
    await fleet.flush()
    assert fleet.records_dropped == 0
    fleet.observe(w, models.ObservedServer(id=s.id, observed_generation=1, state="stopped",
                                           query=q))
    await fleet.flush()
    assert fleet.records_dropped == 0
