"""The web console in a real headless Chromium (Debian's), driven by Playwright's sync API in a
worker thread while the host and its worker run on this test's trio loop."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import (
    ADMIN,
    RunningHost,
    fake_spec,
    host_config,
    start_hosted_worker,
)

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
SCREENSHOT = ARTIFACTS / "web-console.png"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
MAX_DOM_LINES = 2000
STEP_MS = 10_000  # every single wait in the browser is bounded by this

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is not installed (the test command "
                                "installs Debian's chromium)")

# How late a 50 ms timer fires: the page's main thread was blocked at least that long.
LAG_PROBE = """() => {
  window.__lag = 0;
  let last = performance.now();
  window.__lagTimer = setInterval(() => {
    const now = performance.now();
    window.__lag = Math.max(window.__lag, now - last - 50);
    last = now;
  }, 50);
}"""
LAG_READ = "() => { clearInterval(window.__lagTimer); return window.__lag; }"
SEQS = "els => els.map(e => Number(e.dataset.seq))"


def in_browser(url: str, out: dict[str, Any], script: Callable[[Any, dict[str, Any]], None]
               ) -> None:
    """Run `script(page, out)` on a fresh page at `url`; runs in a worker thread. Records
    every URL the page asked for (`out["requested"]`) and CSP violations or page errors
    (`out["problems"]`)."""
    # trio-asyncio (this process's bridge) makes every new asyncio loop one of its own;
    # playwright needs a plain one: a policy set outside trio is local to this thread
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    try:
        from playwright.sync_api import expect, sync_playwright

        expect.set_options(timeout=STEP_MS)
        requested: list[str] = []
        problems: list[str] = []
        out["requested"], out["problems"] = requested, problems
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                         timeout=STEP_MS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.set_default_timeout(STEP_MS)
                page.on("request", lambda r: requested.append(r.url))
                page.on("websocket", lambda ws: requested.append(ws.url))
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                page.on("console", lambda m: problems.append(f"console: {m.text}")
                        if "Content Security Policy" in m.text else None)
                page.goto(url, wait_until="load")
                script(page, out)
            finally:
                browser.close()
    finally:
        asyncio.set_event_loop_policy(None)


def sign_in(page: Any) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#login-view")).to_be_visible()
    page.fill("#login-token", ADMIN)
    page.click("#login-button")
    expect(page.locator("#main-view")).to_be_visible()


def open_server(page: Any, name: str) -> Any:
    from playwright.sync_api import expect

    row = page.locator(f"#servers tr[data-server-name='{name}']")
    expect(row.locator(".badge")).to_have_attribute("data-state", "running")
    row.click()
    expect(page.locator("#server-name")).to_have_text(name)
    expect(page.locator("#console-status")).to_have_attribute("data-conn", "open")
    return row


def send(page: Any, line: str) -> None:
    cmd = page.locator("#command-input")
    cmd.fill(line)
    cmd.press("Enter")


def console_line(page: Any, text: str) -> Any:
    """The console lines whose text is exactly `text`."""
    return page.locator("#console .line .tx").get_by_text(text, exact=True)


# -- the whole tour: sign in, lists, console, flood, stop, sign out ---------------------------

def tour(page: Any, out: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    # a wrong token: back to the form, with the reason
    page.fill("#login-token", "not-the-token")
    page.click("#login-button")
    expect(page.locator("#login-message")).to_contain_text("refused")
    expect(page.locator("#main-view")).to_be_hidden()

    sign_in(page)
    out["session_token"] = page.evaluate("() => sessionStorage.getItem('manman.admin_token')")
    out["local_storage"] = page.evaluate("() => localStorage.length")

    # the lists: the worker, and web1 running
    expect(page.locator("#workers tr[data-worker-name='browser-worker'] .badge")
           ).to_have_attribute("data-state", "alive")
    row = open_server(page, "web1")
    expect(page.locator("#server-state")).to_have_attribute("data-state", "running")
    console = page.locator("#console")
    expect(console_line(page, "Server ready")).to_have_count(1)
    expect(console.locator(".s-manman").first).to_be_visible()   # "started (pid …)"

    send(page, "say hello from the browser")
    expect(console_line(page, "said: hello from the browser")).to_have_count(1)
    expect(page.locator("#command-input")).to_have_value("")

    # players, counted from the console's join lines (player_patterns), in list and details
    expect(row.locator("td.players")).to_have_text("0")
    send(page, "echo Alex joined")
    expect(row.locator("td.players")).to_have_text("1")
    expect(page.locator("#detail-players")).to_have_text("1")

    # a flood: the DOM keeps the newest 2000 lines and the page stays responsive
    page.evaluate(LAG_PROBE)
    t0 = time.monotonic()
    send(page, "flood 5000")
    send(page, "say after the flood")
    expect(console_line(page, "said: after the flood")).to_have_count(1)
    out["flood_seconds"] = time.monotonic() - t0
    out["max_lag_ms"] = page.evaluate(LAG_READ)
    page.wait_for_timeout(300)   # a frame still pending is flushed
    texts = page.eval_on_selector_all("#console .line .tx, #console .marker",
                                      "els => els.map(e => e.textContent)")
    out["dom_lines"] = len(texts)
    out["flood_tail_seen"] = "flood 4999" in texts
    out["gap_markers"] = [t for t in texts if "skipped" in t]
    seqs = page.eval_on_selector_all("#console .line[data-seq]", SEQS)
    out["seqs_increasing"] = all(a < b for a, b in itertools.pairwise(seqs))
    out["at_bottom"] = page.evaluate(
        "() => { const c = document.getElementById('console'); "
        "return c.scrollHeight - c.scrollTop - c.clientHeight < 30; }")
    send(page, "say still responsive")
    expect(console_line(page, "said: still responsive")).to_have_count(1)

    # stop: the badge follows the game to `stopped`
    page.click("button[data-action='stop']")
    state = page.locator("#server-state")
    expect(state).to_have_attribute("data-state", "stopped", timeout=15_000)
    expect(state).to_have_text("stopped")
    expect(console.locator(".s-manman", has_text="stopped")).not_to_have_count(0)
    expect(row.locator(".badge")).to_have_attribute("data-state", "stopped")
    ARTIFACTS.mkdir(exist_ok=True)
    page.mouse.move(640, 790)   # no hover effect on the buttons in the picture
    page.screenshot(path=str(SCREENSHOT))

    # a command the state forbids: the API's error message is shown
    page.click("button[data-action='kill']")
    message = page.locator("#action-message")
    expect(message).to_contain_text("cannot kill a server that is stopped")
    expect(message).to_have_class("message error")

    # a reload keeps the session (same tab) and the view; sign-out forgets the token
    page.reload(wait_until="load")
    expect(state).to_have_attribute("data-state", "stopped")
    expect(console_line(page, "said: still responsive")).to_have_count(1)
    page.click("#logout-button")
    expect(page.locator("#login-view")).to_be_visible()
    out["token_after_logout"] = page.evaluate(
        "() => sessionStorage.getItem('manman.admin_token')")


async def test_web_console_in_a_browser(host: Any, hosted: Any) -> None:
    w = await hosted("browser-worker")
    spec = fake_spec("web1", worker_id=w.handle.link.worker_id, desired_state="running",
                     player_patterns={"join": [r"^(?P<player>\w+) joined$"]})
    await host.api.post("/server", spec, expect=201)
    await host.api.wait_for("web1", state="running")

    out: dict[str, Any] = {}
    await trio.to_thread.run_sync(in_browser, host.url, out, tour)

    assert out["session_token"] == ADMIN
    assert out["local_storage"] == 0
    assert out["token_after_logout"] is None
    assert 1000 <= out["dom_lines"] <= MAX_DOM_LINES, out["dom_lines"]
    # the flood's last line arrived, or a visible marker says what was skipped
    assert out["flood_tail_seen"] or out["gap_markers"], out["gap_markers"]
    assert out["seqs_increasing"]
    assert out["at_bottom"]
    assert out["max_lag_ms"] < 1000, out["max_lag_ms"]
    assert not out["problems"], out["problems"]
    urls = out["requested"]
    assert any("/log/ws?" in u and "tail=200" in u and "token=" in u for u in urls), urls
    assert not [u for u in urls if ADMIN in u], "the admin token leaked into a URL"
    assert SCREENSHOT.stat().st_size > 10_000
    assert (await host.api.get("/server/web1"))["state"] == "stopped"


# -- reconnects: console tokens that expire every 1.5 s; nothing lost, nothing twice ----------

PACED = 3000   # `pace` writes 1000 lines at a time: 3 chunks, 1.3 s apart


def reconnects(page: Any, out: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    sign_in(page)
    open_server(page, "web2")
    send(page, f"pace {PACED} 750")
    expect(console_line(page, f"paced {PACED - 1}")).to_have_count(1)
    page.wait_for_timeout(200)
    out["texts"] = page.eval_on_selector_all("#console .line[data-seq] .tx",
                                             "els => els.map(e => e.textContent)")
    out["seqs"] = page.eval_on_selector_all("#console .line[data-seq]", SEQS)
    out["markers"] = page.eval_on_selector_all("#console .marker",
                                               "els => els.map(e => e.textContent)")
    send(page, "say still here")
    expect(console_line(page, "said: still here")).to_have_count(1)


async def test_web_console_reconnects_without_loss(tmp_path: Path, database_url: str,
                                                   bg: trio.Nursery) -> None:
    from manman.host.main import run_host

    handle = await bg.start(run_host, host_config(tmp_path, database_url,
                                                  console_token_ttl=1.5))
    host = RunningHost(handle)
    w = await start_hosted_worker(bg, tmp_path, host, "browser-worker")
    try:
        spec = fake_spec("web2", worker_id=w.handle.link.worker_id, desired_state="running")
        await host.api.post("/server", spec, expect=201)
        await host.api.wait_for("web2", state="running")

        out: dict[str, Any] = {}
        await trio.to_thread.run_sync(in_browser, host.url, out, reconnects)
    finally:
        await w.shutdown()
        await w.api.aclose()
        await host.api.aclose()
        handle.stop()
        with trio.fail_after(20):
            await handle.stopped.wait()

    # the DOM holds the newest 2000 lines: all there, in order, once each
    paced = [t for t in out["texts"] if t.startswith("paced ")]
    assert len(paced) > MAX_DOM_LINES - 50, len(paced)
    first = PACED - len(paced)
    assert paced == [f"paced {i}" for i in range(first, PACED)]
    seqs = out["seqs"]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs   # no hole, no repeat
    assert any("token expired" in m for m in out["markers"]), out["markers"]
    sockets = [u for u in out["requested"] if "/log/ws?" in u]
    assert len(sockets) >= 3, sockets
    assert all("since=" in u for u in sockets[1:]), sockets
    assert not [u for u in out["requested"] if ADMIN in u]
    assert not out["problems"], out["problems"]


# -- a new server from a preset: the form follows the preset's variables ----------------------

def new_server(page: Any, out: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    from tests.test_preset_api import SECRET

    sign_in(page)
    page.click("#new-server-button")
    expect(page.locator("#new-server-view")).to_be_visible()
    expect(page.locator("#new-preset option[value='fakegame']")).to_have_count(1)
    page.select_option("#new-preset", "fakegame")
    password = page.locator("#var-password")
    expect(password).to_have_attribute("type", "password")
    expect(password).to_have_attribute("required", "")
    expect(page.locator("label[for='var-password'] .req")).to_have_count(1)
    expect(page.locator("#var-password-desc")).to_contain_text("Join password")
    greeting = page.locator("#var-greeting")
    expect(greeting).to_have_value("hello there")
    expect(page.locator("label[for='var-greeting'] .req")).to_have_count(0)
    page.fill("#new-name", "webfk")
    page.fill("#port-game", str(out["port"]))
    password.fill(SECRET)
    page.check("#new-start")
    greeting.fill("Not Lowercase!")   # breaks its rule: the host's message names it
    page.click("#new-submit")
    expect(page.locator("#new-message")).to_contain_text("vars.greeting")
    greeting.fill("hi from the form")
    page.click("#new-submit")
    expect(page.locator("#server-name")).to_have_text("webfk")
    expect(page.locator("#server-state")).to_have_attribute("data-state", "running",
                                                            timeout=15_000)
    expect(console_line(page, "hi from the form")).to_have_count(1)   # the game's banner
    out["html"] = page.content()


async def test_new_server_form_from_a_preset(tmp_path: Path, database_url: str,
                                             bg: trio.Nursery) -> None:
    from tests.test_preset_api import SECRET, free_port, host_with_presets

    async with host_with_presets(tmp_path, database_url, bg) as (host, _):
        out: dict[str, Any] = {"port": free_port()}
        await trio.to_thread.run_sync(in_browser, host.url, out, new_server)
        s = await host.api.get("/server/webfk")
        assert s["preset"] == "fakegame" and s["desired_state"] == "running"
        assert s["env"] == {"FAKE_PASSWORD": "********"}
    assert SECRET not in out["html"]
    assert not out["problems"], out["problems"]
