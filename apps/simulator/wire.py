"""What every part of the simulator shares: event ids, ids, JSON encoding, refusals. No Django."""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

from apps.realtime.events import json_type

dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_event_counter = itertools.count(1)
_EVENT_ID = re.compile(r"event_\d+_(\d+)\Z")


def new_event_id() -> str:
    """`event_<counter>_<time.time_ns()>`: the id itself carries the time it was made (sent)."""
    return f"event_{next(_event_counter)}_{time.time_ns()}"


def event_sent_time_ns(event_id: object) -> int | None:
    """The `time.time_ns()` a simulator event was sent at, read from its id; else None."""
    if not isinstance(event_id, str):
        return None
    match = _EVENT_ID.match(event_id)
    return int(match.group(1)) if match else None


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def holds_lone_surrogate(value: Any) -> bool:
    """Whether a parsed JSON value holds a lone surrogate (`"\\ud800"` parses, but UTF-8 cannot
    encode it): the service's parser refuses such a frame as not valid JSON."""
    if isinstance(value, str):
        if value.isascii():
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(holds_lone_surrogate(k) or holds_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(holds_lone_surrogate(item) for item in value)
    return False


def tokens(text: str) -> int:
    """A rough token count (4 characters a token), never zero."""
    return max(1, (len(text) + 3) // 4)


class Rejected(Exception):
    """A client event the service refuses; becomes an `error` event."""

    def __init__(
        self,
        code: str,
        message: str,
        param: str | None = None,
        *,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.error_type = error_type

    @classmethod
    def missing_parameter(cls, param: str) -> Rejected:
        """The refusal of an event that lacks `param`, in the service's words."""
        return cls("missing_required_parameter", f"Missing required parameter: '{param}'.", param)

    @classmethod
    def invalid_type(cls, param: str, expected: str, value: object) -> Rejected:
        """The refusal of a `param` that is not of the `expected` JSON type ("a string")."""
        return cls(
            "invalid_type",
            f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead.",
            param,
        )


def required_object(event: Mapping[str, Any], param: str) -> dict[str, Any]:
    """The object `event[param]`, refused as the service refuses it when missing or not one."""
    value = event.get(param)
    if value is None:
        raise Rejected.missing_parameter(param)
    if not isinstance(value, dict):
        raise Rejected.invalid_type(param, "an object", value)
    return value
