"""Issue 14 in real Chromium: finding a session among many, every page at a desktop and a
phone size (screenshots to look at, and no sideways scrolling at 390 px), the session page's
designed states, and a login refused after repeated failures."""

from __future__ import annotations

import asyncio
import json
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.async_api import expect

from apps.sessions.models import LiveSession, ResponseRequest
from tests.console.conftest import PASSWORD
from tests.console.test_console_browser import _sideways, _too_wide
from tests.support.realtime import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SHOTS = Path(os.environ.get("OC_SCREENSHOTS") or Path(__file__).resolve().parents[2] / "var" / "screenshots")
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
SHOTS.mkdir(parents=True, exist_ok=True)


def _many_live_sessions(n: int) -> None:
    """`n` live sessions in the table, as other processes' would be (their heartbeat is kept
    fresh for the test's length, so no sweep fails them)."""
    now = timezone.now()
    LiveSession.objects.bulk_create(
        LiveSession(
            upstream_id=f"sess_other{i:04d}",
            model="gpt-realtime" if i % 3 else "gpt-realtime-mini",
            status=LiveSession.Status.LIVE,
            connected_by=f"token:agent-{i % 7}",
            process_id="another-process",
            heartbeat_at=now + timedelta(hours=1),
            started_at=now - timedelta(seconds=i),
            label=f"Customer {i}",
        )
        for i in range(n)
    )


async def _shoot(page, name: str) -> None:
    """Both sizes of the page now shown: a screenshot of each, and no sideways scroll."""
    for size, (width, height) in SIZES.items():
        await page.set_viewport_size({"width": width, "height": height})
        await page.wait_for_timeout(150)
        await page.screenshot(path=str(SHOTS / f"{name}-{size}.png"))
        assert await _sideways(page) <= 0, f"{name} scrolls sideways at {width} px: {await _too_wide(page)}"


async def test_search_finds_a_session_by_its_label_among_200(login, daphne, agent_token):
    import websockets
    from asgiref.sync import sync_to_async

    await sync_to_async(_many_live_sessions)(199)
    needle = await websockets.connect(
        f"{daphne.ws_base}/realtime?model=gpt-realtime&oc_label=Refund%20for%20Jane%20Roe",
        additional_headers={"Authorization": f"Bearer {agent_token}"},
    )
    try:
        session_id = json.loads(await needle.recv())["session"]["id"]
        await eventually(lambda: LiveSession.objects.filter(upstream_id=session_id, status="live").exists())
        alice = await login("alice")
        page = alice.page
        await expect(page.locator('[data-figure="live"]')).to_have_text("200", timeout=5000)
        await expect(page.locator("[data-sessions] tbody tr")).to_have_count(50)  # one page of 50
        await page.fill("#q", "jane roe")
        rows = page.locator("[data-sessions] tbody tr")
        await expect(rows).to_have_count(1, timeout=3000)
        await expect(rows.first).to_have_attribute("data-session", session_id)
        await expect(rows.first).to_contain_text("Refund for Jane Roe")
        assert "q=jane+roe" in page.url, "the search is in the URL, so it can be shared"
        # The same link without JavaScript shows the same row, rendered by the server.
        plain = await page.context.browser.new_context(java_script_enabled=False)
        cookies = await page.context.cookies()
        await plain.add_cookies(cookies)
        other = await plain.new_page()
        await other.goto(page.url)
        assert await other.locator("[data-sessions] tbody tr").count() == 1
        await plain.close()
        # Sorting by a column and filtering by model are links too.
        await page.fill("#q", "")
        await page.select_option("#f-model", "gpt-realtime-mini")
        await expect(page.locator("[data-range]")).to_contain_text("of 67 matching (200 live)", timeout=3000)
        await page.click('[data-sort="label"]')
        await expect(page.locator('th[data-col="label"]')).to_have_attribute("aria-sort", "ascending")
        assert "sort=label" in page.url and "model=gpt-realtime-mini" in page.url
        await _shoot(page, "dashboard-filtered")
        assert alice.errors == []
    finally:
        await needle.close()


