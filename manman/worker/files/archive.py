"""Making an archive (tar, tar.gz, tar.zst when `zstandard` is installed, zip) of some of a
server's files, written like an upload: into a temporary file beside the target, renamed
over it once whole. The tree is walked with the same descriptor walk as every file route:
links are stored as links (never followed), a hard-linked file, a device or a fifo refuses
the archive (422 naming it), and nothing is left behind on failure."""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from manman import errors
from manman.worker.files.denylist import Denylist
from manman.worker.files.safe import DIR_FLAGS, Entry, FilesTree, os_error, parse

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
CHUNK = 1 << 20
# what the file routes leave while they work: never archived
_OURS = (".manman-upload-", ".manman-extract-")
FORMATS = {".tar": "tar", ".tar.gz": "gz", ".tgz": "gz", ".tar.zst": "zst", ".zip": "zip"}


def format_of(name: str) -> str:
    for suffix, kind in FORMATS.items():
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return kind
    raise errors.Invalid("the archive's name must end in .tar, .tar.gz, .tgz, .tar.zst or "
                         ".zip")


class _Writer:
    """One archive being written to `out`, member by member."""

    def __init__(self, kind: str, out: IO[bytes]) -> None:
        self.kind = kind
        self.zip: zipfile.ZipFile | None = None
        self.tar: tarfile.TarFile | None = None
        self._zstd: Any = None
        if kind == "zip":
            self.zip = zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=6)
        elif kind == "zst":
            try:
                import zstandard
            except ImportError:
                raise errors.Invalid("tar.zst archives need the zstandard library, which "
                                     "this worker does not have") from None
            self._zstd = zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False)
            self.tar = _tar(self._zstd, "w|")
        else:
            self.tar = _tar(out, "w:gz" if kind == "gz" else "w")

    def add(self, arc: str, st: os.stat_result, *, target: str = "",
            src: IO[bytes] | None = None) -> None:
        mode = stat.S_IMODE(st.st_mode)
        if self.tar is not None:
            ti = tarfile.TarInfo(arc)
            ti.mode, ti.mtime = mode, int(st.st_mtime)
            if stat.S_ISLNK(st.st_mode):
                ti.type, ti.linkname = tarfile.SYMTYPE, target
            elif stat.S_ISDIR(st.st_mode):
                ti.type = tarfile.DIRTYPE
            else:
                ti.size = st.st_size
            self.tar.addfile(ti, src)
            return
        assert self.zip is not None
        zi = zipfile.ZipInfo(arc + ("/" if stat.S_ISDIR(st.st_mode) else ""))
        zi.create_system = 3
        zi.external_attr = (stat.S_IFMT(st.st_mode) | mode) << 16
        if stat.S_ISLNK(st.st_mode):
            self.zip.writestr(zi, target)
        elif stat.S_ISDIR(st.st_mode):
            self.zip.writestr(zi, b"")
        else:
            assert src is not None
            zi.compress_type = zipfile.ZIP_DEFLATED
            with self.zip.open(zi, "w", force_zip64=st.st_size > 1 << 31) as dst:
                left = st.st_size
                while left > 0 and (data := src.read(min(CHUNK, left))):
                    dst.write(data)
                    left -= len(data)

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
        if self._zstd is not None:
            self._zstd.close()
        if self.zip is not None:
            self.zip.close()


def _tar(out: IO[bytes], mode: str) -> tarfile.TarFile:
    """Closed by _Writer.close."""
    if mode == "w:gz":
        return tarfile.open(fileobj=out, mode="w:gz", compresslevel=6)
    if mode == "w|":
        return tarfile.open(fileobj=out, mode="w|")
    return tarfile.open(fileobj=out, mode="w")


@contextmanager
def _fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _add(w: _Writer, dfd: int, name: str, arc: str, deny: Denylist) -> None:
    if deny.match(tuple(arc.split("/"))) is not None:
        return  # left out of a directory's archive (named on its own, it is refused)
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        w.add(arc, st, target=os.fsdecode(os.readlink(os.fsencode(name), dir_fd=dfd)))
    elif stat.S_ISDIR(st.st_mode):
        w.add(arc, st)
        with _fd(os.open(name, DIR_FLAGS, dir_fd=dfd)) as sub:
            for child in sorted(os.listdir(sub)):
                if not child.startswith(_OURS):
                    _add(w, sub, child, f"{arc}/{child}", deny)
    elif stat.S_ISREG(st.st_mode):
        with _fd(os.open(name, _READ, dir_fd=dfd)) as fd:
            st = os.fstat(fd)  # what is read, not what the name was a moment ago
            if not stat.S_ISREG(st.st_mode):
                raise errors.Invalid(f"{arc}: not a regular file; nothing was archived")
            if st.st_nlink > 1:
                raise errors.Invalid(f"{arc}: has {st.st_nlink} hard links (maybe outside "
                                     "the files directory); nothing was archived")
            os.set_blocking(fd, True)
            with os.fdopen(os.dup(fd), "rb") as src:
                w.add(arc, st, src=src)
    else:
        raise errors.Invalid(f"{arc}: a device, fifo or socket; nothing was archived")


def make_archive(tree: FilesTree, paths: list[str], to: str) -> Entry:
    """The archive `to` of `paths` (each a file, link or directory; "" is the whole files
    directory), each stored under its path."""
    kind = format_of(parse(to)[-1] if parse(to) else "")
    sources = [parse(p) for p in paths] or [()]
    for parts in sources:
        tree.denylist.check(parts)
    upload = tree.upload(to)
    try:
        with os.fdopen(os.dup(upload.fd), "wb") as out:
            w = _Writer(kind, out)
            for parts in sources:
                if not parts:
                    with tree.directory(()) as root:
                        for child in sorted(os.listdir(root)):
                            if not child.startswith(_OURS) and child != upload.temp:
                                _add(w, root, child, child, tree.denylist)
                    continue
                with tree.directory(parts[:-1]) as dfd:
                    try:
                        _add(w, dfd, parts[-1], "/".join(parts), tree.denylist)
                    except FileNotFoundError as e:
                        raise os_error(e, parts) from None
            w.close()
        return upload.commit()
    except OSError as e:
        raise os_error(e, parse(to)) from None
    finally:
        upload.close()
