"""`manman audit` and `manman webhook ls|add|rm|test`, run as the real executable against a
real host, with a real HTTP receiver."""

from __future__ import annotations

import json
import time
from pathlib import Path

import trio

from manman.cli.automation import parse_since
from tests.conftest import RunningHost
from tests.receiver import Receiver
from tests.test_cli import manman, out


def test_since_takes_durations_and_unix_seconds() -> None:
    assert parse_since("90s", 1000.0) == 910.0
    assert parse_since("1h", 10000.0) == 6400.0
    assert parse_since("2d", 200000.0) == 27200.0
    assert parse_since("1700000000") == 1700000000.0


async def test_webhook_verbs_and_the_audit_of_them(host: RunningHost, bg: trio.Nursery
                                                   ) -> None:
    rx: Receiver = await bg.start(Receiver().serve)
    started = time.time()
    r = await manman(host, "webhook", "add", rx.url("/ok"), "--event", "server.crashed",
                     "--event", "worker.unknown", "--secret", "s3")
    assert r.returncode == 0, r.stderr
    hook_id = out(r).strip()
    r = await manman(host, "webhook", "ls")
    header, row = out(r).splitlines()
    assert header.split() == ["ID", "KIND", "ENABLED", "SERVER", "EVENTS", "URL"]
    assert row.split() == [hook_id, "generic", "yes", "*", "server.crashed,worker.unknown",
                           rx.url("/ok")]
    r = await manman(host, "webhook", "test", hook_id)
    assert r.returncode == 0 and out(r).startswith("ok: 200 in "), (r.stdout, r.stderr)
    assert json.loads(rx.on("/ok")[0].body)["event"] == "webhook.test"
    r = await manman(host, "webhook", "add", "http://169.254.169.254/", "--event",
                     "server.ready")
    assert r.returncode == 1 and b"link-local" in r.stderr and b"(422 invalid)" in r.stderr
    r = await manman(host, "webhook", "add", rx.url("/fail"), "--event", "server.ready",
                     "--json")
    failing = json.loads(out(r))["id"]
    r = await manman(host, "webhook", "test", failing)
    assert r.returncode == 1 and out(r).startswith("failed: 500 in ")
    r = await manman(host, "webhook", "rm", failing)
    assert r.returncode == 0 and out(r).strip() == f"webhook {failing} deleted"

    r = await manman(host, "audit", "--since", "1m")
    lines = out(r).splitlines()
    assert lines[0].split() == ["TIME", "ACTOR", "SOURCE", "ACTION", "TARGET", "STATUS",
                                "DETAIL"]
    actions = [ln.split()[4] for ln in lines[1:]]  # the time is two words
    assert actions == ["webhook.delete", "webhook.test", "webhook.create", "webhook.create",
                       "webhook.test", "webhook.create"]
    r = await manman(host, "audit", "--action", "webhook.test", "--json", "--limit", "1")
    entries = json.loads(out(r))
    assert len(entries) == 1 and entries[0]["target"] == f"/webhook/{failing}/test"
    assert entries[0]["at"] >= started and entries[0]["actor"] == "admin"
    r = await manman(host, "audit", "--since", "soon")
    assert r.returncode == 1 and b"--since soon" in r.stderr


async def test_webhook_enable_disable_deliveries_and_a_secret_from_a_file(
        host: RunningHost, bg: trio.Nursery, tmp_path: Path) -> None:
    import hashlib
    import hmac

    rx: Receiver = await bg.start(Receiver().serve)
    (tmp_path / "secret").write_text("from-a-file\n")
    r = await manman(host, "webhook", "add", rx.url("/ok"), "--event", "server.crashed",
                     "--secret-file", str(tmp_path / "secret"))
    assert r.returncode == 0, r.stderr
    hook_id = out(r).strip()
    r = await manman(host, "webhook", "test", hook_id)
    assert r.returncode == 0, r.stderr
    sent = rx.on("/ok")[0]
    assert sent.headers["x-manman-signature"] == "sha256=" + hmac.new(
        b"from-a-file", sent.body, hashlib.sha256).hexdigest()
    r = await manman(host, "webhook", "disable", hook_id)
    assert r.returncode == 0 and out(r).strip() == f"webhook {hook_id} disabled", r.stderr
    assert (await host.api.get(f"/webhook/{hook_id}"))["enabled"] is False
    host.handle.webhooks.dispatcher.emit("server.crashed", {"n": 1},
                                         server={"id": "s", "name": "x", "worker_id": "w"})
    await trio.sleep(0.5)
    assert len(rx.on("/ok")) == 1  # disabled: nothing more sent
    r = await manman(host, "webhook", "enable", hook_id)
    assert r.returncode == 0 and out(r).strip() == f"webhook {hook_id} enabled", r.stderr
    r = await manman(host, "webhook", "deliveries", hook_id)
    assert r.returncode == 0, r.stderr
    header, *rows = out(r).splitlines()
    assert header.split()[:4] == ["TIME", "EVENT", "ID", "TRY"]
    assert len(rows) == 1 and "webhook.test" in rows[0] and " ok " in rows[0]
    r = await manman(host, "webhook", "add", rx.url("/ok"), "--event", "server.crashed",
                     "--secret", "x", "--secret-file", "-")
    assert r.returncode == 1 and b"not both" in r.stderr
    r = await manman(host, "webhook", "disable", "nope")
    assert r.returncode == 1 and b"404" in r.stderr
