"""Upstream rotation (`apps/realtime/rotation.py`) through the relay core, synchronously.

Each test drives a `RelayCore` with `rotate_after=6` through one session: the first upstream
names it, a conversation happens, the rotation comes due, the fresh upstream is given the
configuration and the conversation, and the swap. `summary` turns actions into short strings.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.realtime.relay import (
    OperatorRequest,
    RelayCore,
    RequestChanged,
    ToCaller,
    ToUpstream,
)
from apps.realtime.rotation import (
    CloseFresh,
    Conversation,
    OpenFresh,
    SwapUpstream,
    ToFresh,
    UpstreamSessions,
    replayable,
)
from apps.realtime.sequencer import counter


def make_core() -> RelayCore:
    return RelayCore(
        fallback_id="sess_fallback",
        connect_timeout=5.0,
        new_request_id=counter("req"),
        new_event_id=counter("ev"),
        rotate_after=6.0,
    )


def frame(kind: str, **fields) -> str:
    return json.dumps({"type": kind, **fields})


def summary(actions) -> list[str]:
    out = []
    for action in actions:
        if isinstance(action, ToUpstream) and type(action.frame) is bytes:
            out.append("upstream binary")
        elif isinstance(action, ToCaller | ToUpstream | ToFresh):
            event = json.loads(action.frame)
            where = {ToCaller: "caller", ToUpstream: "upstream", ToFresh: "fresh"}[type(action)]
            detail = event.get("item", {}).get("id") or event.get("item_id") or ""
            out.append(f"{where} {event['type']} {detail}".strip())
        elif isinstance(action, OpenFresh):
            out.append("open fresh")
        elif isinstance(action, CloseFresh):
            out.append("close fresh")
        elif isinstance(action, SwapUpstream):
            out.append(f"swap {action.session_id}")
        elif isinstance(action, UpstreamSessions):
            out.append("sessions " + ",".join(action.session_ids))
        elif isinstance(action, RequestChanged):
            out.append(f"{action.request_id} {action.status.value}")
    return out


SESSION = {
    "id": "sess_1",
    "object": "realtime.session",
    "expires_at": 9,
    "instructions": "Be kind.",
}
USER_ITEM = {
    "id": "item_u1",
    "type": "message",
    "role": "user",
    "content": [{"type": "input_audio", "transcript": None}],
}
AGENT_ITEM = {
    "id": "item_a1",
    "type": "message",
    "role": "assistant",
    "content": [{"type": "output_audio", "transcript": "Hello there."}],
}


def converse(core: RelayCore, now: float = 1.0) -> None:
    """A spoken turn (transcribed) and a spoken reply."""
    core.upstream_frame(frame("input_audio_buffer.speech_started"), now=now)
    core.upstream_frame(frame("input_audio_buffer.committed", item_id="item_u1"), now=now)
    core.upstream_frame(
        frame("conversation.item.added", previous_item_id=None, item=USER_ITEM), now=now
    )
    core.upstream_frame(
        frame(
            "conversation.item.input_audio_transcription.completed",
            item_id="item_u1",
            content_index=0,
            transcript="Hi, who are you?",
        ),
        now=now,
    )
    core.upstream_frame(frame("response.created", response={"id": "resp_1"}), now=now)
    core.upstream_frame(
        frame("conversation.item.added", previous_item_id="item_u1", item=AGENT_ITEM), now=now
    )
    core.upstream_frame(
        frame(
            "response.done",
            response={"id": "resp_1", "status": "completed", "output": [AGENT_ITEM]},
        ),
        now=now,
    )


def started() -> RelayCore:
    core = make_core()
    core.upstream_attached(now=0.0)
    core.upstream_frame(frame("session.created", session=SESSION), now=0.0)
    converse(core)
    return core


# What a service sends for each `conversation.item.create`: the GA service `.added` and `.done`,
# the beta one `.created`, the simulator all three (in this order).
GA_ACKS = ("conversation.item.added", "conversation.item.done")
BETA_ACKS = ("conversation.item.created",)
SIMULATOR_ACKS = ("conversation.item.created", *GA_ACKS)


def fresh_ready(core: RelayCore, now: float, session_id: str = "sess_2") -> list:
    """The fresh upstream acknowledges the replay as the GA service does and answers the
    retrieve of the last item that drains it: the actions of that answer."""
    actions = core.rotation.fresh_frame(
        frame("session.created", session={"id": session_id}), now=now
    )
    assert actions == []
    assert (
        core.rotation.fresh_frame(frame("session.updated", session={"id": session_id}), now=now)
        == []
    )
    answer_barrier(core, now)
    ids = core.rotation.state.conversation.ids
    drain: list = []
    for item_id in ids:
        for kind in GA_ACKS:
            drain += core.rotation.fresh_frame(frame(kind, item={"id": item_id}), now=now)
    # The last item's first acknowledgement completes them: the retrieve that drains the set-up.
    assert summary(drain) == [f"fresh conversation.item.retrieve {ids[-1]}"]
    retrieved = frame("conversation.item.retrieved", item={"id": ids[-1]})
    return core.rotation.fresh_frame(retrieved, now=now)


BARRIER = "upstream conversation.item.retrieve oc_rotation_barrier"


def barrier_answer(core: RelayCore, event_id: str | None = None) -> str:
    """The old upstream's `error` for the barrier it was sent as the replay started (or for
    the one sent with `event_id`)."""
    error = {
        "type": "invalid_request_error",
        "code": "item_not_found",
        "message": "Item with item_id 'oc_rotation_barrier' not found in the conversation.",
        "param": "item_id",
        "event_id": event_id or core.rotation.state.barrier,
    }
    return frame("error", error=error)


def answer_barrier(core: RelayCore, now: float) -> list:
    """The old upstream answers the barrier: read by the rotation, never relayed."""
    actions = core.upstream_frame(barrier_answer(core), now=now)
    assert not [a for a in actions if isinstance(a, ToCaller)]
    return actions


def configured_fresh(core: RelayCore):
    """The rotation is due and replayed; the fresh session is created and configured (its
    items are not yet acknowledged): the core's rotator."""
    open_fresh(core)
    core.tick(now=6.0)
    answer_barrier(core, now=6.05)
    fresh = core.rotation
    fresh.fresh_frame(frame("session.created", session={"id": "sess_2"}), now=6.1)
    fresh.fresh_frame(frame("session.updated", session={"id": "sess_2"}), now=6.1)
    return fresh


