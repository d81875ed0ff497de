"""The session page's handling of the console socket's messages in real Chromium: the page's
socket goes to the server as usual, and the test adds messages of its own to what the page
receives (Playwright's WebSocket route), as a session's actor would send them."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from playwright.async_api import expect

from apps.sessions.models import LiveSession, ResponseRequest

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TIMED_OUT = "No response.created within 15 s of sending response.create."
LATE = f"{TIMED_OUT} Its response came later and ended completed."


async def _held_elsewhere(upstream_id: str) -> LiveSession:
    """A live session another (healthy) process holds: the page watches it, and only the test
    sends the page that session's messages."""
    from django.utils import timezone

    return await LiveSession.objects.acreate(
        upstream_id=upstream_id, process_id="another-process", status="live", model="gpt-realtime",
        heartbeat_at=timezone.now() + timedelta(hours=1),
    )


async def _watched_page(login, daphne, upstream_id: str):
    """alice's page of the session, its socket routed through the test: (page, route)."""
    alice = await login("alice")
    page = alice.page
    routes = []

    def through(route) -> None:
        route.connect_to_server()
        routes.append(route)

    await page.route_web_socket("**/ws/console/", through)
    await page.goto(f"{daphne.http_url}/console/sessions/{upstream_id}/")
    await expect(page.locator("[data-live-status]")).to_have_text("Waiting for the session…")
    [route] = routes
    return alice, route


async def test_a_late_response_updates_its_failed_request_row_without_announcing_it(login, daphne):
    """The request failed `upstream_timeout`; its response came after all. The actor sends the
    request again, still `failed`, with the response's id and the longer error message: the row
    shows the new message at once, and the status is not said to screen readers again."""
    from django.utils import timezone

    session = await _held_elsewhere("sess_late_response")
    created = timezone.now() - timedelta(seconds=30)
    await ResponseRequest.objects.acreate(
        id="req_late", session=session, origin="console", requested_by="alice", status="failed",
        instructions="Offer the refund.", error_code="upstream_timeout", error_message=TIMED_OUT,
        created_at=created, finished_at=created + timedelta(seconds=15),
    )
    alice, route = await _watched_page(login, daphne, session.upstream_id)
    page = alice.page
    reason = page.locator('tr[data-request="req_late"] .reason')
    await expect(reason).to_have_attribute("title", TIMED_OUT)
    message = {
        "type": "request", "session_id": session.upstream_id, "request_id": "req_late",
        "origin": "console", "requested_by": "alice", "instructions": "Offer the refund.",
        "metadata": {}, "conversation": "auto", "status": "failed",
        "at": (created + timedelta(seconds=20)).timestamp(), "created_at": created.timestamp(),
        "response_id": "resp_late", "error_code": "upstream_timeout", "error_message": LATE,
        "sent_instructions": None,
    }
    route.send(json.dumps(message))
    await expect(reason).to_have_attribute("title", LATE)
    await expect(reason).to_have_text("upstream_timeout")
    assert await page.locator("[data-announce-requests]").text_content() == "", "no news to say"
    assert alice.errors == []


async def test_an_ended_session_with_nothing_said_does_not_say_yet(login, daphne):
    """Reloaded once over, a session nothing was said in said "Nothing said yet." and "no
    request has started yet", as if more could come: it says what was, in the past."""
    await LiveSession.objects.acreate(
        upstream_id="sess_quiet_end", status="ended", model="gpt-realtime", kind="sip",
        end_reason="hung_up",
    )
    alice = await login("alice", width=390, height=844)
    page = alice.page
    await page.goto(f"{daphne.http_url}/console/sessions/sess_quiet_end/")
    said = await page.locator("[data-transcript]").evaluate(
        "(list) => getComputedStyle(list, '::after').content"
    )
    assert said == '"Nothing was said."'
    await expect(page.locator("[data-latency-caption]")).to_have_text(
        "Request → start latency: no request started."
    )
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390, "no overflow"
    assert alice.errors == []
