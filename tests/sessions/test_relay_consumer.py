"""The relay consumer on the real ASGI application (routing, auth middleware) with the real
simulator upstream, driven by Channels' WebsocketCommunicator."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from apps.sessions.history import writer as history
from apps.sessions.housekeeping import housekeeping
from apps.sessions.models import LiveSession, ResponseRequest
from operator_console.asgi import application
from tests.support.realtime import eventually, user_text

pytestmark = pytest.mark.django_db(transaction=True)


def _auth(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


async def _open(headers, subprotocols=None) -> tuple[WebsocketCommunicator, str]:
    communicator = WebsocketCommunicator(
        application, "/v1/realtime?model=gpt-realtime", headers=headers, subprotocols=subprotocols
    )
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    created = await communicator.receive_json_from(timeout=5)
    assert created["type"] == "session.created"
    return communicator, created["session"]["id"]


async def _until(communicator, kind: str, timeout: float = 5.0) -> list[dict]:
    seen = []
    while True:
        event = await communicator.receive_json_from(timeout=timeout)
        seen.append(event)
        if event["type"] == kind:
            return seen


async def _rows(session_id: str) -> list[ResponseRequest]:
    await history.flush()
    return [r async for r in ResponseRequest.objects.filter(session__upstream_id=session_id)]


def _relay_tasks() -> list[asyncio.Task]:
    return [
        t for t in asyncio.all_tasks()
        if t.get_name().startswith(("session-actor-", "upstream-")) and not t.done()
    ]


async def test_frame_that_is_not_a_json_object_gets_an_error_and_the_session_goes_on(
    relay_settings, simulator, api_token
):
    communicator, session_id = await _open(_auth(api_token))
    for frame, code in (("this is not json", "invalid_json"), ("[1, 2]", "invalid_type")):
        await communicator.send_to(text_data=frame)
        error = await communicator.receive_json_from(timeout=5)
        assert error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error"
        assert error["error"]["code"] == code and error["error"]["message"]
    await communicator.send_json_to({"type": "conversation.item.create", "item": user_text("still here?")})
    assert (await communicator.receive_json_from(timeout=5))["type"].startswith("conversation.item.")
    received = [e["type"] for _, e in simulator.sim.received(session_id)]
    assert received == ["conversation.item.create"], "nothing malformed was forwarded"
    await communicator.disconnect()


async def test_out_of_band_response_create_goes_upstream_while_a_response_is_active(
    relay_settings, simulator, api_token
):
    with simulator.configured(delta_interval=0.05):
        communicator, session_id = await _open(_auth(api_token))
        await communicator.send_json_to({"type": "conversation.item.create", "item": user_text("hi")})
        await communicator.send_json_to({"type": "response.create", "event_id": "evt_main"})
        await _until(communicator, "response.created")
        await communicator.send_json_to(
            {"type": "response.create", "event_id": "evt_oob", "response": {"conversation": "none"}}
        )
        events = await _until(communicator, "response.done")
        events += await _until(communicator, "response.done")
    received = {e.get("event_id"): t for t, e in simulator.sim.received(session_id)}
    first_done = next(t for t, e in simulator.sim.sent(session_id) if e["type"] == "response.done")
    assert received["evt_oob"] < first_done, "out-of-band request was not held behind the active one"
    assert not [e for e in events if e["type"] == "error"]
    await communicator.disconnect()


async def test_a_voice_change_after_audio_is_refused_to_the_caller_as_the_service_refuses_it(
    relay_settings, simulator, api_token
):
    """The caller's update without event_id is refused (`cannot_update_voice`, `event_id`
    null): the error is the caller's, unchanged, and the session goes on."""
    with simulator.configured(speech_engine="tone", audio_pace=50.0):
        communicator, _ = await _open(_auth(api_token))
        spoken = {"type": "realtime", "output_modalities": ["audio"]}
        await communicator.send_json_to({"type": "session.update", "session": spoken})
        await _until(communicator, "session.updated")
        hello = {"type": "conversation.item.create", "item": user_text("hi")}
        await communicator.send_json_to(hello)
        await communicator.send_json_to({"type": "response.create"})
        await _until(communicator, "response.done")
        change = {"type": "realtime", "audio": {"output": {"voice": "ash"}}}
        await communicator.send_json_to({"type": "session.update", "session": change})
        error = (await _until(communicator, "error"))[-1]["error"]
        assert (error["code"], error["param"], error["event_id"]) == (
            "cannot_update_voice",
            None,
            None,
        )
        await communicator.send_json_to({"type": "response.create", "event_id": "evt_after"})
        done = (await _until(communicator, "response.done"))[-1]
    assert done["response"]["status"] == "completed"
    await communicator.disconnect()