def fresh_ready_but_for_the_barrier(core: RelayCore) -> None:
    """After the replay, the fresh leg is created, configured, acknowledges every item and is
    drained: the swap waits for the old upstream's answer to its barrier."""
    fresh = core.rotation
    fresh.fresh_frame(frame("session.created", session={"id": "sess_2"}), now=6.1)
    fresh.fresh_frame(frame("session.updated", session={"id": "sess_2"}), now=6.1)
    for item_id in ("item_u1", "item_a1"):
        fresh.fresh_frame(frame("conversation.item.added", item={"id": item_id}), now=6.1)
    retrieved = frame("conversation.item.retrieved", item={"id": "item_a1"})
    assert fresh.fresh_frame(retrieved, now=6.1) == []


def open_fresh(core: RelayCore, now: float = 4.5) -> None:
    """`prewarm` (1.5 s) before the rotation is due, the fresh leg is opened and attached;
    nothing is replayed yet."""
    assert core.next_deadline == now
    assert summary(core.tick(now=now)) == ["open fresh"]
    assert core.rotation.fresh_attached(now=now + 0.1) == []
    assert not core.rotation.holding


def test_the_replayed_configuration_holds_only_what_a_ga_session_update_takes():
    core = make_core()
    core.upstream_attached(now=0.0)
    announced = {
        **SESSION,
        "client_secret": {"value": "ek_1", "expires_at": 9},
        "output_modalities": ["audio"],
        "audio": {
            "input": {"turn_detection": {"type": "semantic_vad", "eagerness": "low", "new": 1}},
            "output": {"voice": "ash", "format": {"type": "audio/pcmu"}},
        },
        "a_field_of_a_later_service": True,
    }
    core.upstream_frame(frame("session.created", session=announced), now=0.0)
    converse(core)
    open_fresh(core)
    update = json.loads(core.tick(now=6.0)[0].frame)["session"]
    assert update == {
        "type": "realtime",
        "instructions": "Be kind.",
        "output_modalities": ["audio"],
        "audio": {
            "input": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}},
            "output": {"voice": "ash", "format": {"type": "audio/pcmu"}},
        },
    }


def test_a_due_rotation_replays_the_session_and_swaps_between_responses():
    core = started()
    open_fresh(core)
    assert core.next_deadline == 6.0
    replayed = core.tick(now=6.0)
    assert summary(replayed) == [
        "fresh session.update",
        "fresh conversation.item.create item_u1",
        "fresh conversation.item.create item_a1",
        BARRIER,
    ]
    update = json.loads(replayed[0].frame)["session"]
    # GA-valid: `type` set, without id, object, expires_at (read-only, refused by an update)
    assert update == {"type": "realtime", "instructions": "Be kind."}
    user = json.loads(replayed[1].frame)
    agent = json.loads(replayed[2].frame)
    assert "previous_item_id" not in user
    assert user["item"]["content"] == [{"type": "input_text", "text": "Hi, who are you?"}]
    assert agent["previous_item_id"] == "item_u1"
    assert agent["item"]["content"] == [{"type": "output_text", "text": "Hello there."}]
    # Meanwhile the caller's frames are held, in order.
    assert core.caller_frame(frame("input_audio_buffer.append", audio="AAAA"), now=6.1) == []
    assert core.caller_frame(b"\x00\x01", now=6.1) == []
    last = fresh_ready(core, now=6.3)
    assert summary(last) == [
        "swap sess_2",
        "sessions sess_1,sess_2",
        "upstream input_audio_buffer.append",
        "upstream binary",
    ]
    assert last[-1] == ToUpstream(frame=b"\x00\x01")
    # The next fresh leg: the new session's age counts from its opening (at 4.6).
    assert core.next_deadline == 4.6 + 6.0 - 1.5
    assert not core.sequencer.held


