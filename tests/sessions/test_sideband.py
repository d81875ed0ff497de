"""Attached calls against the real simulator: a session steered through a call's sideband
(`apps/sessions/sideband.py`), the REST hook on it, its end reasons, and call control."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from django.conf import settings
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from apps.realtime.attached import MAX_REATTACHES
from apps.sessions import metrics, selectors
from apps.sessions.db import db_async
from apps.sessions.history import writer as history
from apps.sessions.models import CallAction, LiveSession
from apps.sessions.sideband import attach_call, held
from tests.conftest import UPSTREAM_KEY
from tests.support.webrtc import CallClient

pytestmark = pytest.mark.django_db(transaction=True)


async def until(predicate, timeout: float = 5.0, what: str = "the condition"):
    """Poll `predicate` (sync or async) until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(0.02)


async def row(key) -> LiveSession:
    await history.flush()
    return await LiveSession.objects.aget(id=key)


async def live(actor) -> LiveSession:
    async def named():
        session = await row(actor.key)
        return session if session.status == LiveSession.Status.LIVE else None

    return await until(named, what="the session live")


class Observer:
    """Told by the simulator of every response.create and of each response's start and end:
    counts creates that arrived while a response was active, and responses that overlapped."""

    def __init__(self) -> None:
        self.creates_while_active: list[dict] = []
        self.active: dict[str, str] = {}  # session id → the in-conversation response running
        self.overlaps: list[tuple[str, str]] = []
        self.started: list[str] = []
        self.creates: list[tuple[str, dict]] = []  # (session id, event), as they arrived

    def response_create(self, session, event):
        self.creates.append((session.id, event))
        response = event.get("response") if isinstance(event.get("response"), dict) else {}
        if response.get("conversation") in (None, "auto") and session.active is not None:
            self.creates_while_active.append(event)

    def response_started(self, session, response):
        if response.in_conversation:
            if session.id in self.active:
                self.overlaps.append((self.active[session.id], response.id))
            self.active[session.id] = response.id
            self.started.append(response.id)

    def response_ended(self, session, response):
        if self.active.get(session.id) == response.id:
            del self.active[session.id]


@pytest.fixture
def observer(simulator):
    simulator.sim.observer = watching = Observer()
    yield watching
    simulator.sim.observer = None


@pytest.fixture
async def call(relay_settings, simulator, observer):
    """A WebRTC call placed at the simulator, as a browser would (text replies)."""
    async with CallClient(simulator.url, UPSTREAM_KEY) as client:
        await client.place(session={"type": "realtime", "output_modalities": ["text"]})
        await client.wait_for("session.created")
        yield client


@pytest.fixture
async def attached(relay_settings, simulator):
    """attached(call_id=…, kind=…) → an attached session, live; every one is ended after."""
    actors = []

    async def attach(call_id: str = "rtc_test", kind: str = "webrtc", **fields):
        actor = await attach_call(
            call_id=call_id, kind=kind, model="gpt-realtime", connected_by="test", **fields
        )
        actors.append(actor)
        return actor, await live(actor)

    yield attach
    for actor in actors:
        actor.shutdown()
        await actor.wait_finished()
    await history.flush()


async def test_an_attached_call_is_live_with_its_kind_call_id_and_numbers(call, attached, rest):
    actor, session = await attached(
        call_id=call.call_id, kind="sip", caller_number="+15559998888", dialled_number="+15550001111"
    )
    assert held(actor.key) is actor
    assert (session.kind, session.call_id) == ("sip", call.call_id)
    # Named by the call's own session.id, which the caller's data channel saw too.
    assert session.upstream_id == call.events[0]["session"]["id"]
    answer = await rest.get(f"/sessions/{session.upstream_id}")
    assert answer.status_code == 200
    body = answer.json()
    assert (body["kind"], body["call_id"], body["status"]) == ("sip", call.call_id, "live")
    assert (body["caller_number"], body["dialled_number"]) == ("+15559998888", "+15550001111")
    scraped = text_string_to_metric_families(generate_latest(metrics.REGISTRY).decode())
    live_by_kind = {
        sample.labels["kind"]: sample.value
        for family in scraped
        if family.name == "oc_live_sessions"
        for sample in family.samples
    }
    assert live_by_kind["sip"] == 1, f"/metrics counts the call under its kind: {live_by_kind}"


