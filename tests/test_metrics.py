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


def _free_port() -> int:
    import socket

    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_backups_schedules_and_webhooks_after_real_actions(
        host: RunningHost, hosted: Any, bg: trio.Nursery) -> None:
    """Backups (failed, then ok), schedule runs (failed, skipped, ok) and webhook attempts
    (ok, failed, error, one waiting for its retry, one event dropped) made through the host:
    the worker's and the host's /metrics count them."""
    import time

    from manman.host.webhooks.delivery import QUEUE, Policy
    from tests.receiver import Receiver

    rx: Receiver = await bg.start(Receiver().serve)
    w = await hosted("mw")
    api = host.api
    dispatcher = host.handle.webhooks.dispatcher
    dispatcher.policy = Policy(timeout=2, retry_initial=30)  # a failed delivery waits
    s = await api.post("/server", fake_spec("mb", worker_id=w.handle.link.worker_id, backup={
        "before": [{"command": "say flush", "wait_for": "^never$", "timeout": 0.3}]}),
        expect=201)
    await api.post("/server/mb/schedule", {"cron": "0 4 * * *", "tasks": [
        {"action": "command", "payload": "say scheduled"}]}, expect=201)
    await api.post("/server/mb/schedule", {"cron": "* * * * *", "defer_max": 0,
                                           "only_when": {"state": "running"},
                                           "tasks": [{"action": "notify", "payload": "x"}]},
                   expect=201)
    await api.wait_for("mb", state="stopped")
    wm = await scrape(w.url)
    assert wm[("manman_backups_total", (("result", "ok"), ("server", "mb")))] == 0
    assert ("manman_backup_last_ok_bytes", (("server", "mb"),)) not in wm
    # schedule s1 now, on a stopped server: its command fails
    await api.post("/server/mb/schedule/s1/run", expect=202)
    # s2 at the next minute (the worker's cron clock set to just before it): skipped, the
    # server is not running
    offset = (60 - time.time() % 60) - 1.0
    w.handle.schedules.set_wall(lambda: time.time() + offset)
    with trio.fail_after(15):
        while not (runs := (await api.get("/server/mb/schedule/s2/runs"))["runs"]) or \
                runs[0]["status"] == "running":
            await trio.sleep(0.05)
    assert runs[0]["status"] == "skipped"
    w.handle.schedules.set_wall(time.time)
    await api.post("/server/mb/command", {"type": "start"}, expect=202)
    await api.wait_for("mb", state="running")
    await api.post("/server/mb/schedule/s1/run", expect=202)
    await api.wait_line("mb", "said: scheduled")
    # a backup whose hook times out, then one without hooks
    b = await api.post("/server/mb/backup", {}, expect=202)
    with trio.fail_after(15):
        while (await api.get(f"/server/mb/backup/{b['id']}"))["state"] != "failed":
            await trio.sleep(0.05)
    await api.request("PUT", "/server/mb", json={"backup": {}}, expect=200)
    await api.post("/webhook", {"url": rx.url("/fail"), "events": ["backup.ok"]}, expect=201)
    b = await api.post("/server/mb/backup", {}, expect=202)
    with trio.fail_after(15):
        while (done := await api.get(f"/server/mb/backup/{b['id']}"))["state"] != "ok":
            await trio.sleep(0.05)

    with trio.fail_after(10):
        while (wm := await scrape(w.url))[("manman_schedule_runs_total",
                                           (("result", "ok"), ("server", "mb")))] < 1:
            await trio.sleep(0.05)
    assert wm[("manman_backups_total", (("result", "ok"), ("server", "mb")))] == 1
    assert wm[("manman_backups_total", (("result", "failed"), ("server", "mb")))] == 1
    assert wm[("manman_backup_last_ok_bytes", (("server", "mb"),))] == done["bytes"] > 0
    assert wm[("manman_backup_last_ok_timestamp_seconds", (("server", "mb"),))] == \
        done["finished_at"]
    runs_of = {r: wm[("manman_schedule_runs_total", (("result", r), ("server", "mb")))]
               for r in ("ok", "failed", "skipped")}
    assert runs_of == {"ok": 1, "failed": 1, "skipped": 1}, runs_of

    # the host: the same newest good backup, from the worker's report
    with trio.fail_after(10):
        while ("manman_backup_last_ok_bytes", (("server", "mb"),)) not in \
                (hm := await scrape(host.url)):
            await trio.sleep(0.05)
    assert hm[("manman_backup_last_ok_bytes", (("server", "mb"),))] == done["bytes"]
    assert hm[("manman_backup_last_ok_timestamp_seconds", (("server", "mb"),))] == \
        done["finished_at"]
    # and from PostgreSQL at a start (before any report)
    host.control.last_backups.by_server.clear()
    assert ("manman_backup_last_ok_bytes", (("server", "mb"),)) not in await scrape(host.url)
    await host.control.last_backups.load(host.control.store)
    assert (await scrape(host.url))[("manman_backup_last_ok_bytes", (("server", "mb"),))] \
        == done["bytes"]

    # webhooks: the backup.ok delivery failed (500) and waits 30 s for its retry
    with trio.fail_after(10):
        while not rx.on("/fail"):
            await trio.sleep(0.05)
    ok_hook = await api.post("/webhook", {"url": rx.url("/ok"), "events": ["server.ready"]},
                             expect=201)
    await api.post(f"/webhook/{ok_hook['id']}/test", expect=200)
    dead = await api.post("/webhook", {"url": f"http://127.0.0.1:{_free_port()}/",
                                       "events": ["server.ready"]}, expect=201)
    assert not (await api.post(f"/webhook/{dead['id']}/test", expect=200))["ok"]
    # a burst over the queue's size before the dispatcher runs again: the last is dropped
    # (the hook goes before the queue is read: nothing is sent)
    burst = await api.post("/webhook", {"url": rx.url("/ok"), "events": ["worker.expired"]},
                           expect=201)
    for n in range(QUEUE + 2):  # the dispatcher waiting to receive takes one more
        dispatcher.emit("worker.expired", {"n": n}, worker={"id": "w", "name": "w"})
    dispatcher.remove(burst["id"])
    hm = await scrape(host.url)
    assert hm[("manman_webhook_attempts_total", (("outcome", "ok"),))] == 1
    assert hm[("manman_webhook_attempts_total", (("outcome", "failed"),))] == 1
    assert hm[("manman_webhook_attempts_total", (("outcome", "error"),))] == 1
    assert hm[("manman_webhook_deliveries_pending", ())] == 1
    assert hm[("manman_webhook_events_dropped_total", ())] == 1
    assert s["id"] not in str(hm)  # servers by name, as every other series
