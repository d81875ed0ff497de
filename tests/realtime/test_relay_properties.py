"""Hypothesis state machine: random interleavings of the relay core's inputs.

An upstream is modelled loosely (it answers the response.create it was sent, in any order,
starts responses of its own, streams deltas, finishes, refuses one with any code, its event_id
echoed or not, repeats a response.created, ends a response never created, errs about the
caller's own events), mixed with the caller's requests, operators' requests (in the
conversation or out of band), cancels, interrupts, watchers, time, and the session's end.
What the core returns is checked against the contract's and DESIGN's promises:

- the caller never sees `oc_request`, and never sees an event of an operator's out-of-band
  response;
- the caller never sees `conversation_already_has_active_response`, nor an error that names
  an operator's response.create;
- no in-conversation response.create is sent while one is outstanding or while a response in
  the conversation is in progress (as the upstream's events said);
- every frame for the caller can be sent (valid UTF-8);
- every request's statuses follow the sequencer's table, and once the session has ended every
  request has exactly one terminal status.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from apps.realtime import events
from apps.realtime.relay import (
    AGENT_SIDE,
    OC_REQUEST_KEY,
    AudioTapped,
    OperatorRequest,
    RelayCore,
    RequestChanged,
    RequestRecorded,
    SessionEnded,
    ToCaller,
    ToUpstream,
)
from apps.realtime.sequencer import TERMINAL_STATUSES, TRANSITIONS, RequestStatus

ACTIVE = "conversation_already_has_active_response"
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=8)
metadata = st.none() | st.dictionaries(st.text(min_size=1, max_size=4), texts, max_size=3)


class RelayMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        ids = iter(range(1, 1_000_000))
        self.core = RelayCore(
            fallback_id="sess_x",
            new_request_id=lambda: f"req_{next(ids)}",
            new_event_id=lambda: f"evt_{next(ids)}",
            queue_limit=4,
            send_timeout=15.0,
            stall_timeout=30.0,
        )
        self.now = 0.0
        self.statuses: dict[str, list[RequestStatus]] = {}
        self.operator_oob: set[str] = set()  # request ids of operators' out-of-band requests
        self.hidden: set[str] = set()  # response ids of those requests' responses
        self.unanswered: list[dict] = []  # response.create sent upstream, not yet created
        self.live: list[tuple[str, str | None]] = []  # (response id, oc_request) in progress
        self.responses = 0
        self.operator_ids = 0
        self.listening: set[str] = set()  # listeners the model counts
        self.audio_of: str | None = None  # the response whose audio is being fed
        self.out_of_band: set[str] = set()  # request ids of out-of-band requests
        self.operator_ids_seen: set[str] = set()  # request ids of operators' requests
        self.operator_event_ids: set[str] = set()  # event ids of their response.create
        self.feed(self.core.upstream_attached(now=0.0))
        self.upstream(
            {"type": "session.created", "session": {"id": "sess_1", "instructions": "Be kind."}}
        )

    # ------------------------------------------------------------------ checking each step

    def feed(self, actions) -> None:
        for action in actions:
            if type(action) is ToCaller:
                self.check_caller_frame(action.frame)
            elif type(action) is ToUpstream:
                event = json.loads(action.frame)
                if event["type"] == "response.create":
                    self.unanswered.append(event)
                    tag = event["response"]["metadata"][OC_REQUEST_KEY]
                    if tag in self.operator_ids_seen:
                        self.operator_event_ids.add(event["event_id"])
            elif type(action) is RequestRecorded:
                assert action.request_id not in self.statuses
                self.statuses[action.request_id] = [action.status]
                if action.conversation == "none":
                    self.out_of_band.add(action.request_id)
            elif type(action) is RequestChanged:
                history = self.statuses.setdefault(action.request_id, [])
                if history == [action.status]:
                    continue  # a request's first status, after the record that took it in
                if history:
                    assert action.status in TRANSITIONS[history[-1]], (
                        f"{action.request_id}: {history} then {action.status}"
                    )
                history.append(action.status)
                if (
                    action.status is RequestStatus.SENT
                    and action.request_id not in self.out_of_band
                ):
                    assert not self.conversation_busy(), "response.create sent during a response"
                    sent = [
                        rid
                        for rid, statuses in self.statuses.items()
                        if statuses[-1] is RequestStatus.SENT and rid not in self.out_of_band
                    ]
                    assert len(sent) == 1, f"two response.create outstanding: {sent}"
            elif type(action) is SessionEnded:
                assert self.core.ended is action
            elif type(action) is AudioTapped:
                assert self.listening, "audio was copied while nobody listens (and nothing records)"
                if action.side == AGENT_SIDE:
                    assert self.audio_of not in self.hidden, "an operator's out-of-band audio was tapped"

    def check_caller_frame(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            return
        frame.encode("utf-8")
        assert OC_REQUEST_KEY not in frame, f"oc_request reached the caller: {frame}"
        event = events.loads_object(frame)
        assert event is not None
        if event["type"] == "error":
            assert event["error"]["code"] != ACTIVE, "the relay's sequencing showed through"
            assert event["error"].get("event_id") not in self.operator_event_ids, (
                f"an error about an operator's event reached the caller: {frame}"
            )
        response = event.get("response")
        response_id = event.get("response_id") or (
            response.get("id") if isinstance(response, dict) else None
        )
        assert response_id not in self.hidden, (
            f"an operator's out-of-band event reached the caller: {frame}"
        )

    def conversation_busy(self) -> bool:
        """A response in the conversation is in progress, as the upstream's events said."""
        return any(tag not in self.out_of_band for _, tag in self.live)

    def upstream(self, event: dict) -> None:
        self.feed(self.core.upstream_frame(events.dumps(event), now=self.now))

    # ------------------------------------------------------------------ the caller, operators

    @rule(oob=st.booleans(), meta=metadata, instructions=st.none() | texts)
    def caller_requests(self, oob, meta, instructions):
        response: dict = {}
        if oob:
            response["conversation"] = "none"
        if meta is not None:
            response["metadata"] = meta
        if instructions is not None:
            response["instructions"] = instructions
        event = {"type": "response.create", "response": response}
        self.feed(self.core.caller_frame(events.dumps(event), now=self.now))

    @rule(
        oob=st.booleans(),
        meta=metadata,
        text=st.none() | texts,
        mode=st.sampled_from(["append", "replace"]),
    )
    def operator_requests(self, oob, meta, text, mode):
        self.operator_ids += 1
        request_id = f"op_{self.operator_ids}"
        self.operator_ids_seen.add(request_id)
        if oob:
            self.operator_oob.add(request_id)
            self.out_of_band.add(request_id)
        stored = OperatorRequest(
            id=request_id,
            origin="console",
            instructions=text,
            instructions_mode=mode,
            metadata=meta,
            conversation="none" if oob else None,
        )
        self.statuses[request_id] = ["queued"]  # as the service stored it: its changes start here
        self.feed(self.core.submit(stored, now=self.now))

    @rule(data=st.data())
    def operator_cancels(self, data):
        if self.statuses:
            request_id = data.draw(st.sampled_from(sorted(self.statuses)))
            self.feed(self.core.cancel(request_id, now=self.now))

    @rule()
    def operator_interrupts(self):
        self.feed(self.core.interrupt(now=self.now))

    @rule(watcher=st.sampled_from(["w1", "w2"]), watching=st.booleans())
    def operator_watches(self, watcher, watching):
        self.feed(self.core.watch(watcher, user=watcher, watching=watching, now=self.now))

    # ------------------------------------------------------------------ the upstream

    @precondition(lambda self: self.unanswered)
    @rule(data=st.data())
    def upstream_starts_a_requested_response(self, data):
        event = self.unanswered.pop(data.draw(st.integers(0, len(self.unanswered) - 1)))
        self.responses += 1
        response_id = f"resp_{self.responses}"
        tag = event["response"]["metadata"][OC_REQUEST_KEY]
        if tag in self.operator_oob:
            self.hidden.add(response_id)
        self.live.append((response_id, tag))
        self.upstream(
            {
                "type": "response.created",
                "response": {"id": response_id, "metadata": event["response"]["metadata"]},
            }
        )

    @precondition(lambda self: self.unanswered)
    @rule()
    def upstream_refuses_the_oldest_as_busy(self):
        event = self.unanswered.pop(0)
        self.upstream(
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "code": ACTIVE,
                    "message": "busy",
                    "event_id": event["event_id"],
                },
            }
        )

    @precondition(lambda self: self.unanswered)
    @rule(
        data=st.data(),
        code=st.sampled_from([ACTIVE, "invalid_value", "server_error", None]),
        echo=st.booleans(),
    )
    def upstream_refuses_one(self, data, code, echo):
        """Any refusal, its event_id echoed or not (the upstream does not always echo it)."""
        event = self.unanswered.pop(data.draw(st.integers(0, len(self.unanswered) - 1)))
        error = {"type": "invalid_request_error", "code": code, "message": "no"}
        if echo:
            error["event_id"] = event["event_id"]
        self.upstream({"type": "error", "error": error})

    @rule(
        kind=st.sampled_from(["created", "done", "error"]),
        data=st.data(),
    )
    def upstream_strays(self, kind, data):
        """Events the relay did not ask for: a repeated response.created, a response.done of
        a response never created, an error about something of the caller's."""
        if kind == "created" and self.live:
            response_id, tag = data.draw(st.sampled_from(self.live))
            metadata = {OC_REQUEST_KEY: tag} if tag else None
            self.upstream(
                {"type": "response.created", "response": {"id": response_id, "metadata": metadata}}
            )
        elif kind == "done":
            self.upstream(
                {"type": "response.done", "response": {"id": "resp_never", "status": "completed"}}
            )
        elif kind == "error":
            error = {"type": "invalid_request_error", "code": "invalid_value", "message": "no"}
            error["event_id"] = data.draw(st.sampled_from(["evt_callers_own", None]))
            self.upstream({"type": "error", "error": error})

    @rule()
    def upstream_starts_a_response_of_its_own(self):
        self.responses += 1
        response_id = f"resp_{self.responses}"
        self.live.append((response_id, None))
        self.upstream({"type": "response.created", "response": {"id": response_id}})

    @precondition(lambda self: self.live)
    @rule(data=st.data(), text=texts)
    def upstream_streams(self, data, text):
        response_id, _ = data.draw(st.sampled_from(self.live))
        self.upstream(
            {
                "type": "response.output_text.delta",
                "response_id": response_id,
                "item_id": f"item_{response_id}",
                "delta": text,
            }
        )

    @precondition(lambda self: self.live)
    @rule(
        data=st.data(), status=st.sampled_from(["completed", "cancelled", "incomplete", "failed"])
    )
    def upstream_finishes(self, data, status):
        response_id, tag = self.live.pop(data.draw(st.integers(0, len(self.live) - 1)))
        metadata = {OC_REQUEST_KEY: tag} if tag else None
        self.upstream(
            {
                "type": "response.done",
                "response": {
                    "id": response_id,
                    "status": status,
                    "metadata": metadata,
                    "output": [],
                },
            }
        )

    @rule(listener=st.sampled_from(["l1", "l2"]), listening=st.booleans())
    def operator_listens(self, listener, listening):
        if self.core.ended is None:
            (self.listening.add if listening else self.listening.discard)(listener)
        self.feed(self.core.listen(listener, user=listener, listening=listening, now=self.now))

    @rule()
    def caller_speaks(self):
        append = {"type": "input_audio_buffer.append", "audio": "AAAAAA=="}
        self.feed(self.core.caller_frame(events.dumps(append), now=self.now))

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def upstream_speaks(self, data):
        response_id, _ = data.draw(st.sampled_from(self.live))
        self.audio_of = response_id
        self.upstream(
            {
                "type": "response.output_audio.delta",
                "response_id": response_id,
                "item_id": f"item_{response_id}",
                "delta": "AAAAAA==",
            }
        )

    @rule(seconds=st.sampled_from([0.01, 0.3, 5.0, 16.0]))
    def time_passes(self, seconds):
        self.now += seconds
        self.feed(self.core.tick(now=self.now))

    @precondition(lambda self: self.core.ended is None)
    @rule(end=st.sampled_from(["caller", "upstream", "shutdown"]))
    def session_ends(self, end):
        if end == "caller":
            self.feed(self.core.caller_closed(now=self.now))
        elif end == "upstream":
            self.feed(self.core.upstream_closed(1011, "gone", now=self.now))
        else:
            self.feed(self.core.shutdown(now=self.now))

    # ------------------------------------------------------------------ invariants

    @invariant()
    def after_the_end_every_request_has_one_terminal_status(self):
        if self.core.ended is None:
            return
        for request_id, history in self.statuses.items():
            terminal = [status for status in history if status in TERMINAL_STATUSES]
            assert len(terminal) == 1 and history[-1] in TERMINAL_STATUSES, (
                f"{request_id}: {history}"
            )


TestRelayMachine = RelayMachine.TestCase
TestRelayMachine.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_the_checks_catch_what_they_guard():
    """The invariants are not vacuous: a leaked frame of each kind fails them."""
    machine = RelayMachine()
    machine.hidden.add("resp_9")
    leaks = [
        '{"type":"response.output_text.delta","response_id":"resp_9","delta":"x"}',
        '{"type":"response.created","response":{"id":"resp_8","metadata":{"oc_request":"req_1"}}}',
        '{"type":"error","error":{"code":"conversation_already_has_active_response"}}',
    ]
    for leak in leaks:
        with pytest.raises(AssertionError):
            machine.check_caller_frame(leak)


def test_the_audio_checks_catch_what_they_guard():
    machine = RelayMachine()
    with pytest.raises(AssertionError, match="nobody listens"):
        machine.feed([AudioTapped(side=AGENT_SIDE, audio="AA==", format="pcm16", at=0.0)])
    machine.listening.add("l1")
    machine.hidden.add("resp_9")
    machine.audio_of = "resp_9"
    with pytest.raises(AssertionError, match="out-of-band audio"):
        machine.feed([AudioTapped(side=AGENT_SIDE, audio="AA==", format="pcm16", at=0.0)])
