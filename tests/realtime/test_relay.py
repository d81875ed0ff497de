"""The relay core, one table per rule: each step is an input and the actions it must return.

Inputs are built by `Driver.step` from short strings, actions summarised as strings:
  "caller session.created"           ToCaller (the event's type; an error also shows its code)
  "caller error queue_full"          ToCaller of an error event
  "caller binary"                    ToCaller of a binary frame
  "upstream response.create a"       ToUpstream (a response.create shows its oc_request)
  "recorded a caller queued"         RequestRecorded
  "a sent" / "a failed session_ended" RequestChanged
  "watchers request" / "watcher w1 snapshot"   ToWatchers / ToWatcher (kind, no prefix)
  "answer cancelled"                 Answer (its status, or ok / the response id)
  "close 1011"                       CloseCaller
  "named sess_1" / "instructions"    SessionNamed / InstructionsChanged
  "presence ann,bob"                 WatchersChanged
  "usage 6"                          UsageChanged (the session's total_tokens so far)
  "ended failed upstream_closed"     SessionEnded
"""

from __future__ import annotations

import json

import pytest

from apps.realtime import events, relay
from apps.realtime.relay import (
    OC_REQUEST_KEY,
    Answer,
    AudioTapped,
    CloseCaller,
    InstructionsChanged,
    LateResponseRecorded,
    ListenersChanged,
    OperatorRequest,
    RelayCore,
    RequestChanged,
    RequestRecorded,
    SessionEnded,
    SessionNamed,
    ToCaller,
    ToUpstream,
    ToWatcher,
    ToWatchers,
    TranscriptFinal,
    UsageChanged,
    WatchersChanged,
)

SEND_TIMEOUT, CONNECT_TIMEOUT, STALL_TIMEOUT = 15.0, 10.0, 30.0


def summary(actions) -> list[str]:
    out = []
    for action in actions:
        match action:
            case ToCaller(frame=bytes()):
                out.append("caller binary")
            case ToCaller(frame=frame):
                event = json.loads(frame)
                code = f" {event['error']['code']}" if event["type"] == "error" else ""
                out.append(f"caller {event['type']}{code}")
            case ToUpstream(frame=bytes()):
                out.append("upstream binary")
            case ToUpstream(frame=frame):
                event = json.loads(frame)
                tag = ""
                if event["type"] == "response.create":
                    tag = " " + event["response"]["metadata"][OC_REQUEST_KEY]
                out.append(f"upstream {event['type']}{tag}")
            case RequestRecorded(request_id=rid, origin=origin, status=status):
                out.append(f"recorded {rid} {origin} {status.value}")
            case RequestChanged(request_id=rid, status=status, error_code=code):
                out.append(f"{rid} {status.value}" + (f" {code}" if code else ""))
            case ToWatchers(message=message):
                out.append(f"watchers {message['type'].removeprefix('console.')}")
            case ToWatcher(watcher=watcher, message=message):
                out.append(f"watcher {watcher} {message['type'].removeprefix('console.')}")
            case Answer(payload=payload):
                word = payload.get("status") or (
                    "ok" if payload.get("ok") else payload.get("response_id")
                )
                out.append(f"answer {word}")
            case CloseCaller(code=code):
                out.append(f"close {code}")
            case SessionNamed(session_id=session_id):
                out.append(f"named {session_id}")
            case InstructionsChanged():
                out.append("instructions")
            case LateResponseRecorded(request_id=rid, response_id=response_id):
                out.append(f"late {rid} {response_id}")
            case UsageChanged(usage=usage):
                out.append(f"usage {usage.get('total_tokens')}")
            case WatchersChanged(names=names):
                out.append("presence " + ",".join(names))
            case SessionEnded(status=status, reason=reason):
                out.append(f"ended {status} {reason.value}")
            case TranscriptFinal(entry=entry):
                out.append(f"final {entry['role']} {entry['text']}")
            case AudioTapped(side=side, audio=audio, format=audio_format):
                out.append(f"audio {['caller', 'agent'][side]} {audio_format} {audio}")
            case ListenersChanged(count=count):
                out.append(f"listeners {count}")
            case _:
                raise AssertionError(f"unexpected action {action!r}")
    return out


# ---------------------------------------------------------------------------- upstream frames


def frame(event: dict) -> str:
    return events.dumps(event)


def session_created(session_id: str = "sess_1", instructions: str = "Be a pirate.") -> str:
    return frame(
        {
            "type": "session.created",
            "event_id": "ev",
            "session": {"id": session_id, "instructions": instructions},
        }
    )


def response_created(response_id: str, tag: str | None = None, metadata: dict | None = None) -> str:
    metadata = dict(metadata or {})
    if tag is not None:
        metadata[OC_REQUEST_KEY] = tag
    return frame(
        {
            "type": "response.created",
            "event_id": "ev",
            "response": {"id": response_id, "status": "in_progress", "metadata": metadata or None},
        }
    )


def response_done(
    response_id: str, tag: str | None = None, status: str = "completed", text: str = "hi"
) -> str:
    output = [
        {
            "id": f"item_{response_id}",
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text}],
        }
    ]
    metadata = {OC_REQUEST_KEY: tag} if tag else None
    return frame(
        {
            "type": "response.done",
            "event_id": "ev",
            "response": {
                "id": response_id,
                "status": status,
                "metadata": metadata,
                "output": output,
                "usage": {"total_tokens": 3},
            },
        }
    )


def delta(response_id: str, text: str = "x") -> str:
    return frame(
        {
            "type": "response.output_text.delta",
            "event_id": "ev",
            "response_id": response_id,
            "item_id": f"item_{response_id}",
            "delta": text,
        }
    )


def upstream_error(event_id: str | None, code: str) -> str:
    return frame(
        {
            "type": "error",
            "event_id": "ev",
            "error": {
                "type": "invalid_request_error",
                "code": code,
                "message": "no",
                "event_id": event_id,
            },
        }
    )


def caller_create(event_id: str = "c1", **response) -> str:
    event: dict = {"type": "response.create", "event_id": event_id}
    if response:
        event["response"] = response
    return frame(event)


