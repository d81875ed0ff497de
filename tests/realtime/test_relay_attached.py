"""The relay core in attached mode (`apps/realtime/attached.py`): a call steered through its
sideband, with no caller leg. Tables of inputs and what they must do, then a Hypothesis property
over random interleavings of the caller's own creates, server VAD responses, operators' requests
and the model's `conversation_already_has_active_response` refusals."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from apps.realtime import attached, events
from apps.realtime.relay import (
    MAX_REATTACHES,
    OC_REQUEST_KEY,
    Answer,
    EndReason,
    OpenUpstream,
    OperatorRequest,
    RelayCore,
    RequestChanged,
    RequestRecorded,
    SessionEnded,
    SessionNamed,
    ToCaller,
    ToUpstream,
)
from apps.realtime.sequencer import TERMINAL_STATUSES, RequestStatus

ACTIVE = "conversation_already_has_active_response"


def make_core(**options) -> RelayCore:
    ids = iter(range(1, 1_000_000))
    return RelayCore(
        fallback_id="rtc_call1",
        attached=True,
        new_request_id=lambda: f"req_{next(ids)}",
        new_event_id=lambda: f"evt_{next(ids)}",
        **options,
    )


def frame(kind: str, **fields) -> str:
    return events.dumps({"type": kind, "event_id": "ev", **fields})


def session_event(kind: str = "session.created", session_id: str = "sess_1", **session) -> str:
    return frame(kind, session={"id": session_id, "instructions": "Be kind.", **session})


def created(response_id: str, tag: str | None = None) -> str:
    metadata = {OC_REQUEST_KEY: tag} if tag else None
    return frame("response.created", response={"id": response_id, "metadata": metadata})


def done(response_id: str, tag: str | None = None) -> str:
    metadata = {OC_REQUEST_KEY: tag} if tag else None
    response = {"id": response_id, "status": "completed", "metadata": metadata, "output": []}
    return frame("response.done", response=response)


def error(code: str, event_id: str | None) -> str:
    return events.dumps(events.error_event(code=code, message="no", client_event_id=event_id))


def user_item(item_id: str = "item_u") -> str:
    item = {"id": item_id, "type": "message", "role": "user", "content": []}
    return frame("conversation.item.added", item=item)


def nudge(request_id: str, **fields) -> OperatorRequest:
    return OperatorRequest(id=request_id, origin="api", requested_by="token:ops", **fields)


def creates(actions) -> list[dict]:
    return [
        json.loads(a.frame)
        for a in actions
        if type(a) is ToUpstream and json.loads(a.frame)["type"] == "response.create"
    ]


def started(core: RelayCore) -> RelayCore:
    core.upstream_attached(now=0.0)
    core.upstream_frame(session_event(), now=0.0)
    return core


# ---------------------------------------------------------------------------- who started it

SPEECH_STOPPED = frame("input_audio_buffer.speech_stopped", item_id="item_u")
COMMITTED = frame("input_audio_buffer.committed", item_id="item_u")
NO_VAD = session_event("session.updated", audio={"input": {"turn_detection": None}})
VAD_NO_CREATE = session_event(
    "session.updated", audio={"input": {"turn_detection": {"type": "server_vad", "create_response": False}}}
)
BETA_NO_VAD = session_event("session.updated", turn_detection=None)


@pytest.mark.parametrize(
    ("before", "origin"),
    [
        ([], "caller"),  # nothing since the last response: only the caller's app asks for one
        ([user_item()], "caller"),  # a typed turn: the caller's app added it and asked
        ([COMMITTED, user_item()], "caller"),  # committed by the app itself (no VAD turn end)
        ([SPEECH_STOPPED, COMMITTED, user_item()], "server"),  # a turn detected by server VAD
        ([NO_VAD, SPEECH_STOPPED], "caller"),  # no turn detection: the server never starts one
        ([VAD_NO_CREATE, SPEECH_STOPPED], "caller"),  # VAD that does not create responses
        ([BETA_NO_VAD, SPEECH_STOPPED], "caller"),  # the beta session shape says the same
    ],
)
def test_a_response_nobody_in_the_console_asked_for_is_the_callers_or_the_servers(before, origin):
    core = started(make_core())
    for event in before:
        core.upstream_frame(event, now=1.0)
    actions = core.upstream_frame(created("resp_1"), now=1.0)
    recorded = [a for a in actions if type(a) is RequestRecorded]
    assert [(a.origin, a.status, a.response_id) for a in recorded] == [
        (origin, RequestStatus.IN_PROGRESS, "resp_1")
    ]


def test_a_detected_turn_accounts_for_one_response_only():
    core = started(make_core())
    core.upstream_frame(SPEECH_STOPPED, now=1.0)
    first = core.upstream_frame(created("resp_1"), now=1.0)
    core.upstream_frame(done("resp_1"), now=2.0)
    second = core.upstream_frame(created("resp_2"), now=3.0)
    origins = [a.origin for a in first + second if type(a) is RequestRecorded]
    assert origins == ["server", "caller"]


# ---------------------------------------------------------------------------- sequencing


def test_an_operator_request_waits_while_the_callers_response_runs():
    core = started(make_core())
    core.upstream_frame(created("resp_c"), now=1.0)
    assert creates(core.submit(nudge("req_a"), now=1.1)) == []
    actions = core.upstream_frame(done("resp_c"), now=2.0)
    [create] = creates(actions)
    assert create["response"]["metadata"] == {OC_REQUEST_KEY: "req_a"}


def oob_created(response_id: str) -> str:
    """A response outside the conversation, as the service announces it: `conversation_id` null."""
    response = {"id": response_id, "conversation_id": None, "metadata": None}
    return frame("response.created", response=response)


def test_the_callers_out_of_band_response_is_recorded_so_and_does_not_hold_up_ours():
    """The caller's app may ask for an out-of-band response (`"conversation": "none"`); it
    writes nothing to the conversation and the model runs it beside others, so an operator's
    request is sent at once, an interrupt has nothing to cancel, and the record says `none`."""
    core = started(make_core())
    core.upstream_frame(SPEECH_STOPPED, now=0.5)  # a detected turn, still to be answered
    actions = core.upstream_frame(oob_created("resp_oob"), now=1.0)
    recorded = [a for a in actions if type(a) is RequestRecorded]
    assert [(a.origin, a.conversation) for a in recorded] == [("caller", "none")]
    assert core.interrupt(now=1.05) == [Answer(payload={"response_id": None})]  # nothing cancelled
    [create] = creates(core.submit(nudge("req_a"), now=1.1))
    assert create["response"]["metadata"] == {OC_REQUEST_KEY: "req_a"}
    core.upstream_frame(created("resp_a", "req_a"), now=1.2)
    core.upstream_frame(done("resp_oob"), now=1.3)
    core.upstream_frame(done("resp_a", "req_a"), now=1.4)
    # The out-of-band response answered no turn: the server's response to it is still the server's.
    server = core.upstream_frame(created("resp_s"), now=2.0)
    assert [a.origin for a in server if type(a) is RequestRecorded] == ["server"]


def test_crossing_creates_the_model_refuses_ours_it_is_sent_again_once_and_shown_to_nobody():
    core = started(make_core())
    [ours] = creates(core.submit(nudge("req_a"), now=1.0))
    # The caller's create reached the model first; then the model refuses ours.
    core.upstream_frame(created("resp_c"), now=1.001)
    refused = core.upstream_frame(error(ACTIVE, ours["event_id"]), now=1.002)
    assert [(a.request_id, a.status) for a in refused if type(a) is RequestChanged] == [
        ("req_a", RequestStatus.QUEUED)
    ]
    assert not [a for a in refused if type(a) is ToCaller]  # nothing anywhere for a caller
    assert creates(core.tick(now=5.0)) == []  # the caller's response still runs
    [again] = creates(core.upstream_frame(done("resp_c"), now=6.0))
    assert again == ours  # the same event, and the only one out
    actions = core.upstream_frame(created("resp_a", "req_a"), now=6.1)
    actions += core.upstream_frame(done("resp_a", "req_a"), now=7.0)
    statuses = [a.status for a in actions if type(a) is RequestChanged and a.request_id == "req_a"]
    assert statuses == [RequestStatus.IN_PROGRESS, RequestStatus.COMPLETED]


def test_the_callers_refused_create_does_not_touch_ours():
    core = started(make_core())
    [ours] = creates(core.submit(nudge("req_a"), now=1.0))
    # Ours won: the model refuses the caller's (an error naming the caller's event id).
    core.upstream_frame(created("resp_a", "req_a"), now=1.001)
    actions = core.upstream_frame(error(ACTIVE, "caller_evt_9"), now=1.002)
    assert not [a for a in actions if type(a) is RequestChanged]
    actions = core.upstream_frame(done("resp_a", "req_a"), now=2.0)
    assert [a.status for a in actions if type(a) is RequestChanged] == [RequestStatus.COMPLETED]


def test_what_is_sent_for_an_operator_holds_nothing_of_the_operators_but_their_instructions_and_metadata():
    core = started(make_core())
    request = nudge("req_a", instructions="Offer a refund.", metadata={"topic": "refund"})
    [create] = creates(core.submit(request, now=1.0))
    assert create["response"]["metadata"] == {"topic": "refund", OC_REQUEST_KEY: "req_a"}
    assert "token:ops" not in json.dumps(create)


# ---------------------------------------------------------------------------- naming


@pytest.mark.parametrize(
    ("first", "named"),
    [
        ([session_event("session.created", "sess_A")], "sess_A"),
        ([session_event("session.updated", "sess_B")], "sess_B"),  # joined after an update
        ([frame("response.output_text.delta", delta="x"), session_event("session.updated", "sess_C")], "sess_C"),
    ],
)
def test_the_session_is_named_by_the_first_session_event(first, named):
    core = make_core()
    core.upstream_attached(now=0.0)
    actions = [a for event in first for a in core.upstream_frame(event, now=0.1)]
    assert [a.session_id for a in actions if type(a) is SessionNamed] == [named]


def test_without_a_session_event_the_call_id_names_the_session_after_a_short_wait():
    core = make_core()
    core.upstream_attached(now=0.0)
    assert core.next_deadline == attached.NAME_WAIT
    assert core.tick(now=attached.NAME_WAIT - 0.01) == []
    actions = core.tick(now=attached.NAME_WAIT)
    assert [type(a) for a in actions] == [SessionNamed]
    assert core.session_id == "rtc_call1" and core.ended is None
    later = core.upstream_frame(session_event("session.created", "sess_late"), now=3.0)
    assert not [a for a in later if type(a) is SessionNamed] and core.session_id == "rtc_call1"


def test_a_relayed_session_without_session_created_still_fails():
    core = RelayCore(fallback_id="sess_x", connect_timeout=10.0)
    core.upstream_attached(now=0.0)
    assert core.tick(now=attached.NAME_WAIT) == []
    assert [a.reason for a in core.tick(now=10.0) if type(a) is SessionEnded] == [
        EndReason.UPSTREAM_CLOSED
    ]


# ---------------------------------------------------------------------------- ending


@pytest.mark.parametrize(
    ("hangup", "code", "status", "reason"),
    [
        ([True], 1000, "ended", EndReason.HUNG_UP),
        ([], 1000, "ended", EndReason.UPSTREAM_CLOSED),  # the caller's side ended the call
        ([True, False], 1000, "ended", EndReason.UPSTREAM_CLOSED),  # the hang-up was refused
        # Two at once (a double click): the second is refused (the call is gone already),
        # and the close that the first one caused still ends the session hung up.
        ([True, True, False], 1000, "ended", EndReason.HUNG_UP),
        ([True], 1006, "failed", EndReason.UPSTREAM_CLOSED),  # lost, not hung up
    ],
)
def test_how_a_sideband_close_ends_the_session(hangup, code, status, reason):
    core = started(make_core())
    for pending in hangup:
        assert core.hangup_requested(pending=pending, now=1.0) == [Answer(payload={"ok": True, "at": 1.0})]
    [end] = [a for a in core.upstream_closed(code, "", now=2.0) if type(a) is SessionEnded]
    assert (end.status, end.reason) == (status, reason)


@pytest.mark.parametrize(
    ("before", "code", "again"),
    [
        ("", 1011, True),  # the sideband failed: the call may go on
        ("", 1001, True),  # its server went away
        ("", 1006, True),
        ("", 1000, False),  # the call ended
        ("hangup", 1006, False),  # the hang-up's close
        ("expired", 1001, False),  # the session's cap: the call ends with it
    ],
)
def test_which_sideband_closes_are_attached_again(before, code, again):
    core = started(make_core())
    if before == "hangup":
        core.hangup_requested(pending=True, now=1.0)
    elif before == "expired":
        core.upstream_frame(error("session_expired", None), now=1.0)
    assert core.may_reattach(code) is again
    relayed = RelayCore(fallback_id="sess_x")
    assert relayed.may_reattach(code) is False, "a relayed session has no call to go on"


def test_a_sideband_lost_again_and_again_is_opened_again_a_few_times_only():
    core = started(make_core())
    assert [core.may_reattach(1011) for _ in range(MAX_REATTACHES + 1)] == [True] * MAX_REATTACHES + [False]


# ---------------------------------------------------------------------------- opening it again


def ends(actions) -> list[SessionEnded]:
    return [a for a in actions if type(a) is SessionEnded]


@pytest.mark.parametrize("status", [500, 503, 429, 408, None])  # None: no answer at all
def test_a_first_sideband_that_fails_to_open_is_tried_again_after_a_growing_backoff(status):
    core = make_core(reopen_delay=0.25)
    assert core.upstream_failed("HTTP 500", status=status, now=10.0) == []
    assert core.next_deadline == 10.25
    assert OpenUpstream() not in core.tick(now=10.2)
    assert core.tick(now=10.25) == [OpenUpstream()]
    assert core.upstream_failed("HTTP 500", status=status, now=10.3) == []
    assert core.next_deadline == 10.8, "doubled after a second failure in a row"
    assert core.tick(now=10.8) == [OpenUpstream()]
    core.upstream_attached(now=11.0)
    assert [a.session_id for a in core.upstream_frame(session_event(), now=11.0)
            if type(a) is SessionNamed] == ["sess_1"], "named by its own session, not the call id"
    assert core.ended is None


@pytest.mark.parametrize("status", [404, 401, 403, 400])
def test_a_sideband_refused_for_good_ends_the_session_at_once(status):
    core = make_core()
    [end] = ends(core.upstream_failed(f"HTTP {status}: Call 'rtc_call1' not found", status=status, now=1.0))
    assert (end.status, end.reason) == ("failed", EndReason.UPSTREAM_CLOSED)
    assert end.detail == f"Could not open the call's sideband: HTTP {status}: Call 'rtc_call1' not found"


def test_a_first_sideband_that_never_opens_ends_the_session_after_its_tries_saying_so():
    core = make_core(reopen_delay=0.25)
    now = 0.0
    for _ in range(MAX_REATTACHES):
        assert ends(core.upstream_failed("HTTP 500", status=500, now=now)) == []
        now = core.next_deadline
        assert OpenUpstream() in core.tick(now=now)
    [end] = ends(core.upstream_failed("HTTP 500: busy", status=500, now=now))
    assert (end.status, end.reason) == ("failed", EndReason.UPSTREAM_CLOSED)
    assert end.detail == f"Could not open the call's sideband ({MAX_REATTACHES + 1} tries): HTTP 500: busy"


def test_lost_sidebands_and_failed_opens_share_one_bound():
    core = started(make_core())
    assert core.upstream_closed(1011, "", now=1.0) == [OpenUpstream()]  # at once
    assert core.upstream_failed("HTTP 500", status=500, now=1.1) == []
    assert core.tick(now=core.next_deadline) == [OpenUpstream()]
    core.upstream_attached(now=2.0)
    assert core.upstream_closed(1006, "", now=3.0) == [OpenUpstream()]
    [end] = ends(core.upstream_failed("HTTP 502", status=502, now=3.1))  # the bound is spent
    assert (end.status, end.code) == ("failed", 1006)
    assert end.detail == "The upstream connection was lost (1006). It could not be opened again: HTTP 502"


def test_a_sideband_lost_when_the_call_is_over_ends_as_it_closed_with_the_refusal():
    core = started(make_core())
    assert core.upstream_closed(1011, "", now=1.0) == [OpenUpstream()]
    [end] = ends(core.upstream_failed("HTTP 404: Call not found", status=404, now=1.1))
    assert (end.status, end.reason, end.code) == ("failed", EndReason.UPSTREAM_CLOSED, 1011)
    assert "lost (1011)" in end.detail and "HTTP 404: Call not found" in end.detail


def test_what_operators_ask_while_no_sideband_is_open_waits_and_goes_once_in_order():
    core = started(make_core())
    core.upstream_closed(1011, "", now=1.0)
    waiting = [
        *core.submit(nudge("req_a", instructions="In turn."), now=1.1),
        *core.note(item_id="item_n", role="system", text="psst", now=1.2),
        *core.submit(nudge("req_b", conversation="none"), now=1.3),
    ]
    assert [a for a in waiting if type(a) is ToUpstream] == [], "nothing goes to a lost sideband"
    assert {a.request_id: a.status for a in waiting if type(a) is RequestChanged} == {
        "req_a": RequestStatus.QUEUED, "req_b": RequestStatus.QUEUED
    }
    assert core.tick(now=30.0) == [], "nothing sent, so nothing times out"
    sent = [json.loads(a.frame) for a in core.upstream_attached(now=31.0) if type(a) is ToUpstream]
    assert [(e["type"], e.get("response", {}).get("metadata", {}).get(OC_REQUEST_KEY)) for e in sent] == [
        ("conversation.item.create", None), ("response.create", "req_b"), ("response.create", "req_a")
    ]
    core.upstream_closed(1011, "", now=32.0)
    assert [a for a in core.upstream_attached(now=33.0) if type(a) is ToUpstream] == [], "sent once"


def test_an_approval_decided_while_no_sideband_is_open_goes_once_one_opens():
    core = started(make_core())
    item = {"id": "mcpr_1", "type": "mcp_approval_request", "name": "refund", "server_label": "crm"}
    core.upstream_frame(frame("conversation.item.done", item=item), now=0.5)
    core.upstream_closed(1011, "", now=1.0)
    decided = core.tools.decide(
        "mcpr_1", approve=True, reason="", by="ann", origin="console", now=1.1
    )
    assert [a for a in decided if type(a) is ToUpstream] == [], "nothing goes to a lost sideband"
    assert decided[-1].payload["ok"] is True
    sent = [json.loads(a.frame) for a in core.upstream_attached(now=2.0) if type(a) is ToUpstream]
    assert [(e["type"], e.get("item", {}).get("type")) for e in sent] == [
        ("conversation.item.create", "mcp_approval_response"), ("response.create", None)
    ], "the decision, then the response it asks for"


def test_what_waits_for_a_sideband_that_never_opens_again_fails_with_the_session():
    core = started(make_core())
    core.upstream_closed(1011, "", now=1.0)
    core.submit(nudge("req_a"), now=1.1)
    core.submit(nudge("req_b", conversation="none"), now=1.2)
    actions = core.upstream_failed("HTTP 404", status=404, now=1.3)
    failed = {a.request_id: a.error_code for a in actions if type(a) is RequestChanged}
    assert failed == {"req_a": "session_ended", "req_b": "session_ended"}
    assert [a for a in actions if type(a) is ToUpstream] == []


def test_a_relayed_session_is_never_hung_up():
    core = RelayCore(fallback_id="sess_x")
    core.upstream_attached(now=0.0)
    core.upstream_frame(session_event(), now=0.0)
    core.hangup_requested(pending=True, now=1.0)
    [end] = [a for a in core.upstream_closed(1000, "", now=2.0) if type(a) is SessionEnded]
    assert end.reason is EndReason.UPSTREAM_CLOSED


# ---------------------------------------------------------------------------- the property


class AttachedCall(RuleBasedStateMachine):
    """A model with one conversation, reached by the caller's app (directly) and the sideband
    (the core). Creates reach it in the order they were sent; one that finds a response active
    is refused, and the refusal reaches the sideband whoever sent it (as the simulator does)."""

    def __init__(self) -> None:
        super().__init__()
        self.core = make_core(send_timeout=1e9)  # timeouts are not the subject here
        self.now = 0.0
        self.core.upstream_attached(now=0.0)
        self.core.upstream_frame(session_event(), now=0.0)
        self.in_flight: list[tuple[str, dict]] = []  # ("ours" | "caller", create event)
        self.active: tuple[str, str | None] | None = None  # (response id, oc_request)
        self.responses = 0
        self.caller_events = 0
        self.ours_out = 0  # our creates sent and not yet answered (created or refused)
        self.statuses: dict[str, list[RequestStatus]] = {}
        self.operator_ids: list[str] = []

    # --- feeding the core, checking every action --------------------------------------------

    def feed(self, actions) -> None:
        for action in actions:
            if type(action) is ToUpstream:
                event = json.loads(action.frame)
                if event["type"] == "response.create":
                    assert self.ours_out == 0, "two of our creates outstanding"
                    assert self.active is None, "ours sent while a response is active"
                    self.ours_out += 1
                    self.in_flight.append(("ours", event))
            elif type(action) is ToCaller and json.loads(action.frame).get("type") == "error":
                # Only the caller's own refusals pass (and the actor drops them: no caller leg).
                assert json.loads(action.frame)["error"]["event_id"].startswith("c_")
            elif type(action) is RequestChanged:
                self.statuses.setdefault(action.request_id, []).append(action.status)

    def upstream(self, event: str) -> None:
        self.feed(self.core.upstream_frame(event, now=self.now))

    # --- rules ---------------------------------------------------------------------------------

    @rule()
    def caller_creates(self):
        self.caller_events += 1
        self.in_flight.append(("caller", {"type": "response.create", "event_id": f"c_{self.caller_events}"}))

    @rule()
    def server_vad_turn(self):
        if self.active is None:  # VAD starts a response at the end of a turn
            self.upstream(frame("input_audio_buffer.speech_stopped", item_id="i"))
            self.start(None)

    @rule(conversation=st.sampled_from([None, "auto"]))
    def operator_submits(self, conversation):
        request_id = f"op_{len(self.operator_ids) + 1}"
        self.operator_ids.append(request_id)
        self.feed(self.core.submit(nudge(request_id, conversation=conversation), now=self.now))

    @precondition(lambda self: self.in_flight)
    @rule()
    def model_takes_the_next_create(self):
        sender, event = self.in_flight.pop(0)
        tag = event.get("response", {}).get("metadata", {}).get(OC_REQUEST_KEY)
        if sender == "ours":
            self.ours_out -= 1
        if self.active is not None:
            self.upstream(error(ACTIVE, event["event_id"]))
        else:
            self.start(tag)

    @precondition(lambda self: self.active is not None)
    @rule()
    def response_finishes(self):
        response_id, tag = self.active
        self.active = None
        self.upstream(done(response_id, tag))

    @rule(seconds=st.sampled_from([0.01, 0.3, 2.0]))
    def time_passes(self, seconds):
        self.now += seconds
        self.feed(self.core.tick(now=self.now))

    def start(self, tag: str | None) -> None:
        self.responses += 1
        self.active = (f"resp_{self.responses}", tag)
        self.upstream(created(*self.active))

    # --- invariants and the end -----------------------------------------------------------------

    @invariant()
    def statuses_move_forward_and_end_once(self):
        for request_id, seen in self.statuses.items():
            terminal = [s for s in seen if s in TERMINAL_STATUSES]
            assert len(terminal) <= 1, (request_id, seen)
            assert not terminal or seen[-1] in TERMINAL_STATUSES, (request_id, seen)

    def teardown(self):
        # Drain: the model takes what is in flight, responses finish, retries go out; then
        # every operator request has completed (nothing lost), each exactly once. Each
        # create in flight takes a step, and each may start a response that takes another.
        for _ in range(4 * len(self.operator_ids) + 2 * len(self.in_flight) + 20):
            if self.in_flight:
                self.model_takes_the_next_create()
            elif self.active is not None:
                self.response_finishes()
            else:
                self.time_passes(1.0)
        for request_id in self.operator_ids:
            seen = self.statuses.get(request_id, [])
            assert [s for s in seen if s in TERMINAL_STATUSES] == [RequestStatus.COMPLETED], (
                request_id,
                seen,
            )
            assert seen.count(RequestStatus.IN_PROGRESS) == 1, (request_id, seen)


TestAttachedCall = AttachedCall.TestCase
TestAttachedCall.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize("end", ["lost", "shutdown"])
def test_an_attached_call_whose_process_ends_is_worded_for_the_operator(end):
    """No caller is here to tell to reconnect: the record says the console lost the call (or
    stopped), and that the call itself may go on between the caller and the model."""
    core = started(make_core())
    actions = getattr(core, end)(now=1.0)
    ended = core.ended
    lost = end == "lost"
    # A sweep recorded the lost session's end already: it is not recorded twice.
    assert ends(actions) == ([] if lost else [ended])
    expected = ("failed", EndReason.SESSION_LOST) if lost else ("ended", EndReason.SERVER_SHUTDOWN)
    assert (ended.status, ended.reason) == expected
    assert "reconnect" not in ended.detail
    assert "the caller and the model" in ended.detail
    assert [a for a in actions if type(a) is ToCaller] == [], "no caller to send an error to"
