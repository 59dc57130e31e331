"""The file manager: a standalone worker process and a real host, each attack checked on the
disk afterwards (what is outside the files directory is unchanged, nothing new appears)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio

from tests.conftest import Client, ManmanProcess, RunningHost, fake_spec

TOKEN = "files-test-token"
MAX_UPLOAD = 1 << 20


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` (links not followed) → what it is and holds."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p)] = "dir"
    return out


class Standalone:
    def __init__(self, api: Client, files: Path, outside: Path) -> None:
        self.api = api
        self.files = files
        self.outside = outside


@pytest.fixture
async def standalone(tmp_path: Path, bg: trio.Nursery) -> Any:
    """`manman worker` as a process, one server `s` whose files directory exists, and an
    `outside` directory beside it holding a secret."""
    env = {"MANMAN_WORKER_HOST_URL": "", "MANMAN_WORKER_LISTEN": "127.0.0.1:0",
           "MANMAN_WORKER_DATA_DIR": str(tmp_path / "worker"),
           "MANMAN_WORKER_API_TOKEN": TOKEN,
           "MANMAN_WORKER_FILES_MAX_UPLOAD": str(MAX_UPLOAD)}
    proc = ManmanProcess(["worker"], env=env)
    try:
        api = Client(await proc.start(bg), TOKEN)
        s = await api.post("/server", fake_spec("s"), expect=201)
        files = tmp_path / "worker" / "servers" / s["id"] / "files"
        files.mkdir(parents=True, exist_ok=True)
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "secret").write_text("top secret\n")
        yield Standalone(api, files, outside)
        await api.aclose()
    finally:
        proc.stop()
        if proc.proc is not None:
            await proc.wait()


async def put(api: Client, path: str, data: bytes, expect: int = 200, **kw: Any) -> Any:
    r = await api.request("PUT", "/server/s/files/content", expect, params={"path": path},
                          content=data, **kw)
    return r.json()


async def ls(api: Client, path: str = "", expect: int = 200, **params: Any) -> Any:
    return await api.get("/server/s/files", expect, params={"path": path, **params})


async def cat(api: Client, path: str, expect: int = 200) -> bytes:
    r = await api.request("GET", "/server/s/files/content", expect, params={"path": path})
    return r.content


def code(r: Any) -> str:
    return str(r["error"]["code"])


async def normal_flows(api: Client, files: Path) -> None:
    await api.post("/server/s/files/mkdir", {"path": "world"}, expect=200)
    blob = os.urandom(300_000)
    e = await put(api, "world/level.dat", blob)
    assert e["name"] == "level.dat" and e["type"] == "file" and e["size"] == len(blob)
    assert (files / "world" / "level.dat").read_bytes() == blob
    assert await cat(api, "world/level.dat") == blob
    (files / "world" / "level.dat").chmod(0o640)
    await put(api, "./world//level.dat", b"small")  # a rewrite keeps the file's mode
    assert (files / "world" / "level.dat").read_bytes() == b"small"
    assert (files / "world" / "level.dat").stat().st_mode & 0o777 == 0o640
    await put(api, "empty.txt", b"")
    assert await cat(api, "empty.txt") == b""
    listing = await ls(api)
    assert [(x["name"], x["type"]) for x in listing["entries"]] == [
        ("empty.txt", "file"), ("world", "dir")]
    assert listing["next_cursor"] is None
    for i in range(5):
        await put(api, f"world/r{i}.mca", b"x" * i)
    names, cursor = [], None
    while True:
        page = await ls(api, "world", limit=2, **({"cursor": cursor} if cursor else {}))
        names += [x["name"] for x in page["entries"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert names == ["level.dat", "r0.mca", "r1.mca", "r2.mca", "r3.mca", "r4.mca"]
    await api.post("/server/s/files/rename", {"from": "world/r0.mca", "to": "r0.mca"},
                   expect=200)
    r = await api.post("/server/s/files/rename", {"from": "r0.mca", "to": "empty.txt"},
                       expect=409)
    assert code(r) == "exists"
    await api.post("/server/s/files/delete", {"path": "world"}, expect=200)
    assert not (files / "world").exists()
    r = await api.post("/server/s/files/delete", {"path": "world"}, expect=404)
    assert code(r) == "not_found"
    r = await api.post("/server/s/files/mkdir", {"path": "r0.mca"}, expect=409)
    await cat(api, "missing", expect=404)
    await ls(api, "missing", expect=404)
    assert sorted(p.name for p in files.iterdir()) == ["empty.txt", "r0.mca"]


async def test_normal_flows_on_a_standalone_worker(standalone: Standalone) -> None:
    await normal_flows(standalone.api, standalone.files)
    r = await standalone.api.get("/server/nope/files", expect=404)
    assert code(r) == "not_found"


BAD_PATHS = ["../../etc/passwd", "/etc/passwd", "a/../../x", "..", "x\x00y", "n" * 256]


async def test_paths_out_of_the_tree_are_refused(standalone: Standalone,
                                                 tmp_path: Path) -> None:
    api = standalone.api
    before = snapshot(tmp_path / "outside"), Path("/etc/passwd").read_bytes()
    (standalone.files / "a").mkdir()
    for bad in [*BAD_PATHS, "../outside/secret"]:
        for r in [await ls(api, bad, expect=422),
                  (await api.request("GET", "/server/s/files/content", 422,
                                     params={"path": bad})).json(),
                  await put(api, bad, b"owned\n", expect=422),
                  await api.post("/server/s/files/mkdir", {"path": bad}, expect=422),
                  await api.post("/server/s/files/delete", {"path": bad}, expect=422),
                  await api.post("/server/s/files/rename", {"from": "a", "to": bad},
                                 expect=422),
                  await api.post("/server/s/files/rename", {"from": bad, "to": "b"},
                                 expect=422)]:
            assert code(r) == "invalid", (bad, r)
    r = await api.post("/server/s/files/delete", {"path": ""}, expect=422)
    assert (snapshot(tmp_path / "outside"), Path("/etc/passwd").read_bytes()) == before
    assert [p.name for p in standalone.files.iterdir()] == ["a"]
    assert not (tmp_path / "worker" / "x").exists() and not (tmp_path / "b").exists()


async def test_a_symlink_to_root_made_by_the_game_is_never_followed(
        standalone: Standalone, tmp_path: Path) -> None:
    api, files = standalone.api, standalone.files
    (files / "root").symlink_to("/")  # what a compromised game can do in its own directory
    (files / "out").symlink_to(standalone.outside)
    (files / "secret").symlink_to(standalone.outside / "secret")
    before = snapshot(standalone.outside), Path("/etc/passwd").read_bytes()
    listing = await ls(api)
    assert {(x["name"], x["type"], x["target"]) for x in listing["entries"]} == {
        ("root", "link", "/"), ("out", "link", str(standalone.outside)),
        ("secret", "link", str(standalone.outside / "secret"))}
    for path in ["root/etc/passwd", "out/secret", "secret", "root", "out"]:
        await cat(api, path, expect=422)
        await put(api, path, b"owned\n", expect=422)
    for path in ["root", "root/etc", "out"]:
        await ls(api, path, expect=422)
    await api.post("/server/s/files/mkdir", {"path": "out/new"}, expect=422)
    await api.post("/server/s/files/delete", {"path": "out/secret"}, expect=422)
    await api.post("/server/s/files/rename", {"from": "out/secret", "to": "mine"}, expect=422)
    # deleting the link removes the link, never what it points to
    await api.post("/server/s/files/delete", {"path": "out"}, expect=200)
    await api.post("/server/s/files/delete", {"path": "root"}, expect=200)
    assert (snapshot(standalone.outside), Path("/etc/passwd").read_bytes()) == before
    assert [p.name for p in files.iterdir()] == ["secret"]


async def test_a_directory_swapped_for_a_symlink_between_two_calls(
        standalone: Standalone) -> None:
    api, files = standalone.api, standalone.files
    await api.post("/server/s/files/mkdir", {"path": "d"}, expect=200)
    await put(api, "d/secret", b"mine\n")
    assert [x["name"] for x in (await ls(api, "d"))["entries"]] == ["secret"]
    before = snapshot(standalone.outside)
    (files / "d").rename(files / "d.old")
    (files / "d").symlink_to(standalone.outside)  # the game swaps it in between
    await ls(api, "d", expect=422)
    await cat(api, "d/secret", expect=422)
    await put(api, "d/secret", b"owned\n", expect=422)
    await put(api, "d/new", b"owned\n", expect=422)
    await api.post("/server/s/files/delete", {"path": "d/secret"}, expect=422)
    assert snapshot(standalone.outside) == before
    # and the files directory itself swapped for a link: refused too
    (files.parent / "files").rename(files.parent / "files.real")
    files.symlink_to(standalone.outside)
    await ls(api, "", expect=422)
    await cat(api, "secret", expect=422)
    await put(api, "secret", b"owned\n", expect=422)
    assert snapshot(standalone.outside) == before


async def test_a_hard_link_to_a_file_outside_is_neither_read_nor_written(
        standalone: Standalone) -> None:
    api, files = standalone.api, standalone.files
    os.link(standalone.outside / "secret", files / "hl")
    before = snapshot(standalone.outside)
    r = await api.request("GET", "/server/s/files/content", 422, params={"path": "hl"})
    assert "hard links" in r.json()["error"]["message"]
    assert b"top secret" not in r.content
    await put(api, "hl", b"owned\n", expect=422)
    assert snapshot(standalone.outside) == before
    await api.post("/server/s/files/delete", {"path": "hl"}, expect=200)  # the name only
    assert snapshot(standalone.outside) == before and not (files / "hl").exists()


def raw_put(url: str, path: str, head_extra: str, body: bytes, token: str = TOKEN) -> bytes:
    """An upload written by hand on a socket (what httpx will not send); what came back."""
    addr = urlsplit(url)
    sock = socket.create_connection((addr.hostname, addr.port), timeout=10)
    try:
        sock.sendall(f"PUT /server/s/files/content?path={path} HTTP/1.1\r\n"
                     f"Host: x\r\nAuthorization: Bearer {token}\r\n{head_extra}\r\n".encode()
                     + body)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out
    except OSError:
        return b""
    finally:
        sock.close()


async def test_uploads_that_lie_or_are_too_large_leave_no_file(
        standalone: Standalone) -> None:
    api, files = standalone.api, standalone.files
    # over files_max_upload: refused on the declared size, before any byte is written
    r = await put(api, "big", b"x" * (MAX_UPLOAD + 1), expect=413)
    assert code(r) == "body_too_large"

    async def chunks() -> Any:
        yield b"no length"

    r = (await api.request("PUT", "/server/s/files/content", 411, params={"path": "chunked"},
                           content=chunks())).json()
    assert code(r) == "length_required"
    # declares 1 MiB, sends 10 bytes, then hangs up: nothing is kept
    out = await trio.to_thread.run_sync(raw_put, api.base_url, "short",
                                        f"Content-Length: {MAX_UPLOAD}\r\n", b"0123456789")
    assert b" 200 " not in out.split(b"\r\n")[0]
    # declares 10 bytes (under the limit), sends 2 MiB: only the declared bytes are the body;
    # the rest is no request at all and closes the connection
    out2 = await trio.to_thread.run_sync(raw_put, api.base_url, "long",
                                        "Content-Length: 10\r\n", b"y" * (2 * MAX_UPLOAD))
    # (HTTP/1.1 cannot tell them from a pipelined request: what is stored is exactly the
    # declared bytes, never more; the excess is answered 4xx and the connection closed)
    assert (files / "long").read_bytes() == b"y" * 10
    first, _, rest = out2.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 4" in rest
    with trio.fail_after(5):
        while any(p.name.startswith(".manman-upload") for p in files.iterdir()):
            await trio.sleep(0.05)
    assert sorted(p.name for p in files.iterdir() if p.name != "long") == []
    assert (await api.get("/status"))["status"] == "alive"


# -- through the host ------------------------------------------------------------------------

async def test_files_through_the_host(host: RunningHost, hosted: Any, tmp_path: Path) -> None:
    w = await hosted("fw", files_max_upload=MAX_UPLOAD)
    api = host.api
    wid = (await api.get("/worker"))["workers"][0]["id"]
    s = await api.post("/server", fake_spec("s", worker_id=wid), expect=201)
    await w.api.wait_for(s["id"])
    files = tmp_path / "fw" / "servers" / s["id"] / "files"
    await normal_flows(api, files)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("top secret\n")
    (files / "out").symlink_to(outside)
    before = snapshot(outside)
    for bad in ["../../etc/passwd", "/etc/passwd", "out/secret"]:
        await cat(api, bad, expect=422)
        await put(api, bad, b"owned\n", expect=422)
    r = await put(api, "big", b"x" * (MAX_UPLOAD + 1), expect=413)
    assert code(r) == "body_too_large"
    big = os.urandom(MAX_UPLOAD)  # streamed both ways
    await put(api, "blob", big)
    assert (files / "blob").read_bytes() == big and await cat(api, "blob") == big
    # a client that declares 1 MiB, sends 10 bytes and hangs up: the worker keeps nothing
    out = await trio.to_thread.run_sync(raw_put, api.base_url, "short",
                                        f"Content-Length: {MAX_UPLOAD}\r\n", b"0123456789",
                                        api.token)
    assert b" 200 " not in out.split(b"\r\n")[0]

    async def chunks() -> Any:
        yield b"no length"

    r = (await api.request("PUT", "/server/s/files/content", 411, params={"path": "chunked"},
                           content=chunks())).json()
    # the host relays the cut-short upload to the worker a little later: its temporary file
    # may appear after this test's next step; it must be gone, and stay gone, in the end
    want = ["blob", "empty.txt", "out", "r0.mca"]
    with trio.fail_after(10):
        while True:
            seen = sorted(p.name for p in files.iterdir())
            await trio.sleep(0.5)
            if seen == want == sorted(p.name for p in files.iterdir()):
                break
    assert snapshot(outside) == before
    tar_of(files / "w.tar.gz", [("level.dat", "file", b"level")])
    tar_of(files / "slip.tar.gz", [("../../../evil", "file", b"evil")])
    await extract(api, "w.tar.gz", 200)
    assert (files / "w" / "level.dat").read_bytes() == b"level"
    r = await extract(api, "slip.tar.gz", 422)
    assert "'../../../evil'" in r["error"]["message"] and not (files / "slip").exists()
    await api.post("/server/s/files/archive", {"paths": ["w"], "to": "w2.zip"}, expect=200)
    await extract(api, "w2.zip", 200)
    assert (files / "w2" / "w" / "level.dat").read_bytes() == b"level"
    # the worker away: 503, not a hang
    await w.shutdown()
    with trio.fail_after(15):
        while (await api.get(f"/worker/{wid}"))["status"] == "alive":
            await trio.sleep(0.1)
    for r in [await ls(api, expect=503), (await api.request(
            "GET", "/server/s/files/content", 503, params={"path": "blob"})).json(),
              await put(api, "x", b"x", expect=503),
              await api.post("/server/s/files/mkdir", {"path": "m"}, expect=503)]:
        assert code(r) == "unavailable"


async def test_cli_files_verbs(host: RunningHost, hosted: Any, tmp_path: Path) -> None:
    from tests.test_cli import manman, out

    w = await hosted("cw")
    s = await host.api.post("/server", fake_spec("s", worker_id=w.handle.link.worker_id),
                            expect=201)
    await w.api.wait_for(s["id"])
    files = tmp_path / "cw" / "servers" / s["id"] / "files"
    blob = os.urandom(700_000)
    (tmp_path / "local.bin").write_bytes(blob)
    r = await manman(host, "files", "mkdir", "s", "world")
    assert r.returncode == 0, r.stderr
    r = await manman(host, "files", "put", "s", "world/a.bin", str(tmp_path / "local.bin"))
    assert r.returncode == 0 and out(r).strip() == "world/a.bin: 700000 bytes written", r.stderr
    r = await manman(host, "files", "put", "s", "motd.txt", stdin=b"hello\n")
    assert r.returncode == 0, r.stderr
    assert (files / "world" / "a.bin").read_bytes() == blob
    assert (files / "motd.txt").read_bytes() == b"hello\n"
    r = await manman(host, "files", "get", "s", "motd.txt")
    assert r.returncode == 0 and r.stdout == b"hello\n"
    r = await manman(host, "files", "get", "s", "world/a.bin", "-o", str(tmp_path / "back"))
    assert r.returncode == 0 and (tmp_path / "back").read_bytes() == blob
    (files / "link").symlink_to("/")
    r = await manman(host, "files", "ls", "s")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in out(r).splitlines()]
    assert [(row[0], row[-1]) for row in rows] == [("link", "/"), ("file", "motd.txt"),
                                                    ("dir", "world/")]
    r = await manman(host, "files", "ls", "s", "--json")
    assert {e["name"] for e in json.loads(out(r))} == {"link", "motd.txt", "world"}
    r = await manman(host, "files", "mv", "s", "motd.txt", "world/motd.txt")
    assert r.returncode == 0 and (files / "world" / "motd.txt").exists()
    r = await manman(host, "files", "rm", "s", "world")
    assert r.returncode == 0 and not (files / "world").exists()
    r = await manman(host, "files", "get", "s", "../../etc/passwd")
    assert r.returncode == 1 and r.stdout == b"" and b"(422 invalid)" in r.stderr
    r = await manman(host, "files", "get", "s", "link/etc/passwd")
    assert r.returncode == 1 and r.stdout == b"" and b"(422 invalid)" in r.stderr
    r = await manman(host, "files", "rm", "s", "nope")
    assert r.returncode == 1 and b"(404 not_found)" in r.stderr


# -- extraction --------------------------------------------------------------------------------

def tar_of(path: Path, members: list[tuple[str, str, bytes | str]], mode: str = "w:gz") -> None:
    """members: (name, kind file|dir|sym|hard|fifo|chr, content or link target)."""
    import io
    import tarfile

    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
             "hard": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}
    with tarfile.open(path, mode) as tf:
        for name, kind, data in members:
            ti = tarfile.TarInfo(name)
            ti.type = kinds[kind]
            if kind == "file":
                assert isinstance(data, bytes)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                if kind in ("sym", "hard"):
                    assert isinstance(data, str)
                    ti.linkname = data
                tf.addfile(ti)


def zip_of(path: Path, members: dict[str, bytes]) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)


def zip_bomb(path: Path, members: int = 10, each: int = 1 << 30,
             declared: int | None = None) -> None:
    """A real zip of `members` files of `each` zero bytes (10 GiB in ~10 MB): one deflate
    stream written under each name; `declared`: the size its headers claim instead."""
    import struct
    import zlib

    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros, parts, crc = bytes(1 << 20), [], 0
    for _ in range(each >> 20):
        parts.append(comp.compress(zeros))
        crc = zlib.crc32(zeros, crc)
    parts.append(comp.flush())
    data = b"".join(parts)
    local, central = b"", b""
    for i in range(members):
        name = f"zeros{i}.bin".encode()
        offset = len(local)
        size = each if declared is None else declared
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data),
                             size, len(name), 0) + name + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc,
                               len(data), size, len(name), 0, 0, 0, 0, 0, offset) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, members, members, len(central),
                      len(local), 0)
    path.write_bytes(local + central + end)


async def extract(api: Client, path: str, expect: int, to: str | None = None) -> Any:
    body = {"path": path, **({"to": to} if to else {})}
    return await api.post("/server/s/files/extract", body, expect=expect)


async def test_extract_tar_and_zip(standalone: Standalone) -> None:
    api, files = standalone.api, standalone.files
    tar_of(files / "world.tar.gz", [
        ("world", "dir", b""), ("world/level.dat", "file", b"level"),
        ("world/region/r.0.0.mca", "file", b"r" * 70000),
        ("world/latest", "sym", "region/r.0.0.mca"), ("world/copy.dat", "hard",
                                                      "world/level.dat")])
    e = await extract(api, "world.tar.gz", 200)
    assert e["name"] == "world" and e["type"] == "dir"
    got = files / "world" / "world"
    assert (got / "level.dat").read_bytes() == b"level"
    assert (got / "region" / "r.0.0.mca").read_bytes() == b"r" * 70000
    assert os.readlink(got / "latest") == "region/r.0.0.mca"
    assert (got / "copy.dat").read_bytes() == b"level"
    assert (got / "copy.dat").stat().st_nlink == 1  # a copy: it stays readable here
    assert await cat(api, "world/world/copy.dat") == b"level"
    r = await extract(api, "world.tar.gz", 409)
    assert code(r) == "exists"
    zip_of(files / "mods.zip", {"mods/a.jar": b"a", "mods/b/": b"", "readme.txt": b"hi"})
    await extract(api, "mods.zip", 200, to="unpacked")
    assert (files / "unpacked" / "mods" / "a.jar").read_bytes() == b"a"
    assert (files / "unpacked" / "mods" / "b").is_dir()
    await put(api, "notes.txt", b"not an archive")
    r = await extract(api, "notes.txt", 422)
    assert "nothing was extracted" in r["error"]["message"] or "archive" in r["error"]["message"]
    assert not any(p.name.startswith(".manman-extract") for p in files.iterdir())


BAD_ARCHIVES: list[tuple[str, list[tuple[str, str, bytes | str]], str]] = [
    ("tar-slip", [("ok.txt", "file", b"ok"), ("../../evil.txt", "file", b"evil")],
     "../../evil.txt"),
    ("absolute", [("ok.txt", "file", b"ok"), ("/tmp/evil.txt", "file", b"evil")],
     "/tmp/evil.txt"),
    ("link-out", [("ok.txt", "file", b"ok"), ("up", "sym", "../../..")], "up"),
    ("link-abs", [("etc", "sym", "/etc")], "etc"),
    # each lexically inside, but x/y is a link to the root: z's `x/y/..` climbs out
    ("link-chain", [("x", "dir", b""), ("x/y", "sym", ".."), ("z", "sym", "x/y/../..")], "z"),
    ("hard-out", [("pw", "hard", "/etc/passwd")], "pw"),
    ("hard-up", [("pw", "hard", "../outside/secret")], "pw"),
    ("fifo", [("ok.txt", "file", b"ok"), ("pipe", "fifo", b"")], "pipe"),
    ("device", [("null", "chr", b"")], "null"),
]


async def test_bad_archives_are_refused_whole(standalone: Standalone, tmp_path: Path) -> None:
    api, files = standalone.api, standalone.files
    for name, members, _ in BAD_ARCHIVES:
        tar_of(files / f"{name}.tar", members, "w")
    zip_of(files / "zip-slip.zip", {"ok.txt": b"ok", "../../evil.txt": b"evil"})
    # a link inside the tree, then a file written through it: nothing is followed
    tar_of(files / "through.tar", [("sub", "dir", b""), ("d", "sym", "sub"),
                                   ("d/x", "file", b"x")], "w")
    zip_bomb(files / "bomb.zip")
    zip_bomb(files / "liar.zip", members=1, each=8 << 20, declared=1000)
    before = snapshot(tmp_path / "outside"), snapshot(files)
    for name, _, bad in BAD_ARCHIVES:
        r = await extract(api, f"{name}.tar", 422)
        assert repr(bad) in r["error"]["message"], (name, r)
        assert "nothing was extracted" in r["error"]["message"]
    r = await extract(api, "zip-slip.zip", 422)
    assert "'../../evil.txt'" in r["error"]["message"]
    r = await extract(api, "through.tar", 422)
    assert "'d/x'" in r["error"]["message"]
    r = await extract(api, "bomb.zip", 422)
    assert "unpacks to more than" in r["error"]["message"]
    r = await extract(api, "liar.zip", 422)  # inflates past what it declares: stopped there
    assert "cannot be read" in r["error"]["message"]
    assert (snapshot(tmp_path / "outside"), snapshot(files)) == before
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()
    # and an archive that is itself a link, or hard-linked, is not read
    (files / "alias.tar").symlink_to(files / "tar-slip.tar")
    await extract(api, "alias.tar", 422)


# -- the web console's file browser -----------------------------------------------------------

def browse(page: Any, out: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    from tests.test_web_console import sign_in

    sign_in(page)
    page.locator("#servers tr[data-server-name='webf']").click()
    expect(page.locator("#server-name")).to_have_text("webf")
    page.click("#files-panel summary")
    rows = page.locator("#files tbody tr")
    expect(rows).to_have_count(3)
    expect(page.locator("#files tr[data-name='root'] .kind")).to_contain_text("not followed")
    page.locator("#files tr[data-name='server.properties'] td.name button").click()
    editor = page.locator("#editor-text")
    expect(editor).to_have_value("motd=<b>hello</b>\n")
    editor.fill("motd=edited in the browser\n")
    page.click("#editor-save")
    expect(page.locator("#files-message")).to_contain_text("saved")
    page.locator("#files tr[data-name='world'] td.name button").click()
    expect(page.locator("#files-path")).to_have_text("/world")
    expect(page.locator("#files tr[data-name='level.dat']")).to_have_count(1)
    page.set_input_files("#files-upload", files=[{"name": "up.txt", "mimeType": "text/plain",
                                                  "buffer": b"uploaded\n"}])
    expect(page.locator("#files tr[data-name='up.txt']")).to_have_count(1)
    page.click("#files-up")
    expect(page.locator("#files-path")).to_have_text("/")
    page.fill("#files-name", "plugins")
    page.click("#files-mkdir")
    expect(page.locator("#files tr[data-name='plugins']")).to_have_count(1)
    delete = page.locator("#files tr[data-name='root'] button[data-role='delete']")
    delete.click()
    expect(delete).to_contain_text("?")
    delete.click()
    expect(page.locator("#files tr[data-name='root']")).to_have_count(0)
    # a path out of the tree typed into the folder name: refused, shown
    page.fill("#files-name", "../../escape")
    page.click("#files-mkdir")
    expect(page.locator("#files-message")).to_contain_text("'..' is not accepted")


async def test_web_console_file_browser(host: RunningHost, hosted: Any, tmp_path: Path) -> None:
    from tests.test_web_console import CHROMIUM, in_browser

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed")
    w = await hosted("bw")
    s = await host.api.post("/server", fake_spec("webf", worker_id=w.handle.link.worker_id),
                            expect=201)
    await w.api.wait_for(s["id"])
    files = tmp_path / "bw" / "servers" / s["id"] / "files"
    files.mkdir(parents=True, exist_ok=True)
    (files / "server.properties").write_text("motd=<b>hello</b>\n")
    (files / "world").mkdir()
    (files / "world" / "level.dat").write_bytes(b"\x00\x01binary")
    (files / "root").symlink_to("/")
    out: dict[str, Any] = {}
    await trio.to_thread.run_sync(in_browser, host.url, out, browse)
    assert not out["problems"], out["problems"]
    assert (files / "server.properties").read_text() == "motd=edited in the browser\n"
    assert (files / "world" / "up.txt").read_bytes() == b"uploaded\n"
    assert (files / "plugins").is_dir() and not (files / "root").is_symlink()
    assert Path("/etc/passwd").exists() and not (tmp_path / "escape").exists()
    assert not [u for u in out["requested"] if "test-admin-token" in u]


async def test_archive_then_extract_round_trip(standalone: Standalone) -> None:
    api, files = standalone.api, standalone.files
    (files / "world" / "region").mkdir(parents=True)
    (files / "world" / "level.dat").write_bytes(b"level")
    (files / "world" / "region" / "r.mca").write_bytes(os.urandom(200_000))
    (files / "world" / "latest").symlink_to("region/r.mca")  # stored as a link
    (files / "world" / "region" / "r.mca").chmod(0o640)
    for name in ("w.tar.gz", "w.zip", "w.tar", "w.tar.zst"):
        e = await api.post("/server/s/files/archive", {"paths": ["world"], "to": name},
                           expect=200)
        assert e["name"] == name and e["size"] > 0
        out = name.replace(".", "-")
        await extract(api, name, 200, to=out)
        got = files / out / "world"
        assert (got / "level.dat").read_bytes() == b"level"
        assert (got / "region" / "r.mca").read_bytes() == (
            files / "world" / "region" / "r.mca").read_bytes()
        assert os.readlink(got / "latest") == "region/r.mca"
    assert not any(p.name.startswith(".manman-") for p in files.iterdir())
    # a link to / is stored as what it is, not what it points to; extracting it is refused
    (files / "world" / "root").symlink_to("/")
    await api.post("/server/s/files/archive", {"paths": ["world"], "to": "r.tar"}, expect=200)
    import tarfile

    with tarfile.open(files / "r.tar") as tf:
        root = tf.getmember("world/root")
        assert root.issym() and root.linkname == "/"
        assert not any(n.startswith("world/root/") for n in tf.getnames())
    r = await extract(api, "r.tar", 422)
    assert "'world/root'" in r["error"]["message"]
    # the whole directory, by default
    await api.post("/server/s/files/archive", {"to": "all.tar"}, expect=200)
    with tarfile.open(files / "all.tar") as tf:
        names = tf.getnames()
    assert "world/level.dat" in names and "all.tar" not in names
    r = await api.post("/server/s/files/archive", {"to": "x.rar"}, expect=422)
    assert "must end in" in r["error"]["message"]


async def test_archive_refuses_what_it_must_not_read(standalone: Standalone) -> None:
    api, files = standalone.api, standalone.files
    (files / "world").mkdir()
    (files / "world" / "ok.dat").write_bytes(b"ok")
    os.link(standalone.outside / "secret", files / "world" / "secret")
    r = await api.post("/server/s/files/archive", {"paths": ["world"], "to": "w.tar.gz"},
                       expect=422)
    assert "world/secret" in r["error"]["message"] and "hard links" in r["error"]["message"]
    os.unlink(files / "world" / "secret")
    os.mkfifo(files / "world" / "pipe")
    r = await api.post("/server/s/files/archive", {"paths": ["world"], "to": "w.tar.gz"},
                       expect=422)
    assert "world/pipe" in r["error"]["message"]
    (files / "out").symlink_to(standalone.outside)
    await api.post("/server/s/files/archive", {"paths": ["out/secret"], "to": "s.tar"},
                   expect=422)
    await api.post("/server/s/files/archive", {"paths": ["../outside"], "to": "s.tar"},
                   expect=422)
    await api.post("/server/s/files/archive", {"paths": ["world/ok.dat"], "to": "out/x.tar"},
                   expect=422)
    assert sorted(p.name for p in files.iterdir()) == ["out", "world"]
    assert sorted(p.name for p in standalone.outside.iterdir()) == ["secret"]


def _header_bomb(path: Path, kind: bytes, size: int) -> None:
    """A tar.gz whose first member is a pax (`x`) or GNU long-name (`L`) header declaring
    `size` bytes of zeros: a few hundred KB on disk."""
    import gzip
    import tarfile

    ti = tarfile.TarInfo("bomb")
    ti.size = size
    head = bytearray(ti.tobuf(tarfile.USTAR_FORMAT))
    head[156:157] = kind  # the type flag; the checksum is over the field as it is now
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\x00 " % sum(head)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(bytes(head))
        zeros = bytes(1 << 20)
        for _ in range(size >> 20):
            f.write(zeros)
        f.write(bytes(1024))


@pytest.mark.parametrize("kind", [b"x", b"L"])
def test_an_archive_header_bomb_is_refused_in_constant_memory(tmp_path: Path,
                                                              kind: bytes) -> None:
    """tarfile reads a pax or GNU long-name header whole into memory: one declaring 256 MiB
    (of zeros, a few hundred KB compressed) is refused before it is read, in extract and in
    restore alike."""
    import threading
    import tracemalloc

    from manman import errors
    from manman.worker.backups.restore import restore_backup
    from manman.worker.files.extract import extract
    from manman.worker.files.safe import FilesTree

    root = tmp_path / "files"
    root.mkdir()
    _header_bomb(root / "bomb.tar.gz", kind, 256 << 20)
    tree = FilesTree(root)
    tracemalloc.start()
    try:
        with pytest.raises(errors.Invalid):
            extract(tree, "bomb.tar.gz", None, 1 << 30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak
    assert sorted(os.listdir(root)) == ["bomb.tar.gz"]
    # restore reads zstd: the same header, recompressed
    import gzip

    import zstandard

    archive = tmp_path / "b.tar.zst"
    with gzip.open(root / "bomb.tar.gz", "rb") as src, open(archive, "wb") as out, \
            zstandard.ZstdCompressor().stream_writer(out) as z:
        while chunk := src.read(1 << 20):
            z.write(chunk)
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    tracemalloc.start()
    try:
        with pytest.raises(errors.Invalid):
            restore_backup(archive, sha, root, False, threading.Event())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak
    assert sorted(os.listdir(root)) == ["bomb.tar.gz"]


def test_a_survey_does_not_keep_every_member_header(tmp_path: Path) -> None:
    """tarfile read as a stream keeps each member's header (names up to 4 KiB) in a list:
    an archive of many long names held them all, hundreds of MB before the last member
    was even checked. Refused here at its last member, in little memory."""
    import tarfile
    import tracemalloc

    from manman import errors
    from manman.worker.files.extract import extract
    from manman.worker.files.safe import FilesTree

    root = tmp_path / "files"
    root.mkdir()
    deep = "/".join(["d" * 250] * 15)
    with tarfile.open(root / "many.tar.gz", "w:gz", compresslevel=1,
                      format=tarfile.PAX_FORMAT) as tf:
        for i in range(20000):
            tf.addfile(tarfile.TarInfo(f"{deep}/{i}"))
        tf.addfile(tarfile.TarInfo("/etc/evil"))
    tracemalloc.start()
    try:
        with pytest.raises(errors.Invalid, match="absolute"):
            extract(FilesTree(root), "many.tar.gz", None, 1 << 30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak


def many_members_tar(path: Path, count: int) -> None:
    """A plain tar of `count` empty files (f0000000, f0000001, ...), its headers made from
    one template: a few MB written in a fraction of a second."""
    import tarfile

    template = bytearray(tarfile.TarInfo("f0000000").tobuf(format=tarfile.USTAR_FORMAT))
    template[148:156] = b" " * 8  # the checksum counts its own field as spaces
    base = sum(template) - sum(b"0000000")
    with path.open("wb") as f:
        for i in range(count):
            digits = b"%07d" % i
            header = bytearray(template)
            header[1:8] = digits
            header[148:156] = b"%06o\0 " % (base + sum(digits))
            f.write(header)
        f.write(b"\0" * 1024)


async def test_an_archive_over_the_member_cap_is_refused_whole(standalone: Standalone,
                                                               tmp_path: Path) -> None:
    import tarfile

    from manman.worker.files.extract import MAX_MEMBERS

    api, files = standalone.api, standalone.files
    many_members_tar(files / "few.tar", 3)  # the generator makes real tars
    with tarfile.open(files / "few.tar") as tf:
        assert tf.getnames() == ["f0000000", "f0000001", "f0000002"]
    (files / "few.tar").unlink()
    many_members_tar(files / "many.tar", MAX_MEMBERS + 1)
    before = snapshot(files), snapshot(tmp_path / "outside")
    r = await extract(api, "many.tar", 422)
    assert code(r) == "invalid" and f"more than {MAX_MEMBERS} members" in \
        r["error"]["message"] and "nothing was extracted" in r["error"]["message"], r
    assert (snapshot(files), snapshot(tmp_path / "outside")) == before
    assert sorted(p.name for p in files.iterdir()) == ["many.tar"]
