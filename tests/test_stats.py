"""Live stats (docs/spec.md "Live stats"): real busy games, a real worker and host."""

from __future__ import annotations

import json
import statistics
from array import array
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from manman.host.fleet import _timing_only
from manman.models import ObservedServer, ServerStats
from manman.worker.stats import cgroup, docker_stats, procfs
from manman.worker.stats.history import FIELDS, MINUTES, History
from manman.worker.stats.sampler import StatsSampler
from tests.conftest import PYTHON, RunningHost, worker_config
from tests.test_metrics import scrape

# a game that burns one core in each of `kids` children (or itself with none), each child
# holding `mem` MiB, and says every second how much CPU it got (the machine is shared: the
# test compares the stats with what the game really got)
BURNER = r"""
import os, sys, time
kids, mem = int(sys.argv[1]), int(sys.argv[2])
def burn(tag):
    blob = b"x" * (mem << 20)  # written: resident, unlike a calloc'd bytearray
    c0, t0, x = time.process_time(), time.monotonic(), 0
    while True:
        x += 1
        if x % 20000 == 0 and (t := time.monotonic()) - t0 >= 1:
            c = time.process_time()
            print(f"rate {tag} {100 * (c - c0) / (t - t0):.1f}", flush=True)
            c0, t0 = c, t
for i in range(kids):
    if os.fork() == 0:
        burn(f"child{i}")
print("Server ready", flush=True)
if kids:
    while True:
        time.sleep(1)
burn("main")
"""


def burner(name: str, kids: int, mem: int) -> dict[str, Any]:
    return {"name": name, "game_id": f"exec:{PYTHON}", "args": ["-c", BURNER, str(kids),
                                                                str(mem)],
            "stop_timeout": 5, "ready_pattern": "^Server ready$", "desired_state": "running"}


async def rates(api: Any, server: str, since: int) -> list[float]:
    page = await api.get(f"/server/{server}/log?since={since}&limit=10000")
    return [float(ln["text"].split()[-1]) for ln in page["lines"]
            if ln["text"].startswith("rate ")]


async def watch(api: Any, server: str, seconds: float) -> tuple[list[dict[str, Any]], float]:
    """The stats the API shows over `seconds`, and the CPU % the game said it got then."""
    first = (await api.get(f"/server/{server}/log?limit=1"))["next_seq"]
    seen: list[dict[str, Any]] = []
    with trio.move_on_after(seconds):
        while True:
            st = (await api.get(f"/server/{server}"))["stats"]
            if st is not None and (not seen or st["at"] != seen[-1]["at"]) and st["cpu"] > 0:
                seen.append(st)
            await trio.sleep(0.1)
    got = await rates(api, server, first)
    assert seen and got, (seen, got)
    return seen, statistics.mean(got)


# -- pure parts -----------------------------------------------------------------------------


def test_parse_stat_name_with_parentheses() -> None:
    fields = ["S", "10", "7"] + ["0"] * 8 + ["100", "50", "3", "2"] + ["0"] * 6 + ["25"]
    p = procfs.parse_stat(f"42 (a) (b c) {' '.join(fields)} 0 0", page=4096)
    assert p is not None
    assert (p.pid, p.ppid, p.pgrp, p.ticks, p.rss) == (42, 10, 7, 155, 25 * 4096)
    assert procfs.parse_stat("garbage") is None


def test_tree_takes_group_and_descendants() -> None:
    def proc(pid: int, ppid: int, pgrp: int) -> procfs.Proc:
        return procfs.Proc(pid, ppid, pgrp, ticks=10, rss=1)

    procs = {p.pid: p for p in (proc(100, 1, 100), proc(101, 100, 100),
                                proc(102, 101, 102),  # left the group (setsid): a child still
                                proc(103, 1, 100),  # re-parented to init, still in the group
                                proc(200, 1, 200))}
    kids, groups = procfs.children_index(procs), procfs.groups_index(procs)
    assert {p.pid for p in procfs.tree(procs, kids, groups, 100)} == {100, 101, 102, 103}
    assert procfs.tree(procs, kids, groups, 999) == []
    assert procfs.cpu_percent(100, 150, 1.0, tck=100) == 50.0
    assert procfs.cpu_percent(150, 100, 1.0, tck=100) == 0.0  # a child left: never negative
    busy, total = procfs.machine_cpu("cpu  10 0 10 70 10 0 0 0 0 0\ncpu0 ...")
    assert (busy, total) == (20, 100)


def test_docker_stats_lines() -> None:
    out = docker_stats.parse(
        '{"Name":"manman-a","CPUPerc":"97.5%","MemUsage":"12.5MiB / 1GiB",'
        '"NetIO":"1.5kB / 648B"}\n{"Name":"manman-b","CPUPerc":"--"}\nnot json\n')
    assert list(out) == ["manman-a"]
    a = out["manman-a"]
    assert (a.cpu, a.memory, a.net_rx, a.net_tx) == (97.5, int(12.5 * 2**20), 1500, 648)


