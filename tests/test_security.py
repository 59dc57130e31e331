"""Security properties end to end: console tokens through the host, secrets that never leak,
and a websocket connect storm that leaves no memory behind."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from manman.http import auth
from tests.conftest import ADMIN, JOIN, Client, ManmanProcess, RunningHost, fake_spec, write_config


def ws_base(host: RunningHost, server_id: str) -> str:
    return host.url.replace("http://", "ws://") + f"/server/{server_id}/log/ws"


async def frames_until(ws: Any, kind: str, timeout: float = 10) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while True:
            frame = json.loads(await ws.get_message())
            if frame["type"] == kind:
                return frame


async def test_console_tokens_through_the_host(host: RunningHost, hosted: Any) -> None:
    w = await hosted("tok")
    wid = w.handle.link.worker_id
    a = await host.api.post("/server", fake_spec("a", worker_id=wid, desired_state="running"),
                            expect=201)
    b = await host.api.post("/server", fake_spec("b", worker_id=wid, desired_state="running"),
                            expect=201)
    await host.api.wait_for("a", state="running")
    await host.api.wait_for("b", state="running")
    ro = (await host.api.get("/server/a/log?limit=1&scope=read"))["token"]
    rw = (await host.api.get("/server/a/log?limit=1"))["token"]
    # read-only: watches through the proxy, its commands are refused
    async with open_websocket_url(f"{ws_base(host, a['id'])}?token={ro}") as ws:
        await frames_until(ws, "hello")
        await ws.send_message(json.dumps({"type": "command", "data": "say sneaky"}))
        assert (await frames_until(ws, "error"))["code"] == "forbidden"
    # read-write: its commands reach the game
    async with open_websocket_url(f"{ws_base(host, a['id'])}?token={rw}") as ws:
        await frames_until(ws, "hello")
        await ws.send_message(json.dumps({"type": "command", "data": "say allowed"}))
    await host.api.wait_line("a", "said: allowed")
    page = await host.api.get("/server/a/log?since=0&limit=1000")
    assert not any("sneaky" in ln["text"] for ln in page["lines"])
    # a token names one server; tampered and expired ones are refused; none opens admin routes
    h = host.api.http
    r = await h.get(f"/server/{b['id']}/log", headers={"Authorization": f"Bearer {rw}"})
    assert r.status_code == 403
    tampered = rw[:-3] + ("xyz" if not rw.endswith("xyz") else "abc")
    r = await h.get(f"/server/{a['id']}/log", headers={"Authorization": f"Bearer {tampered}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    key = host.handle.secrets.console_key(host.fleet.workers[wid])
    expired = auth.sign_console_token(key, a["id"], [auth.READ], -5, time.time())
    r = await h.get(f"/server/{a['id']}/log", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired"
    forged = auth.sign_console_token(b"not the key" * 3, a["id"], [auth.READ, auth.WRITE], 60,
                                     time.time())
    r = await h.get(f"/server/{a['id']}/log", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401
    for path in ("/server", f"/server/{a['id']}", "/worker"):
        r = await h.get(path, headers={"Authorization": f"Bearer {rw}"})
        assert r.status_code == 403, path  # a valid token, not for this
    # a token that expires while its websocket is open: told, then closed
    short = auth.sign_console_token(key, a["id"], [auth.READ], 1.5, time.time())
    async with open_websocket_url(f"{ws_base(host, a['id'])}?token={short}") as ws:
        frame = await frames_until(ws, "error", timeout=10)
        assert frame["code"] == "token_expired"
        with pytest.raises(ConnectionClosed), trio.fail_after(10):
            while True:
                await ws.get_message()


async def test_secrets_never_leak(host: RunningHost, hosted: Any, monkeypatch: Any,
                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MANMAN_HOST_ADMIN_TOKEN", ADMIN)  # in the worker's environment too
    monkeypatch.setenv("MANMAN_WORKER_JOIN_TOKEN", JOIN)
    w = await hosted("leaky")
    worker_token = w.handle.secrets.admin_secret
    secrets = [ADMIN, JOIN, worker_token, host.handle.secrets.host_secret]
    seen: list[str] = []
    # a game that prints its whole environment
    s = await host.api.post("/server", {"name": "env", "game_id": "exec:/usr/bin/env",
                                        "worker_id": w.handle.link.worker_id,
                                        "restart": {"policy": "never"},
                                        "desired_state": "running"}, expect=201)
    await host.api.wait_for("env", state="stopped")
    page = await host.api.get(f"/server/{s['id']}/log?since=0&limit=1000")
    assert any(ln["text"].startswith("PATH=") for ln in page["lines"])
    assert not any(ln["text"].startswith("MANMAN_HOST") or "TOKEN" in ln["text"]
                   for ln in page["lines"])
    seen.append(json.dumps(page))
    seen.append(json.dumps(await host.api.get("/worker")))
    seen.append(json.dumps(await host.api.get(f"/worker/{w.handle.link.worker_id}")))
    seen.append(json.dumps(await host.api.get("/server")))
    async with httpx.AsyncClient(base_url=host.url) as http:
        for token in ("wrong", ADMIN + "x", worker_token[:-1]):
            r = await http.get("/server", headers={"Authorization": f"Bearer {token}"})
            seen.append(r.text)
        seen.append((await http.get("/metrics")).text)
        seen.append((await http.get("/openapi.json")).text)
    seen.append(caplog.text)
    everything = "\n".join(seen)
    for secret in secrets:
        at = everything.find(secret)
        assert at < 0, everything[max(0, at - 300):at + 100]


async def test_websocket_storm_leaves_no_memory_behind(tmp_path: Path, bg: trio.Nursery
                                                      ) -> None:
    """2,000 connects and disconnects, and 300 idle viewers held open, against a worker
    process: its memory comes back, and no viewer is left counted."""
    cfg = write_config(tmp_path / "w.toml", f"""