class Driver:
    """A core whose request ids are a, b, c, … in order of arrival, event ids e1, e2, …; `now`
    moves only with "tick T" or "at T"."""

    def __init__(self, **kwargs) -> None:
        request_ids = iter("abcdefghijklmnopqrstuvwxyz")
        event_ids = iter(range(1, 10_000))
        kwargs = {
            "send_timeout": SEND_TIMEOUT,
            "connect_timeout": CONNECT_TIMEOUT,
            "stall_timeout": STALL_TIMEOUT,
            **kwargs,
        }
        self.core = RelayCore(
            fallback_id="sess_fallback",
            connected_by="token:caller",
            new_request_id=lambda: next(request_ids),
            new_event_id=lambda: f"e{next(event_ids)}",
            **kwargs,
        )
        self.now = 0.0
        self.last: list = []

    def step(self, what) -> list:
        core, now = self.core, self.now
        if isinstance(what, tuple):  # (input name, argument)
            name, argument = what
            actions = {"up": core.upstream_frame, "call": core.caller_frame}[name](
                argument, now=now
            )
        else:
            verb, *args = what.split()
            if verb == "attached":
                actions = core.upstream_attached(now=now)
            elif verb == "submit":  # submit ID [oob] [replace TEXT|append TEXT]
                oob = "oob" in args
                text = args[args.index("say") + 1] if "say" in args else None
                mode = "replace" if "replace" in args else "append"
                actions = core.submit(
                    OperatorRequest(
                        id=args[0],
                        origin="api",
                        instructions=text,
                        instructions_mode=mode,
                        conversation="none" if oob else None,
                        requested_by="token:ops",
                    ),
                    now=now,
                )
            elif verb == "cancel":
                actions = core.cancel(args[0], now=now)
            elif verb == "interrupt":
                actions = core.interrupt(now=now)
            elif verb == "note":
                actions = core.note(item_id="item_note", role="system", text="psst", now=now)
            elif verb == "watch":
                actions = core.watch(args[0], user=args[1], watching=True, now=now)
            elif verb == "unwatch":
                actions = core.watch(args[0], user="", watching=False, now=now)
            elif verb == "rewatch":  # a watcher back from a channel-layer outage
                actions = core.watch(args[0], user=args[1], watching=True, now=now, snapshot=True)
            elif verb == "listen":
                actions = core.listen(args[0], user=args[1], listening=True, now=now)
            elif verb == "unlisten":
                actions = core.listen(args[0], user="", listening=False, now=now)
            elif verb == "tick":
                self.now = now = float(args[0])
                actions = core.tick(now=now)
            elif verb == "at":
                self.now = float(args[0])
                actions = []
            elif verb == "caller_closed":
                actions = core.caller_closed(now=now)
            elif verb == "upstream_closed":
                actions = core.upstream_closed(int(args[0]), " ".join(args[1:]), now=now)
            elif verb == "upstream_failed":
                actions = core.upstream_failed("refused", now=now)
            elif verb == "shutdown":
                actions = core.shutdown(now=now)
            elif verb == "crashed":
                actions = core.crashed("boom", now=now)
            elif verb == "lost":
                actions = core.lost(now=now)
            else:
                raise ValueError(what)
        self.last = actions
        return actions

    def run(self, table) -> Driver:
        for number, (what, expected) in enumerate(table, 1):
            got = summary(self.step(what))
            assert got == expected, f"step {number} {what!r}: expected {expected}, got {got}"
        return self


def started(**kwargs) -> Driver:
    driver = Driver(**kwargs)
    driver.run(
        [("attached", []), (("up", session_created()), ["named sess_1", "caller session.created"])]
    )
    return driver


def sent_frames(actions, kind: type = ToUpstream) -> list[dict]:
    return [json.loads(a.frame) for a in actions if type(a) is kind and isinstance(a.frame, str)]


# ---------------------------------------------------------------------------- the session's start


def test_session_created_names_the_session_and_reaches_the_caller():
    driver = started()
    assert driver.core.session_id == "sess_1"
    assert driver.core.session_instructions == "Be a pirate."


def test_no_session_created_within_the_connect_timeout_fails_the_session():
    Driver().run(
        [
            ("attached", []),
            ("tick 9.9", []),
            (
                "tick 10",
                ["caller error upstream_timeout", "close 1011", "ended failed upstream_closed"],
            ),
        ]
    )


MINTED = {"type": "realtime", "model": "gpt-realtime-mini", "instructions": "Speak French.", "audio": {"output": {"voice": "cedar"}}}


def session_updated(instructions: str, voice: str = "cedar") -> str:
    return frame({"type": "session.updated", "event_id": "ev_up", "session": {
        "id": "sess_1", "object": "realtime.session", "instructions": instructions, "audio": {"output": {"voice": voice}},
    }})


def test_a_minted_keys_configuration_goes_first_and_the_caller_sees_it_in_session_created():
    driver = Driver(minted_session=MINTED)
    [update] = sent_frames(driver.step("attached"))
    assert update == {"type": "session.update", "event_id": "e1", "session": {
        "type": "realtime", "instructions": "Speak French.", "audio": {"output": {"voice": "cedar"}},
    }}, "the model is the URL's, not the update's"
    caller_update = frame({"type": "session.update", "event_id": "c1", "session": {"type": "realtime", "instructions": "Mine."}})
    driver.run(
        [
            (("call", caller_update), ["upstream session.update"]),  # after the key's
            (("up", session_created(instructions="")), ["named sess_1", "watchers event"]),
            (("up", session_updated("Speak French.")), ["instructions", "caller session.created", "watchers event"]),
            (("up", session_updated("Mine.")), ["instructions", "caller session.updated"]),
        ]
    )


def test_the_caller_gets_the_upstreams_session_created_with_the_updated_session():
    driver = Driver(minted_session=MINTED)
    driver.step("attached")
    driver.step(("up", session_created(instructions="")))
    [created] = sent_frames(driver.step(("up", session_updated("Speak French."))), ToCaller)
    assert created["type"] == "session.created" and created["event_id"] == json.loads(session_created())["event_id"]
    assert created["session"]["instructions"] == "Speak French."
    assert created["session"]["audio"] == {"output": {"voice": "cedar"}}


def test_a_minted_configuration_the_upstream_refuses_reaches_the_caller_after_session_created():
    driver = Driver(minted_session=MINTED)
    driver.run(
        [
            ("attached", ["upstream session.update"]),
            (("up", session_created()), ["named sess_1", "watchers event"]),
            (("up", upstream_error("e1", "invalid_value")), ["caller session.created", "caller error invalid_value"]),
            (("up", session_updated("Later.")), ["instructions", "caller session.updated"]),
        ]
    )


def test_a_key_that_names_only_its_model_sends_no_update():
    Driver(minted_session={"type": "realtime", "model": "gpt-realtime"}).run(
        [("attached", []), (("up", session_created()), ["named sess_1", "caller session.created"])]
    )


def test_an_upstream_that_cannot_be_reached_tells_the_caller_and_fails():
    Driver().run(
        [
            (
                "upstream_failed",
                ["caller error upstream_unavailable", "close 1011", "ended failed upstream_closed"],
            )
        ]
    )


@pytest.mark.parametrize(
    ("session_id", "public"),
    [
        pytest.param("sess_ok/<b>x</b>", "sess_ok/<b>x</b>", id="markup-is-kept-pages-escape-it"),
        pytest.param("s" * 129, "sess_fallback", id="too-long"),
        pytest.param("sess_\x00", "sess_fallback", id="nul"),
        pytest.param(None, "sess_fallback", id="missing"),
    ],
)
def test_a_session_id_the_database_cannot_hold_is_replaced_by_the_relays_own(session_id, public):
    driver = Driver()
    driver.step("attached")
    driver.step(("up", frame({"type": "session.created", "session": {"id": session_id}})))
    assert driver.core.session_id == public


