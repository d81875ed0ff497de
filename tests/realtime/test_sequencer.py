"""Sequencer rules, one table per rule: each step is an input and the actions it must return.

Steps are short strings (see `_step`), actions are summarised as strings (see `summary`):
  "a queued"                       StatusChanged(a, queued)
  "a failed upstream_timeout"      StatusChanged(a, failed, error_code=...)
  "create a" / "cancel r1"         SendEvent response.create for a / response.cancel of r1
  "observed r1 req_server_1"       ResponseObserved
  "claimed a" / "claimed a forward" ErrorClaimed(a, forward_to_caller=False/True)
  "late a r1 completed"            LateResponse(a, r1, completed)
"""

from __future__ import annotations

import dataclasses

import pytest

from apps.realtime.sequencer import (
    ACTIVE_RESPONSE_ERROR,
    OC_REQUEST_KEY,
    TERMINAL_STATUSES,
    DuplicateRequest,
    ErrorClaimed,
    InvalidRequest,
    LateResponse,
    Request,
    RequestNotCancellable,
    RequestStatus,
    ResponseObserved,
    SendEvent,
    Sequencer,
    StatusChanged,
)

ACTIVE = ACTIVE_RESPONSE_ERROR


def request(request_id: str, *, origin: str = "console", oob: bool = False, **response) -> Request:
    if oob:
        response["conversation"] = "none"
    return Request(id=request_id, origin=origin, event_id=f"evt_{request_id}", response=response)


def summary(actions) -> list[str]:
    out = []
    for action in actions:
        match action:
            case StatusChanged(request_id=rid, status=status, error_code=code):
                out.append(f"{rid} {status.value}" + (f" {code}" if code else ""))
            case SendEvent(event={"type": "response.create"}, request_id=rid):
                out.append(f"create {rid}")
            case SendEvent(event={"type": "response.cancel", "response_id": response_id}):
                out.append(f"cancel {response_id}")
            case ResponseObserved(response_id=response_id, request=req):
                out.append(f"observed {response_id} {req.id}")
            case LateResponse(request_id=rid, response_id=response_id, status=status):
                out.append(f"late {rid} {response_id} {status}")
            case ErrorClaimed(request_id=rid, forward_to_caller=forward):
                out.append(f"claimed {rid}" + (" forward" if forward else ""))
            case _:
                raise AssertionError(f"unexpected action {action!r}")
    return out


class Driver:
    """Runs step strings against a Sequencer; `now` only moves with "tick T"."""

    def __init__(self, **kwargs) -> None:
        self.seq = Sequencer(**kwargs)
        self.now = 0.0
        self.last: list = []

    def step(self, text: str) -> list:
        verb, *args = text.split()
        seq, now = self.seq, self.now
        if verb == "submit":
            origin = "caller" if "caller" in args[1:] else "console"
            actions = seq.submit(request(args[0], origin=origin, oob="oob" in args[1:]), now=now)
        elif verb == "created":
            oc_request = None if args[1] == "-" else args[1]
            actions = seq.response_created(response_id=args[0], oc_request=oc_request, now=now)
        elif verb == "done":
            actions = seq.response_done(response_id=args[0], status=args[1], now=now)
        elif verb == "error":
            event_id = None if args[0] == "-" else args[0]
            actions = seq.error(event_id=event_id, code=args[1], message="boom", now=now)
        elif verb == "tick":
            self.now = now = float(args[0])
            actions = seq.tick(now=now)
        elif verb == "cancel":
            actions = seq.cancel(args[0], now=now)
        elif verb == "interrupt":
            actions = seq.interrupt(now=now)
        elif verb == "closed":
            actions = seq.closed(args[0], now=now)
        else:
            raise ValueError(text)
        self.last = actions
        return actions

    def run(self, table: list[tuple[str, list[str]]]) -> None:
        for number, (text, expected) in enumerate(table, 1):
            got = summary(self.step(text))
            assert got == expected, f"step {number} {text!r}: expected {expected}, got {got}"