def test_cgroup_files() -> None:
    assert cgroup.paths("12:memory:/docker/ab\n3:cpu,cpuacct:/docker/ab\n0::/x\n") == {
        "memory": "/docker/ab", "cpu": "/docker/ab", "cpuacct": "/docker/ab", "": "/x"}
    v2 = "anon 100\nfile 900\ninactive_file 600\nactive_file 300\n"
    assert cgroup.memory_usage(1000, v2, v2=True) == 400  # the page cache it can drop: not
    v1 = "cache 900\ntotal_inactive_file 700\n"
    assert cgroup.memory_usage(1000, v1, v2=False) == 300
    assert cgroup.memory_usage(100, v1, v2=False) == 100  # never below zero (docker/cli)
    dev = ("Inter-|   Receive |  Transmit\n face |bytes packets|bytes\n"
           "    lo: 500 5 0 0 0 0 0 0 500 5 0 0 0 0 0 0\n"
           "  eth0: 1200 9 0 0 0 0 0 0 3400 7 0 0 0 0 0 0\n")
    assert cgroup.net_bytes(dev) == (1200, 3400)


def test_history_minutes_and_a_day(tmp_path: Path) -> None:
    h = History()
    t0 = 1_700_000_000 // 60 * 60
    h.add(t0 + 1, 10.0, 100, None)
    h.add(t0 + 30, 30.0, 300, 5)
    h.add(t0 + 61, 50.0, 200, 6)
    assert h.points(0, t0 + 61) == [(t0, 20.0, 300, 5), (t0 + 60, 50.0, 200, 6)]
    assert h.points(t0 + 60, t0 + 61) == [(t0 + 60, 50.0, 200, 6)]
    for m in range(2, MINUTES + 10):  # a day and more: the oldest are overwritten
        h.add(t0 + 60 * m, 1.0, 1, 1)
    pts = h.points(0, t0 + 60 * (MINUTES + 9))
    assert len(pts) == MINUTES and pts[0][0] == t0 + 60 * 10
    assert len(h.ring) == MINUTES * FIELDS and h.ring.itemsize == 8
    # saved and read back by the sampler (at shutdown and every ten minutes)
    agent = SimpleNamespace(cfg=SimpleNamespace(data_dir=tmp_path), actors={})
    s = StatsSampler(agent, 5.0)  # type: ignore[arg-type]
    s.history["srv"] = h
    s.save()
    s2 = StatsSampler(agent, 5.0)  # type: ignore[arg-type]
    s2.load()
    assert s2.history["srv"].ring == array("d", h.ring)
    assert s2.history["srv"].points(0, t0 + 60 * (MINUTES + 9)) == pts


def test_stats_alone_are_kept_in_memory_on_the_host() -> None:
    a = ObservedServer(id="s", state="running", stats=ServerStats(cpu=1, memory=2, at=1))
    b = ObservedServer(id="s", state="running", stats=ServerStats(cpu=50, memory=9, at=6))
    assert _timing_only(a, b)
    assert not _timing_only(a, ObservedServer(id="s", state="stopped"))


# -- a real worker ----------------------------------------------------------------------------


@pytest.fixture
async def fast_worker(tmp_path: Path, bg: trio.Nursery) -> Any:
    from manman.worker.main import run_worker
    from tests.conftest import Client, RunningWorker

    handle = await bg.start(run_worker, worker_config(tmp_path, stats_interval=0.5))
    w = RunningWorker(handle, Client(handle.url, "test-worker-token"))
    try:
        yield w
    finally:
        await w.shutdown()
        await w.api.aclose()


async def test_busy_loop_is_one_core(fast_worker: Any) -> None:
    api = fast_worker.api
    s = await api.post("/server", burner("busy", 0, 0), expect=201)
    await api.wait_for("busy", state="running")
    seen, got = await watch(api, "busy", 5)
    cpu = statistics.mean(st["cpu"] for st in seen)
    # on an idle machine both are ~100; on a loaded one the game says what it got
    assert abs(cpu - got) <= 25, (cpu, got, seen)
    assert 5 < cpu <= 130
    assert seen[-1]["memory"] > 1 << 20 and seen[-1]["disk"] is not None
    assert seen[-1]["net_rx"] is None  # exec: no network figure (docs/spec.md)
    points = (await api.get(f"/server/{s['id']}/stats?since=0"))["points"]
    assert points and points[-1]["cpu"] > 0
    await api.get("/server/busy/stats?since=abc", expect=422)
    await api.post("/server/busy/kill", expect=202)
    await api.wait_for("busy", state="stopped")
    with trio.fail_after(5):
        while (await api.get("/server/busy"))["stats"] is not None:
            await trio.sleep(0.1)


