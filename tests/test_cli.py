"""The `manman` client verbs, run as the real executable against a real host and worker."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import trio

from tests.conftest import (
    ADMIN,
    FAKEGAME,
    PYTHON,
    RunningHost,
    fake_spec,
    on_a_terminal,
    steamcmd_emulator,
    write_config,
)


async def manman(host: RunningHost | str, *args: str, stdin: bytes = b"", timeout: float = 30,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    url = host if isinstance(host, str) else host.url
    flags = ["--host-url", url, "--token", ADMIN] if url else []
    argv = [PYTHON, "-m", "manman", *args[:1], *flags, *args[1:]]
    if args and args[0] == "server":
        argv = [PYTHON, "-m", "manman", "server", args[1], *flags, *args[2:]]
    with trio.fail_after(timeout):
        return await trio.run_process(argv, stdin=stdin, capture_stdout=True,
                                      capture_stderr=True, check=False,
                                      env={**os.environ, **(env or {})})


def out(r: subprocess.CompletedProcess[bytes]) -> str:
    return r.stdout.decode()


async def test_verbs_tables_json_and_errors(host: RunningHost, hosted: Any) -> None:
    w = await hosted("cli-w")
    r = await manman(host, "workers")
    assert r.returncode == 0, r.stderr
    lines = out(r).splitlines()
    assert lines[0].split() == ["NAME", "ID", "STATUS", "SERVERS", "HEARTBEAT", "LIMITS", "API"]
    assert lines[1].split()[:3] == ["cli-w", w.handle.link.worker_id, "alive"]
    assert lines[1].split()[5] == w.agent.limits.mode  # cgroup2, cgroup1 or none
    r = await manman(host, "server", "create", "alpha", f"exec:{PYTHON}", "--worker", "cli-w",
                     "--arg=-u", f"--arg={FAKEGAME}", "--stop-command", "quit",
                     "--ready-pattern", "^Server ready$", "--start")
    assert r.returncode == 0, r.stderr
    assert out(r).strip() in ("alpha created: starting", "alpha created: running",
                              "alpha created: stopped")
    await host.api.wait_for("alpha", state="running")
    r = await manman(host, "servers")
    header, row = out(r).splitlines()
    assert header.split() == ["NAME", "WORKER", "GAME", "STATE", "PLAYERS", "UPTIME",
                              "RESTARTS"]
    assert row.split()[0:2] == ["alpha", "cli-w"] and row.split()[3:5] == ["running", "-"]
    # columns line up
    assert header.index("STATE") == row.index("running")
    r = await manman(host, "servers", "--json")
    assert [s["name"] for s in json.loads(out(r))] == ["alpha"]
    r = await manman(host, "server", "show", "alpha")
    assert "state:                running" in out(r)
    r = await manman(host, "send", "alpha", "say via cli")
    assert r.returncode == 0 and out(r) == ""
    await host.api.wait_line("alpha", "said: via cli")
    r = await manman(host, "logs", "alpha", "--tail", "5")
    assert "said: via cli" in out(r).splitlines()
    r = await manman(host, "server", "update", "alpha", "--stop-timeout", "9")
    assert out(r).strip() == "alpha: generation 2"
    r = await manman(host, "server", "stop", "alpha")
    assert out(r).strip() == "alpha: stop delivered"
    await host.api.wait_for("alpha", state="stopped")
    r = await manman(host, "server", "delete", "alpha", "--purge")
    assert out(r).strip() == "alpha: deleted"
    # errors: one line on stderr, exit 1; usage: exit 2
    r = await manman(host, "server", "show", "alpha")
    assert r.returncode == 1 and r.stderr.decode().strip() == \
        "manman: server alpha not found (404 not_found)"
    r = await manman(host, "server", "create", "x", "nope:1")
    assert r.returncode == 1 and len(r.stderr.decode().strip().splitlines()) == 1
    r = await manman(host, "server", "frobnicate", "x")
    assert r.returncode == 2
    r = await manman("http://127.0.0.1:9", "servers")
    assert r.returncode == 1 and "cannot reach the host" in r.stderr.decode()
    r = await manman(host, "servers", "--token", "wrong")
    assert r.returncode == 1 and "401" in r.stderr.decode()


async def test_finds_the_host_and_token_from_config_and_data_dir(
        tmp_path: Path, host: RunningHost) -> None:
    data = tmp_path / "hostdata"
    data.mkdir()
    (data / "admin-token").write_text(ADMIN + "\n")
    cfg = write_config(tmp_path / "c.toml", f'[host]\nlisten = "{host.url[7:]}"\n'
                                            f'data_dir = "{data}"\n')
    r = await manman("", "workers", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert out(r).startswith("NAME")


async def test_console_sends_lines_and_shows_answers(host: RunningHost, hosted: Any) -> None:
    w = await hosted("cons")
    await host.api.post("/server", fake_spec("c1", worker_id=w.handle.link.worker_id,
                                             desired_state="running"), expect=201)
    await host.api.wait_for("c1", state="running")
    r = await manman(host, "console", "c1", stdin=b"say one\nsay two\n")
    text = out(r)
    assert r.returncode == 0, r.stderr
    assert "said: one" in text and "said: two" in text
    assert "--- state: running ---" in text


async def test_install_progress_then_the_outcome(host: RunningHost, hosted: Any,
                                                 tmp_path: Path, monkeypatch: Any) -> None:
    steamcmd = steamcmd_emulator(tmp_path, monkeypatch)
    w = await hosted("inst", steamcmd=str(steamcmd))
    r = await manman(host, "server", "create", "st", "steamcmd:1000", "--worker",
                     w.handle.link.worker_id, "--executable", "game/server.sh")
    assert r.returncode == 0, r.stderr
    assert out(r).strip() == "st created: stopped"  # no bar: stdout is not a terminal
    r = await manman(host, "server", "install", "st")
    assert out(r).strip() == "st installed: stopped"
    r = await manman(host, "server", "create", "bad", "steamcmd:380870", "--worker",
                     w.handle.link.worker_id)
    assert r.returncode == 1
    assert out(r).strip() == ("bad created: failed (ERROR! Failed to install app '380870' "
                              "(No subscription))")


class CuttableProxy:
    """A TCP relay between the CLI and the host whose connections the test can cut: a
    network blip under a running `manman logs -f`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.scopes: list[trio.CancelScope] = []
        self.port = 0

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self.scopes.append(scope)
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            async with trio.open_nursery() as n:
                n.start_soon(_pipe, client, upstream, n.cancel_scope)
                n.start_soon(_pipe, upstream, client, n.cancel_scope)
        await client.aclose()
        await upstream.aclose()

    def cut(self) -> None:
        for scope in self.scopes:
            scope.cancel()
        self.scopes.clear()


