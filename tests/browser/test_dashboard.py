"""The dashboard in a real headless Chromium against a live broker with traffic: each page,
and each button an operator would press. Waits are Playwright's (expect, wait_for), bounded
by the page's default timeout; nothing sleeps.

`SLUICE_SCREENSHOTS=DIR` makes `test_screenshots_of_each_page` write its PNGs to DIR
(scripts/screenshots writes docs/screenshots/); otherwise they go to a temp dir.
"""

from __future__ import annotations

import os
import re
import time

from playwright.sync_api import Page, expect

from conftest import PAGE_TIMEOUT_MS, Broker


def wait_for_chart_points(page: Page, chart: str, at_least: int, timeout_ms: int = 30_000) -> None:
    page.wait_for_function(
        f"document.querySelector('{chart}') && Number(document.querySelector('{chart}').dataset.points) >= {at_least}",
        timeout=timeout_ms,
    )


def test_a_wrong_password_is_refused_with_a_message_and_the_right_one_signs_in(page: Page):
    page.goto("/")
    expect(page.locator("#login-form")).to_be_visible()
    page.fill("#login-user", "guest")
    page.fill("#login-password", "not-the-password")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_have_text("Wrong user name or password.")
    # No native basic-auth dialog: the refusal was answered in the page.
    expect(page.locator("#login-form")).to_be_visible()

    page.fill("#login-password", "guest")
    page.click("#login-submit")
    expect(page).to_have_url(re.compile("#/overview$"))
    expect(page.locator("#who")).to_have_text("guest")


def test_refused_credentials_return_to_the_login_with_a_message(page: Page):
    page.goto("/")
    page.evaluate("sessionStorage.setItem('sluice.credentials', JSON.stringify({user: 'guest', password: 'stale'}))")
    page.goto("/#/queues")
    expect(page.locator("#login-error")).to_contain_text("refused your credentials")


def test_the_overview_charts_the_traffic_and_shows_the_totals(signed_in: Page, broker: Broker):
    page = signed_in
    expect(page.locator("#tile-queues .value")).to_have_text(str(len(broker.api("GET", "/api/queues"))))
    expect(page.locator("#tile-connections .value")).not_to_have_text("0")
    expect(page.locator("#tile-consumers .value")).to_have_text("2")
    expect(page.locator("#tile-disk .value")).to_contain_text("B")
    # Two samples make a line: the sampler takes one at start and one every 5 s.
    wait_for_chart_points(page, "#rates-chart", 2)
    wait_for_chart_points(page, "#depth-chart", 2)
    expect(page.locator("#rates-chart polyline")).to_have_count(3)
    expect(page.locator("#depth-chart polyline")).to_have_count(2)
    expect(page.locator("#rates-legend")).to_contain_text("Publish")
    expect(page.locator("#ov-top")).to_contain_text("invoices")
    expect(page.locator("#blocked-banner")).to_have_count(0)


def test_the_queue_list_sorts_by_a_column_and_filters_by_name(signed_in: Page):
    page = signed_in
    page.click('nav a[data-nav="queues"]')
    expect(page.locator("#queues tbody tr")).to_have_count(7)
    names = page.locator("#queues tbody td.name-cell a")
    expect(names.first).to_have_text("emails")
    # Deliveries per second come from the broker's latest sample of each queue.
    orders_deliver = page.locator("#queues tbody tr", has_text="orders").locator("td:nth-child(6)")
    expect(orders_deliver).to_have_text(re.compile(r"^[0-9.k]+/s$"), timeout=20_000)

    page.click('#queues th[data-sort="name"]')
    expect(names.first).to_have_text("receipts")
    # Numbers sort largest first on the first click.
    page.click('#queues th[data-sort="ready"]')
    expect(page.locator('#queues th[data-sort="ready"]')).to_have_attribute("aria-sort", "descending")
    ready = [int(t.replace(",", "")) for t in page.locator("#queues tbody td:nth-child(2)").all_inner_texts()]
    assert ready == sorted(ready, reverse=True) and len(ready) == 7

    page.fill("#queue-filter", "pay")
    expect(page.locator("#queues tbody tr")).to_have_count(3)
    expect(page.locator("#queue-count")).to_have_text("3 of 7 queues")
    page.fill("#queue-filter", "no-such-queue")
    expect(page.locator("#queues tbody tr")).to_have_count(0)
    expect(page.locator("#queue-table .empty")).to_have_text("No queue matches the filter.")