async def test_children_count(fast_worker: Any) -> None:
    api = fast_worker.api
    s = await api.post("/server", burner("kids", 1, 64), expect=201)
    await api.wait_for("kids", state="running")
    seen, got = await watch(api, "kids", 5)
    cpu = statistics.mean(st["cpu"] for st in seen)
    assert abs(cpu - got) <= 25, (cpu, got, seen)  # the parent sleeps: it is the child's
    assert seen[-1]["memory"] >= 64 << 20  # the child's 64 MiB
    status = await api.get("/status")
    assert status["resources"]["servers"]["memory"] >= 64 << 20
    assert 0 <= status["resources"]["cpu"] <= 100
    m = await scrape(fast_worker.url)
    assert m[("manman_server_memory_bytes", (("server", "kids"),))] >= 64 << 20
    assert m[("manman_server_cpu_ratio", (("server", "kids"),))] >= 0
    assert ("manman_server_disk_bytes", (("server", "kids"),)) in m
    # the console websocket: a stats frame only for a viewer that asked
    base = fast_worker.url.replace("http", "ws") + f"/server/{s['id']}/log/ws?tail=0&token=" \
        + "test-worker-token"
    async with open_websocket_url(base + "&stats=1") as ws:
        with trio.fail_after(5):
            while (frame := json.loads(await ws.get_message()))["type"] != "stats":
                pass
    assert set(frame) == {"type", "cpu", "memory", "disk", "at"}
    assert frame["memory"] >= 64 << 20
    async with open_websocket_url(base) as ws:
        with trio.move_on_after(1.5):
            while True:
                assert json.loads(await ws.get_message())["type"] != "stats"


async def test_stats_through_the_host(host: RunningHost, hosted: Any) -> None:
    w = await hosted("st", stats_interval=0.3)
    api = host.api
    spec = burner("hk", 1, 32)
    spec["worker_id"] = w.handle.link.worker_id
    s = await api.post("/server", spec, expect=201)
    await api.wait_for("hk", state="running")
    with trio.fail_after(10):
        while (st := (await api.get("/server/hk"))["stats"]) is None or st["memory"] < 32 << 20:
            await trio.sleep(0.1)
    assert st["cpu"] >= 0
    hist = await api.get(f"/server/{s['id']}/stats?since=0")
    assert hist["interval"] == 60 and hist["points"][-1]["memory"] >= 32 << 20
    await api.get("/server/hk/stats?since=-1", expect=422)
    m = await scrape(host.url)
    assert m[("manman_server_memory_bytes", (("server", "hk"),))] >= 32 << 20
    # the CLI: `manman top --once` and `manman server show`
    from tests.test_cli import manman, out

    r = await manman(host, "top", "--once")
    lines = out(r).splitlines()
    assert lines[0].split() == ["NAME", "STATE", "CPU%", "MEM", "DISK", "PLAYERS"]
    assert lines[1].split()[:2] == ["hk", "running"] and lines[1].split()[3].endswith("M")
    r = await manman(host, "server", "show", "hk")
    assert any(ln.startswith("stats:") and "mem" in ln for ln in out(r).splitlines()), out(r)
    # a sample alone is not an observed state to write to PostgreSQL
    await trio.sleep(1)
    assert s["id"] not in host.fleet._dirty_observed
    ws_url = host.url.replace("http", "ws") + \
        f"/server/{s['id']}/log/ws?tail=0&stats=1&token={api.token}"
    async with open_websocket_url(ws_url) as ws:
        with trio.fail_after(5):
            while json.loads(await ws.get_message())["type"] != "stats":
                pass


async def test_docker_container_stats(docker_host: str, tmp_path: Path, bg: trio.Nursery,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from manman.worker.main import run_worker
    from tests.conftest import DOCKER_IMAGE, Client, RunningWorker

    monkeypatch.setenv("DOCKER_HOST", docker_host)
    handle = await bg.start(run_worker, worker_config(tmp_path, docker_network="none",
                                                      stats_interval=0.5))
    w = RunningWorker(handle, Client(handle.url, "test-worker-token"))
    try:
        api = w.api
        await api.post("/server", {
            "name": "dbusy", "game_id": f"docker:{DOCKER_IMAGE}", "stop_timeout": 2,
            "args": ["sh", "-c", "echo 'Server ready'; while :; do :; done"],
            "ready_pattern": "^Server ready$", "desired_state": "running"}, expect=201)
        await api.wait_for("dbusy", state="running", timeout=30)
        with trio.fail_after(30):  # docker stats takes its own second or two a pass
            while (st := (await api.get("/server/dbusy"))["stats"]) is None \
                    or st["net_rx"] is None:
                await trio.sleep(0.2)
        assert st["cpu"] > 5 and st["memory"] > 0
        pid = (await api.get("/server/dbusy"))["pid"]
        # read from its cgroup files where they are visible (here: the v1 controllers)
        direct = cgroup.sample(pid)
        assert direct is not None and direct.memory > 0 and direct.cpu_ns > 0
        assert st["net_rx"] == 0 and st["net_tx"] == 0  # --network none: nothing moves
        # where they are not visible: one `docker stats` call for every container
        actor = w.agent.get("dbusy")
        got = await handle.sampler._docker_samples([actor], 0.0)
        assert got[actor.id][1] > 0 and got[actor.id][0] >= 0
        m = await scrape(w.url)
        assert m[("manman_server_cpu_ratio", (("server", "dbusy"),))] > 0.05
        await api.post("/server/dbusy/kill", expect=202)
        await api.wait_for("dbusy", state="stopped", timeout=30)
    finally:
        await w.shutdown()
        await w.api.aclose()
