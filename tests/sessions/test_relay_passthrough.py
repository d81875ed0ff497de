"""Every client event of the `openai` SDK's union, as the SDK writes it, through the relay to a
strict upstream that keeps what it is sent (CONTRACT section 1, rules 1 and 2): the relay's
only changes are the ones the contract names."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
import websockets
from channels.testing import WebsocketCommunicator
from openai._utils import async_maybe_transform
from openai.types.realtime import RealtimeClientEventParam

from operator_console.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


async def sdk_frame(event: dict) -> str:
    """The text the `openai` SDK's `conn.send(event)` puts on the wire."""
    return json.dumps(await async_maybe_transform(event, RealtimeClientEventParam))


class Upstream:
    """A bare upstream: names the session, keeps every frame as received, and answers each
    `response.create` as `answer` says (by default: created and done at once)."""

    def __init__(self) -> None:
        self.frames: list[str | bytes] = []
        self.arrived = asyncio.Event()
        self.socket = None
        self.responses = 0

    def parsed(self) -> list[dict]:
        return [json.loads(f) for f in self.frames if isinstance(f, str)]

    async def wait_for(self, n: int, timeout: float = 5.0) -> list[str | bytes]:
        async with asyncio.timeout(timeout):
            while len(self.frames) < n:
                self.arrived.clear()
                await self.arrived.wait()
        return self.frames

    async def created(self, event: dict, *, done: bool = True) -> str:
        self.responses += 1
        response_id = f"resp_{self.responses}"
        response = event.get("response") or {}
        body = {
            "object": "realtime.response",
            "id": response_id,
            "status": "in_progress",
            "output": [],
            "conversation_id": None if response.get("conversation") == "none" else "conv_1",
            "metadata": response.get("metadata"),
            "usage": None,
        }
        await self.socket.send(json.dumps({"type": "response.created", "event_id": f"ev_c{self.responses}", "response": body}))
        if done:
            await self.done(response_id, body)
        return response_id

    async def done(self, response_id: str, body: dict | None = None, status: str = "completed") -> None:
        body = {**(body or {"id": response_id, "metadata": None}), "status": status}
        await self.socket.send(json.dumps({"type": "response.done", "event_id": f"ev_d{response_id}", "response": body}))

    async def answer(self, frame: str | bytes) -> None:
        if isinstance(frame, str):
            event = json.loads(frame)
            if event.get("type") == "response.create":
                await self.created(event)

    async def serve(self, socket) -> None:
        self.socket = socket
        created = {"type": "session.created", "event_id": "ev_0", "session": {"id": "sess_pass", "instructions": "be kind"}}
        await socket.send(json.dumps(created))
        async for frame in socket:
            self.frames.append(frame)
            self.arrived.set()
            await self.answer(frame)


@contextlib.asynccontextmanager
async def relayed(relay_settings, token: str, upstream: Upstream, path: str = "/v1/realtime?model=gpt-realtime"):
    async with websockets.serve(upstream.serve, "127.0.0.1", 0, max_size=None) as server:
        relay_settings.OC_UPSTREAM_URL = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        communicator = WebsocketCommunicator(
            application, path, headers=[(b"authorization", f"Bearer {token}".encode())]
        )
        assert (await communicator.connect(timeout=5))[0]
        assert (await communicator.receive_json_from(timeout=5))["type"] == "session.created"
        try:
            yield communicator
        finally:
            await communicator.disconnect()


async def _until(communicator, kind: str, timeout: float = 5.0) -> list[dict]:
    seen = []
    while not seen or seen[-1]["type"] != kind:
        seen.append(await communicator.receive_json_from(timeout=timeout))
    return seen


ITEM = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi ☃"}]}