async def _pipe(a: trio.SocketStream, b: trio.SocketStream, scope: trio.CancelScope) -> None:
    """One direction; when either side ends, the whole connection ends."""
    try:
        while data := await a.receive_some(65536):
            await b.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()


async def test_logs_follow_resumes_after_cuts_without_loss_or_duplicates(
        host: RunningHost, hosted: Any, bg: trio.Nursery) -> None:
    w = await hosted("flw")
    await host.api.post("/server", fake_spec("fl", worker_id=w.handle.link.worker_id,
                                             desired_state="running"), expect=201)
    await host.api.wait_for("fl", state="running")
    proxy = CuttableProxy(int(host.url.rsplit(":", 1)[1]))
    port = await bg.start(proxy.serve)
    start = (await host.api.get("/server/fl/log?limit=1"))["next_seq"]
    argv = [PYTHON, "-m", "manman", "logs", "fl", "-f", "--json", "--since", str(start),
            "--host-url", f"http://127.0.0.1:{port}", "--token", ADMIN]
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE)
    seqs: list[int] = []
    texts: list[str] = []
    try:
        async def read() -> None:
            assert proc.stdout is not None
            buf = b""
            while data := await proc.stdout.receive_some(65536):
                buf += data
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    line = json.loads(raw)
                    seqs.append(line["seq"])
                    texts.append(line["text"])

        async with trio.open_nursery() as n:
            n.start_soon(read)
            with trio.fail_after(10):
                while not proxy.scopes:
                    await trio.sleep(0.02)
            await host.api.post("/server/fl/command", {"type": "command",
                                                       "data": "pace 60000 30000"},
                                expect=202)
            for _ in range(3):  # cut the connection three times while it floods
                await trio.sleep(0.4)
                proxy.cut()
            with trio.fail_after(30):
                while "paced 59999" not in texts[-5:]:
                    await trio.sleep(0.05)
            n.cancel_scope.cancel()
    finally:
        proc.kill()
        await proc.wait()
    assert proc.stderr is not None
    err = (await proc.stderr.receive_some(65536)).decode()
    assert err.count("reconnecting") >= 3, err
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # contiguous, none twice
    paced = [t for t in texts if t.startswith("paced ")]
    assert paced == [f"paced {i}" for i in range(60000)]


