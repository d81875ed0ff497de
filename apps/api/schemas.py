"""Shapes of the REST hook's responses (CONTRACT section 2). Input is `ResponseOverrides`.

Sessions and requests are answered with the models' `to_dict()`; `SessionOut` and `RequestOut`
document that shape, and django-ninja validates every answer against them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    field_validator,
)

from apps.realtime.relay import EndReason
from apps.realtime.sequencer import RequestStatus
from apps.sessions.models import LiveSession
from apps.sessions.overrides import check_text
from apps.sessions.services import label_problem

SessionStatus = Literal["connecting", "live", "ended", "failed"]
Origin = Literal["caller", "console", "api", "server"]
Status = Literal[tuple(status.value for status in RequestStatus)]  # type: ignore[valid-type]
EndReasonValue = Literal[tuple(reason.value for reason in EndReason)]  # type: ignore[valid-type]
Kind = Literal[tuple(LiveSession.Kind.values)]  # type: ignore[valid-type]

MAX_NOTE_CHARS = 32_768

_SECONDS = re.compile(r"\s*[-+]?\d+(\.\d*)?\s*")
# A time whose '+' offset came through a URL unencoded, as a space: `…T12:00:00 01:00`.
_PLUS_AS_SPACE = re.compile(r".*T.*\d \d{2}(:?\d{2})?")


def _not_seconds(value: Any) -> Any:
    """pydantic reads a bare number as Unix seconds; the API's times are ISO 8601 only. An
    offset whose '+' a URL turned into a space is named as such."""
    if isinstance(value, int | float) or (isinstance(value, str) and _SECONDS.fullmatch(value)):
        raise ValueError(
            "must be ISO 8601 with an offset (2025-03-01T12:00:00+00:00), not a number"
        )
    if isinstance(value, str) and _PLUS_AS_SPACE.fullmatch(value):
        raise ValueError(
            "has a space before its offset: a '+' in a URL reads as a space, so write it as "
            "%2B (2025-03-01T12:00:00%2B01:00), or give the time in UTC with Z"
        )
    return value


def _in_utc_range(moment: datetime) -> datetime:
    """The database reads times in UTC: a moment whose UTC is before year 1 or after 9999
    (0001-01-01T00:00:00+14:00) cannot be read, so it is refused here."""
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            "is out of range: in UTC it must fall between 0001-01-01T00:00:00Z and "
            "9999-12-31T23:59:59.999999Z"
        ) from None
    return moment


Moment = Annotated[AwareDatetime, BeforeValidator(_not_seconds), AfterValidator(_in_utc_range)]
"""A time given to the API: ISO 8601 with an offset, within years 1 to 9999 in UTC."""


class ErrorDetail(BaseModel):
    code: str
    message: str
    fields: dict[str, str] | None = Field(
        default=None, description="For 422: each invalid field, named by its path, with the reason."
    )


class ErrorOut(BaseModel):
    error: ErrorDetail


class SessionOut(BaseModel):
    """CONTRACT's `Session`: what `LiveSession.to_dict()` gives, key for key."""

    model_config = ConfigDict(extra="forbid")  # a key of to_dict() missing here is an error

    id: str = Field(description="The upstream session.id, e.g. sess_abc123.")
    status: SessionStatus
    model: str
    started_at: datetime
    ended_at: datetime | None
    active_response_id: str | None = Field(description="The in-conversation response in progress.")
    queued: int = Field(description="Requests waiting for their turn.")
    origin_counts: dict[str, int] = Field(description="Requests so far, by origin.")
    end_reason: EndReasonValue | None = Field(description="Why it ended; null while it has not.")
    kind: Kind = Field(description="'relay': a caller on /v1/realtime; 'webrtc', 'sip': a call.")
    call_id: str | None = Field(description="The upstream's call id of a WebRTC or SIP call.")
    label: str | None = Field(description="The operators' label for it.")
    upstream_sessions: list[str] = Field(description="The upstream session.ids it used, in order.")
    caller_number: str | None = Field(description="A phone call's caller (SIP From), e.g. +15551234567.")
    dialled_number: str | None = Field(description="The number a phone call dialled (SIP To).")
    usage: dict[str, Any] = Field(description="Tokens so far: every response's usage, summed.")
    cost_usd: float | None = Field(description="The usage priced by OC_PRICES; null when the model has no price.")


class SessionList(BaseModel):
    items: list[SessionOut]


class RequestError(BaseModel):
    code: str
    message: str


class RequestOut(BaseModel):
    """CONTRACT's `ResponseRequest`: what `ResponseRequest.to_dict()` gives, key for key."""

    model_config = ConfigDict(extra="forbid")  # a key of to_dict() missing here is an error

    id: str
    session_id: str
    origin: Origin
    instructions: str | None = Field(description="The requester's text.")
    instructions_mode: Literal["append", "replace"]
    sent_instructions: str | None = Field(description="What was sent upstream as instructions.")
    conversation: Literal["auto", "none"]
    metadata: dict[str, Any] | None
    status: Status
    response_id: str | None
    output_text: str | None
    usage: dict[str, Any] | None
    cost_usd: float | None = Field(
        description="The usage priced by OC_PRICES; null when the model has no price or there is no usage yet."
    )
    error: RequestError | None
    created_at: datetime
    sent_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    requested_by: str = Field(description="The operator's username, or 'token:<name>' for an API token.")


class RequestList(BaseModel):
    items: list[RequestOut]


class RequestPage(BaseModel):
    items: list[RequestOut]
    next_cursor: str | None = Field(description="Pass it as `cursor` for the next page; null on the last.")


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    text: StrictStr = Field(min_length=1, max_length=MAX_NOTE_CHARS)
    role: Literal["system", "user"] = Field(
        default="system", description="'system' (default): quiet context; 'user': as if the caller said it."
    )

    @field_validator("text")
    @classmethod
    def _check_text(cls, text: str) -> str:
        return check_text(text, "text")


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    label: StrictStr | None = Field(description="At most 200 characters; empty or null clears it.")

    @field_validator("label")
    @classmethod
    def _check_label(cls, label: str | None) -> str | None:
        problem = label_problem(label.strip()) if label else None
        if problem is not None:
            raise ValueError(problem)
        return label


class NoteOut(BaseModel):
    id: str = Field(description="The conversation item's id.")
    session_id: str
    role: Literal["system", "user"]
    text: str
    created_at: datetime
    requested_by: str


class InterruptOut(BaseModel):
    session_id: str
    response_id: str | None = Field(description="The response asked to stop; null when none was active.")