def test_screenshots_of_each_page(signed_in: Page, broker: Broker, tmp_path):
    out = os.environ.get("SLUICE_SCREENSHOTS") or str(tmp_path)
    os.makedirs(out, exist_ok=True)
    page = signed_in
    # A screenshot run lets the charts fill for a while; the test only needs a line.
    points = int(os.environ.get("SLUICE_SCREENSHOT_SAMPLES", "2"))
    wait_for_chart_points(page, "#rates-chart", points, timeout_ms=max(30_000, points * 7_000))
    page.mouse.move(0, 0)
    page.screenshot(path=f"{out}/overview.png")

    page.click('nav a[data-nav="queues"]')
    expect(page.locator("#queues tbody tr").first).to_be_visible()
    page.screenshot(path=f"{out}/queues.png")

    page.goto("/#/queues/invoices")
    wait_for_chart_points(page, "#rates-chart", 2)
    expect(page.locator("#q-totals .stat").first).to_be_visible()
    page.screenshot(path=f"{out}/queue.png")

    page.goto("/#/queues/payments.dlq")
    page.click('[data-action="browse"]')
    expect(page.locator("#browse-reasons")).to_be_visible()
    page.locator("#browse").scroll_into_view_if_needed()
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.screenshot(path=f"{out}/queue-messages.png")

    page.click('nav a[data-nav="connections"]')
    expect(page.locator("#connections tbody tr").first).to_be_visible()
    page.screenshot(path=f"{out}/connections.png")
    for name in ("overview", "queues", "queue", "queue-messages", "connections"):
        assert os.path.getsize(f"{out}/{name}.png") > 10_000


def test_the_queue_page_browses_a_published_message_and_purges(signed_in: Page, broker: Broker):
    page = signed_in
    broker.cli("publish", "", "receipts", "receipt #4711 for ACME", "--header", "source=browser-test")
    page.goto("/#/queues/receipts")
    expect(page.locator("#queue-name")).to_have_text("receipts")
    expect(page.locator("#q-ready .value")).to_have_text("1")
    expect(page.locator("#q-arguments")).to_contain_text("Max length")

    page.click('[data-action="browse"]')
    row = page.locator("#browse-table tbody tr", has_text="receipt #4711 for ACME")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("source")
    expect(row).to_contain_text("browser-test")

    page.click('[data-action="purge"]')
    expect(page.locator(".modal")).to_contain_text("cannot be undone")
    page.click('.modal [data-role="confirm"]')
    expect(page.locator(".toast.ok")).to_contain_text("Purged 1 messages from receipts.")
    expect(page.locator(".modal")).to_have_count(0)
    expect(page.locator("#q-ready .value")).to_have_text("0")


def test_the_queue_page_shows_scheduled_messages_duplicates_and_the_new_arguments(
    signed_in: Page, broker: Broker
):
    page = signed_in
    broker.api("PUT", "/api/queues/reminders", {
        "durable": True,
        "arguments": {
            "max_priority": 5,
            "retry_backoff": {"initial_ms": 1000, "multiplier_percent": 200, "max_ms": 60000},
            "dedup_window_count": 100,
        },
    })
    for _ in range(2):  # the second is a duplicate of the first
        broker.cli("publish", "", "reminders", "call back", "--delay", "1h", "--message-id", "r-1")
    page.goto("/#/queues/reminders")
    expect(page.locator("#queue-name")).to_have_text("reminders")
    expect(page.locator("#q-ready .value")).to_have_text("0")
    expect(page.locator("#q-ready .note")).to_have_text("1 scheduled")
    arguments = page.locator("#q-arguments")
    expect(arguments).to_contain_text("Max priority")
    expect(arguments).to_contain_text("Retry backoff")
    expect(arguments).to_contain_text("Dedup window (ids)")
    expect(page.locator('#q-totals [data-stat="duplicates_dropped"] .value')).to_have_text("1")