def test_a_rotation_due_while_a_response_streams_waits_for_response_done_and_holds_the_queue():
    core = started()
    open_fresh(core)
    core.upstream_frame(frame("response.created", response={"id": "resp_2"}), now=5.0)
    assert core.tick(now=6.0) == []
    # An operator's nudge arrives while the response streams: it is queued, and stays queued.
    submitted = core.submit(OperatorRequest(id="req_op", origin="api"), now=6.5)
    assert summary(submitted) == ["req_op queued"]
    done = core.upstream_frame(
        frame("response.done", response={"id": "resp_2", "status": "completed"}), now=7.0
    )
    assert summary(done) == [
        "req_2 completed",
        "caller response.done",
        "fresh session.update",
        "fresh conversation.item.create item_u1",
        "fresh conversation.item.create item_a1",
        BARRIER,
    ]
    last = fresh_ready(core, now=7.2)
    # After the swap, the nudge goes to the fresh upstream, once.
    assert summary(last) == [
        "swap sess_2",
        "sessions sess_1,sess_2",
        "upstream response.create",
        "req_op sent",
    ]


def test_the_swap_waits_for_the_old_upstreams_answers_to_what_it_was_sent_before_the_hold():
    """A caller's item went to the old upstream just before the replay started: the swap waits
    for the old upstream's barrier, so its answer is not lost with the old leg."""
    core = started()
    open_fresh(core)
    created = frame("conversation.item.create", item={"id": "item_c1", "type": "message"})
    assert core.caller_frame(created, now=5.9) == [ToUpstream(frame=created)]
    replayed = core.tick(now=6.0)  # the old upstream has not answered it yet
    assert summary(replayed)[-1] == BARRIER
    barrier = core.rotation.state.barrier
    fresh_ready_but_for_the_barrier(core)
    # The old upstream's answer to the caller's item comes first: the caller's news, and a
    # change to the conversation, so this replay is abandoned and the next one holds the item.
    item = {"id": "item_c1", "type": "message"}
    added = core.upstream_frame(
        frame("conversation.item.added", previous_item_id="item_a1", item=item), now=6.2
    )
    assert summary(added)[:2] == ["caller conversation.item.added item_c1", "close fresh"]
    core.upstream_frame(frame("conversation.item.done", item=item), now=6.2)
    # The barrier's answer follows: read by the rotation, not relayed to the caller (nor to
    # watchers), not counted as the upstream's error.
    assert core.upstream_frame(barrier_answer(core, barrier), now=6.3) == []
    assert core.upstream_errors == {}
    assert core.rotation.state.barriers == set()
    assert core.rotation.fresh_attached(now=6.35) == []
    assert "fresh conversation.item.create item_c1" in summary(core.tick(now=6.45))


def test_the_barriers_answer_completes_the_swap_when_it_comes_last():
    core = started()
    open_fresh(core)
    core.tick(now=6.0)
    assert core.caller_frame(frame("input_audio_buffer.clear"), now=6.1) == []  # held
    answer = barrier_answer(core)
    fresh_ready_but_for_the_barrier(core)
    assert summary(core.upstream_frame(answer, now=6.2)) == [
        "swap sess_2",
        "sessions sess_1,sess_2",
        "upstream input_audio_buffer.clear",
    ]


def test_an_operator_request_and_a_note_during_the_rotation_go_to_the_fresh_upstream():
    core = started()
    open_fresh(core)
    core.tick(now=6.0)
    assert core.submit(OperatorRequest(id="req_op", origin="console"), now=6.1) == []
    noted = core.note(item_id="note_1", role="system", text="VIP caller", now=6.1)
    assert [type(a).__name__ for a in noted] == ["Answer"]
    last = fresh_ready(core, now=6.3)
    assert summary(last)[2:] == [
        "req_op queued",
        "upstream response.create",
        "req_op sent",
        "upstream conversation.item.create note_1",
    ]