async def test_a_page_that_empties_shows_the_last_page_and_its_link_says_so(login, daphne):
    from asgiref.sync import sync_to_async

    await sync_to_async(_many_live_sessions)(51)
    alice = await login("alice")
    page = alice.page
    await page.goto(f"{daphne.http_url}/console/?page=2")
    await expect(page.locator("[data-range]")).to_have_text("51–51 of 51", timeout=5000)
    oldest = LiveSession.objects.filter(upstream_id="sess_other0000")
    await sync_to_async(oldest.update)(status="ended")
    await expect(page.locator("[data-range]")).to_have_text("1–50 of 50", timeout=5000)
    assert "page=2" not in page.url, f"page 1 is shown, the link says {page.url}"
    await sync_to_async(oldest.update)(status="live")
    await expect(page.locator("[data-range]")).to_have_text("1–50 of 51", timeout=5000)
    assert alice.errors == []


async def test_on_a_phone_the_pager_stays_on_screen_above_the_cards_it_pages(login, daphne):
    """At 390 px each session is a card a third of a screen tall: the pager after 50 of them
    was some 13,000 px down. It stays at the foot of the screen, and a row that takes the
    focus is scrolled clear of it."""
    from asgiref.sync import sync_to_async

    await sync_to_async(_many_live_sessions)(60)
    alice = await login("alice")
    page = alice.page
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.goto(f"{daphne.http_url}/console/")
    await expect(page.locator("[data-range]")).to_have_text("1–50 of 60", timeout=5000)
    following = page.locator('[data-page="next"]')
    box = await following.bounding_box()
    assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 844, box
    await page.locator("[data-sessions] tbody tr a").first.focus()
    for n in range(1, 6):  # down the list with the keyboard: each row scrolls in from below
        await page.keyboard.press("Tab")
        link = await page.locator("[data-sessions] tbody tr").nth(n).locator("a").bounding_box()
        pager = await page.locator("[data-pager]").bounding_box()
        assert link["y"] + link["height"] <= pager["y"], f"the pager covers row {n}: {link} {pager}"
    await page.screenshot(path=str(SHOTS / "dashboard-pager-phone.png"))
    assert await _sideways(page) <= 0, await _too_wide(page)
    await following.click()
    await expect(page.locator("[data-range]")).to_have_text("51–60 of 60", timeout=5000)
    assert alice.errors == []


async def test_the_range_is_said_when_the_operator_pages_not_as_sessions_come_and_go(login, daphne):
    """The range ("51–100 of 120") was a live region: every session starting or ending on
    the fleet, every second or so on a busy one, had a screen reader read it out."""
    from asgiref.sync import sync_to_async

    await sync_to_async(_many_live_sessions)(120)
    alice = await login("alice")
    page = alice.page
    # What the socket sends is held back until the operator has paged: the page of the view
    # the page opened with, still on its way, is not what the operator asked for, and was said
    # in its place ("1–50 of 120").
    held, released, first_page, sockets = [], asyncio.Event(), asyncio.Event(), []

    async def hold_until_paged(socket) -> None:
        sockets.append(socket)

        def from_server(message) -> None:
            if released.is_set():
                socket.send(message)
                return
            held.append(message)
            if '"type": "sessions"' in str(message):
                first_page.set()

        socket.connect_to_server().on_message(from_server)

    await page.route_web_socket(re.compile(r"/ws/console/$"), hold_until_paged)
    await page.reload()
    await expect(page.locator("[data-live-status]")).to_have_text("Live", timeout=5000)
    await page.evaluate(
        """() => { window.said = [];
             for (const region of document.querySelectorAll("[aria-live], [role=status], [role=log]"))
               new MutationObserver(() => window.said.push(region.textContent.trim()))
                 .observe(region, { childList: true, characterData: true, subtree: true }); }"""
    )
    await page.locator('[data-page="next"]').focus()
    await page.keyboard.press("Enter")
    async with asyncio.timeout(5):
        await first_page.wait()  # the page of the view before
    released.set()
    for message in held:  # sent on in order, then everything passes
        sockets[-1].send(message)
    range_ = page.locator("[data-range]")
    await expect(range_).to_have_text("51–100 of 120", timeout=3000)
    await page.wait_for_function("window.said.length > 0", timeout=3000)
    assert await page.evaluate("window.said") == ["51–100 of 120"], "the new page's range is said"
    await sync_to_async(LiveSession.objects.filter(upstream_id="sess_other0119").update)(status="ended")
    await expect(range_).to_have_text("51–100 of 119", timeout=5000)
    assert await page.evaluate("window.said") == ["51–100 of 120"], "a session ending elsewhere is not said"
    assert alice.errors == []


