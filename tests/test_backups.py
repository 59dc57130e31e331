"""Backups (issue 13, section 1): a standalone worker process running the fake game, each
result checked on the disk (the archive's members, the files after a restore, what is left in
backup_dir), and the same routes through a real host."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import zstandard

from manman import errors
from tests.conftest import Client, ManmanProcess, RunningHost, fake_spec
from tests.test_files import snapshot

TOKEN = "backup-test-token"


class Worker:
    def __init__(self, api: Client, data: Path, backups: Path) -> None:
        self.api = api
        self.data = data
        self.backups = backups

    def files(self, server_id: str) -> Path:
        return self.data / "servers" / server_id / "files"


async def start_worker(bg: trio.Nursery, tmp_path: Path, backup_dir: Path | None = None
                       ) -> tuple[ManmanProcess, Worker]:
    data = tmp_path / "worker"
    env = {"MANMAN_WORKER_HOST_URL": "", "MANMAN_WORKER_LISTEN": "127.0.0.1:0",
           "MANMAN_WORKER_DATA_DIR": str(data), "MANMAN_WORKER_API_TOKEN": TOKEN}
    if backup_dir is not None:
        env["MANMAN_WORKER_BACKUP_DIR"] = str(backup_dir)
    proc = ManmanProcess(["worker"], env=env)
    api = Client(await proc.start(bg), TOKEN)
    return proc, Worker(api, data, backup_dir or data / "backups")


@pytest.fixture
async def worker(tmp_path: Path, bg: trio.Nursery) -> Any:
    proc, w = await start_worker(bg, tmp_path)
    try:
        yield w
        await w.api.aclose()
    finally:
        proc.stop()
        if proc.proc is not None:
            await proc.wait()


async def put(api: Client, server: str, path: str, data: bytes) -> None:
    await api.request("PUT", f"/server/{server}/files/content", 200, params={"path": path},
                      content=data)


async def backup(api: Client, server: str, expect_state: str = "ok", timeout: float = 20,
                 **body: Any) -> dict[str, Any]:
    b = await api.post(f"/server/{server}/backup", body, expect=202)
    assert b["state"] in ("pending", "running")
    return await wait_backup(api, server, b["id"], expect_state, timeout)


async def wait_backup(api: Client, server: str, bid: str, expect_state: str = "ok",
                      timeout: float = 20) -> dict[str, Any]:
    last: dict[str, Any] = {}
    with trio.move_on_after(timeout):
        while True:
            last = await api.get(f"/server/{server}/backup/{bid}")
            if last["state"] in ("ok", "failed"):
                assert last["state"] == expect_state, last
                return last
            await trio.sleep(0.05)
    raise AssertionError(f"backup never finished: {last}")


def members(archive: bytes) -> dict[str, bytes | str]:
    """name → bytes (a file), 'dir', or 'link:TARGET'."""
    out: dict[str, bytes | str] = {}
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(archive))
    with tarfile.open(fileobj=raw, mode="r|") as tf:
        for ti in tf:
            if ti.isdir():
                out[ti.name] = "dir"
            elif ti.issym():
                out[ti.name] = "link:" + ti.linkname
            else:
                f = tf.extractfile(ti)
                assert f is not None
                out[ti.name] = f.read()
    return out


def stored(w: Worker, server_id: str) -> list[str]:
    d = w.backups / server_id
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


async def test_backup_with_hooks_ignore_download_and_restore(worker: Worker) -> None:
    api = worker.api
    spec = fake_spec("g", desired_state="running", backup={
        "before": [{"command": "say save-all", "wait_for": "^said: save-all$", "timeout": 5}],
        "after": [{"command": "say save-on"}]})
    s = await api.post("/server", spec, expect=201)
    sid = s["id"]
    await api.wait_for("g", state="running")
    files = worker.files(sid)
    world = os.urandom(200_000)
    await api.post("/server/g/files/mkdir", {"path": "world"}, expect=200)
    await put(api, "g", "world/level.dat", world)
    await put(api, "g", "server.properties", b"motd=hi\n")
    await put(api, "g", "debug.log", b"noise")
    await put(api, "g", ".manmanignore", b"*.log\ncache/\n")
    await api.post("/server/g/files/mkdir", {"path": "cache"}, expect=200)
    await put(api, "g", "cache/big", b"c" * 1000)
    outside = files.parent / "outside-secret"
    outside.write_text("secret")
    (files / "escape").symlink_to("/etc")  # made by the game: never followed, left out
    (files / "inside").symlink_to("server.properties")

    b = await backup(api, "g", name="first")
    assert b["name"] == "first" and b["bytes"] > 0 and len(b["sha256"]) == 64
    assert b["error"] is None and b["finished_at"] >= b["created_at"]
    before = await api.wait_line("g", "said: save-all")
    after = await api.wait_line("g", "said: save-on")
    assert after["seq"] > before["seq"]
    r = await api.request("GET", f"/server/g/backup/{b['id']}/download", 200)
    assert r.headers["content-type"] == "application/zstd"
    assert len(r.content) == b["bytes"]
    import hashlib
    assert hashlib.sha256(r.content).hexdigest() == b["sha256"]
    got = members(r.content)
    assert got == {".manmanignore": b"*.log\ncache/\n", "inside": "link:server.properties",
                   "server.properties": b"motd=hi\n", "world": "dir",
                   "world/level.dat": world}
    listed = (await api.get("/server/g/backup"))["backups"]
    assert [x["id"] for x in listed] == [b["id"]]
    assert stored(worker, sid) == [f"{b['id']}.tar.zst"]

    # restore: 409 while running; then merged over what is there, or over an emptied tree
    r = await api.post(f"/server/g/backup/{b['id']}/restore", {}, expect=409)
    assert r["error"]["code"] == "invalid_state"
    await api.post("/server/g/shutdown", expect=202)
    await api.wait_for("g", state="stopped")
    await put(api, "g", "server.properties", b"motd=changed\n")
    await put(api, "g", "world/level.dat", b"corrupted world")
    await put(api, "g", "new.txt", b"made after the backup")
    await api.post(f"/server/g/backup/{b['id']}/restore", {}, expect=200)
    assert (files / "server.properties").read_bytes() == b"motd=hi\n"
    assert (files / "world" / "level.dat").read_bytes() == world
    assert (files / "new.txt").exists() and (files / "debug.log").exists()
    await api.post(f"/server/g/backup/{b['id']}/restore", {"truncate": True}, expect=200)
    assert sorted(p.name for p in files.iterdir()) == [".manmanignore", "inside",
                                                       "server.properties", "world"]
    assert outside.read_text() == "secret"
    await api.post("/server/g/start", expect=202)
    await api.wait_for("g", state="running")


async def test_hook_timeout_fails_and_after_still_runs(worker: Worker) -> None:
    api = worker.api
    spec = fake_spec("g", desired_state="running", backup={
        "before": [{"command": "say flush", "wait_for": "^never$", "timeout": 0.5}],
        "after": [{"command": "say after-ran"}]})
    s = await api.post("/server", spec, expect=201)
    await api.wait_for("g", state="running")
    b = await backup(api, "g", expect_state="failed")
    assert "no console line matched '^never$' within 0.5s" in b["error"], b
    await api.wait_line("g", "said: after-ran")
    assert stored(worker, s["id"]) == []
    r = await api.request("GET", f"/server/g/backup/{b['id']}/download", 409)
    assert r.json()["error"]["code"] == "backup_not_ok"
    # stop_during: stopped for the backup, started again as it ran
    pid = (await api.get("/server/g"))["pid"]
    await api.request("PUT", "/server/g", 200, json={"backup": {"stop_during": True}})
    b = await backup(api, "g")
    s = await api.wait_for("g", state="running")
    assert s["pid"] != pid


async def test_retention_and_lock(worker: Worker) -> None:
    api = worker.api
    s = await api.post("/server", fake_spec("g", backup={"keep_last": 2}), expect=201)
    sid = s["id"]
    await put(api, "g", "a", b"a")
    locked = await backup(api, "g", locked=True)
    made = [await backup(api, "g") for _ in range(3)]
    ids = [x["id"] for x in (await api.get("/server/g/backup"))["backups"]]
    assert ids == [locked["id"], made[2]["id"]]  # oldest unlocked pruned; the locked kept
    assert stored(worker, sid) == sorted(f"{i}.tar.zst" for i in ids)
    r = await api.request("DELETE", f"/server/g/backup/{locked['id']}", 409)
    assert r.json()["error"]["code"] == "locked"
    b = (await api.request("PUT", f"/server/g/backup/{locked['id']}", 200,
                           json={"locked": False})).json()
    assert b["locked"] is False
    await api.request("DELETE", f"/server/g/backup/{locked['id']}", 200)
    assert stored(worker, sid) == [f"{made[2]['id']}.tar.zst"]
    await api.request("DELETE", f"/server/g/backup/{locked['id']}", 404)
    await api.request("PUT", f"/server/g/backup/{made[2]['id']}", 422, json={"locked": 1})


async def test_a_purge_takes_the_servers_backups_and_only_its(worker: Worker) -> None:
    api = worker.api
    gone = (await api.post("/server", fake_spec("gone"), expect=201))["id"]
    kept = (await api.post("/server", fake_spec("kept"), expect=201))["id"]
    for name in ("gone", "kept"):
        await put(api, name, "a", b"a")
    await backup(api, "gone", locked=True)
    await backup(api, "gone")
    mine = await backup(api, "kept")
    await api.request("DELETE", "/server/gone?purge=true", 200)
    # the archives (locked ones too), their directory and their rows are gone
    assert not (worker.backups / gone).exists()
    import sqlite3

    with sqlite3.connect(worker.data / "worker.sqlite3") as db:
        rows = [json.loads(r[0]) for r in db.execute("SELECT record FROM backups")]
    assert [(r["server_id"], r["id"]) for r in rows] == [(kept, mine["id"])]
    assert stored(worker, kept) == [f"{mine['id']}.tar.zst"]
    assert [b["id"] for b in (await api.get("/server/kept/backup"))["backups"]] == [mine["id"]]


async def test_one_at_a_time_and_a_corrupt_archive(worker: Worker) -> None:
    api = worker.api
    # 64 KiB/s of incompressible bytes: the backup takes seconds
    s = await api.post("/server", fake_spec("g", backup={"write_limit": 0.0625}),
                       expect=201)
    sid = s["id"]
    files = worker.files(sid)
    await put(api, "g", "world.dat", os.urandom(200_000))
    first = await api.post("/server/g/backup", {}, expect=202)
    r = await api.post("/server/g/backup", {}, expect=409)
    assert r["error"]["code"] == "backup_running"
    r = await api.request("DELETE", f"/server/g/backup/{first['id']}", 409)
    with trio.fail_after(2):  # the worker answers while the archive is being written
        await api.get("/server/g")
    first = await wait_backup(api, "g", first["id"])
    assert first["finished_at"] - first["created_at"] >= 2  # 200 kB at 64 KiB/s: paced
    # damage the stored archive: the restore fails and leaves every file as it was
    await put(api, "g", "after.txt", b"after")
    archive = worker.backups / sid / f"{first['id']}.tar.zst"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    before = snapshot(files)
    r = await api.post(f"/server/g/backup/{first['id']}/restore", {"truncate": True},
                       expect=422)
    assert r["error"]["code"] == "corrupt_backup"
    assert "nothing was restored" in r["error"]["message"]
    assert snapshot(files) == before
    assert (await api.get(f"/server/g/backup/{first['id']}"))["state"] == "failed"
    await api.post(f"/server/g/backup/{first['id']}/restore", {}, expect=409)


async def test_a_full_disk_fails_the_backup_and_leaves_the_game(
        tiny_disk: Any, tmp_path: Path, bg: trio.Nursery) -> None:
    proc, w = await start_worker(bg, tmp_path, tiny_disk.path / "backups")
    try:
        api = w.api
        s = await api.post("/server", fake_spec("g", desired_state="running"), expect=201)
        running = await api.wait_for("g", state="running")
        await put(api, "g", "world.dat", os.urandom(2_000_000))  # more than the 512k disk
        b = await backup(api, "g", expect_state="failed")
        assert b["error"].startswith("disk full in backup_dir"), b
        assert list((w.backups / s["id"]).iterdir()) == []  # the partial file removed
        after = await api.get("/server/g")
        assert (after["state"], after["pid"]) == ("running", running["pid"])
        assert (w.files(s["id"]) / "world.dat").stat().st_size == 2_000_000
        await api.aclose()
    finally:
        proc.stop()
        if proc.proc is not None:
            await proc.wait()


async def test_backups_through_the_host(host: RunningHost, hosted: Any) -> None:
    w = await hosted("bw")
    api = host.api
    wid = (await api.get("/worker"))["workers"][0]["id"]
    await api.post("/server", fake_spec("s", worker_id=wid), expect=201)
    sid = (await api.get("/server/s"))["id"]
    await w.api.wait_for(sid)
    await put(api, "s", "level.dat", b"level")
    b = await backup(api, "s", name="via-host")
    r = await api.request("GET", f"/server/s/backup/{b['id']}/download", 200)
    assert members(r.content) == {"level.dat": b"level"}
    # an id no worker route can hold is 404 at the host, never a call gone wrong (503)
    for bad in ("%01x", "a%2Fb", "%25", "%2E%2E"):
        for method, path in (("GET", f"/server/s/backup/{bad}"),
                             ("GET", f"/server/s/backup/{bad}/download"),
                             ("POST", f"/server/s/schedule/{bad}/run")):
            r = await api.request(method, path)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
    from manman.host.relay import checked_path

    with pytest.raises(errors.NotFound):  # what a raw client may send unnormalized
        checked_path("/server/s/backup/../restore")
    assert [x["name"] for x in (await api.get("/server/s/backup"))["backups"]] == ["via-host"]
    await api.request("PUT", f"/server/s/backup/{b['id']}", 200, json={"locked": True})
    await put(api, "s", "level.dat", b"changed")
    await api.post(f"/server/s/backup/{b['id']}/restore", {}, expect=200)
    assert (await api.request("GET", "/server/s/files/content", 200,
                              params={"path": "level.dat"})).content == b"level"
    await api.request("GET", "/server/s/backup/nope/download", 404)
    second = await backup(api, "s", name="second")
    listed = (await api.get("/server/s/backup"))["backups"]
    # the worker's reports reach the host's PostgreSQL copy of the list
    with trio.fail_after(10):
        while [row["record"] for row in await host.control.store.fetch(
                "SELECT record FROM backups WHERE server_id = $1 "
                "ORDER BY record->>'created_at'", sid)] != listed:
            await trio.sleep(0.05)
    await w.shutdown()
    with trio.fail_after(15):
        while (await api.get(f"/worker/{wid}"))["status"] == "alive":
            await trio.sleep(0.1)
    # the worker away: the list as it last reported it; anything else 503
    assert (await api.get("/server/s/backup"))["backups"] == listed
    assert [x["name"] for x in listed] == ["via-host", "second"] and listed[0]["locked"]
    for r in [await api.post("/server/s/backup", {}, expect=503),
              (await api.request("GET", f"/server/s/backup/{second['id']}/download",
                                 503)).json(),
              await api.post(f"/server/s/backup/{b['id']}/restore", {}, expect=503)]:
        assert r["error"]["code"] == "unavailable"
    await api.request("POST", f"/server/{sid}/backup-report", 403,  # workers only
                          json={"backups": []})


def test_writer_paths_and_what_it_leaves_out(tmp_path: Path) -> None:
    import threading

    from manman.worker.backups.writer import write_backup

    files = tmp_path / "files"
    (files / "world" / "region").mkdir(parents=True)
    (files / "world" / "region" / "r.mca").write_bytes(b"r")
    (files / "world" / "level.dat").write_bytes(b"level")
    (files / "config.txt").write_bytes(b"config")
    (tmp_path / "outside").write_text("secret")
    os.link(tmp_path / "outside", files / "world" / "hardlink")  # its other name is outside
    os.mkfifo(files / "world" / "fifo")
    (files / "world" / "up").symlink_to("../../outside")
    (files / ".manmanignore").write_text("region/\n")
    out = tmp_path / "b" / "x.tar.zst"
    w = write_backup(files, out, ["world", "missing/path"], 0, threading.Event())
    assert w.skipped == 3 and w.bytes == out.stat().st_size
    assert members(out.read_bytes()) == {"world": "dir", "world/level.dat": b"level"}
    assert os.listdir(out.parent) == ["x.tar.zst"]


def test_retention_rules() -> None:
    from manman.models import BackupSpec
    from manman.worker.backups.model import Backup
    from manman.worker.backups.retention import DAY, to_prune

    now = 100 * DAY

    def b(i: int, age_days: float, size: int = 10, locked: bool = False,
          state: str = "ok") -> Backup:
        return Backup(id=str(i), server_id="s", name=str(i), state=state,  # type: ignore
                      bytes=size, locked=locked, created_at=now - age_days * DAY)

    all_ = [b(1, 10, locked=True), b(2, 9), b(3, 8, state="failed"), b(4, 2), b(5, 1),
            b(6, 0)]
    ids = lambda spec: [x.id for x in to_prune(all_, spec, now)]  # noqa: E731
    assert ids(BackupSpec()) == []
    assert ids(BackupSpec(keep_last=3)) == ["2", "4"]
    assert ids(BackupSpec(keep_last=1)) == ["2", "4", "5"]  # the locked one stays
    assert ids(BackupSpec(keep_days=1.5)) == ["2", "4"]
    assert ids(BackupSpec(max_bytes=25)) == ["2", "4", "5"]
    assert ids(BackupSpec(max_bytes=1)) == ["2", "4", "5"]  # the newest is always kept


def test_failed_records_beyond_the_newest_few_are_forgotten() -> None:
    from manman.worker.backups.model import Backup
    from manman.worker.backups.retention import MAX_FAILED, failed_to_forget

    def b(i: int, state: str = "failed", locked: bool = False) -> Backup:
        return Backup(id=str(i), server_id="s", name=str(i), state=state,  # type: ignore
                      locked=locked, created_at=float(i))

    backups = [b(0, locked=True), b(1, "ok")] + [b(i) for i in range(2, MAX_FAILED + 5)]
    assert [x.id for x in failed_to_forget(backups)] == ["2", "3", "4"]
    assert failed_to_forget(backups[:MAX_FAILED]) == []


async def test_cli_backup_verbs(host: RunningHost, hosted: Any, tmp_path: Path) -> None:
    import json

    from tests.test_cli import manman, out

    w = await hosted("cb")
    s = await host.api.post("/server", fake_spec("s", worker_id=w.handle.link.worker_id),
                            expect=201)
    await w.api.wait_for(s["id"])
    files = tmp_path / "cb" / "servers" / s["id"] / "files"
    files.mkdir(parents=True, exist_ok=True)
    (files / "level.dat").write_bytes(b"level")
    r = await manman(host, "backup", "create", "s", "--name", "one", "--json")
    assert r.returncode == 0, r.stderr
    b = json.loads(out(r))
    assert (b["name"], b["state"]) == ("one", "ok")
    r = await manman(host, "backup", "ls", "s")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in out(r).splitlines()]
    assert rows[0][:2] == ["ID", "STATE"] and rows[1][:2] == [b["id"], "ok"]
    assert rows[1][-1] == "one"
    r = await manman(host, "backup", "lock", "s", b["id"])
    assert r.returncode == 0 and "locked" in out(r), r.stderr
    r = await manman(host, "backup", "rm", "s", b["id"])
    assert r.returncode == 1 and b"(409 locked)" in r.stderr
    r = await manman(host, "backup", "unlock", "s", b["id"])
    assert r.returncode == 0, r.stderr
    dest = tmp_path / "b.tar.zst"
    r = await manman(host, "backup", "download", "s", b["id"], "-o", str(dest))
    assert r.returncode == 0, r.stderr
    assert members(dest.read_bytes()) == {"level.dat": b"level"}
    (files / "level.dat").write_bytes(b"changed")
    (files / "extra").write_bytes(b"extra")
    r = await manman(host, "backup", "restore", "s", b["id"], "--truncate")
    assert r.returncode == 0 and out(r).strip() == f"restored one ({b['id']})", r.stderr
    assert sorted(p.name for p in files.iterdir()) == ["level.dat"]
    assert (files / "level.dat").read_bytes() == b"level"
    r = await manman(host, "backup", "rm", "s", b["id"])
    assert r.returncode == 0, r.stderr
    r = await manman(host, "backup", "download", "s", b["id"])
    assert r.returncode == 1 and b"(404 not_found)" in r.stderr


def test_restore_refuses_bad_members_and_damage_whole(tmp_path: Path) -> None:
    import hashlib
    import threading

    from manman import errors
    from manman.worker.backups.restore import Corrupt, restore_backup

    files = tmp_path / "files"
    files.mkdir()
    (files / "keep").write_bytes(b"keep")
    (tmp_path / "evil").write_bytes(b"untouched")
    before, outside = snapshot(files), (tmp_path / "evil").read_bytes()

    def archive(entries: list[tuple[str, bytes | str]]) -> tuple[Path, str]:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tf:
            for name, what in entries:
                ti = tarfile.TarInfo(name)
                if isinstance(what, str):
                    ti.type, ti.linkname = tarfile.SYMTYPE, what
                    tf.addfile(ti)
                else:
                    ti.size = len(what)
                    tf.addfile(ti, io.BytesIO(what))
        data = zstandard.ZstdCompressor(level=3).compress(raw.getvalue())
        path = tmp_path / f"a{len(list(tmp_path.iterdir()))}.tar.zst"
        path.write_bytes(data)
        return path, hashlib.sha256(data).hexdigest()

    cancel = threading.Event()
    for bad in ([("ok", b"1"), ("../evil", b"owned")], [("ok", b"1"), ("/abs", b"x")],
                [("ok", b"1"), ("up", "../../evil")]):
        path, sha = archive(bad)
        with pytest.raises(errors.Invalid) as e:
            restore_backup(path, sha, files, True, cancel)
        assert not isinstance(e.value, Corrupt), e.value
        assert snapshot(files) == before and (tmp_path / "evil").read_bytes() == outside
    path, sha = archive([("ok", b"1" * 100_000), ("keep", b"new")])
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # cut short: the stream breaks half-way
    with pytest.raises(Corrupt, match="sha256"):
        restore_backup(path, sha, files, True, cancel)
    assert snapshot(files) == before
    path.write_bytes(whole)
    restore_backup(path, sha, files, False, cancel)
    assert (files / "keep").read_bytes() == b"new" and (files / "ok").stat().st_size == 100_000
    assert sorted(p.name for p in files.iterdir()) == ["keep", "ok"]


async def test_a_backup_cut_short_by_the_worker_dying_is_failed_at_the_next_start(
        tmp_path: Path, bg: trio.Nursery) -> None:
    proc, w = await start_worker(bg, tmp_path)
    proc2: ManmanProcess | None = None
    try:
        s = await w.api.post("/server", fake_spec("g", backup={"write_limit": 0.0625}),
                             expect=201)
        await put(w.api, "g", "world.dat", os.urandom(300_000))
        b = await w.api.post("/server/g/backup", {}, expect=202)
        partial = w.backups / s["id"] / f".{b['id']}.tar.zst.partial"
        with trio.fail_after(5):
            while not partial.exists():
                await trio.sleep(0.02)
        proc.kill9()
        await proc.wait()
        await w.api.aclose()
        proc2, w = await start_worker(bg, tmp_path)
        got = await w.api.get(f"/server/g/backup/{b['id']}")
        assert (got["state"], got["error"]) == ("failed", "the worker stopped during the backup")
        assert stored(w, s["id"]) == []
        await backup(w.api, "g", expect_state="ok", timeout=30)  # and the next one works
        await w.api.aclose()
    finally:
        for p in (proc, proc2):
            if p is not None:
                p.stop()
                if p.proc is not None:
                    await p.wait()


async def test_failed_backups_do_not_pile_up(worker: Worker) -> None:
    """A backup that keeps failing (a schedule every minute, a hook never answered) leaves
    a record each time: only the newest MAX_FAILED stay (and locked ones), or the list,
    the worker's store and every backup report grow without end."""
    from manman.worker.backups.retention import MAX_FAILED

    api = worker.api
    await api.post("/server", fake_spec("pf", desired_state="running", backup={
        "before": [{"command": "say x", "wait_for": "^never$", "timeout": 0.01}]}),
        expect=201)
    await api.wait_for("pf", state="running")
    locked = await backup(api, "pf", expect_state="failed", locked=True)
    made = [(await backup(api, "pf", expect_state="failed"))["id"]
            for _ in range(MAX_FAILED + 3)]
    left = [b["id"] for b in (await api.get("/server/pf/backup"))["backups"]]
    assert left == [locked["id"], *made[-MAX_FAILED:]], left


