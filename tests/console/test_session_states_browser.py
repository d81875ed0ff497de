"""The session page's states in real Chromium (QA report 3): the socket's status apart from the
session's, the form after a send and after a refusal, and a session that ends while watched
looking as it does once reloaded."""

from __future__ import annotations

import base64
import json
import math
import re
import struct

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from playwright.async_api import expect

from apps.sessions.models import LiveSession
from tests.support.realtime import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _may_listen(name: str) -> None:
    user = get_user_model().objects.get(username=name)
    user.user_permissions.add(Permission.objects.get(codename="listen_session"))


async def _shown(page) -> dict:
    """What a page shows of a session's end: the parts a reload and a live end must agree on."""
    return {
        "ended note": await page.locator("[data-ended-note]").is_visible(),
        "ended at": bool(re.search(r"ended \d\d:\d\d", await page.locator(".meta").inner_text())),
        "listen": await page.locator("[data-listen]").count(),
        "steer card": await page.locator(".steer-card").count(),
        "two columns": await page.locator(".columns.two").count(),
        "status": await page.locator("[data-live-status]").inner_text(),
    }


async def test_the_form_resets_and_refusals_take_focus_and_an_end_looks_as_after_a_reload(
    login, connect_caller, daphne
):
    await sync_to_async(_may_listen)("alice")
    alice = await login("alice")
    caller = await connect_caller()
    page = alice.page
    await eventually(lambda: LiveSession.objects.filter(upstream_id=caller.session_id, status="live").exists())
    await page.goto(f"{daphne.http_url}/console/sessions/{caller.session_id}/")

    # Two indicators, two meanings: the session's status badge, and the page's socket in words.
    status = page.locator("[data-live-status]")
    await expect(status).to_have_text("Connected", timeout=5000)
    await expect(page.locator("[data-session-status]")).to_have_text("live")
    dot = await status.evaluate("(e) => getComputedStyle(e, '::before').content")
    assert dot in ("none", "normal"), "no second green dot beside the session's badge"

    # A refusal by the browser's own check: focus lands on the field at fault.
    await page.fill("#instructions", "Offer the refund.")
    await page.fill("#metadata-0-key", "oc_request")
    await page.click("[data-send]")
    await expect(page.locator("#metadata-0-key")).to_be_focused()
    await page.fill("#metadata-0-key", "")
    await page.fill("#instructions", "")
    await page.check("[name=as_note]")
    await page.click("[data-send]")
    await expect(page.locator("#instructions")).to_be_focused()
    await page.uncheck("[name=as_note]")

    # After a send everything is as in a fresh form, the mode too.
    await page.fill("#instructions", "Speak as the manager.")
    await page.check("[name=instructions_mode][value=replace]")
    await page.click("[data-send]")
    await expect(page.locator("[data-send-status]")).to_have_text("Response requested.", timeout=3000)
    # Its tokens count at once, with their cost (the simulator's model has a price).
    await expect(page.locator("[data-usage-text]")).to_have_text(
        re.compile(r"^\d[\d,]* tokens · \$\d+\.\d{4}$"), timeout=5000
    )
    assert await page.locator("[name=instructions_mode][value=append]").is_checked(), "the mode is back to append"
    assert await page.input_value("#instructions") == ""

    # The caller speaks; no transcription is configured, so the words are not known.
    tone = b"".join(struct.pack("<h", int(8000 * math.sin(i / 10))) for i in range(7200))
    for event in (
        {"type": "session.update",
         "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}},
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(tone).decode()},
        {"type": "input_audio_buffer.commit"},
    ):
        await caller.socket.send(json.dumps(event))
    spoken = page.locator(".role-user > p")
    await expect(spoken).to_have_text(["[spoken; no transcript yet]"], timeout=5000)

    # The session ends while watched: the page becomes what a reload shows.
    await expect(page.locator("[data-listen]")).to_have_count(1)
    await caller.socket.close()
    await expect(page.locator("[data-ended-note]")).to_be_visible(timeout=5000)
    await expect(spoken).to_have_text(["[spoken; not transcribed]"]), "no transcript will come now"
    live_end = await _shown(page)
    await alice.screenshot("session-ended-while-watched")
    await page.reload()
    reloaded = await _shown(page)
    await expect(spoken).to_have_text(["[spoken; not transcribed]"])
    assert live_end == reloaded, f"ended live: {live_end}; reloaded: {reloaded}"
    assert reloaded == {
        "ended note": True, "ended at": True, "listen": 0, "steer card": 0, "two columns": 1, "status": "Session over",
    }
    assert alice.errors == []


