"""The operator console in headless Chromium against real Daphne and the simulator
(CONTRACT section 3). Every test also checks that the pages logged no JavaScript error."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from playwright.async_api import expect

from apps.sessions.models import LiveSession, ResponseRequest
from tests.support.realtime import eventually
from tests.support.servers import DaphneProcess

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = 390  # a phone's width in CSS pixels: no page may scroll sideways at it
AWKWARD = "sess/<b>x</b>\"'&%2F"


def _creates(simulator, session_id: str) -> list[dict]:
    return [e for _, e in simulator.sim.received(session_id) if e["type"] == "response.create"]


async def _open_session(operator, daphne, session_id: str) -> None:
    await eventually(lambda: LiveSession.objects.filter(upstream_id=session_id, status="live").exists())
    await operator.page.goto(f"{daphne.http_url}/console/sessions/{session_id}/")
    await expect(operator.page.locator("[data-live-status]")).to_have_text("Connected", timeout=5000)


async def _sideways(page) -> int:
    """How far the page scrolls sideways (0: it fits the window)."""
    return await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")


async def _too_wide(page) -> list[str]:
    """The elements that reach past the window's right edge, for the failure's message."""
    return await page.evaluate(
        """[...document.querySelectorAll("body *")]
            .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5)
            .map((e) => `${e.tagName.toLowerCase()}.${e.className}`).slice(0, 8)"""
    )


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


async def test_a_server_restart_is_said_once_and_the_dashboard_comes_back_live(login, daphne_with):
    """The status is a live region: it was written again at every failed retry, so a screen
    reader said "Reconnecting…" each time (every 10 s for as long as the server was away)."""
    server = daphne_with()
    alice = await login("alice")  # on the shared server: the cookie is the host's, any port
    page = alice.page
    await page.goto(f"{server.http_url}/console/")
    status = page.locator("[data-live-status]")
    await expect(status).to_have_text("Live", timeout=5000)
    await status.evaluate(
        """(s) => { window.said = [];
             new MutationObserver(() => window.said.push(s.textContent))
               .observe(s, { childList: true, characterData: true, subtree: true }); }"""
    )
    refused: asyncio.Queue[str] = asyncio.Queue()
    page.on("console", lambda m: "ERR_CONNECTION_REFUSED" in m.text and refused.put_nowait(m.text))
    await asyncio.to_thread(server.stop)
    async with asyncio.timeout(10):
        for _ in range(2):  # two retries failed (after 0.5 s, then 1 s)
            await refused.get()
    assert await page.evaluate("window.said") == ["Reconnecting…"], "said once, not at each retry"
    again = await asyncio.to_thread(DaphneProcess, server.env, server.port)
    try:
        await expect(status).to_have_text("Live", timeout=10000)
        assert await page.evaluate("window.said") == ["Reconnecting…", "Live"]
    finally:
        await asyncio.to_thread(again.stop)
    assert [e for e in alice.errors if "ERR_CONNECTION_REFUSED" not in e] == []


async def test_nudge_with_metadata_while_a_response_streams(login, connect_caller, daphne, simulator):
    alice = await login("alice")
    caller = await connect_caller()
    await _open_session(alice, daphne, caller.session_id)
    page = alice.page
    # The caller's response streams for 2 s: long enough for the form to be filled and sent
    # while it runs, even on a busy machine, so that the nudge is seen queued behind it.
    with simulator.configured(delta_interval=0.15, deltas_per_response=14):
        await caller.say("Can I get my money back?")
        await caller.wait_for("response.created")
        await page.fill("#instructions", "Offer the refund.")
        await page.fill("#metadata-0-key", "ticket")
        await page.fill("#metadata-0-value", "T-7")
        await page.click("[data-add-row]")
        await page.fill("#metadata-1-key", "reason")
        await page.fill("#metadata-1-value", "late delivery")
        await page.click("[data-send]")
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


async def test_the_request_table_redraws_only_what_changed_and_keeps_the_operators_focus(
    login, connect_caller, daphne, simulator
):
    """A watch starts with the session's latest requests as they are now: each redrew the
    table and the chart though the page had just been rendered with them (a call of a
    thousand requests held the page's script for seconds on opening). And a response that
    ended moved to the history by moving every row: the operator's focus on a queued
    request's Cancel fell to the page."""
    alice = await login("alice")
    caller = await connect_caller()
    await caller.say("Hello?")
    mine = ResponseRequest.objects.filter(session__upstream_id=caller.session_id)
    await eventually(mine.filter(status="completed").exists)  # rendered as it is now
    page = alice.page
    # Counted from the end of the page's own render on (module scripts run before this event).
    await page.add_init_script(
        """document.addEventListener("DOMContentLoaded", () => {
             window.redrawn = 0;
             const count = () => { window.redrawn += 1; };
             for (const part of ["[data-requests]", "[data-latency-chart]"]) {
               const node = document.querySelector(part);
               new MutationObserver(count).observe(node, { childList: true });
             }
           });"""
    )
    await _open_session(alice, daphne, caller.session_id)
    await expect(page.locator("[data-requests] tr")).to_have_count(1)
    await page.wait_for_timeout(300)
    assert await page.evaluate("window.redrawn") == 0, "the page redrew what had not changed"

    with simulator.configured(delta_interval=0.2, deltas_per_response=6):
        await caller.say("And now?")
        await caller.wait_for("response.created", n=2)
        for text in ("First nudge.", "Second nudge."):
            await page.fill("#instructions", text)
            await page.click("[data-send]")
            nudge = page.locator(f'[data-requests] tr:has-text("{text}")')
            await expect(nudge.locator(".badge")).to_have_text("queued", timeout=3000)
        second = page.locator('[data-requests] tr:has-text("Second nudge.")')
        # Each Cancel is named for its request, as the server's rows are: not two "Cancel"s.
        for text in ("First nudge.", "Second nudge."):
            await expect(page.get_by_role("button", name=f"Cancel {text}")).to_have_count(1)
        await second.get_by_role("button", name="Cancel").focus()
        callers = page.locator('[data-requests] tr:has(.origin:text("caller")) .badge')
        await expect(callers).to_have_text(["completed", "completed"], timeout=5000)
        await expect(second.locator(".badge")).to_have_text("queued")
        focused = await page.evaluate("document.activeElement.closest('tr')?.dataset.request")
        assert focused == await second.get_attribute("data-request"), f"the focus is on {focused}"
    assert alice.errors == []


async def test_two_operators_see_each_other_and_each_others_nudges(login, connect_caller, daphne):
    alice, bob = await login("alice"), await login("bob")
    caller = await connect_caller()
    await _open_session(alice, daphne, caller.session_id)
    await _open_session(bob, daphne, caller.session_id)
    await expect(alice.page.locator("[data-presence]")).to_have_text("alice, bob", timeout=3000)
    await expect(bob.page.locator("[data-presence]")).to_have_text("alice, bob", timeout=3000)
    await alice.page.fill("#instructions", "Mention the loyalty discount.")
    await alice.page.click("[data-send]")
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
    refusal = await forged.text()
    assert "You may watch sessions but not steer them. Nothing was changed." in refusal
    # Styled by a stylesheet: the Content-Security-Policy refuses an inline <style>.
    assert "style-src 'self'" in forged.headers["content-security-policy"]
    assert "<style" not in refusal and "/static/css/standalone.css" in refusal
    # Refused before anything was stored, so nothing can ever be sent for it.
    assert not await ResponseRequest.objects.filter(session__upstream_id=caller.session_id, origin="console").aexists()
    await caller.wait_for("response.done")
    assert len(_creates(simulator, caller.session_id)) == 1, "only the caller's own response"
    assert watcher.errors == []


async def test_a_65_character_key_is_refused_beside_the_field_and_nothing_is_sent(
    login, connect_caller, daphne, simulator
):
    alice = await login("alice")
    caller = await connect_caller()
    await _open_session(alice, daphne, caller.session_id)
    await alice.page.fill("#metadata-0-key", "k" * 65)
    await alice.page.fill("#metadata-0-value", "v")
    await alice.page.click("[data-send]")
    error = alice.page.locator("#err-metadata-0-key")
    await expect(error).to_contain_text("at most 64")
    await expect(alice.page.locator("#metadata-0-key")).to_have_attribute("aria-invalid", "true")
    # Whether the page or the server refused it, the refusal is shown: nothing was stored.
    assert not await ResponseRequest.objects.filter(session__upstream_id=caller.session_id).aexists()
    assert _creates(simulator, caller.session_id) == []
    # The server cannot be reached: the form says so and keeps what was typed.
    await alice.page.fill("#metadata-0-key", "topic")
    await alice.page.fill("#instructions", "Offer the refund.")
    await alice.page.route("**/responses", lambda route: route.abort())
    await alice.page.click("[data-send]")
    await expect(alice.page.locator("#err-form")).to_contain_text("could not be reached")
    assert await alice.page.input_value("#instructions") == "Offer the refund."
    await expect(alice.page.locator("[data-send]")).to_be_enabled()
    # Instructions pasted over the limit are kept whole and refused, not cut short and sent.
    await alice.page.fill("#instructions", "word " * 6600 + "END")
    await alice.page.click("[data-send]")
    refusal = alice.page.locator("#err-instructions")
    await expect(refusal).to_contain_text("33003 characters; at most 32768")
    assert (await alice.page.input_value("#instructions")).endswith("END")
    assert [e for e in alice.errors if "Failed to load resource" not in e] == []


async def test_a_label_set_on_the_session_page_shows_on_the_dashboard_and_a_long_one_stays_whole(
    login, connect_caller, daphne
):
    alice = await login("alice")
    caller = await connect_caller()
    await _open_session(alice, daphne, caller.session_id)
    page = alice.page
    # Over the limit (pasted, say): refused with its length, kept whole to be shortened.
    await page.fill("#label-input", "Refund " * 30)
    await page.click("[data-label-form] button")
    await expect(page.locator("#err-label")).to_contain_text("209 characters; at most 200")
    assert await page.input_value("#label-input") == ("Refund " * 30)
    # Said to a screen reader too: the field is marked and focused, and reads out its error.
    await expect(page.locator("#label-input")).to_be_focused()
    await expect(page.locator("#label-input")).to_have_attribute("aria-invalid", "true")
    await page.fill("#label-input", "Refund for Jane Roe")
    await page.click("[data-label-form] button")
    await expect(page.locator("[data-label-shown]")).to_have_text("Refund for Jane Roe")
    await page.goto(f"{daphne.http_url}/console/")
    row = page.locator(f'tr[data-session="{caller.session_id}"]')
    await expect(row.locator(".label-cell")).to_have_text("Refund for Jane Roe", timeout=3000)
    assert [e for e in alice.errors if "status of 422" not in e] == [], "only the refusal's 422"


async def test_a_label_a_script_sets_reaches_open_pages_without_a_reload(
    login, connect_caller, daphne, agent_token
):
    """Another operator's session page and the dashboard kept the old label until reloaded."""
    bob = await login("bob")
    caller = await connect_caller()
    await _open_session(bob, daphne, caller.session_id)
    dashboard = await bob.page.context.new_page()
    await dashboard.goto(f"{daphne.http_url}/console/")
    row = dashboard.locator(f'tr[data-session="{caller.session_id}"] .label-cell')
    await expect(row).to_have_text("—")
    async with httpx.AsyncClient(base_url=f"{daphne.http_url}/api/v1", timeout=5) as rest:
        patched = await rest.patch(
            f"/sessions/{caller.session_id}",
            json={"label": "Order 42 · Jane"},
            headers={"Authorization": f"Bearer {agent_token}"},
        )
    assert patched.status_code == 200, patched.text
    await expect(bob.page.locator("[data-label-shown]")).to_have_text("Order 42 · Jane", timeout=3000)
    assert await bob.page.input_value("#label-input") == "Order 42 · Jane", "the form follows"
    assert await bob.page.title() == "Order 42 · Jane · Operator Console"
    await expect(row).to_have_text("Order 42 · Jane", timeout=3000)
    assert bob.errors == []


async def test_the_server_checks_the_form_too(login, connect_caller, daphne, simulator):
    """The same refusal when the browser's own check is bypassed (a POST from the page)."""
    alice = await login("alice")
    caller = await connect_caller()
    await _open_session(alice, daphne, caller.session_id)
    token = await alice.page.locator("input[name=csrfmiddlewaretoken]").first.get_attribute("value")
    answer = await alice.page.request.post(
        f"{daphne.http_url}/console/sessions/{caller.session_id}/responses",
        form={
            "csrfmiddlewaretoken": token, "metadata-TOTAL_FORMS": "1", "metadata-INITIAL_FORMS": "0",
            "metadata-0-key": "k" * 65, "metadata-0-value": "v",
        },
        headers={"Accept": "application/json", "Referer": f"{daphne.http_url}/console/"},
    )
    assert answer.status == 422
    assert "at most 64" in (await answer.json())["errors"]["metadata-0-key"]
    assert _creates(simulator, caller.session_id) == []


async def test_without_javascript_rows_are_added_a_refusal_keeps_the_text_and_the_form_creates_the_request(
    login, connect_caller, daphne, simulator
):
    alice = await login("alice", javascript=False)
    caller = await connect_caller()
    await eventually(lambda: LiveSession.objects.filter(upstream_id=caller.session_id, status="live").exists())
    page = alice.page
    await page.goto(f"{daphne.http_url}/console/sessions/{caller.session_id}/")
    await page.fill("#instructions", "Offer the refund.")
    await page.fill("#metadata-0-key", "ticket")
    await page.fill("#metadata-0-value", "T-9")
    await page.click("[data-add-row]")  # posts; the page comes back with one more row
    await expect(page.locator("#instructions")).to_have_value("Offer the refund.")
    await expect(page.locator("#metadata-0-value")).to_have_value("T-9")
    await page.fill("#metadata-1-key", "oc_request")
    await page.fill("#metadata-1-value", "mine")
    await page.click("[data-add-row]")
    await expect(page.locator("[data-metadata-row]")).to_have_count(3)
    await page.fill("#metadata-2-key", "reason")
    await page.fill("#metadata-2-value", "late delivery")
    async with page.expect_response(lambda r: r.request.method == "POST") as answer:
        await page.click("[data-send]")
    refused = await answer.value
    assert refused.status == 422
    await expect(page.locator("#err-metadata-1-key")).to_have_text("'oc_request' is reserved by the relay.")
    await expect(page.locator("#metadata-1-key")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#instructions")).to_have_value("Offer the refund.")
    await expect(page.locator("#metadata-2-value")).to_have_value("late delivery")
    await alice.screenshot("session-no-js-refused")
    # The wrong row goes without clearing it by hand: ticked "Remove", it is not sent.
    await page.get_by_role("checkbox", name="Remove row 2").check()
    await page.click("[data-send]")
    await page.wait_for_url(f"{daphne.http_url}/console/sessions/{caller.session_id}/")
    await expect(page.locator(".message.success")).to_contain_text("Response requested")
    await caller.wait_for("response.done")
    row = await ResponseRequest.objects.aget(session__upstream_id=caller.session_id, origin="console")
    assert row.metadata == {"ticket": "T-9", "reason": "late delivery"}
    assert row.instructions == "Offer the refund."
    await alice.screenshot("session-no-js")
    # Chromium logs the refused POST's 422 as a failed load: that is the page's answer, not an error.
    assert [e for e in alice.errors if "status of 422" not in e] == []


async def test_add_a_metadata_row_stops_at_fifteen(login, connect_caller, daphne):
    alice = await login("alice")
    caller = await connect_caller()
    await _open_session(alice, daphne, caller.session_id)
    page = alice.page
    add = page.locator("[data-add-row]")
    for _ in range(14):
        await add.click()
    await expect(page.locator("[data-metadata-row]")).to_have_count(15)
    await expect(add).to_be_disabled()
    await expect(page.locator('[name="metadata-TOTAL_FORMS"]')).to_have_value("15")
    await expect(page.locator("[data-remove-check]")).to_have_count(0)  # the script's × instead
    # Each remove button names its row; removing one by keyboard leaves the focus in the form
    # (on the row that took its place), not at the top of the page.
    remove = page.locator("[data-remove-row]").nth(3)
    await expect(remove).to_have_accessible_name("Remove row 4")
    await remove.focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#metadata-3-key")).to_be_focused()
    await expect(add).to_be_enabled()
    await expect(page.locator('[name="metadata-TOTAL_FORMS"]')).to_have_value("14")
    await page.locator("[data-remove-row]").last.focus()
    await page.keyboard.press("Enter")  # the last row: the focus goes to the one before it
    await expect(page.locator("#metadata-12-key")).to_be_focused()
    await expect(page.locator('[name="metadata-TOTAL_FORMS"]')).to_have_value("13")
    await expect(page.locator("[data-metadata-row]").last.locator("input").first).to_have_attribute("name", "metadata-12-key")
    assert alice.errors == []


async def test_a_refusal_sent_from_the_field_itself_is_said_not_silent(login, daphne):
    # Ctrl+Enter in the field (Enter in the label) leaves the focus where it was: focusing it
    # again read nothing out, and a screen reader heard no refusal at all.
    await LiveSession.objects.acreate(model="gpt-realtime", upstream_id="sess_said", status="live")
    alice = await login("alice")
    page = alice.page
    await page.goto(f"{daphne.http_url}/console/sessions/sess_said/")
    await page.fill("#instructions", "x" * 32_769)
    await page.focus("#instructions")
    await page.keyboard.press("Control+Enter")
    status = page.get_by_role("status").filter(has_text="Not sent")
    await expect(status).to_have_text("Not sent: 32769 characters; at most 32768 are allowed.")
    await expect(page.locator("#instructions")).to_be_focused()
    await page.fill("#label-input", "y" * 201)
    await page.focus("#label-input")
    await page.keyboard.press("Enter")
    said = page.locator("[data-label-said]")
    await expect(said).to_have_text("Label not saved: Label is 201 characters; at most 200 are allowed.")
    await page.click("[data-label-form] button")  # the focus moves to the field: it says it
    await expect(page.locator("#label-input")).to_be_focused()
    await expect(said).to_have_text("")
    assert [e for e in alice.errors if "status of 422" not in e] == []


async def test_pages_fit_a_narrow_window_and_the_form_is_keyboard_usable(login, connect_caller, daphne):
    alice = await login("alice", width=PHONE, height=800)
    caller = await connect_caller()
    await _open_session(alice, daphne, caller.session_id)
    page = alice.page
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the session page scrolls sideways by {overflow}px at {PHONE}px"
    await alice.screenshot("session-narrow")
    await page.focus("#instructions")
    await page.keyboard.type("Be brief.")
    await page.keyboard.press("Tab")  # to the mode radios (one stop for the group)
    await page.keyboard.press("Tab")  # to the first metadata key
    focused = await page.evaluate("document.activeElement.id")
    assert focused == "metadata-0-key", f"Tab from the mode radios reaches the first metadata key, not {focused!r}"
    await page.keyboard.type("topic")
    await page.keyboard.press("Tab")
    await page.keyboard.type("billing")
    await page.locator("[data-send]").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator('[data-requests] tr:has(.origin:text("console"))')).to_contain_text("Be brief.")
    # Send is disabled while it posts, which drops its focus: it goes back to the emptied form.
    await expect(page.locator("#instructions")).to_be_focused()
    await page.goto(f"{daphne.http_url}/console/")
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the dashboard scrolls sideways by {overflow}px at {PHONE}px"
    await alice.screenshot("dashboard-narrow")
    assert alice.errors == []


async def test_a_session_that_ends_while_watched_says_so_and_why(login, connect_caller, daphne, simulator):
    alice = await login("alice")
    caller = await connect_caller()
    await _open_session(alice, daphne, caller.session_id)
    page = alice.page
    await page.fill("#instructions", "Typed, never sent.")
    with simulator.configured(delta_interval=0.3, deltas_per_response=20):
        await caller.say("Tell me a long story.")
        await expect(page.locator("[data-transcript] .entry.streaming")).to_have_count(1, timeout=5000)
        await caller.socket.close()
        note = page.locator("[data-ended-note]")
        await expect(note).to_be_visible(timeout=5000)
    await expect(note.locator("[data-end-reason]")).to_have_text("The caller disconnected.")
    await expect(note.locator("[data-end-code]")).to_have_text("caller_closed")
    await expect(page.locator("[data-session-status]").first).to_have_text("ended")
    await expect(page.locator("[data-live-status]")).to_have_text("Session over")
    assert await page.locator("[data-live-status]").get_attribute("data-state") == "over", "no Live dot"
    await expect(page.locator("[data-transcript] .entry.streaming")).to_have_count(0)
    # Nothing left to steer, as on the page reloaded; what was typed is kept in the note.
    await expect(page.locator(".steer-card")).to_have_count(0)
    await expect(page.locator("[data-send], [data-interrupt-form]")).to_have_count(0)
    await expect(note.locator("[data-unsent]")).to_contain_text("Typed, never sent.")
    await alice.screenshot("session-ended-live")

    await eventually(lambda: LiveSession.objects.filter(upstream_id=caller.session_id, status="ended").exists())
    sockets = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    await page.reload()
    await expect(page.locator("[data-end-reason]")).to_have_text("The caller disconnected.")
    await expect(page.locator("[data-end-code]")).to_have_text("caller_closed")
    await expect(page.locator("[data-live-status]")).to_have_text("Session over")
    assert await page.locator("[data-nudge-form]").count() == 0, "an ended session offers no form"
    assert sockets == [], "an ended session's page opens no live socket"
    assert alice.errors == []


async def test_a_send_answered_after_the_end_shows_its_request_failed_not_queued(
    login, connect_caller, daphne
):
    """A server stopping (SIGTERM) ends its sessions; an operator's Send that it took a moment
    before was answered `queued` after the page had the end, and its row said `queued` for
    ever: the end failed it (`session_ended`), as a reload shows. The answer is held here
    until the end has reached the page, as it was then."""
    alice = await login("alice")
    caller = await connect_caller()
    await _open_session(alice, daphne, caller.session_id)
    page = alice.page
    held: asyncio.Future = asyncio.get_running_loop().create_future()
    await page.route("**/responses", lambda route: held.set_result(route))
    await page.fill("#instructions", "Sent just before the stop.")
    await page.click("[data-send]")
    route = await asyncio.wait_for(held, 5)
    taken = {  # the view's answer for a request it stored (the session still live in the table)
        "ok": True, "request": {
            "id": "req_taken_before_the_end", "session_id": caller.session_id, "origin": "console",
            "requested_by": "alice", "instructions": "Sent just before the stop.", "metadata": {},
            "conversation": "auto", "status": "queued", "created_at": "2026-01-01T00:00:00+00:00",
        },
    }
    await caller.socket.close()
    await expect(page.locator("[data-ended-note]")).to_be_visible(timeout=5000)
    await route.fulfill(status=202, json=taken)
    row = page.locator('tr[data-request="req_taken_before_the_end"]')
    await expect(row.locator(".badge")).to_have_text("failed", timeout=3000)
    await expect(row.locator(".reason")).to_have_text("session_ended")
    assert alice.errors == []


async def test_an_ended_session_fits_desktop_and_phone(login, daphne):
    await LiveSession.objects.acreate(
        upstream_id="sess_failed_1", model="gpt-realtime", status="failed", end_reason="upstream_closed",
        end_code=1011, end_detail="The upstream connection was lost (1011).",
    )
    summary = "The upstream ended the session: The upstream connection was lost (1011)."
    for name, width in (("session-ended", 1280), ("session-ended-phone", PHONE)):
        operator = await login("alice", width=width)
        await operator.page.goto(f"{daphne.http_url}/console/sessions/sess_failed_1/")
        await expect(operator.page.locator("[data-end-reason]")).to_have_text(summary)
        await expect(operator.page.locator("[data-end-code]")).to_have_text("upstream_closed · 1011")
        await expect(operator.page.locator("[data-session-status]").first).to_have_text("failed")
        assert await _sideways(operator.page) <= 0, f"the ended session page scrolls sideways at {width}px"
        await operator.screenshot(name)
        assert operator.errors == []


async def test_a_session_id_with_slashes_quotes_and_markup_opens_and_takes_a_nudge(login, daphne):
    await LiveSession.objects.acreate(upstream_id=AWKWARD, model="gpt-realtime", status="live")
    alice = await login("alice")
    page = alice.page
    await expect(page.locator("[data-live-status]")).to_have_text("Live", timeout=5000)
    link = page.locator("[data-sessions] a", has_text=AWKWARD)
    await expect(link).to_have_count(1, timeout=3000)
    assert await page.locator("[data-sessions] b").count() == 0, "the id is text, not markup"
    await alice.screenshot("dashboard-awkward")
    await link.click()
    await expect(page.locator("h1")).to_have_text(AWKWARD)
    # Watched; no process holds this row, so no snapshot comes and the page is not "Connected".
    await expect(page.locator("[data-live-status]")).to_have_text("Waiting for the session…", timeout=5000)
    await page.fill("#instructions", "Hello there.")
    await page.fill("#metadata-0-key", "k")
    await page.fill("#metadata-0-value", "v")
    await page.click("[data-send]")
    await expect(page.locator('[data-requests] tr:has(.origin:text("console")) .badge')).to_have_text("queued", timeout=3000)
    row = await ResponseRequest.objects.select_related("session").aget(origin="console")
    assert row.session.upstream_id == AWKWARD and row.metadata == {"k": "v"}
    assert await _sideways(page) <= 0
    await alice.screenshot("session-awkward")

    phone = await login("bob", width=PHONE)
    await phone.page.goto(page.url)
    await expect(phone.page.locator("h1")).to_have_text(AWKWARD)
    assert await _sideways(phone.page) <= 0, f"a long id wraps on a phone: {await _too_wide(phone.page)}"
    await phone.screenshot("session-awkward-phone")
    await phone.page.goto(f"{daphne.http_url}/console/")
    await expect(phone.page.locator("[data-sessions] a", has_text=AWKWARD)).to_have_count(1, timeout=3000)
    assert await _sideways(phone.page) <= 0
    await phone.screenshot("dashboard-awkward-phone")
    assert alice.errors == [] and phone.errors == []
