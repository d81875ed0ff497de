"""Caller input the relay must answer without harm (CONTRACT section 1, rule 5), on the real
application with a real upstream: each refused event gets an `error` event naming it, nothing
of it goes upstream or into the record, and the session goes on."""

from __future__ import annotations

import contextlib
import json
import uuid

import pytest
import websockets
from channels.testing import WebsocketCommunicator

from apps.sessions.history import writer as history
from apps.sessions.models import LiveSession, ResponseRequest
from operator_console.asgi import application
from tests.support.realtime import user_text

pytestmark = pytest.mark.django_db(transaction=True)

DEEP = "[" * 100_000 + "]" * 100_000


async def _open(token: str) -> tuple[WebsocketCommunicator, str]:
    communicator = WebsocketCommunicator(
        application,
        "/v1/realtime?model=gpt-realtime",
        headers=[(b"authorization", f"Bearer {token}".encode())],
    )
    assert (await communicator.connect(timeout=5))[0]
    created = await communicator.receive_json_from(timeout=5)
    return communicator, created["session"]["id"]


async def _until(communicator, kind: str, timeout: float = 5.0) -> list[dict]:
    seen = []
    while not seen or seen[-1]["type"] != kind:
        seen.append(await communicator.receive_json_from(timeout=timeout))
    return seen


async def _a_response_still_completes(communicator) -> None:
    await communicator.send_json_to(
        {"type": "conversation.item.create", "item": user_text("still there?")}
    )
    await communicator.send_json_to({"type": "response.create", "event_id": "evt_after"})
    events = await _until(communicator, "response.done")
    assert events[-1]["response"]["status"] == "completed"


@pytest.mark.parametrize(
    ("frame", "param"),
    [
        pytest.param(DEEP, None, id="array-nested-100000-deep"),
        pytest.param(
            '{"type":"response.create","response":{"metadata":' + DEEP + "}}",
            None,
            id="response-create-nested",
        ),
        pytest.param(
            '{"type":"response.create","event_id":"e1","response":{"instructions":"a \\ud800"}}',
            "response.instructions",
            id="lone-surrogate-instructions",
        ),
        pytest.param(
            '{"type":"response.create","event_id":"e2","response":{"metadata":{"k":"\\udfff"}}}',
            "response.metadata.k",
            id="lone-surrogate-metadata",
        ),
        pytest.param(
            '{"type":"response.create","event_id":"\\ud800x"}',
            "event_id",
            id="lone-surrogate-event-id",
        ),
        pytest.param(
            '{"type":"conversation.item.create","event_id":"e3","item":{"type":"message",'
            '"role":"user","content":[{"type":"input_text","text":"\\ud800"}]}}',
            "item.content[0].text",
            id="lone-surrogate-in-an-item",
        ),
        pytest.param(
            '{"type":"conversation.item.create","item":' + DEEP + "}",
            None,
            id="item-create-nested",
        ),
        pytest.param(
            '{"type":"response.create","event_id":"e4","response":{"metadata":{"topic":null}}}',
            "response.metadata.topic",
            id="null-metadata-value",
        ),
    ],
)
async def test_a_refused_caller_event_gets_an_error_and_loses_nothing(
    relay_settings, simulator, api_token, frame, param
):
    communicator, session_id = await _open(api_token)
    await communicator.send_to(text_data=frame)
    error = await communicator.receive_json_from(timeout=5)
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error" and error["error"]["code"] in (
        "invalid_json",
        "invalid_type",
        "invalid_value",
    )
    assert error["error"]["param"] == param
    assert simulator.sim.received(session_id) == [], "nothing of it went upstream"
    await _a_response_still_completes(communicator)
    await communicator.disconnect()
    await history.flush()
    rows = [r async for r in ResponseRequest.objects.filter(session__upstream_id=session_id)]
    assert [(r.event_id, r.status) for r in rows] == [("evt_after", "completed")], (
        "only the good request is recorded"
    )


async def test_a_caller_over_the_queue_limit_gets_queue_full_and_out_of_band_still_goes(
    relay_settings, simulator, api_token
):
    relay_settings.OC_QUEUE_LIMIT = 2
    with simulator.configured(delta_interval=0.05):
        communicator, _ = await _open(api_token)
        await communicator.send_json_to(
            {"type": "conversation.item.create", "item": user_text("hi")}
        )
        for n in range(3):  # one is sent, two wait
            await communicator.send_json_to({"type": "response.create", "event_id": f"evt_{n}"})
        await communicator.send_json_to({"type": "response.create", "event_id": "evt_over"})
        await communicator.send_json_to(
            {"type": "response.create", "event_id": "evt_oob", "response": {"conversation": "none"}}
        )
        events = await _until(communicator, "error")
        assert (events[-1]["error"]["code"], events[-1]["error"]["event_id"]) == (
            "queue_full",
            "evt_over",
        )
        done = 0
        while done < 4:
            done += (await communicator.receive_json_from(timeout=10))["type"] == "response.done"
    await communicator.disconnect()


@contextlib.asynccontextmanager
async def scripted_upstream(script):
    """A WebSocket upstream that sends session.created, then runs `script(connection)`."""
    session_id = f"sess_{uuid.uuid4().hex}"

    async def serve(connection):
        await connection.send(
            json.dumps(
                {"type": "session.created", "session": {"id": session_id, "instructions": ""}}
            )
        )
        await script(connection)
        await connection.wait_closed()

    async with websockets.serve(serve, "127.0.0.1", 0) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", session_id


async def test_binary_upstream_frames_reach_the_caller_as_binary(relay_settings, api_token):
    async def send_binary(connection):
        await connection.send(b"\x00\x01binary")

    async with scripted_upstream(send_binary) as (url, _):
        relay_settings.OC_UPSTREAM_URL = url
        communicator, _ = await _open(api_token)
        output = await communicator.receive_output(timeout=5)
        assert output == {"type": "websocket.send", "bytes": b"\x00\x01binary"}
        await communicator.disconnect()


async def test_a_callers_response_create_that_times_out_upstream_is_told_to_the_caller(
    relay_settings, api_token
):
    async def never_answer(connection):
        async for _ in connection:
            pass

    async with scripted_upstream(never_answer) as (url, session_id):
        relay_settings.OC_UPSTREAM_URL = url
        relay_settings.OC_SEND_TIMEOUT = 0.3
        communicator, _ = await _open(api_token)
        await communicator.send_json_to({"type": "response.create", "event_id": "evt_lost"})
        error = await communicator.receive_json_from(timeout=5)
        assert (error["type"], error["error"]["code"], error["error"]["event_id"]) == (
            "error",
            "upstream_timeout",
            "evt_lost",
        )
        await communicator.send_json_to(
            {"type": "response.create", "event_id": "evt_next"}
        )  # the session goes on
        assert (await communicator.receive_json_from(timeout=5))["error"]["event_id"] == "evt_next"
        await communicator.disconnect()
    await history.flush()
    session = await LiveSession.objects.aget(upstream_id=session_id)
    rows = [r async for r in ResponseRequest.objects.filter(session=session).order_by("created_at")]
    assert [(r.event_id, r.status, r.error_code) for r in rows] == [
        ("evt_lost", "failed", "upstream_timeout"),
        ("evt_next", "failed", "upstream_timeout"),
    ]