def run(table, **kwargs) -> Driver:
    driver = Driver(**kwargs)
    driver.run(table)
    return driver


def snapshot(seq: Sequencer, ids) -> tuple:
    return (
        seq.queued_ids,
        seq.outstanding_id,
        seq.active_response_id,
        seq.active_request_id,
        seq.is_closed,
        seq.next_deadline,
        {rid: seq.status(rid) for rid in ids},
    )


# ---------------------------------------------------------------------------- submit and send


def test_first_request_is_queued_then_sent_at_once():
    driver = run([("submit a", ["a queued", "create a", "a sent"])])
    assert driver.seq.outstanding_id == "a"
    assert driver.seq.status("a") is RequestStatus.SENT


def test_second_request_waits_until_response_done():
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("submit b", ["b queued"]),
            ("created r1 a", ["a in_progress"]),
            ("submit c", ["c queued"]),
            ("done r1 completed", ["a completed", "create b", "b sent"]),
            ("created r2 b", ["b in_progress"]),
            ("done r2 completed", ["b completed", "create c", "c sent"]),
        ]
    )
    assert driver.seq.queued_ids == ()
    assert driver.seq.outstanding_id == "c"


def test_request_waits_while_outstanding_even_without_active_response():
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("submit b", ["b queued"]),
        ]
    )
    assert driver.seq.queued_ids == ("b",)
    assert driver.seq.outstanding_id == "a"
    assert driver.seq.active_response_id is None


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        pytest.param({}, {"metadata": {OC_REQUEST_KEY: "a"}}, id="empty"),
        pytest.param(
            {"instructions": None, "metadata": None, "voice": None},
            {"metadata": {OC_REQUEST_KEY: "a"}},
            id="all-null",
        ),
        pytest.param(
            {"instructions": "Be brief.", "max_output_tokens": None},
            {"instructions": "Be brief.", "metadata": {OC_REQUEST_KEY: "a"}},
            id="null-dropped",
        ),
        pytest.param(
            {"metadata": {"topic": "billing", "empty": None}, "output_modalities": ["text"]},
            {"metadata": {"topic": "billing", OC_REQUEST_KEY: "a"}, "output_modalities": ["text"]},
            id="metadata-merged",
        ),
        pytest.param(
            {"conversation": "auto", "input": []},
            {"conversation": "auto", "input": [], "metadata": {OC_REQUEST_KEY: "a"}},
            id="falsy-but-set-kept",
        ),
    ],
)
def test_payload_has_no_null_fields_and_only_oc_request_when_empty(response, expected):
    original = {key: (dict(v) if isinstance(v, dict) else v) for key, v in response.items()}
    req = Request(id="a", origin="console", event_id="evt_a", response=response)
    send = Sequencer().submit(req, now=0.0)[1]
    assert send == SendEvent(
        event={"type": "response.create", "event_id": "evt_a", "response": expected},
        request_id="a",
    )
    assert response == original, "the request's own response mapping must not be modified"


@pytest.mark.parametrize(
    "req",
    [
        pytest.param(Request(id="a", origin="api", event_id="", response={}), id="no-event-id"),
        pytest.param(Request(id="", origin="api", event_id="e", response={}), id="no-id"),
        pytest.param(
            Request(
                id="a", origin="api", event_id="e", response={"metadata": {OC_REQUEST_KEY: "x"}}
            ),
            id="reserved-metadata-key",
        ),
        pytest.param(
            Request(id="a", origin="api", event_id="e", response={"metadata": "text"}),
            id="metadata-not-an-object",
        ),
    ],
)
def test_submit_of_invalid_request_raises_and_changes_nothing(req):
    driver = run([("submit x", ["x queued", "create x", "x sent"]), ("submit y", ["y queued"])])
    before = snapshot(driver.seq, ["x", "y"])
    with pytest.raises(InvalidRequest):
        driver.seq.submit(req, now=1.0)
    assert snapshot(driver.seq, ["x", "y"]) == before
    with pytest.raises(KeyError):
        driver.seq.status(req.id)


