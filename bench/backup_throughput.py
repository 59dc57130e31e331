"""Backup and restore throughput: manman's writer and restore (the code a worker runs in its
thread) against `tar -I 'zstd -3' -cf` and `tar -I zstd -xf` of the same generated tree, in
the same run. Goal (issue 13): at least 0.8x tar's speed both ways.

The tree mixes what game servers hold: compressible text (configs, logs), incompressible
binary (region files, assets) and many small files.

    .venv/bin/python bench/backup_throughput.py [--mib 1024] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from manman.worker.backups.restore import restore_backup
from manman.worker.backups.writer import write_backup

MIB = 1024 * 1024


def generate(root: Path, mib: int) -> int:
    """About `mib` MiB: 45% random binary in 8 MiB files, 45% text in 1 MiB files, 10% in
    4 KiB files; returns the bytes written."""
    total = 0
    words = b"player joined the game and saved chunk region level seed spawn ".split()
    text = b"\n".join(b" ".join(words[(i * 7 + j) % len(words)] for j in range(12))
                      + b" %d" % i for i in range(20000))
    for i in range(max(1, mib * 45 // 100 // 8)):
        d = root / "world" / "region"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"r.{i}.mca").write_bytes(os.urandom(8 * MIB))
        total += 8 * MIB
    for i in range(max(1, mib * 45 // 100)):
        d = root / "logs"
        d.mkdir(parents=True, exist_ok=True)
        chunk = (text * (MIB // len(text) + 1))[:MIB]
        (d / f"log-{i}.txt").write_bytes(chunk)
        total += MIB
    for i in range(max(1, mib * 10 // 100 * 256)):
        d = root / "small" / f"{i // 500}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.json").write_bytes(os.urandom(2048) + text[:2048])
        total += 4096
    return total


def timed(fn: object, *args: object) -> float:
    # each step starts with no dirty pages of the one before: their writeback would
    # otherwise slow whichever comes next
    subprocess.run(["sync"], check=False)
    began = time.perf_counter()
    fn(*args)  # type: ignore[operator]
    return time.perf_counter() - began


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--dir", default=None, help="where the tree is made (default: $TMPDIR)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="manman-bench-backup-", dir=args.dir))
    try:
        tree = work / "files"
        tree.mkdir()
        size = generate(tree, args.mib)
        cancel = threading.Event()
        ours = work / "ours.tar.zst"
        w_ours = timed(write_backup, tree, ours, [], 0.0, cancel)
        theirs = work / "tar.tar.zst"
        w_tar = timed(subprocess.run, ["tar", "-I", "zstd -3", "-cf", str(theirs), "-C",
                                       str(tree), "."], **{})
        from manman.worker.backups.writer import file_sha256

        _, sha = file_sha256(ours, cancel)
        out_ours = work / "restore-ours"
        out_ours.mkdir()
        r_ours = timed(restore_backup, ours, sha, out_ours, True, cancel)
        out_tar = work / "restore-tar"
        out_tar.mkdir()
        r_tar = timed(subprocess.run, ["tar", "-I", "zstd", "-xf", str(theirs), "-C",
                                       str(out_tar)])
        print(json.dumps({
            "tree_mib": round(size / MIB, 1),
            "backup": {"manman_s": round(w_ours, 2), "tar_zstd_s": round(w_tar, 2),
                       "manman_mib_s": round(size / MIB / w_ours, 1),
                       "speed_vs_tar": round(w_tar / w_ours, 2),
                       "manman_bytes": ours.stat().st_size,
                       "tar_bytes": theirs.stat().st_size},
            "restore": {"manman_s": round(r_ours, 2), "tar_zstd_s": round(r_tar, 2),
                        "speed_vs_tar": round(r_tar / r_ours, 2)},
            "goal": "speed_vs_tar >= 0.8 both ways"}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
