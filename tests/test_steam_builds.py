"""Steam builds: the KeyValues parser (and attacks on it), the installed build from the
appmanifest, the latest build through the steamcmd emulator as a real child process,
including steamcmd's stale appinfo.vdf cache (LinuxGSM#301)."""

from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path

import pytest
import trio

from manman.worker.installers.steam_builds import (
    MAX_OUTPUT_CHARS,
    MAX_VDF_CHARS,
    VdfError,
    appinfo_caches,
    installed_build,
    latest_build,
    loads,
    parse_app_info,
)
from manman.worker.installers.steamcmd import SteamcmdError, run_steamcmd
from tests import steamcmd_emulator as emu
from tests.conftest import pids_with, steamcmd_emulator

# what `steamcmd +login anonymous +app_info_update 1 +app_info_print 233780 +quit` printed
# (trimmed), as posted in a public steamcmd thread; tabs as steamcmd writes them
APP_INFO = """Redirecting stderr to '/home/steam/Steam/logs/stderr.txt'
[  0%] Checking for available updates...
[----] Verifying installation...
Steam Console Client (c) Valve Corporation - version 1785186678
-- type 'quit' to exit --
Loading Steam API...OK

Connecting anonymously to Steam Public...OK
Waiting for client config...OK
Waiting for user info...OK
AppID : 233780, change number : 12921088/4294967295, last change : Sat Oct 23 14:45:31 2021
"233780"
{
\t"common"
\t{
\t\t"name"\t\t"Arma 3 Server"
\t\t"type"\t\t"Tool"
\t}
\t"depots"
\t{
\t\t"233781"
\t\t{
\t\t\t"manifests"
\t\t\t{
\t\t\t\t"public"
\t\t\t\t{
\t\t\t\t\t"gid"\t\t"5396213741391547316"
\t\t\t\t}
\t\t\t}
\t\t}
\t\t"branches"
\t\t{
\t\t\t"public"
\t\t\t{
\t\t\t\t"buildid"\t\t"7459543"
\t\t\t\t"timeupdated"\t\t"1633438866"
\t\t\t}
\t\t\t"cdlc_internal_server"
\t\t\t{
\t\t\t\t"buildid"\t\t"6475122"
\t\t\t\t"description"\t\t"For internal \\"CDLC\\" testing"
\t\t\t\t"pwdrequired"\t\t"1"
\t\t\t\t"timeupdated"\t\t"1617270887"
\t\t\t}
\t\t}
\t}
}
Unloading Steam API...OK
"""

# an appmanifest as steamcmd leaves it after installing Rust's server (258550)
MANIFEST = """"AppState"
{
\t"appid"\t\t"258550"
\t"Universe"\t\t"1"
\t"name"\t\t"Rust Dedicated Server"
\t"StateFlags"\t\t"4"
\t"installdir"\t\t"rust_dedicated"
\t"LastUpdated"\t\t"1757159921"
\t"SizeOnDisk"\t\t"8217703701"
\t"StagingSize"\t\t"0"
\t"buildid"\t\t"19874893"
\t"LastOwner"\t\t"76561200247933079"
\t"UpdateResult"\t\t"0"
\t"BytesToDownload"\t\t"4288512"
\t"BytesDownloaded"\t\t"4288512"
\t"TargetBuildID"\t\t"19874893"
\t"InstalledDepots"
\t{
\t\t"258552"
\t\t{
\t\t\t"manifest"\t\t"7826341510309710521"
\t\t\t"size"\t\t"862726932"
\t\t}
\t}
\t"UserConfig"
\t{
\t}
\t"MountedConfig"
\t{
\t}
}
"""


# -- the parser -------------------------------------------------------------------------------


def test_keyvalues_blocks_escapes_comments_bare_words() -> None:
    doc = loads('// a comment\n"a" { "b" "say \\"hi\\"\\n" // trailing\n'
                ' bare word\n "empty" { } "path" "C:\\\\Steam" }\n"top" "1"')
    assert doc == {"a": {"b": 'say "hi"\n', "bare": "word", "empty": {}, "path": "C:\\Steam"},
                   "top": "1"}


def test_a_key_given_twice_merges_blocks_and_the_last_value_wins() -> None:
    assert loads('"a" { "x" "1" } "a" { "y" "2" } "k" "1" "k" "2"') == \
        {"a": {"x": "1", "y": "2"}, "k": "2"}