SDK_EVENTS = [
    {"type": "session.update", "session": {"type": "realtime", "instructions": "x", "tools": []}},
    {"type": "conversation.item.create", "item": ITEM, "previous_item_id": "root"},
    {"type": "conversation.item.create", "item": ITEM, "event_id": "evt_item"},
    {"type": "conversation.item.retrieve", "item_id": "item_1"},
    {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 10},
    {"type": "conversation.item.delete", "item_id": "item_1", "event_id": "evt_del"},
    {"type": "input_audio_buffer.append", "audio": "AAAA"},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"},
    {"type": "output_audio_buffer.clear", "event_id": "evt_oac"},
    {"type": "response.cancel"},
    {"type": "response.cancel", "response_id": "resp_x", "event_id": "evt_cx"},
]


async def test_every_sdk_client_event_but_response_create_reaches_the_upstream_byte_for_byte(
    relay_settings, api_token
):
    upstream = Upstream()
    frames = [await sdk_frame(event) for event in SDK_EVENTS]
    async with relayed(relay_settings, api_token, upstream) as caller:
        for frame in frames:
            await caller.send_to(text_data=frame)
        await caller.send_to(bytes_data=b"\x00binary\xff")
        assert await upstream.wait_for(len(frames) + 1) == [*frames, b"\x00binary\xff"]


FULL_RESPONSE = {
    "conversation": "auto",
    "input": [ITEM, {"type": "item_reference", "id": "item_1"}],
    "instructions": "Be brief ☃",
    "max_output_tokens": "inf",
    "metadata": {"topic": "billing"},
    "output_modalities": ["text"],
    "prompt": {"id": "pmpt_1", "variables": {"city": "Paris"}, "version": "2"},
    "tool_choice": {"type": "function", "name": "lookup"},
    "tools": [{"type": "function", "name": "lookup", "description": "d", "parameters": {"type": "object", "properties": {}}}],
    "audio": {"output": {"voice": "marin", "format": {"type": "audio/pcm", "rate": 24000}}},
}


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(FULL_RESPONSE, id="every-field"),
        pytest.param({**FULL_RESPONSE, "conversation": "none", "max_output_tokens": 50}, id="out-of-band"),
        pytest.param({"metadata": None, "prompt": None}, id="nulls"),
        pytest.param(None, id="no-response"),
    ],
)
async def test_a_callers_response_create_reaches_the_upstream_whole_but_for_oc_request(
    relay_settings, api_token, response
):
    upstream = Upstream()
    event = {"type": "response.create", "event_id": "evt_full"}
    if response is not None:
        event["response"] = response
    async with relayed(relay_settings, api_token, upstream) as caller:
        await caller.send_to(text_data=await sdk_frame(event))
        seen = await _until(caller, "response.done")
        sent = upstream.parsed()[0]
        tag = sent["response"]["metadata"].pop("oc_request")
        assert tag.startswith("req_")
        expected = {k: v for k, v in (response or {}).items() if v is not None}
        assert sent == {"type": "response.create", "event_id": "evt_full", "response": {"metadata": {}, **expected}}
        assert [e["response"]["metadata"] for e in seen] == [(response or {}).get("metadata")] * 2