def test_submit_of_known_id_raises_duplicate_and_changes_nothing():
    driver = run([("submit a", ["a queued", "create a", "a sent"]), ("submit b", ["b queued"])])
    before = snapshot(driver.seq, ["a", "b"])
    for known in ("a", "b"):
        with pytest.raises(DuplicateRequest):
            driver.seq.submit(dataclasses.replace(request(known), event_id="evt_new"), now=1.0)
    assert snapshot(driver.seq, ["a", "b"]) == before


def test_caller_may_reuse_an_event_id():
    seq = Sequencer()
    seq.submit(Request(id="a", origin="caller", event_id="same", response={}), now=0.0)
    actions = seq.submit(Request(id="b", origin="caller", event_id="same", response={}), now=0.0)
    assert summary(actions) == ["b queued"]


# ---------------------------------------------------------------------------- response.created


def test_response_created_names_request_in_progress_and_frees_outstanding():
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("created r1 a", ["a in_progress"]),
        ]
    )
    seq = driver.seq
    assert (seq.outstanding_id, seq.active_response_id, seq.active_request_id) == (None, "r1", "a")
    assert driver.last[0].response_id == "r1"


def test_server_response_observed_while_request_outstanding():
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("created r9 -", ["observed r9 req_server_1", "req_server_1 in_progress"]),
            ("error evt_a " + ACTIVE, ["claimed a", "a queued"]),
            ("tick 5", []),  # the server's response is known: wait for its done, no retry
            ("done r9 completed", ["req_server_1 completed", "create a", "a sent"]),
        ]
    )
    observed = driver.seq.get("req_server_1")
    assert (observed.origin, observed.event_id, dict(observed.response)) == ("server", "", {})


def test_outstanding_request_stays_outstanding_when_server_response_appears():
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("created r9 -", ["observed r9 req_server_1", "req_server_1 in_progress"]),
        ]
    )
    seq = driver.seq
    assert (seq.outstanding_id, seq.active_response_id) == ("a", "r9")
    assert seq.active_request_id == "req_server_1"
    assert seq.status("a") is RequestStatus.SENT


def test_server_response_blocks_sending_until_done():
    run(
        [
            ("created r9 -", ["observed r9 req_server_1", "req_server_1 in_progress"]),
            ("submit a", ["a queued"]),
            ("done r9 cancelled", ["req_server_1 cancelled", "create a", "a sent"]),
        ]
    )


@pytest.mark.parametrize("oc_request", ["nobody", "q"], ids=["unknown", "queued-never-sent"])
def test_created_naming_no_sent_request_is_the_servers(oc_request):
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("submit q", ["q queued"]),
            (f"created r9 {oc_request}", ["observed r9 req_server_1", "req_server_1 in_progress"]),
        ]
    )
    assert driver.seq.status("q") is RequestStatus.QUEUED


def test_late_created_for_timed_out_request_blocks_but_changes_no_status():
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("submit b", ["b queued"]),
            ("tick 15", ["a failed upstream_timeout", "create b", "b sent"]),
            ("created r1 a", []),
            ("error evt_b " + ACTIVE, ["claimed b", "b queued"]),
            ("tick 30", []),  # r1 is known to be active: no retry on a timer
            ("done r1 completed", ["late a r1 completed", "create b", "b sent"]),
        ]
    )
    assert driver.seq.status("a") is RequestStatus.FAILED
    [late] = [a for a in driver.last if type(a) is LateResponse]
    assert late.error_message == (
        "No response.created within 15 s of sending. Its response came later and ended completed."
    )


def test_duplicate_response_created_is_ignored():
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("created r1 a", ["a in_progress"]),
            ("created r1 a", []),
            ("created r1 -", []),
        ]
    )
    assert driver.seq.active_request_id == "a"