# ---------------------------------------------------------------------------- upstream → caller


def test_events_the_relay_need_not_read_reach_the_caller_as_received():
    driver = started()
    raw = delta("r9")
    actions = driver.step(("up", raw))
    assert actions == [ToCaller(frame=raw)], "forwarded as the very same string"


def test_binary_frames_pass_as_binary_both_ways():
    driver = started()
    assert driver.step(("up", b"\x00\x01")) == [ToCaller(frame=b"\x00\x01")]
    assert driver.step(("call", b"\x02")) == [ToUpstream(frame=b"\x02")]


def test_an_upstream_frame_that_is_not_json_still_reaches_the_caller():
    driver = started()
    assert driver.step(("up", "not json {")) == [ToCaller(frame="not json {")]


def test_session_updated_changes_the_instructions_operators_append_to():
    driver = started()
    updated = frame({"type": "session.updated", "session": {"instructions": "Be a parrot."}})
    driver.run([(("up", updated), ["instructions", "caller session.updated"])])
    assert driver.core.session_instructions == "Be a parrot."


# ---------------------------------------------------------------------------- the caller's requests


def test_callers_request_is_sent_and_its_metadata_comes_back_without_oc_request():
    driver = started()
    driver.run(
        [
            (
                ("call", caller_create("c1", metadata={"topic": "billing"})),
                ["recorded a caller queued", "a queued", "upstream response.create a", "a sent"],
            ),
        ]
    )
    sent = sent_frames(driver.last)[0]
    assert sent["event_id"] == "c1", "the caller's event_id is kept"
    assert sent["response"]["metadata"] == {"topic": "billing", OC_REQUEST_KEY: "a"}
    driver.run(
        [
            (
                ("up", response_created("r1", tag="a", metadata={"topic": "billing"})),
                ["a in_progress", "caller response.created"],
            )
        ]
    )
    seen = sent_frames(driver.last, ToCaller)[0]
    assert seen["response"]["metadata"] == {"topic": "billing"}
    driver.run(
        [(("up", response_done("r1", tag="a")), ["a completed", "usage 3", "caller response.done", "final agent hi"])]
    )
    assert sent_frames(driver.last, ToCaller)[0]["response"]["metadata"] == {"topic": "billing"}


def test_second_callers_request_waits_for_the_first_response_to_finish():
    driver = started()
    driver.run(
        [
            (
                ("call", caller_create("c1")),
                ["recorded a caller queued", "a queued", "upstream response.create a", "a sent"],
            ),
            (("call", caller_create("c2")), ["recorded b caller queued", "b queued"]),
            (("up", response_created("r1", tag="a")), ["a in_progress", "caller response.created"]),
            (
                ("up", response_done("r1", tag="a")),
                [
                    "a completed",
                    "upstream response.create b",
                    "b sent",
                    "usage 3",
                    "caller response.done",
                    "final agent hi",
                ],
            ),
        ]
    )


def test_callers_request_given_no_event_id_gets_one():
    driver = started()
    driver.step(("call", frame({"type": "response.create"})))
    assert sent_frames(driver.last)[0]["event_id"] == "e1"


def test_other_caller_events_go_upstream_unchanged():
    driver = started()
    raw = '{"type":"conversation.item.create","item":{"type":"message","role":"user","content":[]}}'
    assert driver.step(("call", raw)) == [ToUpstream(frame=raw)]
    spaced = '{ "type" : "input_audio_buffer.append", "audio": "AAAA" }'
    assert driver.step(("call", spaced)) == [ToUpstream(frame=spaced)], (
        "parsed to find its type, sent as received"
    )


DEEP = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        pytest.param("this is not json", "invalid_json", None, id="not-json"),
        pytest.param(DEEP, "invalid_json", None, id="nested-too-deep"),
        pytest.param(
            '{"type":"response.create","response":' + DEEP[:3000] + "1" + DEEP[3000:6000] + "}",
            "invalid_json",
            None,
            id="deep-response-create",
        ),
        pytest.param("[1, 2]", "invalid_type", None, id="not-an-object"),
        pytest.param(
            caller_create("c1").replace('"event_id":"c1"', '"event_id":"c1","response":null'),
            "invalid_type",
            "response",
            id="response-null",
        ),
        pytest.param(
            frame({"type": "response.create", "response": {"metadata": "x"}}),
            "invalid_type",
            "response.metadata",
            id="metadata-not-object",
        ),
        pytest.param(
            frame({"type": "response.create", "response": {"metadata": {OC_REQUEST_KEY: "x"}}}),
            "invalid_value",
            "response.metadata",
            id="reserved-key",
        ),
        pytest.param(
            frame(
                {
                    "type": "response.create",
                    "response": {"metadata": {str(i): "v" for i in range(16)}},
                }
            ),
            "invalid_value",
            "response.metadata",
            id="sixteen-pairs",
        ),
        pytest.param(
            '{"type":"response.create","response":{"instructions":"hi \\ud800"}}',
            "invalid_value",
            "response.instructions",
            id="lone-surrogate-instructions",
        ),
        pytest.param(
            '{"type":"response.create","response":{"metadata":{"k":"\\udfff"}}}',
            "invalid_value",
            "response.metadata.k",
            id="lone-surrogate-metadata",
        ),
        pytest.param(
            '{"type":"response.create","response":{"metadata":{"\\ud800":"v"}}}',
            "invalid_value",
            "response.metadata",
            id="lone-surrogate-key",
        ),
        pytest.param(
            '{"type":"response.create","response":{"instructions":"a\\u0000b"}}',
            "invalid_value",
            "response.instructions",
            id="nul",
        ),
        pytest.param(
            '{"type":"response.create","event_id":"\\ud800"}',
            "invalid_value",
            "event_id",
            id="lone-surrogate-event-id",
        ),
        pytest.param(
            '{"type":"response.create","response":{"input":[{"x":"\\ud83d"}]}}',
            "invalid_value",
            "response.input[0].x",
            id="lone-surrogate-anywhere",
        ),
        pytest.param(
            '{"type":"response.create","event_id":5}',
            "invalid_type",
            "event_id",
            id="event-id-not-a-string",
        ),
        pytest.param(
            '{"type":"conversation.item.create","item":{"type":"message","role":"user",'
            '"content":[{"type":"input_text","text":"\\ud800"}]}}',
            "invalid_value",
            "item.content[0].text",
            id="lone-surrogate-in-an-item",
        ),
        pytest.param(
            '{"type":"session.update","session":{"type":"realtime","instructions":"a\\u0000b"}}',
            "invalid_value",
            "session.instructions",
            id="nul-in-a-session-update",
        ),
        pytest.param(
            '{"type":"conversation.item.create","\\udc00":1}',
            "invalid_value",
            None,
            id="lone-surrogate-in-a-top-level-key",
        ),
        pytest.param(
            '{"type":"conversation.item.create","item":' + DEEP[:3000] + DEEP[-3000:] + "}",
            "invalid_json",
            None,
            id="deep-item-create",
        ),
    ],
)
def test_caller_event_the_relay_refuses_gets_an_error_and_the_session_goes_on(raw, code, param):
    driver = started()
    actions = driver.step(("call", raw))
    assert summary(actions) == [f"caller error {code}"], (
        "nothing goes upstream, nothing is recorded"
    )
    error = json.loads(actions[0].frame)
    assert error["error"]["type"] == "invalid_request_error" and error["error"]["message"]
    assert error["error"]["param"] == param
    actions[0].frame.encode("utf-8")  # the answer itself can be sent
    driver.run(
        [
            (
                ("call", caller_create("c9")),
                ["recorded a caller queued", "a queued", "upstream response.create a", "a sent"],
            )
        ]
    )


