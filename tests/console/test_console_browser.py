"""The operator console in headless Chromium against real Daphne and the simulator
(CONTRACT section 3). Every test also checks that the pages logged no JavaScript error."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import expect

from apps.sessions.models import LiveSession, ResponseRequest
from tests.support.realtime import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _creates(simulator, session_id: str) -> list[dict]:
    return [e for _, e in simulator.sim.received(session_id) if e["type"] == "response.create"]


async def _open_session(operator, daphne, session_id: str) -> None:
    await eventually(lambda: LiveSession.objects.filter(upstream_id=session_id, status="live").exists())
    await operator.page.goto(f"{daphne.http_url}/console/sessions/{session_id}/")
    await expect(operator.page.locator("[data-live-status]")).to_have_text("Live", timeout=5000)


async def test_a_new_session_appears_on_the_dashboard_without_reload(login, connect_caller, daphne):
    alice = await login("alice")
    await expect(alice.page.locator("[data-live-status]")).to_have_text("Live", timeout=5000)
    caller = await connect_caller()
    row = alice.page.locator(f'tr[data-session="{caller.session_id}"]')
    await expect(row).to_be_visible(timeout=2000)
    await expect(row).to_contain_text("token:agent-7")
    await expect(alice.page.locator('[data-figure="live"]')).to_have_text("1")
    await alice.screenshot("dashboard")
    await caller.socket.close()
    await expect(row).to_have_count(0, timeout=3000)
    assert alice.errors == []


async def test_nudge_with_metadata_while_a_response_streams(login, connect_caller, daphne, simulator):
    alice = await login("alice")
    caller = await connect_caller()
    await _open_session(alice, daphne, caller.session_id)
    page = alice.page
    with simulator.configured(delta_interval=0.15, deltas_per_response=6):
        await caller.say("Can I get my money back?")
        await caller.wait_for("response.created")
        await page.fill("#instructions", "Offer the refund.")
        await page.fill("#mk-0", "ticket")
        await page.fill("#mv-0", "T-7")
        await page.click("[data-add-row]")
        await page.fill("#mk-1", "reason")
        await page.fill("#mv-1", "late delivery")
        await page.click("[data-nudge-form] button[type=submit]")
        await expect(page.locator('[data-requests] tr:has(.origin:text("console")) .badge')).to_have_text("queued", timeout=3000)
        await expect(page.locator('[data-requests] tr:has(.origin:text("console")) .badge')).to_have_text("completed", timeout=10000)
    transcript = page.locator("[data-transcript]")
    await expect(transcript).to_contain_text("Offer the refund.", timeout=5000)
    await expect(transcript).to_contain_text("Can I get my money back?")
    await alice.screenshot("session")
    row = await ResponseRequest.objects.aget(session__upstream_id=caller.session_id, origin="console")
    assert row.metadata == {"ticket": "T-7", "reason": "late delivery"}
    assert row.requested_by == "alice" and row.status == "completed"
    assert alice.errors == []


async def test_two_operators_see_each_other_and_each_others_nudges(login, connect_caller, daphne):
    alice, bob = await login("alice"), await login("bob")
    caller = await connect_caller()
    await _open_session(alice, daphne, caller.session_id)
    await _open_session(bob, daphne, caller.session_id)
    await expect(alice.page.locator("[data-presence]")).to_have_text("alice, bob", timeout=3000)
    await expect(bob.page.locator("[data-presence]")).to_have_text("alice, bob", timeout=3000)
    await alice.page.fill("#instructions", "Mention the loyalty discount.")
    await alice.page.click("[data-nudge-form] button[type=submit]")
    await expect(bob.page.locator("[data-toasts]")).to_contain_text("alice asked for a response", timeout=3000)
    await expect(bob.page.locator('[data-requests] tr:has(.origin:text("console"))')).to_contain_text(
        "Mention the loyalty discount."
    )
    await bob.page.close()
    await expect(alice.page.locator("[data-presence]")).to_have_text("alice", timeout=3000)
    assert alice.errors == [] and bob.errors == []


async def test_a_watcher_without_the_permission_sees_no_form_and_a_forged_post_is_refused(
    login, connect_caller, daphne, simulator
):
    watcher = await login("watcher")
    caller = await connect_caller()
    await _open_session(watcher, daphne, caller.session_id)
    await caller.say("hello there")
    await expect(watcher.page.locator("[data-transcript]")).to_contain_text("hello there", timeout=5000)
    assert await watcher.page.locator("[data-nudge-form]").count() == 0
    token = await watcher.page.locator("input[name=csrfmiddlewaretoken]").first.get_attribute("value")
    forged = await watcher.page.request.post(
        f"{daphne.http_url}/console/sessions/{caller.session_id}/responses",
        form={"csrfmiddlewaretoken": token, "instructions": "Say something rude."},
        headers={"Referer": f"{daphne.http_url}/console/"},
    )
    assert forged.status == 403
    await caller.wait_for("response.done")
    await asyncio.sleep(0.2)
    assert len(_creates(simulator, caller.session_id)) == 1, "only the caller's own response"
    assert watcher.errors == []


async def test_a_65_character_key_is_refused_beside_the_field_and_nothing_is_sent(
    login, connect_caller, daphne, simulator
):
    alice = await login("alice")
    caller = await connect_caller()
    await _open_session(alice, daphne, caller.session_id)
    await alice.page.fill("#mk-0", "k" * 65)
    await alice.page.fill("#mv-0", "v")
    await alice.page.click("[data-nudge-form] button[type=submit]")
    error = alice.page.locator("#err-metadata_key_0")
    await expect(error).to_contain_text("at most 64")
    await expect(alice.page.locator("#mk-0")).to_have_attribute("aria-invalid", "true")
    await asyncio.sleep(0.3)
    assert _creates(simulator, caller.session_id) == []
    assert not await ResponseRequest.objects.filter(session__upstream_id=caller.session_id).aexists()
    assert alice.errors == []


async def test_the_server_checks_the_form_too(login, connect_caller, daphne, simulator):
    """The same refusal when the browser's own check is bypassed (a POST from the page)."""
    alice = await login("alice")
    caller = await connect_caller()
    await _open_session(alice, daphne, caller.session_id)
    token = await alice.page.locator("input[name=csrfmiddlewaretoken]").first.get_attribute("value")
    answer = await alice.page.request.post(
        f"{daphne.http_url}/console/sessions/{caller.session_id}/responses",
        form={"csrfmiddlewaretoken": token, "metadata_key": "k" * 65, "metadata_value": "v"},
        headers={"Accept": "application/json", "Referer": f"{daphne.http_url}/console/"},
    )
    assert answer.status == 422
    assert "at most 64" in (await answer.json())["errors"]["metadata_key_0"]
    assert _creates(simulator, caller.session_id) == []