def test_created_for_requeued_request_takes_it_out_of_the_queue():
    # The error without event_id was not about `a` after all: its response starts anyway.
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("submit b", ["b queued"]),
            ("error - " + ACTIVE, ["claimed a", "a queued"]),
            ("created r1 a", ["a in_progress"]),
            ("tick 1", []),
            ("done r1 completed", ["a completed", "create b", "b sent"]),
        ]
    )
    assert driver.seq.queued_ids == ()


# ---------------------------------------------------------------------------- response.done


@pytest.mark.parametrize(
    ("server_status", "expected", "error_code"),
    [
        ("completed", RequestStatus.COMPLETED, None),
        ("cancelled", RequestStatus.CANCELLED, None),
        ("incomplete", RequestStatus.INCOMPLETE, None),
        ("failed", RequestStatus.FAILED, None),
        ("in_progress", RequestStatus.FAILED, "unexpected_status"),
        ("", RequestStatus.FAILED, "unexpected_status"),
    ],
)
def test_response_done_gives_the_servers_terminal_status(server_status, expected, error_code):
    driver = run(
        [("submit a", ["a queued", "create a", "a sent"]), ("created r1 a", ["a in_progress"])]
    )
    details = {"output_text": "Hello.", "usage": {"total_tokens": 3}}
    actions = driver.seq.response_done(
        response_id="r1", status=server_status, now=2.0, details=details
    )
    assert actions == [
        StatusChanged(
            request_id="a",
            status=expected,
            at=2.0,
            response_id="r1",
            error_code=error_code,
            error_message=actions[0].error_message,
            details=details,
        )
    ]
    assert (error_code is None) == (actions[0].error_message is None)
    assert driver.seq.active_response_id is None


def test_response_done_for_unknown_response_does_nothing():
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("submit b", ["b queued"]),
            ("created r1 a", ["a in_progress"]),
            ("done r7 completed", []),
        ]
    )
    assert driver.seq.active_response_id == "r1"
    assert driver.seq.queued_ids == ("b",)


# ---------------------------------------------------------------------------- error


def test_active_response_error_requeues_at_head_without_event_id():
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("submit b", ["b queued"]),
            ("submit c", ["c queued"]),
            ("error - " + ACTIVE, ["claimed a", "a queued"]),
        ]
    )
    seq = driver.seq
    assert seq.queued_ids == ("a", "b", "c")
    assert seq.outstanding_id is None
    assert seq.next_deadline == 0.25
    driver.run(
        [
            ("tick 0.2", []),  # no hot loop: nothing before retry_delay
            ("tick 0.25", ["create a", "a sent"]),
        ]
    )
    assert driver.last[0].event["event_id"] == "evt_a", "re-sent with the same event_id"
    assert seq.queued_ids == ("b", "c")


def test_active_response_error_with_event_id_requeues_at_head():
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("submit b", ["b queued"]),
            ("error evt_a " + ACTIVE, ["claimed a", "a queued"]),
        ]
    )
    assert driver.seq.queued_ids == ("a", "b")


def test_repeated_active_response_error_retries_only_after_each_delay():
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("error evt_a " + ACTIVE, ["claimed a", "a queued"]),
            ("tick 0.25", ["create a", "a sent"]),
            ("error evt_a " + ACTIVE, ["claimed a", "a queued"]),
            ("submit b", ["b queued"]),  # a submit does not bypass the delay
            ("tick 0.4", []),
            ("tick 0.5", ["create a", "a sent"]),
            ("created r1 a", ["a in_progress"]),
        ]
    )
    assert driver.seq.queued_ids == ("b",)


def test_active_response_error_while_response_known_waits_for_its_done():
    driver = run(
        [
            ("created r9 -", ["observed r9 req_server_1", "req_server_1 in_progress"]),
            ("submit a", ["a queued"]),
            ("done r9 completed", ["req_server_1 completed", "create a", "a sent"]),
            ("created r8 -", ["observed r8 req_server_2", "req_server_2 in_progress"]),
            ("error evt_a " + ACTIVE, ["claimed a", "a queued"]),
        ]
    )
    assert driver.seq.next_deadline is None
    driver.run(
        [("tick 100", []), ("done r8 completed", ["req_server_2 completed", "create a", "a sent"])]
    )


