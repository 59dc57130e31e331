"""The web console's host views in a real headless Chromium: Webhooks (a refused URL shown
in the form, a hook added, tested against a real receiver, its deliveries, disabled, deleted)
and the Audit trail (filters, paging); a token the host refuses there is said, not a broken
view."""

from __future__ import annotations

from typing import Any

import trio

from manman.events import EVENTS
from tests.conftest import JOIN, fake_spec
from tests.receiver import Receiver
from tests.test_web_console import ARTIFACTS, in_browser, sign_in

REFUSED = 60   # refused creations made through the API: more than one page of the audit


def admin_views(page: Any, out: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    sign_in(page)
    page.click("#nav-webhooks")
    expect(page.locator("#webhooks-view")).to_be_visible()
    expect(page.locator("#webhooks-empty")).to_be_visible()
    out["event_boxes"] = page.locator("#webhook-events input").evaluate_all(
        "els => els.map(e => e.value)")

    # a link-local URL: the API's reason next to the form, nothing made
    page.fill("#webhook-url", "http://169.254.169.254/latest/meta-data")
    page.check("#webhook-events input[value='server.ready']")
    page.click("#webhook-submit")
    message = page.locator("#webhook-form-message")
    expect(message).to_contain_text("link-local")
    expect(message).to_have_class("message error")
    expect(page.locator("#webhooks-empty")).to_be_visible()

    # a hook on the receiver, for one server's events; a secret is not offered for discord
    page.select_option("#webhook-kind", "discord")
    expect(page.locator("#webhook-secret")).to_be_disabled()
    page.select_option("#webhook-kind", "generic")
    page.fill("#webhook-url", out["rx_url"])
    page.fill("#webhook-secret", "s3cret")
    expect(page.locator("#webhook-server option", has_text="webhk")).to_have_count(1)
    page.select_option("#webhook-server", label="webhk")
    page.check("#webhook-events input[value='server.stopped']")
    page.click("#webhook-submit")
    row = page.locator("#webhooks tbody tr").first
    expect(row.locator(".url")).to_have_text(out["rx_url"])
    expect(row.locator(".events")).to_have_text("server.ready, server.stopped")
    expect(row.locator(".server")).to_have_text("webhk")
    expect(row.locator(".enabled")).to_have_text("yes")
    expect(row.locator(".secret")).to_have_text("yes")
    expect(message).to_be_hidden()
    expect(page.locator("#webhook-secret")).to_have_value("")
    out["hook_id"] = row.get_attribute("data-hook-id")

    # a test from the page: its outcome, and the delivery in the hook's list
    row.locator("button[data-role='test']").click()
    expect(page.locator("#webhooks-message")).to_contain_text("test delivered: 200")
    delivery = page.locator("#deliveries tbody tr").first
    expect(delivery.locator(".event")).to_have_text("webhook.test")
    expect(delivery.locator(".status")).to_have_text("ok 200")
    expect(delivery).to_have_attribute("data-ok", "1")
    expect(page.locator("#hook-deliveries-title")).to_contain_text(out["rx_url"])

    # disabled: the server's start is no event for it (the test makes one happen)
    row.locator("button[data-role='toggle']").click()
    expect(row.locator(".enabled")).to_have_text("no")
    out["disabled"] = True
    for _ in range(600):
        if out.get("started"):
            break
        page.wait_for_timeout(50)
    page.click("#webhooks-refresh")
    row.locator("button[data-role='deliveries']").click()
    expect(page.locator("#deliveries tbody tr")).to_have_count(1)   # the test only
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#webhooks-view").screenshot(path=str(ARTIFACTS / "web-webhooks.png"))

    # delete asks twice
    delete = row.locator("button[data-role='delete']")
    delete.click()
    expect(delete).to_have_text("Delete this hook?")
    delete.click()
    expect(page.locator(f"#webhooks tr[data-hook-id='{out['hook_id']}']")).to_have_count(0)
    expect(page.locator("#hook-deliveries")).to_be_hidden()

    # the audit trail: newest first, the hook's creation among the refused ones
    page.click("#nav-audit")
    expect(page.locator("#audit-view")).to_be_visible()
    expect(page.locator("#webhooks-view")).to_be_hidden()
    rows = page.locator("#audit tbody tr")
    expect(rows.first).to_have_attribute("data-action", "webhook.delete")
    page.fill("#audit-action", "webhook.create")
    page.press("#audit-action", "Enter")
    expect(rows).to_have_count(50)   # one page
    made = rows.filter(has=page.locator("td.status", has_text="201"))
    expect(made).to_have_count(2)   # the page's hook, and the test's own (after it)
    expect(made.locator(".actor")).to_have_text(["admin", "admin"])
    expect(made.locator(".target")).to_have_text(["/webhook", "/webhook"])
    page.click("#audit-more")
    expect(rows).to_have_count(REFUSED + 3)
    expect(page.locator("#audit-more")).to_be_hidden()
    link_local = rows.filter(has=page.locator("td.result", has_text="link-local"))
    expect(link_local).to_have_count(1)
    expect(link_local.locator(".status")).to_have_text("422")
    out["actions"] = sorted(set(rows.evaluate_all("els => els.map(e => e.dataset.action)")))
    # one server's rows
    page.fill("#audit-action", "")
    page.select_option("#audit-server", label="webhk")
    expect(rows.first).to_have_attribute("data-action", "server.update")
    out["server_actions"] = sorted(set(rows.evaluate_all(
        "els => els.map(e => e.dataset.action)")))
    page.select_option("#audit-since", "900")
    expect(rows.first).to_have_attribute("data-action", "server.update")
    page.locator("#audit-view").screenshot(path=str(ARTIFACTS / "web-audit.png"))

    # a token these routes refuse (403): said in place of the views
    page.evaluate("t => sessionStorage.setItem('manman.admin_token', t)", JOIN)
    page.reload(wait_until="load")
    expect(page.locator("#audit-denied")).to_contain_text("only for the host's admin token")
    expect(page.locator("#audit-body")).to_be_hidden()
    page.click("#nav-webhooks")
    expect(page.locator("#webhooks-denied")).to_contain_text("only for the host's admin token")
    expect(page.locator("#webhooks-body")).to_be_hidden()
    expect(page.locator("#webhooks-empty")).to_be_hidden()


async def test_webhooks_and_audit_in_a_browser(host: Any, hosted: Any, bg: trio.Nursery
                                               ) -> None:
    rx: Receiver = await bg.start(Receiver().serve)
    w = await hosted("admin-worker")
    spec = fake_spec("webhk", worker_id=w.handle.link.worker_id, desired_state="stopped")
    await host.api.post("/server", spec, expect=201)
    for _ in range(REFUSED):
        await host.api.post("/webhook", {"url": rx.url("/x"), "events": ["no.such"]},
                            expect=422)

    out: dict[str, Any] = {"rx_url": rx.url("/ok")}
    async with trio.open_nursery() as n:
        n.start_soon(trio.to_thread.run_sync, in_browser, host.url, out, admin_views)
        with trio.fail_after(60):
            while not out.get("disabled") and not out.get("problems"):
                await trio.sleep(0.05)
        # a hook that wants the same event: once it has it, the disabled one had its chance
        await host.api.post("/webhook", {"url": rx.url("/ctl"), "events": ["server.ready"]},
                            expect=201)
        await host.api.request("PUT", "/server/webhk", json={"desired_state": "running"},
                               expect=200)
        with trio.fail_after(20):
            while not rx.on("/ctl"):
                await trio.sleep(0.05)
        await trio.sleep(0.5)
        out["started"] = True

    assert not out["problems"], out["problems"]
    assert sorted(out["event_boxes"]) == sorted(EVENTS)   # the page's list mirrors the spec's
    assert [r.headers["x-manman-event"] for r in rx.on("/ok")] == ["webhook.test"]
    assert rx.on("/ok")[0].headers["x-manman-signature"].startswith("sha256=")
    assert rx.on("/ctl")[0].headers["x-manman-event"] == "server.ready"
    # the refused URL made nothing, the deleted one is gone: only the API's own hook is left
    left = (await host.api.get("/webhook"))["webhooks"]
    assert [h["url"] for h in left] == [rx.url("/ctl")]
    assert out["actions"] == ["webhook.create"]
    assert out["server_actions"] == ["server.create", "server.update"]
