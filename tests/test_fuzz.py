"""Fuzzing both APIs from their own OpenAPI descriptions with schemathesis: no 5xx, no
response that breaks the description, and afterwards both still serve, data intact.

Bounded: a fixed number of examples per operation and a time budget per API. Not fuzzed:
the console websocket (not HTTP; test_console_ws.py covers it), and the routes that end
the run itself (worker `/shutdown`, `/freeze`; host `DELETE`/`PUT /worker/{id}`). The
`positive_data_acceptance` check is off: some rules (a valid regex in ready_pattern, 64 KiB
of args in all, JSON integers written as 1.0) are checked by the API and cannot be said in
JSON Schema, so the fuzzer's "valid" data is sometimes rightly refused with 422.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import trio

from tests.conftest import ADMIN, RunningHost, RunningWorker, fake_spec

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
CHECKS = ["--checks", "all", "--exclude-checks",
          "positive_data_acceptance,ensure_resource_availability"]


async def fuzz(url: str, token: str, exclude: list[str], tmp: Path, *, deletes: bool
               ) -> tuple[str, float]:
    """One bounded run: every operation but DELETEs, or only the DELETEs."""
    argv = [SCHEMATHESIS, "run", f"{url}/openapi.json", "-H", f"Authorization: Bearer {token}",
            *CHECKS, "--max-examples", "25", "--max-time", "15" if deletes else "25",
            "--workers", "2",
            "--request-timeout", "10", "--seed", "20261127", "--no-color",
            "--exclude-path-regex", "/log/ws$",
            "--include-method" if deletes else "--exclude-method", "DELETE"]
    for item in exclude:
        argv += ["--exclude-operation-id", item]
    started = time.monotonic()
    with trio.fail_after(240):
        r = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                   check=False, cwd=str(tmp))
    text = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
    elapsed = time.monotonic() - started
    summary = text[text.rfind("SUMMARY"):]
    # what fails the test: a check that failed, or the API not answering; an internal error
    # of the fuzzer itself (a "Runtime Error" in its own code) says nothing about ours
    problems = [kind for kind in ("Failures:", "Network Error", "Server Unavailable")
                if kind in summary]
    assert not problems, text[-6000:]
    if r.returncode != 0:
        assert "Runtime Error" in summary, text[-6000:]
    return text, elapsed


def generated(report: str) -> int:
    m = re.search(r"(\d+) generated", report)
    assert m, report[-2000:]
    return int(m.group(1))


async def test_fuzz_host_and_worker(host: RunningHost, hosted: Any, worker: RunningWorker,
                                    tmp_path: Path, monkeypatch: Any) -> None:
    """The host (with a worker joined to it) and a standalone worker, each with a server
    made before the fuzzer came (it may find and change them: it holds the admin token)."""
    # the fuzzer may create and start servers: programs by name find nothing to run
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    joined = await hosted("fuzzed")
    sentinel = fake_spec("fuzz-sentinel-7f3a", desired_state="running")
    on_host = await host.api.post(
        "/server", {**sentinel, "worker_id": joined.handle.link.worker_id}, expect=201)
    on_worker = await worker.api.post("/server", sentinel, expect=201)
    await host.api.wait_for(on_host["id"], state="running")
    await worker.api.wait_for(on_worker["id"], state="running")
    started = time.time()

    cases: dict[str, int] = {}
    took = 0.0
    for name, url, token, exclude in (
            ("host", host.url, ADMIN, ["delete_worker_worker_id", "put_worker_worker_id"]),
            ("worker", worker.url, worker.api.token, ["post_shutdown", "post_freeze"])):
        report, seconds = await fuzz(url, token, exclude, tmp_path, deletes=False)
        cases[name] = generated(report)
        took += seconds
    print(f"\nfuzz: {cases} cases in {took:.0f}s without DELETEs")
    assert min(cases.values()) >= 200

    await consistent(host, worker, joined)
    # the audit kept working through it all (no poison row stalled the flush)
    rows = await host.control.store.fetch(
        "SELECT count(*) AS n FROM audit WHERE at > $1", started)
    assert rows[0]["n"] >= 10

    # then the DELETEs (they may remove what they find: that is their job)
    for url, token in ((host.url, ADMIN), (worker.url, worker.api.token)):
        report, seconds = await fuzz(url, token, [], tmp_path, deletes=True)
        print(f"fuzz DELETEs at {url}: {generated(report)} cases in {seconds:.0f}s")
    await consistent(host, worker, joined)
    # and both still do their job: a new server runs, its console answers
    s = await host.api.post("/server", fake_spec("after-fuzz", desired_state="running",
                                                 worker_id=joined.handle.link.worker_id),
                            expect=201)
    await host.api.wait_for(s["id"], state="running")
    await host.api.post(f"/server/{s['id']}/command", {"type": "command", "data": "say ok"},
                        expect=202)
    await host.api.wait_line(s["id"], "said: ok")
    s = await worker.api.post("/server", fake_spec("after-fuzz", desired_state="running"),
                              expect=201)
    await worker.api.wait_for(s["id"], state="running")
    await worker.api.post(f"/server/{s['id']}/command", {"data": "say ok"}, expect=202)
    await worker.api.wait_line(s["id"], "said: ok")


async def consistent(host: RunningHost, worker: RunningWorker, joined: RunningWorker) -> None:
    """No half-written state: each API shows what its database holds, and the host and its
    worker agree on every server once the worker has caught up."""
    assert (await host.api.get("/healthz"))["ok"] and (await worker.api.get("/healthz"))["ok"]
    await trio.sleep(1)  # a flush and a few heartbeats
    listed = {s["id"]: s for s in (await host.api.get("/server"))["servers"]}
    rows = await host.control.store.fetch("SELECT id, generation FROM servers "
                                          "WHERE NOT deleting")
    assert set(listed) == {r["id"] for r in rows}
    assert all(listed[r["id"]]["generation"] == r["generation"] for r in rows)
    on_disk = {s.id: s for s in await worker.agent.store.load()}
    assert {s["id"] for s in (await worker.api.get("/server"))["servers"]} == set(on_disk)
    with trio.fail_after(20):
        while True:
            held = {a.id: a for a in joined.agent.actors.values()}
            if set(held) == set(host.fleet.servers) and all(
                    held[sid].generation == s.generation and held[sid].spec == s.spec
                    for sid, s in host.fleet.servers.items()):
                break
            await trio.sleep(0.1)