def test_server_response_seen_after_active_error_is_waited_for_instead_of_the_timer():
    run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("error evt_a " + ACTIVE, ["claimed a", "a queued"]),
            ("created r9 -", ["observed r9 req_server_1", "req_server_1 in_progress"]),
            ("tick 1", []),
            ("done r9 completed", ["req_server_1 completed", "create a", "a sent"]),
        ]
    )


@pytest.mark.parametrize("event_id", ["evt_a", "-"], ids=["with-event-id", "without-event-id"])
def test_other_error_fails_outstanding_and_sends_next(event_id):
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("submit b", ["b queued"]),
            (
                f"error {event_id} invalid_value",
                ["claimed a", "a failed invalid_value", "create b", "b sent"],
            ),
        ]
    )
    failed = driver.last[1]
    assert (failed.error_code, failed.error_message) == ("invalid_value", "boom")


@pytest.mark.parametrize(
    ("origin", "code", "forward"),
    [
        ("caller", "invalid_value", True),
        ("caller", None, True),
        ("caller", ACTIVE, False),
        ("console", "invalid_value", False),
        ("api", "invalid_value", False),
        ("api", ACTIVE, False),
    ],
)
def test_error_is_forwarded_to_caller_only_for_callers_own_request(origin, code, forward):
    seq = Sequencer()
    seq.submit(request("a", origin=origin), now=0.0)
    actions = seq.error(event_id="evt_a", code=code, message="m", now=0.0)
    assert actions[0] == ErrorClaimed(request_id="a", forward_to_caller=forward)


@pytest.mark.parametrize(
    ("event_id", "code"),
    [("evt_unknown", "invalid_value"), ("-", "invalid_value"), ("-", ACTIVE), ("evt_x", ACTIVE)],
)
def test_error_matching_nothing_returns_no_actions(event_id, code):
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("created r1 a", ["a in_progress"]),  # nothing outstanding any more
            ("submit b", ["b queued"]),
            (f"error {event_id} {code}", []),
        ]
    )
    assert driver.seq.queued_ids == ("b",)


def test_error_for_own_cancel_is_claimed_and_not_forwarded():
    driver = run(
        [
            ("submit a caller", ["a queued", "create a", "a sent"]),
            ("created r1 a", ["a in_progress"]),
            ("cancel a", ["cancel r1"]),
        ]
    )
    cancel_event_id = driver.last[0].event["event_id"]
    driver.run([(f"error {cancel_event_id} response_cancel_not_active", ["claimed a"])])
    assert driver.seq.status("a") is RequestStatus.IN_PROGRESS


def test_error_for_out_of_band_request_fails_it():
    run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("submit o caller oob", ["o queued", "create o", "o sent"]),
            ("error evt_o invalid_value", ["claimed o forward", "o failed invalid_value"]),
            ("created r1 a", ["a in_progress"]),
        ]
    )


def test_error_about_an_earlier_request_is_claimed_without_status_change():
    driver = run(
        [
            ("submit a caller", ["a queued", "create a", "a sent"]),
            ("created r1 a", ["a in_progress"]),
            ("error evt_a invalid_value", ["claimed a forward"]),
        ]
    )
    assert driver.seq.status("a") is RequestStatus.IN_PROGRESS


# ---------------------------------------------------------------------------- out of band


def test_out_of_band_sent_while_response_active():
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("created r1 a", ["a in_progress"]),
            ("submit b", ["b queued"]),
            ("submit o oob", ["o queued", "create o", "o sent"]),
            ("created r2 o", ["o in_progress"]),
        ]
    )
    seq = driver.seq
    assert (seq.active_response_id, seq.active_request_id) == ("r1", "a")
    driver.run(
        [
            ("done r2 completed", ["o completed"]),  # an out-of-band done frees nothing
            ("done r1 completed", ["a completed", "create b", "b sent"]),
        ]
    )


