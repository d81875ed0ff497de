"""Event helpers: the fast type peek never decides wrongly, it only declines."""

from __future__ import annotations

import json

import pytest

from apps.realtime import events


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b'{"type":"response.output_text.delta","delta":"x"}', "response.output_text.delta"),
        ('{ "type" : "error", "error": {}}', "error"),
        (b'{"event_id":"e","type":"response.done"}', None),  # type not first: caller must parse
        (b'{"type":"a\\u0062c"}', None),  # escaped: not read by the peek
        (b"[1,2]", None),
        (b"", None),
    ],
)
def test_peek_type(frame, expected):
    assert events.peek_type(frame) == expected


def test_error_event_has_the_upstream_shape():
    event = events.error_event(code="invalid_json", message="bad", client_event_id="c1")
    assert event["type"] == "error" and event["event_id"]
    assert event["error"] == {
        "type": "invalid_request_error", "code": "invalid_json", "message": "bad",
        "param": None, "event_id": "c1",
    }
    assert json.loads(events.dumps(event)) == event


def test_output_text_reads_text_and_transcripts_in_order():
    response = {
        "output": [
            {"content": [{"type": "output_text", "text": "Hello "}]},
            {"content": [{"type": "output_audio", "transcript": "world"}]},
            "junk",
        ]
    }
    assert events.response_output_text(response) == "Hello world"
    assert events.response_output_text({}) == ""


def test_error_fields_tolerate_missing_parts():
    assert events.error_fields({"error": {"code": "x", "message": "m", "event_id": "e"}}) == ("e", "x", "m")
    assert events.error_fields({}) == (None, None, "")


DEEP = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ('{"type":"conversation.item.create","event_id":"e1","item":' + DEEP + "}", "e1"),
        (' { "event_id" : "e\\u00e92" , "x": {"a": [1]}, "item": ' + DEEP + "}", "e\u00e92"),
        ('{"type":"x","item":' + DEEP + ',"event_id":"late"}', None),
        ('{"type":"x","event_id":5,"item":' + DEEP + "}", None),
        ('{"type":"x","event_id":"\\ud800","item":' + DEEP + "}", None),
        ('{"type":"x","event_id":"e3", oops', "e3"),
        ('{"type" "x","event_id":"e4"}', None),
        (DEEP, None),
        ("not json", None),
    ],
)
def test_leading_event_id_reads_the_members_before_the_unreadable_one(frame, expected):
    assert events.leading_event_id(frame) == expected
