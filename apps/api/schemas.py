"""Shapes of the REST hook's responses (CONTRACT section 2). Input is `ResponseOverrides`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from apps.realtime.sequencer import RequestStatus
from apps.sessions.models import LiveSession, ResponseRequest
from apps.sessions.overrides import check_text
from apps.sessions.selectors import origin_counts

SessionStatus = Literal["connecting", "live", "ended", "failed"]
Origin = Literal["caller", "console", "api", "server"]
Status = Literal[tuple(status.value for status in RequestStatus)]  # type: ignore[valid-type]

MAX_NOTE_CHARS = 32_768


class ErrorDetail(BaseModel):
    code: str
    message: str
    fields: dict[str, str] | None = Field(
        default=None, description="For 422: each invalid field, named by its path, with the reason."
    )


class ErrorOut(BaseModel):
    error: ErrorDetail


class SessionOut(BaseModel):
    id: str = Field(description="The upstream session.id, e.g. sess_abc123.")
    status: SessionStatus
    model: str
    started_at: datetime
    ended_at: datetime | None
    active_response_id: str | None = Field(description="The in-conversation response in progress.")
    queued: int = Field(description="Requests waiting for their turn.")
    origin_counts: dict[str, int] = Field(description="Requests so far, by origin.")

    @classmethod
    def of(cls, session: LiveSession) -> SessionOut:
        return cls(
            id=session.upstream_id,
            status=session.status,
            model=session.model,
            started_at=session.started_at,
            ended_at=session.ended_at,
            active_response_id=session.active_response or None,
            queued=session.queued,
            origin_counts=origin_counts(session),
        )


class SessionList(BaseModel):
    items: list[SessionOut]


class RequestError(BaseModel):
    code: str
    message: str


class RequestOut(BaseModel):
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
    error: RequestError | None
    created_at: datetime
    sent_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    requested_by: str = Field(description="The operator's username, or 'token:<name>' for an API token.")

    @classmethod
    def of(cls, request: ResponseRequest) -> RequestOut:
        return cls(
            id=request.id,
            session_id=request.session.upstream_id or "",
            origin=request.origin,
            instructions=request.instructions,
            instructions_mode=request.instructions_mode,
            sent_instructions=request.sent_instructions,
            conversation=request.conversation or "auto",
            metadata=request.metadata,
            status=request.status,
            response_id=request.response_id or None,
            output_text=request.output_text or None,
            usage=request.usage,
            error=request.error,
            created_at=request.created_at,
            sent_at=request.sent_at,
            started_at=request.started_at,
            finished_at=request.finished_at,
            requested_by=request.requested_by,
        )


class RequestList(BaseModel):
    items: list[RequestOut]


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
