"""The console follower behind `manman logs -f` and `manman console`, against a real worker:
where a view starts, what ends it for good, and what it retries."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from manman.cli.client import ClientError, Follow, Frame, follow_console
from tests.conftest import RunningWorker, fake_spec


async def test_a_quiet_console_knows_where_to_resume_from_its_hello(
        worker: RunningWorker) -> None:
    """With `--tail 0` on a quiet server no line arrives before a drop: the resume point
    still comes from hello, so lines printed during the reconnect are not lost."""
    api = worker.api
    s = await api.post("/server", fake_spec("quiet", desired_state="running"), expect=201)
    await api.wait_for("quiet", state="running")
    frames: list[Frame] = []
    start = Follow(None, 0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow_console, worker.url, api.token, s["id"], start,
                           frames.append)
        with trio.fail_after(10):
            while not frames:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert frames[0].type == "hello"
    assert start.next_seq == frames[0].next_seq


@pytest.mark.parametrize("query", [{"since": -1}, {"tail": -5}])
async def test_a_refused_view_is_an_error_not_a_retry_loop(worker: RunningWorker,
                                                           query: dict[str, Any]) -> None:
    api = worker.api
    s = await api.post("/server", fake_spec("bad"), expect=201)
    start = Follow(query.get("since"), query.get("tail", 0))
    with trio.fail_after(10), pytest.raises(ClientError, match="422"):
        await follow_console(worker.url, api.token, s["id"], start, lambda f: None)


async def test_a_deleted_server_ends_the_view(worker: RunningWorker) -> None:
    api = worker.api
    s = await api.post("/server", fake_spec("doomed"), expect=201)
    frames: list[Frame] = []

    async def delete_after_hello() -> None:
        with trio.fail_after(10):
            while not frames:
                await trio.sleep(0.01)
        await api.request("DELETE", "/server/doomed", expect=200)

    ended: list[ClientError] = []

    async def follow() -> None:
        try:
            await follow_console(worker.url, api.token, s["id"], Follow(None, 10),
                                 frames.append)
        except ClientError as e:
            ended.append(e)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(delete_after_hello)
            nursery.start_soon(follow)
    assert "deleted" in str(ended[0])
