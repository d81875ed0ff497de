"""POST/GET/DELETE of response requests through the REST hook, with a live caller session on
the real application and the simulator upstream (CONTRACT section 2)."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.layers import get_channel_layer

from apps.sessions import groups, services
from apps.sessions.history import writer as history
from apps.sessions.models import LiveSession, ResponseRequest
from apps.sessions.overrides import ResponseOverrides
from tests.support.realtime import eventually, user_text

pytestmark = pytest.mark.django_db(transaction=True)

PERSONA = "You are Ava, the support agent of Acme."


def _creates(simulator, session_id: str) -> list[dict]:
    return [e for _, e in simulator.sim.received(session_id) if e["type"] == "response.create"]


def _create_for(simulator, session_id: str, request_id: str) -> dict | None:
    for event in _creates(simulator, session_id):
        if (event.get("response") or {}).get("metadata", {}).get("oc_request") == request_id:
            return event
    return None


async def _row(request_id: str) -> ResponseRequest:
    await history.flush()
    return await ResponseRequest.objects.aget(id=request_id)


async def _start_caller_response(caller, text: str = "Where is my order?") -> None:
    await caller.send({"type": "session.update", "session": {"type": "realtime", "instructions": PERSONA}})
    await caller.until("session.updated")
    await caller.send({"type": "conversation.item.create", "item": user_text(text)})
    await caller.send({"type": "response.create", "event_id": "evt_caller"})
    await caller.until("response.created")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("append", f"{PERSONA}\n\nOffer the refund."), ("replace", "Offer the refund.")],
)
async def test_nudge_during_a_caller_response_is_queued_then_completes_as_asked(
    caller, rest, simulator, mode, expected
):
    with simulator.configured(delta_interval=0.1):
        await _start_caller_response(caller)
        posted = await rest.post(
            f"/sessions/{caller.session_id}/responses",
            json={"instructions": "Offer the refund.", "instructions_mode": mode, "metadata": {"ticket": "T-7"}},
        )
        assert posted.status_code == 202, posted.text
        nudge = posted.json()
        assert nudge["status"] == "queued" and nudge["origin"] == "api"
        assert nudge["requested_by"] == "token:script" and nudge["session_id"] == caller.session_id
        assert _create_for(simulator, caller.session_id, nudge["id"]) is None, "sent while a response was active"

        events = await caller.until("response.done", 2)

    sent = _create_for(simulator, caller.session_id, nudge["id"])
    assert sent is not None, "the nudge reached the upstream"
    assert sent["response"] == {
        "instructions": expected,
        "metadata": {"ticket": "T-7", "oc_request": nudge["id"]},
    }, "exactly the operator's metadata plus oc_request, and the effective instructions"
    assert not [e for e in events if e["type"] == "error"]
    done = [e for e in events if e["type"] == "response.done"]
    assert done[1]["response"]["metadata"] is None, "the operator's metadata is not the caller's"
    assert "instructions" not in done[1]["response"]

    await history.flush()  # the table follows the actor by a few milliseconds
    record = (await rest.get(f"/responses/{nudge['id']}")).json()
    assert record["status"] == "completed"
    assert record["instructions"] == "Offer the refund." and record["sent_instructions"] == expected
    assert record["instructions_mode"] == mode and record["metadata"] == {"ticket": "T-7"}
    assert f"[instructions: {expected}]" in record["output_text"]
    first = await _row(
        (await ResponseRequest.objects.filter(origin="caller").afirst()).id
    )
    second = await _row(nudge["id"])
    assert second.sent_at >= first.finished_at, "the nudge waited for the caller's response"


async def test_empty_body_sends_only_oc_request(caller, rest, simulator):
    posted = await rest.post(f"/sessions/{caller.session_id}/responses", content=b"")
    assert posted.status_code == 202, posted.text
    request_id = posted.json()["id"]
    await caller.until("response.done")
    sent = _create_for(simulator, caller.session_id, request_id)
    assert sent["response"] == {"metadata": {"oc_request": request_id}}
    assert (await _row(request_id)).status == "completed"


async def test_empty_object_is_the_same_as_no_body(caller, rest, simulator):
    posted = await rest.post(f"/sessions/{caller.session_id}/responses", json={})
    request_id = posted.json()["id"]
    await caller.until("response.done")
    assert _create_for(simulator, caller.session_id, request_id)["response"] == {
        "metadata": {"oc_request": request_id}
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"metadata": {f"k{i}": "v" for i in range(16)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"metadata": {"k": 7}}, "metadata.k"),
        ({"metadata": {"oc_request": "mine"}}, "metadata"),
        ({"metadata": ["k", "v"]}, "metadata"),
        ({"instructions": "x" * 32_769}, "instructions"),
        ({"instructions": 5}, "instructions"),
        ({"instructions_mode": "prepend"}, "instructions_mode"),
        ({"conversation": "default"}, "conversation"),
        ({"temperature": 0.5}, "temperature"),
    ],
)
async def test_invalid_fields_get_422_naming_the_field_and_nothing_is_sent(
    caller, rest, simulator, body, field
):
    response = await rest.post(f"/sessions/{caller.session_id}/responses", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_fields"
    assert field in error["fields"], error
    assert field in error["message"]
    await caller.settled()
    assert _creates(simulator, caller.session_id) == []
    assert not await ResponseRequest.objects.filter(session__upstream_id=caller.session_id).aexists()


async def test_limits_at_the_edge_are_accepted(caller, rest, simulator):
    body = {
        "metadata": {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(15)},
        "instructions": "x" * 32_768,
    }
    response = await rest.post(f"/sessions/{caller.session_id}/responses", json=body)
    assert response.status_code == 202, response.text
    await caller.until("response.done")
    sent = _create_for(simulator, caller.session_id, response.json()["id"])
    assert len(sent["response"]["metadata"]) == 16, "15 pairs and oc_request: the upstream's 16"


async def test_malformed_json_is_400_and_a_large_body_is_413(caller, rest):
    url = f"/sessions/{caller.session_id}/responses"
    bad = await rest.post(url, content=b'{"instructions": ', headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    big = await rest.post(url, json={"instructions": "x" * (65 * 1024)})
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    assert "64 KiB" in big.json()["error"]["message"]


@pytest.fixture
def narrow_tokens(make_token) -> dict[str, str]:
    return {
        "reader": make_token(scopes=["sessions:read"], name="reader"),
        "writer": make_token(scopes=["responses:write"], name="writer"),
    }


async def test_tokens_and_scopes(caller, rest, narrow_tokens):
    url = f"/sessions/{caller.session_id}/responses"
    assert (await rest.post(url, json={}, headers={"Authorization": ""})).status_code == 401
    unknown = await rest.post(url, json={}, headers={"Authorization": "Bearer oct_unknown"})
    assert unknown.status_code == 401 and unknown.json()["error"]["code"] == "unauthenticated"
    reader = {"Authorization": f"Bearer {narrow_tokens['reader']}"}
    forbidden = await rest.post(url, json={}, headers=reader)
    assert forbidden.status_code == 403 and "responses:write" in forbidden.json()["error"]["message"]
    assert (await rest.get(f"/sessions/{caller.session_id}", headers=reader)).status_code == 200
    writer = {"Authorization": f"Bearer {narrow_tokens['writer']}"}
    assert (await rest.get(f"/sessions/{caller.session_id}", headers=writer)).status_code == 403


async def test_unknown_session_is_404_and_an_ended_one_409(rest, caller):
    missing = await rest.post("/sessions/sess_nope/responses", json={})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "session_not_found"
    await caller.communicator.disconnect()
    await history.flush()
    ended = await rest.post(f"/sessions/{caller.session_id}/responses", json={})
    assert ended.status_code == 409 and ended.json()["error"]["code"] == "session_not_live"


async def test_over_the_queue_limit_is_429(caller, rest, simulator, settings):
    with simulator.configured(delta_interval=1.0):  # the caller's response outlasts the submits
        await _start_caller_response(caller)
        url = f"/sessions/{caller.session_id}/responses"
        posted = [await rest.post(url, json={}) for _ in range(settings.OC_QUEUE_LIMIT)]
        assert [answer.status_code for answer in posted] == [202] * settings.OC_QUEUE_LIMIT
        over = await rest.post(url, json={})
        assert over.status_code == 429 and over.json()["error"]["code"] == "queue_full"
        assert over.headers["Retry-After"]
        # A cancel makes room at once: its 200 is what the table says from then on.
        cancelled = await rest.delete(f"/responses/{posted[-1].json()['id']}")
        assert cancelled.status_code == 200, cancelled.text
        shown = await rest.get(f"/responses/{posted[-1].json()['id']}")
        assert shown.json()["status"] == "cancelled", "the request reads as the DELETE answered"
        room = await rest.post(url, json={})
        assert room.status_code == 202, room.text
        interrupted = await rest.post(f"/sessions/{caller.session_id}/interrupt")
        assert interrupted.status_code == 202


async def test_a_callers_refused_conversation_value_leaves_the_history_readable(caller, rest):
    await caller.send(
        {"type": "response.create", "event_id": "evt_typo", "response": {"conversation": "nope"}}
    )
    error = (await caller.until("error"))[-1]["error"]
    assert (error["param"], error["event_id"]) == ("response.conversation", "evt_typo")
    await history.flush()
    listed = await rest.get(f"/sessions/{caller.session_id}/responses")
    assert listed.status_code == 200, listed.text
    [request] = listed.json()["items"]
    assert (request["status"], request["conversation"]) == ("failed", "auto")
    assert (await rest.get(f"/responses/{request['id']}")).status_code == 200


async def test_cancel_of_a_queued_request_is_never_sent_and_of_a_sent_one_409(caller, rest, simulator):
    with simulator.configured(delta_interval=0.2):
        await _start_caller_response(caller)
        queued = (await rest.post(f"/sessions/{caller.session_id}/responses", json={})).json()
        later = (await rest.post(f"/sessions/{caller.session_id}/responses", json={})).json()
        cancelled = await rest.delete(f"/responses/{queued['id']}")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"]
        await caller.until("response.done", 2)

    assert _create_for(simulator, caller.session_id, queued["id"]) is None, "a cancelled request was sent"
    assert _create_for(simulator, caller.session_id, later["id"]) is not None
    assert (await _row(queued["id"])).status == "cancelled"
    again = await rest.delete(f"/responses/{later['id']}")
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_cancellable"
    assert (await rest.delete("/responses/req_nope")).status_code == 404


async def test_cancel_answered_by_the_actor_even_before_the_table_knows_the_send(
    caller, rest, simulator, monkeypatch
):
    """The request is sent at once (idle session); the table may still say `queued` when the
    DELETE comes, but the actor knows better: 409, and the request completes."""
    monkeypatch.setattr(history, "gather_seconds", 0.3)  # the table lags behind the actor
    posted = (await rest.post(f"/sessions/{caller.session_id}/responses", json={})).json()
    cancel = await rest.delete(f"/responses/{posted['id']}")
    assert cancel.status_code == 409, cancel.text
    shown = (await rest.get(f"/responses/{posted['id']}")).json()["status"]
    assert shown != "queued", "once the 409 says it was sent, the request reads so too"
    await caller.until("response.done")
    assert (await _row(posted["id"])).status == "completed"


@pytest.fixture
def lost_pings(monkeypatch) -> None:
    """Every ping after a store is lost (the channel layer dropped it): the table is the inbox."""

    async def lost(request) -> None:
        return None

    monkeypatch.setattr(services, "ping", lost)


async def test_a_request_whose_ping_was_lost_is_picked_up_within_five_seconds(caller, simulator, lost_pings):
    request, created = await services.response_request_submit(
        session_id=caller.session_id,
        overrides=ResponseOverrides(instructions="Picked up."),
        origin="api",
        requested_by="test",
    )
    assert created
    loop = asyncio.get_running_loop()
    started = loop.time()
    await caller.until("response.done", timeout=6)
    assert loop.time() - started < 5.0
    assert _create_for(simulator, caller.session_id, request.id) is not None
    assert (await _row(request.id)).status == "completed"


async def test_a_request_cancelled_before_its_lost_ping_arrived_is_never_sent(
    caller, rest, simulator, lost_pings
):
    request, _ = await services.response_request_submit(
        session_id=caller.session_id, overrides=ResponseOverrides(), origin="api", requested_by="test"
    )
    cancelled = await rest.delete(f"/responses/{request.id}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = await rest.delete(f"/responses/{request.id}")
    assert again.status_code == 409 and "is cancelled" in again.json()["error"]["message"], again.text
    # The request arrives after all, as the pickup or a late ping would bring it.
    await get_channel_layer().group_send(
        groups.session_group(request.session_id),
        {"type": groups.SESSION_REQUEST, "request": groups.request_message(request)},
    )
    await caller.settled()
    assert _create_for(simulator, caller.session_id, request.id) is None
    assert (await _row(request.id)).status == "cancelled"


async def test_a_forgotten_request_is_still_known_to_duplicate_pings_and_late_cancels(
    caller, rest, simulator, monkeypatch
):
    """A long session forgets its old finished requests but their ids and final status: a ping
    or pickup that arrives late is not sent again, and a late cancel hears the final status."""
    from apps.realtime import relay

    monkeypatch.setattr(relay, "REMEMBER_FINISHED", 1)
    monkeypatch.setattr(relay, "FORGET_EVERY", 1)
    ids = []
    for n in range(3):
        posted = await rest.post(f"/sessions/{caller.session_id}/responses", json={"metadata": {"n": str(n)}})
        assert posted.status_code == 202, posted.text
        ids.append(posted.json()["id"])
        await caller.until("response.done", n=n + 1)
    first = await _row(ids[0])
    assert first.status == "completed"
    group = groups.session_group(first.session_id)
    await get_channel_layer().group_send(
        group, {"type": groups.SESSION_REQUEST, "request": groups.request_message(first)}
    )
    reply_to = await get_channel_layer().new_channel()
    await get_channel_layer().group_send(
        group, {"type": groups.SESSION_CANCEL, "request_id": ids[0], "reply_to": reply_to}
    )
    reply = await asyncio.wait_for(get_channel_layer().receive(reply_to), 5)
    assert reply["status"] == "completed" and "at" not in reply
    await caller.settled()
    assert len([e for e in _creates(simulator, caller.session_id)
                if e["response"]["metadata"]["oc_request"] == ids[0]]) == 1
    assert (await _row(ids[0])).status == "completed"


async def test_out_of_band_nudge_runs_beside_the_active_response_for_operators_only(caller, rest, simulator):
    layer = get_channel_layer()
    watcher = await layer.new_channel()
    session = await LiveSession.objects.aget(upstream_id=caller.session_id)
    await layer.group_add(groups.watch_group(session.id), watcher)
    try:
        with simulator.configured(delta_interval=0.05):
            await _start_caller_response(caller)
            posted = await rest.post(
                f"/sessions/{caller.session_id}/responses",
                json={"conversation": "none", "instructions": "Summarise the call.", "metadata": {"kind": "summary"}},
            )
            assert posted.status_code == 202
            request_id = posted.json()["id"]
            await caller.until("response.done")
        received = {e.get("event_id"): t for t, e in simulator.sim.received(caller.session_id)}
        first_done = next(t for t, e in simulator.sim.sent(caller.session_id) if e["type"] == "response.done")
        sent = _create_for(simulator, caller.session_id, request_id)
        assert received[sent["event_id"]] < first_done, "not held behind the active response"
        assert sent["response"]["conversation"] == "none"

        record = await eventually(
            lambda: ResponseRequest.objects.filter(id=request_id, status="completed").first(), timeout=5
        )
        assert await caller.communicator.receive_nothing(timeout=0.3)
        oob_ids = {record.response_id}
        seen_by_caller = {
            (e.get("response") or {}).get("id") or e.get("response_id") for e in caller.events
        }
        assert not oob_ids & seen_by_caller, "the caller saw the operator's out-of-band response"

        operator_events = []
        while True:
            message = await asyncio.wait_for(layer.receive(watcher), 2)
            if message["type"] == groups.CONSOLE_FRAME and message["kind"] == groups.CONSOLE_EVENT:
                event = json.loads(message["frame"])["event"]
                operator_events.append(event)
                if '"response.done"' in event:
                    break
        assert any(record.response_id in text for text in operator_events)
        assert any('"response.output_text.delta"' in text for text in operator_events)
    finally:
        await layer.group_discard(groups.watch_group(session.id), watcher)


async def test_idempotency_key_same_body_same_request_other_body_409(caller, rest):
    url = f"/sessions/{caller.session_id}/responses"
    key = {"Idempotency-Key": "nudge-42"}
    first = await rest.post(url, json={"instructions": "Be brief."}, headers=key)
    repeat = await rest.post(url, json={"instructions": "Be brief."}, headers=key)
    assert first.status_code == 202 and repeat.status_code == 200
    assert repeat.json()["id"] == first.json()["id"]
    other = await rest.post(url, json={"instructions": "Be long."}, headers=key)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    too_long = await rest.post(url, json={}, headers={"Idempotency-Key": "k" * 256})
    assert too_long.status_code == 422 and "Idempotency-Key" in too_long.json()["error"]["fields"]


async def test_concurrent_duplicates_yield_one_request(caller, rest, simulator):
    url = f"/sessions/{caller.session_id}/responses"
    answers = await asyncio.gather(
        *[rest.post(url, json={"metadata": {"n": "1"}}, headers={"Idempotency-Key": "race"}) for _ in range(8)]
    )
    assert sorted(a.status_code for a in answers) == [200] * 7 + [202]
    assert len({a.json()["id"] for a in answers}) == 1
    await caller.until("response.done")
    await caller.settled()
    assert len(_creates(simulator, caller.session_id)) == 1, "one request, sent once"
    assert await ResponseRequest.objects.filter(session__upstream_id=caller.session_id).acount() == 1


async def test_cancelling_a_callers_queued_request_tells_the_caller_why(caller, rest, simulator):
    with simulator.configured(delta_interval=0.2):
        await caller.send({"type": "conversation.item.create", "item": user_text("hi")})
        await caller.send({"type": "response.create", "event_id": "evt_one"})
        await caller.send({"type": "response.create", "event_id": "evt_two"})
        await caller.until("response.created")
        await history.flush()
        second = await ResponseRequest.objects.aget(event_id="evt_two")
        cancelled = await rest.delete(f"/responses/{second.id}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        await caller.until("response.done")
        events = await caller.until("error")
    error = [e for e in events if e["type"] == "error"][0]["error"]
    assert error["code"] == "response_cancelled" and error["event_id"] == "evt_two"
    await caller.settled()
    assert [e.get("event_id") for e in _creates(simulator, caller.session_id)] == ["evt_one"]


async def test_a_second_cancel_before_the_table_knows_the_first_is_409(caller, rest, simulator, monkeypatch):
    """Two DELETEs at once both find the table saying `queued`; the actor cancels the request
    for one, and the other is refused like any other of a request no longer queued (it was a
    500, found by the fuzz)."""
    with simulator.configured(delta_interval=0.2):
        await _start_caller_response(caller)
        queued = (await rest.post(f"/sessions/{caller.session_id}/responses", json={})).json()
        await history.flush()
        monkeypatch.setattr(history, "gather_seconds", 0.5)  # the table lags behind the actor
        first, second = sorted(
            await asyncio.gather(
                rest.delete(f"/responses/{queued['id']}"), rest.delete(f"/responses/{queued['id']}")
            ),
            key=lambda answer: answer.status_code,
        )
        assert first.status_code == 200, first.text
        assert second.status_code == 409, second.text
        assert second.json()["error"]["code"] == "not_cancellable"
        assert "cancelled" in second.json()["error"]["message"]


async def test_a_token_over_its_rate_is_refused_with_429_and_retry_after(rest, settings):
    settings.OC_API_RATE, settings.OC_API_BURST = 1.0, 3
    answers = [await rest.get("/sessions") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "rate_limited" and int(refused.headers["Retry-After"]) >= 1
    assert "1 requests a second" in refused.json()["error"]["message"]


async def test_a_submit_over_its_rate_is_refused_before_it_is_stored(caller, rest, settings):
    settings.OC_API_RATE, settings.OC_API_BURST = 1.0, 2
    url = f"/sessions/{caller.session_id}/responses"
    answers = [await rest.post(url, json={}) for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 429]
    assert answers[-1].json()["error"]["code"] == "rate_limited" and answers[-1].headers["Retry-After"]
    stored = await ResponseRequest.objects.filter(session__upstream_id=caller.session_id, origin="api").acount()
    assert stored == 2, "the refused submit stored nothing"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({}, {}),  # well-formed
        ({"metadata": {"k": 1}}, {}),  # 422 for anyone with a token
        ("{not json", {}),  # 400
        ({"instructions": "x" * 70_000}, {}),  # 413
        ({}, {"Idempotency-Key": "k" * 256}),  # 422 on the header
    ],
    ids=["well-formed", "invalid-field", "malformed-json", "too-large", "long-idempotency-key"],
)
async def test_without_a_valid_token_every_submit_is_401_whatever_else_is_wrong(
    caller, rest, narrow_tokens, body, headers
):
    content = body if isinstance(body, str) else json.dumps(body)
    for url in (f"/sessions/{caller.session_id}/responses", "/sessions/sess_nope/responses"):
        answer = await rest.post(
            url, content=content, headers={"Authorization": "Bearer oct_unknown", **headers}
        )
        assert answer.status_code == 401, (url, answer.json())
        reader = await rest.post(
            url, content=content, headers={"Authorization": f"Bearer {narrow_tokens['reader']}", **headers}
        )
        assert reader.status_code == 403, (url, reader.json())
    assert not await ResponseRequest.objects.filter(session__upstream_id=caller.session_id).aexists()


async def test_out_of_band_requests_are_never_refused_for_a_full_in_conversation_queue(
    caller, rest, simulator, settings
):
    with simulator.configured(delta_interval=1.0):  # the caller's response outlasts the submits
        await _start_caller_response(caller)
        url = f"/sessions/{caller.session_id}/responses"
        for _ in range(settings.OC_QUEUE_LIMIT):
            assert (await rest.post(url, json={})).status_code == 202
        assert (await rest.post(url, json={})).status_code == 429, "the in-conversation queue is full"
        out_of_band = await rest.post(url, json={"conversation": "none", "instructions": "Summarise."})
        assert out_of_band.status_code == 202, out_of_band.text
        assert out_of_band.json()["conversation"] == "none"
        await rest.post(f"/sessions/{caller.session_id}/interrupt")


async def test_a_submit_answers_server_timing_with_its_auth_db_and_ping_phases(caller, rest, settings):
    url = f"/sessions/{caller.session_id}/responses"
    settings.DEBUG = False
    answer = await rest.post(url, json={})
    assert answer.status_code == 202
    phases = dict(part.split(";", 1) for part in answer.headers["Server-Timing"].split(", "))
    assert list(phases) == ["auth", "db", "ping"], answer.headers["Server-Timing"]
    assert all(float(value.removeprefix("dur=")) >= 0 for value in phases.values())
    settings.DEBUG = True
    debug = await rest.post(url, json={"metadata": {"n": "2"}})
    assert 'start;desc="' in debug.headers["Server-Timing"], "the view's start only in DEBUG"
    repeat = await rest.post(url, json={}, headers={"Idempotency-Key": "t"})
    again = await rest.post(url, json={}, headers={"Idempotency-Key": "t"})
    assert again.status_code == 200 and "ping;" not in again.headers["Server-Timing"], "nothing to ping"
    assert repeat.status_code == 202 and "ping;" in repeat.headers["Server-Timing"]


async def test_request_answers_are_the_models_to_dict_with_offset_times(caller, rest):
    posted = await rest.post(
        f"/sessions/{caller.session_id}/responses", json={"instructions": "Be brief.", "metadata": {"k": "v"}}
    )
    assert posted.status_code == 202, posted.text
    body = posted.json()
    row = await ResponseRequest.objects.select_related("session").aget(id=body["id"])
    at_creation = ("id", "session_id", "origin", "instructions", "instructions_mode", "conversation",
                   "metadata", "requested_by", "created_at")
    assert list(body) == list(row.to_dict()), "the keys of to_dict(), in its order"
    assert {k: body[k] for k in at_creation} == {k: row.to_dict()[k] for k in at_creation}
    assert body["created_at"].endswith("+00:00"), body["created_at"]

    await caller.until("response.done")
    await history.flush()
    row = await ResponseRequest.objects.select_related("session").aget(id=body["id"])
    assert (await rest.get(f"/responses/{row.id}")).json() == row.to_dict()
    listed = (await rest.get(f"/sessions/{caller.session_id}/responses")).json()["items"]
    assert listed == [row.to_dict()]
    for name in ("created_at", "sent_at", "started_at", "finished_at"):
        assert listed[0][name].endswith("+00:00"), (name, listed[0][name])


async def test_a_session_can_be_nudged_as_soon_as_its_caller_has_session_created(caller, rest):
    """The id reaches the caller only once the session's row is written: a script the caller
    tells it at once finds the session live (the `caller` fixture returns as soon as its
    `session.created` is in)."""
    found = await rest.get(f"/sessions/{caller.session_id}")
    assert found.status_code == 200 and found.json()["status"] == "live", found.text
    posted = await rest.post(f"/sessions/{caller.session_id}/responses", json={"instructions": "Hi."})
    assert posted.status_code == 202, posted.text
