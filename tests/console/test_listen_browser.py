"""Listen-in in real Chromium: an operator presses Listen and the page's audio graph plays both
sides of a live voice call (samples reach each side's worklet, each analyser shows a level);
an operator without the permission has no Listen button; stopping stops it."""

from __future__ import annotations

import asyncio
import base64

import pytest
import pytest_asyncio
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from playwright.async_api import expect

from apps.simulator.speech import tone_speech
from tests.console.conftest import CHROMIUM_ARGS, PASSWORD, fresh_contexts, launched

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

AUDIO_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
VOICE = {
    "type": "realtime",
    "output_modalities": ["audio"],
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 200,
                               "silence_duration_ms": 300, "create_response": True,
                               "interrupt_response": True},
        },
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
    },
}


@pytest.fixture
def listeners(transactional_db):
    User = get_user_model()
    ann = User.objects.create_user("ann", password=PASSWORD)
    ann.user_permissions.add(*Permission.objects.filter(codename__in=["listen_session", "steer_session"]))
    User.objects.create_user("eve", password=PASSWORD)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def module_audio_browser(chromium_path):
    async with launched(chromium_path, CHROMIUM_ARGS + AUDIO_ARGS) as browser:
        yield browser


@pytest_asyncio.fixture(loop_scope="session")
async def audio_browser(module_audio_browser):
    async with fresh_contexts(module_audio_browser) as browser:
        yield browser


async def _page_as(browser, daphne, name: str):
    page = await (await browser.new_context(viewport={"width": 1280, "height": 800})).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{daphne.http_url}/accounts/login/")
    await page.fill("#id_username", name)
    await page.fill("#id_password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{daphne.http_url}/console/")
    return page, errors


async def _speak(caller, pcm: bytes) -> None:
    """40 ms appends in real time."""
    for offset in range(0, len(pcm), 1920):
        await caller.send({"type": "input_audio_buffer.append",
                           "audio": base64.b64encode(pcm[offset : offset + 1920]).decode()})
        await asyncio.sleep(0.04)


async def test_an_operator_hears_both_sides_and_one_without_the_permission_has_no_button(
    daphne, simulator, audio_browser, listeners, connect_caller
):
    caller = await connect_caller()
    await caller.send({"type": "session.update", "session": VOICE})
    await caller.wait_for("session.updated")

    eve, _ = await _page_as(audio_browser, daphne, "eve")
    await eve.goto(f"{daphne.http_url}/console/sessions/{caller.session_id}/")
    assert await eve.locator("[data-listen-toggle]").count() == 0, "no Listen button without the permission"

    page, errors = await _page_as(audio_browser, daphne, "ann")
    await page.goto(f"{daphne.http_url}/console/sessions/{caller.session_id}/")
    await page.click("[data-listen-toggle]")
    await page.wait_for_selector("[data-listen-status][data-state=live]", timeout=10_000)
    # A toggle's name does not change with its state ("Stop listening" was read as pressed).
    await expect(page.get_by_role("button", name="Listen", exact=True, pressed=True)).to_be_visible()

    with simulator.configured(speech_engine="tone", audio_pace=1.0):
        await _speak(caller, tone_speech("hello can you hear me", 24000).pcm + bytes(48 * 600))
        await caller.wait_for("response.output_audio.delta", timeout=15)
        # Both sides reach their worklets, and each analyser shows a level.
        await page.wait_for_function(
            """() => {
                const box = document.querySelector("[data-listen]");
                const peak = (i) => Number(document.querySelector(`[data-level="${i}"]`).dataset.peak || 0);
                return Number(box.dataset.callerSamples) > 24000 && Number(box.dataset.agentSamples) > 12000
                    && peak(0) > 0.02 && peak(1) > 0.02;
            }""",
            timeout=15_000,
        )
        await caller.wait_for("response.done", timeout=30)

    # A long reply comes faster than it is spoken; the caller cuts it short, and the listener
    # stops hearing it at once (not when the seconds of it that came have played).
    with simulator.configured(speech_engine="tone", audio_pace=0, reply_audio_ms=8000):
        await caller.send({"type": "response.create"})
        await caller.wait_for("response.done", 2, timeout=15)
    item_id = next(e["item_id"] for e in reversed(caller.events)
                   if e["type"] == "response.output_audio.delta")
    agent_level = "document.querySelector('[data-level=\"1\"]').value"
    await page.wait_for_function(f"() => {agent_level} > 0.02", timeout=5000)
    await caller.send({"type": "conversation.item.truncate", "item_id": item_id,
                       "content_index": 0, "audio_end_ms": 500})
    await page.wait_for_function(f"() => {agent_level} === 0", timeout=2000)
    await page.screenshot(path="var/screenshots/listen-live.png")
    await page.set_viewport_size({"width": 390, "height": 844})
    assert await page.evaluate(_no_sideways_scroll()), "no sideways scroll at 390 px"
    await page.screenshot(path="var/screenshots/listen-live-390.png", full_page=True)

    await page.click("[data-listen-toggle]")  # pressed again: stop
    await page.wait_for_selector("[data-listen-status][data-state=stopped]")
    await expect(page.get_by_role("button", name="Listen", exact=True, pressed=False)).to_be_visible()
    assert not errors, errors