async def test_the_row_an_operator_is_on_keeps_its_focus_as_the_sessions_change(login, daphne):
    """A busy dashboard changes every second: each change rebuilt every row, so a keyboard
    user on a session's link was dropped to the top of the page."""
    from asgiref.sync import sync_to_async

    await sync_to_async(_many_live_sessions)(60)
    alice = await login("alice")
    page = alice.page
    await page.goto(f"{daphne.http_url}/console/?sort=label")
    await expect(page.locator("[data-live-status]")).to_have_text("Live", timeout=5000)
    rows = page.locator("[data-sessions] tbody tr")
    await rows.nth(2).locator("a").focus()

    async def label(session_id: str, text: str) -> None:
        row = LiveSession.objects.filter(upstream_id=session_id)
        await sync_to_async(row.update)(label=text)
        await expect(page.locator(f'tr[data-session="{session_id}"]')).to_contain_text(text)

    async def focused() -> str:
        return await page.evaluate("document.activeElement.closest('tr')?.dataset.session")

    await label("sess_other0002", "Aaron")  # its row changes, and moves to the top
    await expect(rows.first).to_have_attribute("data-session", "sess_other0002")
    assert await focused() == "sess_other0002", f"the focus went to {await focused() or 'the page'}"
    assert alice.errors == []


async def test_every_page_fits_a_phone_and_is_screenshotted(login, connect_caller, daphne, chromium):
    # Login, as a visitor sees it.
    visitor = await chromium.new_context()
    page = await visitor.new_page()
    await page.goto(f"{daphne.http_url}/accounts/login/")
    await _shoot(page, "login")
    await visitor.close()

    alice = await login("alice")
    caller = await connect_caller()
    await caller.say("Where is my parcel? It was due on Monday.")
    await caller.wait_for("response.done")
    page = alice.page
    await expect(page.locator(f'tr[data-session="{caller.session_id}"]')).to_be_visible(timeout=5000)
    await _shoot(page, "dashboard")

    await page.goto(f"{daphne.http_url}/console/sessions/{caller.session_id}/")
    await expect(page.locator("[data-live-status]")).to_have_text("Connected", timeout=5000)
    await page.fill("#instructions", "Apologise and offer next-day delivery.")
    await page.keyboard.press("Control+Enter")  # sends, from the textarea
    await expect(page.locator('[data-requests] tr:has(.origin:text("console")) .badge')).to_have_text(
        "completed", timeout=10000
    )
    await expect(page.locator("[data-transcript] .entry.nudged")).to_contain_text("nudged by alice", timeout=5000)
    assert await page.locator("[data-latency-chart] circle").count() == 2, "a point per request that started"
    # At 1280×800 the queue and history are on screen without scrolling.
    await page.set_viewport_size({"width": 1280, "height": 800})
    box = await page.locator(".queue-card h2").bounding_box()
    rows = await page.locator("[data-requests] tr").last.bounding_box()
    assert box["y"] + box["height"] < 800 and rows["y"] < 800, "queue and history above the fold"
    await _shoot(page, "session-live")

    await caller.socket.close()
    await expect(page.locator("[data-ended-note]")).to_be_visible(timeout=5000)
    await expect(page.locator("[data-end-reason]")).to_have_text("The caller disconnected.")
    await expect(page.locator("[data-end-code]")).to_have_text("caller_closed")
    await expect(page.locator("[data-live-status]")).to_have_text("Session over")
    assert await page.locator(".streaming").count() == 0, "no typing cursor once it is over"
    await page.reload()
    await expect(page.locator("[data-ended-note]")).to_be_visible()
    await _shoot(page, "session-ended")

    await page.goto(f"{daphne.http_url}/console/settings/")
    await _shoot(page, "settings")
    assert alice.errors == [], alice.errors


def _one_request() -> str:
    session = LiveSession.objects.create(
        upstream_id="sess_C9xJ1v3Xx0O1e3n0kq9fJ", model="gpt-realtime"
    )
    request = ResponseRequest.objects.create(
        id="req_ae2256a5a60d4b1db52e3b99ea704efa", session=session, origin="api", status="completed"
    )
    return request.id


