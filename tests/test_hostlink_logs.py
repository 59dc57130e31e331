"""What a worker joined to a host logs when it applies the host's desired servers: nothing
above DEBUG for a normal create (the push and the heartbeat race), and a change it cannot
save (a full disk) once, without a traceback, however many heartbeats repeat it."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from tests.conftest import RunningHost, fake_spec


def worker_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name.startswith("manman.worker") and r.levelno >= logging.WARNING]


async def test_a_normal_create_logs_no_warning(host: RunningHost, hosted: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="manman")
    # heartbeats at 20 ms: each create's push meets a heartbeat answer that carries it
    w = await hosted("w", heartbeat_interval=0.02)
    worker_id = w.handle.link.worker_id
    ids = []
    for i in range(20):
        s = await host.api.post("/server", fake_spec(f"s{i}", worker_id=worker_id),
                                expect=201)
        ids.append(s["id"])
    with trio.fail_after(10):
        while not all(i in w.agent.actors for i in ids):
            await trio.sleep(0.02)
    await trio.sleep(0.2)
    assert worker_warnings(caplog) == [], [r.getMessage() for r in worker_warnings(caplog)]


async def test_a_create_on_a_full_disk_is_logged_once_and_made_when_space_returns(
        host: RunningHost, hosted: Any, tiny_disk: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="manman")
    w = await hosted("w", data_dir=tiny_disk.path / "w")
    await trio.sleep(0.3)  # its own saves done: none is cut short by the fill
    tiny_disk.fill()
    s = await host.api.post("/server", fake_spec("g", worker_id=w.handle.link.worker_id,
                                                 desired_state="running"), expect=201)
    beats = w.handle.link.heartbeats_sent
    with trio.fail_after(10):
        while w.handle.link.heartbeats_sent < beats + 10:  # ten answers that carry it
            await trio.sleep(0.05)
    assert s["id"] not in w.agent.actors
    records = worker_warnings(caplog)
    about = [r for r in records if s["id"] in r.getMessage()]
    assert len(about) == 1, [r.getMessage() for r in records]
    assert "disk full" in about[0].getMessage()
    assert not any(r.exc_info for r in records), [r.getMessage() for r in records]

    tiny_disk.free()
    await host.api.wait_for(s["id"], state="running", timeout=20)
    assert s["id"] in w.agent.actors