def test_real_app_info_output() -> None:
    assert parse_app_info(APP_INFO, "233780") == 7459543
    assert parse_app_info(APP_INFO, "0233780") == 7459543  # printed without the zero
    assert parse_app_info(APP_INFO, 233780, "cdlc_internal_server") == 6475122
    assert parse_app_info(APP_INFO, "233780", "nosuchbranch") is None
    assert parse_app_info(APP_INFO, "730") is None  # another app's output
    # bursts of '\r\n' line ends
    assert parse_app_info(APP_INFO.replace("\n", "\r\n"), "233780") == 7459543


def test_depots_manifests_public_is_not_the_branch() -> None:
    # only depots → branches → public holds the build
    out = APP_INFO.replace('\t\t\t\t"buildid"\t\t"7459543"\n', "")
    assert parse_app_info(out, "233780") is None


def test_no_app_info_and_an_empty_block_then_the_full_one() -> None:
    # steam-for-linux#11521: no block at all; asking twice: an empty block, then the real one
    assert parse_app_info("No app info for AppID 233780 found, requesting...\n",
                          "233780") is None
    assert parse_app_info('AppID : 233780, change number : 1/1\n"233780"\n{\n}\n' + APP_INFO,
                          "233780") == 7459543


@pytest.mark.parametrize("bad", [
    '"233780"\n{\n\t"depots"\n\t{\n',  # cut off
    '"233780"\n{\n\t"depots" { "x" }\n}\n',  # a key without a value
    '"233780"\n{\n\x00\x01\x02\n}\n',  # binary
])
def test_a_broken_app_block_is_an_error(bad: str) -> None:
    with pytest.raises(VdfError):
        parse_app_info("log line\n" + bad, "233780")


def test_a_build_that_is_no_number_is_an_error() -> None:
    with pytest.raises(VdfError, match="not a build number"):
        parse_app_info(APP_INFO.replace('"7459543"', '"74x9543"'), "233780")


def test_not_an_app_id() -> None:
    with pytest.raises(ValueError):
        parse_app_info(APP_INFO, "73$0")
    with pytest.raises(ValueError):
        parse_app_info(APP_INFO, '730"\n{')


@pytest.mark.parametrize(("name", "text"), [
    ("huge", '"k" "' + "x" * (MAX_VDF_CHARS + 1) + '"'),
    ("huge unterminated", '"k" "' + "x" * (MAX_VDF_CHARS - 10)),
    ("deep", '"a" {' * 100_000),
    ("deep closed", '"a" {' * 40 + "}" * 40),
    ("unterminated string", '"a" { "b" "c'),
    ("unterminated block", '"a" { "b" { "c" "d" }'),
    ("unmatched brace", '"a" "b" }'),
    ("key without value", '"a" { "b" }'),
    ("block without key", '{ "a" "b" }'),
    ("binary", "\x07DV\x29\x01\x00\x00\x00" + "\x00" * 64),
    ("control char", '"a" \x01b'),
])
def test_attacks_raise_quickly(name: str, text: str) -> None:
    started = time.perf_counter()
    with pytest.raises(VdfError):
        loads(text)
    assert time.perf_counter() - started < 1.0, name


def test_random_bytes_never_raise_anything_else() -> None:
    rng = random.Random(12)
    alphabet = '"{}\\/ \t\n\rab01\x00\xff'
    for _ in range(3000):
        n = rng.randrange(0, 80)
        text = "".join(rng.choice(alphabet) for _ in range(n)) if rng.random() < 0.7 else \
            os.urandom(n).decode("latin-1")
        try:
            doc = loads(text)
        except VdfError:
            continue
        assert isinstance(doc, dict)
        with contextlib.suppress(VdfError):
            parse_app_info('"1"\n' + text, "1")


def test_hostile_output_is_read_in_linear_time() -> None:
    cases = ['"730"\n{\n' * 300_000,  # blocks never closed, each nested in the last
             '"730"\n{\n}\n' * 300_000,  # many empty blocks
             '"730"\n"730"\n' * 300_000]
    for out in cases:
        started = time.perf_counter()
        with contextlib.suppress(VdfError):
            assert parse_app_info(out, "730") is None
        assert time.perf_counter() - started < 1.0
    with pytest.raises(VdfError):
        parse_app_info("x" * (MAX_OUTPUT_CHARS + 1), "730")