def test_item_nested_deeper_than_the_relay_reads_is_refused_with_its_path():
    driver = started()
    raw = '{"type":"conversation.item.create","event_id":"e_deep","item":' + "[" * 300 + "]" * 300
    actions = driver.step(("call", raw + "}"))
    assert summary(actions) == ["caller error invalid_value"]
    error = json.loads(actions[0].frame)["error"]
    assert error["event_id"] == "e_deep" and error["param"].startswith("item[0][0]")
    assert "nested more than 256 levels deep" in error["message"]


@pytest.mark.parametrize("kind", ["conversation.item.create", "response.create"])
def test_a_frame_too_deep_to_parse_is_refused_with_its_event_id(kind):
    driver = started()
    raw = f'{{"type":"{kind}","event_id":"e_deeper","item":{DEEP}}}'
    actions = driver.step(("call", raw))
    assert summary(actions) == ["caller error invalid_json"]
    error = json.loads(actions[0].frame)["error"]
    assert error["event_id"] == "e_deeper", "the caller can tell which of its events was refused"
    assert "nested more than 256 levels deep" in error["message"]


def test_escaped_text_that_is_valid_goes_upstream_as_received():
    driver = started()
    raw = (
        '{"type":"conversation.item.create","item":{"type":"message","role":"user",'
        '"content":[{"type":"input_text","text":"caf\\u00e9 \\ud83d\\ude00 \\\\ud800"}]}}'
    )
    assert driver.step(("call", raw)) == [ToUpstream(frame=raw)], (
        "an escaped é, a surrogate pair and an escaped backslash are valid: the frame as sent"
    )


def test_refusal_of_an_invalid_item_names_its_event_id():
    driver = started()
    raw = '{"type":"conversation.item.create","event_id":"evt_9","item":{"id":"\\ud800"}}'
    error = json.loads(driver.step(("call", raw))[0].frame)["error"]
    assert error["event_id"] == "evt_9" and error["param"] == "item.id"


def test_refusal_names_the_callers_event_id():
    driver = started()
    actions = driver.step(
        (
            "call",
            frame({"type": "response.create", "event_id": "evt_7", "response": {"metadata": 1}}),
        )
    )
    assert json.loads(actions[0].frame)["error"]["event_id"] == "evt_7"


def test_caller_over_the_queue_limit_gets_queue_full_but_out_of_band_is_never_refused():
    driver = started(queue_limit=2)
    for event_id in ("c1", "c2", "c3"):
        driver.step(("call", caller_create(event_id)))  # c1 is sent; c2 and c3 wait
    assert driver.core.sequencer.queued_ids == ("b", "c")
    actions = driver.step(("call", caller_create("c4")))
    assert summary(actions) == ["caller error queue_full"]
    assert json.loads(actions[0].frame)["error"]["event_id"] == "c4"
    oob = driver.step(("call", caller_create("c5", conversation="none")))
    assert "upstream response.create d" in summary(oob), "out of band goes at once"
    assert summary(driver.step("submit op1 oob")) == [
        "op1 queued",
        "watchers request",
        "upstream response.create op1",
        "op1 sent",
        "watchers request",
    ]


def test_callers_request_that_times_out_upstream_tells_the_caller_with_its_event_id():
    driver = started()
    driver.step(("call", caller_create("c1")))
    driver.run([("tick 15", ["a failed upstream_timeout", "caller error upstream_timeout"])])
    assert json.loads(driver.last[1].frame)["error"]["event_id"] == "c1"


def test_active_response_error_about_the_relays_own_sequencing_never_reaches_the_caller():
    driver = started()
    driver.step(("call", caller_create("c1")))
    driver.run(
        [
            (
                ("up", upstream_error("c1", "conversation_already_has_active_response")),
                ["a queued", "watchers event"],
            )
        ]
    )


@pytest.mark.parametrize("event_id", [None, "e_forgotten"])
def test_an_active_response_error_no_request_claims_never_reaches_the_caller(event_id):
    """Every response.create of the caller's passes the sequencer, so the caller never causes
    this error itself: one that comes for a request that timed out (without its event_id, or
    naming one the relay no longer knows) is about the relay's own sequencing."""
    driver = started()
    driver.step(("call", caller_create("c1")))
    driver.run(
        [
            ("tick 15", ["a failed upstream_timeout", "caller error upstream_timeout"]),
            (
                ("up", upstream_error(event_id, "conversation_already_has_active_response")),
                ["watchers event"],
            ),
        ]
    )


def test_any_other_error_about_the_callers_request_reaches_the_caller():
    driver = started()
    driver.step(("call", caller_create("c1")))
    driver.run(
        [
            (
                ("up", upstream_error("c1", "invalid_value")),
                ["a failed invalid_value", "caller error invalid_value"],
            )
        ]
    )


def test_an_error_about_nothing_of_the_relays_reaches_the_caller():
    driver = started()
    driver.run(
        [(("up", upstream_error("c_other", "invalid_value")), ["caller error invalid_value"])]
    )


def test_an_interrupt_that_races_the_responses_end_leaves_nothing_behind():
    """The operator's cancel reaches the service after the response ended by itself: the
    service refuses it (`response_cancel_not_active`, naming the cancel's event_id); the
    request keeps the status its response.done gave, the caller never hears of the cancel,
    and the next request goes."""
    driver = started()
    driver.step("submit op1")
    driver.step(("up", response_created("r1", tag="op1")))
    driver.step("submit op2")
    driver.run([("interrupt", ["upstream response.cancel", "answer r1"])])
    cancel = sent_frames(driver.last)[0]
    driver.run(
        [
            (
                ("up", response_done("r1", tag="op1")),
                [
                    "op1 completed",
                    "watchers request",
                    "upstream response.create op2",
                    "op2 sent",
                    "watchers request",
                    "usage 3",
                    "caller response.done",
                    "final agent hi",
                ],
            ),
            (
                ("up", upstream_error(cancel["event_id"], "response_cancel_not_active")),
                ["watchers event"],
            ),
            ("interrupt", ["answer None"]),
        ]
    )
    assert driver.core.sequencer.outstanding_id == "op2"


# ---------------------------------------------------------------------------- operators' requests


