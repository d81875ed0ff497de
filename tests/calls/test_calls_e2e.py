"""End to end on real servers: Daphne serving the console, the standalone simulator upstream
(its key `UPSTREAM_KEY`, recognisable), an `aiortc` caller placing WebRTC calls through the
console, and phone calls announced by the simulator's signed webhooks."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import timedelta

import httpx
import openai
import pytest
import websockets
from django.utils import timezone

from apps.calls.models import CallProfile
from apps.sessions.models import ClientSecret, LiveSession
from tests.calls.support import WEBHOOK_SECRET, incoming_call, signed
from tests.conftest import UPSTREAM_KEY
from tests.sessions.test_sideband import Observer
from tests.support.servers import EMBEDDED_SIMULATOR, ROOT
from tests.support.webrtc import CallClient

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), EMBEDDED_SIMULATOR]


async def mint(daphne, token: str, **body) -> dict:
    async with httpx.AsyncClient(base_url=daphne.http_url, timeout=10) as http:
        response = await http.post("/v1/realtime/client_secrets", json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert UPSTREAM_KEY not in response.text and UPSTREAM_KEY not in str(response.headers)
    return response.json()


async def listed(daphne, token: str, predicate, timeout: float = 10.0) -> dict:
    """The first session of GET /api/v1/sessions that `predicate` accepts (waits for it)."""
    async with httpx.AsyncClient(base_url=daphne.http_url, timeout=10, headers={"Authorization": f"Bearer {token}"}) as http:
        deadline = time.monotonic() + timeout
        while True:
            items = (await http.get("/api/v1/sessions")).json()["items"]
            found = [s for s in items if predicate(s)]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no such session listed: {items}"
            await asyncio.sleep(0.1)


async def test_a_relay_session_opened_with_a_minted_key_starts_configured_as_the_key_says(daphne, simulator, api_token):
    sdk = openai.AsyncOpenAI(base_url=f"{daphne.http_url}/v1", api_key=api_token, max_retries=0)
    secret = await sdk.realtime.client_secrets.create(
        session={"type": "realtime", "model": "gpt-realtime-mini", "instructions": "Speak like a sailor.",
                 "output_modalities": ["text"]},
    )
    await sdk.close()
    caller = openai.AsyncOpenAI(api_key=secret.value, websocket_base_url=daphne.ws_base, max_retries=0)
    async with caller.realtime.connect(model="gpt-realtime") as connection:
        # As from the service: the first event already shows the key's configuration.
        created = await asyncio.wait_for(connection.recv(), 10)
        assert created.type == "session.created"
        assert created.session.instructions == "Speak like a sailor."
        assert created.session.model == "gpt-realtime-mini", "the key's model, not the URL's"
        await connection.session.update(session={"type": "realtime", "instructions": "Now speak like a pirate."})
        updated = await asyncio.wait_for(connection.recv(), 10)
        assert updated.type == "session.updated" and updated.session.instructions == "Now speak like a pirate."
        received = [event["type"] for _, event in simulator.sim.received(created.session.id)]
        assert received[:2] == ["session.update", "session.update"], "the key's update first, then the caller's"
    await caller.close()


async def test_a_webrtc_call_with_a_minted_key_is_live_and_steered(daphne, simulator, api_token):
    # Minted with the `openai` SDK, as against the service.
    sdk = openai.AsyncOpenAI(base_url=f"{daphne.http_url}/v1", api_key=api_token, max_retries=0)
    secret = await sdk.realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 120},
        session={"type": "realtime", "instructions": "Minted for the test.", "output_modalities": ["text"]},
    )
    await sdk.close()
    key = secret.value
    assert key.startswith("ek_oc_") and secret.session.instructions == "Minted for the test."
    assert time.time() + 100 < secret.expires_at <= time.time() + 121
    async with CallClient(f"{daphne.http_url}/v1", key) as call:
        call_id = await call.place()
        assert call_id.startswith("rtc_")
        assert call.location == f"/v1/realtime/calls/{call_id}"
        assert UPSTREAM_KEY not in call.answer
        await call.wait_for("session.created", timeout=10)
        # The key's configuration reached the upstream with the offer.
        accepted = simulator.sim.calls.get(call_id)
        assert accepted.session.instructions == "Minted for the test."

        session = await listed(daphne, api_token, lambda s: s["call_id"] == call_id and s["status"] == "live")
        assert session["kind"] == "webrtc"

        async with httpx.AsyncClient(base_url=daphne.http_url, timeout=10, headers={"Authorization": f"Bearer {api_token}"}) as http:
            nudge = await http.post(f"/api/v1/sessions/{session['id']}/responses", json={"instructions": "Mention order 4711."})
        assert nudge.status_code in (201, 202), nudge.text
        done = await call.wait_for("response.done", timeout=10)
        text = json.dumps(done["response"]["output"])
        assert "Mention order 4711." in text
        assert not [e for e in call.events if e.get("type") == "error"]


async def test_the_callers_create_and_three_nudges_at_once_through_the_console_never_overlap(daphne, simulator, api_token):
    simulator.sim.observer = observer = Observer()
    try:
        key = (await mint(daphne, api_token, session={"type": "realtime", "output_modalities": ["text"]}))["value"]
        async with CallClient(f"{daphne.http_url}/v1", key, media=False) as call:
            call_id = await call.place()
            await call.wait_for("session.created", timeout=10)
            session = await listed(daphne, api_token, lambda s: s["call_id"] == call_id and s["status"] == "live")
            async with httpx.AsyncClient(base_url=daphne.http_url, timeout=10, headers={"Authorization": f"Bearer {api_token}"}) as http:

                async def nudge(n: int) -> None:
                    answer = await http.post(f"/api/v1/sessions/{session['id']}/responses", json={"instructions": f"Nudge {n}."})
                    assert answer.status_code == 202, answer.text

                async def callers_create() -> None:
                    call.send({"type": "response.create"})

                await asyncio.gather(callers_create(), nudge(1), nudge(2), nudge(3))
                await call.wait_for("response.done", count=4, timeout=15)
            assert observer.overlaps == [] and len(observer.started) == 4
            assert [e for e in call.events if e.get("type") == "error"] == []
    finally:
        simulator.sim.observer = None


async def test_an_expired_key_is_refused_by_calls_and_by_the_relay(daphne, api_token):
    key = (await mint(daphne, api_token, expires_after={"anchor": "created_at", "seconds": 10}))["value"]
    await ClientSecret.objects.aupdate(expires_at=timezone.now() - timedelta(seconds=1))
    async with httpx.AsyncClient(base_url=daphne.http_url, timeout=10) as http:
        refused = await http.post(
            "/v1/realtime/calls", content=b"v=0\r\n", headers={"Authorization": f"Bearer {key}", "Content-Type": "application/sdp"}
        )
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "expired_client_secret" and "expired" in refused.json()["error"]["message"]
    with pytest.raises(websockets.InvalidStatus) as relay:
        await websockets.connect(f"{daphne.ws_base}/realtime?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {key}"})
    assert relay.value.response.status_code == 403, "the relay refuses a handshake with 403"
    assert b"expired" in relay.value.response.body


@pytest.fixture
def phone_daphne(daphne_with):
    return daphne_with(OPENAI_WEBHOOK_SECRET=WEBHOOK_SECRET)


def simulate_sip_call(daphne, simulator, *, to: str, caller: str, secret: str = WEBHOOK_SECRET) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "simulate_sip_call", "--to", to, "--from", caller,
         "--upstream", simulator.url, "--api-key", UPSTREAM_KEY, "--secret", secret,
         "--webhook-url", f"{daphne.http_url}/v1/webhooks/openai"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def fast_speech(simulator):
    """The phone caller and the agent speak four times faster than real time."""
    with simulator.configured(audio_pace=4.0):
        yield


async def test_simulate_sip_call_is_accepted_with_the_profile_and_listed_with_its_numbers(phone_daphne, simulator, api_token, fast_speech):
    await CallProfile.objects.acreate(name="Pizza line", dialled_number="+15550100*", instructions="You take pizza orders.", voice="cedar")
    accepts_before = len(simulator.sim.calls.accepts)
    done = await asyncio.to_thread(simulate_sip_call, phone_daphne, simulator, to="+155501009", caller="+15557654321")
    assert done.returncode == 0, done.stderr + done.stdout
    call_id = done.stdout.strip().splitlines()[-1].split()[-1]
    assert call_id.startswith("rtc_"), done.stdout
    accepts = simulator.sim.calls.accepts[accepts_before:]
    assert [(c, s["instructions"], s["audio"]) for c, s in accepts] == [(call_id, "You take pizza orders.", {"output": {"voice": "cedar"}})]
    assert simulator.sim.calls.get(call_id).session.instructions == "You take pizza orders."
    session = await listed(phone_daphne, api_token, lambda s: s["call_id"] == call_id and s["status"] == "live")
    assert (session["kind"], session["caller_number"], session["dialled_number"]) == ("sip", "+15557654321", "+155501009")
    assert session["label"] == "Pizza line"

    # A nudge is spoken to the phone caller: the agent's audio reaches the call, and what it
    # said carries the nudge's instructions.
    phone = simulator.sim.calls.get(call_id)
    rest = httpx.AsyncClient(base_url=phone_daphne.http_url, timeout=10, headers={"Authorization": f"Bearer {api_token}"})
    async with rest:
        # The simulated caller first asks its question (server VAD answers it); a nudge sent
        # while it speaks would be cut by its turn, as on a real call.
        for _ in range(200):
            answered = (await rest.get("/api/v1/responses", params={"session_id": session["id"], "origin": "server", "status": "completed"})).json()["items"]
            if answered:
                break
            await asyncio.sleep(0.1)
        assert answered, "the caller's question was never answered"
        nudge = (await rest.post(f"/api/v1/sessions/{session['id']}/responses", json={"instructions": "Offer the margherita."})).json()
        for _ in range(200):
            request = (await rest.get(f"/api/v1/responses/{nudge['id']}")).json()
            if request["status"] in ("completed", "cancelled", "failed", "incomplete"):
                break
            await asyncio.sleep(0.1)
        assert request["status"] == "completed", request
        assert "Offer the margherita." in (request["output_text"] or ""), request
        assert phone.agent_audio_bytes > 0
        # A transfer reaches the simulator with its target.
        # The scheme in capitals (schemes are case-insensitive): sent upstream as written.
        refer = await rest.post(f"/api/v1/sessions/{session['id']}/refer", json={"target_uri": "TEL:+15550199"})
        assert refer.status_code == 202, refer.text
    assert (call_id, "TEL:+15550199") in simulator.sim.calls.refers


async def sip_call(simulator, daphne, *, to: str, secret: str = WEBHOOK_SECRET, **extra) -> dict:
    """A phone call placed at the simulator, its webhook sent to `daphne` signed with `secret`
    (`extra`: more of the request, e.g. `say=[]` for a caller who says nothing)."""
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"{simulator.url.replace('ws://', 'http://')}/_sim/sip_calls",
            json={"from": "+15559998888", "to": to, "webhook_url": f"{daphne.http_url}/v1/webhooks/openai", "webhook_secret": secret, **extra},
            headers={"Authorization": f"Bearer {UPSTREAM_KEY}"},
        )
    assert response.status_code == 201, response.text
    return response.json()


async def _pending_call(simulator, daphne, to: str = "+15550001111") -> str:
    """A SIP call left pending: the simulator's own webhook was signed with another secret,
    so the console refused it (400) and did nothing."""
    placed = await sip_call(simulator, daphne, to=to, secret="whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC0xMjM0NQ==")
    assert placed["webhook_status"] == 400
    return placed["call_id"]


async def test_forged_old_and_repeated_webhooks_do_nothing(phone_daphne, simulator):
    call_id = await _pending_call(simulator, phone_daphne)
    accepts = simulator.sim.calls.accepts
    before = len(accepts)
    url = f"{phone_daphne.http_url}/v1/webhooks/openai"
    async with httpx.AsyncClient(timeout=10) as http:
        body, headers = signed(incoming_call(call_id))
        headers["webhook-signature"] = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        assert (await http.post(url, content=body, headers=headers)).status_code == 400
        old = signed(incoming_call(call_id), timestamp=int(time.time()) - 400)
        assert (await http.post(url, content=old[0], headers=old[1])).status_code == 400
        assert len(accepts) == before and simulator.sim.calls.get(call_id).status == "pending"

        body, headers = signed(incoming_call(call_id), webhook_id="wh_e2e_repeat")
        first = await http.post(url, content=body, headers=headers)
        again = await http.post(url, content=body, headers=headers)
    assert first.status_code == 200 and first.json()["status"] == "accepted"
    assert again.status_code == 200 and again.json()["status"] == "already_handled"
    assert [c for c, _ in accepts[before:]] == [call_id]


async def test_an_unknown_number_is_rejected_when_the_setting_says_so(daphne_with, simulator):
    strict = daphne_with(OPENAI_WEBHOOK_SECRET=WEBHOOK_SECRET, OC_SIP_REJECT_UNKNOWN="true")
    await CallProfile.objects.all().adelete()
    rejects_before = len(simulator.sim.calls.rejects)
    # What simulate_sip_call asks the simulator for (without a second Django starting up).
    placed = await sip_call(simulator, strict, to="+15553334444")
    assert placed["webhook_status"] == 200
    assert [c for c, _ in simulator.sim.calls.rejects[rejects_before:]] == [placed["call_id"]]
    assert placed["call_id"] not in [c for c, _ in simulator.sim.calls.accepts]


async def test_a_webrtc_call_on_the_embedded_simulator_is_answered_and_hung_up(daphne_with, api_token):
    """`make run`'s shape: no OC_UPSTREAM_URL, no key. The calls REST then goes to the embedded
    simulator (with its placeholder key, as the relay's WebSocket does), both for the offer
    and for call control."""
    daphne = daphne_with(OC_UPSTREAM_URL="", OPENAI_API_KEY="")
    async with CallClient(f"{daphne.http_url}/v1", api_token, media=False) as call:
        call_id = await call.place(session={"type": "realtime", "output_modalities": ["text"]})
        await call.wait_for("session.created", timeout=10)
        session = await listed(daphne, api_token, lambda s: s["call_id"] == call_id and s["status"] == "live")
        async with httpx.AsyncClient(base_url=daphne.http_url, timeout=10, headers={"Authorization": f"Bearer {api_token}"}) as http:
            hangup = await http.post(f"/api/v1/sessions/{session['id']}/hangup")
        assert hangup.status_code == 202, hangup.text
        ended = await listed(daphne, api_token, lambda s: s["id"] == session["id"] and s["status"] == "ended")
        assert ended["end_reason"] == "hung_up"


WRONG_SECRET = "whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC0xMjM0NQ=="


async def _silent_pending_call(simulator, daphne) -> str:
    """A pending SIP call whose caller says nothing (its own webhook refused, as above)."""
    placed = await sip_call(simulator, daphne, to="+15550001111", secret=WRONG_SECRET, say=[])
    assert placed["webhook_status"] == 400
    return placed["call_id"]


async def _attached(daphne, api_token, call_id: str) -> int:
    """How many sessions steer the call, once one is live; then the call is hung up (the
    session-wide Daphne serves other modules, which count its live sessions)."""
    session = await listed(
        daphne, api_token, lambda s: s["call_id"] == call_id and s["status"] == "live"
    )
    steering = await LiveSession.objects.filter(call_id=call_id).acount()
    bearer = {"Authorization": f"Bearer {api_token}"}
    async with httpx.AsyncClient(base_url=daphne.http_url, timeout=10, headers=bearer) as http:
        hangup = await http.post(f"/api/v1/sessions/{session['id']}/hangup")
    assert hangup.status_code == 202, hangup.text
    await listed(daphne, api_token, lambda s: s["id"] == session["id"] and s["status"] == "ended")
    return steering


async def test_a_delivery_repeated_because_the_accept_was_slow_is_steered_once(
    daphne, simulator, api_token
):
    """The upstream stops waiting for the webhook's answer while the console's accept is slow,
    and delivers it again (same webhook-id), twice at once here: the first delivery's work goes
    on, the repeats wait for it and answer 200, and the call is accepted and attached once."""
    call_id = await _silent_pending_call(simulator, daphne)
    simulator.sim.calls.slow_accept(call_id, 0.4)
    body, headers = signed(incoming_call(call_id))
    url = f"{daphne.http_url}/v1/webhooks/openai"
    async with httpx.AsyncClient(timeout=10) as http:
        first = asyncio.create_task(http.post(url, content=body, headers=headers))
        for _ in range(250):
            if simulator.sim.calls.get(call_id).status != "pending":  # the accept was taken
                break
            await asyncio.sleep(0.02)
        else:  # the repeats below must meet the first delivery's work in progress
            raise AssertionError("the console did not take the call's accept within 5 s")
        first.cancel()  # and the upstream stops waiting for the webhook's answer
        with pytest.raises(asyncio.CancelledError):
            await first
        repeats = await asyncio.gather(
            *[http.post(url, content=body, headers=headers) for _ in range(2)]
        )
    assert [r.status_code for r in repeats] == [200, 200], [r.text for r in repeats]
    assert [c for c, _ in simulator.sim.calls.accepts if c == call_id] == [call_id]
    assert await _attached(daphne, api_token, call_id) == 1


async def test_a_repeat_waiting_on_a_first_delivery_that_fails_does_the_work_itself(
    daphne, simulator, api_token
):
    """A repeat arriving while the first delivery is in hand is not answered 200 at once: the
    first then fails (the upstream's accept errs), so the repeat accepts and attaches the call."""
    call_id = await _silent_pending_call(simulator, daphne)
    simulator.sim.calls.slow_accept(call_id, 0.4, status=500)
    body, headers = signed(incoming_call(call_id))
    url = f"{daphne.http_url}/v1/webhooks/openai"
    async with httpx.AsyncClient(timeout=10) as http:
        first = asyncio.create_task(http.post(url, content=body, headers=headers))
        await asyncio.sleep(0.15)
        repeat = await http.post(url, content=body, headers=headers)
        first = await first
    assert first.status_code == 502, first.text
    assert repeat.status_code == 200 and repeat.json()["status"] == "accepted", repeat.text
    assert [c for c, _ in simulator.sim.calls.accepts if c == call_id] == [call_id]
    assert await _attached(daphne, api_token, call_id) == 1