async def test_install_progress_bar_on_a_terminal(host: RunningHost, hosted: Any,
                                                  tmp_path: Path, monkeypatch: Any) -> None:
    steamcmd = steamcmd_emulator(tmp_path, monkeypatch)
    w = await hosted("tty", steamcmd=str(steamcmd))
    code, text = await on_a_terminal(  # stdout is a terminal: the bar is drawn
        [PYTHON, "-m", "manman", "server", "create", "--host-url", host.url, "--token",
         ADMIN, "slow", "steamcmd:1020", "--worker", w.handle.link.worker_id], columns=100)
    assert code == 0, text
    assert "installing slow" in text and "%" in text  # the bar, with its percentage
    assert "slow created: stopped" in text


async def test_logs_follow_ends_quietly_on_ctrl_c_and_a_closed_pipe(host: RunningHost,
                                                                   hosted: Any) -> None:
    import signal

    w = await hosted("quiet")
    await host.api.post("/server", fake_spec("q", worker_id=w.handle.link.worker_id,
                                             desired_state="running"), expect=201)
    await host.api.wait_for("q", state="running")
    argv = [PYTHON, "-m", "manman", "logs", "q", "-f", "--host-url", host.url, "--token", ADMIN]
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    with trio.fail_after(10):
        out = b""
        while b"Server ready" not in out:
            out += await proc.stdout.receive_some(4096)
        proc.send_signal(signal.SIGINT)
        assert await proc.wait() == 0
    err = await proc.stderr.receive_some(65536)
    assert err == b"", err
    # a reader that goes away (`manman logs -f | head -1`): like `tail -f`, it notices at its
    # next write, and then ends quietly
    pipeline = await trio.lowlevel.open_process(["sh", "-c", " ".join(argv) + " | head -1"],
                                                stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE)
    with trio.fail_after(20):
        while pipeline.poll() is None:
            await host.api.post("/server/q/command", {"type": "command", "data": "say more"},
                                expect=202)
            await trio.sleep(0.2)
    assert pipeline.returncode == 0 and pipeline.stderr is not None
    err = await pipeline.stderr.receive_some(65536)
    assert b"Traceback" not in err and b"Error" not in err, err


