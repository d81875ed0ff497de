"""The nudge form: parse and check the POSTed fields, naming each error by the field it is beside.

Fields: `instructions`, `instructions_mode` (append | replace), `conversation` (auto | none),
`as_note` (add the instructions as a note, asking for no response), and metadata rows as
repeated `metadata_key` / `metadata_value` pairs (a row with both empty is ignored).
Errors are keyed `instructions`, `metadata`, `metadata_key_<row>`, `metadata_value_<row>`.
The same limits as the REST hook's are checked again by `ResponseOverrides`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.http import QueryDict
from pydantic import ValidationError

from apps.realtime.sequencer import OC_REQUEST_KEY
from apps.sessions.overrides import (
    MAX_INSTRUCTIONS_CHARS,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE_CHARS,
    ResponseOverrides,
)


@dataclass
class Nudge:
    instructions: str = ""
    instructions_mode: str = "append"
    conversation: str = "auto"
    as_note: bool = False
    rows: list[tuple[str, str]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    overrides: ResponseOverrides | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


def parse_nudge(data: QueryDict) -> Nudge:
    nudge = Nudge(
        instructions=data.get("instructions", "").replace("\r\n", "\n").strip(),
        instructions_mode=data.get("instructions_mode") or "append",
        conversation="none" if data.get("conversation") in ("none", "on") else "auto",
        as_note=data.get("as_note") in ("on", "true", "1"),
    )
    keys, values = data.getlist("metadata_key"), data.getlist("metadata_value")
    for row, (key, value) in enumerate(zip(keys, values, strict=False)):
        key, value = key.strip(), value.strip()
        if key or value:
            nudge.rows.append((key, value))
            _check_row(nudge, row, key, value)
    errors = nudge.errors
    if len(nudge.rows) > MAX_METADATA_PAIRS:
        errors["metadata"] = f"At most {MAX_METADATA_PAIRS} metadata rows; remove {len(nudge.rows) - MAX_METADATA_PAIRS}."
    if len(nudge.instructions) > MAX_INSTRUCTIONS_CHARS:
        errors["instructions"] = (
            f"{len(nudge.instructions)} characters; at most {MAX_INSTRUCTIONS_CHARS} are allowed."
        )
    if nudge.instructions_mode not in ("append", "replace"):
        errors["instructions_mode"] = "Choose append or replace."
    if nudge.as_note and not nudge.instructions:
        errors["instructions"] = "Write the note's text."
    if errors or nudge.as_note:
        return nudge
    fields: dict = {"instructions_mode": nudge.instructions_mode}
    if nudge.instructions:
        fields["instructions"] = nudge.instructions
    if nudge.rows:
        fields["metadata"] = dict(nudge.rows)
    if nudge.conversation == "none":
        fields["conversation"] = "none"
    try:
        nudge.overrides = ResponseOverrides.model_validate(fields)
    except ValidationError as exc:  # the same limits, checked by the model the REST hook uses
        for error in exc.errors():
            errors[str(error["loc"][0]) if error["loc"] else "form"] = error["msg"]
    return nudge


def _check_row(nudge: Nudge, row: int, key: str, value: str) -> None:
    if not key:
        nudge.errors[f"metadata_key_{row}"] = "A value needs a key."
    elif len(key) > MAX_METADATA_KEY_CHARS:
        nudge.errors[f"metadata_key_{row}"] = (
            f"{len(key)} characters; a key has at most {MAX_METADATA_KEY_CHARS}."
        )
    elif key == OC_REQUEST_KEY:
        nudge.errors[f"metadata_key_{row}"] = f"'{OC_REQUEST_KEY}' is reserved by the relay."
    elif key in dict(nudge.rows[:-1]):
        nudge.errors[f"metadata_key_{row}"] = "This key is already used above."
    if len(value) > MAX_METADATA_VALUE_CHARS:
        nudge.errors[f"metadata_value_{row}"] = (
            f"{len(value)} characters; a value has at most {MAX_METADATA_VALUE_CHARS}."
        )