async def test_the_admin_index_fits_a_phone(chromium, daphne, users):
    from asgiref.sync import sync_to_async

    await sync_to_async(get_user_model().objects.create_superuser)("root", password=PASSWORD)
    context = await chromium.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    await page.goto(f"{daphne.http_url}/admin/login/")
    await page.fill("#id_username", "root")
    await page.fill("#id_password", PASSWORD)
    await page.click("input[type=submit]")
    await page.wait_for_url(f"{daphne.http_url}/admin/")
    for size, (width, height) in SIZES.items():
        await page.set_viewport_size({"width": width, "height": height})
        await page.screenshot(path=str(SHOTS / f"admin-{size}.png"))
    # The page showing a new token once: its field fits a phone (focus selects it whole, to copy).
    await page.goto(f"{daphne.http_url}/admin/oc_sessions/apitoken/add/")
    await page.fill("#id_name", "phone-made")
    await page.click("input[name=_save]")
    await expect(page.locator("#new-token")).to_be_visible()
    await page.screenshot(path=str(SHOTS / "admin-token-created-phone.png"))
    assert await _sideways(page) <= 0, f"the new token scrolls sideways: {await _too_wide(page)}"
    # A request's page: its title is its id, one long word.
    request_id = await sync_to_async(_one_request)()
    await page.goto(f"{daphne.http_url}/admin/oc_sessions/responserequest/{request_id}/change/")
    assert await _sideways(page) <= 0, f"a request's page scrolls sideways: {await _too_wide(page)}"
    assert not [e for e in errors if "Content Security Policy" in e], errors
    await context.close()


async def test_a_caller_request_is_cancelled_only_through_its_own_confirmed_action(
    login, connect_caller, daphne, simulator
):
    alice = await login("alice")
    caller = await connect_caller()
    page = alice.page
    with simulator.configured(delta_interval=0.3, deltas_per_response=60):  # the first one holds the queue
        await caller.say("First question")
        await caller.wait_for("response.created")
        await caller.send({"type": "response.create", "event_id": "evt_callers_second"})
        await eventually(
            lambda: ResponseRequest.objects.filter(session__upstream_id=caller.session_id, status="queued").exists()
        )
        await page.goto(f"{daphne.http_url}/console/sessions/{caller.session_id}/")
        queued = page.locator('[data-requests] tr:has(.badge:text("queued"))')
        await expect(queued).to_have_count(1, timeout=5000)
        assert await queued.locator("button:visible").count() == 0, "no one-click cancel for the caller's request"
        waiting = await ResponseRequest.objects.aget(session__upstream_id=caller.session_id, status="queued")
        await queued.locator("summary").click()
        await queued.locator("button.danger").click()
        badge = page.locator(f'tr[data-request="{waiting.id}"] .badge')
        await expect(badge).to_have_text("cancelled", timeout=5000)
    await eventually(lambda: ResponseRequest.objects.filter(pk=waiting.pk, status="cancelled").exists())
    assert waiting.origin == "caller"
    assert alice.errors == []


async def test_login_is_refused_after_five_failures_even_with_the_right_password(chromium, daphne, users):
    context = await chromium.new_context()
    page = await context.new_page()
    for _ in range(5):
        await page.goto(f"{daphne.http_url}/accounts/login/")
        await page.fill("#id_username", "alice")
        await page.fill("#id_password", "not-the-password")
        await page.click("button[type=submit]")
        await expect(page.locator("[role=alert]")).to_be_visible()
    await page.goto(f"{daphne.http_url}/accounts/login/")
    await page.fill("#id_username", "alice")
    await page.fill("#id_password", users["alice"])
    async with page.expect_response(lambda r: r.url.endswith("/accounts/login/") and r.request.method == "POST") as answer:
        await page.click("button[type=submit]")
    assert (await answer.value).status == 429
    await expect(page.locator(".locked")).to_contain_text("refused for 15 minutes")
    assert "/accounts/login/" in page.url, "not logged in"
    # Another user from the same address is not locked out by alice's failures.
    await page.fill("#id_username", "bob")
    await page.fill("#id_password", users["bob"])
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{daphne.http_url}/console/")
    await context.close()
