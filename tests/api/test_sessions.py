"""Sessions, notes and interrupts through the REST hook (CONTRACT section 2)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from django.utils import timezone

from apps.api.schemas import RequestOut, SessionOut
from apps.sessions import selectors
from apps.sessions.db import db_async
from apps.sessions.history import writer as history
from apps.sessions.models import LiveSession, ResponseRequest
from tests.support.realtime import user_text

pytestmark = pytest.mark.django_db(transaction=True)


async def _stream(caller, text: str = "Tell me a story.") -> None:
    await caller.send({"type": "conversation.item.create", "item": user_text(text)})
    await caller.send({"type": "response.create", "event_id": "evt_story"})
    await caller.until("response.created")


async def test_live_sessions_list_shows_counts_and_the_active_response(caller, rest, simulator):
    with simulator.configured(delta_interval=0.2):
        await _stream(caller)
        await rest.post(f"/sessions/{caller.session_id}/responses", json={})
        await history.flush()
        listed = await rest.get("/sessions", params={"status": "live"})
        assert listed.status_code == 200
        [session] = [s for s in listed.json()["items"] if s["id"] == caller.session_id]
        assert session["status"] == "live" and session["model"] == "gpt-realtime"
        assert session["queued"] == 1
        assert session["origin_counts"] == {"caller": 1, "console": 0, "api": 1, "server": 0}
        active = [e for e in caller.events if e["type"] == "response.created"][0]["response"]["id"]
        assert session["active_response_id"] == active
        assert session["ended_at"] is None and session["started_at"]
        one = await rest.get(f"/sessions/{caller.session_id}")
        assert one.json() == session
        await caller.until("response.done", 2)

    ended = await rest.get("/sessions", params={"status": "ended"})
    assert caller.session_id not in [s["id"] for s in ended.json()["items"]]


async def test_bad_status_filter_is_422_naming_it(rest):
    response = await rest.get("/sessions", params={"status": "sleeping"})
    assert response.status_code == 422
    assert "status" in response.json()["error"]["fields"]


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/sessions", [("statu", "live")], "statu"),  # misspelt: it would list every session
        ("/sessions", [("status", "live"), ("status", "ended")], "status"),  # which one?
        ("/sessions", [("limit", "1"), ("limit", "2")], "limit"),
        ("/sessions/{id}/responses", [("limt", "1")], "limt"),
        ("/sessions/{id}/responses", [("limit", "1"), ("limit", "2")], "limit"),
    ],
)
async def test_an_unknown_or_repeated_list_parameter_is_422_naming_it(
    caller, rest, path, query, field
):
    response = await rest.get(path.format(id=caller.session_id), params=query)
    assert response.status_code == 422, (query, response.text[:200])
    error = response.json()["error"]
    assert error["code"] == "invalid_fields" and field in error["fields"], error
    assert field in error["message"]


async def test_unknown_session_and_request_are_404(rest):
    assert (await rest.get("/sessions/sess_missing")).status_code == 404
    assert (await rest.get("/sessions/sess_missing/responses")).status_code == 404
    missing = await rest.get("/responses/req_missing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "response_not_found"


async def test_a_sessions_requests_are_listed_oldest_first(caller, rest):
    await caller.send({"type": "conversation.item.create", "item": user_text("hi")})
    await caller.send({"type": "response.create"})
    await caller.until("response.done")
    posted = (await rest.post(f"/sessions/{caller.session_id}/responses", json={"metadata": {"n": "2"}})).json()
    await caller.until("response.done", 2)
    await history.flush()
    items = (await rest.get(f"/sessions/{caller.session_id}/responses")).json()["items"]
    assert [item["origin"] for item in items] == ["caller", "api"]
    assert items[1]["id"] == posted["id"] and items[1]["metadata"] == {"n": "2"}
    assert items[0]["created_at"] <= items[1]["created_at"]
    assert all(item["status"] == "completed" for item in items)
    assert items[0]["requested_by"] == "token:caller" and items[1]["requested_by"] == "token:script"


async def test_note_adds_a_conversation_item_without_a_response(caller, rest, simulator):
    note = await rest.post(
        f"/sessions/{caller.session_id}/notes", json={"text": "The customer is a VIP.", "role": "system"}
    )
    assert note.status_code == 201, note.text
    body = note.json()
    assert body["role"] == "system" and body["text"] == "The customer is a VIP."
    assert body["id"].startswith("item_") and len(body["id"]) <= 32
    await caller.until("conversation.item.done")
    received = [e for _, e in simulator.sim.received(caller.session_id)]
    assert [e["type"] for e in received] == ["conversation.item.create"], "no response was asked for"
    item = received[0]["item"]
    assert item["id"] == body["id"] and item["role"] == "system"
    assert item["content"] == [{"type": "input_text", "text": "The customer is a VIP."}]
    assert not [e for e in caller.events if e["type"] == "error"]


async def test_note_validation_and_ended_session(caller, rest):
    url = f"/sessions/{caller.session_id}/notes"
    for body, field in (({}, "text"), ({"text": ""}, "text"), ({"text": "x", "role": "assistant"}, "role"),
                        ({"text": "x", "extra": 1}, "extra")):
        response = await rest.post(url, json=body)
        assert response.status_code == 422, (body, response.text)
        assert field in response.json()["error"]["fields"]
    assert (await rest.post("/sessions/sess_missing/notes", json={"text": "x"})).status_code == 404
    await caller.communicator.disconnect()
    await history.flush()
    assert (await rest.post(url, json={"text": "x"})).status_code == 409


async def test_interrupt_cancels_the_active_response(caller, rest, simulator):
    with simulator.configured(delta_interval=0.1):
        await _stream(caller)
        active = [e for e in caller.events if e["type"] == "response.created"][0]["response"]["id"]
        response = await rest.post(f"/sessions/{caller.session_id}/interrupt")
        assert response.status_code == 202
        assert response.json() == {"session_id": caller.session_id, "response_id": active}
        events = await caller.until("response.done")
    done = [e for e in events if e["type"] == "response.done"][0]["response"]
    assert done["id"] == active and done["status"] == "cancelled"
    await history.flush()
    record = await ResponseRequest.objects.aget(response_id=active)
    assert record.status == "cancelled" and record.origin == "caller"


async def test_interrupt_with_nothing_active_is_202_with_no_response(caller, rest):
    response = await rest.post(f"/sessions/{caller.session_id}/interrupt")
    assert response.status_code == 202 and response.json()["response_id"] is None


@pytest.fixture
def orphan(transactional_db) -> tuple[LiveSession, ResponseRequest]:
    """A session the table says is live, held by no process (its process died)."""
    session = LiveSession.objects.create(
        id=uuid.uuid4(), upstream_id="sess_orphan", model="gpt-realtime", status="live"
    )
    request = ResponseRequest.objects.create(
        id="req_orphan", session=session, origin="api", status="queued", created_at=timezone.now()
    )
    return session, request


async def test_a_session_nobody_holds_answers_503_not_a_false_success(rest, orphan, settings):
    settings.OC_ACTOR_REPLY_TIMEOUT = 0.3
    for method, url, body in (
        ("DELETE", "/responses/req_orphan", None),
        ("POST", "/sessions/sess_orphan/notes", {"text": "x"}),
        ("POST", "/sessions/sess_orphan/interrupt", None),
    ):
        response = await rest.request(method, url, json=body)
        assert response.status_code == 503, (url, response.text)
        assert response.json()["error"]["code"] == "session_unavailable"
        assert response.headers["Retry-After"]
    assert (await ResponseRequest.objects.aget(id="req_orphan")).status == "queued"


async def test_a_session_that_ends_while_asked_is_refused_as_ended_not_unavailable(rest, settings):
    """Its actor ended a moment before (the call was transferred, hung up by the caller) and
    answers nothing; the table said live when read, and says ended a moment later. Seen: a
    hang-up right after a transfer answered 503 "did not answer within 5 s", not 409."""
    settings.OC_ACTOR_REPLY_TIMEOUT = 3.0
    for url in ("/sessions/sess_ending/hangup", "/sessions/sess_ending/interrupt"):
        session = await LiveSession.objects.acreate(
            id=uuid.uuid4(), upstream_id="sess_ending", model="gpt-realtime", status="live",
            kind="sip", call_id="rtc_ending",
        )

        async def the_end_is_written(pk=session.pk) -> None:
            await asyncio.sleep(0.3)
            await LiveSession.objects.filter(pk=pk).aupdate(status="ended", end_reason="upstream_closed")

        started = time.monotonic()
        response, _ = await asyncio.gather(rest.post(url), the_end_is_written())
        assert response.status_code == 409, (url, response.text)
        assert response.json()["error"]["code"] == "session_not_live"
        assert time.monotonic() - started < 2.0, "told once the table shows it, not at the timeout"
        await session.adelete()


async def test_session_answers_are_the_models_to_dict_with_offset_times(caller, rest):
    await caller.communicator.disconnect()
    await history.flush()
    session = await db_async(selectors.session_get)(session_id=caller.session_id)
    expected = session.to_dict()
    assert expected["ended_at"] is not None and expected["end_reason"] == "caller_closed"
    one = (await rest.get(f"/sessions/{caller.session_id}")).json()
    assert one == expected
    assert one["started_at"].endswith("+00:00") and one["ended_at"].endswith("+00:00")
    listed = (await rest.get("/sessions", params={"status": "ended"})).json()["items"]
    assert [s for s in listed if s["id"] == caller.session_id] == [expected]


def test_the_documented_shapes_are_those_of_to_dict(transactional_db):
    session = LiveSession.objects.create(upstream_id="sess_shape", model="m", status="live")
    request = ResponseRequest.objects.create(id="req_shape", session=session, origin="api")
    assert list(SessionOut.model_fields) == list(session.to_dict())
    assert list(RequestOut.model_fields) == list(request.to_dict())
