"""Limits (docs/spec.md "Limits"): memory, cpus and pids of exec servers in cgroups the
worker makes, of docker servers through docker; OOM kills as crashes; refused where they
cannot be enforced, or only watched (worker.limits = "monitor")."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

import pytest
import trio

from manman.config import ConfigError, load_config
from manman.models import Limits
from manman.worker.limits import cgroups
from manman.worker.limits.cgroups import ServerCgroup
from tests.conftest import (
    PYTHON,
    Client,
    RunningHost,
    RunningWorker,
    fake_spec,
    worker_config,
    write_config,
)
from tests.test_docker import docker_spec, docker_worker  # noqa: F401 (a fixture)
from tests.test_metrics import scrape
from tests.test_stats import burner, watch

HERE = cgroups.detect()


def needs_cgroup() -> None:
    if HERE.mode == "none":
        pytest.skip(f"no writable cgroup on this machine: {HERE.reason}")


# a game that prints its ready line, then takes `MiB` MiB (written: resident)
HOG = r"""
import sys, time
print("Server ready", flush=True)
time.sleep(0.3)
blob = b"x" * (int(sys.argv[1]) << 20)
print("got it all", flush=True)
time.sleep(1000)
"""

# the main process forks children that sleep, up to 200 (bounded even if pids failed),
# and says where the fork failed
FORKER = r"""
import os, sys, time
print("Server ready", flush=True)
for i in range(200):
    try:
        if os.fork() == 0:
            time.sleep(1000)
            os._exit(0)
    except OSError as e:
        print(f"fork failed after {i}: {e.strerror}", flush=True)
        break
else:
    print("forked 200", flush=True)