def test_nothing_of_the_fresh_sessions_set_up_reaches_the_caller():
    core = started()
    open_fresh(core)
    actions = core.tick(now=6.0) + fresh_ready(core, now=6.2)
    assert not [a for a in actions if isinstance(a, ToCaller)]
    # The upstream's later session.updated carries the public session id.
    updated = core.upstream_frame(
        frame("session.updated", session={"id": "sess_2", "instructions": "x"}), now=7.0
    )
    caller = [json.loads(a.frame) for a in updated if isinstance(a, ToCaller)]
    assert caller[0]["session"]["id"] == "sess_1"


def test_a_truncate_of_a_spoken_reply_from_before_the_rotation_is_answered_by_the_relay():
    core = started()
    open_fresh(core)
    core.tick(now=6.0)
    fresh_ready(core, now=6.2)
    truncate = frame(
        "conversation.item.truncate", item_id="item_a1", content_index=0, audio_end_ms=300
    )
    answered = core.caller_frame(truncate, now=7.0)
    assert summary(answered) == ["caller conversation.item.truncated item_a1"]
    assert json.loads(answered[0].frame)["audio_end_ms"] == 300
    # An item that is audio on the fresh upstream too is truncated there.
    core.upstream_frame(
        frame(
            "conversation.item.added",
            previous_item_id="item_a1",
            item={**AGENT_ITEM, "id": "item_a2"},
        ),
        now=7.5,
    )
    later = frame("conversation.item.truncate", item_id="item_a2", content_index=0, audio_end_ms=1)
    assert core.caller_frame(later, now=8.0) == [ToUpstream(frame=later)]


def test_a_fresh_upstream_that_fails_keeps_the_old_one_and_is_tried_again_after_a_backoff():
    core = started()
    assert summary(core.tick(now=4.5)) == ["open fresh"]
    assert summary(core.rotation.fresh_failed("refused", now=4.8)) == ["close fresh"]
    assert core.next_deadline == 4.8 + 1.0  # retry_delay 1 s
    open_fresh(core, now=5.8)
    core.tick(now=7.3)  # due: replaying, the caller held
    assert core.caller_frame(frame("input_audio_buffer.clear"), now=7.35) == []
    errored = core.rotation.fresh_frame(
        frame("error", error={"code": "x", "message": "no"}), now=7.4
    )
    assert summary(errored) == ["close fresh", "upstream input_audio_buffer.clear"]
    assert core.next_deadline == 7.4 + 2.0  # doubled
    # Not open within the connect timeout: given up too.
    assert summary(core.tick(now=9.4)) == ["open fresh"]
    assert summary(core.tick(now=9.4 + 5.0)) == ["close fresh"]
    assert not core.sequencer.held


def test_a_conversation_change_on_the_old_upstream_abandons_the_rotation():
    core = started()
    open_fresh(core)
    core.tick(now=6.0)
    core.caller_frame(frame("response.create"), now=6.05)  # held: not in the sequencer yet
    spoiled = core.upstream_frame(frame("input_audio_buffer.speech_started"), now=6.1)
    # The held response.create goes to the old upstream after all.
    assert summary(spoiled) == [
        "caller input_audio_buffer.speech_started",
        "close fresh",
        "req_2 queued",
        "upstream response.create",
        "req_2 sent",
    ]
    assert not core.rotation.holding


def test_the_cap_before_a_rotation_ends_the_session_expired():
    core = started()
    core.tick(now=6.0)
    core.upstream_frame(
        frame(
            "error",
            error={"type": "invalid_request_error", "code": "session_expired", "message": "m"},
        ),
        now=9.9,
    )
    ended = core.upstream_closed(
        1001, "Your session hit the maximum duration of 10 seconds.", now=10.0
    )
    assert ended[0].code == 1001
    assert ended[-1].reason.value == "session_expired"


def _ready_but_for_the_barrier(core: RelayCore) -> None:
    open_fresh(core)
    core.tick(now=6.0)
    fresh_ready_but_for_the_barrier(core)


@pytest.mark.parametrize(
    "phase",
    [
        pytest.param(lambda core: core.tick(now=4.5), id="opening"),
        pytest.param(open_fresh, id="open"),
        pytest.param(configured_fresh, id="replaying"),
        pytest.param(_ready_but_for_the_barrier, id="replaying, the fresh leg ready"),
    ],
)
def test_the_old_upstream_closing_during_a_rotation_ends_the_session_as_without_one(phase):
    """The old upstream's cap (or any close) mid-rotation ends the session; the fresh leg is
    not swapped to (see "When it does not go" in rotation.py)."""
    core = started()
    phase(core)
    expired = {"type": "invalid_request_error", "code": "session_expired", "message": "m"}
    core.upstream_frame(frame("error", error=expired), now=6.2)
    ended = core.upstream_closed(1001, "Your session hit the maximum duration.", now=6.3)
    assert ended[0].code == 1001
    assert ended[-1].reason.value == "session_expired"
    assert not [a for a in ended if isinstance(a, SwapUpstream | ToFresh)]
    assert core.rotation.fresh_frame(frame("session.updated", session={}), now=6.4) == []
    assert summary(core.rotation.fresh_attached(now=6.4)) == ["close fresh"]


