"""Presets over HTTP, on the host and on a standalone worker: the listing, one preset, a
server made from one (stored with its preset and version, run end to end), the errors, and
a secret variable's value in no answer, log line or console note."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from manman.errors import StartupError
from manman.presets import operator_dir
from tests.conftest import (
    FAKEGAME,
    PYTHON,
    Client,
    RunningHost,
    RunningWorker,
    host_config,
    start_hosted_worker,
    worker_config,
    write_config,
)

SECRET = "Hunter2-very-secret-9"
OTHER_SECRET = "Swordfish-77-secret"

# the fake game as a preset: a secret the game reads from its environment, a port in its
# arguments, stopped with SIGINT (it ignores SIGTERM, so only the preset's signal works)
FAKE_PRESET = f"""
# Sources: tests/fakegame.py (https://example.invalid/fakegame: a test double)
name = "fakegame"
version = 3
title = "The fake game"
game_id = "exec:{PYTHON}"
args = ["-u", "{FAKEGAME}", "--banner", "{{{{greeting}}}}", "--tcp-port", "{{{{port.game}}}}",
        "--ignore-term"]
ready_patterns = ["^Server ready$"]
stop_signal = "SIGINT"
stop_timeout = 20

[env]
FAKE_PASSWORD = "{{{{password}}}}"

[query]
type = "tcp"
port = "{{{{port.game}}}}"

[[ports]]
name = "game"
default = 4000

[[variables]]
name = "password"
type = "secret"
required = true
rule = '[A-Za-z0-9-]{{8,64}}'
description = "Join password"

[[variables]]
name = "greeting"
default = "hello there"
rule = '[a-z ]{{1,32}}'
"""

# a secret in the executable's path: the start fails, and says so without the secret
LEAKY_PRESET = """
name = "leaky"
version = 1
title = "A game whose error would quote its secret"
game_id = "exec:/bin/true"
executable = "/nonexistent/{{token}}"

