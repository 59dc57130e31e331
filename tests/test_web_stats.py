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


# -- graphs.js, the pure part, in the browser: bounds, folding, scales, paths -----------------

GRAPHS_JS = Path(__file__).parent.parent / "manman" / "web" / "graphs.js"

PURE = """() => {
  const S = window.manmanStats;
  const r = {};
  const fresh = (o) => new S.Series(o);

  // a sample is finite, non-negative numbers; the latest resent is not a second point
  let s = fresh();
  r.bad = [null, {}, {at: 1, cpu: NaN, memory: 1}, {at: 1, cpu: -1, memory: 1},
           {at: 1, cpu: "5", memory: 1}, {at: Infinity, cpu: 1, memory: 1},
           {at: 1, cpu: 1, memory: -5}].map((f) => s.addLive(f));
  r.first = s.addLive({at: 6000, cpu: 1, memory: 2});
  r.again = s.addLive({at: 6000, cpu: 1, memory: 2});
  r.older = s.addLive({at: 5990, cpu: 1, memory: 2});

  // samples every 10 s for 5 minutes, 120 s kept live: whole minutes fold, oldest first
  s = fresh({liveKeep: 120});
  s.addHistory([{at: 6000, cpu: 99, memory: 5000}]);   // the minute as it was at page open
  for (let k = 0; k < 30; k++) s.addLive({at: 6000 + 10 * k, cpu: k, memory: 1000 + k});
  r.folded = Array.from(s.minutes.entries()).sort((a, b) => a[0] - b[0]);
  r.live = s.live.map((p) => p.at);
  r.order = s.points().map((p) => p.at);

  // at most liveMax live samples
  s = fresh({liveMax: 5});
  for (let k = 0; k < 9; k++) s.addLive({at: 6000 + 20 * k, cpu: 1, memory: 1});
  r.bounded = [s.live.length, s.minutes.size];

  // a day (here 600 s) of minutes kept
  s = fresh({span: 600});
  const hist = [];
  for (let m = 100; m <= 120; m++) hist.push({at: m * 60, cpu: 1, memory: 1});
  s.addHistory(hist);
  r.kept = Array.from(s.minutes.keys()).sort((a, b) => a - b);

  // lines break at a gap, wider for a long sampling interval
  s = fresh();
  s.addLive({at: 1000, cpu: 0, memory: 0});
  s.addLive({at: 1100, cpu: 0, memory: 0});
  r.gaps = [s.gap(150), fresh().gap(150)];
  r.paths = S.paths([{at: 0, v: 0}, {at: 60, v: 50}, {at: 400, v: 100}, {at: 460, v: 500}],
                    (p) => p.v, 100, {w: 600, h: 100, t0: 0, t1: 600, gap: 150});
  r.empty = S.paths([], (p) => p.v, 1, {w: 600, h: 100, t0: 0, t1: 60, gap: 150});

  r.cpu = [0, 0.4, 2.2, 99, 130].map((v) => S.cpuScale(v));
  const MiB = 1024 * 1024;
  r.memory = [0, 82.2 * MiB, 1.5 * 1024 * MiB].map((v) => S.memoryScale(v));
  r.text = [S.cpuText(3.14159), S.cpuText(42.6), S.bytesText(512), S.bytesText(13742080)];
  return r;
}"""


def pure(page: Any, out: dict[str, Any]) -> None:
    page.add_script_tag(path=str(GRAPHS_JS))
    out.update(page.evaluate(PURE))


def test_graphs_data_and_paths() -> None:
    out: dict[str, Any] = {}
    in_browser("data:text/html,<!doctype html><title>graphs</title>", out, pure)

    assert not out["problems"], out["problems"]
    assert out["bad"] == [False] * 7
    assert (out["first"], out["again"], out["older"]) == (True, False, False)
    # minutes 100..102 folded (6120 < 6290 - 120 starts minute 102): mean CPU, peak memory;
    # minute 100 keeps its place and the history's higher peak
    assert out["folded"] == [[100, {"at": 6000, "cpu": 2.5, "memory": 5000}],
                             [101, {"at": 6060, "cpu": 8.5, "memory": 1011}],
                             [102, {"at": 6120, "cpu": 14.5, "memory": 1017}]]
    assert out["live"] == list(range(6180, 6300, 10))
    assert out["order"] == sorted(out["order"]) and len(out["order"]) == 3 + 12
    assert out["bounded"][0] <= 5 and out["bounded"][1] >= 1
    assert out["kept"] == list(range(110, 121))
    assert out["gaps"] == [250, 150]
    p = out["paths"]
    # two runs (60 s apart, then 340 s of nothing), the value over the top drawn at the top
    assert p["line"] == "M0.0 100.0L60.0 51.0M400.0 2.0L460.0 2.0"
    assert p["area"] == ("M0.0 100V100.0L60.0 51.0V100H0.0Z"
                         "M400.0 100V2.0L460.0 2.0V100H400.0Z")
    assert p["dot"] == "M460.0 2.0l0 0"
    assert out["empty"] == {"line": "", "area": "", "dot": ""}
    assert [(c["top"], c["label"]) for c in out["cpu"]] == [
        (1, "1 %"), (1, "1 %"), (2.5, "2.5 %"), (100, "100 %"), (200, "200 %")]
    assert [(m["top"], m["label"]) for m in out["memory"]] == [
        (1 << 20, "1 MiB"), (100 << 20, "100 MiB"), (2 << 30, "2 GiB")]
    assert out["text"] == ["3.1 %", "43 %", "512 B", "13.1 MiB"]