def test_a_large_valid_document_parses() -> None:
    text = "".join(f'"k{i}"\t\t"v{i}"\n' for i in range(50_000))
    started = time.perf_counter()
    assert len(loads(text)) == 50_000
    assert time.perf_counter() - started < 2.0


# -- the installed build ----------------------------------------------------------------------


def write_manifest(install: Path, app: str, text: str | bytes) -> Path:
    path = install / "steamapps" / f"appmanifest_{app}.acf"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    return path


def test_installed_build_from_a_real_manifest(tmp_path: Path) -> None:
    assert installed_build(tmp_path, "258550") is None  # not installed
    write_manifest(tmp_path, "258550", MANIFEST)
    assert installed_build(tmp_path, "258550") == 19874893
    assert installed_build(tmp_path, 258550) == 19874893
    # keys are case-insensitive, as Valve reads them
    write_manifest(tmp_path, "258550", MANIFEST.replace('"buildid"', '"BuildID"'))
    assert installed_build(tmp_path, "258550") == 19874893
    # an install that has not finished names build 0, or none
    write_manifest(tmp_path, "258550", MANIFEST.replace('"19874893"', '"0"'))
    assert installed_build(tmp_path, "258550") is None
    write_manifest(tmp_path, "258550", '"AppState"\n{\n\t"appid"\t\t"258550"\n}\n')
    assert installed_build(tmp_path, "258550") is None


@pytest.mark.parametrize(("name", "content"), [
    ("binary", b"\x07DV\x29\x01\x00\x00\x00" + os.urandom(256)),
    ("not utf-8", b'"AppState" { "buildid" "\xff\xfe" }'),
    ("huge", b'"AppState" { "name" "' + b"x" * (MAX_VDF_CHARS + 10) + b'" }'),
    ("no AppState", b'"Other" { "buildid" "1" }'),
    ("cut off", MANIFEST[:200].encode()),
    ("bad build", MANIFEST.replace('"19874893"', '"-1"').encode()),
])
def test_a_corrupt_manifest_is_an_error(tmp_path: Path, name: str, content: bytes) -> None:
    write_manifest(tmp_path, "258550", content)
    with pytest.raises(VdfError):
        installed_build(tmp_path, "258550")


def test_a_manifest_that_is_a_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "steamapps" / "appmanifest_258550.acf").mkdir(parents=True)
    with pytest.raises(VdfError):
        installed_build(tmp_path, "258550")


# -- through the emulator ---------------------------------------------------------------------


@pytest.fixture
def steamcmd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return steamcmd_emulator(tmp_path, monkeypatch)


def home(tmp_path: Path) -> str:
    return str(tmp_path / "steam-home")  # what conftest gives the emulator


async def app_update(steamcmd: Path, install: Path, app: str, *extra: str) -> list[str]:
    lines: list[str] = []
    code = await run_steamcmd(str(steamcmd), ["+force_install_dir", str(install), "+login",
                                              "anonymous", "+app_update", app, *extra,
                                              "validate", "+quit"],
                              cwd=install.parent, env=dict(os.environ), timeout=20,
                              on_lines=lines.extend)
    assert code == 0
    return lines


async def info_without_deleting_the_cache(steamcmd: Path, app: str) -> int | None:
    """What a build check that forgets the cache sees."""
    lines: list[str] = []
    await run_steamcmd(str(steamcmd), ["+login", "anonymous", "+app_info_update", "1",
                                       "+app_info_print", app, "+quit"],
                       cwd=steamcmd.parent, env=dict(os.environ), timeout=20,
                       on_lines=lines.extend)
    return parse_app_info("\n".join(lines), app)


async def test_the_emulators_manifest_names_the_installed_build(tmp_path: Path,
                                                                steamcmd: Path) -> None:
    install = tmp_path / "files"
    install.mkdir()
    emu.publish(home(tmp_path), "1000", 9100)
    await app_update(steamcmd, install, "1000")
    assert installed_build(install, "1000") == 9100
    text = (install / "steamapps" / "appmanifest_1000.acf").read_text()
    state = loads(text)["AppState"]
    assert isinstance(state, dict)
    assert {"appid", "buildid", "installdir", "StateFlags", "InstalledDepots"} <= set(state)
    # a beta branch installs that branch's build, and says so in the manifest
    emu.publish(home(tmp_path), "1000", 9200, branch="beta", description='a "new" one')
    await app_update(steamcmd, install, "1000", "-beta", "beta")
    assert installed_build(install, "1000") == 9200


