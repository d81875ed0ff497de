"""What every part of the simulator shares: event ids, ids, JSON encoding, refusals. No Django."""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time

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
