"""limits.disk_mb: a game that fills its disk past the limit is noted in its console, sends
`server.disk_full`, and is not started again (by a person or by its restart policy) until
files are deleted; uploads, extracts and restores that would pass the limit are refused
with nothing written. Real host, real PostgreSQL, real worker, real game processes."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
import trio

from manman import errors
from manman.host.webhooks import payloads
from manman.models import Limits, ServerSpec
from manman.worker import machine
from manman.worker.machine import ServerMachine
from tests.conftest import Client, RunningHost, RunningWorker, fake_spec, worker_config
from tests.receiver import Receiver
from tests.test_cli import manman
from tests.test_files import snapshot

MIB = 1024 * 1024
FAST_RESTART = {"policy": "on-failure", "backoff_initial": 0.1, "backoff_max": 0.1}


# -- the machine: pure --------------------------------------------------------------------


def _machine(**spec: Any) -> ServerMachine:
    s = ServerSpec(name="m", game_id="exec:/bin/true", limits=Limits(disk_mb=1), **spec)
    m = ServerMachine(s, installed=True)
    m.recovered(0.0)
    return m


def _kinds(effects: list[machine.Effect]) -> list[str]:
    return [type(e).__name__ for e in effects]


def test_machine_over_the_limit_holds_every_start_back_until_under() -> None:
    m = _machine()
    assert m.disk_measured(MIB, MIB, 1.0) == []  # at the limit is not over it
    m.start()
    m.spawned(1, 100, 1.0)
    out = m.disk_measured(2 * MIB, MIB, 2.0)
    assert _kinds(out) == ["Changed", "Note"]
    assert m.status.disk_full is not None and m.status.disk_full.used == 2 * MIB
    assert m.state == "running"  # a running game is left running
    assert m.disk_measured(3 * MIB, MIB, 3.0) == []  # noted once
    with pytest.raises(errors.Conflict) as e:
        m.restart()
    assert e.value.code == "disk_full"
    # a crash: the restart policy's backoff ends, and no start begins
    out = m.exited(1, 3, 4.0)
    assert m.state == "crashed"
    token = next(e.token for e in out if isinstance(e, machine.StartBackoff))
    out = m.backoff_elapsed(token)
    assert not any(isinstance(e, machine.Spawn) for e in out)
    assert m.state == "stopped" and m.status.error is not None
    assert m.status.error.startswith(machine.DISK_FULL_ERROR)
    with pytest.raises(errors.Conflict):
        m.start()
    # under again: the start it held back is made (desired is still running)
    out = m.disk_measured(MIB // 2, MIB, 5.0)
    assert any(isinstance(e, machine.Spawn) for e in out)
    assert m.state == "starting" and m.status.error is None and m.status.disk_full is None


def test_machine_a_stopped_server_stays_stopped_when_under_again() -> None:
    m = _machine()
    m.disk_measured(2 * MIB, MIB, 1.0)
    with pytest.raises(errors.Conflict):
        m.start()
    out = m.disk_measured(0, MIB, 2.0)
    assert not any(isinstance(e, machine.Spawn) for e in out)
    assert m.state == "stopped"
    m.start()  # startable again
    assert m.state == "starting"


def test_machine_spec_asking_to_run_while_over_starts_once_under() -> None:
    m = _machine()
    m.disk_measured(2 * MIB, MIB, 1.0)
    spec = ServerSpec(name="m", game_id="exec:/bin/true", limits=Limits(disk_mb=1),
                      desired_state="running")
    out = m.update_spec(spec, False)
    assert any(isinstance(e, machine.Note) and "disk" in e.text for e in out)
    assert m.state == "stopped" and m.status.error is not None  # saying why it waits
    out = m.disk_measured(0, MIB, 2.0)
    assert any(isinstance(e, machine.Spawn) for e in out)
    # the limit removed: over no more
    m2 = _machine()
    m2.disk_measured(2 * MIB, MIB, 1.0)
    m2.disk_measured(2 * MIB, None, 2.0)
    assert m2.status.disk_full is None


# -- a worker joined to a host, a webhook receiver ---------------------------------------


async def test_a_game_filling_its_disk_is_noted_sent_and_not_restarted_until_freed(
        host: RunningHost, hosted: Any, bg: trio.Nursery) -> None:
    rx: Receiver = await bg.start(Receiver().serve)
    w = await hosted("wd", disk_check_interval=0.2)
    api = host.api
    s = await api.post("/server", fake_spec("df", worker_id=w.handle.link.worker_id,
                                            limits={"disk_mb": 1}, restart=FAST_RESTART),
                       expect=201)
    await api.post("/webhook", {"url": rx.url("/disk"), "server_id": "df",
                                "events": ["server.disk_full"]}, expect=201)
    await api.post("/server/df/command", {"type": "start"}, expect=202)
    await api.wait_for("df", state="running")
    files = w.agent.actors[s["id"]].files_dir
    # an upload through the host that would pass the limit: the worker's refusal, relayed
    r = await api.request("PUT", "/server/df/files/content", params={"path": "up.bin"},
                          content=os.urandom(2 * MIB))
    await _refused(r)
    assert not (files / "up.bin").exists()
    # the game writes 2 MiB into its files directory
    await api.post("/server/df/command", {"type": "command", "data": "fill 2097152 world.bin"},
                   expect=202)
    await api.wait_line("df", "filled world.bin")
    got = await api.get("/server/df")
    with trio.fail_after(10):
        while got.get("disk_full") is None:
            await trio.sleep(0.05)
            got = await api.get("/server/df")
    assert got["disk_full"]["limit"] == MIB and got["disk_full"]["used"] >= 2 * MIB
    assert got["state"] == "running"  # it is not stopped for it
    note = await api.wait_line("df", "disk limit reached:", prefix=True)
    assert "limits.disk_mb" in note["text"]
    with trio.fail_after(10):
        while not rx.on("/disk"):
            await trio.sleep(0.05)
    body = json.loads(rx.on("/disk")[0].body)
    assert body["event"] == "server.disk_full"
    assert body["data"]["limit"] == MIB and body["data"]["used"] >= 2 * MIB
    assert "over its disk limit" in payloads.summary(payloads.Event(
        "e", body["event"], body["at"], body["data"], server=body["server"]))
    # it crashes: its restart policy would start it again; the limit holds it back
    await api.post("/server/df/command", {"type": "command", "data": "crash"}, expect=202)
    got = await api.wait_for("df", state="stopped", timeout=10)
    assert got["error"].startswith("over its disk limit")
    await trio.sleep(0.5)  # several checks and backoffs: still not started
    assert (await api.get("/server/df"))["state"] == "stopped"
    # the host takes a start as the desired state: it waits, saying why
    await api.post("/server/df/command", {"type": "start"}, expect=202)
    await trio.sleep(0.5)
    got = await api.get("/server/df")
    assert got["state"] == "stopped" and got["error"].startswith("over its disk limit")
    # freed through the file manager: under again, and started again (it should run)
    r = await manman(host, "server", "show", "df")  # the CLI says so
    line = next(x for x in r.stdout.decode().splitlines() if x.startswith("disk:"))
    assert "of 1 MiB (limits.disk_mb): over the limit" in line, line
    await api.post("/server/df/files/delete", {"path": "world.bin"}, expect=200)
    got = await api.wait_for("df", state="running", timeout=10)
    assert got["disk_full"] is None and got["error"] is None
    assert not (files / "world.bin").exists()
    await api.wait_line("df", "disk back under its limit", prefix=True)
    assert len(rx.on("/disk")) == 1
    # over again while stopped (the test writes the file): a person's start is refused,
    # and once freed it stays stopped until started
    await api.post("/server/df/command", {"type": "stop"}, expect=202)
    await api.wait_for("df", state="stopped")
    (files / "again.bin").write_bytes(os.urandom(2 * MIB))
    with trio.fail_after(10):
        while (await api.get("/server/df"))["disk_full"] is None:
            await trio.sleep(0.05)
    # the worker's own API refuses a start outright
    r = await w.api.request("POST", f"/server/{s['id']}/start")
    assert r.status_code == 409 and r.json()["error"]["code"] == "disk_full", r.text
    (files / "again.bin").unlink()
    with trio.fail_after(10):
        while (await api.get("/server/df"))["disk_full"] is not None:
            await trio.sleep(0.05)
    assert (await api.get("/server/df"))["state"] == "stopped"
    await api.post("/server/df/command", {"type": "start"}, expect=202)
    await api.wait_for("df", state="running")
    with trio.fail_after(10):
        while len(rx.on("/disk")) < 2:
            await trio.sleep(0.05)
    await api.post("/server/df/command", {"type": "stop"}, expect=202)
    await api.wait_for("df", state="stopped")


# -- a standalone worker: uploads, extracts, restores -------------------------------------


@pytest.fixture
async def worker(tmp_path: Path, bg: trio.Nursery) -> Any:
    from manman.worker.main import run_worker

    handle = await bg.start(run_worker, worker_config(tmp_path, disk_check_interval=0.2))
    w = RunningWorker(handle, Client(handle.url, "test-worker-token"))
    try:
        yield w
    finally:
        await w.shutdown()
        await w.api.aclose()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return out.getvalue()


async def _refused(r: Any) -> None:
    assert r.status_code == 507, r.text
    assert r.json()["error"]["code"] == "disk_limit", r.text


async def test_uploads_extracts_and_restores_over_the_limit_are_refused(
        worker: RunningWorker) -> None:
    api = worker.api
    s = await api.post("/server", fake_spec("up", limits={"disk_mb": 1}), expect=201)
    files = worker.agent.actors[s["id"]].files_dir
    files.mkdir(parents=True, exist_ok=True)
    (files / "keep.txt").write_bytes(b"x" * 300_000)
    # an upload declaring more than the room left: refused before a byte is written
    before = snapshot(files)
    r = await api.request("PUT", "/server/up/files/content", params={"path": "big.bin"},
                          content=os.urandom(900_000))
    await _refused(r)
    assert snapshot(files) == before
    assert not any(p.name.startswith(".manman-upload") for p in files.iterdir())
    # one that fits is written
    await api.request("PUT", "/server/up/files/content", 200, params={"path": "small.bin"},
                      content=os.urandom(100_000))
    # an archive that unpacks past the limit (a small file itself): refused whole
    archive = _tar_gz({"world/a.bin": bytes(600_000), "world/b.bin": bytes(600_000)})
    await api.request("PUT", "/server/up/files/content", 200, params={"path": "w.tar.gz"},
                      content=archive)
    before = snapshot(files)
    r = await api.request("POST", "/server/up/files/extract", json={"path": "w.tar.gz"})
    await _refused(r)
    assert snapshot(files) == before
    # one that fits is extracted
    await api.request("PUT", "/server/up/files/content", 200, params={"path": "s.tar.gz"},
                      content=_tar_gz({"a.bin": bytes(50_000)}))
    await api.post("/server/up/files/extract", {"path": "s.tar.gz"}, expect=200)
    assert (files / "s" / "a.bin").stat().st_size == 50_000
    # a backup taken under a larger limit unpacks past the smaller one
    await api.request("PUT", "/server/up", 200, json={"limits": {"disk_mb": 10}})
    (files / "big.bin").write_bytes(os.urandom(2 * MIB))
    b = await api.post("/server/up/backup", {"name": "big"}, expect=202)
    with trio.fail_after(20):
        while (b := await api.get(f"/server/up/backup/{b['id']}"))["state"] not in ("ok",
                                                                                    "failed"):
            await trio.sleep(0.05)
    assert b["state"] == "ok", b
    (files / "big.bin").unlink()
    await api.request("PUT", "/server/up", 200, json={"limits": {"disk_mb": 1}})
    before = snapshot(files)
    for truncate in (False, True):
        r = await api.request("POST", f"/server/up/backup/{b['id']}/restore",
                              json={"truncate": truncate})
        await _refused(r)
        assert snapshot(files) == before
    # with room again it restores
    await api.request("PUT", "/server/up", 200, json={"limits": {"disk_mb": 5}})
    await api.post(f"/server/up/backup/{b['id']}/restore", {"truncate": True}, expect=200)
    assert (files / "big.bin").stat().st_size == 2 * MIB
    # with no limit nothing is measured for these, nothing refused
    await api.request("PUT", "/server/up", 200, json={"limits": {}})
    await api.request("PUT", "/server/up/files/content", 200, params={"path": "huge.bin"},
                      content=os.urandom(6 * MIB))


async def test_the_disk_check_reads_only_what_changed(worker: RunningWorker) -> None:
    api = worker.api
    s = await api.post("/server", fake_spec("ck", limits={"disk_mb": 100}), expect=201)
    files = worker.agent.actors[s["id"]].files_dir
    for d in range(10):
        (files / f"d{d}").mkdir(parents=True)
        for f in range(30):
            (files / f"d{d}" / f"f{f}").write_bytes(b"y" * 5000)
    disk = worker.agent.disk
    assert disk is not None
    passes = disk.passes
    with trio.fail_after(10):
        while disk.passes < passes + 2 or disk.used(s["id"]) is None \
                or disk.used(s["id"]) < 300 * 5000:
            await trio.sleep(0.05)
    tree = disk.trees[s["id"]]
    walks, statted, passes = tree.walks, tree.statted, disk.passes
    (files / "d4" / "f0").write_bytes(b"z" * 50_000)
    with trio.fail_after(10):
        while disk.passes < passes + 2:
            await trio.sleep(0.05)
    assert tree.walks == walks  # no walk again
    assert tree.statted - statted == 30  # d4's entries, once
    from manman.worker.stats.disk import tree_bytes

    assert disk.used(s["id"]) == tree_bytes(str(files))


async def test_over_the_limit_across_a_worker_restart(tmp_path: Path, bg: trio.Nursery) -> None:
    from manman.worker.main import run_worker

    cfg = worker_config(tmp_path, disk_check_interval=0.2)
    handle = await bg.start(run_worker, cfg)
    w = RunningWorker(handle, Client(handle.url, "test-worker-token"))
    try:
        s = await w.api.post("/server", fake_spec("rs", limits={"disk_mb": 1},
                                                  desired_state="running"), expect=201)
        await w.api.wait_for("rs", state="running")
        files = w.agent.actors[s["id"]].files_dir
        (files / "fill.bin").write_bytes(os.urandom(2 * MIB))
        with trio.fail_after(10):
            while (await w.api.get("/server/rs"))["disk_full"] is None:
                await trio.sleep(0.05)
    finally:
        await w.shutdown()  # the desired state is kept: it should run again
        await w.api.aclose()
    handle = await bg.start(run_worker, cfg)
    w = RunningWorker(handle, Client(handle.url, "test-worker-token"))
    try:
        got = await w.api.wait_for("rs", state="stopped")
        await trio.sleep(0.5)  # checks made since: still over, still not started
        got = await w.api.get("/server/rs")
        assert got["state"] == "stopped" and got["disk_full"] is not None
        assert got["error"].startswith("over its disk limit")
        await w.api.post("/server/rs/files/delete", {"path": "fill.bin"}, expect=200)
        got = await w.api.wait_for("rs", state="running")
        assert got["disk_full"] is None
    finally:
        await w.shutdown()
        await w.api.aclose()
