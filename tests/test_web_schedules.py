"""The web console's Schedules panel in a real headless Chromium: add (a refusal shown in the
form first), disable and enable, run now with each task's result, delete."""

from __future__ import annotations

from typing import Any

import trio

from tests.conftest import fake_spec
from tests.test_web_console import ARTIFACTS, console_line, in_browser, open_server, sign_in


def schedules(page: Any, out: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    sign_in(page)
    open_server(page, "websched")
    page.click("#schedules-panel summary")
    expect(page.locator("#schedules-empty")).to_be_visible()

    # a cron of four fields: the API's reason is shown in the form
    page.fill("#schedule-cron", "0 5 * *")
    page.fill("#schedule-tz", "Europe/Berlin")
    first = page.locator("#schedule-tasks tbody tr").nth(0)
    first.locator(".action").select_option("command")
    first.locator(".payload").fill("say from a schedule")
    page.click("#schedule-add-task")
    second = page.locator("#schedule-tasks tbody tr").nth(1)
    second.locator(".action").select_option("notify")
    second.locator(".payload").fill("a scheduled note")
    second.locator(".delay").fill("0.2")
    page.click("#schedule-submit")
    message = page.locator("#schedule-form-message")
    expect(message).to_contain_text("five fields")
    expect(message).to_have_class("message error")

    page.fill("#schedule-cron", "0 5 * * *")
    page.click("#schedule-submit")
    row = page.locator("#schedules tr[data-schedule-id='s1']")
    expect(row.locator(".cron")).to_have_text("0 5 * * *")
    expect(row.locator(".enabled")).to_have_text("yes")
    expect(row.locator(".next")).to_contain_text("(04:00 UTC)")   # 05:00 in Berlin, winter
    expect(row.locator(".tasks")).to_contain_text("command say from a schedule")
    expect(message).to_be_hidden()
    out["next_title"] = row.locator(".next").get_attribute("title")
    out["form_rows_after"] = page.locator("#schedule-tasks tbody tr").count()

    row.locator("button[data-role='toggle']").click()
    expect(row.locator(".enabled")).to_have_text("no")
    expect(row.locator(".next")).to_have_text("—")
    row.locator("button[data-role='toggle']").click()
    expect(row.locator(".enabled")).to_have_text("yes")

    # run now: the run and each task's result, and what it did on the console
    row.locator("button[data-role='run']").click()
    run = page.locator("#runs tr[data-run-id='1']")
    expect(run).to_have_attribute("data-status", "ok")
    expect(run.locator(".task.ok")).to_have_count(2)
    expect(run).to_contain_text("manual")
    expect(console_line(page, "said: from a schedule")).to_have_count(1)

    ARTIFACTS.mkdir(exist_ok=True)
    page.mouse.move(640, 790)
    page.locator("#schedules-panel").screenshot(path=str(ARTIFACTS / "web-schedules.png"))

    # delete asks twice
    delete = row.locator("button[data-role='delete']")
    delete.click()
    expect(delete).to_have_text("Delete s1?")
    delete.click()
    expect(page.locator("#schedules-empty")).to_be_visible()
    expect(page.locator("#schedule-runs")).to_be_hidden()


async def test_schedules_panel_in_a_browser(host: Any, hosted: Any) -> None:
    w = await hosted("browser-worker")
    spec = fake_spec("websched", worker_id=w.handle.link.worker_id, desired_state="running")
    await host.api.post("/server", spec, expect=201)
    await host.api.wait_for("websched", state="running")

    out: dict[str, Any] = {}
    await trio.to_thread.run_sync(in_browser, host.url, out, schedules)

    assert not out["problems"], out["problems"]
    assert out["next_title"].endswith("T04:00:00Z"), out["next_title"]
    assert out["form_rows_after"] == 1   # the form was reset after the add
    assert (await host.api.get("/server/websched/schedule")) == {"schedules": []}
