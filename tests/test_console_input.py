"""An empty console command is refused alike by the host and by a worker: 422 `invalid`,
the same message, and nothing reaches the game's stdin."""

from __future__ import annotations

from typing import Any

from tests.conftest import RunningHost, RunningWorker, fake_spec

EMPTY = {"error": {"code": "invalid", "message": "a console command needs `data`"}}


async def test_an_empty_command_is_422_on_the_worker(worker: RunningWorker) -> None:
    api = worker.api
    await api.post("/server", fake_spec("e", desired_state="running"), expect=201)
    await api.wait_for("e", state="running")
    before = (await api.get("/server/e/log?since=0&limit=10000"))["next_seq"]
    r = await api.request("POST", "/server/e/command", json={"data": ""})
    assert (r.status_code, r.json()) == (422, EMPTY)
    # a line that follows is the next one the game answers: the empty one never went in
    await api.post("/server/e/command", {"data": "say after"}, expect=202)
    await api.wait_line("e", "said: after", since=before)
    page = await api.get(f"/server/e/log?since={before}&limit=10000")
    assert [ln["text"] for ln in page["lines"] if ln["stream"] != "manman"] == ["said: after"]


async def test_an_empty_command_is_the_same_422_on_the_host(host: RunningHost, hosted: Any
                                                             ) -> None:
    w = await hosted("ce")
    await host.api.post("/server", fake_spec("e", worker_id=w.handle.link.worker_id,
                                             desired_state="running"), expect=201)
    await host.api.wait_for("e", state="running")
    for body in ({"type": "command", "data": ""}, {"type": "command"}):
        r = await host.api.request("POST", "/server/e/command", json=body)
        assert (r.status_code, r.json()) == (422, EMPTY)
