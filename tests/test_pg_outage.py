"""PostgreSQL stopped, hung (SIGSTOP) or slow to commit under a running host: writes answer
503 and change nothing (or learn what their commit did), reads and heartbeats go on from
memory, the command audit waits in the spool through outages and host crashes, and an
outage logs a few lines, no traceback.

These tests stop and freeze a PostgreSQL of their own (not the session's), always thawed and
started again before the next test."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import trio

from manman import aio
from tests.conftest import (
    ADMIN,
    JOIN,
    Client,
    ManmanProcess,
    fake_spec,
    host_config,
    hosted_worker_config,
    write_config,
)

NOTHING_CHANGED = {"error": {"code": "unavailable",
                             "message": "the database is unavailable; nothing was changed"}}


class OwnPostgres:
    """An embedded PostgreSQL these tests may stop, start, freeze and thaw."""

    def __init__(self, pgdata: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

            self.server = pgserver.get_server(pgdata, cleanup_mode="delete")
        self.pgdata = self.server.pgdata
        self.uri = self.server.get_uri()
        self.frozen: list[int] = []

    def stop(self) -> None:
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self.server.system_user,
               timeout=20)

    def start(self) -> None:
        self.server.ensure_postgres_running()
        assert self.server.get_uri() == self.uri

    def freeze(self) -> None:
        """SIGSTOP the postmaster (first: it forks no new backend) and all its children."""
        import psutil

        postmaster = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        pids = [postmaster, *(p.pid for p in psutil.Process(postmaster).children(True))]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            self.frozen.append(pid)

    def thaw(self) -> None:
        while self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.frozen.pop(), signal.SIGCONT)


@pytest.fixture(scope="module")
def own_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnPostgres]:
    pg = OwnPostgres(tmp_path_factory.mktemp("own-pg") / "data")
    try:
        yield pg
    finally:
        pg.thaw()
        pg.server.cleanup()


@pytest.fixture
async def pg(own_pg: OwnPostgres, aio_loop: object) -> AsyncIterator[OwnPostgres]:
    """The test's PostgreSQL, running again (and thawed) whatever the test left."""
    try:
        yield own_pg
    finally:
        own_pg.thaw()
        own_pg.start()


@pytest.fixture
async def db(pg: OwnPostgres) -> str:
    """A new, empty database on the test's own PostgreSQL (gone with it at module end)."""
    name = f"outage_{secrets.token_hex(6)}"
    conn = await aio.call(asyncpg.connect, pg.uri)
    try:
        await aio.call(conn.execute, f'CREATE DATABASE "{name}"')
    finally:
        await aio.call(conn.close)
    return urlunsplit(urlsplit(pg.uri)._replace(path=f"/{name}"))


async def sql(db: str, query: str, *args: Any) -> list[Any]:
    """A query of the test's own, on a connection of its own."""
    conn = await aio.call(asyncpg.connect, db, timeout=5)
    try:
        return await aio.call(conn.fetch, query, *args)
    finally:
        await aio.call(conn.close)


async def script(db: str, text: str) -> None:
    conn = await aio.call(asyncpg.connect, db, timeout=5)
    try:
        await aio.call(conn.execute, text)
    finally:
        await aio.call(conn.close)


async def start_host(bg: trio.Nursery, tmp_path: Path, db: str) -> tuple[Any, Client]:
    from manman.host.main import run_host

    handle = await bg.start(run_host, host_config(tmp_path, db))
    return handle, Client(handle.url, ADMIN)


async def stop_host(handle: Any, api: Client) -> None:
    await api.aclose()
    handle.stop()
    with trio.fail_after(20):
        await handle.stopped.wait()


async def join(url: str, name: str) -> str:
    """A worker identity that never registers: enough to own servers (pushes are skipped)."""
    joiner = Client(url, JOIN)
    try:
        return (await joiner.post("/worker", {"name": name}, expect=201))["worker_id"]
    finally:
        await joiner.aclose()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def metrics(api: Client) -> str:
    return (await api.request("GET", "/metrics", 200)).text