[[variables]]
name = "token"
type = "secret"
required = true
"""


def write_presets(data_dir: Path) -> Path:
    folder = operator_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fakegame.toml").write_text(FAKE_PRESET)
    (folder / "leaky.toml").write_text(LEAKY_PRESET)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def no_secret(what: Any, *secrets: str) -> None:
    text = what if isinstance(what, str) else json.dumps(what)
    for secret in secrets or (SECRET, OTHER_SECRET):
        assert secret not in text, text[:2000]


async def console_text(api: Client, server: str) -> str:
    page = await api.get(f"/server/{server}/log?since=0&limit=10000")
    return json.dumps(page["lines"])


async def check_listing(api: Client) -> None:
    listing = await api.get("/preset")
    names = [p["name"] for p in listing["presets"]]
    assert {"fakegame", "leaky", "valheim", "minecraft"} <= set(names)
    assert names == sorted(names)
    for entry in listing["presets"]:
        assert set(entry) == {"name", "version", "title", "game_id", "variables", "ports"}
    fake = await api.get("/preset/fakegame")
    assert fake["version"] == 3 and fake["stop_signal"] == "SIGINT"
    assert [v["name"] for v in fake["variables"]] == ["password", "greeting"]
    r = await api.request("GET", "/preset/no-such-game", 404)
    assert r.json()["error"]["code"] == "not_found"


async def check_errors(api: Client) -> None:
    """Unknown preset 404; a missing or broken variable 422 naming it, never the value."""
    r = await api.request("POST", "/server", 404, json={"name": "x", "preset": "nope"})
    assert r.json()["error"]["code"] == "not_found" and "nope" in r.text
    r = await api.request("POST", "/server", 422, json={"name": "x", "preset": "fakegame"})
    assert "vars.password" in r.json()["error"]["message"]
    for bad in (SECRET + "!", SECRET * 4, SECRET + "\n"):  # rule, length, one line
        r = await api.request("POST", "/server", 422, json={
            "name": "x", "preset": "fakegame", "vars": {"password": bad}})
        assert "vars.password" in r.json()["error"]["message"]
        no_secret(r.text)
    r = await api.request("POST", "/server", 422, json={
        "name": "x", "preset": "fakegame", "vars": {"password": SECRET, "greeting": 5}})
    assert "vars.greeting" in r.json()["error"]["message"]
    # an override that breaks the spec: the error quotes no secret either
    r = await api.request("POST", "/server", 422, json={
        "name": "x", "preset": "fakegame", "vars": {"password": SECRET},
        "args": [SECRET, "a\x00"]})
    no_secret(r.text)
    r = await api.request("POST", "/server", 422, json={
        "name": "x", "preset": "fakegame", "vars": {"password": SECRET},
        "secret_values": []})
    assert "secret_values" in r.json()["error"]["message"]


async def run_fakegame(api: Client, on_host: bool) -> None:
    """Create from the preset, run, answer, stop by its signal: no secret anywhere."""
    port = free_port()
    s = await api.post("/server", {"name": "fk", "preset": "fakegame",
                                   "vars": {"password": SECRET}, "ports": {"game": port},
                                   "stop_timeout": 15, "desired_state": "running"},
                       expect=201)
    no_secret(s)
    assert s["preset"] == "fakegame" and s["preset_version"] == 3
    assert s["stop_signal"] == "SIGINT" and s["stop_command"] is None
    assert s["stop_timeout"] == 15  # a field beside the preset overrides it
    assert s["env"] == {"FAKE_PASSWORD": "********"} and "secret_values" not in s
    assert s["ports"] == [{"name": "game", "port": port, "protocol": "tcp", "follows": None,
                           "offset": 1}]
    assert s["health"]["query"]["type"] == "tcp"
    assert s["args"][s["args"].index("--tcp-port") + 1] == str(port)
    s = await api.wait_for("fk", state="running", timeout=20)
    no_secret(s)
    with trio.fail_after(5):  # the game listens where the preset's port put it
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.aclose()
    no_secret(await api.get("/server"))
    r = await api.request("PUT", "/server/fk", 200, json={"stop_timeout": 14})
    no_secret(r.text)
    assert r.json()["preset"] == "fakegame"
    await api.wait_line("fk", "hello there")  # the banner, from a variable's default
    # it ignores SIGTERM: only the preset's SIGINT stops it inside the stop_timeout
    with trio.fail_after(12):
        if on_host:
            await api.post("/server/fk/command", {"type": "stop"}, expect=202)
        else:
            await api.post("/server/fk/shutdown", expect=202)
        s = await api.wait_for("fk", state="stopped", timeout=12)
    assert s["exit_code"] == 0
    await api.wait_line("fk", "got SIGINT, saving, bye")
    no_secret(await console_text(api, "fk"))


async def run_leaky(api: Client) -> None:
    await api.post("/server", {"name": "leak", "preset": "leaky",
                               "vars": {"token": OTHER_SECRET}, "desired_state": "running"},
                       expect=201)
    s = await api.wait_for("leak", state="failed", timeout=20)
    assert "/nonexistent/********" in s["error"]
    no_secret(s)
    text = await console_text(api, "leak")
    assert "/nonexistent/********" in text
    no_secret(text)


async def test_a_standalone_worker_makes_servers_from_presets(
        tmp_path: Path, bg: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    from manman.worker.main import run_worker

    caplog.set_level(logging.DEBUG)
    cfg = worker_config(tmp_path)
    write_presets(cfg.worker.data_dir)
    handle = await bg.start(run_worker, cfg)
    w = RunningWorker(handle, Client(handle.url, "test-worker-token"))
    try:
        await check_listing(w.api)
        await check_errors(w.api)
        await run_fakegame(w.api, on_host=False)
        await run_leaky(w.api)
        doc = await w.api.get("/openapi.json")
        assert "/preset/{name}" in doc["paths"]
        assert len(doc["paths"]["/server"]["post"]["requestBody"]["content"][
            "application/json"]["schema"]["oneOf"]) == 2
    finally:
        await w.shutdown()
        await w.api.aclose()
    assert "listening on" in caplog.text  # (the worker's log is what was read)
    no_secret(caplog.text)


@asynccontextmanager
async def host_with_presets(tmp_path: Path, database_url: str, bg: trio.Nursery
                            ) -> AsyncIterator[tuple[RunningHost, RunningWorker]]:
    from manman.host.main import run_host

    cfg = host_config(tmp_path, database_url)
    write_presets(cfg.host.data_dir)
    host = RunningHost(await bg.start(run_host, cfg))
    worker = await start_hosted_worker(bg, tmp_path, host, "pw")
    try:
        yield host, worker
    finally:
        await worker.shutdown()
        await worker.api.aclose()
        await host.api.aclose()
        host.handle.stop()
        with trio.fail_after(20):
            await host.handle.stopped.wait()


async def test_the_host_makes_servers_from_presets(
        tmp_path: Path, database_url: str, bg: trio.Nursery,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with host_with_presets(tmp_path, database_url, bg) as (host, worker):
        api = host.api
        await check_listing(api)
        await check_errors(api)
        await run_fakegame(api, on_host=True)
        await run_leaky(api)
        # the worker holds the value for the game, and answers without it too
        on_worker = await worker.api.get("/server")
        assert {s["preset"] for s in on_worker["servers"]} == {"fakegame", "leaky"}
        no_secret(on_worker)
        assert worker.agent.get("fk").spec.secret_values == [SECRET]
        # a joined worker makes no servers from presets: its host does
        assert (await worker.api.get("/preset"))["presets"] == []
    assert "host listening on" in caplog.text and "worker pw listening on" in caplog.text
    no_secret(caplog.text)


async def test_one_preset_name_twice_stops_start_up(tmp_path: Path, database_url: str,
                                                    bg: trio.Nursery) -> None:
    from manman.host.main import run_host

    cfg = host_config(tmp_path, database_url)
    copy = operator_dir(cfg.host.data_dir) / "my-valheim.toml"
    copy.parent.mkdir(parents=True)
    copy.write_text(FAKE_PRESET.replace('name = "fakegame"', 'name = "valheim"'))
    with pytest.raises(StartupError) as e:
        await bg.start(run_host, cfg)
    assert "valheim" in e.value.message and str(copy) in e.value.message
    # a standalone worker, as the real program: one line on stderr, exit 1
    data = tmp_path / "w"
    operator_dir(data).mkdir(parents=True)
    (operator_dir(data) / "my-valheim.toml").write_text(copy.read_text())
    conf = write_config(tmp_path / "w.toml", f'[worker]\nhost_url = ""\nlisten = "127.0.0.1:0"\n'
                                              f'data_dir = "{data}"\n')
    with trio.fail_after(30):
        r = await trio.run_process([PYTHON, "-m", "manman", "worker", "--config", str(conf)],
                                   capture_stdout=True, capture_stderr=True, check=False,
                                   env={**os.environ}, stdin=subprocess.DEVNULL)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, lines
    assert lines[0].startswith("manman: preset valheim is defined twice")