@pytest.fixture
def refused_credentials(make_token) -> dict[str, list]:
    from apps.sessions.models import ApiToken
    from apps.sessions.tokens import api_token_revoke

    revoked = make_token(name="revoked")
    api_token_revoke(token=ApiToken.objects.get(digest=ApiToken.hash(revoked)))
    return {
        "none": [],
        "wrong": _auth("oct_not-a-real-token"),
        "not_bearer": [(b"authorization", b"Basic dXNlcjpwdw==")],
        "no_scope": _auth(make_token(scopes=["sessions:read", "responses:write"], name="narrow")),
        "revoked": _auth(revoked),
    }


@pytest.mark.parametrize("case", ["none", "wrong", "not_bearer", "no_scope", "revoked"])
async def test_handshake_without_valid_credentials_is_refused_and_opens_no_upstream(
    relay_settings, simulator, refused_credentials, case
):
    headers = refused_credentials[case]
    before = simulator.sim.connections_opened
    communicator = WebsocketCommunicator(application, "/v1/realtime", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert not connected
    # An upstream is opened only by a session's actor, which a refused handshake never makes.
    assert _relay_tasks() == [] and not housekeeping().holders, "no session for a refused caller"
    assert simulator.sim.connections_opened == before


async def test_browser_subprotocol_token_is_accepted(relay_settings, simulator, api_token):
    communicator = WebsocketCommunicator(
        application,
        "/v1/realtime",
        headers=[(b"origin", b"http://127.0.0.1:8000")],
        subprotocols=["realtime", f"openai-insecure-api-key.{api_token}"],
    )
    connected, subprotocol = await communicator.connect(timeout=5)
    assert connected and subprotocol == "realtime"
    assert (await communicator.receive_json_from(timeout=5))["type"] == "session.created"
    await communicator.disconnect()


@pytest.fixture
def operator_cookie(transactional_db) -> bytes:
    user = get_user_model().objects.create_user("op", password="pw-for-tests")
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        (b"http://127.0.0.1:8000", True),
        (b"https://evil.example", False),
        (None, False),
        # Only this site's own origin, as the handshake's scheme and Host header give it:
        (b"https://127.0.0.1:8000", False),  # another scheme
        (b"http://localhost:8000", False),  # another host, though an allowed one
        (b"http://127.0.0.1:8001", False),  # another port
        (b"http://127.0.0.1", False),  # the default port, 80
    ],
)
async def test_cookie_authenticated_handshake_needs_an_allowed_origin(
    relay_settings, simulator, operator_cookie, origin, accepted
):
    headers = [(b"host", b"127.0.0.1:8000"), (b"cookie", operator_cookie)] + ([(b"origin", origin)] if origin else [])
    before = simulator.sim.connections_opened
    communicator = WebsocketCommunicator(application, "/v1/realtime", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected is accepted
    if accepted:
        assert (await communicator.receive_json_from(timeout=5))["type"] == "session.created"
        await communicator.disconnect()
    else:
        assert _relay_tasks() == [] and not housekeeping().holders, "no session for a refused caller"
        assert simulator.sim.connections_opened == before


async def test_token_client_with_a_foreign_origin_is_refused(relay_settings, simulator, api_token):
    communicator = WebsocketCommunicator(
        application, "/v1/realtime", headers=_auth(api_token) + [(b"origin", b"https://evil.example")]
    )
    connected, _ = await communicator.connect(timeout=5)
    assert not connected


async def test_caller_disconnect_mid_response_closes_upstream_and_fails_pending_requests(
    relay_settings, simulator, api_token
):
    with simulator.configured(delta_interval=0.05):
        communicator, session_id = await _open(_auth(api_token))
        await communicator.send_json_to({"type": "conversation.item.create", "item": user_text("hi")})
        await communicator.send_json_to({"type": "response.create", "event_id": "evt_active"})
        await communicator.send_json_to({"type": "response.create", "event_id": "evt_waiting"})
        await _until(communicator, "response.output_text.delta")
        live = [task.get_name() for task in _relay_tasks()]  # what the checks below look for
        assert [n for n in live if n.startswith("session-actor-")] and [
            n for n in live if n.startswith("upstream-")
        ], f"the session's actor and upstream reader are not found by name: {live}"
        loop = asyncio.get_running_loop()
        started = loop.time()
        await communicator.disconnect()
        await eventually(lambda: session_id not in simulator.sim.sessions, timeout=1.0)
        assert loop.time() - started < 1.0, "upstream closed within a second"
    rows = await _rows(session_id)
    assert len(rows) == 2
    assert {(r.event_id, r.status, r.error_code) for r in rows} == {
        ("evt_active", "failed", "session_ended"),
        ("evt_waiting", "failed", "session_ended"),
    }
    session = await LiveSession.objects.aget(upstream_id=session_id)
    assert session.status == "ended" and session.ended_at is not None
    assert _relay_tasks() == [], "no actor or reader task is left running"


async def test_upstream_close_mid_response_closes_caller_with_its_code_and_fails_requests(
    relay_settings, simulator, api_token
):
    with simulator.configured(delta_interval=0.05):
        communicator, session_id = await _open(_auth(api_token))
        await communicator.send_json_to({"type": "conversation.item.create", "item": user_text("hi")})
        await communicator.send_json_to({"type": "response.create", "event_id": "evt_cut"})
        await _until(communicator, "response.output_text.delta")
        await simulator.acall(simulator.sim.close_session(session_id, 1011, "simulated failure"))
        while True:
            output = await communicator.receive_output(timeout=5)
            if output["type"] == "websocket.close":
                break
    assert output["code"] == 1011
    assert output.get("reason"), "the caller is told why"
    await communicator.disconnect()
    rows = await _rows(session_id)
    assert [(r.status, r.error_code) for r in rows] == [("failed", "session_ended")]
    session = await LiveSession.objects.aget(upstream_id=session_id)
    assert session.status == "failed"
    assert _relay_tasks() == []


async def test_upstream_normal_close_passes_its_code_to_the_caller(relay_settings, simulator, api_token):
    communicator, session_id = await _open(_auth(api_token))
    await simulator.acall(simulator.sim.close_session(session_id, 1001, "session_expired"))
    while True:
        output = await communicator.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            break
    assert output["code"] == 1001
    await communicator.disconnect()
    await history.flush()
    session = await LiveSession.objects.aget(upstream_id=session_id)
    assert session.status == "ended"


async def test_caller_response_null_is_rejected_like_upstream_and_not_forwarded(
    relay_settings, simulator, api_token
):
    communicator, session_id = await _open(_auth(api_token))
    await communicator.send_to(text_data=json.dumps({"type": "response.create", "event_id": "evt_null", "response": None}))
    error = await communicator.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["error"]["event_id"] == "evt_null"
    assert error["error"]["param"] == "response"
    assert simulator.sim.received(session_id) == []
    await communicator.disconnect()


async def test_server_started_response_is_recorded_and_the_callers_request_waits_for_it(
    relay_settings, simulator, api_token
):
    with simulator.configured(delta_interval=0.03):
        communicator, session_id = await _open(_auth(api_token))
        server_response = await simulator.acall(simulator.sim.trigger_server_response(session_id))
        created = await _until(communicator, "response.created")
        assert created[-1]["response"]["id"] == server_response
        await communicator.send_json_to({"type": "response.create", "event_id": "evt_after_vad"})
        events = await _until(communicator, "response.done")
        events += await _until(communicator, "response.done")
    assert not [e for e in events if e["type"] == "error"], "no active-response error reached the caller"
    await communicator.disconnect()
    rows = sorted(await _rows(session_id), key=lambda r: r.created_at)
    assert [(r.origin, r.status) for r in rows] == [("server", "completed"), ("caller", "completed")]
    assert rows[0].response_id == server_response
    assert rows[1].sent_at >= rows[0].finished_at


async def test_caller_leaving_while_upstream_connects_ends_cleanly(relay_settings, api_token):
    # A listening socket that never answers the WebSocket handshake: the upstream "hangs".
    reached = asyncio.Event()
    server = await asyncio.start_server(lambda r, w: reached.set(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    relay_settings.OC_UPSTREAM_URL = f"ws://127.0.0.1:{port}/v1"
    try:
        communicator = WebsocketCommunicator(application, "/v1/realtime", headers=_auth(api_token))
        connected, _ = await communicator.connect(timeout=5)
        assert connected
        await asyncio.wait_for(reached.wait(), 5)  # the relay is waiting for the upstream now
        await communicator.disconnect(timeout=3)
    finally:
        server.close()
    assert _relay_tasks() == []
    await history.flush()
    session = await LiveSession.objects.order_by("-started_at").afirst()
    assert (session.status, session.end_reason) == ("ended", "caller_closed")


async def test_unreachable_upstream_tells_the_caller_and_closes_1011(relay_settings, api_token):
    from devtools.services import ReservedPort

    # A reserved port: nothing listens there, and no other worker's server can start to
    # (a port from free_port() could be given to one meanwhile).
    unreachable = ReservedPort()
    try:
        relay_settings.OC_UPSTREAM_URL = f"ws://127.0.0.1:{unreachable.port}/v1"
        communicator = WebsocketCommunicator(application, "/v1/realtime", headers=_auth(api_token))
        connected, _ = await communicator.connect(timeout=5)
        assert connected
        error = await communicator.receive_json_from(timeout=5)
        assert error["type"] == "error" and error["error"]["code"] == "upstream_unavailable"
        closed = await communicator.receive_output(timeout=5)
        assert closed["type"] == "websocket.close" and closed["code"] == 1011
        await communicator.disconnect()
    finally:
        unreachable.release()


async def test_upstream_refusing_the_key_tells_the_caller_what_it_said(relay_settings, api_token):
    relay_settings.OPENAI_API_KEY = "sk-not-the-upstreams-key"
    communicator = WebsocketCommunicator(application, "/v1/realtime", headers=_auth(api_token))
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    error = (await communicator.receive_json_from(timeout=5))["error"]
    assert error["code"] == "upstream_unavailable"
    assert error["message"] == (
        "Could not connect to the upstream: server rejected WebSocket connection: HTTP 401: "
        "Incorrect API key provided."
    ), "a wrong OPENAI_API_KEY is named as the upstream names it, not by its status alone"
    closed = await communicator.receive_output(timeout=5)
    assert closed["type"] == "websocket.close" and closed["code"] == 1011
    await communicator.disconnect()


async def test_an_upstream_refusal_naming_the_key_reaches_no_caller_log_or_console(
    relay_settings, api_token, caplog
):
    """The service names the key it refused, masked (`sk-proj-****…abcd`); a proxy may echo
    it whole. The refusal is passed on to the caller, logged and recorded without either."""
    import websockets

    masked = relay_settings.OPENAI_API_KEY[:8] + "****" + relay_settings.OPENAI_API_KEY[-4:]
    said = f"Incorrect API key provided: {masked}. Sent: Bearer {relay_settings.OPENAI_API_KEY}"

    def refuse(connection, request):
        body = json.dumps({"error": {"code": "invalid_api_key", "message": said}})
        return connection.respond(401, body)

    async with websockets.serve(lambda c: None, "127.0.0.1", 0, process_request=refuse) as up:
        relay_settings.OC_UPSTREAM_URL = f"ws://127.0.0.1:{up.sockets[0].getsockname()[1]}/v1"
        communicator = WebsocketCommunicator(application, "/v1/realtime", headers=_auth(api_token))
        assert (await communicator.connect(timeout=5))[0]
        error = (await communicator.receive_json_from(timeout=5))["error"]
        closed = await communicator.receive_output(timeout=5)
        await communicator.disconnect()
    assert error["message"].endswith("Incorrect API key provided: [redacted]. Sent: [redacted]")
    await history.flush()  # the session's rows are written by the history writer
    session = await LiveSession.objects.filter(end_detail__contains="Incorrect API key").afirst()
    assert session is not None, "the refusal is recorded as the session's end"
    for text in (error["message"], closed.get("reason", ""), session.end_detail, caplog.text):
        assert relay_settings.OPENAI_API_KEY not in text and masked not in text


async def test_upstream_that_never_sends_session_created_is_given_up_on(relay_settings, api_token):
    import websockets

    async def silent(connection):
        await connection.wait_closed()

    async with websockets.serve(silent, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        relay_settings.OC_UPSTREAM_URL = f"ws://127.0.0.1:{port}/v1"
        relay_settings.OC_UPSTREAM_CONNECT_TIMEOUT = 0.5
        communicator = WebsocketCommunicator(application, "/v1/realtime", headers=_auth(api_token))
        connected, _ = await communicator.connect(timeout=5)
        assert connected
        loop = asyncio.get_running_loop()
        started = loop.time()
        error = await communicator.receive_json_from(timeout=5)
        assert error["error"]["code"] == "upstream_timeout"
        closed = await communicator.receive_output(timeout=5)
        assert closed["code"] == 1011 and loop.time() - started < 2.0
        await communicator.disconnect()
    await history.flush()
    session = await LiveSession.objects.order_by("-started_at").afirst()
    assert (session.status, session.end_reason) == ("failed", "upstream_closed")
    assert "did not start the session" in session.end_detail
