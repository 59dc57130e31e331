"""The web console's CPU and memory graphs in a real headless Chromium: filled from the stats
history when the server's view opens, then one point more for each `stats` frame of the
console websocket (a worker sampling every 0.3 s), under the unchanged strict CSP."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.conftest import RunningHost, fake_spec, host_config, start_hosted_worker
from tests.test_web_console import ARTIFACTS, in_browser, open_server, sign_in

CSP = ("default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
       "frame-ancestors 'none'")
SVG_DATA = "(key) => Object.assign({}, document.getElementById(key + '-svg').dataset)"
# the vertices a path's `d` draws: one per M or L
VERTICES = "(el) => (el.getAttribute('d').match(/[ML]/g) || []).length"


def graphs(page: Any, out: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    frames: list[dict[str, Any]] = []

    def on_socket(ws: Any) -> None:
        def received(payload: Any) -> None:
            f = json.loads(payload) if isinstance(payload, str) else {}
            if f.get("type") == "stats":
                frames.append(f)
        ws.on("framereceived", received)

    page.on("websocket", on_socket)
    sign_in(page)
    open_server(page, "webstats")
    # the history's minute points are there from the start
    page.wait_for_function("() => Number(document.getElementById('cpu-svg').dataset.minutes) >= 1")
    out["at_open"] = page.evaluate(SVG_DATA, "cpu")
    # each stats frame adds a live point
    live = int(page.evaluate(SVG_DATA, "cpu")["live"])
    page.wait_for_function(
        f"() => Number(document.getElementById('cpu-svg').dataset.live) >= {live + 2}")
    out["running"] = {k: page.evaluate(SVG_DATA, k) for k in ("cpu", "memory")}
    expect(page.locator("#cpu-now")).to_have_text(re.compile(r"^\d+(\.\d)? %$"))
    expect(page.locator("#memory-now")).to_have_text(re.compile(r"^\d+\.\d (KiB|MiB|GiB)$"))
    expect(page.locator("#memory-max")).to_have_text(re.compile(r"^\d+(\.\d+)? (MiB|GiB)$"))
    expect(page.locator("#cpu-svg")).to_have_attribute("role", "img")
    expect(page.locator("#cpu-svg-title")).to_have_text(re.compile(r"^CPU: peak .* points$"))
    expect(page.locator("#memory-svg-title")).to_have_text(
        re.compile(r"^Memory: peak .* points$"))
    out["vertices"] = page.eval_on_selector("#memory-svg .line", VERTICES)
    out["points"] = int(page.evaluate(SVG_DATA, "memory")["points"])
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#stats-graphs").screenshot(path=str(ARTIFACTS / "web-stats.png"))

    # stopped: no more samples; the graphs keep what they have, no current value
    page.click(".actions button[data-action='stop']")
    expect(page.locator("#server-state")).to_have_attribute("data-state", "stopped")
    expect(page.locator("#cpu-now")).to_have_text("—")
    expect(page.locator("#memory-now")).to_have_text("—")
    page.wait_for_timeout(1000)   # any frame still on its way has arrived
    out["stopped"] = {k: page.evaluate(SVG_DATA, k) for k in ("cpu", "memory")}
    out["frames"] = list(frames)


async def test_stats_graphs_in_a_browser(host: Any, hosted: Any) -> None:
    w = await hosted("stats-worker", stats_interval=0.3)
    spec = fake_spec("webstats", worker_id=w.handle.link.worker_id, desired_state="running")
    await host.api.post("/server", spec, expect=201)
    await host.api.wait_for("webstats", state="running")
    with trio.fail_after(10):
        while not (await host.api.get("/server/webstats/stats"))["points"]:
            await trio.sleep(0.1)

    out: dict[str, Any] = {}
    await trio.to_thread.run_sync(in_browser, host.url, out, graphs)

    assert not out["problems"], out["problems"]
    urls = out["requested"]
    assert [u for u in urls if "/log/ws?" in u and "stats=1" in u], urls
    assert [u for u in urls if re.search(r"/server/[^/]+/stats\?since=0$", u)], urls
    base = host.url.split("://", 1)[1]
    assert all(u.split("://", 1)[1].startswith(base) for u in urls), urls   # nothing external

    assert int(out["at_open"]["minutes"]) >= 1
    running = out["running"]
    assert int(running["cpu"]["live"]) >= int(out["at_open"]["live"]) + 2
    assert running["cpu"]["points"] == running["memory"]["points"]
    assert out["vertices"] == out["points"]   # every point is drawn
    # one live point per distinct sample the socket carried (the latest is resent on connect)
    frames = out["frames"]
    stopped = out["stopped"]
    assert int(stopped["cpu"]["live"]) == len({f["at"] for f in frames}) >= 2, (stopped, frames)
    assert int(stopped["cpu"]["minutes"]) >= 1
    # the scale holds the peak
    assert float(stopped["memory"]["top"]) >= max(f["memory"] for f in frames) > 0
    assert float(stopped["cpu"]["top"]) >= max(f["cpu"] for f in frames)

    # the policy the page runs under is the same strict one
    async with httpx.AsyncClient(base_url=host.url) as http:
        for path in ("/", "/static/app.js", "/static/style.css", "/static/index.html"):
            r = await http.get(path)
            assert r.status_code == 200, path
            assert r.headers["content-security-policy"] == CSP, path


# -- reconnects: console tokens that expire every 1.5 s ---------------------------------------

def reconnecting(page: Any, out: dict[str, Any]) -> None:
    frames: list[dict[str, Any]] = []
    sockets: list[str] = []

    def on_socket(ws: Any) -> None:
        sockets.append(ws.url)
        ws.on("framereceived", lambda p: frames.append(json.loads(p))
              if isinstance(p, str) and '"stats"' in p else None)

    page.on("websocket", on_socket)
    sign_in(page)
    open_server(page, "webstats2")
    for _ in range(150):   # three reconnects, each with the latest sample resent
        if len(sockets) >= 4:
            break
        page.wait_for_timeout(100)
    page.click(".actions button[data-action='stop']")
    page.wait_for_function("() => document.getElementById('server-state').dataset.state"
                           " === 'stopped'")
    page.wait_for_timeout(1000)
    out["svg"] = page.evaluate(SVG_DATA, "cpu")
    out["frames"] = [f for f in frames if f.get("type") == "stats"]
    out["sockets"] = list(sockets)


async def test_stats_graphs_across_reconnects(tmp_path: Path, database_url: str,
                                              bg: trio.Nursery) -> None:
    from manman.host.main import run_host

    handle = await bg.start(run_host, host_config(tmp_path, database_url,
                                                  console_token_ttl=1.5))
    host = RunningHost(handle)
    # a sample a second: the one resent on a reconnect (~0.1 s) is mostly one already seen
    w = await start_hosted_worker(bg, tmp_path, host, "stats-worker", stats_interval=1.0)
    try:
        spec = fake_spec("webstats2", worker_id=w.handle.link.worker_id, desired_state="running")
        await host.api.post("/server", spec, expect=201)
        await host.api.wait_for("webstats2", state="running")
        out: dict[str, Any] = {}
        await trio.to_thread.run_sync(in_browser, host.url, out, reconnecting)
    finally:
        await w.shutdown()
        await w.api.aclose()
        await host.api.aclose()
        handle.stop()
        with trio.fail_after(20):
            await handle.stopped.wait()

    assert not out["problems"], out["problems"]
    assert len(out["sockets"]) >= 4, out["sockets"]
    # each connect resends the latest sample: counted once
    ats = [f["at"] for f in out["frames"]]
    assert len(ats) > len(set(ats)), ats
    assert int(out["svg"]["live"]) == len(set(ats)), (out["svg"], ats)
    # after each reconnect, the history from the last live sample on
    refills = [u for u in out["requested"] if re.search(r"/stats\?since=[1-9]\d*$", u)]
    assert len(refills) >= 3, out["requested"]
