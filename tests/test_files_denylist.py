"""A spec's `file_denylist`: a standalone worker process refuses (403 `denied`) every read and
write of a denied path through the file manager, and the disk shows nothing changed."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import trio

from manman import errors
from manman.host.relay import worker_error
from manman.worker.files.denylist import Denylist
from tests.conftest import Client, ManmanProcess, fake_spec
from tests.test_files import snapshot

TOKEN = "denylist-test-token"
DENY = [".rcon-cli.env", "config/secret*", "*.key"]


@pytest.fixture
async def worker(tmp_path: Path, bg: trio.Nursery) -> Any:
    env = {"MANMAN_WORKER_HOST_URL": "", "MANMAN_WORKER_LISTEN": "127.0.0.1:0",
           "MANMAN_WORKER_DATA_DIR": str(tmp_path / "worker"),
           "MANMAN_WORKER_API_TOKEN": TOKEN}
    proc = ManmanProcess(["worker"], env=env)
    try:
        api = Client(await proc.start(bg), TOKEN)
        s = await api.post("/server", fake_spec("s", file_denylist=DENY), expect=201)
        assert s["file_denylist"] == DENY
        files = tmp_path / "worker" / "servers" / s["id"] / "files"
        (files / "config").mkdir(parents=True)
        (files / "config" / "secret.txt").write_text("password=hunter2\n")
        (files / "config" / "game.ini").write_text("x=1\n")
        (files / "deep" / "er").mkdir(parents=True)
        (files / "deep" / "er" / ".rcon-cli.env").write_text("password=x\n")
        (files / "tls.key").write_text("KEY\n")
        yield api, files
        await api.aclose()
    finally:
        proc.stop()
        if proc.proc is not None:
            await proc.wait()


def test_matching() -> None:
    d = Denylist(DENY)
    assert d.match(("config", "secret.txt")) == "config/secret*"
    assert d.match(("a", "b", ".rcon-cli.env")) == ".rcon-cli.env"  # no `/`: any depth
    assert d.match(("a", "b.key")) == "*.key"  # `*` crosses `/`
    assert d.match(("config", "game.ini")) is None and d.match(()) is None
    assert Denylist(["logs"]).match(("logs", "latest.log")) == "logs"  # below a denied dir
    assert not Denylist()


def test_host_passes_the_refusal_on() -> None:
    body = json.dumps({"error": {"code": "denied", "message": "m"}}).encode()
    e = worker_error(403, body)
    assert isinstance(e, errors.Forbidden) and e.code == "denied"
    other = json.dumps({"error": {"code": "forbidden", "message": "m"}}).encode()
    assert isinstance(worker_error(403, other), errors.WorkerError)


def _tar(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for n in names:
            info = tarfile.TarInfo(n)
            info.size = 2
            t.addfile(info, io.BytesIO(b"hi"))
    return buf.getvalue()


async def test_denied_paths_are_neither_read_nor_written(worker: Any) -> None:
    api, files = worker
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("ok.txt", "fine")
        z.writestr("sub/evil.key", "planted")
    (files / "bad.zip").write_bytes(zipped.getvalue())
    (files / "bad.tar").write_bytes(_tar(["a.txt", "x/.rcon-cli.env"]))
    before = snapshot(files)

    async def refused(method: str, path: str, **kw: Any) -> None:
        r = await api.request(method, path, 403, **kw)
        assert r.json()["error"]["code"] == "denied", r.text

    content = "/server/s/files/content"
    for p in ("config/secret.txt", "deep/er/.rcon-cli.env", "tls.key"):
        await refused("GET", content, params={"path": p})
        await refused("PUT", content, params={"path": p}, content=b"overwritten")
        await refused("POST", "/server/s/files/delete", json={"path": p})
        await refused("POST", "/server/s/files/rename", json={"from": p, "to": "stolen"})
        await refused("POST", "/server/s/files/archive", json={"to": "a.zip", "paths": [p]})
    await refused("PUT", content, params={"path": "new.key"}, content=b"k")
    await refused("PUT", content, params={"path": "config/secret-new"}, content=b"k")
    await refused("POST", "/server/s/files/mkdir", json={"path": "x.key"})
    await refused("POST", "/server/s/files/rename",
                  json={"from": "config/game.ini", "to": "config/secret.ini"})
    await refused("POST", "/server/s/files/rename", json={"from": "config", "to": "cfg"})
    await refused("POST", "/server/s/files/delete", json={"path": "deep"})
    await refused("POST", "/server/s/files/extract", json={"path": "bad.zip", "to": "out"})
    await refused("POST", "/server/s/files/extract", json={"path": "bad.tar", "to": "out2"})
    await refused("POST", "/server/s/files/extract", json={"path": "bad.tar", "to": "z.key"})
    await refused("GET", "/server/s/files", params={"path": "deep/er/.rcon-cli.env"})
    assert snapshot(files) == before  # nothing read, written, moved or left half-extracted

    # what is not denied works; a directory's listing still shows a denied name
    listed = await api.get("/server/s/files", params={"path": "config"})
    assert [e["name"] for e in listed["entries"]] == ["game.ini", "secret.txt"]
    r = await api.request("GET", content, 200, params={"path": "config/game.ini"})
    assert r.content == b"x=1\n"
    # an archive of a directory leaves the denied files out
    await api.post("/server/s/files/archive", {"to": "all.tar", "paths": []}, expect=200)
    with tarfile.open(files / "all.tar") as t:
        names = set(t.getnames())
    assert "config/game.ini" in names and "bad.zip" in names
    assert not names & {"config/secret.txt", "deep/er/.rcon-cli.env", "tls.key"}

    # a spec change lifts the denylist at once: the next call reads the spec anew
    await api.request("PUT", "/server/s", 200, json={"file_denylist": []})
    r = await api.request("GET", content, 200, params={"path": "tls.key"})
    assert r.content == b"KEY\n"


async def test_the_host_relays_denied(host: Any, hosted: Any, tmp_path: Path) -> None:
    """Through the host, a denied path is the caller's 403 `denied`, not a 502."""
    await hosted("dw")
    api = host.api
    wid = (await api.get("/worker"))["workers"][0]["id"]
    s = await api.post("/server", fake_spec("d", worker_id=wid, file_denylist=["*.key"]),
                       expect=201)
    files = tmp_path / "dw" / "servers" / s["id"] / "files"
    files.mkdir(parents=True, exist_ok=True)
    (files / "tls.key").write_text("KEY\n")
    with trio.fail_after(10):
        while True:  # the worker has the spec once the create converged
            r = await api.request("GET", "/server/d/files/content", None,
                                  params={"path": "tls.key"})
            if r.status_code != 404 and r.status_code != 503:
                break
            await trio.sleep(0.05)
    assert r.status_code == 403 and r.json()["error"]["code"] == "denied", r.text
    r = await api.request("PUT", "/server/d/files/content", 403, params={"path": "x.key"},
                          content=b"k")
    assert r.json()["error"]["code"] == "denied"
    assert sorted(p.name for p in files.iterdir()) == ["tls.key"]
    assert (files / "tls.key").read_text() == "KEY\n"
