"""The dashboard's layout in real Chromium (QA report 3): a 200-character label without a
space, a session's two state badges on a phone, and sorting on a phone."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone
from playwright.async_api import expect

from apps.sessions.models import LiveSession, ResponseRequest
from tests.console.conftest import SCREENSHOTS
from tests.console.test_console_browser import _sideways, _too_wide

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LONG_LABEL = "Refund" + "x" * 194  # labels may be 200 characters, spaces or not


def _sessions() -> None:
    """Another process's live sessions (heartbeat kept fresh): one with a long label and two
    queued requests, one labelled "Aaron"."""
    now = timezone.now()
    common = {"model": "gpt-realtime", "status": LiveSession.Status.LIVE, "process_id": "another-process",
              "heartbeat_at": now + timedelta(hours=1), "connected_by": "token:agent-1"}
    long = LiveSession.objects.create(upstream_id="sess_longlabel", label=LONG_LABEL, started_at=now, **common)
    LiveSession.objects.create(upstream_id="sess_aaron", label="Aaron", started_at=now - timedelta(seconds=5), **common)
    for n in range(2):
        ResponseRequest.objects.create(id=f"req_dash{n}", session=long, origin="api", status="queued")


async def test_long_labels_badges_and_sorting_fit_a_desktop_and_a_phone(login, daphne):
    await sync_to_async(_sessions)()
    alice = await login("alice")
    page = alice.page
    row = page.locator('tr[data-session="sess_longlabel"]')
    await expect(row).to_be_visible(timeout=5000)
    await expect(row).to_contain_text("2 queued")
    assert await _sideways(page) <= 0, f"the dashboard scrolls sideways at 1280 px: {await _too_wide(page)}"
    table = await page.locator("[data-sessions]").bounding_box()
    assert table["width"] <= 1280, f"the table is {table['width']} px wide"
    assert not await page.locator("[data-sort-menu]").is_visible(), "on a wide screen the headings sort"
    await page.screenshot(path=str(SCREENSHOTS / "dashboard-longlabel-desktop.png"))

    await page.set_viewport_size({"width": 390, "height": 844})
    await page.wait_for_timeout(150)
    assert await _sideways(page) <= 0, f"the dashboard scrolls sideways at 390 px: {await _too_wide(page)}"
    state = row.locator('td[data-label="State"]')
    label = row.locator('td[data-label="Label"]')
    cell = await state.bounding_box()
    value_x = (await label.bounding_box())["x"]
    badges = await state.locator(".badge").all()
    assert len(badges) == 2, "the session's state and its queue, each a badge"
    for badge in badges:
        box = await badge.bounding_box()
        assert box["width"] < cell["width"] / 2, "a badge is as wide as its words, not the cell"
        assert box["x"] > value_x + 100, "both badges sit in the value column, beside the cell's label"
    await page.screenshot(path=str(SCREENSHOTS / "dashboard-badges-phone.png"), full_page=True)

    # Sorting on a phone: the menu, since the headings are hidden.
    menu = page.locator("[data-sort-menu]")
    await expect(menu).to_be_visible()
    await menu.select_option("label")
    await expect(page.locator("[data-sessions] tbody tr").first).to_have_attribute("data-session", "sess_aaron", timeout=3000)
    assert "sort=label" in page.url
    await menu.select_option("-label")
    await expect(page.locator("[data-sessions] tbody tr").first).to_have_attribute("data-session", "sess_longlabel", timeout=3000)
    # The hidden headings are no tab stops: from the menu, Tab goes to the first session's link,
    # not through eleven links a keyboard user cannot see.
    await menu.focus()
    await page.keyboard.press("Tab")
    focused = await page.evaluate(
        "document.activeElement.closest('tr')?.dataset.session ?? document.activeElement.outerHTML"
    )
    assert focused == "sess_longlabel", f"Tab from the sort menu lands on {focused}"
    assert alice.errors == []
