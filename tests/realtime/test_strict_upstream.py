"""Every client event the relay originates itself, read as a strict GA server reads it
(`tests/support/strict_ga.py`: the SDK's request types with no unknown key at any depth, no
null the type does not allow, exact enums, the service's limits): operators' response
requests of every kind, notes, interrupts, approval decisions (an operator's and the
timeout's), a minted key's configuration, and a rotation's `session.update`, replayed items
and drain. The session is announced as the service announces it (`default_session_config`:
`model`, nulls), and its conversation holds every kind of item the service makes. The relay's
ids are the production ones (`events.new_event_id`, `actor.new_request_id`)."""

from __future__ import annotations

import json
import uuid

import pytest

from apps.realtime import events
from apps.realtime.relay import OperatorRequest, RelayCore, ToUpstream
from apps.realtime.rotation import ToFresh
from apps.sessions.actor import new_request_id
from apps.simulator.session import default_session_config
from tests.support import strict_ga

ANNOUNCED = default_session_config("sess_strict", "gpt-realtime-2025-08-28", "Be kind.")
ANNOUNCED["audio"]["input"]["turn_detection"]["idle_timeout_ms"] = None
METADATA = {f"{index:02d}" + "k" * 62: "v" * 512 for index in range(15)}  # the REST hook's most


def message(item_id: str, role: str, part: dict) -> dict:
    """A message item as the service shows it."""
    return {
        "id": item_id,
        "type": "message",
        "role": role,
        "status": "completed",
        "object": "realtime.item",
        "content": [part],
    }


USER = message("item_user", "user", {"type": "input_audio", "transcript": None, "audio": None})
ASSISTANT = message("item_assistant", "assistant", {"type": "output_audio", "transcript": "Hi."})
TEXT_REPLY = message("item_text", "assistant", {"type": "output_text", "text": "Hi."})
CALL = {
    "id": "item_call",
    "type": "function_call",
    "object": "realtime.item",
    "status": "completed",
    "call_id": "call_1",
    "name": "lookup",
    "arguments": "{}",
}
OUTPUT = {
    "id": "item_output",
    "type": "function_call_output",
    "object": "realtime.item",
    "call_id": "call_1",
    "output": "sunny",
}
APPROVAL = {
    "id": "mcpr_1",
    "type": "mcp_approval_request",
    "name": "lookup",
    "server_label": "crm",
    "arguments": '{"order": 42}',
}
SYSTEM = {
    "id": "item_system",
    "type": "message",
    "role": "system",
    "content": [{"type": "input_text", "text": "Quiet context."}],
}


class Run:
    """A relay core whose upstream answers each `response.create` at once (created, done),
    keeping every text frame the core sends upstream or to a fresh upstream."""

    def __init__(self, *, minted: dict | None = None) -> None:
        self.core = RelayCore(
            fallback_id="sess_fallback",
            connect_timeout=5.0,
            new_request_id=new_request_id,
            new_event_id=events.new_event_id,
            approval_timeout=30.0,
            rotate_after=60.0,
            minted_session=minted,
        )
        self.sent: list[dict] = []
        self.responses = 0
        self.feed(self.core.upstream_attached(now=0.0), now=0.0)
        self.upstream("session.created", now=0.0, session=ANNOUNCED)

    def feed(self, actions: list, *, now: float) -> None:
        for action in actions:
            if isinstance(action, ToUpstream | ToFresh) and isinstance(action.frame, str):
                event = json.loads(action.frame)
                self.sent.append(event)
                if isinstance(action, ToUpstream) and event["type"] == "response.create":
                    self.answer(event, now=now)

    def upstream(self, kind: str, *, now: float, **fields) -> None:
        frame = events.dumps({"type": kind, "event_id": f"ev_{uuid.uuid4().hex[:8]}", **fields})
        self.feed(self.core.upstream_frame(frame, now=now), now=now)

    def answer(self, event: dict, *, now: float, done: bool = True) -> None:
        self.responses += 1
        request = event.get("response", {})
        response = {
            "id": f"resp_{self.responses}",
            "object": "realtime.response",
            "status": "in_progress",
            "metadata": request.get("metadata"),
            "conversation_id": None if request.get("conversation") == "none" else "conv_1",
            "output": [],
        }
        self.upstream("response.created", now=now, response=response)
        if done:
            self.upstream("response.done", now=now, response={**response, "status": "completed"})

    def item(self, item: dict, previous: str | None, *, now: float) -> None:
        self.upstream("conversation.item.added", now=now, previous_item_id=previous, item=item)
        self.upstream("conversation.item.done", now=now, previous_item_id=previous, item=item)


