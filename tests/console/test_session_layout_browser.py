"""The session page's layout in real Chromium (QA report 3): the queue and history fit their
card at 1280×800 and at a phone's width, the queue comes first and the history newest first,
on the first render and as requests change live."""

from __future__ import annotations

from datetime import timedelta

import pytest
from playwright.async_api import expect

from apps.sessions.models import LiveSession, ResponseRequest
from tests.console.conftest import SCREENSHOTS
from tests.console.test_console_browser import _sideways, _too_wide
from tests.support.realtime import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TERMINAL = {"completed", "cancelled", "incomplete", "failed"}
LONG = "Please explain the refund policy for damaged parcels, step by step, politely. " * 3
# A value at the limit without a space (a pasted token, say): a row shows one line of it.
LONG_VALUE = "z" * 512


async def _statuses(page) -> list[str]:
    return await page.locator("[data-requests] tr").evaluate_all("rows => rows.map((r) => r.dataset.status)")


async def _ids(page) -> list[str]:
    return await page.locator("[data-requests] tr").evaluate_all("rows => rows.map((r) => r.dataset.request)")


async def _chart_reads_cleanly(page) -> None:
    """No two labels of the latency chart overlap, every label is inside the chart, and the
    x axis's first and last numbers stand under their points."""
    chart = page.locator("[data-latency-chart]")
    texts = await chart.locator("text").evaluate_all(
        "(ts) => ts.map((t) => { const b = t.getBoundingClientRect(); return [t.textContent, b.left, b.top, b.right, b.bottom]; })"
    )
    box = await chart.bounding_box()
    for i, (name, left, top, right, bottom) in enumerate(texts):
        assert left >= box["x"] - 0.5 and right <= box["x"] + box["width"] + 0.5, f"{name!r} leaves the chart"
        for other, left2, top2, right2, bottom2 in texts[i + 1 :]:
            overlap = left < right2 and left2 < right and top < bottom2 and top2 < bottom
            assert not overlap, f"{name!r} overlaps {other!r}"
    assert "50000" in [t[0] for t in texts]
    centres = await chart.locator("circle").evaluate_all(
        "(cs) => cs.map((c) => { const b = c.getBoundingClientRect(); return b.left + b.width / 2; })"
    )
    ticks = await chart.locator("[data-x-tick]").all()
    numbers = [int(await tick.get_attribute("data-x-tick")) for tick in ticks]
    assert numbers == sorted({1, len(centres)}), f"x ticks {numbers} for {len(centres)} points"
    for tick, n in zip(ticks, numbers, strict=True):
        tick_box = await tick.bounding_box()
        assert abs(tick_box["x"] + tick_box["width"] / 2 - centres[n - 1]) < 1.5, f"x tick {n} is under point {n}"


def _queue_then_history(statuses: list[str]) -> bool:
    """Every waiting or running request comes before every finished one."""
    seen_done = False
    for status in statuses:
        if status in TERMINAL:
            seen_done = True
        elif seen_done:
            return False
    return True


async def _two_finished_then_a_busy_queue(caller, simulator):
    """Two completed requests, then one in progress (slow) with the caller's second queued."""
    await caller.say("First question")
    await caller.wait_for("response.done")
    await caller.say("Second question")
    await caller.wait_for("response.done", 2)
    with simulator.configured(delta_interval=0.4, deltas_per_response=80):
        await caller.say("Third question, a long answer please")
        await caller.wait_for("response.created", 3)
        asked = {"instructions": LONG, "metadata": {"pasted": LONG_VALUE}}
        await caller.send({"type": "response.create", "response": asked})
        await eventually(
            lambda: ResponseRequest.objects.filter(session__upstream_id=caller.session_id, status="queued").exists()
        )