time.sleep(1000)
"""


def py_spec(name: str, script: str, *args: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "game_id": f"exec:{PYTHON}", "args": ["-c", script, *args],
            "stop_timeout": 3, "ready_pattern": "^Server ready$", **fields}


@pytest.fixture
async def limits_worker(tmp_path: Path, bg: trio.Nursery) -> Any:
    """Start a standalone worker with config overrides; each is shut down at the end."""
    from manman.worker.main import run_worker

    started: list[RunningWorker] = []

    async def start(name: str = "w", **over: Any) -> RunningWorker:
        cfg = worker_config(tmp_path / name, stats_interval=0.3, **over)
        handle = await bg.start(run_worker, cfg)
        w = RunningWorker(handle, Client(handle.url, "test-worker-token"))
        started.append(w)
        return w

    yield start
    for w in started:
        await w.shutdown()
        await w.api.aclose()
        # the worker removes its cgroups when it stops: none may be left behind
        owner = w.agent.owner
        assert not any(os.path.exists(d) for d in w.agent.limits.hierarchy.owner_dirs(owner))


def group_of(w: RunningWorker, server_id: str) -> ServerCgroup:
    g = w.agent.limits.group(server_id)
    assert g is not None
    return g


# -- pure: the values written, the counters read, the detection ---------------------------------


def test_v1_files_keep_swap_equal_and_raise_it_first() -> None:
    files = cgroups.v1_files(Limits(memory_mb=50, cpus=0.5, pids=50))
    assert files == [
        ("memory", "memory.memsw.limit_in_bytes", "-1"),
        ("memory", "memory.limit_in_bytes", str(50 << 20)),
        ("memory", "memory.memsw.limit_in_bytes", str(50 << 20)),
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "50000"),
        ("pids", "pids.max", "50")]
    unlimited = {f: v for _, f, v in cgroups.v1_files(None)}
    assert unlimited == {"memory.memsw.limit_in_bytes": "-1", "memory.limit_in_bytes": "-1",
                         "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1",
                         "pids.max": "max"}


def test_v2_files() -> None:
    got = {f: v for _, f, v in cgroups.v2_files(Limits(memory_mb=64, cpus=2, pids=10))}
    assert got == {"memory.max": str(64 << 20), "memory.swap.max": "0",
                   "cpu.max": "200000 100000", "pids.max": "10"}
    got = {f: v for _, f, v in cgroups.v2_files(Limits(cpus=0.001 * 5))}
    assert got["cpu.max"] == "1000 100000"  # the kernel's smallest quota
    assert got["memory.max"] == "max" and got["memory.swap.max"] == "max"


def test_v1_mounts() -> None:
    text = ("tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0\n"
            "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0\n"
            "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
            "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n")
    got = cgroups.v1_mounts(text)
    assert got["cpu"] == got["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert got["memory"] == "/sys/fs/cgroup/memory" and "pids" not in got


def test_oom_counters_and_reason() -> None:
    v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
    v2 = "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n"
    assert cgroups.oom_kill_count(v1) == 3 and cgroups.oom_kill_count(v2) == 2
    assert cgroups.oom_kill_count("oom_kill_disable 0\nunder_oom 0\n") == 0  # older kernel
    assert cgroups.oom_reason(50) == "out of memory (limit 50 MiB)"
    assert cgroups.enforced(Limits(memory_mb=8, cpus=0.5, disk_mb=9)) == ["memory_mb 8",
                                                                          "cpus 0.5"]


def test_detect_none_without_cgroup_files(tmp_path: Path) -> None:
    """An empty cgroup root (nothing mounted), and one with empty controller directories
    (not cgroup file systems): no hierarchy, with the reason."""
    own = "4:memory:/a\n3:cpu,cpuacct:/a\n2:pids:/a\n0::/a\n"
    got = cgroups.detect(str(tmp_path), own, "")
    assert got.mode == "none" and "no memory controller mounted" in got.reason
    for d in ("memory/a", "cpu/a", "pids/a", "unified/a"):
        (tmp_path / d).mkdir(parents=True)
    # directories that are no cgroup file system, and this machine's own mounts (not
    # under that root)
    for mounts in ("", Path("/proc/self/mounts").read_text()):
        got = cgroups.detect(str(tmp_path), own, mounts)
        assert got.mode == "none" and "no memory controller mounted" in got.reason
    # mounted there, but the worker's own cgroup is not there
    mounts = "".join(f"cgroup {tmp_path}/{d} cgroup rw,{c} 0 0\n"
                     for d, c in (("memory", "memory"), ("cpu", "cpu,cpuacct"), ("pids", "pids")))
    got = cgroups.detect(str(tmp_path), own, mounts)
    assert got.mode == "none"
    assert got.reason.startswith(f"cgroup v1: no cgroup {tmp_path}/memory/a")
    assert not any(p.name == "manman" for p in tmp_path.rglob("*"))  # made nothing


def test_detect_v1_beneath_the_own_path() -> None:
    needs_cgroup()
    if HERE.mode != "cgroup1":
        pytest.skip(f"this machine's cgroups are {HERE.mode}")
    own = cgroups.paths(Path("/proc/self/cgroup").read_text())
    assert HERE.bases["memory"] == f"{cgroups.ROOT}/memory{own['memory']}".rstrip("/") \
        + "/manman"
    assert set(HERE.bases) >= {"memory", "cpu", "pids"}


def test_bad_limits_setting_names_the_key(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", '[worker]\nlimits = "sometimes"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "worker.limits" in str(e.value)
    assert load_config(write_config(tmp_path / "d.toml", '[worker]\nlimits = "monitor"\n')
                       ).worker.limits == "monitor"


# -- exec servers in cgroups (this machine's) ---------------------------------------------------


async def test_exec_oom_kill_is_a_crash_and_restarts(limits_worker: Any) -> None:
    needs_cgroup()
    w = await limits_worker()
    api = w.api
    status = await api.get("/status")
    assert status["limits"] == HERE.mode and status["limits_setting"] == "enforce"
    s = await api.post("/server", py_spec("hog", HOG, "200", limits={"memory_mb": 50},
                                          restart={"policy": "on-failure",
                                                   "backoff_initial": 0.2}), expect=201)
    assert s["limits"]["memory_mb"] == 50
    await api.post("/server/hog/start", expect=202)
    await api.wait_line("hog", "crashed (out of memory (limit 50 MiB)); restarting in 0.2s",
                        timeout=15)
    got = await api.wait_for("hog", restarts=1, timeout=15)  # restarted by the policy
    page = await api.get("/server/hog/log?since=0&limit=1000")
    assert not any(ln["text"] == "got it all" for ln in page["lines"])
    group = group_of(w, s["id"])
    assert (group.oom_kills() or 0) >= 1
    m = await scrape(w.url)
    assert m[("manman_server_oom_kills_total", (("server", "hog"),))] >= 1
    await api.post("/server/hog/kill", expect=202)
    got = await api.wait_for("hog", state="stopped")
    assert got["exit_code"] is not None
    assert group.pids() == []
    await api.request("DELETE", "/server/hog", expect=200)
    assert not any(os.path.exists(d) for d in group.unique)  # its cgroup went with it


async def test_half_a_core(limits_worker: Any) -> None:
    needs_cgroup()
    w = await limits_worker()
    api = w.api
    spec = burner("half", 0, 0)
    spec["limits"] = {"cpus": 0.5}
    await api.post("/server", spec, expect=201)
    await api.wait_for("half", state="running")
    seen, got = await watch(api, "half", 4)
    cpu = statistics.mean(st["cpu"] for st in seen[1:] or seen)
    assert got <= 60, got  # the quota holds whatever else the machine does
    assert abs(cpu - got) <= 15, (cpu, got, seen)  # the stats say what it got
    if got >= 35:  # (a machine busy enough may give it less than its half)
        assert 35 <= cpu <= 65, (cpu, seen)


async def test_children_are_in_the_cgroup_and_its_stats(limits_worker: Any) -> None:
    needs_cgroup()
    w = await limits_worker()
    api = w.api
    s = await api.post("/server", burner("kids", 1, 64), expect=201)
    s = await api.wait_for("kids", state="running")
    group = group_of(w, s["id"])
    members = group.pids()
    assert s["pid"] in members and len(members) == 2  # the game and its child
    seen, got = await watch(api, "kids", 3)
    assert seen[-1]["memory"] >= 64 << 20  # the child's 64 MiB
    cpu = statistics.mean(st["cpu"] for st in seen)
    assert abs(cpu - got) <= 25, (cpu, got, seen)  # the parent sleeps: it is the child's
    direct = group.sample()
    assert direct is not None and direct[1] >= 64 << 20


async def test_pids_stop_a_fork_bomb_alone(limits_worker: Any) -> None:
    needs_cgroup()
    w = await limits_worker()
    api = w.api
    await api.post("/server", fake_spec("calm", desired_state="running"), expect=201)
    s = await api.post("/server", py_spec("bomb", FORKER, limits={"pids": 50},
                                          desired_state="running"), expect=201)
    line = await api.wait_line("bomb", "fork failed after", prefix=True, timeout=15)
    forked = int(line["text"].split()[3].rstrip(":"))
    # 50 in all: the game, and the children it could make (less any still starting)
    assert 40 <= forked <= 49, line
    group = group_of(w, s["id"])
    assert len(group.pids()) <= 50
    # the worker and the other server carry on
    await api.post("/server/calm/command", {"data": "say still here"}, expect=202)
    await api.wait_line("calm", "said: still here")
    await api.post("/server/bomb/kill", expect=202)
    await api.wait_for("bomb", state="stopped")
    with trio.fail_after(5):
        while group.pids():
            await trio.sleep(0.05)
    assert (await api.get("/server/calm"))["state"] == "running"


async def test_limits_change_live(limits_worker: Any) -> None:
    """A PUT of a running exec server's limits writes its cgroup at once."""
    needs_cgroup()
    w = await limits_worker()
    api = w.api
    s = await api.post("/server", fake_spec("live", limits={"pids": 20},
                                            desired_state="running"), expect=201)
    await api.wait_for("live", state="running")
    group = group_of(w, s["id"])
    pids_dir = group.dirs["" if group.v2 else "pids"]
    assert Path(pids_dir, "pids.max").read_text().strip() == "20"
    await api.request("PUT", "/server/live", json={"limits": {"pids": 30, "memory_mb": 300}},
                      expect=200)
    assert Path(pids_dir, "pids.max").read_text().strip() == "30"
    await api.wait_line("live", "new limits applied to the running game")
    mem_dir = group.dirs["" if group.v2 else "memory"]
    limit_file = "memory.max" if group.v2 else "memory.limit_in_bytes"
    assert int(Path(mem_dir, limit_file).read_text()) == 300 << 20
    if not group.v2:  # swap never unlimited on the way, and equal to the limit after
        assert int(Path(mem_dir, "memory.memsw.limit_in_bytes").read_text()) == 300 << 20
    # a memory limit under what the game uses now: not applied (v2 would kill it), and said
    await api.request("PUT", "/server/live", json={"limits": {"pids": 30, "memory_mb": 4}},
                      expect=200)
    with trio.fail_after(10):
        while not any("over the new memory limit; they apply at the next start" in line["text"]
                      for line in (await api.get("/server/live/log?limit=1000"))["lines"]):
            await trio.sleep(0.05)
    assert int(Path(mem_dir, limit_file).read_text()) == 300 << 20
    assert (await api.get("/server/live"))["state"] == "running"


