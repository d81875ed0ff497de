"""Small helpers for Realtime protocol frames. No Django, no I/O.

The relay forwards most frames untouched, so the helpers here are built to avoid parsing:
`peek_type` reads the event type from the front of a frame with one regex match, and the
caller of it parses the frame only when the type is one it must act on. When a frame does not
start the usual way (`{"type":"…"`), `peek_type` returns None and the caller parses it: the
fast path is an optimisation, never a correctness assumption.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Mapping
from typing import Any

_TYPE_AT_START = re.compile(rb'\s*\{\s*"type"\s*:\s*"([A-Za-z0-9_.]+)"')
_TYPE_AT_START_STR = re.compile(r'\s*\{\s*"type"\s*:\s*"([A-Za-z0-9_.]+)"')

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_counter = itertools.count(1)


_COMPACT_PREFIX = '{"type":"'
_COMPACT_PREFIX_BYTES = _COMPACT_PREFIX.encode()

# Deepest nesting of arrays and objects the relay reads in an event it parses.
MAX_DEPTH = 256


def peek_type(frame: str | bytes) -> str | None:
    """The event type if the frame starts with it, else None (then parse the frame)."""
    # The usual compact form is read without a regex: this runs for every relayed frame.
    if isinstance(frame, str) and frame.startswith(_COMPACT_PREFIX):
        end = frame.find('"', 9, 128)
        if end > 9:
            kind = frame[9:end]
            if kind.isascii() and "\\" not in kind:
                return kind
    elif isinstance(frame, bytes) and frame.startswith(_COMPACT_PREFIX_BYTES):
        end = frame.find(b'"', 9, 128)
        if end > 9:
            kind = frame[9:end]
            if kind.isascii() and b"\\" not in kind:
                return kind.decode("ascii")
    match = (_TYPE_AT_START if isinstance(frame, bytes) else _TYPE_AT_START_STR).match(frame)
    if match is None:
        return None
    value = match.group(1)
    return value.decode("ascii") if isinstance(value, bytes) else value


def loads(text: str | bytes) -> Any:
    """`json.loads`, with nesting too deep for Python's parser reported as a ValueError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"it is nested more than {MAX_DEPTH} levels deep") from None


_decode_at = json.JSONDecoder().raw_decode
_SPACE = re.compile(r"[ \t\n\r]*")


def leading_event_id(text: str) -> str | None:
    """The `event_id` of a frame `loads` refused (nested too deep for Python's parser, or not
    JSON further on), read from the front of its object member by member up to the first
    value that cannot be read, so the caller's `error` names the event as it would any other.
    None when the frame is no object, has no string `event_id` before that value, or the
    `event_id` is text `text_problem` refuses."""
    at = _SPACE.match(text).end()
    if not text.startswith("{", at):
        return None
    at = _SPACE.match(text, at + 1).end()
    while text.startswith('"', at):
        try:
            key, at = json.decoder.scanstring(text, at + 1)
            at = _SPACE.match(text, at).end()
            if not text.startswith(":", at):
                return None
            value, at = _decode_at(text, _SPACE.match(text, at + 1).end())
        except (ValueError, RecursionError):
            return None
        if key == "event_id":
            return value if isinstance(value, str) and text_problem(value) is None else None
        at = _SPACE.match(text, at).end()
        if not text.startswith(",", at):
            return None
        at = _SPACE.match(text, at + 1).end()
    return None


def loads_object(text: str | bytes) -> dict[str, Any] | None:
    """The JSON object in `text`, or None if it holds anything else or is not JSON."""
    try:
        value = loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def json_type(value: Any) -> str:
    """A parsed JSON value's type, in the words of the service's error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def text_problem(text: str) -> str | None:
    """Why a string cannot be stored or sent on, or None. PostgreSQL refuses a NUL character
    in text and JSON; a lone surrogate, which JSON can spell (`"\\ud800"`) but UTF-8 cannot
    encode, would fail the send of whatever frame holds it."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which is not allowed"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone surrogate (\\ud800-\\udfff), which is not valid Unicode"
    return None


def may_need_refusal(frame: str) -> bool:
    """Whether a text frame could hold what `find_problem` refuses. In JSON a NUL or a lone
    surrogate can only be spelled as a `\\u` escape, and nesting deeper than MAX_DEPTH takes more
    brackets than that: frames with neither (audio appends, most events) need not be parsed."""
    return "\\u" in frame or frame.count("{") + frame.count("[") > MAX_DEPTH


def find_problem(value: Any, path: str, depth: int = 0) -> tuple[str, str] | None:
    """The first string (key or value) in a parsed JSON value that `text_problem` refuses, or
    nesting deeper than MAX_DEPTH: (its path, e.g. "response.metadata.topic", the reason).
    With `path` "", paths start at the value's own keys ("item.content[0].text")."""
    if isinstance(value, str):
        problem = text_problem(value)
        return None if problem is None else (path, problem)
    if depth >= MAX_DEPTH and isinstance(value, dict | list):
        return path, f"is nested more than {MAX_DEPTH} levels deep"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = text_problem(key)
            if problem is not None:
                return path, f"has a key that {problem}"
            found = find_problem(item, f"{path}.{key}" if path else key, depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = find_problem(item, f"{path}[{index}]", depth + 1)
            if found is not None:
                return found
    return None


def dumps(event: Mapping[str, Any]) -> str:
    """Compact JSON, as the upstream sends it."""
    return _dumps(event)


def new_event_id(prefix: str = "event_oc") -> str:
    return f"{prefix}_{time.time_ns():x}{next(_counter):x}"


def error_event(
    *,
    code: str,
    message: str,
    param: str | None = None,
    client_event_id: str | None = None,
    error_type: str = "invalid_request_error",
) -> dict[str, Any]:
    """An `error` server event in the upstream's shape."""
    return {
        "type": "error",
        "event_id": new_event_id(),
        "error": {
            "type": error_type,
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        },
    }


def response_output_text(response: Mapping[str, Any]) -> str:
    """The text of a response: output_text parts, or audio transcripts, in order."""
    pieces: list[str] = []
    for item in response.get("output") or ():
        if not isinstance(item, Mapping):
            continue
        for part in item.get("content") or ():
            if not isinstance(part, Mapping):
                continue
            text = part.get("text")
            if text is None:
                text = part.get("transcript")
            if isinstance(text, str):
                pieces.append(text)
    return "".join(pieces)


def error_fields(event: Mapping[str, Any]) -> tuple[str | None, str | None, str]:
    """(client event_id, code, message) of an `error` event, tolerating missing parts."""
    error = event.get("error")
    if not isinstance(error, Mapping):
        return None, None, ""
    event_id = error.get("event_id")
    code = error.get("code")
    message = error.get("message")
    return (
        event_id if isinstance(event_id, str) and event_id else None,
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else "",
    )