def test_a_dead_letter_queue_shows_its_reasons_and_moves_to_another_queue(signed_in: Page, broker: Broker):
    page = signed_in
    page.goto("/#/queues/payments.dlq")
    page.click('[data-action="browse"]')
    expect(page.locator("#browse-table tbody tr")).to_have_count(3)
    expect(page.locator("#browse-reasons")).to_contain_text("maxlen · 3")
    expect(page.locator("#browse-table .chip-danger").first).to_contain_text("maxlen")

    page.goto("/#/queues/payments")
    expect(page.locator('#q-dead [data-reason="maxlen"] .n')).to_have_text("3")
    expect(page.locator('#q-dead [data-reason="expired"] .n')).to_have_text("0")

    page.goto("/#/queues/payments.dlq")
    page.click('[data-action="move"]')
    page.select_option("#move-destination", "payments.retry")
    page.click('.modal [data-role="confirm"]')
    expect(page.locator("#move-done")).to_have_text("Done: moved 3 messages to payments.retry.")
    page.click('.modal [data-role="cancel"]')
    page.goto("/#/queues/payments.retry")
    expect(page.locator("#q-ready .value")).to_have_text("3")


def test_closing_a_connection_disconnects_that_client(signed_in: Page, broker: Broker):
    page = signed_in
    page.click('nav a[data-nav="connections"]')
    row = page.locator("#connections tbody tr", has_text="orders-worker")
    expect(row).to_have_count(1)
    row.locator('[data-action="close-connection"]').click()
    page.fill("#close-reason", "maintenance window")
    page.click('.modal [data-role="confirm"]')
    expect(page.locator(".toast.ok")).to_contain_text("closed")
    expect(row).to_have_count(0)
    worker = next(c for c in broker.children if "orders" in c.args)
    assert worker.wait(timeout=20) != 0


def test_cancelling_a_consumer_removes_it_from_the_list(signed_in: Page, broker: Broker):
    page = signed_in
    page.click('nav a[data-nav="consumers"]')
    row = page.locator("#consumers tbody tr", has_text="emails")
    expect(row).to_have_count(1)
    row.locator('[data-action="cancel-consumer"]').click()
    page.click('.modal [data-role="confirm"]')
    expect(page.locator(".toast.ok")).to_contain_text("cancelled")
    expect(row).to_have_count(0)


def test_the_exchanges_page_shows_a_canary_split_and_a_slider_reweights_it_live(
    signed_in: Page, broker: Broker, tmp_path
):
    # Runs last: the queue list's counts above know nothing of these two queues.
    page = signed_in
    broker.api("PUT", "/api/exchanges/canary", {"kind": "weighted"})
    for queue, weight in (("work-v1", 95), ("work-v2", 5)):
        broker.api("PUT", f"/api/queues/{queue}", {})
        broker.api("POST", "/api/bindings", {"exchange": "canary", "queue": queue, "weight": weight})
    page.click('nav a[data-nav="exchanges"]')
    expect(page.locator("#exchanges tbody tr", has_text="canary")).to_contain_text("weighted")
    card = page.locator('.split[data-vhost="/"][data-exchange="canary"]')
    v1 = card.locator('.split-row[data-queue="work-v1"]')
    v2 = card.locator('.split-row[data-queue="work-v2"]')
    expect(v1.locator(".share")).to_have_text("95%")
    expect(v2.locator(".share")).to_have_text("5%")

    v2.locator("input.weight").fill("95")
    expect(page.locator(".toast.ok")).to_contain_text("work-v2 now has weight 95 on canary.")
    expect(v2.locator(".share")).to_have_text("50%")
    bindings = broker.api("GET", "/api/bindings")
    weights = {b["queue"]: b["arguments"] for b in bindings if b["exchange"] == "canary"}
    assert weights == {"work-v1": {"x-weight": 95}, "work-v2": {"x-weight": 95}}

    # The routing follows at once: the next messages split evenly.
    for i in range(20):
        broker.cli("publish", "canary", "", f"m{i}")
    # Queue counters are refreshed a few times a second: read until all 20 are counted.
    deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
    while True:
        ready = {q: broker.api("GET", f"/api/queues/{q}")["ready"] for q in ("work-v1", "work-v2")}
        if sum(ready.values()) == 20 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert ready == {"work-v1": 10, "work-v2": 10}

    out = os.environ.get("SLUICE_SCREENSHOTS") or str(tmp_path)
    page.screenshot(path=f"{out}/exchanges.png")
    assert os.path.getsize(f"{out}/exchanges.png") > 10_000