def test_operator_request_appends_to_the_session_instructions_and_hides_them_from_the_caller():
    driver = started()
    driver.run(
        [
            (
                "submit op1 say Offer-the-refund.",
                [
                    "op1 queued",
                    "watchers request",
                    "upstream response.create op1",
                    "op1 sent",
                    "watchers request",
                ],
            )
        ]
    )
    sent = sent_frames(driver.last)[0]
    assert sent["response"]["instructions"] == "Be a pirate.\n\nOffer-the-refund."
    assert driver.last[3].sent_instructions == sent["response"]["instructions"], (
        "the record keeps what was sent"
    )
    driver.run(
        [
            (
                ("up", response_created("r1", tag="op1")),
                ["op1 in_progress", "watchers request", "caller response.created"],
            )
        ]
    )
    seen = sent_frames(driver.last, ToCaller)[0]
    assert seen["response"]["metadata"] is None and "instructions" not in seen["response"]


def test_replace_sends_the_operators_text_alone():
    driver = started()
    driver.step("submit op1 replace say Only-this.")
    assert sent_frames(driver.last)[0]["response"]["instructions"] == "Only-this."


def test_append_uses_the_instructions_of_the_moment_it_is_sent():
    driver = started()
    driver.step(("call", caller_create("c1")))
    driver.step("submit op1 say More.")
    driver.step(
        ("up", frame({"type": "session.updated", "session": {"instructions": "Be brief."}}))
    )
    driver.step(("up", response_created("r1", tag="a")))
    driver.step(("up", response_done("r1", tag="a")))
    assert sent_frames(driver.last)[0]["response"]["instructions"] == "Be brief.\n\nMore."


def test_operator_out_of_band_response_goes_to_watchers_never_to_the_caller():
    driver = started()
    driver.step("submit op1 oob")
    driver.run(
        [
            (
                ("up", response_created("r1", tag="op1")),
                ["op1 in_progress", "watchers request", "watchers event"],
            ),
            (("up", delta("r1")), ["watchers event"]),
            (
                ("up", response_done("r1", tag="op1")),
                ["op1 completed", "watchers request", "usage 3", "watchers event", "final agent hi"],
            ),
            (("up", delta("r2")), ["caller response.output_text.delta"]),
        ]
    )


def test_a_late_response_to_an_out_of_band_request_that_timed_out_is_still_hidden():
    """Found by the state machine: the request had failed (upstream_timeout) when its
    response.created came, so nothing marked the response as the operator's."""
    driver = started()
    driver.step("submit op1 oob")
    driver.run(
        [
            ("tick 15", ["op1 failed upstream_timeout", "watchers request"]),
            (("up", response_created("r1", tag="op1")), ["watchers event"]),
            (("up", delta("r1")), ["watchers event"]),
            (
                ("up", response_done("r1", tag="op1")),
                ["late op1 r1", "watchers request", "usage 3", "watchers event", "final agent hi"],
            ),
        ]
    )


def test_a_response_that_comes_after_its_request_timed_out_is_recorded_on_it():
    """The request failed `upstream_timeout`; then its response starts and finishes all the
    same. The request stays `failed` (terminal), but its record gets the response's id,
    output, usage and outcome, and the transcript names the request that asked for it."""
    driver = started()
    driver.step("submit op1")
    driver.run(
        [
            ("tick 15", ["op1 failed upstream_timeout", "watchers request"]),
            (("up", response_created("r1", tag="op1")), ["caller response.created"]),
            (
                ("up", response_done("r1", tag="op1", text="Ahoy")),
                [
                    "late op1 r1",
                    "watchers request",
                    "usage 3",
                    "caller response.done",
                    "final agent Ahoy",
                ],
            ),
        ]
    )
    late, told, final = driver.last[0], driver.last[1], driver.last[-1]
    # The session pages' row of it gets the response and the message; the status stays.
    shown = {k: told.message[k] for k in ("status", "response_id", "error_code", "error_message")}
    assert shown == {
        "status": "failed",
        "response_id": "r1",
        "error_code": "upstream_timeout",
        "error_message": late.error_message,
    }
    assert (late.output_text, late.usage) == ("Ahoy", {"total_tokens": 3})
    assert late.error_message.endswith("Its response came later and ended completed.")
    assert "No response.created within 15 s" in late.error_message, "why it failed stays"
    assert (final.entry["request_id"], final.entry["response_id"]) == ("op1", "r1")


def test_a_ping_and_a_pickup_of_one_request_send_it_once():
    driver = started()
    driver.step("submit op1")
    assert driver.step("submit op1") == []


# ---------------------------------------------------------------------------- cancel, note, interrupt


def test_cancel_of_a_queued_request_cancels_it_and_says_when():
    driver = started()
    driver.step(("call", caller_create("c1")))
    driver.step("submit op1")
    driver.run([("cancel op1", ["op1 cancelled", "watchers request", "answer cancelled"])])
    assert "at" in driver.last[-1].payload


def test_cancel_of_the_callers_queued_request_tells_the_caller():
    driver = started()
    driver.step(("call", caller_create("c1")))
    driver.step(("call", caller_create("c2")))
    driver.run(
        [("cancel b", ["b cancelled", "caller error response_cancelled", "answer cancelled"])]
    )
    assert json.loads(driver.last[1].frame)["error"]["event_id"] == "c2"


def test_cancel_of_a_sent_request_is_refused_with_its_status():
    driver = started()
    driver.step("submit op1")
    driver.run([("cancel op1", ["answer sent"])])


def test_cancel_before_the_request_arrives_keeps_it_from_ever_being_sent():
    driver = started()
    driver.run(
        [
            ("cancel op1", ["op1 cancelled", "answer cancelled"]),
            ("submit op1", []),
            ("cancel op1", ["answer cancelled"]),
        ]
    )
    assert "at" not in driver.last[0].payload, "only the cancel that cancelled it says when"


def test_note_adds_an_item_and_an_error_about_it_stays_with_the_relay():
    driver = started()
    driver.run([("note", ["upstream conversation.item.create", "answer ok"])])
    note = sent_frames(driver.last)[0]
    assert note["item"]["role"] == "system" and note["item"]["content"][0]["text"] == "psst"
    driver.run([(("up", upstream_error(note["event_id"], "invalid_value")), ["watchers event"])])


def test_the_relay_keeps_the_ids_of_its_latest_own_events_only():
    """Each note's event id was kept until an error named it, and most never are: a long
    call with many notes kept them all. The latest are kept, and an error about one of them
    stays with the relay as before."""
    from apps.realtime.relay import OWN_EVENTS_KEPT

    driver = started()
    for _ in range(OWN_EVENTS_KEPT + 50):
        driver.step("note")
    assert len(driver.core._own_event_ids) == OWN_EVENTS_KEPT
    note = sent_frames(driver.last)[0]
    driver.run([(("up", upstream_error(note["event_id"], "invalid_value")), ["watchers event"])])


