"""The web console's CPU and memory graphs in a real headless Chromium: filled from the stats
history when the server's view opens, then one point more for each `stats` frame of the
console websocket (a worker sampling every 0.3 s), under the unchanged strict CSP."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import trio

from tests.conftest import fake_spec
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