def test_out_of_band_neither_waits_for_nor_blocks_the_outstanding_request():
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("submit o oob", ["o queued", "create o", "o sent"]),
            ("submit p oob", ["p queued", "create p", "p sent"]),
            ("created r2 o", ["o in_progress"]),
            ("created r1 a", ["a in_progress"]),
            ("submit b", ["b queued"]),
            ("done r1 completed", ["a completed", "create b", "b sent"]),
        ]
    )
    assert driver.seq.status("o") is RequestStatus.IN_PROGRESS
    assert driver.seq.status("p") is RequestStatus.SENT


# ---------------------------------------------------------------------------- cancel / interrupt


def test_cancel_queued_request_leaves_the_queue():
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("submit b", ["b queued"]),
            ("submit c", ["c queued"]),
            ("cancel b", ["b cancelled"]),
            ("created r1 a", ["a in_progress"]),
            ("done r1 completed", ["a completed", "create c", "c sent"]),
        ]
    )
    assert driver.seq.status("b") is RequestStatus.CANCELLED


@pytest.mark.parametrize("oob", ["", " oob"], ids=["in-conversation", "out-of-band"])
def test_cancel_sent_request_sends_response_cancel_once_created(oob):
    run(
        [
            (f"submit a{oob}", ["a queued", "create a", "a sent"]),
            ("cancel a", []),
            ("created r1 a", ["a in_progress", "cancel r1"]),
            ("done r1 cancelled", ["a cancelled"]),
        ]
    )


def test_cancel_in_progress_sends_response_cancel():
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("created r1 a", ["a in_progress"]),
            ("cancel a", ["cancel r1"]),
        ]
    )
    assert driver.last == [
        SendEvent(
            event={"type": "response.cancel", "event_id": "event_seq_1", "response_id": "r1"},
            request_id="a",
        )
    ]
    assert driver.seq.status("a") is RequestStatus.IN_PROGRESS, "done, not cancel, ends it"


def test_cancel_of_sent_request_hit_by_active_error_is_cancelled_not_requeued():
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("submit b", ["b queued"]),
            ("cancel a", []),
            ("error evt_a " + ACTIVE, ["claimed a", "a cancelled"]),
            ("tick 0.25", ["create b", "b sent"]),
        ]
    )
    assert driver.seq.queued_ids == ()


def test_cancel_of_timed_out_request_still_cancels_its_late_response():
    run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("cancel a", []),
            ("tick 15", ["a failed upstream_timeout"]),
            ("created r1 a", ["cancel r1"]),
        ]
    )


TERMINAL_SETUPS = {
    "completed": ["submit a", "created r1 a", "done r1 completed"],
    "cancelled": ["submit x", "submit a", "cancel a"],
    "incomplete": ["submit a", "created r1 a", "done r1 incomplete"],
    "failed": ["submit a", "error evt_a invalid_value"],
    "timed-out": ["submit a", "tick 20"],
}


@pytest.mark.parametrize("setup", TERMINAL_SETUPS.values(), ids=list(TERMINAL_SETUPS))
def test_cancel_terminal_raises_and_changes_nothing(setup):
    driver = Driver()
    for text in [*setup, "submit z"]:
        driver.step(text)
    ids = ["a", "z", "x"] if "submit x" in setup else ["a", "z"]
    assert driver.seq.status("a") in TERMINAL_STATUSES
    before = snapshot(driver.seq, ids)
    with pytest.raises(RequestNotCancellable):
        driver.seq.cancel("a", now=30.0)
    assert snapshot(driver.seq, ids) == before


def test_cancel_after_closed_does_nothing():
    driver = run(
        [("submit a", ["a queued", "create a", "a sent"]), ("closed gone", ["a failed gone"])]
    )
    assert driver.seq.cancel("a", now=1.0) == []
    with pytest.raises(RequestNotCancellable):
        driver.seq.cancel("unknown", now=1.0)