def submit(run: Run, now: float, **fields) -> None:
    stored = OperatorRequest(id=new_request_id(), origin="api", requested_by="script", **fields)
    run.feed(run.core.submit(stored, now=now), now=now)


def conversation(run: Run, now: float) -> None:
    """Every kind of item the service makes, a spoken turn transcribed."""
    run.item(USER, None, now=now)
    run.upstream(
        "conversation.item.input_audio_transcription.completed",
        now=now,
        item_id="item_user",
        content_index=0,
        transcript="Hi.",
    )
    previous = "item_user"
    for item in (ASSISTANT, TEXT_REPLY, CALL, OUTPUT, SYSTEM, APPROVAL):
        run.item(item, previous, now=now)
        previous = item["id"]


def assert_strict(sent: list[dict], expected_types: set[str]) -> None:
    assert expected_types <= {event["type"] for event in sent}
    found = {
        f"{index} {event['type']}": problems
        for index, event in enumerate(sent)
        if (problems := strict_ga.problems(event))
    }
    assert found == {}
    for event in sent:
        assert len(event["event_id"]) <= 32, event["event_id"]


def test_every_event_an_operator_or_the_relay_itself_sends_is_strict_ga():
    run = Run()
    conversation(run, now=1.0)
    submit(run, 2.0, instructions="Offer the upgrade.")  # append
    submit(run, 2.1, instructions="Say goodbye.", instructions_mode="replace", metadata=METADATA)
    submit(run, 2.2, conversation="none", instructions="Summarise.", metadata={"kind": "summary"})
    submit(run, 2.3, conversation="auto")
    submit(run, 2.4)  # no field: the response carries only `oc_request`
    for role in ("system", "user"):
        item_id = f"item_oc{uuid.uuid4().hex[:25]}"  # as services.session_note makes them
        run.feed(run.core.note(item_id=item_id, role=role, text="Context ☃", now=3.0), now=3.0)
    # An interrupt of an active response.
    run.answer({"response": {}}, now=3.1, done=False)
    run.feed(run.core.interrupt(now=3.2), now=3.2)
    run.upstream("response.done", now=3.3, response={"id": f"resp_{run.responses}"})
    # An approval decided by an operator, another left to expire.
    run.feed(run.core.tools.decide(
        "mcpr_1", approve=False, reason="Not this one.", by="ann", origin="console", now=3.4
    ), now=3.4)
    run.item({**APPROVAL, "id": "mcpr_2"}, "mcpr_1", now=3.5)
    run.feed(run.core.tick(now=40.0), now=40.0)
    assert_strict(
        run.sent,
        {"response.create", "conversation.item.create", "response.cancel"},
    )
    approvals = [e["item"] for e in run.sent if e["type"] == "conversation.item.create"]
    assert [a.get("approval_request_id") for a in approvals[-2:]] == ["mcpr_1", "mcpr_2"]


def test_a_rotations_update_replay_and_drain_are_strict_ga():
    run = Run()
    conversation(run, now=1.0)
    core = run.core
    decided = core.tools.decide("mcpr_1", approve=True, reason="", by="ann", origin="api", now=2)
    run.feed(decided, now=2.0)  # a pending approval would hold the rotation
    run.sent.clear()
    deadline = core.next_deadline
    run.feed(core.tick(now=deadline), now=deadline)
    run.feed(core.rotation.fresh_attached(now=deadline), now=deadline)
    run.feed(core.tick(now=60.0), now=60.0)
    replayed = [e for e in run.sent if e["type"] in ("session.update", "conversation.item.create")]
    assert [e["type"] for e in replayed] == ["session.update"] + ["conversation.item.create"] * 7
    fresh = core.rotation
    for kind in ("session.created", "session.updated"):
        said = events.dumps({"type": kind, "session": {"id": "sess_2"}})
        run.feed(fresh.fresh_frame(said, now=60.1), now=60.1)
    for event in replayed[1:]:
        added = {"type": "conversation.item.added", "item": {"id": event["item"]["id"]}}
        run.feed(fresh.fresh_frame(events.dumps(added), now=60.2), now=60.2)
    expected = {"session.update", "conversation.item.create", "conversation.item.retrieve"}
    assert_strict(run.sent, expected)
    update = replayed[0]["session"]
    assert update["instructions"] == "Be kind."
    assert update["audio"]["input"]["turn_detection"]["type"] == "server_vad", "kept, not reset"