async def test_queue_and_history_fit_the_card_queue_first_history_newest_first(
    login, connect_caller, daphne, simulator
):
    alice = await login("alice")
    caller = await connect_caller()
    page = alice.page
    await eventually(lambda: LiveSession.objects.filter(upstream_id=caller.session_id, status="live").exists())
    await _two_finished_then_a_busy_queue(caller, simulator)
    # One slow start, so the chart's top tick has five digits ("50000").
    slow = await ResponseRequest.objects.filter(session__upstream_id=caller.session_id, status="completed").afirst()
    slow.started_at = slow.created_at + timedelta(seconds=45)
    await slow.asave(update_fields=["started_at"])
    await page.goto(f"{daphne.http_url}/console/sessions/{caller.session_id}/")
    await expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live", timeout=5000)

    finished = [
        r.id
        async for r in ResponseRequest.objects.filter(
            session__upstream_id=caller.session_id, status="completed"
        ).order_by("created_at")
    ]
    statuses = await _statuses(page)
    assert statuses[:2] == ["in_progress", "queued"], f"the queue comes first: {statuses}"
    assert (await _ids(page))[2:] == finished[::-1], "the history is newest first"

    await _chart_reads_cleanly(page)
    assert await page.evaluate("document.documentElement.scrollHeight") <= 800, "the page itself does not scroll"

    # A new request, live: it joins the queue (after the caller's), above the history.
    await page.fill("#instructions", "Offer next-day delivery.")
    await page.click("[data-send]")
    console_row = page.locator('[data-requests] tr:has(.origin:text("console"))')
    await expect(console_row).to_have_attribute("data-status", "queued", timeout=3000)
    statuses = await _statuses(page)
    assert statuses[:3] == ["in_progress", "queued", "queued"] and _queue_then_history(statuses), statuses
    assert (await _ids(page))[3:] == finished[::-1]

    # Stacked rows: no sideways scroll inside the card, rows a few lines tall, every row of the
    # queue and the newest of the history on screen at 1280×800, the confirm panel inside the card.
    card = page.locator(".queue-card")
    assert await card.evaluate("(c) => c.scrollWidth <= c.clientWidth"), "the card scrolls sideways"
    wrap = page.locator(".requests-wrap")
    assert await wrap.evaluate("(w) => w.scrollWidth <= w.clientWidth"), "the table scrolls sideways"
    card_box = await card.bounding_box()
    bottom = min(800, card_box["y"] + card_box["height"])
    for row in (await page.locator("[data-requests] tr").all())[:4]:
        box = await row.bounding_box()
        assert box["height"] < 130, f"a row is {box['height']} px tall"
        # What the row shows (its cells, not the padding under them).
        shown = await row.evaluate(
            "(r) => Math.max(...[...r.cells].map((c) => c.getBoundingClientRect().bottom))"
        )
        assert shown <= bottom, "the queue and the latest history are on screen at 1280×800"
    caller_row = page.locator('[data-requests] tr:has(.origin:text("caller"))[data-status="queued"]')
    # One line of a long value shows; the whole of it is the metadata's title.
    await expect(caller_row.locator(".req-metadata")).to_have_attribute("title", f"pasted={LONG_VALUE}")
    await caller_row.locator("summary").click()
    confirm = caller_row.locator("button.danger")
    await expect(confirm).to_be_visible()
    button_box = await confirm.bounding_box()
    assert button_box["x"] >= card_box["x"] and button_box["x"] + button_box["width"] <= card_box["x"] + card_box["width"], (
        "the caller's cancel fits the card"
    )
    await alice.screenshot("session-queue-desktop")
    assert await _sideways(page) <= 0, await _too_wide(page)

    await page.set_viewport_size({"width": 390, "height": 844})
    await page.wait_for_timeout(150)
    assert await _sideways(page) <= 0, f"the session page scrolls sideways at 390 px: {await _too_wide(page)}"
    await confirm.scroll_into_view_if_needed()
    button_box = await confirm.bounding_box()
    assert button_box["x"] >= 0 and button_box["x"] + button_box["width"] <= 390, "the confirm fits a phone"
    await alice.screenshot("session-queue-phone")
    await _chart_reads_cleanly(page)
    sizes = await page.locator("[data-latency-chart] text.tick").evaluate_all(
        "(ts) => ts.map((t) => t.getBoundingClientRect().height)"
    )
    assert min(sizes) >= 10, f"tick text is legible on a phone: {sizes}"

    # Without JavaScript the server renders the same order.
    plain = await login("alice", javascript=False)
    await plain.page.goto(f"{daphne.http_url}/console/sessions/{caller.session_id}/")
    statuses = await _statuses(plain.page)
    assert statuses[:3] == ["in_progress", "queued", "queued"] and _queue_then_history(statuses), statuses
    assert (await _ids(plain.page))[3:] == finished[::-1]
    plain_row = plain.page.locator('[data-requests] tr:has(.origin:text("caller"))[data-status="queued"]')
    await expect(plain_row.locator(".req-metadata")).to_have_attribute("title", f"pasted={LONG_VALUE}")
    assert (await plain_row.bounding_box())["height"] < 130, "the server's row is as short"
    assert alice.errors == []