def test_cancel_unknown_request_raises():
    driver = run([("submit a", ["a queued", "create a", "a sent"])])
    before = snapshot(driver.seq, ["a"])
    with pytest.raises(RequestNotCancellable):
        driver.seq.cancel("nope", now=0.0)
    assert snapshot(driver.seq, ["a"]) == before


def test_interrupt_cancels_the_active_in_conversation_response_only():
    run(
        [
            ("interrupt", []),
            ("submit a", ["a queued", "create a", "a sent"]),
            ("interrupt", []),  # sent, not active: nothing to cancel yet
            ("submit o oob", ["o queued", "create o", "o sent"]),
            ("created r2 o", ["o in_progress"]),
            ("interrupt", []),  # out-of-band responses are not interrupted
            ("created r9 -", ["observed r9 req_server_1", "req_server_1 in_progress"]),
            ("interrupt", ["cancel r9"]),
        ]
    )


# ---------------------------------------------------------------------------- closed / tick


def test_closed_fails_every_pending_request():
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("created r1 a", ["a in_progress"]),
            ("submit b", ["b queued"]),
            ("submit c", ["c queued"]),
            ("submit o oob", ["o queued", "create o", "o sent"]),
            ("submit p oob", ["p queued", "create p", "p sent"]),
            ("created r2 p", ["p in_progress"]),
            ("submit d", ["d queued"]),
            ("cancel d", ["d cancelled"]),
            (
                "closed gone",
                [
                    "a failed gone",
                    "b failed gone",
                    "c failed gone",
                    "o failed gone",
                    "p failed gone",
                ],
            ),
        ]
    )
    seq = driver.seq
    assert seq.is_closed
    assert (seq.queued_ids, seq.outstanding_id, seq.active_response_id) == ((), None, None)
    assert seq.next_deadline is None
    assert all(seq.status(rid).is_terminal for rid in "abcopd")
    driver.run(
        [
            ("submit e", ["e queued", "e failed session_ended"]),
            ("created r3 -", []),
            ("done r1 completed", []),
            ("error evt_b invalid_value", []),
            ("interrupt", []),
            ("tick 100", []),
            ("closed again", []),
        ]
    )


def test_closed_fails_outstanding_request_and_server_response():
    run(
        [
            ("created r9 -", ["observed r9 req_server_1", "req_server_1 in_progress"]),
            ("submit a", ["a queued"]),
            (
                "closed upstream_closed",
                ["req_server_1 failed upstream_closed", "a failed upstream_closed"],
            ),
        ]
    )


def test_tick_times_out_outstanding_and_sends_next():
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("submit b", ["b queued"]),
            ("tick 14.9", []),
            ("tick 15", ["a failed upstream_timeout", "create b", "b sent"]),
        ]
    )
    assert driver.seq.outstanding_id == "b"
    assert driver.seq.next_deadline == 30.0


def test_tick_times_out_out_of_band_request():
    run(
        [
            ("submit o oob", ["o queued", "create o", "o sent"]),
            ("tick 10", []),
            ("submit p oob", ["p queued", "create p", "p sent"]),
            ("tick 15", ["o failed upstream_timeout"]),
            ("created r1 p", ["p in_progress"]),
            ("tick 100", []),
        ]
    )


def test_next_deadline_is_the_earliest_timeout_or_retry():
    driver = Driver(send_timeout=10.0, retry_delay=1.0)
    seq = driver.seq
    assert seq.next_deadline is None
    driver.run(
        [
            ("tick 1", []),
            ("submit o oob", ["o queued", "create o", "o sent"]),
            ("tick 2", []),
            ("submit a", ["a queued", "create a", "a sent"]),
        ]
    )
    assert seq.next_deadline == 11.0
    driver.run([("created r1 o", ["o in_progress"])])
    assert seq.next_deadline == 12.0
    driver.run([("error evt_a " + ACTIVE, ["claimed a", "a queued"])])
    assert seq.next_deadline == 3.0
    driver.run([("created r2 -", ["observed r2 req_server_1", "req_server_1 in_progress"])])
    assert seq.next_deadline is None, "a known active response: wait for its done, not a timer"


