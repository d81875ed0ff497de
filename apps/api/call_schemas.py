"""Schemas of the call-control endpoints (`/sessions/{id}/hangup`, `/sessions/{id}/refer`)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from apps.sessions.calls import MAX_TARGET_URI_CHARS, target_uri_problem


class ReferIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    target_uri: StrictStr = Field(
        max_length=MAX_TARGET_URI_CHARS,
        description=(
            "Where to transfer the call: 'tel:+14155550123', 'sip:agent@example.com' or a "
            "sips: URI, the scheme in any case; sent upstream as written."
        ),
    )

    @field_validator("target_uri")
    @classmethod
    def _check_target(cls, target_uri: str) -> str:
        problem = target_uri_problem(target_uri)
        if problem is not None:
            raise ValueError(problem)
        return target_uri


class CallActionOut(BaseModel):
    session_id: str
    action: str = Field(description="'hangup' or 'refer'.")
    target_uri: str | None = None
    requested_by: str
    ok: bool | None = Field(description="Whether the upstream accepted it.")
    created_at: datetime