async def test_restart_keeps_known_cgroups_and_removes_others(tmp_path: Path,
                                                              bg: trio.Nursery) -> None:
    """A worker that died leaves cgroups: at its next start, those of its servers stay
    (their leftover processes killed through them), the others go."""
    needs_cgroup()
    from manman.worker.main import run_worker

    cfg = worker_config(tmp_path, stats_interval=0)
    handle = await bg.start(run_worker, cfg)
    w = RunningWorker(handle, Client(handle.url, "test-worker-token"))
    s = await w.api.post("/server", fake_spec("kept", limits={"pids": 20}), expect=201)
    await w.shutdown()
    await w.api.aclose()
    owner = w.agent.owner
    # what a killed worker leaves: its server's cgroup with a process in it, and a cgroup
    # of a server deleted meanwhile
    kept = ServerCgroup(HERE, owner, s["id"])
    stray = ServerCgroup(HERE, owner, "gone0000")
    kept.create(None)
    stray.create(None)
    proc = await trio.lowlevel.open_process(
        ["/bin/sh", "-c", cgroups.JOIN_SCRIPT, "t", *kept.join_files(), "--", "sleep", "60"])
    try:
        with trio.fail_after(5):
            while proc.pid not in kept.pids():
                await trio.sleep(0.02)
        handle = await bg.start(run_worker, cfg)
        w = RunningWorker(handle, Client(handle.url, "test-worker-token"))
        try:
            assert all(os.path.isdir(d) for d in kept.unique)
            assert not any(os.path.exists(d) for d in stray.unique)
            with trio.fail_after(5):
                await proc.wait()  # killed as a leftover of the server
        finally:
            await w.shutdown()
            await w.api.aclose()
        assert not any(os.path.exists(d) for d in kept.unique)
    finally:
        proc.kill()
        await proc.wait()
        kept.remove()
        stray.remove()
        cgroups.remove_owner(HERE, owner)