def _iso(moment: str | None) -> str | None:
    """A moment as the page titles it (JavaScript's toISOString: UTC, milliseconds)."""
    from datetime import UTC, datetime

    if not moment:
        return None
    parsed = datetime.fromisoformat(moment).astimezone(UTC)
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.") + f"{parsed.microsecond // 1000:03d}Z"


def _ended_session_with_three_requests(kind: str) -> str:
    """An ended session of `kind` with an operator's, a caller's and the server's response,
    each 37 ms (the server's 0 ms) from request to start."""
    from datetime import timedelta
    from uuid import uuid4

    from django.utils import timezone

    from apps.sessions.models import ResponseRequest

    session = LiveSession.objects.create(
        id=uuid4(), upstream_id=f"sess_js_latency_{kind}", model="gpt-realtime", status="ended", kind=kind
    )
    created = timezone.now() - timedelta(seconds=30)
    for origin in ("api", "caller", "server"):
        ResponseRequest.objects.create(
            id=f"req_{origin}_{kind}", session=session, origin=origin, status="completed", created_at=created,
            started_at=created + timedelta(milliseconds=0 if origin == "server" else 37),
        )
    return session.upstream_id


@pytest.mark.parametrize("kind", ["relay", "sip"])
async def test_the_script_shows_latency_only_for_a_request_the_console_sent(login, daphne, kind):
    """As the server renders the rows (test_session_page_server): no 0 ms for a response that
    was only seen as it started, in the rows and in the chart."""
    session_id = await sync_to_async(_ended_session_with_three_requests)(kind)
    alice = await login("alice")
    page = alice.page
    await page.goto(f"{daphne.http_url}/console/sessions/{session_id}/")
    await expect(page.locator("[data-latency-caption]")).to_contain_text("Request → start latency,")
    shown = dict(await page.locator("[data-requests] tr").evaluate_all(
        "(rows) => rows.map((r) => [r.dataset.request, r.querySelector('.latency').textContent])"
    ))
    # The script's rows are the server's: each time machine-readable, its full moment its title.
    times = await page.locator("[data-requests] time").evaluate_all(
        "(ts) => ts.map((t) => [t.getAttribute('datetime'), t.title])"
    )
    assert len(times) == 3 and all(iso and title == _iso(iso) for iso, title in times), times
    caller = "37 ms" if kind == "relay" else ""
    assert shown == {f"req_api_{kind}": "37 ms", f"req_caller_{kind}": caller, f"req_server_{kind}": ""}
    points = 2 if kind == "relay" else 1
    assert await page.locator("[data-latency-chart] circle").count() == points
    assert alice.errors == []


async def test_a_session_whose_process_died_is_not_shown_connected_and_then_says_it_was_lost(login, daphne):
    """A session page reconnecting after its server was killed (SIGKILL) said "Connected" to a
    session no process held, until a sweep failed it: the page is connected once the session
    answers (its snapshot), and here none does."""
    from datetime import timedelta

    from django.utils import timezone

    held_elsewhere = {"process_id": "a-process-that-died", "status": "live", "model": "gpt-realtime"}
    await LiveSession.objects.acreate(
        upstream_id="sess_dead_process", heartbeat_at=timezone.now() + timedelta(hours=1), **held_elsewhere
    )
    alice = await login("alice")
    page = alice.page
    frames: list[str] = []
    page.on("websocket", lambda socket: socket.on("framereceived", lambda frame: frames.append(frame)))
    await page.goto(f"{daphne.http_url}/console/sessions/sess_dead_process/")
    status = page.locator("[data-live-status]")
    await eventually(lambda: any('"type": "label"' in f for f in frames))  # watched: the server answered
    await expect(status).to_have_text("Waiting for the session…")
    # Its heartbeat goes stale: the server's sweep fails it, and the page says so.
    await LiveSession.objects.filter(upstream_id="sess_dead_process").aupdate(heartbeat_at=timezone.now() - timedelta(hours=1))
    await expect(status).to_have_text("Session over", timeout=10000)
    await expect(page.locator("[data-end-code]")).to_have_text("session_lost")
    await expect(page.locator("[data-session-status]")).to_have_text("failed")
    assert alice.errors == []
