"""No process of a game server is left running unmanaged: after stop, kill, crash, health
kill, restart and worker shutdown (SIGKILL + restart is in test_worker_restart.py)."""

from __future__ import annotations

from pathlib import Path

import trio

from manman.worker import procs
from tests.conftest import RunningWorker, fake_spec, processes_under


async def gone(directory: Path, timeout: float = 5) -> set[int]:
    """The game processes still under `directory` after waiting for them to end."""
    with trio.move_on_after(timeout):
        while processes_under(directory):
            await trio.sleep(0.02)
    return processes_under(directory)


async def test_no_orphans_through_a_servers_life(worker: RunningWorker) -> None:
    api = worker.api
    s = await api.post("/server", fake_spec(
        "orph", "--child", "--ready-line", "up",
        ready_pattern="^up$",
        restart={"policy": "on-failure", "backoff_initial": 0.1, "reset_after": 60},
        desired_state="running"), expect=201)
    sdir = worker.agent.data_dir / "servers" / s["id"]

    async def managed() -> set[int]:
        cur = await api.wait_for("orph", state="running")
        with trio.fail_after(5):
            while len(found := processes_under(sdir)) < 2:  # the game and its --child
                await trio.sleep(0.02)
        assert cur["pid"] in found and len(found) == 2, found
        return found

    group = await managed()
    # crash: the dead game's child goes with it, the restarted one has its own
    await api.post("/server/orph/command", {"data": "crash"}, expect=202)
    await api.wait_for("orph", state="running", restarts=1)
    new_group = await managed()
    assert not group & new_group
    assert not any(procs.is_running(p) for p in group)
    # restart, kill, stop
    for action, final in (("restart", "running"), ("kill", "stopped"),
                          ("start", "running"), ("shutdown", "stopped")):
        old = processes_under(sdir)
        await api.post(f"/server/orph/{action}", expect=202)
        await api.wait_for("orph", state=final, timeout=15)
        if final == "running":
            now = await managed()
            assert not old & now
        else:
            assert await gone(sdir) == set()
        for pid in old:
            assert not procs.is_running(pid), (action, pid)
    # worker shutdown with a running server
    await api.post("/server/orph/start", expect=202)
    last = await managed()
    await worker.shutdown()
    assert processes_under(sdir) == set()
    assert not any(procs.is_running(p) for p in last)


async def test_a_descendant_that_left_the_process_group_goes_with_its_server(
        worker: RunningWorker) -> None:
    api = worker.api
    await api.post("/server", fake_spec("sess", restart={"policy": "never"},
                                        desired_state="running"), expect=201)
    await api.wait_for("sess", state="running")
    await api.post("/server/sess/command", {"data": "spawn-detached"}, expect=202)
    child = int((await api.wait_line("sess", "child", timeout=5, prefix=True))["text"].split()[1])
    assert procs.is_running(child)
    await api.post("/server/sess/shutdown", expect=202)
    await api.wait_for("sess", state="stopped")
    with trio.move_on_after(5):
        while procs.is_running(child):
            await trio.sleep(0.02)
    assert not procs.is_running(child)