# -- where no cgroup is writable: refused, or watched (monitor) -----------------------------


async def test_unsupported_limits_are_refused(limits_worker: Any, tmp_path: Path) -> None:
    empty = tmp_path / "no-cgroups"
    empty.mkdir()
    w = await limits_worker(cgroup_root=str(empty))
    api = w.api
    assert (await api.get("/status"))["limits"] == "none"
    r = await api.request("POST", "/server", json=fake_spec("lim", limits={"memory_mb": 64}))
    assert r.status_code == 422, r.text
    assert "cannot be enforced" in r.json()["error"]["message"]
    # no limit, or disk only, or a docker server (docker enforces its own): accepted
    await api.post("/server", fake_spec("free", limits={"disk_mb": 100}), expect=201)
    await api.post("/server", docker_spec("dk", limits={"memory_mb": 64}), expect=201)
    r = await api.request("PUT", "/server/free", json={"limits": {"pids": 10}})
    assert r.status_code == 422, r.text
    await api.request("PUT", "/server/free", json={"name": "free2"}, expect=200)


async def test_monitor_mode_warns(limits_worker: Any, tmp_path: Path) -> None:
    empty = tmp_path / "no-cgroups"
    empty.mkdir()
    w = await limits_worker(cgroup_root=str(empty), limits="monitor")
    api = w.api
    status = await api.get("/status")
    assert status["limits"] == "none" and status["limits_setting"] == "monitor"
    await api.post("/server", py_spec("mon", HOG, "20", limits={"memory_mb": 8},
                                      desired_state="running"), expect=201)
    await api.wait_line("mon", "limits memory_mb 8 not enforced: no writable cgroup on this "
                        "worker (worker.limits = monitor); use over them is warned of")
    await api.wait_line("mon", "got it all")
    page = await api.get("/server/mon/log?since=0&limit=1000")
    with trio.fail_after(10):
        while not any(ln["text"].startswith("warning: memory ") for ln in page["lines"]):
            await trio.sleep(0.1)
            page = await api.get("/server/mon/log?since=0&limit=1000")
    warned = [ln["text"] for ln in page["lines"] if ln["text"].startswith("warning: ")]
    assert warned[0].endswith("over memory_mb 8 (not enforced: worker.limits = monitor)")
    assert (await api.get("/server/mon"))["state"] == "running"
    await trio.sleep(1)  # once a run, not every pass
    page = await api.get("/server/mon/log?since=0&limit=1000")
    assert len([ln for ln in page["lines"] if ln["text"].startswith("warning: ")]) == 1