async def test_presets_and_a_server_made_from_one(host: RunningHost, hosted: Any,
                                                  tmp_path: Path, monkeypatch: Any) -> None:
    steamcmd = steamcmd_emulator(tmp_path, monkeypatch)
    monkeypatch.setenv("STEAMCMD_EMU_EXECUTABLES", '{"896660": "valheim_server.x86_64"}')
    await hosted("pre-w", steamcmd=str(steamcmd))
    r = await manman(host, "presets")
    assert r.returncode == 0, r.stderr
    header, *rows = out(r).splitlines()
    assert header.split() == ["NAME", "VERSION", "GAME", "TITLE", "VARIABLES"]
    valheim = next(row for row in rows if row.startswith("valheim "))
    assert "steamcmd:896660" in valheim and "password*" in valheim
    r = await manman(host, "preset", "show", "valheim")
    assert r.returncode == 0, r.stderr
    text = out(r)
    assert text.startswith("Valheim (valheim version 1, steamcmd:896660)")
    assert "stop: SIGINT" in text and "variables (--var NAME=VALUE; * required):" in text
    assert any(line.split()[:2] == ["password*", "secret"] for line in text.splitlines())
    secret = "cli-Secret-4711"
    r = await manman(host, "server", "create", "vh", "--preset", "valheim", "--worker",
                     "pre-w", "--var", "world=Midgard", "--var", f"password={secret}",
                     "--port", "game=auto", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(out(r))
    assert s["preset"] == "valheim" and s["state"] == "stopped"
    # the install waited for: the worker placed the auto port and reported its number
    assert s["ports"][0]["port"] == s["allocated_ports"]["game"] and "Midgard" in s["args"]
    assert secret not in out(r) and "********" in s["args"]
    r = await manman(host, "server", "show", "vh")
    assert "preset:               valheim" in out(r) and secret not in out(r)
    # errors: one line on stderr naming what is wrong, never the secret
    for argv, message in (
            (["--preset", "nope"], "manman: no preset named nope (404 not_found)"),
            (["--preset", "valheim"], "manman: vars.password: required by preset valheim "
                                      "(422 invalid)"),
            (["--preset", "valheim", "--var", f"password={secret} x"], "vars.password"),
            (["--preset", "valheim", "--var", f"password={secret}", "--port", "game=x"],
             "manman: --port game: a port number or auto"),
            (["--var", "a=b"], "manman: --var, --var-file and --port need --preset"),
            (["--preset", "valheim", "--var-file", "password=/nonexistent/pw"],
             "manman: --var-file password: cannot read /nonexistent/pw: No such file")):
        r = await manman(host, "server", "create", "vh2", *argv)
        lines = r.stderr.decode().strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and message in lines[0], lines
        assert secret not in lines[0]
    r = await manman(host, "preset", "show", "nope")
    assert r.returncode == 1 and r.stderr.decode().strip() == \
        "manman: no preset named nope (404 not_found)"
    # a password from a file and from stdin: never on the command line, final newline off
    (tmp_path / "pw").write_text("from-a-File-1\n")
    for name, source, stdin, want in (("vh-file", str(tmp_path / "pw"), b"", "from-a-File-1"),
                                      ("vh-stdin", "-", b"from-Stdin-2\n", "from-Stdin-2")):
        r = await manman(host, "server", "create", name, "--preset", "valheim", "--worker",
                         "pre-w", "--var-file", f"password={source}", "--port",
                         "game=auto", stdin=stdin)
        assert r.returncode == 0, r.stderr
        assert want not in out(r)
        rows = await host.control.store.fetch("SELECT spec FROM servers WHERE name = $1", name)
        spec = json.loads(rows[0]["spec"]) if isinstance(rows[0]["spec"], str) \
            else rows[0]["spec"]
        assert spec["secret_values"] == [want], spec["secret_values"]


async def test_schedule_verbs(host: RunningHost, hosted: Any) -> None:
    w = await hosted("cli-s")
    await host.api.post("/server", fake_spec("sch", worker_id=w.handle.link.worker_id,
                                             desired_state="running"), expect=201)
    await host.api.wait_for("sch", state="running")
    r = await manman(host, "schedule", "add", "sch", "--cron", "0 5 * * *",
                     "--tz", "Europe/Berlin", "--task", "command:say restart in 5 min",
                     "--task", "wait:300", "--task", "restart")
    assert r.returncode == 0, r.stderr
    assert out(r).startswith("schedule s1 added: next run 20")
    s = (await host.api.get("/server/sch/schedule/s1"))
    assert [t["action"] for t in s["tasks"]] == ["command", "wait", "restart"]
    assert s["tasks"][0]["payload"] == "say restart in 5 min" and s["timezone"] == "Europe/Berlin"
    r = await manman(host, "schedule", "ls", "sch")
    header, row = out(r).splitlines()
    assert header.split()[:4] == ["ID", "CRON", "TZ", "ENABLED"]
    assert row.split()[0] == "s1" and "restart" in row
    r = await manman(host, "schedule", "add", "sch", "--cron", "0 5 * *", "--task", "stop")
    assert r.returncode == 1 and b"five fields" in r.stderr
    r = await manman(host, "schedule", "add", "sch", "--cron", "0 5 * * *", "--task", "dance")
    assert r.returncode == 1 and b"the action is one of" in r.stderr
    await host.api.request("PUT", "/server/sch/schedule/s1", 200, json={
        "cron": "0 5 * * *", "tasks": [{"action": "command", "payload": "say cli"}]})
    r = await manman(host, "schedule", "run", "sch", "s1")
    assert r.returncode == 0 and out(r).strip() == "schedule s1: run 1 started", r.stderr
    await host.api.wait_line("sch", "said: cli")
    with trio.fail_after(10):
        while "ok" not in out(r := await manman(host, "schedule", "runs", "sch", "s1")):
            await trio.sleep(0.1)
    assert out(r).splitlines()[0].split()[2:4] == ["manual", "ok"]
    r = await manman(host, "schedule", "rm", "sch", "s1")
    assert r.returncode == 0 and out(r).strip() == "schedule s1 removed"
    assert (await host.api.get("/server/sch/schedule"))["schedules"] == []