class ClosesWhenTold(Upstream):
    """Closes the session with the code and reason a caller's item names: `close 4002 why`."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = asyncio.get_running_loop().create_future()

    async def serve(self, socket) -> None:
        try:
            await super().serve(socket)
        finally:
            if not self.closed.done():
                self.closed.set_result((socket.close_code, socket.close_reason))

    async def answer(self, frame: str | bytes) -> None:
        event = json.loads(frame)
        if event.get("type") == "conversation.item.create":
            _, code, reason = event["item"]["content"][0]["text"].split(" ", 2)
            await self.socket.close(int(code), reason)


@pytest.mark.parametrize(
    ("code", "reason", "caller_code"),
    [
        (1000, "bye", 1000),
        (1011, "internal", 1011),
        (4002, "invalid_request_error.something", 4002),
        (1008, "policy", 1008),
    ],
)
async def test_the_upstreams_close_code_and_reason_reach_the_caller(
    relay_settings, api_token, code, reason, caller_code
):
    upstream = ClosesWhenTold()
    async with relayed(relay_settings, api_token, upstream) as caller:
        item = {**ITEM, "content": [{"type": "input_text", "text": f"close {code} {reason}"}]}
        await caller.send_json_to({"type": "conversation.item.create", "item": item})
        output = await caller.receive_output(timeout=5)
        assert output == {"type": "websocket.close", "code": caller_code, "reason": reason}


@pytest.mark.parametrize("code", [1000, 4000])
async def test_a_caller_closing_closes_the_upstream(relay_settings, api_token, code):
    upstream = ClosesWhenTold()
    async with relayed(relay_settings, api_token, upstream) as caller:
        await caller.send_json_to({"type": "input_audio_buffer.clear"})
        await upstream.wait_for(1)
        await caller.send_input({"type": "websocket.disconnect", "code": code})
        async with asyncio.timeout(5):
            closed = await upstream.closed
        assert closed[0] == 1000


UPSTREAM_FRAMES = [
    '{"type":"session.updated","event_id":"ev_1","session":{"id":"sess_pass","instructions":"é"}}',
    '{ "type" : "conversation.item.added", "event_id": "ev_2", "item": {"id": "item_1"} }',
    '{"event_id":"ev_3","type":"conversation.item.done","item":{"id":"item_1","type":"message","role":"user","content":[]}}',
    '{"type":"response.created","event_id":"ev_4","response":{"id":"resp_s","status":"in_progress","metadata":{"a":"b"},"conversation_id":"conv_1"}}',
    '{"type":"rate_limits.updated","event_id":"ev_5","rate_limits":[]}',
    '{"type":"response.output_text.delta","event_id":"ev_6","response_id":"resp_s","item_id":"item_2","output_index":0,"content_index":0,"delta":"\\u00e9\\ud83d\\ude00"}',
    '{"type":"response.done","event_id":"ev_7","response":{"id":"resp_s","status":"completed","metadata":{"a":"b"},"usage":{"total_tokens":3}}}',
    '{"type":"error","event_id":"ev_8","error":{"type":"invalid_request_error","code":"x","message":"m","param":null,"event_id":"evt_unknown"}}',
    '{"type":"error","event_id":"ev_9","error":{"type":"invalid_request_error","code":"y","message":"m","param":null,"event_id":null}}',
    '{"type":"some.future_event","event_id":"ev_10","x":[1.50,1e3]}',
    "[1,2]",
    b"\x01\x02",
]


class Says(Upstream):
    """Sends `UPSTREAM_FRAMES` once the caller's first frame has come."""

    async def answer(self, frame: str | bytes) -> None:
        for said in UPSTREAM_FRAMES:
            await self.socket.send(said)


async def test_every_upstream_frame_reaches_the_caller_unchanged_and_in_order(
    relay_settings, api_token
):
    upstream = Says()
    async with relayed(relay_settings, api_token, upstream) as caller:
        await caller.send_json_to({"type": "input_audio_buffer.clear"})
        got = []
        for _ in UPSTREAM_FRAMES:
            output = await caller.receive_output(timeout=5)
            got.append(output.get("text", output.get("bytes")))
        assert got == UPSTREAM_FRAMES


@pytest.mark.e2e
async def test_a_callers_ping_is_answered_through_daphne_and_the_session_goes_on(
    daphne, api_token
):
    headers = {"Authorization": f"Bearer {api_token}"}
    url = f"{daphne.ws_base}/realtime?model=gpt-realtime&oc_label=ping&unknown=1"
    async with websockets.connect(url, additional_headers=headers, ping_interval=None) as socket:
        assert json.loads(await socket.recv())["type"] == "session.created"
        latency = await asyncio.wait_for(await socket.ping(b"are you there"), 5)
        assert latency >= 0
        await socket.send(json.dumps({"type": "response.create", "response": {"conversation": "none"}}))
        async with asyncio.timeout(10):
            while json.loads(await socket.recv())["type"] != "response.done":
                pass