async def test_host_refuses_limits_its_worker_cannot_enforce(
        host: RunningHost, hosted: Any, tmp_path: Path) -> None:
    empty = tmp_path / "no-cgroups"
    empty.mkdir()
    w = await hosted("nocg", cgroup_root=str(empty))
    api = host.api
    row = next(x for x in (await api.get("/worker"))["workers"] if x["name"] == "nocg")
    wid = row["id"]
    assert row["capacity"]["limits"] == "none"  # as the worker said at registration
    spec = fake_spec("hl", worker_id=wid, limits={"cpus": 0.5})
    r = await api.request("POST", "/server", json=spec)
    assert r.status_code == 422 and "cannot be enforced" in r.text, r.text
    s = await api.post("/server", fake_spec("hl", worker_id=wid), expect=201)
    r = await api.request("PUT", f"/server/{s['id']}", json={"limits": {"pids": 5}})
    assert r.status_code == 422, r.text
    # a spec that reaches the worker anyway (the host did not know): it fails to start,
    # saying why, never runs unlimited
    await w.api.post("/server", {**fake_spec("direct", limits={"pids": 5}), "id": "direct1"},
                     expect=201)
    await w.api.post("/server/direct1/start", expect=202)
    got = await w.api.wait_for("direct1", state="failed")
    assert "limits cannot be enforced on this worker: no writable cgroup" in got["error"], got


# -- docker --------------------------------------------------------------------------------------


async def test_docker_limits_and_oom(docker_worker: RunningWorker,  # noqa: F811
                                     docker_host: str) -> None:
    from tests.test_docker import docker

    api = docker_worker.api
    # on a console line, the container's main process takes 200 MiB (dd's buffer,
    # written as it reads)
    game = "echo 'Server ready'; read -r line; exec dd if=/dev/zero of=/dev/null bs=200M count=1"
    s = await api.post("/server", docker_spec(
        "dmem", args=["sh", "-c", game], limits={"memory_mb": 20, "cpus": 0.5, "pids": 30},
        restart={"policy": "on-failure", "backoff_initial": 0.5}), expect=201)
    await api.wait_for("dmem", state="stopped", timeout=30)  # installed (the image)
    await api.post("/server/dmem/start", expect=202)
    await api.wait_for("dmem", state="running", timeout=30)
    got = docker(docker_host, "inspect", "-f", "{{.HostConfig.Memory}} "
                 "{{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}}",
                 f"manman-{s['id']}")
    assert got.stdout.split() == [str(20 << 20), str(20 << 20), "500000000", "30"], got
    # a PUT changes the running container's limits (docker update)
    await api.request("PUT", "/server/dmem", json={"limits": {
        "memory_mb": 24, "cpus": 0.25, "pids": 40}}, expect=200)
    await api.wait_line("dmem", "new limits applied to the running container")
    got = docker(docker_host, "inspect", "-f", "{{.HostConfig.Memory}} "
                 "{{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}}",
                 f"manman-{s['id']}")
    assert got.stdout.split() == [str(24 << 20), str(24 << 20), "250000000", "40"], got
    await api.post("/server/dmem/command", {"data": "go"}, expect=202)
    await api.wait_line("dmem", "crashed (out of memory (limit 24 MiB)); restarting in 0.5s",
                        timeout=30)
    await api.wait_for("dmem", state="running", restarts=1, timeout=30)
    m = await scrape(docker_worker.url)
    assert m[("manman_server_oom_kills_total", (("server", "dmem"),))] == 1
    await api.post("/server/dmem/kill", expect=202)
    await api.wait_for("dmem", state="stopped", timeout=30)


