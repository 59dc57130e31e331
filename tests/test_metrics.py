"""GET /metrics on host and worker: Prometheus text with the fleet's real numbers."""

from __future__ import annotations

from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from tests.conftest import ADMIN, RunningHost, fake_spec


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{url}/metrics")  # no token: anyone may scrape
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_on_host_and_worker(host: RunningHost, hosted: Any) -> None:
    w = await hosted("met")
    api = host.api
    s = await api.post("/server", fake_spec("m1", worker_id=w.handle.link.worker_id,
                                            desired_state="running"), expect=201)
    await api.wait_for("m1", state="running")
    await api.post("/server/m1/command", {"type": "command", "data": "flood 1000"},
                   expect=202)
    await api.wait_line("m1", "flood 999")
    ws_url = w.url.replace("http", "ws") + f"/server/{s['id']}/log/ws?token=" + \
        w.handle.secrets.admin_secret
    async with open_websocket_url(ws_url) as ws:
        await ws.get_message()
        wm = await scrape(w.url)
        assert wm[("manman_console_viewers", (("server", "m1"),))] == 1
    assert wm[("manman_servers", (("state", "running"),))] == 1
    assert wm[("manman_console_lines_total", (("server", "m1"),))] >= 1000
    assert wm[("manman_console_bytes_total", (("server", "m1"),))] > 10000
    assert wm[("manman_heartbeats_sent_total", ())] >= 1
    assert any(k[0] == "manman_api_requests_total" and ("route", "/server") in k[1]
               for k in wm)
    with trio.fail_after(5):
        while (hm := await scrape(host.url))[("manman_heartbeats_received_total", ())] < 2:
            await trio.sleep(0.1)
    assert hm[("manman_workers", (("status", "alive"),))] == 1
    assert hm[("manman_servers", (("state", "running"),))] == 1
    key = ("manman_api_requests_total",
           (("method", "POST"), ("route", "/server/{server_id}/command"), ("status", "202")))
    assert hm[key] == 1
    assert hm[("manman_api_request_seconds_count",
               (("method", "POST"), ("route", "/worker/{worker_id}/health")))] >= 2
    assert ADMIN not in str(hm) and w.handle.secrets.admin_secret not in str(wm)