def test_without_rotation_nothing_is_tracked():
    core = RelayCore(fallback_id="f", rotate_after=0)
    assert core.rotation is None


def test_replayable_items():
    call = {
        "id": "fc",
        "type": "function_call",
        "call_id": "c",
        "name": "f",
        "arguments": "{}",
        "status": "completed",
        "object": "realtime.item",
    }
    assert replayable(call) == (
        {"id": "fc", "type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        False,
    )
    mcp = {"id": "m1", "type": "mcp_call", "name": "search", "output": "ok"}
    item, spoken = replayable(mcp)
    assert item["role"] == "system" and item["content"][0]["text"].startswith("[mcp_call] ")
    approval = {"id": "ar", "type": "mcp_approval_response", "approval_request_id": "rq"}
    assert replayable(approval)[0]["type"] == "message"  # its request cannot be created
    assert replayable(call, plain=True)[0]["content"][0]["text"].startswith("[function_call] ")
    untranscribed = {
        "id": "u",
        "type": "message",
        "role": "user",
        "content": [{"type": "input_audio"}],
    }
    assert replayable(untranscribed)[0]["content"][0]["text"] == "[spoken; no transcript]"
    conversation = Conversation()
    conversation.added({"id": "a"}, None)
    conversation.added({"id": "c"}, "a")
    conversation.added({"id": "b"}, "a")
    conversation.added({"id": "z"}, "root")
    conversation.added({"id": "y"}, None)  # how the service announces an item put first
    conversation.deleted("c")
    assert conversation.ids == ["y", "z", "a", "b"]


STEPS = ["caller", "tick", "attach", "ready", "fail", "spoil", "submit", "respond"]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(STEPS), max_size=40))
def test_across_rotations_every_caller_frame_and_request_goes_upstream_once_in_order(steps):
    """Caller frames reach the upstream once each, in order; operators' requests are sent
    once each; nothing of a fresh session's set-up reaches the caller, whose session id
    stays the first."""
    core = started()
    now, sent, delivered, submitted, created = 4.0, [], [], [], []
    responses = iter(range(1000))

    def take(actions):
        for action in actions:
            if isinstance(action, ToUpstream):
                event = json.loads(action.frame)
                if event["type"] == "input_audio_buffer.append":
                    delivered.append(event["audio"])
                elif event["type"] == "response.create":
                    created.append(event["response"]["metadata"]["oc_request"])
            if isinstance(action, ToCaller):
                event = json.loads(action.frame)
                assert event["type"] not in ("session.created", "conversation.item.added")
                assert event.get("session", {}).get("id") in (None, "sess_1")

    def respond():
        request_id = core.sequencer.outstanding_id
        if request_id is None:
            return
        response = {"id": f"resp_p{next(responses)}", "metadata": {"oc_request": request_id}}
        take(core.upstream_frame(frame("response.created", response=response), now=now))
        done = {**response, "status": "completed"}
        take(core.upstream_frame(frame("response.done", response=done), now=now))

    for step in steps:
        now += 0.5
        rotator = core.rotation
        if step == "caller":
            sent.append(f"a{len(sent)}")
            take(core.caller_frame(frame("input_audio_buffer.append", audio=sent[-1]), now=now))
        elif step == "tick":
            take(core.tick(now=now))
        elif step == "attach" and rotator.state.phase == "opening":
            take(rotator.fresh_attached(now=now))
        elif step == "ready" and rotator.state.phase == "replaying":
            take(fresh_ready(core, now=now, session_id=f"sess_r{now}"))
        elif step == "fail":
            take(rotator.fresh_failed("refused", now=now))
        elif step == "spoil":
            take(core.upstream_frame(frame("input_audio_buffer.cleared"), now=now))
        elif step == "submit":
            submitted.append(f"req_op{len(submitted)}")
            take(core.submit(OperatorRequest(id=submitted[-1], origin="api"), now=now))
        elif step == "respond":
            respond()
    take(core.rotation.fresh_failed("the end of the test", now=now + 1))
    for _ in range(len(submitted)):
        respond()
    assert delivered == sent
    assert created == submitted