async def test_a_worker_cannot_overwrite_another_servers_backup_record(
        host: RunningHost, hosted: Any) -> None:
    """The host keeps each server's reported backups by id: a report of one worker's
    server naming a backup id of another worker's server changes nothing of that one."""
    wa, wb = await hosted("ba"), await hosted("bb")
    api = host.api
    await api.post("/server", fake_spec("sa", worker_id=wa.handle.link.worker_id), expect=201)
    await api.post("/server", fake_spec("sb", worker_id=wb.handle.link.worker_id), expect=201)
    sa, sb = (await api.get("/server/sa"))["id"], (await api.get("/server/sb"))["id"]
    await wa.api.wait_for(sa)
    await wb.api.wait_for(sb)
    b = await backup(api, "sa", name="real")
    with trio.fail_after(10):
        while not await host.control.store.fetch("SELECT 1 FROM backups WHERE id = $1",
                                                 b["id"]):
            await trio.sleep(0.05)
    wid = wb.handle.link.worker_id
    token = host.handle.secrets.worker_token(wid, 1)
    forged = {**b, "server_id": sb, "name": "forged"}
    await api.http.post(f"/server/{sb}/backup-report", json={"backups": [forged]},
                        headers={"Authorization": f"Bearer {token}"})
    rows = await host.control.store.fetch("SELECT server_id, record FROM backups "
                                          "WHERE id = $1", b["id"])
    assert [(r["server_id"], r["record"]["name"]) for r in rows] == [(sa, "real")], rows