async def _controls_under(page, selector: str) -> list[str]:
    """The controls a floating element covers (it must cover none)."""
    return await page.evaluate(
        """(selector) => {
            const region = document.querySelector(selector).getBoundingClientRect();
            return [...document.querySelectorAll("button, input, select, textarea, summary, a[href]")]
              .filter((c) => !c.closest(selector))
              .filter((c) => { const b = c.getBoundingClientRect();
                return b.width > 1 && b.height > 1 && b.left < region.right && b.right > region.left
                  && b.top < region.bottom && b.bottom > region.top; })
              .map((c) => `${c.tagName.toLowerCase()} ${c.textContent.trim().slice(0, 30)}`);
        }""",
        selector,
    )


async def test_feedback_never_moves_the_page_nor_covers_a_control(login, connect_caller, daphne):
    alice = await login("alice")
    caller = await connect_caller()
    page = alice.page
    await eventually(lambda: LiveSession.objects.filter(upstream_id=caller.session_id, status="live").exists())
    await page.goto(f"{daphne.http_url}/console/sessions/{caller.session_id}/")
    await expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live", timeout=5000)
    send = page.locator("[data-send]")
    before = await send.bounding_box()
    height = await page.evaluate("document.documentElement.scrollHeight")

    await page.fill("#instructions", "Offer next-day delivery.")
    await page.keyboard.press("Control+Enter")
    status = page.locator("[data-send-status]")
    await expect(status).to_have_text("Response requested.", timeout=3000)
    status_box = await status.bounding_box()
    after = await send.bounding_box()
    assert after["y"] == before["y"], "Send stays where it was after sending"
    assert abs(status_box["y"] + status_box["height"] / 2 - (after["y"] + after["height"] / 2)) < after["height"], (
        "what was sent is said beside Send"
    )
    await page.click("[data-interrupt-form] button")
    toasts = page.locator("[data-toasts] .toast")
    await expect(toasts.first).to_be_visible(timeout=3000)
    assert await page.evaluate("document.documentElement.scrollHeight") == height, "a toast does not grow the page"
    assert (await send.bounding_box())["y"] == before["y"], "nor move Send"
    assert await _controls_under(page, "[data-toasts]") == []
    await page.screenshot(path=str(SCREENSHOTS / "session-toast-desktop.png"))

    # A phone: the toast appears on screen, over no control, wherever the page is scrolled.
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.evaluate("scrollTo(0, 0)")
    for link in await page.locator(".topbar nav a").all():
        assert await link.evaluate("(a) => a.getClientRects().length === 1 && a.offsetHeight < 30"), (
            f"{await link.inner_text()!r} wraps inside itself"
        )
    lines = await page.locator("h1.session-id").evaluate(
        "(h) => Math.round(h.getBoundingClientRect().height / parseFloat(getComputedStyle(h).lineHeight))"
    )
    assert lines == 1, "a session id fits one line of a phone"
    await page.screenshot(path=str(SCREENSHOTS / "session-header-phone.png"))
    interrupt = page.locator("[data-interrupt-form] button")
    await interrupt.evaluate("(b) => b.scrollIntoView({block: 'end'})")
    await interrupt.click()
    await expect(toasts.first).to_be_visible(timeout=3000)
    await page.wait_for_timeout(100)
    box = await page.locator("[data-toasts]").bounding_box()
    assert box["y"] >= 0 and box["y"] + box["height"] <= 844, "the toast is on screen"
    assert await _controls_under(page, "[data-toasts]") == []
    await page.screenshot(path=str(SCREENSHOTS / "session-toast-phone.png"))
    assert alice.errors == []


