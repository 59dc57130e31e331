"""Steam build numbers: the one installed and the latest one Steam offers.

The installed build is `AppState` → `buildid` in `steamapps/appmanifest_<id>.acf` under the
install dir; the latest is `depots` → `branches` → `<branch>` → `buildid` in what
`steamcmd +login anonymous +app_info_update 1 +app_info_print <id> +quit` prints, amid its
log lines. Both are Valve KeyValues text ("VDF"), read by the small parser here: quoted or bare
tokens, `{}` blocks, `\\"`-style escapes, `//` comments. It is bounded in size and depth and
linear in time; anything it cannot read raises VdfError (a ValueError).

steamcmd answers app_info_print from its cache (`appcache/appinfo.vdf` under its own
directory) even after `+app_info_update 1`, so a build published since the cache was written
goes unseen (LinuxGSM#301). latest_build deletes that file first: see docs/steamcmd.md.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import trio

from manman.worker.installers.steamcmd import SteamcmdError, SteamcmdParser, run_steamcmd

MAX_VDF_CHARS = 4 * 1024 * 1024  # a big game's app_info_print is ~100 kB, a manifest ~2 kB
MAX_DEPTH = 32  # app info nests about 6 deep
MAX_OUTPUT_CHARS = 8 * 1024 * 1024  # a build check's whole steamcmd output
CHECK_TIMEOUT = 120.0

Vdf = dict[str, Union[str, "Vdf"]]


MAX_APP_BLOCKS = 16  # steamcmd prints the block once, twice when asked twice


class VdfError(ValueError):
    """The text is not KeyValues manman can read; the message says where."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset  # where reading stopped, when known


# one token per match, each alternative linear: whitespace, a comment, a brace, a quoted string
# (the unrolled `[^"\\]*(?:\\.[^"\\]*)*` cannot backtrack), a bare word without control chars
_TOKEN = re.compile(r'[ \t\r\n\f\v]+|//[^\n]*|([{}])|"([^"\\]*(?:\\.[^"\\]*)*)"'
                    r'|([^\s{}"\x00-\x1f\x7f]+)', re.S)
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"'}
_ESCAPE = re.compile(r"\\(.)", re.S)


def _unescape(raw: str) -> str:
    if "\\" not in raw:
        return raw
    # an unknown escape stays as written, as Valve's reader leaves it
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(0)), raw)


def loads(text: str) -> Vdf:
    """A whole KeyValues document (a sequence of key/value pairs) as nested dicts."""
    if len(text) > MAX_VDF_CHARS:
        raise VdfError(f"more than {MAX_VDF_CHARS} characters")
    doc, _ = _parse(text, 0, len(text), one=False)
    return doc


def _parse(text: str, pos: int, end: int, *, one: bool) -> tuple[Vdf, int]:
    """Key/value pairs in text[pos:end]; with `one`, only the first top-level pair. Returns
    the pairs and the offset after them. A key given twice: blocks merge, else the last
    wins."""
    root: Vdf = {}
    stack: list[Vdf] = [root]
    key: str | None = None
    while pos < end:
        m = _TOKEN.match(text, pos, end)
        if m is None:
            what = "an unterminated string" if text[pos] == '"' else \
                f"a bad character {text[pos]!r}"
            raise VdfError(f"{what} at offset {pos}", pos)
        pos = m.end()
        brace, quoted, bare = m.group(1, 2, 3)
        if brace == "{":
            if key is None:
                raise VdfError(f"a block without a key at offset {m.start()}", pos)
            if len(stack) > MAX_DEPTH:
                raise VdfError(f"nested deeper than {MAX_DEPTH} at offset {m.start()}", pos)
            parent = stack[-1]
            block = parent.get(key)
            if not isinstance(block, dict):
                block = parent[key] = {}
            stack.append(block)
            key = None
        elif brace == "}":
            if key is not None:
                raise VdfError(f"key {key!r} has no value (offset {m.start()})", pos)
            if len(stack) == 1:
                raise VdfError(f"an unmatched '}}' at offset {m.start()}", pos)
            stack.pop()
            if one and len(stack) == 1:
                return root, pos
        elif quoted is not None or bare is not None:
            token = _unescape(quoted) if quoted is not None else bare
            if key is None:
                key = token
            else:
                stack[-1][key] = token
                key = None
                if one and len(stack) == 1:
                    return root, pos
    if len(stack) > 1:
        raise VdfError(f"{len(stack) - 1} block(s) not closed at the end", pos)
    if key is not None:
        raise VdfError(f"key {key!r} has no value at the end", pos)
    return root, pos