def no_traceback_no_error(records: list[logging.LogRecord]) -> None:
    assert not [r for r in records if r.exc_info], [r.getMessage() for r in records
                                                    if r.exc_info]
    assert not [r for r in records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    assert not [r for r in records if "connection floor" in r.getMessage()]


async def test_writes_answer_503_while_postgres_is_down_and_the_audit_waits(
        tmp_path: Path, db: str, pg: OwnPostgres, bg: trio.Nursery,
        caplog: pytest.LogCaptureFixture) -> None:
    from manman.worker.main import run_worker

    caplog.set_level(logging.INFO)
    handle, api = await start_host(bg, tmp_path, db)
    worker = await bg.start(run_worker, hosted_worker_config(tmp_path, handle.url, "w"))
    try:
        wid = worker.link.worker_id
        await api.post("/server", fake_spec("a", worker_id=wid, desired_state="running"),
                       expect=201)
        await api.wait_for("a", state="running")
        with trio.fail_after(5):  # the join, registration and create are in PostgreSQL
            while metric(await metrics(api), 'manman_host_pending_records{kind="audit"}'):
                await trio.sleep(0.05)
        caplog.clear()
        pg.stop()
        down = time.monotonic()
        # every kind of write: 503 unavailable with Retry-After, nothing changed
        for method, path, body in [
                ("POST", "/server", fake_spec("b", worker_id=wid)),
                ("PUT", "/server/a", {"stop_timeout": 9}),
                ("POST", "/server/a/command", {"type": "stop"}),
                ("DELETE", "/server/a", None),
                ("PUT", f"/worker/{wid}", {"name": "renamed"})]:
            r = await api.request(method, path, json=body, timeout=15)
            assert r.status_code == 503, (method, path, r.status_code, r.text)
            assert r.json() == NOTHING_CHANGED and r.headers["Retry-After"] == "5"
        # reads, heartbeats and the console go on from memory
        s = await api.get("/server/a")
        assert s["generation"] == 1 and s["stop_timeout"] == 5 and s["state"] == "running"
        assert (await api.get("/server?state=running"))["servers"][0]["name"] == "a"
        assert (await api.request("GET", "/server/b")).status_code == 404
        beats = handle.control.fleet.heartbeats_received
        r = await api.post("/server/a/command", {"type": "command", "data": "say while down"},
                           expect=202)
        assert r["delivered"] is True
        await api.wait_line("a", "said: while down")
        with trio.fail_after(5):
            while handle.control.fleet.heartbeats_received < beats + 3:
                await trio.sleep(0.05)
        assert (await api.get(f"/worker/{wid}"))["status"] == "alive"
        # the audit waits: longer than the old code's three flush attempts
        await trio.sleep(max(0.0, down + 1.5 - time.monotonic()))
        text = await metrics(api)
        assert metric(text, "manman_host_database_up") == 0
        # the five refused writes, and the console line
        assert metric(text, 'manman_host_pending_records{kind="audit"}') == 6
        assert metric(text, "manman_host_records_dropped_total") == 0
        spooled = [ln for ln in (tmp_path / "host" / "pending-commands.jsonl").read_text()
                   .splitlines() if ln.startswith('["audit",')]
        assert len(spooled) == 6 and "say while down" in spooled[5]
        outage = [r for r in caplog.records if r.name.startswith(("manman", "asyncpg"))]
        no_traceback_no_error(outage)
        starts = [r for r in outage if r.levelno == logging.WARNING and
                  "PostgreSQL is unavailable" in r.getMessage()]
        assert len(starts) == 1, [r.getMessage() for r in outage]
        assert len(outage) <= 8, [r.getMessage() for r in outage]  # a line a refused write
        caplog.clear()
        pg.start()
        with trio.fail_after(10):
            while metric(await metrics(api), "manman_host_database_up") != 1:
                await trio.sleep(0.1)
        with trio.fail_after(5):
            while metric(await metrics(api),
                         'manman_host_pending_records{kind="audit"}') != 0:
                await trio.sleep(0.1)
        rows = (await sql(db, "SELECT action, detail, result, status FROM audit "
                              "ORDER BY seq"))[-6:]
        assert [(r["action"], r["detail"], r["status"]) for r in rows] == [
            ("server.create", None, 503), ("server.update", None, 503),
            ("server.stop", None, 503), ("server.delete", None, 503),
            ("worker.update", None, 503), ("server.command", "say while down", 202)]
        assert all(r["result"].startswith("unavailable:") for r in rows[:5])
        assert (tmp_path / "host" / "pending-commands.jsonl").stat().st_size == 0
        back = [r for r in caplog.records if "PostgreSQL is back after" in r.getMessage()]
        assert len(back) == 1 and back[0].levelno == logging.INFO
        no_traceback_no_error(caplog.records)
        # and writes work again
        await api.post("/server", fake_spec("b", worker_id=wid), expect=201)
    finally:
        worker.agent.request_shutdown()
        with trio.fail_after(20):
            await worker.agent.stopped.wait()
        await stop_host(handle, api)


async def test_a_write_to_a_hung_postgres_answers_503_and_leaves_no_phantom(
        tmp_path: Path, db: str, pg: OwnPostgres, bg: trio.Nursery) -> None:
    handle, api = await start_host(bg, tmp_path, db)
    try:
        wid = await join(handle.url, "w")
        pg.freeze()
        try:
            started = time.monotonic()
            r = await api.request("POST", "/server", json=fake_spec("phantom", worker_id=wid),
                                  timeout=15)
            took = time.monotonic() - started
            assert r.status_code == 503 and r.json() == NOTHING_CHANGED, r.text
            assert took < 8, took  # the 5 s bound, not the client's timeout
            with trio.fail_after(1):  # reads do not wait for the database
                assert (await api.get("/server"))["servers"] == []
        finally:
            pg.thaw()
        # what the API says and what the database holds agree, now and after a restart
        assert (await api.request("GET", "/server/phantom")).status_code == 404
        assert await sql(db, "SELECT id FROM servers") == []
        created = await api.post("/server", fake_spec("phantom", worker_id=wid), expect=201)
        assert (await api.get("/server/phantom"))["id"] == created["id"]
        await stop_host(handle, api)
        handle, api = await start_host(bg, tmp_path, db)
        servers = (await api.get("/server"))["servers"]
        assert [(s["id"], s["name"]) for s in servers] == [(created["id"], "phantom")]
    finally:
        await stop_host(handle, api)


SLOW_COMMIT = """
CREATE TABLE slow_commit (seconds float8 NOT NULL);
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(coalesce((SELECT max(seconds) FROM slow_commit), 0));
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON servers
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();
"""


async def test_a_commit_without_an_answer_is_learnt_before_memory_changes(
        tmp_path: Path, db: str, pg: OwnPostgres, bg: trio.Nursery) -> None:
    """COMMIT sent, then no answer (a commit trigger that sleeps): the host learns whether it
    happened (PostgreSQL's own record of the transaction) before it answers or changes
    memory; when PostgreSQL cannot tell yet, it learns it when PostgreSQL is back."""
    handle, api = await start_host(bg, tmp_path, db)
    try:
        wid = await join(handle.url, "w")
        await script(db, SLOW_COMMIT)

        async def create(name: str) -> Any:
            return await api.request("POST", "/server", json=fake_spec(name, worker_id=wid),
                                     timeout=15)

        # a slow commit that completes after the 5 s bound: it happened, so 201
        await sql(db, "INSERT INTO slow_commit VALUES (5.8)")
        r = await create("late")
        assert r.status_code == 201, r.text
        assert (await api.get("/server/late"))["id"] == r.json()["id"]
        assert (await create("late")).status_code == 409
        # a commit that would hang: its backend is ended, so it did not happen, so 503
        await sql(db, "UPDATE slow_commit SET seconds = 60")
        r = await create("never")
        assert r.status_code == 503 and r.json() == NOTHING_CHANGED, r.text
        assert (await api.request("GET", "/server/never")).status_code == 404
        assert await sql(db, "SELECT id FROM servers WHERE name = 'never'") == []
        # COMMIT sent, then the database hangs: nobody can tell; 503 that says so, and
        # memory waits for PostgreSQL's word
        await sql(db, "UPDATE slow_commit SET seconds = 3")
        async with trio.open_nursery() as n:
            answer: list[Any] = []

            async def post() -> None:
                answer.append(await create("unsure"))

            n.start_soon(post)
            await trio.sleep(0.5)  # COMMIT is sent: its backend sleeps in the trigger
            pg.freeze()
        pg.thaw()
        r = answer[0]
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
        assert "did not confirm" in r.json()["error"]["message"]
        assert r.headers["Retry-After"] == "5"
        # thawed, the commit completes; the host learns it and shows the server
        with trio.fail_after(10):
            while (await api.request("GET", "/server/unsure")).status_code != 200:
                await trio.sleep(0.1)
        rows = await sql(db, "SELECT id FROM servers WHERE name = 'unsure'")
        assert [r["id"] for r in rows] == [(await api.get("/server/unsure"))["id"]]
        await sql(db, "DELETE FROM slow_commit")
        assert (await create("unsure")).status_code == 409
        await stop_host(handle, api)
        handle, api = await start_host(bg, tmp_path, db)
        names = sorted(s["name"] for s in (await api.get("/server"))["servers"])
        assert names == ["late", "unsure"]
    finally:
        pg.thaw()
        await stop_host(handle, api)


async def test_the_audit_survives_a_hung_postgres_and_a_host_sigkill(
        tmp_path: Path, db: str, pg: OwnPostgres, bg: trio.Nursery) -> None:
    """Accepted console commands reach the spool within a flush interval even while the
    write to PostgreSQL hangs, and a host killed then writes them at its next start."""
    from manman.worker.main import run_worker

    cfg = write_config(tmp_path / "host.toml", f"""
[host]
listen = "127.0.0.1:0"
database_url = "{db}"
data_dir = "{tmp_path / 'host'}"
admin_token = "{ADMIN}"
join_token = "{JOIN}"
flush_interval = 0.1
worker_expiry = 0
""")
    first = ManmanProcess(["host", "--config", str(cfg)])
    second = ManmanProcess(["host", "--config", str(cfg)])
    worker = None
    try:
        url = await first.start(bg)
        api = Client(url, ADMIN)
        worker = await bg.start(run_worker, hosted_worker_config(tmp_path, url, "w"))
        await api.post("/server", fake_spec("g", worker_id=worker.link.worker_id,
                                            desired_state="running"), expect=201)
        await api.wait_for("g", state="running")
        with trio.fail_after(5):  # the join, registration and create are in PostgreSQL
            while metric(await metrics(api), 'manman_host_pending_records{kind="audit"}'):
                await trio.sleep(0.05)
        pg.freeze()
        for n in range(5):
            r = await api.post("/server/g/command", {"type": "command", "data": f"say {n}"},
                               expect=202)
            assert r["delivered"] is True
        await api.wait_line("g", "said: 4")
        await trio.sleep(1.0)  # the flush's write to PostgreSQL waits (up to 5 s) meanwhile
        spool = tmp_path / "host" / "pending-commands.jsonl"
        # (the spool is emptied only when nothing waits: earlier rows may still be there)
        lines = [ln for ln in spool.read_text().splitlines()
                 if ln.startswith('["audit",') and '"server.command"' in ln]
        assert len(lines) == 5
        text = await metrics(api)
        assert metric(text, 'manman_host_pending_records{kind="audit"}') == 5
        await api.aclose()
        first.kill9()
        await first.wait()
        pg.thaw()
        with spool.open("a") as f:  # a record written twice (a crash before the spool was
            f.write(lines[0] + "\n")  # emptied) is one row
        url = await second.start(bg)
        rows = await sql(db, "SELECT detail, result, actor FROM audit WHERE action = "
                             "'server.command' ORDER BY seq")
        assert [r["detail"] for r in rows] == [f"say {n}" for n in range(5)]
        assert all(r["result"] == "delivered" and r["actor"] == "admin" for r in rows)
        assert spool.stat().st_size == 0
        assert not [ln for ln in second.log if "Traceback" in ln or " ERROR " in ln], second.log
    finally:
        if worker is not None:
            worker.agent.request_shutdown()
            with trio.fail_after(20):
                await worker.agent.stopped.wait()
        for proc in (first, second):
            proc.stop()
            if proc.proc is not None:
                await proc.wait()


def test_the_spool_is_bounded_and_cuts_a_torn_tail(tmp_path: Path) -> None:
    from manman.host.spool import Spool

    path = tmp_path / "pending-commands.jsonl"
    spool = Spool(path, bound=1000)
    row = ("id0", 1.5, "admin", "x", "server.command", "s", "w", "/server/s/command", 202,
           "say 0", "delivered")
    assert spool.append([row], [("s", {"state": "running"}, 2)]) == (1, 1)
    # over the bound: the rows that do not fit are refused, the kept ones stay
    kept, _ = spool.append([(f"id{i}", *row[1:]) for i in range(1, 40)], [])
    assert 0 < kept < 39 and spool.size <= 1000 == spool.bound
    assert len(path.read_text().splitlines()) == 2 + kept
    with path.open("ab") as f:
        f.write(b'["command",["torn')  # a crash mid-write
    again = Spool(path, bound=1000)
    commands, observed = again.load()
    assert [c[0] for c in commands] == [f"id{i}" for i in range(kept + 1)]
    assert commands[0] == row and observed == [("s", {"state": "running"}, 2)]
    assert path.read_bytes().endswith(b"\n") and again.size == path.stat().st_size
    again.clear()
    assert path.stat().st_size == 0 and Spool(path).load() == ([], [])


def test_an_outage_logs_a_start_a_reminder_a_minute_and_its_end(
        caplog: pytest.LogCaptureFixture) -> None:
    from manman.host.outage import DatabaseHealth

    caplog.set_level(logging.INFO)
    now = [100.0]
    health = DatabaseHealth(clock=lambda: now[0])
    health.waiting = lambda: 7
    for t in (100.0, 100.5, 130.0, 159.0, 161.0, 200.0, 221.5):
        now[0] = t
        health.failed("ConnectionRefusedError")
    now[0] = 230.0
    health.ok()
    health.ok()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == ["WARNING", "WARNING", "WARNING", "INFO"]
    assert "is unavailable" in lines[0][1] and "7 records" in lines[0][1]
    assert "still unavailable after 61 s" in lines[1][1]
    assert "still unavailable after 122 s" in lines[2][1]
    assert "back after 130.0 s" in lines[3][1]


SLOW_OUTBOX = SLOW_COMMIT.replace("AFTER INSERT ON servers", "AFTER INSERT ON webhook_outbox")


async def test_events_whose_commit_went_unanswered_are_delivered_without_a_restart(
        tmp_path: Path, db: str, pg: OwnPostgres, bg: trio.Nursery) -> None:
    """A heartbeat's events reach the outbox by a COMMIT whose answer never comes: the
    worker keeps them (not acknowledged). When PostgreSQL is back and the worker sends
    them again, the host reads that it took them after all, and delivers those rows now,
    once, not at its next start."""
    from tests.receiver import Receiver
    from tests.test_event_queue import _ev, _join

    rx: Receiver = await bg.start(Receiver().serve)
    handle, api = await start_host(bg, tmp_path, db)
    try:
        wid, auth = await _join(api, "unsure-w")
        s = await api.post("/server", {"name": "u1", "worker_id": wid,
                                       "game_id": "exec:/bin/true"}, expect=201)
        await api.post("/webhook", {"url": rx.url("/ok"), "events": ["server.crashed"]},
                       expect=201)
        await script(db, SLOW_OUTBOX)
        await sql(db, "INSERT INTO slow_commit VALUES (3)")
        beat = {"status": "alive", "servers": [], "generations": {},
                "events": [_ev(1, "server.crashed", s["id"], crashes=1)]}
        async with trio.open_nursery() as n:
            answer: list[Any] = []

            async def heartbeat() -> None:
                answer.append(await api.request("POST", f"/worker/{wid}/health", json=beat,
                                                headers=auth, timeout=20))

            n.start_soon(heartbeat)
            await trio.sleep(0.5)  # COMMIT is sent: its backend sleeps in the trigger
            pg.freeze()
            with trio.fail_after(15):
                while not answer:
                    await trio.sleep(0.1)
            pg.thaw()
        assert answer[0].status_code == 200 and answer[0].json()["events_acked"] == 0
        await sql(db, "DELETE FROM slow_commit")
        with trio.fail_after(15):  # the commit went through once PostgreSQL was thawed
            while (await sql(db, "SELECT events_acked FROM workers WHERE id = $1",
                             wid))[0]["events_acked"] != 1:
                await trio.sleep(0.1)
        assert rx.on("/ok") == []  # nothing delivered it yet
        with trio.fail_after(20):
            while True:  # the worker sends them again until acknowledged
                r = await api.request("POST", f"/worker/{wid}/health", json=beat,
                                      headers=auth)
                if r.status_code == 200 and r.json()["events_acked"] == 1:
                    break
                await trio.sleep(0.2)
            while not rx.on("/ok"):
                await trio.sleep(0.05)
        await trio.sleep(0.5)
        assert [json.loads(x.body)["id"] for x in rx.on("/ok")] == [f"{wid}-1"]
        with trio.fail_after(10):  # delivered: its outbox row is gone
            while await sql(db, "SELECT id FROM webhook_outbox"):
                await trio.sleep(0.1)
    finally:
        pg.thaw()
        await stop_host(handle, api)