def test_an_upstream_that_names_the_replayed_items_itself_is_translated_both_ways():
    core = started()
    fresh = configured_fresh(core)
    acks = []
    for named in ("up_1", "up_2"):  # created and added name the same item: mapped once
        for kind in ("conversation.item.created", "conversation.item.added"):
            acks += fresh.fresh_frame(frame(kind, item={"id": named}), now=6.1)
    assert summary(acks) == ["fresh conversation.item.retrieve up_2"]  # by the upstream's id
    drained = fresh.fresh_frame(frame("conversation.item.retrieved", item={"id": "up_2"}), now=6.1)
    assert summary(drained) == ["swap sess_2", "sessions sess_1,sess_2"]
    assert fresh.state.renamed == {"item_u1": "up_1", "item_a1": "up_2"}
    # The caller's ids go up as the upstream's ...
    delete = core.caller_frame(frame("conversation.item.delete", item_id="item_u1"), now=7.0)
    assert json.loads(delete[0].frame)["item_id"] == "up_1"
    # ... and come back as the caller's, in events the core would otherwise pass unread.
    deleted = core.upstream_frame(frame("conversation.item.deleted", item_id="up_1"), now=7.1)
    assert json.loads(deleted[0].frame)["item_id"] == "item_u1"
    added = core.upstream_frame(
        frame("response.output_item.added", previous_item_id="up_2", item={"id": "new"}), now=7.2
    )
    assert json.loads(added[0].frame)["previous_item_id"] == "item_a1"
    assert fresh.state.conversation.ids == ["item_a1"]


def test_with_turn_detection_off_uncommitted_audio_holds_the_rotation_until_committed():
    core = started()
    manual = {"audio": {"input": {"turn_detection": None}}}
    core.upstream_frame(frame("session.updated", session={**SESSION, **manual}), now=1.0)
    open_fresh(core)
    appended = frame("input_audio_buffer.append", audio="AAAA")
    assert core.caller_frame(appended, now=5.0) == [ToUpstream(frame=appended)]
    assert core.tick(now=6.0) == []  # the audio is only in the old session's buffer
    committed = core.upstream_frame(
        frame("input_audio_buffer.committed", item_id="item_u2"), now=6.5
    )
    assert summary(committed) == ["caller input_audio_buffer.committed item_u2"]  # item next
    item = {"id": "item_u2", "type": "message", "role": "user", "content": []}
    core.upstream_frame(
        frame("conversation.item.added", previous_item_id="item_a1", item=item), now=6.6
    )
    added = core.upstream_frame(frame("conversation.item.done", item=item), now=6.6)
    assert summary(added)[1:] == [
        "fresh session.update",
        "fresh conversation.item.create item_u1",
        "fresh conversation.item.create item_a1",
        "fresh conversation.item.create item_u2",
        BARRIER,
    ]


def test_a_pending_tool_approval_holds_the_rotation_until_it_is_answered():
    core = started()
    request = {
        "id": "appr_1",
        "type": "mcp_approval_request",
        "server_label": "crm",
        "name": "refund",
        "arguments": "{}",
    }
    core.upstream_frame(frame("conversation.item.added", item=request), now=2.0)
    core.upstream_frame(frame("conversation.item.done", item=request), now=2.0)
    assert core.tools.has_pending
    open_fresh(core)
    assert core.tick(now=6.0) == []
    answer = {
        "id": "appr_r1",
        "type": "mcp_approval_response",
        "approval_request_id": "appr_1",
        "approve": True,
    }
    core.caller_frame(frame("conversation.item.create", item=answer), now=6.5)
    core.upstream_frame(frame("conversation.item.added", item=answer), now=6.6)
    done = core.upstream_frame(frame("conversation.item.done", item=answer), now=6.6)
    assert not core.tools.has_pending
    assert "fresh session.update" in summary(done)


# ---------------------------------------------------------------------------- acknowledgements


class FreshUpstream:
    """A fresh upstream session as a function: a client frame in, the events it answers out.
    It acknowledges each created item with `acks`, naming it `names.get(id, id)`."""

    def __init__(self, acks: tuple[str, ...], names: dict[str, str]) -> None:
        self.acks = acks
        self.names = names
        self.items: dict[str, dict] = {}

    def answer(self, text: str) -> list[str]:
        event = json.loads(text)
        kind = event["type"]
        if kind == "session.update":
            return [frame("session.updated", session={"id": "sess_2", **event["session"]})]
        if kind == "conversation.item.create":
            item = {**event["item"], "object": "realtime.item", "status": "completed"}
            item["id"] = self.names.get(item["id"], item["id"])
            previous = list(self.items)[-1] if self.items else None
            self.items[item["id"]] = item
            return [frame(ack, previous_item_id=previous, item=item) for ack in self.acks]
        if kind == "conversation.item.retrieve" and event["item_id"] in self.items:
            return [frame("conversation.item.retrieved", item=self.items[event["item_id"]])]
        return [frame("error", error={"code": "item_not_found", "message": str(event)})]


