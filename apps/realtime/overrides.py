"""Per-response overrides an operator may ask for, checked and shaped as the upstream expects.

No Django. The REST hook and the console validate input with `ResponseOverrides`; the actor
turns a stored request into the `response` object of a `response.create` with
`upstream_response()` and `effective_instructions()`.

Limits are the upstream's, less the key the relay reserves (`oc_request`): at most 15
metadata pairs, keys ≤ 64 characters, values ≤ 512 characters and strings only, instructions
≤ 32 768 characters. No text may hold a NUL character or a lone surrogate (`check_text`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from apps.realtime.sequencer import OC_REQUEST_KEY

MAX_INSTRUCTIONS_CHARS = 32_768
MAX_METADATA_PAIRS = 15
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512

InstructionsMode = Literal["append", "replace"]
Conversation = Literal["auto", "none"]


def check_text(text: str, what: str) -> str:
    """Refuse what the relay can neither store nor send on: a NUL character (PostgreSQL
    refuses it in text and JSON columns) and a lone surrogate, which JSON can spell
    (`"\\ud800"`) but UTF-8 cannot encode, so sending it upstream would end the session."""
    if "\x00" in text:
        raise ValueError(f"{what} contains a NUL character (\\u0000), which is not allowed")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{what} contains a lone surrogate (\\ud800-\\udfff), which is not valid Unicode"
            ) from None
    return text


class ResponseOverrides(BaseModel):
    """What an operator may set on one response. Every field is optional; unknown ones are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    instructions: Annotated[StrictStr, Field(max_length=MAX_INSTRUCTIONS_CHARS)] = Field(
        default=None,
        description=(
            "Instructions for this response only. With instructions_mode 'append' they follow "
            "the session's current instructions; with 'replace' they are sent alone."
        ),
        json_schema_extra={"maxLength": MAX_INSTRUCTIONS_CHARS},
    )
    instructions_mode: InstructionsMode = Field(
        default="append",
        description=(
            "'append' (default): the session's instructions as last seen, then these. "
            "'replace': these alone (the upstream's own meaning of per-response instructions)."
        ),
    )
    metadata: dict[StrictStr, StrictStr] = Field(
        default=None,
        description=(
            f"At most {MAX_METADATA_PAIRS} pairs; keys ≤ {MAX_METADATA_KEY_CHARS} characters, "
            f"values ≤ {MAX_METADATA_VALUE_CHARS} characters, strings only. "
            f"'{OC_REQUEST_KEY}' is reserved."
        ),
        json_schema_extra={
            "maxProperties": MAX_METADATA_PAIRS,
            "propertyNames": {"maxLength": MAX_METADATA_KEY_CHARS, "not": {"const": OC_REQUEST_KEY}},
            "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE_CHARS},
        },
    )
    conversation: Conversation = Field(
        default=None,
        description=(
            "'none' asks for an out-of-band response: nothing is written to the conversation, "
            "it may run beside the active response, and its events reach operators only."
        ),
    )

    @field_validator("instructions")
    @classmethod
    def _check_instructions(cls, instructions: str) -> str:
        return check_text(instructions, "instructions")

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, metadata: dict[str, str]) -> dict[str, str]:
        if len(metadata) > MAX_METADATA_PAIRS:
            raise ValueError(
                f"metadata has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS} are allowed "
                f"(the upstream allows 16 and the relay reserves '{OC_REQUEST_KEY}')"
            )
        for key, value in metadata.items():
            if key == OC_REQUEST_KEY:
                raise ValueError(f"the metadata key '{OC_REQUEST_KEY}' is reserved by the relay")
            if len(key) > MAX_METADATA_KEY_CHARS:
                raise ValueError(
                    f"metadata key '{key[:20]}…' has {len(key)} characters; "
                    f"at most {MAX_METADATA_KEY_CHARS} are allowed"
                )
            if len(value) > MAX_METADATA_VALUE_CHARS:
                raise ValueError(
                    f"metadata value of '{key}' has {len(value)} characters; "
                    f"at most {MAX_METADATA_VALUE_CHARS} are allowed"
                )
            check_text(key, "a metadata key")
            check_text(value, f"metadata value of '{key[:20]}'")
        return metadata


def effective_instructions(
    *, session_instructions: str, text: str | None, mode: str
) -> str | None:
    """What to send as the response's `instructions`, or None to send none.

    The upstream treats per-response instructions as a replacement of the session's, so
    `append` sends the session's instructions followed by the operator's text.
    """
    if text is None:
        return None
    if mode == "replace" or not session_instructions:
        return text
    if not text:
        return session_instructions
    return f"{session_instructions}\n\n{text}"


def upstream_response(
    *,
    metadata: Mapping[str, str] | None,
    conversation: str | None,
) -> dict[str, Any]:
    """The `response` object of a stored operator request, before instructions are composed."""
    response: dict[str, Any] = {}
    if metadata:
        response["metadata"] = dict(metadata)
    if conversation is not None:
        response["conversation"] = conversation
    return response