def creates_received(observer, session_id: str) -> list[dict]:
    return [event for sid, event in observer.creates if sid == session_id]


async def request_status(request_id: str) -> str:
    await history.flush()
    return (await db_async(selectors.request_get)(request_id=request_id)).status


async def test_a_rest_nudge_is_sent_on_the_sideband_and_answered_on_the_callers_channel(
    call, attached, rest, observer
):
    actor, session = await attached(call_id=call.call_id)
    answer = await rest.post(
        f"/sessions/{session.upstream_id}/responses", json={"instructions": "Say hello."}
    )
    assert answer.status_code == 202, answer.text
    request_id = answer.json()["id"]
    await until(
        lambda: [
            e
            for e in creates_received(observer, session.upstream_id)
            if e["response"]["metadata"].get("oc_request") == request_id
        ]
    )
    done = await call.wait_for("response.done")
    assert done["response"]["metadata"]["oc_request"] == request_id  # the caller sees it all
    await until(lambda: request_status(request_id), what="the request's row")
    assert await until(lambda: _is(request_status(request_id), "completed"))


async def _is(value, expected) -> bool:
    return (await value) == expected


async def test_the_callers_own_create_and_three_nudges_at_once_all_complete_none_overlapping(
    call, attached, rest, simulator, observer
):
    actor, session = await attached(call_id=call.call_id)
    url = f"/sessions/{session.upstream_id}/responses"

    async def nudge(n: int) -> str:
        answer = await rest.post(url, json={"instructions": f"Nudge {n}."})
        assert answer.status_code == 202, answer.text
        return answer.json()["id"]

    async def callers_create() -> None:
        call.send({"type": "response.create", "event_id": "evt_callers_own"})

    _, *request_ids = await asyncio.gather(callers_create(), nudge(1), nudge(2), nudge(3))
    await call.wait_for("response.done", count=4, timeout=10.0)
    for request_id in request_ids:
        assert await until(lambda rid=request_id: _is(request_status(rid), "completed"))
    assert observer.overlaps == [] and len(observer.started) == 4
    assert observer.creates_while_active == []  # nothing was even refused
    assert [e for e in call.events if e["type"] == "error"] == []  # no error reached the caller
    session_row = await row(actor.key)
    rows = await db_async(lambda: list(selectors.request_list(session=session_row, limit=10)))()
    assert sorted(r.origin for r in rows) == ["api", "api", "api", "caller"]


async def test_a_call_the_caller_ends_ends_the_session_upstream_closed(call, attached):
    actor, session = await attached(call_id=call.call_id)
    await call.close()
    await actor.wait_finished()
    ended = await row(actor.key)
    assert (ended.status, ended.end_reason, ended.end_code) == ("ended", "upstream_closed", 1000)
    assert held(actor.key) is None


async def test_a_lost_sideband_is_attached_again_and_the_call_is_still_steered(
    call, attached, rest, simulator
):
    actor, session = await attached(call_id=call.call_id)
    # The upstream drops the sideband (1011), the call going on: the console joins it again.
    assert await simulator.acall(simulator.sim.calls.close_sidebands(call.call_id, 1011)) == 1
    await until(lambda: simulator.sim.calls.calls[call.call_id].outputs.sidebands, what="a new sideband")
    answer = await rest.post(f"/sessions/{session.upstream_id}/responses", json={"instructions": "Still here?"})
    assert answer.status_code == 202, answer.text
    request_id = answer.json()["id"]
    assert await until(lambda: _is(request_status(request_id), "completed"))
    still = await row(actor.key)
    assert (still.status, still.upstream_id) == ("live", session.upstream_id)


async def refuse_sidebands(simulator, call_id: str, count: int) -> None:
    """The simulator fails the call's next `count` sideband handshakes (HTTP 500), the call
    going on."""

    async def refuse() -> None:
        simulator.sim.calls.refuse_sidebands(call_id, count)

    await simulator.acall(refuse())