def test_interrupt_cancels_the_active_response():
    driver = started()
    driver.step(("call", caller_create("c1")))
    driver.step(("up", response_created("r1", tag="a")))
    driver.run([("interrupt", ["upstream response.cancel", "answer r1"])])
    driver.run(
        [("interrupt", ["upstream response.cancel", "answer r1"])]
    )  # asked again: asked again
    driver.step(("up", response_done("r1", tag="a", status="cancelled")))
    driver.run([("interrupt", ["answer None"])])


# ---------------------------------------------------------------------------- watchers


def test_a_new_watcher_gets_a_snapshot_and_everyone_sees_presence():
    driver = started()
    driver.run(
        [
            ("watch w1 ann", ["watcher w1 snapshot", "watchers presence", "presence ann"]),
            ("watch w1 ann", []),
            ("watch w2 bob", ["watcher w2 snapshot", "watchers presence", "presence ann,bob"]),
            ("unwatch w1", ["watchers presence", "presence bob"]),
        ]
    )


def test_a_watcher_that_missed_updates_gets_the_snapshot_again_when_it_asks():
    """A page whose channel layer was away (Redis restarted) lost what the actor told it
    meanwhile: a renewal that asks for the snapshot gets it, with no change of presence."""
    driver = started()
    driver.step("watch w1 ann")
    driver.step(("up", delta("r1", "Ahoy")))
    driver.run(
        [
            ("watch w1 ann", []),
            ("rewatch w1 ann", ["watcher w1 snapshot"]),
        ]
    )
    [entry] = driver.last[0].message["transcript"]
    assert entry["text"] == "Ahoy", "the transcript as it is now, what was missed included"


def test_a_new_watchers_snapshot_has_the_latest_status_of_the_requests_that_changed_last():
    """A page reads the request table, then watches: a change the history writer has not yet
    committed is in neither the table nor the live updates to come, but in the snapshot."""
    driver = started()
    for n in range(1, relay.RECENT_CHANGES + 3):
        driver.step(f"submit op{n} oob")
        driver.step(("up", response_created(f"r{n}", tag=f"op{n}")))
        driver.step(("up", response_done(f"r{n}", tag=f"op{n}")))
    driver.step("watch w1 ann")
    requests = driver.last[0].message["requests"]
    assert [(r["request_id"], r["status"]) for r in requests] == [
        (f"op{n}", "completed") for n in range(3, relay.RECENT_CHANGES + 3)
    ], "the latest change of each, oldest first, as many as RECENT_CHANGES"
    assert requests[-1]["origin"] == "api" and requests[-1]["conversation"] == "none"


def test_watchers_are_told_when_each_request_was_stored():
    """A page may first hear of a request from a later change of it (the request was made
    before it watched, or its messages were lost in a channel-layer outage): it shows when the
    request was made, and its latency from then, not from the change it heard of."""
    driver = started()
    driver.step("watch w1 ann")
    told = {}

    def step(now, what):
        driver.now = now
        actions = driver.core.submit(what, now=now) if isinstance(what, OperatorRequest) else driver.step(what)
        for action in actions:
            if isinstance(action, ToWatchers) and action.message["type"] == relay.WATCH_REQUEST:
                message = action.message
                told[message["request_id"], message["status"]] = (message["at"], message["created_at"])

    step(2.0, OperatorRequest(id="op1", origin="api", created_at=1.5))  # stored before it came
    step(3.0, ("call", caller_create("c1")))  # the caller's request, a, waits behind op1
    step(4.0, ("up", response_created("r1", tag="op1")))
    step(5.0, ("up", response_done("r1", tag="op1")))
    assert told == {
        ("op1", "queued"): (2.0, 1.5),
        ("op1", "sent"): (2.0, 1.5),
        ("a", "queued"): (3.0, 3.0),
        ("op1", "in_progress"): (4.0, 1.5),
        ("op1", "completed"): (5.0, 1.5),
        ("a", "sent"): (5.0, 3.0),
    }


def test_deltas_are_read_only_while_watched_and_flushed_at_most_every_50_ms():
    driver = started()
    raw = delta("r1", "Ahoy")
    assert driver.step(("up", raw)) == [ToCaller(frame=raw)]
    driver.step("watch w1 ann")
    driver.run(
        [
            (("up", delta("r1", " there")), ["caller response.output_text.delta"]),
            (("up", delta("r1", "!")), ["caller response.output_text.delta"]),
            ("tick 0.04", []),
            ("tick 0.05", ["watchers transcript"]),
        ]
    )
    entries = driver.last[0].message["entries"]
    assert entries == [
        {"id": "item_r1", "role": "agent", "append": " there!", "oob": False, "response_id": "r1"}
    ]
    assert driver.core.next_deadline is None, "nothing waits once flushed"


def test_a_turn_already_streaming_when_watching_begins_is_partial_until_its_end():
    """Deltas are read only while someone watches: a page opened mid-turn has not seen the
    turn's first words, and says so, until the response's end gives the whole text."""
    driver = started()
    driver.step(("up", response_created("r1")))
    driver.step(("up", delta("r1", "Ahoy")))
    driver.step("watch w1 ann")
    driver.step(("up", delta("r1", " there")))
    driver.step("tick 0.05")
    [change] = driver.last[0].message["entries"]
    assert change["append"] == " there" and change["partial"] is True
    driver.step("rewatch w1 ann")
    [entry] = driver.last[0].message["transcript"]
    assert (entry["text"], entry["partial"]) == (" there", True)
    driver.step(("up", response_done("r1", text="Ahoy there")))
    driver.step("tick 0.1")
    [final] = driver.last[0].message["entries"]
    assert final["text"] == "Ahoy there" and final["done"] and "partial" not in final
    driver.step(("up", response_created("r2")))
    driver.step(("up", delta("r2", "Bye")))
    driver.step("tick 0.2")
    [whole] = driver.last[0].message["entries"]
    assert whole["append"] == "Bye" and "partial" not in whole, "watched from its start"


def test_a_turn_watched_then_unwatched_mid_stream_is_partial_in_the_next_watchers_snapshot():
    """The only watcher leaves mid-turn and another opens the page before the turn ends: the
    deltas of the time nobody watched were not read, so the snapshot the new page starts from
    must not show the turn's beginning as if the rest followed it (a gap in the middle of the
    text, with nothing to say so); it is partial, from what comes next."""
    driver = started()
    driver.step("watch w1 ann")
    driver.step(("up", response_created("r1")))
    driver.step(("up", delta("r1", "Ahoy")))
    driver.step("tick 0.05")
    [seen] = driver.last[0].message["entries"]
    assert seen["append"] == "Ahoy" and "partial" not in seen, "watched from its start"
    driver.step("unwatch w1")
    driver.step(("up", delta("r1", " unseen")))
    actions = driver.step("watch w2 bob")
    [snapshot] = [a.message for a in actions if type(a) is ToWatcher]
    [entry] = snapshot["transcript"]
    assert (entry["text"], entry.get("partial")) == ("", True)
    driver.step(("up", delta("r1", " there")))
    driver.step("tick 0.1")
    [change] = driver.last[0].message["entries"]
    assert change["append"] == " there" and change["partial"] is True