[worker]
host_url = ""
listen = "127.0.0.1:0"
data_dir = "{tmp_path / 'data'}"
api_token = "storm"
""")
    proc = ManmanProcess(["worker", "--config", str(cfg)])
    try:
        url = await proc.start(bg)
        api = Client(url, "storm")
        s = await api.post("/server", fake_spec("st", desired_state="running"), expect=201)
        await api.wait_for("st", state="running")
        ws_url = url.replace("http://", "ws://") + f"/server/{s['id']}/log/ws?token=storm&tail=5"
        assert proc.proc is not None
        pid = proc.proc.pid

        def rss() -> float:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
            return 0.0

        async def visit(n: int) -> None:
            for _ in range(n):
                async with open_websocket_url(ws_url) as ws:
                    await ws.get_message()

        async with trio.open_nursery() as n:  # warm up: first-use allocations
            for _ in range(10):
                n.start_soon(visit, 10)
        before = rss()
        with trio.fail_after(120):
            async with trio.open_nursery() as n:
                for _ in range(40):
                    n.start_soon(visit, 50)  # 2,000 in all
        after_storm = rss()
        idle = []
        for _ in range(300):
            ws = await _connect(bg, ws_url)
            idle.append(ws)
        with_idle = rss()
        viewers = await _viewers(url)
        for ws in idle:
            await ws.aclose()
        await trio.sleep(1)
        after_all = rss()
        left = await _viewers(url)
        with trio.fail_after(120):  # the same again: memory is reused, not grown
            async with trio.open_nursery() as n:
                for _ in range(40):
                    n.start_soon(visit, 50)
        again = rss()
        print(f"\nworker RSS: before {before:.1f} MB, after 2,000 connects {after_storm:.1f} MB, "
              f"with 300 idle viewers {with_idle:.1f} MB, after closing them {after_all:.1f} MB, "
              f"after 2,000 more connects {again:.1f} MB")
        assert viewers == 300 and left == 0
        assert after_storm - before < 20, (before, after_storm)
        assert after_all - before < 30, (before, after_all)
        assert again - after_all < 5, (after_all, again)
        await api.post("/shutdown", expect=202)
        assert await proc.wait() == 0
        await api.aclose()
    finally:
        proc.stop()


async def _connect(nursery: trio.Nursery, url: str) -> Any:
    from trio_websocket import connect_websocket_url

    ws = await connect_websocket_url(nursery, url)
    await ws.get_message()
    return ws


async def _viewers(url: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{url}/metrics")).text
    for line in text.splitlines():
        if line.startswith('manman_console_viewers{server="st"}'):
            return float(line.split()[-1])
    return -1


async def test_a_worker_cannot_break_the_host_with_what_it_reports(host: RunningHost,
                                                                    hosted: Any) -> None:
    """A worker token holder sending odd registrations: refused with 4xx, and a worker that
    answers the host with 401 shows as the worker's fault (502), never as the admin's."""
    a, b = await hosted("wa"), await hosted("wb")
    api = host.api
    wid = a.handle.link.worker_id
    token = {"Authorization": f"Bearer {a.handle.secrets.admin_secret}"}
    deep = "[" * 5000 + "]" * 5000
    nested = json.dumps({"name": "wa", "api_url": a.url, "capacity": {"a": 0}}).replace(
        '{"a": 0}', '{"a": ' + deep + "}")
    for body, status in ((json.dumps({"name": "wa", "api_url": "http://[::1"}), 422),
                         (json.dumps({"name": "wa\nFAKE LOG", "api_url": a.url}), 422),
                         (nested, 400)):
        r = await api.http.post(f"/worker/{wid}", content=body, headers=token)
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] in ("invalid", "bad_request")
    s = await api.post("/server", fake_spec("wa1", worker_id=wid), expect=201)
    r = await api.request("GET", f"/server/{s['id']}/log?limit=0")
    assert r.status_code == 422  # refused by the host itself
    # worker A now claims worker B's address: B refuses the host's token for A
    r = await api.http.post(f"/worker/{wid}", json={"name": "wa", "api_url": b.url},
                            headers=token)
    assert r.status_code == 200
    r = await api.request("GET", f"/server/{s['id']}/log")
    assert r.status_code == 502 and r.json()["error"]["code"] == "worker_error"
    r = await api.request("POST", f"/server/{s['id']}/command", json={"type": "kill"})
    assert r.status_code in (409, 502) and r.status_code != 401
    # and it can still be retired
    await api.request("DELETE", f"/worker/{wid}", expect=200)