async def test_a_first_sideband_the_upstream_fails_to_open_is_opened_again_and_steered(
    call, attached, rest, simulator, relay_settings
):
    relay_settings.OC_SIDEBAND_RETRY_DELAY = 0.02
    await refuse_sidebands(simulator, call.call_id, 2)
    actor, session = await attached(call_id=call.call_id)
    assert simulator.sim.calls.sidebands_refused.count(call.call_id) == 2
    # Named by the call's own session, as a first open that worked would be.
    assert session.upstream_id == call.events[0]["session"]["id"]
    answer = await rest.post(f"/sessions/{session.upstream_id}/responses", json={"instructions": "Hi."})
    assert answer.status_code == 202, answer.text
    assert await until(lambda: _is(request_status(answer.json()["id"]), "completed"))


async def test_a_sideband_the_upstream_never_opens_ends_the_session_after_its_tries(
    call, relay_settings, simulator
):
    relay_settings.OC_SIDEBAND_RETRY_DELAY = 0.01
    tries = MAX_REATTACHES + 1
    await refuse_sidebands(simulator, call.call_id, tries)
    actor = await attach_call(call_id=call.call_id, kind="webrtc", model="gpt-realtime", connected_by="test")
    await actor.wait_finished()
    ended = await row(actor.key)
    assert (ended.status, ended.end_reason) == ("failed", "upstream_closed")
    assert f"Could not open the call's sideband ({tries} tries): " in ended.end_detail
    assert "HTTP 500" in ended.end_detail, ended.end_detail  # the upstream's own answer
    assert simulator.sim.calls.sidebands_refused.count(call.call_id) == tries
    assert simulator.sim.calls.get(call.call_id).status == "active"  # the call itself goes on


async def test_a_request_made_while_a_lost_sideband_is_opened_again_waits_and_goes_once(
    call, attached, rest, simulator, observer, relay_settings
):
    relay_settings.OC_SIDEBAND_RETRY_DELAY = 0.2  # two refusals: no sideband for 0.6 s
    actor, session = await attached(call_id=call.call_id)
    await refuse_sidebands(simulator, call.call_id, 2)
    assert await simulator.acall(simulator.sim.calls.close_sidebands(call.call_id, 1011)) == 1
    await until(lambda: call.call_id in simulator.sim.calls.sidebands_refused, what="a refusal")
    answer = await rest.post(f"/sessions/{session.upstream_id}/responses", json={"instructions": "Back?"})
    assert answer.status_code == 202, answer.text
    request_id = answer.json()["id"]
    assert await until(lambda: _is(request_status(request_id), "completed"))
    sent = [
        e for e in creates_received(observer, session.upstream_id)
        if e["response"]["metadata"].get("oc_request") == request_id
    ]
    assert len(sent) == 1, sent
    assert simulator.sim.calls.sidebands_refused.count(call.call_id) == 2
    still = await row(actor.key)
    assert (still.status, still.upstream_id) == ("live", session.upstream_id)


async def test_a_lost_sideband_of_a_call_that_is_over_ends_the_session_failed(call, attached, simulator):
    actor, session = await attached(call_id=call.call_id)

    async def lose_the_call_and_its_sideband():
        lost = simulator.sim.calls.calls.pop(call.call_id)  # no longer joinable: refused, 404
        for sideband in list(lost.outputs.sidebands):
            await sideband.close(1011)

    await simulator.acall(lose_the_call_and_its_sideband())
    await actor.wait_finished()
    ended = await row(actor.key)
    assert (ended.status, ended.end_reason, ended.end_code) == ("failed", "upstream_closed", 1011)


async def test_a_hung_up_call_ends_the_session_hung_up(call, attached, rest, simulator):
    actor, session = await attached(call_id=call.call_id)
    # Two operators at once: one hangs up, the other is told the call is over (not that the
    # upstream failed), and only the hang-up that did it is recorded.
    # The other is told at once, not after waiting for an answer from the ended session.
    started = time.monotonic()
    both = await asyncio.gather(*[rest.post(f"/sessions/{session.upstream_id}/hangup") for _ in range(2)])
    assert time.monotonic() - started < settings.OC_ACTOR_REPLY_TIMEOUT
    answer, other = sorted(both, key=lambda a: a.status_code)
    assert answer.status_code == 202, answer.text
    assert other.status_code == 409 and other.json()["error"]["code"] == "session_not_live", other.text
    assert answer.json()["action"] == "hangup" and answer.json()["ok"] is True
    await actor.wait_finished()
    ended = await row(actor.key)
    assert (ended.status, ended.end_reason) == ("ended", "hung_up")
    assert call.call_id in simulator.sim.calls.hangups
    [action] = [a async for a in CallAction.objects.filter(session_id=actor.key)]
    assert (action.action, action.requested_by, action.ok) == ("hangup", "token:script", True)