@pytest.mark.parametrize("end", ["caller_closed", "upstream_closed 1000", "upstream_closed 1006"])
def test_a_turn_the_sessions_end_cuts_short_is_final_and_interrupted_not_left_streaming(end):
    """The session ends while the agent speaks (the caller hangs up, the upstream goes away
    mid-response): the turn will never end by itself. Watchers get it final and marked
    interrupted before the end, and it is recorded as final, for the page reloaded later."""
    driver = started()
    driver.step(("up", response_created("r1")))
    driver.step(("up", delta("r1", "Ahoy")))
    driver.step("watch w1 ann")
    driver.step(("up", delta("r1", " there")))
    actions = driver.step(end)
    told = [a.message for a in actions if type(a) is ToWatchers]
    told = [m for m in told if m["type"] in ("console.transcript", "console.ended")]
    assert [m["type"] for m in told] == ["console.transcript", "console.ended"]
    [entry] = told[0]["entries"]
    assert (entry["id"], entry["text"], entry["done"]) == ("item_r1", " there", True)
    assert entry["interrupted"] is True and "partial" not in entry
    [final] = [a for a in actions if type(a) is TranscriptFinal]
    assert final.entry == entry
    assert type(actions[-1]) is SessionEnded, "the end is still the last action"
    [snapshot] = driver.core.snapshot()["transcript"]
    assert snapshot["done"] and snapshot["interrupted"]


def test_a_watcher_that_stops_renewing_is_forgotten():
    driver = started()
    driver.step("watch w1 ann")
    driver.run(
        [
            ("at 91", []),
            ("watch w2 bob", ["watcher w2 snapshot", "watchers presence", "presence bob"]),
        ]
    )


# ---------------------------------------------------------------------------- the end


def test_caller_leaving_fails_every_pending_request_and_ends_the_session():
    driver = started()
    driver.step(("call", caller_create("c1")))
    driver.step("submit op1")
    driver.run(
        [
            (
                "caller_closed",
                [
                    "a failed session_ended",
                    "op1 failed session_ended",
                    "watchers request",
                    "watchers ended",
                    "ended ended caller_closed",
                ],
            ),
            (("call", caller_create("c2")), []),
            (("up", delta("r1")), []),
            ("tick 100", []),
        ]
    )
    assert driver.core.next_deadline is None


@pytest.mark.parametrize(
    ("code", "caller_code", "status"),
    [
        (1000, 1000, "ended"),
        (1001, 1001, "ended"),
        (1011, 1011, "failed"),
        (1006, 1011, "failed"),
        (4000, 4000, "failed"),
    ],
)
def test_upstream_close_passes_its_code_on_and_ends_the_session(code, caller_code, status):
    driver = started()
    driver.run(
        [
            (
                f"upstream_closed {code} bye",
                [f"close {caller_code}", "watchers ended", f"ended {status} upstream_closed"],
            )
        ]
    )
    assert driver.core.ended.code == code
    failed = {"upstream_closed": 1} if status == "failed" else {}
    assert driver.core.upstream_errors == failed, "a lost upstream leg is an upstream error"


def test_session_expired_then_close_is_a_normal_end():
    driver = started()
    driver.step(("call", caller_create("c1")))
    expired = frame(
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "code": "session_expired",
                "message": "Your session hit the maximum duration of 60 minutes.",
            },
        }
    )
    driver.run(
        [
            (("up", expired), ["caller error session_expired"]),
            (
                "upstream_closed 1001",
                [
                    "close 1001",
                    "a failed session_ended",
                    "watchers ended",
                    "ended ended session_expired",
                ],
            ),
        ]
    )


def test_a_stalled_upstream_during_a_response_fails_the_session():
    driver = started()
    driver.step(("call", caller_create("c1")))
    driver.step(("up", response_created("r1", tag="a")))
    assert driver.core.next_deadline == SEND_TIMEOUT * 0 + STALL_TIMEOUT
    driver.run(
        [
            ("at 20", []),
            (("up", delta("r1")), ["caller response.output_text.delta"]),
            ("tick 30", []),
            (
                "tick 50",
                [
                    "caller error upstream_timeout",
                    "close 1011",
                    "a failed session_ended",
                    "watchers ended",
                    "ended failed upstream_closed",
                ],
            ),
        ]
    )


def test_an_idle_upstream_is_not_a_stall():
    driver = started()
    assert driver.core.next_deadline is None
    driver.run([("tick 1000", [])])


def test_shutdown_ends_cleanly_and_asks_the_caller_to_come_back():
    driver = started()
    driver.step("submit op1")
    driver.run(
        [
            (
                "shutdown",
                [
                    "close 1012",
                    "op1 failed session_ended",
                    "watchers request",
                    "watchers ended",
                    "ended ended server_shutdown",
                ],
            )
        ]
    )
    assert "server_shutdown" in driver.last[1].error_message
    # The caller's client reads the close reason; operators read the record.
    assert driver.last[0].reason == "The server is restarting; reconnect to start a new session."
    assert driver.core.ended.detail == (
        "The server was restarted; the caller was asked to reconnect, as a new session."
    )


def test_a_crash_of_the_relay_tells_the_caller():
    driver = started()
    driver.run(
        [
            (
                "crashed",
                [
                    "caller error relay_error",
                    "close 1011",
                    "watchers ended",
                    "ended failed relay_error",
                ],
            )
        ]
    )


def test_a_session_swept_as_lost_elsewhere_ends_here_and_tells_the_caller():
    """The sweep recorded the end, failed the requests and told the followers: here the
    caller is told and the core stops, and nothing is recorded or told twice."""
    driver = started()
    driver.step("submit op1")
    driver.run([("lost", ["caller error session_lost", "close 1011"])])
    assert (driver.core.ended.status, driver.core.ended.reason) == ("failed", "session_lost")
    assert driver.step("lost") == []
    # Whatever the upstream still sends is not acted on: the session is over.
    assert driver.step(("up", {"type": "response.created", "response": {"id": "r1"}})) == []


def test_only_the_first_end_counts():
    driver = started()
    driver.step("caller_closed")
    for late in ("shutdown", "caller_closed", "crashed", "lost", "upstream_closed 1000"):
        assert driver.step(late) == []
    assert driver.core.ended.reason.value == "caller_closed"


def test_a_request_submitted_after_the_end_fails_at_once():
    driver = started()
    driver.step("caller_closed")
    driver.run(
        [
            (
                "submit op1",
                ["op1 queued", "watchers request", "op1 failed session_ended", "watchers request"],
            )
        ]
    )


