"""Schemas of the REST hook's tool approvals: `POST /api/v1/sessions/{id}/approvals/{approval_id}`
and `GET /api/v1/sessions/{id}/approvals` (the endpoints are in `api`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

from apps.sessions.approvals import MAX_REASON_CHARS
from apps.sessions.overrides import check_text


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    approve: StrictBool = Field(description="true approves the tool call; false denies it.")
    reason: StrictStr | None = Field(
        default=None,
        max_length=MAX_REASON_CHARS,
        description="Why, sent upstream with the decision and recorded.",
    )

    @field_validator("reason")
    @classmethod
    def _check_reason(cls, reason: str | None) -> str | None:
        return check_text(reason, "reason") if reason is not None else None


class ApprovalOut(BaseModel):
    """`ToolApproval.to_dict()`: also the `approval` of the event log's `approval.status`."""

    id: str = Field(description="The upstream's approval request item id (`mcpr_…`).")
    session_id: str
    kind: Literal["mcp", "function"]
    name: str
    server_label: str
    arguments: str = Field(description="The tool's arguments, a JSON string as the model wrote them.")
    status: Literal["pending", "approved", "denied", "expired"]
    reason: str = Field(description="Why it was decided so; empty while pending, or when no reason was given.")
    decided_by: str = Field(description="The operator or token; `caller` for the caller's app; empty when it expired.")
    created_at: datetime
    decided_at: datetime | None = Field(description="null while pending.")


class ApprovalList(BaseModel):
    items: list[ApprovalOut]