def _no_sideways_scroll():
    return "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth"


async def test_a_recorded_call_plays_and_a_click_on_the_timeline_seeks_at_both_sizes(
    daphne, audio_browser, listeners
):
    from asgiref.sync import sync_to_async

    from apps.sessions import recorder
    from apps.sessions.models import LiveSession, ResponseRequest
    from apps.sessions.recorder import Recording

    def recorded() -> LiveSession:
        session = LiveSession.objects.create(model="gpt-realtime", upstream_id="sess_played", status="ended",
                                             end_reason="caller_closed")
        recording = Recording(session.id, started_at=0.0)
        recording.add(0, tone_speech("where is my parcel", 24000).pcm, 0.5)
        recording.add(1, tone_speech("it is on its way to you", 24000).pcm, 3.0)
        recording.note({"id": "item_1", "role": "user", "text": "Where is my parcel?"}, 0.5)
        recording.note({"id": "item_2", "role": "agent", "text": "It is on its way.", "request_id": "req_x"}, 3.0)
        recording.finish(at=6.0)
        assert recorder.flush()
        ResponseRequest.objects.create(id="req_x", session=session, origin="console", status="completed",
                                       requested_by="ann", instructions="Reassure them.")
        return session

    session = await sync_to_async(recorded)()
    page, errors = await _page_as(audio_browser, daphne, "ann")
    await page.goto(f"{daphne.http_url}/console/sessions/sess_played/")
    player = page.locator("[data-recording-audio]")
    await page.wait_for_function(
        "() => document.querySelector('[data-recording-audio]').readyState >= 1", timeout=10_000
    )
    assert await player.evaluate("a => a.duration") == pytest.approx(6.0, abs=0.1)
    await page.locator("[data-seek='3.0']").click()
    await page.wait_for_function("() => document.querySelector('[data-recording-audio]').currentTime >= 3.0")
    await page.screenshot(path="var/screenshots/recording-1280.png", full_page=True)
    await page.set_viewport_size({"width": 390, "height": 844})
    assert await page.evaluate(_no_sideways_scroll()), "no sideways scroll at 390 px"
    await page.screenshot(path="var/screenshots/recording-390.png", full_page=True)
    assert not errors, errors
    await sync_to_async(lambda: session.recording.delete(save=False))()


async def test_why_listening_cannot_start_stays_on_the_page(daphne, audio_browser, listeners):
    """The call ended before the page heard of it: pressing Listen says why, not a close code."""
    from asgiref.sync import sync_to_async

    from apps.sessions.models import LiveSession

    await sync_to_async(LiveSession.objects.create)(
        model="gpt-realtime", upstream_id="sess_gone", status="live"
    )
    page, errors = await _page_as(audio_browser, daphne, "ann")
    await page.goto(f"{daphne.http_url}/console/sessions/sess_gone/")
    # Its socket is open; no process holds the row, so it waits for a snapshot that never comes.
    await page.wait_for_selector("[data-live-status][data-state=waiting]")
    await asyncio.sleep(0.5)  # the page's socket watches the session: it was live then
    await sync_to_async(LiveSession.objects.filter(upstream_id="sess_gone").update)(status="ended")
    await page.click("[data-listen-toggle]")
    await page.wait_for_selector("[data-listen-toggle][aria-pressed=false]")
    status = page.locator("[data-listen-status]")
    assert await status.get_attribute("data-state") == "error"
    assert "Cannot listen to 'sess_gone': the session is ended." in await status.text_content()
    assert not errors, errors


async def test_each_mute_is_named_for_its_side_and_keeps_its_name_when_pressed(
    daphne, audio_browser, listeners
):
    # Both were "Mute", and a pressed one became "Unmute": "Unmute, pressed" to a screen reader.
    from asgiref.sync import sync_to_async

    from apps.sessions.models import LiveSession

    await sync_to_async(LiveSession.objects.create)(
        model="gpt-realtime", upstream_id="sess_mutes", status="live"
    )
    page, errors = await _page_as(audio_browser, daphne, "ann")
    await page.goto(f"{daphne.http_url}/console/sessions/sess_mutes/")
    caller = page.get_by_role("button", name="Mute the caller", exact=True)
    agent = page.get_by_role("button", name="Mute the agent", exact=True)
    await caller.focus(timeout=5000)
    await page.keyboard.press("Enter")
    await page.wait_for_selector('[data-mute="0"][aria-pressed=true]')
    assert await caller.get_attribute("aria-pressed") == "true", "the name stays; pressed is muted"
    assert await agent.get_attribute("aria-pressed") == "false"
    assert not errors, errors