async def test_without_javascript_the_form_still_creates_the_request(login, connect_caller, daphne, simulator):
    alice = await login("alice", javascript=False)
    caller = await connect_caller()
    await eventually(lambda: LiveSession.objects.filter(upstream_id=caller.session_id, status="live").exists())
    await alice.page.goto(f"{daphne.http_url}/console/sessions/{caller.session_id}/")
    await alice.page.fill("#instructions", "Offer the refund.")
    await alice.page.fill("#mk-0", "ticket")
    await alice.page.fill("#mv-0", "T-9")
    await alice.page.click("[data-nudge-form] button[type=submit]")
    await alice.page.wait_for_url(f"{daphne.http_url}/console/sessions/{caller.session_id}/")
    await expect(alice.page.locator(".message.success")).to_contain_text("Response requested")
    await caller.wait_for("response.done")
    row = await ResponseRequest.objects.aget(session__upstream_id=caller.session_id, origin="console")
    assert row.metadata == {"ticket": "T-9"} and row.instructions == "Offer the refund."
    await alice.screenshot("session-no-js")


async def test_pages_fit_a_narrow_window_and_the_form_is_keyboard_usable(login, connect_caller, daphne):
    alice = await login("alice", width=400, height=800)
    caller = await connect_caller()
    await _open_session(alice, daphne, caller.session_id)
    page = alice.page
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the session page scrolls sideways by {overflow}px at 400px"
    await alice.screenshot("session-narrow")
    await page.focus("#instructions")
    await page.keyboard.type("Be brief.")
    await page.keyboard.press("Tab")  # to the mode radios (one stop for the group)
    await page.keyboard.press("Tab")  # to the first metadata key
    focused = await page.evaluate("document.activeElement.id")
    assert focused == "mk-0", f"Tab from the mode radios reaches the first metadata key, not {focused!r}"
    await page.keyboard.type("topic")
    await page.keyboard.press("Tab")
    await page.keyboard.type("billing")
    await page.locator("[data-nudge-form] button[type=submit]").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator('[data-requests] tr:has(.origin:text("console"))')).to_contain_text("Be brief.")
    await page.goto(f"{daphne.http_url}/console/")
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the dashboard scrolls sideways by {overflow}px at 400px"
    await alice.screenshot("dashboard-narrow")
    assert alice.errors == []