def rotate_through(core: RelayCore, upstream: FreshUpstream) -> tuple[list, list, list]:
    """One rotation with `upstream` as the fresh leg, its events read in the order it sent
    them: before the swap as the fresh leg's, after it as the session's upstream's (as the
    actor routes them). Returns what reached the caller, and the fresh leg's events read
    before the swap and after it."""
    open_fresh(core)
    pending = [frame("session.created", session={"id": "sess_2"})]
    actions = core.tick(now=6.0)
    answer_barrier(core, now=6.05)
    caller, before, after = [], [], []
    swapped = False
    while True:
        for action in actions:
            if isinstance(action, ToFresh):
                pending += upstream.answer(action.frame)
            elif isinstance(action, ToCaller):
                caller.append(json.loads(action.frame))
            elif isinstance(action, SwapUpstream):
                swapped = True
        if not pending:
            return caller, before, after
        event = pending.pop(0)
        if swapped:
            after.append(json.loads(event)["type"])
            actions = core.upstream_frame(event, now=6.2)
        else:
            before.append(json.loads(event)["type"])
            actions = core.rotation.fresh_frame(event, now=6.1)


RENAMED = {"item_u1": "up_1", "item_a1": "up_2"}


@pytest.mark.parametrize(
    ("acks", "names"),
    [
        pytest.param(GA_ACKS, {}, id="GA added+done"),
        pytest.param(BETA_ACKS, {}, id="beta created"),
        pytest.param(SIMULATOR_ACKS, {}, id="simulator created+added+done"),
        pytest.param(SIMULATOR_ACKS, RENAMED, id="simulator, upstream names the items"),
        pytest.param(GA_ACKS, RENAMED, id="GA, upstream names the items"),
    ],
)
def test_every_acknowledgement_of_the_replay_is_read_before_the_swap_and_ids_stay_the_callers(
    acks, names
):
    core = started()
    upstream = FreshUpstream(acks, names)
    caller, before, after = rotate_through(core, upstream)
    assert caller == [], "nothing of the fresh session's set-up reaches the caller"
    assert after == [], "the swap comes after every event the fresh leg sent for the set-up"
    assert before.count("session.updated") == 1
    for ack in acks:
        assert before.count(ack) == 2, f"each replayed item's {ack} was read during set-up"
    assert core.rotation.state.session_ids == ["sess_1", "sess_2"]
    assert core.rotation.state.renamed == names  # each caller id to its own item upstream
    up_user, up_agent = names.get("item_u1", "item_u1"), names.get("item_a1", "item_a1")
    # A retrieve by the caller's id reaches its item upstream and answers with the caller's id.
    retrieve = frame("conversation.item.retrieve", item_id="item_u1")
    sent = core.caller_frame(retrieve, now=7.0) or [ToUpstream(frame=retrieve)]
    assert json.loads(sent[0].frame)["item_id"] == up_user
    (retrieved,) = upstream.answer(sent[0].frame)
    answered = [json.loads(a.frame) for a in core.upstream_frame(retrieved, now=7.1)]
    assert [(e["type"], e["item"]["id"]) for e in answered] == [
        ("conversation.item.retrieved", "item_u1")
    ]
    assert answered[0]["item"]["role"] == "user"
    # A delete of the reply by the caller's id deletes the reply upstream, not the user item.
    delete = frame("conversation.item.delete", item_id="item_a1")
    sent = core.caller_frame(delete, now=7.2) or [ToUpstream(frame=delete)]
    assert json.loads(sent[0].frame)["item_id"] == up_agent
    deleted = core.upstream_frame(frame("conversation.item.deleted", item_id=up_agent), now=7.3)
    assert [json.loads(a.frame)["item_id"] for a in deleted] == ["item_a1"]
    assert core.rotation.state.conversation.ids == ["item_u1"]


def test_the_conversation_id_the_caller_saw_stays_the_same_after_a_rotation():
    """Each upstream session has a conversation of its own (`conv_…`): the responses of a
    fresh one carry the id the caller's first responses carried, as without a rotation."""
    core = make_core()
    core.upstream_attached(now=0.0)
    core.upstream_frame(frame("session.created", session=SESSION), now=0.0)
    first = {"id": "resp_1", "conversation_id": "conv_1", "status": "completed", "output": []}
    core.upstream_frame(frame("response.created", response=first), now=1.0)
    core.upstream_frame(frame("response.done", response=first), now=1.0)
    converse(core)
    open_fresh(core)
    core.tick(now=6.0)
    fresh_ready(core, now=6.2)
    later = {"id": "resp_9", "conversation_id": "conv_2", "status": "completed", "output": []}
    seen = []
    for kind in ("response.created", "response.done"):
        actions = core.upstream_frame(frame(kind, response=later), now=7.0)
        seen += [json.loads(a.frame) for a in actions if isinstance(a, ToCaller)]
    assert [(e["type"], e["response"]["conversation_id"]) for e in seen] == [
        ("response.created", "conv_1"),
        ("response.done", "conv_1"),
    ]
    # An out-of-band response has none, and keeps none.
    none = {"id": "resp_10", "conversation_id": None, "status": "completed", "output": []}
    actions = core.upstream_frame(frame("response.created", response=none), now=8.0)
    assert [json.loads(a.frame)["response"]["conversation_id"] for a in actions
            if isinstance(a, ToCaller)] == [None]