def test_writer_paced_then_cancelled_leaves_nothing(tmp_path: Path) -> None:
    import threading
    import time

    from manman.worker.backups.writer import BackupCancelled, write_backup

    files = tmp_path / "files"
    files.mkdir()
    (files / "noise").write_bytes(os.urandom(4 << 20))  # incompressible: 4 MiB to write
    out = tmp_path / "b" / "x.tar.zst"
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    began = time.monotonic()
    with pytest.raises(BackupCancelled):
        write_backup(files, out, [], 1.0, cancel)  # 1 MiB/s: 4 s if not cancelled
    assert time.monotonic() - began < 2.5
    assert os.listdir(out.parent) == []


async def test_a_start_during_a_restore_waits_for_it_or_is_refused(
        host: RunningHost, hosted: Any, tmp_path: Path) -> None:
    """The stored archive is swapped for a fifo the test feeds, so the restore lasts exactly
    as long as the test wants. Meanwhile a client's start on the worker is 409 restoring,
    and the host's start (a desired state, which the worker cannot refuse) waits, the
    server `starting` with the reason; once the restore ends the game starts on its
    restored files."""
    w = await hosted("rw")
    api = host.api
    wid = (await api.get("/worker"))["workers"][0]["id"]
    await api.post("/server", fake_spec("s", worker_id=wid), expect=201)
    sid = (await api.get("/server/s"))["id"]
    await w.api.wait_for(sid)
    await put(api, "s", "level.dat", b"level")
    b = await backup(api, "s")
    await put(api, "s", "level.dat", b"changed")
    [archive] = list(tmp_path.rglob(f"{b['id']}.tar.zst"))
    data = archive.read_bytes()
    archive.unlink()
    os.mkfifo(archive)
    restored: dict[str, Any] = {}

    async def restore() -> None:
        restored["answer"] = await api.post(f"/server/s/backup/{b['id']}/restore", {},
                                            expect=200)
        restored["at"] = time.time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(restore)
        # opening the fifo for writing waits for the restore to open it for reading
        with trio.fail_after(10):
            fd = await trio.to_thread.run_sync(os.open, str(archive), os.O_WRONLY)
        try:
            await trio.to_thread.run_sync(os.write, fd, data[:len(data) // 2])
            r = await w.api.request("PUT", f"/server/{sid}", 409,
                                    json={"desired_state": "running"})
            assert r.json()["error"]["code"] == "restoring"
            r = await w.api.request("POST", f"/server/{sid}/start", 409)
            assert r.json()["error"]["code"] == "restoring"
            await api.post("/server/s/command", {"type": "start"}, expect=202)
            s = await api.wait_for("s", state="starting")
            assert "waiting for the restore" in (s["error"] or "") and s["pid"] is None
            await trio.sleep(0.5)
            s = await api.get("/server/s")
            assert s["state"] == "starting" and s["pid"] is None
            await trio.to_thread.run_sync(os.write, fd, data[len(data) // 2:])
        finally:
            os.close(fd)
    s = await api.wait_for("s", state="running")
    assert s["error"] is None and s["started_at"] >= restored["at"] - 1
    assert (await api.request("GET", "/server/s/files/content", 200,
                              params={"path": "level.dat"})).content == b"level"


async def test_backup_progress_on_a_terminal(host: RunningHost, hosted: Any) -> None:
    """A paced backup: its record shows the bytes read so far against the files' size, and
    `manman backup create` on a terminal draws them as a bar; restore shows a spinner."""
    from tests.conftest import ADMIN, PYTHON, on_a_terminal

    w = await hosted("bp")
    await host.api.post("/server", fake_spec("p", worker_id=w.handle.link.worker_id,
                                             backup={"write_limit": 0.5}), expect=201)
    sid = (await host.api.get("/server/p"))["id"]
    await w.api.wait_for(sid)
    await put(host.api, "p", "noise.bin", os.urandom(1_500_000))  # 3 s at 0.5 MiB/s
    cli = [PYTHON, "-m", "manman", "backup", "create", "--host-url", host.url, "--token",
           ADMIN, "p", "--name", "paced"]
    seen: list[dict[str, Any]] = []

    async def watch() -> None:
        while True:
            for b in (await host.api.get("/server/p/backup"))["backups"]:
                if b["state"] == "running":
                    seen.append(await host.api.get(f"/server/p/backup/{b['id']}"))
            await trio.sleep(0.2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        code, drawn = await on_a_terminal(cli)
        nursery.cancel_scope.cancel()
    assert code == 0, drawn
    assert "backup paced" in drawn and "MB" in drawn and "%" in drawn, drawn
    running = [b for b in seen if b["state"] == "running"]
    assert running and all(b["total_bytes"] and b["total_bytes"] >= 1_500_000
                           for b in running), seen
    assert 0 < max(b["read_bytes"] for b in running) <= 1_500_000
    done = (await host.api.get("/server/p/backup"))["backups"][-1]
    assert done["state"] == "ok" and done["read_bytes"] == 1_500_000
    assert done["total_bytes"] is None
    code, drawn = await on_a_terminal(
        [PYTHON, "-m", "manman", "backup", "restore", "--host-url", host.url, "--token",
         ADMIN, "p", done["id"]])
    assert code == 0 and f"restored paced ({done['id']})" in drawn, drawn


async def test_stop_during_leaves_a_server_that_was_not_running_stopped(worker: Worker
                                                                        ) -> None:
    api = worker.api
    await api.post("/server", fake_spec("g", backup={"stop_during": True}), expect=201)
    await put(api, "g", "world.dat", b"w" * 1000)
    before = await api.get("/server/g")
    assert before["state"] in ("created", "stopped") and before["pid"] is None
    b = await backup(api, "g")
    assert b["bytes"] > 0
    await trio.sleep(0.5)  # a start after the backup would have begun by now
    after = await api.get("/server/g")
    assert after["state"] == before["state"] and after["pid"] is None, after
    assert after["started_at"] == before["started_at"]
    # and one that is running is started again (the other half, for contrast)
    await api.post("/server/g/start", expect=202)
    running = await api.wait_for("g", state="running")
    await backup(api, "g")
    again = await api.wait_for("g", state="running")
    assert again["pid"] != running["pid"]