def test_status_and_get_of_unknown_request_raise_key_error():
    seq = Sequencer()
    with pytest.raises(KeyError):
        seq.status("nope")
    with pytest.raises(KeyError):
        seq.get("nope")


def test_request_status_terminal_property():
    assert {status for status in RequestStatus if status.is_terminal} == TERMINAL_STATUSES
    assert RequestStatus.IN_PROGRESS == "in_progress"


def test_out_of_band_is_conversation_none():
    assert request("a", oob=True).out_of_band
    assert not request("a").out_of_band
    assert not request("a", conversation="auto").out_of_band


def test_forget_finished_keeps_the_latest_and_whatever_is_pending():
    seq = Sequencer(new_request_id=iter(f"srv_{n}" for n in range(100)).__next__, send_timeout=5.0)
    for n in range(5):
        seq.submit(Request(id=f"r{n}", origin="api", event_id=f"e{n}"), now=0.0)
        seq.response_created(response_id=f"resp_{n}", oc_request=f"r{n}", now=0.1)
        seq.response_done(response_id=f"resp_{n}", status="completed", now=0.2)
    seq.submit(Request(id="r_active", origin="api", event_id="e_active"), now=1.0)
    seq.submit(Request(id="r_queued", origin="api", event_id="e_queued"), now=1.0)
    completed = RequestStatus.COMPLETED
    assert seq.forget_finished(keep=2) == [("r0", completed), ("r1", completed), ("r2", completed)]
    assert seq.forget_finished(keep=2) == []
    assert seq.status("r3") is RequestStatus.COMPLETED and seq.status("r_queued") is RequestStatus.QUEUED
    with pytest.raises(KeyError):
        seq.status("r0")
    # A forgotten request is as if never submitted: a late error about its event goes unclaimed.
    assert seq.error(event_id="e0", code="x", message="late", now=2.0) == []
    # What is pending goes on as before.
    seq.response_created(response_id="resp_active", oc_request="r_active", now=2.0)
    actions = seq.response_done(response_id="resp_active", status="completed", now=2.1)
    assert [a.request_id for a in actions if isinstance(a, SendEvent)] == ["r_queued"]


def test_offline_everything_waits_queued_a_cancel_takes_one_out_and_resume_sends_the_rest():
    seq = Sequencer()
    seq.offline = True
    waiting = [
        *seq.submit(request("a"), now=0.0),
        *seq.submit(request("b", oob=True), now=0.1),
        *seq.submit(request("c", oob=True), now=0.2),
    ]
    assert summary(waiting) == ["a queued", "b queued", "c queued"], "nothing sent while offline"
    assert seq.queued_ids == ("b", "c", "a") and seq.next_deadline is None
    assert summary(seq.cancel("b", now=0.3)) == ["b cancelled"]
    assert summary(seq.resume(now=1.0)) == ["create c", "c sent", "create a", "a sent"]
    assert seq.queued_ids == ()


def test_forget_finished_keeps_a_finished_request_whose_late_response_still_runs():
    # `a` timed out, then its response came after all; finished requests are forgotten while
    # it runs. Its response.done must still end it and let the queue go on (it raised KeyError).
    driver = run(
        [
            ("submit a", ["a queued", "create a", "a sent"]),
            ("tick 15", ["a failed upstream_timeout"]),
            ("created r1 a", []),
            ("submit b", ["b queued"]),
        ],
        send_timeout=15.0,
    )
    assert driver.seq.forget_finished(keep=0) == [], "a's response still runs"
    driver.run([("done r1 completed", ["late a r1 completed", "create b", "b sent"])])
    assert driver.seq.forget_finished(keep=0) == [("a", RequestStatus.FAILED)]