def test_every_responses_usage_adds_up_to_the_sessions():
    driver = started()
    done = {
        "type": "response.done",
        "response": {
            "id": "r1",
            "status": "completed",
            "usage": {
                "total_tokens": 10,
                "input_tokens": 4,
                "input_token_details": {"audio_tokens": 1},
            },
        },
    }
    driver.step(("up", frame(done)))
    done["response"]["id"] = "r2"
    driver.run([(("up", frame(done)), ["usage 20", "caller response.done"])])
    assert driver.core.usage == {
        "total_tokens": 20,
        "input_tokens": 8,
        "input_token_details": {"audio_tokens": 2},
    }
    done["response"]["usage"] = {"total_tokens": None, "note": "x"}
    driver.run([(("up", frame(done)), ["caller response.done"])])  # nothing to add: no record


def test_watchers_see_the_usage_grow_with_its_price_and_a_new_one_starts_from_it():
    driver = started(price=lambda usage: usage["total_tokens"] / 1000)
    done = {"type": "response.done", "response": {"id": "r1", "status": "completed",
                                                  "usage": {"total_tokens": 10}}}
    driver.step(("up", frame(done)))  # nobody watches: nobody is told
    driver.step("watch w1 ann")
    assert driver.last[0].message["usage"] == {"total_tokens": 10}
    assert driver.last[0].message["cost_usd"] == 0.01
    done["response"]["id"] = "r2"
    driver.run([(("up", frame(done)), ["usage 20", "watchers usage", "caller response.done"])])
    told = driver.last[1].message
    assert told == {"type": "console.usage", "session_id": "sess_1",
                    "usage": {"total_tokens": 20}, "cost_usd": 0.02}
    assert started().core.usage_summary() == {"usage": {}, "cost_usd": None}, "not priced"


# ---------------------------------------------------------------------------- final transcript entries


def test_each_turn_is_final_once_for_scripts_whether_or_not_anyone_watches():
    driver = started()
    user_item = frame(
        {
            "type": "conversation.item.done",
            "item": {
                "id": "item_u1",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Where is my parcel?"}],
            },
        }
    )
    driver.run(
        [
            (("up", user_item), ["caller conversation.item.done", "final user Where is my parcel?"]),
            # The same item again changes nothing, so it is not final a second time.
            (("up", user_item), ["caller conversation.item.done"]),
        ]
    )
    finals = [a for a in driver.step(("up", response_done("r1", text="On its way."))) if isinstance(a, TranscriptFinal)]
    assert [(f.entry["role"], f.entry["text"], f.entry["response_id"]) for f in finals] == [
        ("agent", "On its way.", "r1")
    ]


# ---------------------------------------------------------------------------- audio


def caller_append(audio: str = "AAAA") -> str:
    return frame({"type": "input_audio_buffer.append", "event_id": "c_a", "audio": audio})


def agent_audio(response_id: str = "r1", audio: str = "BBBB") -> str:
    return frame(
        {
            "type": "response.output_audio.delta",
            "event_id": "ev",
            "response_id": response_id,
            "item_id": f"item_{response_id}",
            "output_index": 0,
            "content_index": 0,
            "delta": audio,
        }
    )


def test_audio_passes_unread_until_someone_listens_and_again_after_the_last_leaves():
    driver = started()
    driver.run(
        [
            (("call", caller_append()), ["upstream input_audio_buffer.append"]),
            (("up", agent_audio()), ["caller response.output_audio.delta"]),
            ("listen ch1 ann", ["watcher ch1 listen.started", "listeners 1"]),
            ("listen ch2 bob", ["watcher ch2 listen.started", "listeners 2"]),
            ("listen ch1 ann", []),  # a renewal
            (
                ("call", caller_append()),
                ["upstream input_audio_buffer.append", "audio caller pcm16 AAAA"],
            ),
            (("up", agent_audio()), ["audio agent pcm16 BBBB", "caller response.output_audio.delta"]),
            ("unlisten ch1", ["listeners 1"]),
            ("unlisten ch2", ["listeners 0"]),
            (("call", caller_append()), ["upstream input_audio_buffer.append"]),
            (("up", agent_audio()), ["caller response.output_audio.delta"]),
        ]
    )
    started_message = [a for a in Driver().core.listen("x", user="u", listening=True, now=0) if isinstance(a, ToWatcher)]
    assert started_message[0].message == {"type": "listen.started", "format": "pcm16", "rate": 24000}


def test_a_recorded_session_taps_its_audio_in_the_formats_the_session_names():
    driver = started(record_audio=True)
    g711 = frame(
        {
            "type": "session.updated",
            "session": {
                "audio": {
                    "input": {"format": {"type": "audio/pcmu"}},
                    "output": {"format": {"type": "audio/pcma"}},
                }
            },
        }
    )
    driver.run(
        [
            (("up", g711), ["caller session.updated"]),
            (
                ("call", caller_append("CCCC")),
                ["upstream input_audio_buffer.append", "audio caller pcmu CCCC"],
            ),
            (("up", agent_audio(audio="DDDD")), ["audio agent pcma DDDD", "caller response.output_audio.delta"]),
            # An append with no audio has nothing to copy; the upstream answers it.
            (("call", caller_append("")), ["upstream input_audio_buffer.append"]),
        ]
    )


def test_a_refused_voice_change_leaves_the_tapped_formats_as_the_session_has_them():
    """The service refuses a caller's update that changes the voice after audio whole, with
    `cannot_update_voice` and no `param`: its formats never applied, so taps go on in the
    session's."""
    driver = started(record_audio=True)
    update = frame(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {"input": {"format": {"type": "audio/pcmu"}}, "output": {"voice": "ash"}},
            },
        }
    )
    driver.run(
        [
            (("call", update), ["upstream session.update"]),
            (
                ("up", upstream_error(None, "cannot_update_voice")),
                ["caller error cannot_update_voice"],
            ),
            (
                ("call", caller_append("CCCC")),
                ["upstream input_audio_buffer.append", "audio caller pcm16 CCCC"],
            ),
        ]
    )


def test_an_operators_out_of_band_audio_is_neither_heard_by_listeners_nor_recorded():
    driver = started(record_audio=True)
    driver.step("submit op1 oob")
    driver.run(
        [
            (("up", response_created("r9", tag="op1")), ["op1 in_progress", "watchers request", "watchers event"]),
            (("up", agent_audio("r9")), ["watchers event"]),
        ]
    )


def test_a_recorded_turn_is_final_with_the_time_its_audio_began():
    driver = started(record_audio=True)
    driver.now = 1.0
    speech = frame({"type": "input_audio_buffer.speech_started", "item_id": "item_u", "audio_start_ms": 0})
    driver.step(("up", speech))
    driver.now = 3.0
    spoken = frame(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "item_u",
            "transcript": "Hello there",
        }
    )
    (final,) = [a for a in driver.step(("up", spoken)) if isinstance(a, TranscriptFinal)]
    assert (final.entry["text"], final.at, final.started_at) == ("Hello there", 3.0, 1.0)
    driver.now = 4.0
    driver.step(("up", agent_audio("r1")))
    driver.now = 6.0
    (final,) = [a for a in driver.step(("up", response_done("r1", text="Hi"))) if isinstance(a, TranscriptFinal)]
    assert (final.entry["id"], final.at, final.started_at) == ("item_r1", 6.0, 4.0)