def test_the_trace_page_shows_why_a_message_left_and_where_it_is_now(
    signed_in: Page, broker: Broker, tmp_path
):
    # Runs after the canary test: it adds messages to payments, whose counts nothing after
    # it checks. payments keeps 2 messages: the first of three goes to payments.dlq (maxlen).
    page = signed_in
    for i in (1, 2, 3):
        broker.cli("publish", "", "payments", f"pay {i}", "--message-id", f"pay-trace-{i}")
    page.click('nav a[data-nav="trace"]')
    page.fill("#trace-id", "pay-trace-1")
    page.click('#trace-form button[type="submit"]')
    source = page.locator('.trace-card[data-queue="payments"]')
    copy = page.locator('.trace-card[data-queue="payments.dlq"]')
    expect(source.locator("[data-state]")).to_have_text("gone")
    expect(source.locator("tbody")).to_contain_text("dead-lettered")
    expect(source.locator("tbody")).to_contain_text("maxlen; to exchange (default)")
    expect(copy.locator("[data-state]")).to_have_text("ready")
    expect(copy.locator("tbody")).to_contain_text("stored")

    page.fill("#trace-id", "no-such-message")
    page.click('#trace-form button[type="submit"]')
    expect(page.locator("#trace-results .banner")).to_contain_text("No queue remembers")

    page.fill("#trace-id", "pay-trace-1")
    page.click('#trace-form button[type="submit"]')
    expect(source.locator("tbody")).to_contain_text("dead-lettered")
    out = os.environ.get("SLUICE_SCREENSHOTS") or str(tmp_path)
    page.screenshot(path=f"{out}/trace.png", full_page=True)
    assert os.path.getsize(f"{out}/trace.png") > 10_000


def test_a_consumer_whose_circuit_opened_shows_a_red_badge(signed_in: Page, broker: Broker):
    import subprocess

    from conftest import SLUICE

    # A consumer that puts back everything it gets: one failure cuts it off for 10 minutes.
    env = dict(os.environ, SLUICE_URL=broker.url("flaky"))
    broker.api("PUT", "/api/queues/flaky-work", {})
    flaky = subprocess.Popen(
        [str(SLUICE), "consume", "flaky-work", "--prefetch", "1", "--requeue",
         "--circuit-breaker", "1,60s,10m,1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    broker.children.append(flaky)
    deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
    while not any(c["queue"] == "flaky-work" for c in broker.api("GET", "/api/consumers")):
        assert time.monotonic() < deadline, "the consumer did not start"
        time.sleep(0.05)
    broker.cli("publish", "", "flaky-work", "boom")
    page = signed_in
    page.click('nav a[data-nav="consumers"]')
    row = page.locator("#consumers tbody tr", has_text="flaky-work")
    badge = row.locator('.badge[data-circuit="open"]')
    expect(badge).to_have_count(1)  # the page refreshes every 5 s until it shows
    expect(badge).to_have_class(re.compile("badge-danger"))
    expect(row).to_contain_text("until")
    # Consumers without circuit breaking show none.
    expect(page.locator("#consumers [data-circuit]")).to_have_count(1)
    flaky.terminate()
    flaky.wait(timeout=20)


def test_chaos_is_set_from_the_queue_page_marked_in_the_lists_and_cleared(signed_in: Page, broker: Broker):
    page = signed_in
    page.goto("/#/queues/receipts")
    expect(page.locator("#q-chaos-state")).to_contain_text("No injection runs")
    page.click('[data-action="chaos-set"]')
    page.fill("#chaos-duration", "5")
    page.fill("#chaos-delay", "fixed:50")
    page.fill("#chaos-duplicate", "10")
    page.click('.modal [data-role="confirm"]')
    expect(page.locator(".toast.ok")).to_contain_text("Chaos on receipts until")
    expect(page.locator("#queue-badges .badge-chaos")).to_contain_text("CHAOS")
    expect(page.locator("#q-chaos-state")).to_contain_text("duplicate 10%")
    state = broker.api("GET", "/api/queues/receipts")["chaos"]
    assert state["active"] and state["duplicate"]["percent"] == 10
    assert state["delay"]["distribution"] == "fixed:50"

    page.click('nav a[data-nav="queues"]')
    row = page.locator("#queues tbody tr", has_text="receipts")
    expect(row.locator(".badge-chaos")).to_contain_text("until")
    expect(page.locator("#queues .badge-chaos")).to_have_count(1)

    page.goto("/#/queues/receipts")
    page.click('[data-action="chaos-clear"]')
    expect(page.locator(".toast.ok", has_text="cleared")).to_have_count(1)
    expect(page.locator("#q-chaos-state")).to_contain_text("No injection runs")
    expect(page.locator("#queue-badges .badge-chaos")).to_have_count(0)
    assert not broker.api("GET", "/api/queues/receipts")["chaos"]["active"]