def get(block: Mapping[str, Any] | None, key: str) -> Any:
    """block[key], the key matched case-insensitively as Valve does; None if absent."""
    if not isinstance(block, Mapping):
        return None
    if key in block:
        return block[key]
    folded = key.casefold()
    for k, v in block.items():
        if k.casefold() == folded:
            return v
    return None


def _build(value: Any, where: str) -> int | None:
    """A buildid value as a number; None when absent or 0 (nothing installed yet)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() \
            or len(value) > 12:
        raise VdfError(f"{where} is not a build number: {str(value)[:40]!r}")
    return int(value) or None


def _app(app_id: str | int) -> str:
    """The app id as steamcmd prints it ('0730' → '730')."""
    text = str(app_id)
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise ValueError(f"not a Steam app id: {text[:40]!r}")
    return str(int(text))


def manifest_path(install_dir: Path, app_id: str | int) -> Path:
    return install_dir / "steamapps" / f"appmanifest_{_app(app_id)}.acf"


def installed_build(install_dir: Path, app_id: str | int) -> int | None:
    """The build in the install's appmanifest; None when there is no manifest or it names no
    build yet. A manifest that is not readable KeyValues raises VdfError. Blocking."""
    path = manifest_path(install_dir, app_id)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_VDF_CHARS + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise VdfError(f"cannot read {path.name}: {e.strerror or e}") from None
    if len(raw) > MAX_VDF_CHARS:
        raise VdfError(f"{path.name} is larger than {MAX_VDF_CHARS} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise VdfError(f"{path.name} is not UTF-8 text") from None
    state = get(loads(text), "AppState")
    if not isinstance(state, dict):
        raise VdfError(f"{path.name} holds no AppState block")
    return _build(get(state, "buildid"), f"{path.name} buildid")


def parse_app_info(output: str, app_id: str | int, branch: str = "public") -> int | None:
    """The branch's buildid from `+app_info_print` output (log lines around the app's block
    are skipped). None when the output holds no block for the app, or the block no such
    branch (steamcmd then printed `No app info for AppID … found` or an empty `{}`). When the
    block is printed more than once, the last one that names the build counts."""
    if len(output) > MAX_OUTPUT_CHARS:
        raise VdfError(f"more than {MAX_OUTPUT_CHARS} characters of output")
    app = _app(app_id)
    found: int | None = None
    error: VdfError | None = None
    parsed = 0
    after = 0
    # the block starts at a line that is just the quoted app id, unindented
    for m in re.finditer(rf'^"{app}"[ \t]*\r?$', output, re.M):
        if m.start() < after:  # inside the block just read (or given up on): linear time
            continue
        if parsed == MAX_APP_BLOCKS:
            break
        parsed += 1
        try:
            block, after = _parse(output, m.start(), min(len(output), m.start() + MAX_VDF_CHARS),
                                  one=True)
        except VdfError as e:
            error = e
            after = e.offset or m.end()
            continue
        branches = get(get(get(block, app), "depots"), "branches")
        build = _build(get(get(branches, branch), "buildid"), f"branch {branch!r} buildid")
        if build is not None:
            found = build
    if found is None and error is not None:
        raise VdfError(f"the app_info_print block of app {app}: {error}")
    return found


def appinfo_caches(steamcmd: str, env: Mapping[str, str]) -> list[Path]:
    """Where steamcmd may keep `appcache/appinfo.vdf`: its own directory (the tarball's
    steamcmd.sh, followed through a symlink), else the Steam roots the packaged steamcmd uses
    under $HOME (~/Steam, ~/.steam, ~/.steam/steam, ~/.steam/steamcmd, $XDG_DATA_HOME/Steam)."""
    roots: list[Path] = []
    exe = shutil.which(steamcmd, path=env.get("PATH", os.defpath))
    if exe is not None:
        roots += [Path(exe).parent, Path(exe).resolve().parent]
    home = env.get("HOME")
    if home:
        h = Path(home)
        data = Path(env.get("XDG_DATA_HOME") or h / ".local" / "share")
        roots += [h / "Steam", h / ".steam", h / ".steam" / "steam", h / ".steam" / "steamcmd",
                  data / "Steam"]
    out: list[Path] = []
    for root in roots:
        path = root / "appcache" / "appinfo.vdf"
        if path not in out:
            out.append(path)
    return out


def _forget(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:  # a cache left in place would answer with the old build
            raise SteamcmdError(f"cannot delete steamcmd's stale {path}: "
                                f"{e.strerror or e}") from None


class _Collect:
    """steamcmd's output, bounded, with the first error line it printed."""

    def __init__(self, app: str) -> None:
        self.lines: list[str] = []
        self.size = 0
        self.errors = SteamcmdParser(app)

    def __call__(self, lines: list[str]) -> None:
        for line in lines:
            self.size += len(line) + 1
            if self.size > MAX_OUTPUT_CHARS:  # raising here ends steamcmd
                raise SteamcmdError(f"steamcmd printed more than {MAX_OUTPUT_CHARS} "
                                    "characters")
            self.errors.feed(line)
            self.lines.append(line)