@pytest.mark.parametrize(
    "minted",
    [
        {"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."},
        {
            "type": "realtime",
            "model": "gpt-realtime",
            "include": None,
            "tools": None,
            "audio": {
                "input": {"transcription": None, "noise_reduction": None, "turn_detection": None}
            },
        },
    ],
)
def test_a_minted_keys_session_update_is_strict_ga(minted):
    run = Run(minted=minted)
    updates = [e for e in run.sent if e["type"] == "session.update"]
    assert len(updates) == 1
    assert_strict(run.sent, {"session.update"})
    if "audio" in minted:  # turn detection off is said with null, and kept
        assert updates[0]["session"]["audio"]["input"] == {"turn_detection": None}


def test_the_calls_rests_bodies_are_strict_ga():
    """The bodies the project posts to `/realtime/calls/{id}/…`: a profile's accept (as the
    webhook sends it), the rejects (no profile; busy), a hang-up and a transfer (call control)."""
    from apps.calls.models import CallProfile

    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
    profile = CallProfile(name="desk", instructions="Be brief.", voice="cedar", tools=[tool])
    bodies = [
        ("accept", profile.session_config("gpt-realtime")),
        ("accept", CallProfile(name="bare", voice="").session_config("gpt-realtime")),
        ("reject", {}),
        ("reject", {"status_code": 486}),
        ("hangup", {}),
        ("refer", {"target_uri": "tel:+14155550123"}),
    ]
    found = {i: strict_ga.call_body_problems(*body) for i, body in enumerate(bodies)}
    assert {i: problems for i, problems in found.items() if problems} == {}


async def test_a_calls_sideband_handshake_names_the_call_alone_with_the_ga_headers():
    """`{base}/realtime?call_id=C`: no model (the call has one), the key as a bearer, no beta
    header and no subprotocol (the GA service refuses the beta shape)."""
    import websockets

    from apps.realtime.upstream import open_connection

    seen = []

    async def handler(connection) -> None:
        seen.append(connection.request)
        await connection.close()

    async with websockets.serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        upstream = await open_connection(
            base_url=f"ws://127.0.0.1:{port}/v1/",
            api_key="sk-test",
            model="gpt-realtime",
            call_id="rtc_abc123",
        )
        await upstream.wait_closed()
    (request,) = seen
    assert request.path == "/v1/realtime?call_id=rtc_abc123"
    assert request.headers["Authorization"] == "Bearer sk-test"
    assert "OpenAI-Beta" not in request.headers
    assert "Sec-WebSocket-Protocol" not in request.headers


def test_the_strict_reader_catches_what_a_strict_server_refuses():
    pcm16 = {"audio": {"input": {"format": "pcm16"}}}  # the beta's string, not the GA's object
    good = {"type": "response.create", "event_id": "event_1", "response": {"metadata": {"a": "b"}}}
    assert strict_ga.problems(good) == []
    refused = [
        {**good, "response": {"modalities": ["text"]}},  # a beta name
        {**good, "response": {"output_modalities": ["txt"]}},  # not in the enum
        {**good, "response": {"conversation": None}},  # a null the type does not take
        {**good, "response": {"metadata": {str(n): "v" for n in range(17)}}},
        {**good, "response": {"metadata": {"k" * 65: "v"}}},
        {**good, "response": {"metadata": {"k": "v" * 513}}},
        {"type": "session.update", "session": {"instructions": "x"}},  # no session.type
        {"type": "session.update", "session": {"type": "realtime", "model": "gpt-realtime"}},
        {"type": "session.update", "session": {"type": "realtime", "include": None}},
        {"type": "session.update", "session": {"type": "realtime", **pcm16}},
        {"type": "conversation.item.create", "item": {**SYSTEM, "id": "i" * 33}},
        {"type": "conversation.item.create", "item": {**SYSTEM, "status": "done"}},
        {"type": "response.cancel", "response_id": 1},
    ]
    assert [index for index, event in enumerate(refused) if not strict_ga.problems(event)] == []
    assert strict_ga.call_body_problems("hangup", {"reason": "x"})
    assert strict_ga.call_body_problems("refer", {})
