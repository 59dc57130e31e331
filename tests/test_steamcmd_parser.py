"""The steamcmd output parser over the real output shapes of docs/steamcmd.md."""

from __future__ import annotations

import pytest

from manman.worker.console.lines import LineFramer
from manman.worker.installers.steamcmd import SteamcmdParser

TYPICAL = b"""Redirecting stderr to '/home/steam/Steam/logs/stderr.txt'
Logging directory: '/home/steam/Steam/logs'
[  0%] Checking for available updates...
[----] Verifying installation...
UpdateUI: skip show logo
Steam Console Client (c) Valve Corporation - version 1785186678
-- type 'quit' to exit --
Loading Steam API...OK

Connecting anonymously to Steam Public...OK
Waiting for client config...OK
Waiting for user info...OK
 Update state (0x3) reconfiguring, progress: 0.00 (0 / 0)
 Update state (0x11) preallocating, progress: 33.46 (843614827 / 2521022188)
 Update state (0x61) downloading, progress: 0.76 (19265607 / 2521022188)
 Update state (0x81) verifying update, progress: 98.16 (1535089024 / 1563884649)
 Update state (0x101) committing, progress: 8.62 (3868444206 / 44888062441)
Success! App '1829350' fully installed.
Unloading Steam API...OK
"""


def parse(data: bytes, app_id: str, chunk: int = 0) -> tuple[SteamcmdParser, list[float]]:
    framer = LineFramer(cr_breaks=True)
    parser = SteamcmdParser(app_id)
    seen: list[float] = []
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
    for piece in pieces:
        for line in framer.feed(piece):
            if (p := parser.feed(line)) is not None:
                seen.append(p)
    for line in framer.flush():
        if (p := parser.feed(line)) is not None:
            seen.append(p)
    return parser, seen


@pytest.mark.parametrize("chunk", [0, 1, 7, 64, 4096])
def test_typical_run_in_any_bursts(chunk: int) -> None:
    parser, seen = parse(TYPICAL, "1829350", chunk)
    assert parser.success and parser.error is None and parser.verdict(0) is None
    assert seen == sorted(seen) and seen[-1] == 100.0
    # preallocating 5–10, downloading 10–85, verifying update 85–95, committing 95–99
    assert seen[:4] == [6.67, 10.57, 94.82, 95.34]


def test_cr_line_ends_and_locale_commas() -> None:
    data = (b" Update state (0x61) downloading, progress: 45,21 (1234567 / 2730000)\r"
            b" Update state (0x61) downloading, progress: 50,00 (1365000 / 2730000)\r\n"
            b"Success! App '10' fully installed.\r\n")
    _, seen = parse(data, "10", 5)
    assert seen == [43.91, 47.5, 100.0]


def test_stalled_lines_and_phase_resets_never_go_backwards() -> None:
    lines = [" Update state (0x61) downloading, progress: 45.21 (1 / 2)"] * 50 + [
        " Update state (0x5) verifying install, progress: 90.00 (9 / 10)",
        " Update state (0x81) verifying update, progress: 10.00 (1 / 10)",
        " Update state (0x61) downloading, progress: 99.00 (99 / 100)"]
    parser = SteamcmdParser("1")
    moved = [p for line in lines if (p := parser.feed(line)) is not None]
    assert moved == [43.91, 86.0]
    assert parser.progress == 86.0


def test_self_update_preamble_is_not_install_progress() -> None:
    parser = SteamcmdParser("1")
    for line in ("[  0%] Downloading update...", "[----] Extracting package...",
                 "[----] Installing update...", "[----] Update complete, launching Steamcmd..."):
        assert parser.feed(line) is None
    assert parser.progress == 0 and not parser.success and parser.error is None


@pytest.mark.parametrize("line", [
    "ERROR! Failed to install app '380870' (No subscription)",
    "ERROR! Failed to install app '222860' (Invalid platform)",
    "Error! App '740' state is 0x202 after update job.",
    "Error! App '740' state is 0x602 after update job.",
    "ERROR! Timed out waiting for AppInfo update.",
    "Waiting for user info...FAILED (Timed out)",
    "Login Failure: No Connection",
])
def test_every_error_form_fails_even_with_exit_0(line: str) -> None:
    parser = SteamcmdParser("740")
    parser.feed(line)
    parser.feed("Unloading Steam API...OK")
    assert parser.verdict(0) == line
    assert parser.verdict(8) == line


def test_first_error_is_kept() -> None:
    parser = SteamcmdParser("1")
    parser.feed("Waiting for user info...FAILED (Timed out)")
    parser.feed("Login Failure: No Connection")
    assert parser.error == "Waiting for user info...FAILED (Timed out)"


def test_exit_codes_and_silence() -> None:
    assert SteamcmdParser("1").verdict(7) == "steamcmd exited with code 7"
    assert SteamcmdParser("1").verdict(0) == "steamcmd ended without reporting success"
    up_to_date = SteamcmdParser("223350")
    up_to_date.feed("Success! App '223350' already up to date.")
    assert up_to_date.verdict(0) is None and up_to_date.progress == 100.0
    other_app = SteamcmdParser("1")
    other_app.feed("Success! App '2' fully installed.")
    assert not other_app.success


def test_an_app_id_with_a_leading_zero_is_matched_as_a_number() -> None:
    parser, _ = parse(b"Success! App '730' fully installed.\n", "0730")
    assert parser.verdict(0) is None