async def latest_build(steamcmd: str, app_id: str | int, branch: str, workdir: Path, *,
                       env: dict[str, str] | None = None,
                       timeout: float = CHECK_TIMEOUT) -> int:
    """The branch's current build on Steam, asked of steamcmd after deleting its app info
    cache. Raises SteamcmdError when steamcmd cannot be run, times out, prints an error line
    or names no build. Holds no lock: the caller holds the worker's one steamcmd lock (runs
    share steamcmd's files)."""
    app = _app(app_id)
    env = dict(os.environ) if env is None else env
    await trio.to_thread.run_sync(_forget, appinfo_caches(steamcmd, env))
    out = _Collect(app)
    code = await run_steamcmd(
        steamcmd, ["+login", "anonymous", "+app_info_update", "1", "+app_info_print", app,
                   "+quit"], cwd=workdir, env=env, timeout=timeout, on_lines=out)
    if out.errors.error is not None:
        raise SteamcmdError(out.errors.error)
    try:  # up to a second's work for the biggest output allowed: off the event loop
        build = await trio.to_thread.run_sync(parse_app_info, "\n".join(out.lines), app,
                                              branch)
    except VdfError as e:
        raise SteamcmdError(f"cannot read steamcmd's app info: {e}") from None
    if build is None:  # the output is the evidence; the exit code alone is not trusted
        why = f" (exit code {code})" if code else ""
        raise SteamcmdError(f"steamcmd printed no build of app {app} branch {branch!r}{why}")
    return build


class SteamBuilds:
    """A worker's reader of its steamcmd servers' builds: the installed one from the
    manifest, the latest from steamcmd under the worker's one steamcmd lock (the lock its
    installs hold too)."""

    def __init__(self, steamcmd: str, lock: trio.Lock, env: dict[str, str],
                 timeout: float = CHECK_TIMEOUT) -> None:
        self.steamcmd = steamcmd
        self.env = env
        self.timeout = timeout
        self._lock = lock

    async def installed(self, install_dir: Path, app_id: str | int) -> int | None:
        return await trio.to_thread.run_sync(installed_build, install_dir, app_id)

    async def latest(self, app_id: str | int, workdir: Path, branch: str = "public") -> int:
        await trio.to_thread.run_sync(lambda: workdir.mkdir(parents=True, exist_ok=True))
        async with self._lock:
            return await latest_build(self.steamcmd, app_id, branch, workdir, env=self.env,
                                      timeout=self.timeout)
