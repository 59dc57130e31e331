"""The web console's Backups panel in a real headless Chromium: a named, locked backup made,
downloaded, unlocked; Restore offered only once the server is stopped, then restored into
an emptied directory; delete asks twice."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import trio
import zstandard

from tests.conftest import fake_spec
from tests.test_web_console import ARTIFACTS, in_browser, open_server, sign_in


def backups(page: Any, out: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    sign_in(page)
    open_server(page, "webbak")
    page.click("#backups-panel summary")
    expect(page.locator("#backups-empty")).to_be_visible()

    page.fill("#backup-name", "before the update")
    page.check("#backup-lock")
    page.click("#backup-create")
    row = page.locator("#backups tbody tr").first
    expect(row.locator(".state")).to_have_text("ok")
    expect(row).to_contain_text("before the update")
    expect(row.locator(".locked")).to_have_text("yes")
    expect(row.locator("button[data-role='delete']")).to_have_count(0)  # locked: kept
    expect(row.locator("button[data-role='restore']")).to_have_count(0)  # running
    expect(page.locator("#backups-stopped-hint")).to_be_visible()
    out["id"] = row.get_attribute("data-backup-id")

    with page.expect_download() as dl:
        row.locator("button[data-role='download']").click()
    out["download"] = Path(dl.value.path()).read_bytes()
    out["download_name"] = dl.value.suggested_filename

    row.locator("button[data-role='lock']").click()
    expect(row.locator(".locked")).to_have_text("no")

    page.click(".actions button[data-action='stop']")
    expect(page.locator("#server-state")).to_have_attribute("data-state", "stopped")
    restore = row.locator("button[data-role='restore']")
    expect(restore).to_be_visible()
    out["ready_to_restore"] = True
    for _ in range(600):   # the test changes the files meanwhile
        if out.get("changed"):
            break
        page.wait_for_timeout(50)
    page.check("#backup-truncate")
    restore.click()
    expect(restore).to_have_text("Restore before the update?")
    restore.click()
    expect(page.locator("#backups-message")).to_have_text("before the update restored")

    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#backups-panel").screenshot(path=str(ARTIFACTS / "web-backups.png"))

    delete = row.locator("button[data-role='delete']")
    delete.click()
    expect(delete).to_have_text("Delete before the update?")
    delete.click()
    expect(page.locator("#backups-empty")).to_be_visible()


async def test_backups_panel_in_a_browser(tmp_path: Path, host: Any, hosted: Any) -> None:
    w = await hosted("bak-worker")
    spec = fake_spec("webbak", worker_id=w.handle.link.worker_id, desired_state="running")
    s = await host.api.post("/server", spec, expect=201)
    await host.api.wait_for("webbak", state="running")
    files = tmp_path / "bak-worker" / "servers" / s["id"] / "files"
    (files / "world").mkdir(parents=True)
    (files / "world" / "level.dat").write_bytes(b"the world\n")

    out: dict[str, Any] = {}
    async with trio.open_nursery() as n:
        n.start_soon(trio.to_thread.run_sync, in_browser, host.url, out, backups)
        with trio.fail_after(60):
            while not out.get("ready_to_restore") and not out.get("problems"):
                await trio.sleep(0.05)
        (files / "world" / "level.dat").write_bytes(b"griefed\n")
        (files / "stray.txt").write_text("made after the backup\n")
        out["changed"] = True

    assert not out["problems"], out["problems"]
    assert out["download_name"] == out["id"] + ".tar.zst"
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(out["download"])) as raw, \
            tarfile.open(fileobj=raw, mode="r|") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    assert members == {"world/level.dat": b"the world\n"}
    # restored, and the stray file gone (truncate)
    assert (files / "world" / "level.dat").read_bytes() == b"the world\n"
    assert not (files / "stray.txt").exists()
    assert (await host.api.get("/server/webbak/backup"))["backups"] == []