# -- the CLI ---------------------------------------------------------------------------------------


async def test_cli_sets_and_shows_limits(host: RunningHost, hosted: Any) -> None:
    from tests.test_cli import manman, out

    w = await hosted("cli-lim")
    r = await manman(host, "workers")
    header, row = out(r).splitlines()
    assert row[header.index("LIMITS"):].split()[0] == w.agent.limits.mode
    r = await manman(host, "server", "create", "lim", f"exec:{PYTHON}", "--worker", "cli-lim",
                     "--memory-mb", "256", "--cpus", "1.5", "--pids", "100")
    assert r.returncode == 0, r.stderr
    s = await host.api.get("/server/lim")
    assert s["limits"] == {"memory_mb": 256, "cpus": 1.5, "pids": 100, "disk_mb": None}
    r = await manman(host, "server", "show", "lim")
    assert "limits:               memory 256 MiB, cpus 1.5, pids 100" in out(r), out(r)
    # an update changes the one given and keeps the others; none removes one
    r = await manman(host, "server", "update", "lim", "--cpus", "none", "--pids", "50")
    assert r.returncode == 0, r.stderr
    s = await host.api.get("/server/lim")
    assert s["limits"] == {"memory_mb": 256, "cpus": None, "pids": 50, "disk_mb": None}
    r = await manman(host, "server", "update", "lim", "--pids", "many")
    assert r.returncode == 2 and "invalid int value" in r.stderr.decode()


# -- the web console -------------------------------------------------------------------------------


def web_new_server_with_limits(page: Any, out: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    from tests.test_preset_api import SECRET
    from tests.test_web_console import sign_in

    sign_in(page)
    page.click("#new-server-button")
    expect(page.locator("#new-preset option[value='fakegame']")).to_have_count(1)
    page.select_option("#new-preset", "fakegame")
    page.fill("#new-name", "weblim")
    page.fill("#port-game", str(out["port"]))
    page.fill("#var-password", SECRET)
    page.fill("#new-memory-mb", "256")
    page.fill("#new-pids", "64")
    page.click("#new-submit")
    expect(page.locator("#server-name")).to_have_text("weblim")
    expect(page.locator("#detail-limits-row")).to_be_visible()
    out["limits"] = page.locator("#detail-limits").text_content()


async def test_web_new_server_with_limits_and_its_page(tmp_path: Path, database_url: str,
                                                       bg: trio.Nursery) -> None:
    from tests.test_preset_api import free_port, host_with_presets
    from tests.test_web_console import CHROMIUM, in_browser

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no browser at {CHROMIUM}")
    async with host_with_presets(tmp_path, database_url, bg) as (host, _):
        out: dict[str, Any] = {"port": free_port()}
        await trio.to_thread.run_sync(in_browser, host.url, out, web_new_server_with_limits)
        s = await host.api.get("/server/weblim")
        assert s["limits"] == {"memory_mb": 256, "cpus": None, "pids": 64, "disk_mb": None}
        assert out["limits"] == "memory 256 MiB, pids 64"
        assert not out["problems"], out["problems"]


async def test_monitor_mode_with_cgroups_accounts_but_does_not_limit(
        limits_worker: Any) -> None:
    needs_cgroup()
    w = await limits_worker(limits="monitor")
    api = w.api
    s = await api.post("/server", py_spec("mong", HOG, "40", limits={"memory_mb": 8},
                                          desired_state="running"), expect=201)
    await api.wait_line("mong", "limits memory_mb 8 not enforced (worker.limits = monitor); "
                        "use over them is warned of")
    await api.wait_line("mong", "got it all")  # 40 MiB with a limit of 8: not killed
    group = group_of(w, s["id"])
    assert (await api.get("/server/mong"))["pid"] in group.pids()  # in its cgroup: measured
    mem = Path(group.dirs["" if group.v2 else "memory"],
               "memory.max" if group.v2 else "memory.limit_in_bytes").read_text().strip()
    assert mem == "max" or int(mem) > 1 << 40  # unlimited
    with trio.fail_after(10):
        while True:
            page = await api.get("/server/mong/log?since=0&limit=1000")
            if any(ln["text"].startswith("warning: memory ") for ln in page["lines"]):
                break
            await trio.sleep(0.1)
    assert (await api.get("/server/mong"))["state"] == "running"
