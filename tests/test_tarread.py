"""The restore's own tar reader: the members and bytes `tarfile` reads from the same
archive, whatever wrote it (tarfile in each format, GNU tar), and a clear refusal of a
damaged one."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest

from manman.worker.backups.tarread import Ahead, Damaged, TarReader, TooBig

NAMES = ["a.txt", "dir/sub/level.dat", "x" * 99, "d/" + "y" * 120, "long/" * 40 + "end",
         "é-non-ascii/ü.txt", "bad-\udcff-bytes"]


def chunks(data: bytes, size: int = 1000) -> object:
    """A stream cut into small chunks: members and headers fall across chunk borders."""
    parts = [data[i:i + size] for i in range(0, len(data), size)]
    it = iter(parts)
    return lambda: next(it, b"")


def bounded(fn: Any, *args: Any) -> BaseException | None:
    """What `fn` raised, within 5 s: a reader that loops forever fails the test, not CI."""
    raised: list[BaseException | None] = [None]

    def run() -> None:
        try:
            fn(*args)
        except BaseException as e:  # handed to the test
            raised[0] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "the reader did not end"
    return raised[0]


def ours(data: bytes) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for ti, member in TarReader(chunks(data), 1 << 20).members():  # type: ignore[arg-type]
        body = member.read() if member is not None else None
        out.append((ti.name, ti.type, ti.size, ti.mode & 0o7777, int(ti.mtime), ti.linkname,
                    body))
    return out


def theirs(data: bytes) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tf:
        for ti in tf:
            f = tf.extractfile(ti) if ti.isreg() else None
            out.append((ti.name, ti.type, ti.size, ti.mode & 0o7777, int(ti.mtime),
                        ti.linkname, f.read() if f is not None else None))
    return out


def made_by_tarfile(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for i, name in enumerate(NAMES):
            if fmt != tarfile.PAX_FORMAT and not name.isascii():
                continue  # only pax holds names that are not ASCII as they are
            ti = tarfile.TarInfo("dir-" + str(i))
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000 + i
            tf.addfile(ti)
            data = os.urandom(i * 700)
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o640, 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
            ti = tarfile.TarInfo(name + ".link")
            ti.type, ti.linkname = tarfile.SYMTYPE, "../" + "t" * (i * 30)
            tf.addfile(ti)
        ti = tarfile.TarInfo("hard")
        ti.type, ti.linkname = tarfile.LNKTYPE, NAMES[0]
        tf.addfile(ti)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_the_members_tarfile_reads(fmt: int) -> None:
    data = made_by_tarfile(fmt)
    got = ours(data)
    assert got == theirs(data) and len(got) > 6


def test_an_old_ustar_archive() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        ti = tarfile.TarInfo("p" * 120 + "/" + "n" * 90)  # a prefix and a name
        ti.size = 3
        tf.addfile(ti, io.BytesIO(b"abc"))
        ti = tarfile.TarInfo("olddir/")
        ti.type = tarfile.AREGTYPE  # an old tar's directory: a plain file named with a /
        tf.addfile(ti)
    data = buf.getvalue()
    got = ours(data)
    assert got == theirs(data) and got[1][:2] == ("olddir", tarfile.DIRTYPE)


def test_an_archive_gnu_tar_wrote(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    deep = tree / ("d" * 60) / ("e" * 60) / ("f" * 60)
    deep.mkdir(parents=True)
    (deep / ("g" * 90)).write_bytes(os.urandom(5000))
    (tree / "empty").write_bytes(b"")
    (tree / "link").symlink_to("l" * 150)
    for fmt in ("gnu", "posix", "ustar"):
        if fmt == "ustar":
            (tree / "link").unlink()
            (deep / ("g" * 90)).rename(deep / "g")
        r = subprocess.run(["tar", f"--format={fmt}", "-cf", "-", "-C", str(tree), "."],
                           capture_output=True, check=True)
        assert ours(r.stdout) == theirs(r.stdout), fmt


def test_damage_is_refused() -> None:
    data = made_by_tarfile(tarfile.PAX_FORMAT)
    with pytest.raises(Damaged):
        ours(data[:len(data) // 2])  # cut short
    bad = bytearray(data)
    bad[600 + 148] ^= 0x01  # a checksum digit of the second header
    with pytest.raises(Damaged):
        ours(bytes(bad))
    ti = tarfile.TarInfo("x")
    ti.type = tarfile.XHDTYPE
    record = b"999 path=x\n"  # a length beyond the header
    ti.size = len(record)
    broken = ti.tobuf(tarfile.USTAR_FORMAT) + record + bytes(-len(record) % 512) + bytes(1024)
    with pytest.raises(Damaged):
        ours(broken)
    ti.size = 2 << 20
    with pytest.raises(TooBig):  # refused from its header, before its bytes are read
        ours(ti.tobuf(tarfile.USTAR_FORMAT))
    # many small extension headers in a row add up to the same bound
    one = b"1010 path=" + b"p" * 999 + b"\n"
    ti.size = len(one)
    run = (ti.tobuf(tarfile.USTAR_FORMAT) + one + bytes(-len(one) % 512)) * 1100
    with pytest.raises(TooBig):
        ours(run + bytes(1024))
    # a negative size (a sign in the octal field, or base-256) would make the reader go back
    for size_field in (b"-0000001000\x00", b"\xff" * 12):
        block = bytearray(made_by_tarfile(tarfile.PAX_FORMAT)[:512])
        block[124:136] = size_field
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\x00 " % sum(block)
        assert isinstance(bounded(ours, bytes(block) + bytes(4096)), Damaged)


def test_read_ahead_passes_errors_on_and_stops() -> None:
    calls = 0

    def read(n: int) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ValueError("damaged frame")
        return b"x" * n

    ahead = Ahead(read, 10, depth=2)
    assert ahead.next_chunk() == b"x" * 10 and ahead.next_chunk() == b"x" * 10
    with pytest.raises(ValueError, match="damaged frame"):
        ahead.next_chunk()
    with pytest.raises(ValueError):  # and every later call alike
        ahead.next_chunk()
    ahead.close()
    endless = Ahead(lambda n: b"y" * n, 10, depth=2)  # a reader never drained: close stops it
    endless.close()
    assert not endless.thread.is_alive()
    assert threading.active_count() < 50
