"""The backup's own tar writer: byte for byte what tarfile writes, and whole when a live
game changes a file while it is read."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from manman.worker.backups.tarstream import TarStream, header

NAMES = ["a", "dir/sub/level.dat", "x" * 100, "y" * 101, "é-non-ascii.txt",
         "bad-\udcff-bytes", "d/" + "z" * 150]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE])
def test_header_is_tarfiles_pax_header(name: str, kind: bytes) -> None:
    link = "../target" if kind == tarfile.SYMTYPE else ""
    size = 12345 if kind == tarfile.REGTYPE else 0
    ti = tarfile.TarInfo(name)
    ti.mode, ti.mtime, ti.size, ti.type, ti.linkname = 0o644, 1_700_000_000, size, kind, link
    want = ti.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    assert header(name, 0o100644, 1_700_000_000, size, kind, link) == want


@pytest.mark.parametrize(("size", "mtime", "link"), [
    (8 ** 11, 1, ""), (1, 8 ** 11, ""), (1, -5, ""), (0, 1, "l" * 101)])
def test_numbers_and_links_a_ustar_header_cannot_hold_go_to_pax(
        size: int, mtime: int, link: str) -> None:
    kind = tarfile.SYMTYPE if link else tarfile.REGTYPE
    ti = tarfile.TarInfo("f")
    ti.mode, ti.mtime, ti.size, ti.type, ti.linkname = 0o600, mtime, size, kind, link
    want = ti.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    got = header("f", 0o600, mtime, size, kind, link)
    assert got == want and len(got) > 512


def test_stream_equals_tarfile_and_survives_a_file_that_changes(tmp_path: Path) -> None:
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(b"s" * 700)
    big.write_bytes(os.urandom(3 * 4096 + 5))
    ours = io.BytesIO()
    stream = TarStream(ours, chunk=4096)  # a tiny chunk: the large-file path is taken
    stream.entry("d", 0o755, 10, tarfile.DIRTYPE)
    for path in (small, big):
        fd = os.open(path, os.O_RDONLY)
        stream.file(f"d/{path.name}", 0o644, 10, fd, path.stat().st_size)
        os.close(fd)
    stream.entry("d/link", 0o777, 10, tarfile.SYMTYPE, "small")
    stream.close()
    theirs = io.BytesIO()
    with tarfile.open(fileobj=theirs, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, mode, link in [
                ("d", tarfile.DIRTYPE, None, 0o755, ""),
                ("d/small", tarfile.REGTYPE, small.read_bytes(), 0o644, ""),
                ("d/big", tarfile.REGTYPE, big.read_bytes(), 0o644, ""),
                ("d/link", tarfile.SYMTYPE, None, 0o777, "small")]:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime, ti.linkname = kind, mode, 10, link
            ti.size = len(data) if data is not None else 0
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    assert ours.getvalue() == theirs.getvalue()

    # a file that shrank after its size was taken is padded, one that grew is cut
    changed = io.BytesIO()
    stream = TarStream(changed, chunk=4096)
    for size in (1000, 3):  # small holds 700 bytes
        fd = os.open(small, os.O_RDONLY)
        stream.file(f"s{size}", 0o644, 10, fd, size)
        os.close(fd)
    stream.close()
    with tarfile.open(fileobj=io.BytesIO(changed.getvalue())) as tar:
        f1000, f3 = tar.extractfile("s1000"), tar.extractfile("s3")
        assert f1000 is not None and f3 is not None
        assert f1000.read() == b"s" * 700 + bytes(300)
        assert f3.read() == b"sss"
