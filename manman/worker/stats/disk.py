"""The size of a files directory: a walk, run in a thread at most once a minute a server."""

from __future__ import annotations

import os


def tree_bytes(root: str) -> int:
    """Bytes allocated under `root` (st_blocks, as du counts; hard links once), symlinks
    not followed; entries that vanish during the walk are skipped."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        path = stack.pop()
        try:
            with os.scandir(path) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    if st.st_nlink > 1:
                        key = (st.st_dev, st.st_ino)
                        if key in seen:
                            continue
                        seen.add(key)
                    total += st.st_blocks * 512
        except OSError:
            continue
    return total
