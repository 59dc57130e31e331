"""A server's `file_denylist` (docs/spec.md, "Files"): globs naming files the file manager
neither reads nor writes, e.g. a file where the game keeps a password.

A glob is matched with `fnmatch` (case-sensitive; `*`, `?`, `[…]`) against the path relative
to the files directory, `/`-separated, and against every parent of it: `*` matches across
`/`, so `*.key` also denies `a/b.key`. A glob without `/` is also matched against each name
in the path on its own, as gitignore does: `.rcon-cli.env` denies it at any depth. A path
denied this way, or one below a denied directory, answers 403 `denied`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from fnmatch import fnmatchcase

from manman import errors


class Denylist:
    def __init__(self, globs: Iterable[str] = ()) -> None:
        self.globs = tuple(globs)
        self._names = tuple(g for g in self.globs if "/" not in g)

    def __bool__(self) -> bool:
        return bool(self.globs)

    def match(self, parts: tuple[str, ...]) -> str | None:
        """The glob that denies `parts` (or a parent of it), None when none does."""
        if not self.globs:
            return None
        for name in parts:
            for g in self._names:
                if fnmatchcase(name, g):
                    return g
        for i in range(1, len(parts) + 1):
            path = "/".join(parts[:i])
            for g in self.globs:
                if fnmatchcase(path, g):
                    return g
        return None

    def check(self, parts: tuple[str, ...]) -> None:
        """Forbidden (403 `denied`) when a glob denies `parts`."""
        glob = self.match(parts)
        if glob is not None:
            raise denied(parts, glob)

    def check_below(self, dir_fd: int, name: str, *prefixes: tuple[str, ...]) -> None:
        """Forbidden when anything below the directory `name` (of `dir_fd`), put under each
        of `prefixes`, is denied: renaming or deleting a parent would move or remove it."""
        if not self.globs:
            return
        for below in _below(dir_fd, name):
            for prefix in prefixes:
                self.check((*prefix, *below))


def denied(parts: tuple[str, ...], glob: str) -> errors.Forbidden:
    return errors.Forbidden(f"{'/'.join(parts)[:300]}: refused by the server's file_denylist "
                            f"({glob[:100]!r})", "denied")


def _below(dir_fd: int, name: str) -> Iterator[tuple[str, ...]]:
    """The paths below the directory `name`, relative to it; links are not followed."""
    try:
        walk = os.fwalk(name, dir_fd=dir_fd, follow_symlinks=False)
        for top, dirs, files, _ in walk:
            base = tuple(top.split("/")[1:])
            for child in (*dirs, *files):
                yield (*base, child)
    except NotADirectoryError:
        return