def test_an_item_the_fresh_upstream_adds_itself_is_not_taken_for_a_replayed_one():
    """A session with an MCP tool: the fresh upstream lists its tools when the configuration
    is replayed (an `mcp_list_tools` item of its own) before it acknowledges the replay. That
    item acknowledges nothing: the caller's ids keep naming their own items."""
    core = started()
    fresh = configured_fresh(core)
    listed = {"id": "mcpl_9", "type": "mcp_list_tools", "server_label": "kb", "tools": []}
    actions = fresh.fresh_frame(
        frame("conversation.item.added", previous_item_id=None, item=listed), now=6.1
    )
    actions += fresh.fresh_frame(frame("mcp_list_tools.completed", item_id="mcpl_9"), now=6.1)
    actions += fresh.fresh_frame(
        frame("conversation.item.done", previous_item_id=None, item=listed), now=6.1
    )
    assert actions == []
    for item in (USER_ITEM, AGENT_ITEM):
        for kind in GA_ACKS:
            actions += fresh.fresh_frame(frame(kind, item=item), now=6.2)
    assert summary(actions) == ["fresh conversation.item.retrieve item_a1"]
    drained = fresh.fresh_frame(frame("conversation.item.retrieved", item=AGENT_ITEM), now=6.3)
    assert summary(drained) == ["swap sess_2", "sessions sess_1,sess_2"]
    assert fresh.state.renamed == {}
    retrieve = frame("conversation.item.retrieve", item_id="item_u1")
    assert core.caller_frame(retrieve, now=7.0) in (None, [], [ToUpstream(frame=retrieve)])


def test_a_reply_cut_short_before_the_rotation_is_not_replayed_with_the_words_never_heard():
    """The caller stopped playing the reply and truncated it: the service drops the text of
    it the caller did not hear, so the fresh session is not given the whole transcript."""
    core = started()
    truncate = frame(
        "conversation.item.truncate", item_id="item_a1", content_index=0, audio_end_ms=300
    )
    assert core.caller_frame(truncate, now=2.0) == [ToUpstream(frame=truncate)]
    core.upstream_frame(
        frame(
            "conversation.item.truncated", item_id="item_a1", content_index=0, audio_end_ms=300
        ),
        now=2.1,
    )
    open_fresh(core)
    replayed = {
        event["item"]["id"]: event["item"]
        for action in core.tick(now=6.0)
        if isinstance(action, ToFresh)
        and (event := json.loads(action.frame))["type"] == "conversation.item.create"
    }
    text = replayed["item_a1"]["content"][0]["text"]
    assert "Hello there." not in text, "the words the caller never heard were replayed"
    assert replayed["item_u1"]["content"][0]["text"] == "Hi, who are you?"


def test_a_cut_reply_the_upstream_answered_a_retrieve_for_is_replayed_as_it_holds_it():
    core = started()
    cut = frame("conversation.item.truncated", item_id="item_a1", content_index=0, audio_end_ms=9)
    core.upstream_frame(cut, now=2.0)
    heard = {**AGENT_ITEM, "content": [{"type": "output_audio", "transcript": "Hello"}]}
    core.upstream_frame(frame("conversation.item.retrieved", item=heard), now=2.5)
    open_fresh(core)
    replayed = [
        event["item"]
        for action in core.tick(now=6.0)
        if isinstance(action, ToFresh)
        and (event := json.loads(action.frame))["type"] == "conversation.item.create"
    ]
    assert replayed[-1]["content"][0]["text"] == "Hello"


def test_a_reply_cut_while_it_streams_stays_cut_when_its_response_ends():
    core = make_core()
    core.upstream_attached(now=0.0)
    core.upstream_frame(frame("session.created", session=SESSION), now=0.0)
    core.upstream_frame(frame("response.created", response={"id": "resp_1"}), now=1.0)
    core.upstream_frame(
        frame("conversation.item.added", previous_item_id=None, item=AGENT_ITEM), now=1.0
    )
    cut = frame("conversation.item.truncated", item_id="item_a1", content_index=0, audio_end_ms=9)
    core.upstream_frame(cut, now=1.5)
    core.upstream_frame(
        frame(
            "response.done",
            response={"id": "resp_1", "status": "completed", "output": [AGENT_ITEM]},
        ),
        now=2.0,
    )
    open_fresh(core)
    replayed = [
        json.loads(action.frame)["item"]
        for action in core.tick(now=6.0)
        if isinstance(action, ToFresh) and "conversation.item.create" in action.frame
    ]
    assert "Hello there." not in replayed[0]["content"][0]["text"]