async def test_latest_build_and_publishing_a_new_one(tmp_path: Path, steamcmd: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    assert await latest_build(str(steamcmd), "1000", "public", work) == emu.DEFAULT_BUILD
    emu.publish(home(tmp_path), "1000", 9300)
    assert await latest_build(str(steamcmd), "1000", "public", work) == 9300
    emu.publish(home(tmp_path), "1000", 9301)
    emu.publish(home(tmp_path), "1000", 777, branch="beta", description='say "hi"')
    assert await latest_build(str(steamcmd), "1000", "public", work) == 9301
    assert await latest_build(str(steamcmd), "01000", "beta", work) == 777
    with pytest.raises(SteamcmdError, match="printed no build of app 1000 branch 'nope'"):
        await latest_build(str(steamcmd), "1000", "nope", work)


async def test_the_stale_appinfo_cache_is_deleted_first(tmp_path: Path, steamcmd: Path
                                                        ) -> None:
    install = tmp_path / "files"
    install.mkdir()
    emu.publish(home(tmp_path), "1000", 9400)
    await app_update(steamcmd, install, "1000")  # steamcmd now caches build 9400
    cache = tmp_path / "appcache" / "appinfo.vdf"
    assert cache.is_file()
    emu.publish(home(tmp_path), "1000", 9401)  # Steam has a new build
    # the emulator behaves as LinuxGSM#301 found steamcmd to: the cache answers, old
    assert await info_without_deleting_the_cache(steamcmd, "1000") == 9400
    # latest_build deletes it first, and sees the new build
    assert await latest_build(str(steamcmd), "1000", "public", tmp_path) == 9401
    assert installed_build(install, "1000") == 9400  # so an update is due


async def test_steamcmd_failures(tmp_path: Path, steamcmd: Path) -> None:
    with pytest.raises(SteamcmdError, match=r"^Waiting for user info\.\.\.FAILED"):
        await latest_build(str(steamcmd), "1040", "public", tmp_path)
    with pytest.raises(SteamcmdError, match="printed no build of app 1090"):
        await latest_build(str(steamcmd), "1090", "public", tmp_path)  # no app info
    with pytest.raises(SteamcmdError, match=r"^cannot run steamcmd \(/nonexistent/steamcmd\)"):
        await latest_build("/nonexistent/steamcmd", "1000", "public", tmp_path)


async def none_left(marker: str) -> None:
    """No live process carries `marker`; one SIGKILLed a moment ago may still be on its way
    out (the wrapper is reaped, its child dies on its own schedule)."""
    with trio.fail_after(2):
        while pids_with(marker):
            await trio.sleep(0.02)


async def test_a_hung_or_flooding_steamcmd_is_killed(tmp_path: Path, steamcmd: Path) -> None:
    with trio.fail_after(10):
        with pytest.raises(SteamcmdError, match="timed out after 1s"):
            await latest_build(str(steamcmd), "1050", "public", tmp_path, timeout=1)
        await none_left("+app_info_print\x001050\x00")
        with pytest.raises(SteamcmdError, match="printed more than"):
            await latest_build(str(steamcmd), "1095", "public", tmp_path, timeout=8)
        await none_left("+app_info_print\x001095\x00")


async def test_a_cancelled_check_leaves_no_steamcmd(tmp_path: Path, steamcmd: Path) -> None:
    with trio.move_on_after(1):
        await latest_build(str(steamcmd), "1050", "public", tmp_path)
    await none_left("+app_info_print\x001050\x00")


def test_where_the_cache_is_looked_for(tmp_path: Path) -> None:
    real = tmp_path / "steamcmd-dir"
    real.mkdir()
    exe = real / "steamcmd.sh"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "steamcmd").symlink_to(exe)
    paths = appinfo_caches("steamcmd", {"PATH": str(bindir), "HOME": "/home/s"})
    assert real / "appcache" / "appinfo.vdf" in paths  # beside the real steamcmd.sh
    assert Path("/home/s/Steam/appcache/appinfo.vdf") in paths
    assert Path("/home/s/.steam/appcache/appinfo.vdf") in paths
    assert Path("/home/s/.local/share/Steam/appcache/appinfo.vdf") in paths
    assert len(paths) == len(set(paths))
    assert all(p.name == "appinfo.vdf" and p.parent.name == "appcache" for p in paths)