async def test_a_webrtc_call_is_not_transferred_and_goes_on(call, attached, rest, simulator):
    """The service transfers SIP calls only (its refer is the SIP REFER verb); a phone call's
    transfer is in tests/calls/test_calls_e2e.py."""
    actor, session = await attached(call_id=call.call_id, kind="webrtc")
    answer = await rest.post(f"/sessions/{session.upstream_id}/refer", json={"target_uri": "tel:+15550002222"})
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["code"] == "not_a_phone_call"
    assert "only phone (SIP) calls" in answer.json()["error"]["message"]
    assert all(c != call.call_id for c, _ in simulator.sim.calls.refers)
    assert await CallAction.objects.filter(session_id=actor.key).acount() == 0
    assert (await row(actor.key)).status == "live"


async def test_call_control_refuses_a_relayed_session_an_ended_one_and_a_bad_target(
    call, attached, rest, caller
):
    relayed = await rest.post(f"/sessions/{caller.session_id}/hangup")
    assert relayed.status_code == 409 and relayed.json()["error"]["code"] == "not_a_call"
    assert "relayed" in relayed.json()["error"]["message"]
    assert (await rest.post("/sessions/sess_nope/hangup")).status_code == 404
    actor, session = await attached(call_id=call.call_id)
    for target in ("mailto:x@example.com", "tel:", "sip:", "tel:+1 555", "tel:+1" + "5" * 600, 5):
        bad = await rest.post(f"/sessions/{session.upstream_id}/refer", json={"target_uri": target})
        assert bad.status_code == 422, target
        assert "target_uri" in bad.json()["error"]["fields"], bad.json()
    # A NUL, other control characters and a lone surrogate (sent as JSON escapes) are refused
    # too, as in every other text field: never stored, never sent upstream.
    for target in ("sip:a\x00b@example.com", "sip:agent@example.com\x01", "sip:a\x7fb@example.com",
                   "sip:a\x85b@example.com", "sip:\ud800@example.com", "tel:+15550002222\x00"):
        bad = await rest.post(
            f"/sessions/{session.upstream_id}/refer",
            content=json.dumps({"target_uri": target}),
            headers={"Content-Type": "application/json"},
        )
        assert bad.status_code == 422, (target, bad.text)
        reason = bad.json()["error"]["fields"]["target_uri"]
        # Says what is wrong, not only the rule (pydantic itself refuses a lone surrogate).
        assert "contains" in reason or "unicode" in reason, (target, reason)
    await call.close()
    await actor.wait_finished()
    await history.flush()
    ended = await rest.post(f"/sessions/{session.upstream_id}/refer", json={"target_uri": "tel:+15550002222"})
    assert ended.status_code == 409 and ended.json()["error"]["code"] == "session_not_live"
    assert await CallAction.objects.acount() == 0


async def test_the_process_stopping_ends_attached_sessions_cleanly(call, attached, simulator):
    from apps.sessions.housekeeping import housekeeping

    actor, session = await attached(call_id=call.call_id)
    assert await housekeeping().shutdown() >= 1
    ended = await row(actor.key)
    assert (ended.status, ended.end_reason) == ("ended", "server_shutdown")
    # Not "reconnect": nobody reconnects a call, which goes on without the console.
    assert "the call goes on" in ended.end_detail, ended.end_detail
    assert simulator.sim.calls.get(call.call_id).status == "active"
    await until(lambda: held(actor.key) is None, what="the attached call let go")


async def test_a_sideband_to_an_unknown_call_fails_upstream_closed(relay_settings, simulator):
    refused = simulator.sim.handshakes_refused
    actor = await attach_call(call_id="rtc_nobody", kind="webrtc", model="gpt-realtime", connected_by="test")
    await actor.wait_finished()
    assert simulator.sim.handshakes_refused - refused == 1, "the call is gone: not tried again"
    ended = await row(actor.key)
    assert (ended.status, ended.end_reason, ended.call_id) == ("failed", "upstream_closed", "rtc_nobody")
    assert "404" in ended.end_detail
    assert held(actor.key) is None
