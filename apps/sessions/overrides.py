"""Per-response overrides an operator may ask for: the input rules of the REST hook and the
console, which both validate with `ResponseOverrides` before `response_request_submit`.

Limits are the upstream's, less the key the relay reserves (`oc_request`): at most 15
metadata pairs, keys ≤ 64 characters, values ≤ 512 characters and strings only, instructions
≤ 32 768 characters. No text may hold a NUL character or a lone surrogate (`check_text`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from apps.realtime.events import text_problem
from apps.realtime.sequencer import OC_REQUEST_KEY

MAX_INSTRUCTIONS_CHARS = 32_768
MAX_METADATA_PAIRS = 15
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512

InstructionsMode = Literal["append", "replace"]
Conversation = Literal["auto", "none"]


def check_text(text: str, what: str) -> str:
    """Refuse what the relay can neither store nor send on (`events.text_problem`)."""
    problem = text_problem(text)
    if problem is not None:
        raise ValueError(f"{what} {problem}")
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
