"""Call control from the session page, in Chromium: a phone call announced by the simulator's
webhook and a WebRTC call placed through the console (an `aiortc` caller), their badge and
buttons, a transfer of the phone call that asks for its target and is refused or accepted, a
hang-up, and the history of who did each."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from apps.sessions.models import CallAction, LiveSession
from tests.calls.test_calls_e2e import sip_call
from tests.console.test_console_browser import _open_session
from tests.support.realtime import eventually
from tests.support.webrtc import CallClient

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def connect_token(make_token) -> str:
    return make_token(name="browser-call")


async def test_an_operator_transfers_a_phone_call(login, daphne, simulator):
    alice = await login("alice")
    page = alice.page
    # A phone call announced by the simulator's signed webhook; its caller says nothing.
    call_id = (await sip_call(simulator, daphne, to="+15550003333", say=[]))["call_id"]
    await eventually(lambda: LiveSession.objects.filter(call_id=call_id, status="live").exists())
    session_id = (await LiveSession.objects.aget(call_id=call_id)).upstream_id
    await _open_session(alice, daphne, session_id)
    await expect(page.locator("[data-caller-sees]")).to_contain_text("The caller’s app sees every event")
    control = page.locator("[data-call-control]")
    await expect(control).to_be_visible()
    await expect(page.locator("[data-call-line]")).to_contain_text(call_id)
    await page.click("[data-refer] summary")
    await alice.screenshot("call-control-transfer")
    # A target that is not a tel: or sip: URI: refused, said why, nothing sent.
    await page.fill("#refer-target", "mailto:someone@example.com")
    await page.click("[data-refer] button[type=submit]")
    await expect(page.locator("#err-target_uri")).to_contain_text("must be a tel: URI")
    await expect(page.locator("#refer-target")).to_have_value("mailto:someone@example.com")
    await alice.screenshot("call-control-transfer-refused")
    await page.set_viewport_size({"width": 390, "height": 844})
    await alice.screenshot("call-control-transfer-refused-phone")
    await page.set_viewport_size({"width": 1280, "height": 800})
    assert all(c != call_id for c, _ in simulator.sim.calls.refers)
    # Mended in the form still open, it reaches the simulator, and the history shows who.
    await page.fill("#refer-target", "tel:+15550002222")
    await page.click("[data-refer] button[type=submit]")
    await expect(page.locator("body")).to_contain_text("transferred to tel:+15550002222")
    assert (call_id, "tel:+15550002222") in simulator.sim.calls.refers
    await expect(page.locator("[data-call-actions]")).to_contain_text("by alice")
    # The transferred call is over: nothing is left to hang up or transfer.
    await expect(page.locator("[data-call-control]")).to_be_hidden()
    await alice.screenshot("call-control-history")
    action = await CallAction.objects.aget(session__upstream_id=session_id)
    assert (action.action, action.requested_by, action.ok) == ("refer", "alice", True)
    # The refused transfer's page came back 422, which Chromium reports; nothing else.
    assert [e for e in alice.errors if "status of 422" not in e] == []


async def test_an_operator_hangs_up_and_a_watcher_sees_no_buttons(login, daphne, simulator, connect_token):
    alice, watcher = await login("alice"), await login("watcher")
    async with CallClient(f"{daphne.http_url}/v1", connect_token) as call:
        call_id = await call.place(session={"type": "realtime", "output_modalities": ["text"]})
        session_id = (await call.wait_for("session.created", timeout=10))["session"]["id"]
        await _open_session(watcher, daphne, session_id)
        await expect(watcher.page.locator("[data-call-control]")).to_have_count(0)
        await _open_session(alice, daphne, session_id)
        # The service transfers phone (SIP) calls only: a WebRTC call offers no transfer.
        await expect(alice.page.locator("[data-refer]")).to_have_count(0)
        await alice.page.click("[data-hangup] summary")
        await alice.page.click("[data-hangup] button[type=submit]")
        await expect(alice.page.locator("body")).to_contain_text("The call was hung up.")
        assert call_id in simulator.sim.calls.hangups
    session = await LiveSession.objects.aget(upstream_id=session_id)
    assert (session.status, session.end_reason) == ("ended", "hung_up")
    await expect(alice.page.locator("[data-call-actions]")).to_contain_text("hang-up by alice")
    await alice.screenshot("call-control-hung-up")
    assert alice.errors == [] and watcher.errors == []