async def test_a_toast_waits_while_it_is_read_and_an_error_until_it_is_closed(login, connect_caller, daphne):
    """Toasts left after 8 s whatever the operator did (WCAG 2.2.1): the pointer or the focus on
    one holds it, each has a close button, and an error stays until it is closed."""
    alice = await login("alice")
    caller = await connect_caller()
    page = alice.page
    await page.clock.install()  # the page's timers run when the test says
    await eventually(lambda: LiveSession.objects.filter(upstream_id=caller.session_id, status="live").exists())
    await page.goto(f"{daphne.http_url}/console/sessions/{caller.session_id}/")
    await expect(page.locator("[data-live-status]")).to_have_attribute("data-state", "live", timeout=5000)
    toast = page.locator("[data-toasts] .toast")
    interrupt = page.locator("[data-interrupt-form] button")

    await interrupt.click()
    await expect(toast).to_contain_text("No response was active.")
    await toast.hover()
    await page.clock.run_for(20_000)
    await expect(toast).to_have_count(1)  # held while the pointer is on it
    await page.mouse.move(1, 1)
    await page.clock.run_for(8_500)
    await expect(toast).to_have_count(0)  # then it goes

    await interrupt.click()
    close = page.get_by_role("button", name="Dismiss")
    await close.focus()
    await page.clock.run_for(20_000)
    await expect(toast).to_have_count(1)  # held while the focus is in it
    await page.keyboard.press("Enter")
    await expect(toast).to_have_count(0)
    assert await page.evaluate("document.activeElement !== document.body"), "the focus stays on the page"

    await page.route("**/interrupt", lambda route: route.abort())
    await interrupt.click()
    await expect(toast).to_contain_text("The server could not be reached: try again.")
    await page.clock.run_for(60_000)
    await expect(toast).to_have_count(1)  # an error waits to be read
    assert await _controls_under(page, "[data-toasts]") == []
    await page.screenshot(path=str(SCREENSHOTS / "session-toast-error-desktop.png"))
    await close.click()
    await expect(toast).to_have_count(0)
    assert [e for e in alice.errors if "Failed to load resource" not in e] == []


async def test_a_long_label_without_a_space_wraps_in_the_heading_at_both_widths(login, daphne):
    # Labels may be 200 characters, spaces or not; the dashboard wraps them, and so must the
    # session page's heading. An ended session: the page, with no live part to wait for.
    label = "Refund" + "x" * 194
    await LiveSession.objects.acreate(
        upstream_id="sess_longheading", model="gpt-realtime", status="ended", label=label
    )
    alice = await login("alice")
    page = alice.page
    await page.goto(f"{daphne.http_url}/console/sessions/sess_longheading/")
    await expect(page.locator("[data-label-shown]")).to_contain_text(label)
    for width, height in ((1280, 800), (390, 844)):
        await page.set_viewport_size({"width": width, "height": height})
        await page.wait_for_timeout(150)
        assert await _sideways(page) <= 0, f"sideways at {width} px: {await _too_wide(page)}"
    assert alice.errors == []
