"""Hypothesis state machine: random interleavings of every sequencer input.

An honest upstream is modelled (it answers response.create in order, refuses one while an
in-conversation response runs, starts responses of its own, finishes them, honours cancels),
and stray inputs are mixed in (unknown or late response.created, errors with or without
event_id, duplicate events, finished requests forgotten, the leg held or offline). The
expected state is rebuilt only from the returned actions, so the DESIGN invariants are checked
against what the actor would actually do:

- never two in-conversation response.create outstanding;
- none sent while an in-conversation response is active (as the inputs said);
- in-conversation requests are first sent in submission (FIFO) order, a put-back one first;
- statuses only move forward; at most one terminal status; after closed(), all terminal;
- conversation_already_has_active_response puts an in-conversation request back (or ends a
  cancelled one), never fails it;
- no request is sent twice except after conversation_already_has_active_response;
- nothing in-conversation is sent while held or offline, nothing out of band while offline,
  and resume() sends what waited, in order;
- the read-only views agree with the actions, and a queued request never stalls.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from apps.realtime.sequencer import (
    ACTIVE_RESPONSE_ERROR,
    OC_REQUEST_KEY,
    DuplicateRequest,
    ErrorClaimed,
    LateResponse,
    Request,
    RequestNotCancellable,
    RequestStatus,
    ResponseObserved,
    SendEvent,
    Sequencer,
    StatusChanged,
)

S = RequestStatus
TIMEOUT = 15.0
RETRY = 0.25
ORIGINS = ("caller", "console", "api")
ERROR_CODES = (ACTIVE_RESPONSE_ERROR, "invalid_value", None)
DONE_STATUSES = ("completed", "cancelled", "incomplete", "failed", "weird")

# Allowed status moves (besides the checks on why they happen).
FORWARD = {
    None: {S.QUEUED, S.IN_PROGRESS},
    S.QUEUED: {S.SENT, S.IN_PROGRESS, S.CANCELLED, S.FAILED},
    S.SENT: {S.QUEUED, S.IN_PROGRESS, S.COMPLETED, S.CANCELLED, S.INCOMPLETE, S.FAILED},
    S.IN_PROGRESS: {S.COMPLETED, S.CANCELLED, S.INCOMPLETE, S.FAILED},
}

responses = st.fixed_dictionaries(
    {},
    optional={
        "instructions": st.none() | st.sampled_from(["Be brief.", ""]),
        "metadata": st.none()
        | st.dictionaries(st.sampled_from(["topic", "ticket"]), st.none() | st.just("x")),
        "max_output_tokens": st.none() | st.just(100),
    },
)


class SequencerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.seq = Sequencer(send_timeout=TIMEOUT, retry_delay=RETRY)
        self.now = 0.0
        self.counter = 0
        # What the actions said.
        self.requests: dict[str, Request] = {}
        self.status: dict[str, RequestStatus] = {}
        self.terminals: Counter[str] = Counter()
        self.sends: Counter[str] = Counter()
        self.put_back: set[str] = set()  # sent -> queued by the active-response error
        self.conversation_order: list[str] = []  # in-conversation requests, by submission
        self.queue: list[str] = []
        self.outstanding: str | None = None
        self.cancel_events: dict[str, str] = {}  # event_id -> response_id
        self.cancel_wanted: set[str] = set()  # cancel() while sent: no response to cancel yet
        self.closed_reason: str | None = None
        self.forgotten: set[str] = set()  # forget_finished(): unknown to the sequencer
        self.held = self.offline = False  # as last set; resume() clears both
        self.oob_waiting: list[str] = []  # out-of-band requests queued while offline
        # What the inputs said: responses created and not done -> in conversation?
        self.live: dict[str, bool] = {}
        # The honest upstream.
        self.wire_creates: list[tuple[str, str, bool]] = []  # (event_id, request_id, oob)
        self.wire_cancels: list[tuple[str, str]] = []  # (event_id, response_id)
        self.upstream_live: dict[str, bool] = {}  # response_id -> in conversation
        self.untold: list[str] = []  # started upstream, response.created not delivered yet

    # ------------------------------------------------------------------ helpers

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def snapshot(self) -> tuple:
        seq = self.seq
        return (
            seq.queued_ids,
            seq.outstanding_id,
            seq.active_response_id,
            seq.active_request_id,
            seq.is_closed,
            seq.next_deadline,
            {rid: seq.status(rid) for rid in self.requests if rid not in self.forgotten},
        )

    def known(self, request_id: str | None) -> bool:
        """Submitted, and not forgotten since."""
        return request_id in self.requests and request_id not in self.forgotten

    def is_oob(self, request_id: str) -> bool:
        return self.requests[request_id].out_of_band

    def apply(self, actions, *, cause: str, code: str | None = None, submitted: str | None = None):
        assert isinstance(actions, list)
        if self.closed_reason is not None and cause not in ("submit", "closed"):
            assert actions == [], f"{cause} after closed() must do nothing"
        claims = [a for a in actions if isinstance(a, ErrorClaimed)]
        assert len(claims) <= 1 and (not claims or cause == "error")
        for index, action in enumerate(actions):
            if isinstance(action, SendEvent):
                if action.event["type"] == "response.create":
                    follower = actions[index + 1] if index + 1 < len(actions) else None
                    assert isinstance(follower, StatusChanged), "create without `sent`"
                    assert (follower.request_id, follower.status) == (action.request_id, S.SENT)
                    self.on_create(action, cause=cause, submitted=submitted)
                else:
                    self.on_cancel(action)
            elif isinstance(action, StatusChanged):
                self.on_status(action, cause=cause, code=code)
            elif isinstance(action, ResponseObserved):
                assert cause == "created"
                follower = actions[index + 1]
                assert follower == StatusChanged(
                    request_id=action.request.id,
                    status=S.IN_PROGRESS,
                    at=self.now,
                    response_id=action.response_id,
                )
                assert action.request.id not in self.requests
                assert action.request.origin == "server"
                self.requests[action.request.id] = action.request
            elif isinstance(action, LateResponse):
                # A response that came after its request ended: the status does not move.
                assert cause == "done" and self.status[action.request_id].is_terminal
            elif isinstance(action, ErrorClaimed):
                if action.forward_to_caller:
                    assert code != ACTIVE_RESPONSE_ERROR
                    assert self.requests[action.request_id].origin == "caller"
            else:
                raise AssertionError(f"unknown action {action!r}")

    def on_create(self, action: SendEvent, *, cause: str, submitted: str | None) -> None:
        rid = action.request_id
        request = self.requests[rid]
        # Payload: the request's fields without nulls, tagged with its id.
        wire = action.event
        assert wire["type"] == "response.create" and wire["event_id"] == request.event_id
        payload = wire["response"]
        assert payload["metadata"][OC_REQUEST_KEY] == rid
        assert None not in payload.values() and None not in payload["metadata"].values()
        expected = {k: v for k, v in request.response.items() if v is not None and k != "metadata"}
        assert {k: v for k, v in payload.items() if k != "metadata"} == expected
        # Sent only from queued, and a second time only after being put back.
        assert self.status[rid] is S.QUEUED, f"{rid} sent while {self.status[rid]}"
        if self.sends[rid]:
            assert rid in self.put_back, f"{rid} sent twice without the active-response error"
            event(f"re-sent after active-response error, on {cause}")
        self.put_back.discard(rid)
        if request.out_of_band:
            assert not self.offline, "out-of-band request sent while offline"
            if cause == "resume":
                assert self.oob_waiting and self.oob_waiting[0] == rid, "not in order"
                self.oob_waiting.pop(0)
            else:
                assert cause == "submit" and submitted == rid, "out-of-band sent at submit only"
            if any(self.live.values()):
                event("out-of-band sent while a response is active")
        else:
            assert not (self.held or self.offline), "in-conversation request sent while held"
            assert self.outstanding is None, "two in-conversation response.create outstanding"
            assert not any(self.live.values()), "response.create sent while a response is active"
            if not self.sends[rid]:
                earlier = self.conversation_order[: self.conversation_order.index(rid)]
                waiting = [
                    e for e in earlier if not self.sends[e] and not self.status[e].is_terminal
                ]
                assert not waiting, f"{rid} sent before earlier {waiting}: not FIFO"
            assert self.queue and self.queue[0] == rid, f"{rid} is not the head of {self.queue}"
        self.sends[rid] += 1
        self.wire_creates.append((request.event_id, rid, request.out_of_band))

    def on_cancel(self, action: SendEvent) -> None:
        wire = action.event
        assert set(wire) == {"type", "event_id", "response_id"}
        assert wire["response_id"] in self.live, "response.cancel for a response not running"
        self.cancel_events[wire["event_id"]] = wire["response_id"]
        event("response.cancel sent")
        self.wire_cancels.append((wire["event_id"], wire["response_id"]))

    def on_status(self, action: StatusChanged, *, cause: str, code: str | None) -> None:
        rid, new = action.request_id, action.status
        assert action.at == self.now
        prev = self.status.get(rid)
        assert prev is None or not prev.is_terminal, f"{rid}: second terminal status {new}"
        assert new in FORWARD[prev], f"{rid}: {prev} -> {new} is not forward"
        if prev is None and new is S.QUEUED:
            assert cause == "submit"
            if not self.is_oob(rid):
                self.conversation_order.append(rid)
                self.queue.append(rid)
            elif self.offline and self.closed_reason is None:
                self.oob_waiting.append(rid)
        if prev is S.QUEUED and new is S.IN_PROGRESS:
            assert self.sends[rid], "in progress without ever being sent"
            event("response.created for a put-back request")
        if cause == "error" and code == ACTIVE_RESPONSE_ERROR and not self.is_oob(rid):
            assert new in (S.QUEUED, S.CANCELLED), f"{rid}: {new} on the active-response error"
            assert new is S.CANCELLED or rid not in self.cancel_wanted, "cancelled, yet put back"
        if prev is S.SENT and new is S.QUEUED:
            assert cause == "error" and code == ACTIVE_RESPONSE_ERROR, (
                "sent -> queued without cause"
            )
            self.put_back.add(rid)
            self.queue.insert(0, rid)
            event("put back at head")
        if prev is S.QUEUED and new is not S.QUEUED and rid in self.queue:
            self.queue.remove(rid)
        if new.is_terminal and rid in self.oob_waiting:  # cancelled, or failed at the end
            self.oob_waiting.remove(rid)
        if new is S.SENT and not self.is_oob(rid):
            self.outstanding = rid
        if prev is S.SENT and self.outstanding == rid:
            self.outstanding = None
        if new.is_terminal:
            self.terminals[rid] += 1
            self.put_back.discard(rid)
            if cause == "closed":
                assert action.error_code == self.closed_reason
            if cause == "tick":
                assert action.error_code == "upstream_timeout"
                event("timed out")
        self.status[rid] = new

    # ------------------------------------------------------------------ inputs: operators

    @rule(
        oob=st.booleans(), origin=st.sampled_from(ORIGINS), response=responses, reuse=st.booleans()
    )
    def submit(self, oob, origin, response, reuse):
        rid = self.fresh("q")
        event_id = f"evt_{rid}"
        if reuse and origin == "caller" and self.requests:
            event_id = self.requests[max(self.requests)].event_id or event_id  # a sloppy caller
        if oob:
            response = {**response, "conversation": "none"}
        request = Request(id=rid, origin=origin, event_id=event_id, response=response)
        self.requests[rid] = request
        actions = self.seq.submit(request, now=self.now)
        assert actions[0] == StatusChanged(request_id=rid, status=S.QUEUED, at=self.now)
        if self.closed_reason is not None:
            assert [(a.status, a.error_code) for a in actions[1:]] == [(S.FAILED, "session_ended")]
        self.apply(actions, cause="submit", submitted=rid)

    @rule(data=st.data())
    def cancel(self, data):
        rid = data.draw(st.sampled_from(sorted(self.requests) + ["nobody"]))
        status = self.status.get(rid)
        before = self.snapshot()
        if (
            status is None
            or rid in self.forgotten
            or (status.is_terminal and self.closed_reason is None)
        ):
            with pytest.raises(RequestNotCancellable):
                self.seq.cancel(rid, now=self.now)
            assert self.snapshot() == before, "a refused cancel changed the state"
            return
        actions = self.seq.cancel(rid, now=self.now)
        if self.closed_reason is None:
            if status is S.QUEUED:
                assert [(a.request_id, a.status) for a in actions] == [(rid, S.CANCELLED)]
            elif status is S.SENT:
                assert actions == []
                self.cancel_wanted.add(rid)  # its response is to be cancelled when it appears
            else:
                assert [a.event["type"] for a in actions] == ["response.cancel"]
        self.apply(actions, cause="cancel")

    @rule()
    def interrupt(self):
        actions = self.seq.interrupt(now=self.now)
        if self.closed_reason is None:
            assert bool(actions) == any(self.live.values())
        self.apply(actions, cause="interrupt")

    @rule(reason=st.sampled_from(["session_ended", "upstream_closed"]), dice=st.integers(0, 9))
    def closed(self, reason, dice):
        if dice:
            return  # closing ends all the interesting interleavings: keep it rare
        first = self.closed_reason is None
        actions = self.seq.closed(reason, now=self.now)
        if first:
            self.closed_reason = reason
            pending = {rid for rid, s in self.status.items() if not s.is_terminal}
            if pending:
                event("closed with pending requests")
            assert {a.request_id for a in actions} == pending
            self.apply(actions, cause="closed")
            self.live.clear()
        else:
            self.apply(actions, cause="closed again")

    @rule(dt=st.sampled_from([0.0, 0.1, RETRY, 1.0, 5.0, TIMEOUT - 0.1, TIMEOUT]))
    def tick(self, dt):
        deadline = self.seq.next_deadline
        self.now += dt
        actions = self.seq.tick(now=self.now)
        if deadline is None or self.now < deadline:
            assert actions == [], "tick acted before next_deadline"
        else:
            assert actions, "tick did nothing at next_deadline"
        self.apply(actions, cause="tick")

    @precondition(lambda self: self.seq.next_deadline is not None)
    @rule()
    def tick_at_deadline(self):
        self.now = max(self.now, self.seq.next_deadline)
        actions = self.seq.tick(now=self.now)
        assert actions, "tick did nothing at next_deadline"
        self.apply(actions, cause="tick")

    @rule(offline=st.booleans())
    def hold(self, offline):
        """The upstream leg is replaced (held), or none is open at all (offline)."""
        if offline:
            self.seq.offline = self.offline = True
        else:
            self.seq.held = self.held = True

    @precondition(lambda self: self.held or self.offline)
    @rule()
    def resume(self):
        self.held = self.offline = False
        self.apply(self.seq.resume(now=self.now), cause="resume")
        assert self.oob_waiting == [], "an out-of-band request still waits after resume()"

    @rule(keep=st.integers(0, 2))
    def forget_finished(self, keep):
        """A long session forgets finished requests; late events may still name them."""
        finished = [
            rid for rid, s in self.status.items() if s.is_terminal and rid not in self.forgotten
        ]
        dropped = self.seq.forget_finished(keep=keep)
        assert all(self.status[rid] is status for rid, status in dropped)
        assert {rid for rid, _ in dropped} <= set(finished), "forgot a request not finished"
        assert len(finished) - len(dropped) >= min(keep, len(finished))
        if dropped:
            event("finished requests forgotten")
        self.forgotten |= {rid for rid, _ in dropped}

    # ------------------------------------------------------------------ inputs: the upstream

    def created(self, response_id: str, oc_request: str | None) -> None:
        new = self.closed_reason is None and response_id not in self.live
        if new:
            ours_oob = self.known(oc_request) and self.sends[oc_request] > 0
            self.live[response_id] = not (ours_oob and self.is_oob(oc_request))
            if oc_request is None and self.outstanding is not None:
                event("server response while a request is outstanding")
        actions = self.seq.response_created(
            response_id=response_id, oc_request=oc_request, now=self.now
        )
        if new and self.known(oc_request) and oc_request in self.cancel_wanted:
            self.cancel_wanted.discard(oc_request)
            assert any(
                isinstance(a, SendEvent) and a.event.get("response_id") == response_id
                for a in actions
            ), "a cancel asked while sent was not sent when the response appeared"
            event("pending cancel sent on response.created")
        self.apply(actions, cause="created")

    def done(self, response_id: str, status: str) -> None:
        self.live.pop(response_id, None)
        details = {"output_text": "hi"}
        actions = self.seq.response_done(
            response_id=response_id, status=status, now=self.now, details=details
        )
        expected = S(status) if status in DONE_STATUSES[:4] else S.FAILED
        for action in actions:
            if isinstance(action, StatusChanged) and action.status.is_terminal:
                assert action.details == details and action.response_id == response_id
                assert action.status is expected, f"done({status!r}) gave {action.status}"
                assert (action.error_code == "unexpected_status") == (status == "weird")
        self.apply(actions, cause="done")

    def error(self, event_id: str | None, code: str | None) -> None:
        actions = self.seq.error(event_id=event_id, code=code, message="m", now=self.now)
        if event_id is None and self.outstanding is not None:
            # The upstream does not always echo event_id: it is then about the outstanding one.
            assert actions[0] == ErrorClaimed(
                request_id=self.outstanding,
                forward_to_caller=self.requests[self.outstanding].origin == "caller"
                and code != ACTIVE_RESPONSE_ERROR,
            )
        before = dict(self.status)
        self.apply(actions, cause="error", code=code)
        for claim in (a for a in actions if isinstance(a, ErrorClaimed)):
            if before.get(claim.request_id) is S.SENT:
                # The error answered its response.create: it no longer waits for created.
                assert self.status[claim.request_id] is not S.SENT, "error left request sent"

    @precondition(lambda self: self.wire_creates)
    @rule(
        vad_first=st.sampled_from(["not told yet", "told", "no"]),
        answer=st.sampled_from(["accept", "refuse", "lose"]),
        echo=st.booleans(),
    )
    def upstream_answers_create(self, vad_first, answer, echo):
        """The upstream takes the next response.create off the wire, in order."""
        event_id, rid, oob = self.wire_creates.pop(0)
        if answer == "lose":
            return  # never answered: the sequencer has to time it out
        if vad_first != "no" and not any(self.upstream_live.values()):
            # The race the oc_request tag exists for: server VAD starts a response first,
            # and its response.created may reach the sequencer only after the error.
            self.upstream_starts_its_own_response(tell=vad_first == "told")
        if not oob and any(self.upstream_live.values()):
            self.error(event_id if echo else None, ACTIVE_RESPONSE_ERROR)
        elif answer == "refuse":
            self.error(event_id if echo else None, "invalid_value")
        else:
            response_id = self.fresh("resp_")
            self.upstream_live[response_id] = not oob
            self.created(response_id, rid)

    @precondition(lambda self: not any(self.upstream_live.values()))
    @rule()
    def upstream_starts_its_own_response(self, tell=True):
        response_id = self.fresh("resp_")
        self.upstream_live[response_id] = True
        if tell:
            self.created(response_id, None)
        else:
            self.untold.append(response_id)

    @precondition(lambda self: self.untold)
    @rule()
    def upstream_tells_created(self):
        self.created(self.untold.pop(0), None)

    @precondition(lambda self: set(self.upstream_live) - set(self.untold))
    @rule(data=st.data(), status=st.sampled_from(DONE_STATUSES))
    def upstream_finishes_response(self, data, status):
        response_id = data.draw(st.sampled_from(sorted(set(self.upstream_live) - set(self.untold))))
        del self.upstream_live[response_id]
        self.done(response_id, status)

    @precondition(lambda self: self.wire_cancels)
    @rule()
    def upstream_answers_cancel(self):
        event_id, response_id = self.wire_cancels.pop(0)
        if response_id in self.upstream_live:
            del self.upstream_live[response_id]
            self.done(response_id, "cancelled")
        else:
            self.error(event_id, "response_cancel_not_active")

    # ------------------------------------------------------------------ inputs: stray events
    # One rule with a `kind`, so that stray inputs do not crowd out the honest upstream.

    @rule(
        data=st.data(),
        kind=st.sampled_from(["created", "duplicate created", "done", "error", "duplicate id"]),
    )
    def stray(self, data, kind):
        if kind == "created":  # unknown, the server's, late, or naming any request at all
            oc_request = data.draw(st.sampled_from([None, "nobody", *sorted(self.requests)]))
            response_id = self.fresh("resp_")
            ours_oob = self.known(oc_request) and self.sends[oc_request]
            self.upstream_live[response_id] = not (ours_oob and self.is_oob(oc_request))
            self.created(response_id, oc_request)
        elif kind == "duplicate created" and self.live:
            response_id = data.draw(st.sampled_from(sorted(self.live)))
            before = self.snapshot()
            self.created(response_id, data.draw(st.sampled_from([None, *sorted(self.requests)])))
            assert self.snapshot() == before, "a repeated response.created changed the state"
        elif kind == "done":
            before = self.snapshot()
            self.done("resp_unknown", data.draw(st.sampled_from(DONE_STATUSES)))
            assert self.snapshot() == before, "response.done of an unknown response did something"
        elif kind == "error":
            known = sorted({r.event_id for r in self.requests.values() if r.event_id})
            event_id = data.draw(
                st.sampled_from([None, "evt_unknown", *known, *sorted(self.cancel_events)])
            )
            self.error(event_id, data.draw(st.sampled_from(ERROR_CODES)))
        elif kind == "duplicate id" and self.requests:
            rid = data.draw(st.sampled_from(sorted(self.requests)))
            if rid in self.forgotten:
                return  # as if never submitted: the sequencer would take it again
            before = self.snapshot()
            with pytest.raises(DuplicateRequest):
                self.seq.submit(Request(id=rid, origin="api", event_id="evt_x"), now=self.now)
            assert self.snapshot() == before, "a refused submit changed the state"

    # ------------------------------------------------------------------ invariants

    @invariant()
    def views_agree_with_actions(self):
        seq = self.seq
        for rid, status in self.status.items():
            if rid in self.forgotten:
                continue
            assert seq.status(rid) is status, f"{rid}: {seq.status(rid)} but actions said {status}"
            assert seq.get(rid) == self.requests[rid]
        assert seq.queued_ids == (*self.oob_waiting, *self.queue)
        assert seq.outstanding_id == self.outstanding
        assert seq.is_closed == (self.closed_reason is not None)

    @invariant()
    def active_response_is_one_the_inputs_started(self):
        active = self.seq.active_response_id
        running = {rid for rid, in_conversation in self.live.items() if in_conversation}
        assert (active is None) == (not running)
        assert active is None or active in running

    @invariant()
    def at_most_one_terminal_status(self):
        assert all(count == 1 for count in self.terminals.values())

    @invariant()
    def everything_terminal_after_closed(self):
        if self.closed_reason is not None:
            assert all(s.is_terminal for s in self.status.values())
            assert self.seq.next_deadline is None

    @invariant()
    def queued_request_never_stalls(self):
        if self.closed_reason is None and self.queue and not (self.held or self.offline):
            seq = self.seq
            assert (
                seq.outstanding_id is not None
                or seq.active_response_id is not None
                or seq.next_deadline is not None
            ), "a queued request waits for nothing that will ever come"


SequencerMachine.TestCase.settings = settings(
    max_examples=500,
    stateful_step_count=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
test_sequencer_invariants = SequencerMachine.TestCase
