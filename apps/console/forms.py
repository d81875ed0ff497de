"""The nudge form: a Django form for its fields and a formset for its metadata rows.

Fields (CONTRACT section 3): `instructions`, `instructions_mode` (append | replace; missing:
append), `conversation` (a checkbox, "out of band": ticked sends `none`, unticked `auto`),
`as_note` (add the instructions as a note, asking for no response). Metadata rows are a
formset with the prefix `metadata`: its management form (`metadata-TOTAL_FORMS`, …) and
`metadata-<row>-key` / `metadata-<row>-value`; a row with both empty is ignored, and a POST
with no metadata fields at all has no rows. Without JavaScript each row has a "Remove" checkbox
(`metadata-<row>-DELETE`, the formset's own): a row ticked is taken out before anything is
checked, so it is neither refused nor sent, and a page shown again does not show it.

Errors are named by the HTML name of the field they are beside (`instructions`,
`metadata-2-key`), `metadata` for the rows as a whole and `form` for the rest; the page shows
each beside its field, and the page's script gets the same names as JSON.

The limits are checked here so that each error names its field; the final check is
`ResponseOverrides`, the REST hook's own model, so the console and the hook cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from django import forms
from django.forms import BoundField, formset_factory
from django.forms.formsets import INITIAL_FORM_COUNT, TOTAL_FORM_COUNT
from django.http import QueryDict
from pydantic import ValidationError as PydanticError

from apps.realtime.events import text_problem
from apps.realtime.sequencer import OC_REQUEST_KEY
from apps.sessions.overrides import (
    MAX_INSTRUCTIONS_CHARS,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE_CHARS,
    ResponseOverrides,
)

PREFIX = "metadata"
# Rows beyond this many in one POST are not even read (a forged count); the row limit itself
# (MAX_METADATA_PAIRS filled rows) is checked on what was typed.
ABSOLUTE_MAX_ROWS = 100
NOTE_WITH_METADATA = "A note carries no metadata: clear the rows, or untick the note."
NOTE_OUT_OF_BAND = "A note goes into the conversation: untick out of band."


class RelayText(forms.CharField):
    """Text the relay can store and send: at most `limit` characters (CRLF counted as one, as
    the textarea shows it), no NUL, no lone surrogate. The messages say how far over it is."""

    def __init__(self, *, limit: int, too_long: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.limit, self.too_long = limit, too_long
        self.validators = []  # Django's NUL check is ours (`text_problem`), in our words

    def to_python(self, value):
        return super().to_python(value).replace("\r\n", "\n")

    def validate(self, value: str) -> None:
        super().validate(value)
        if len(value) > self.limit:
            raise forms.ValidationError(self.too_long.format(n=len(value), limit=self.limit), code="max_length")
        problem = text_problem(value)
        if problem is not None:
            raise forms.ValidationError(f"This text {problem}.", code="invalid_text")


class OutOfBand(forms.CheckboxInput):
    """The `conversation` field as one checkbox: ticked posts `none`. A script may post `auto`
    or `none` (or `on`, a checkbox without a value); anything else is refused by the field."""

    def __init__(self, attrs=None) -> None:
        super().__init__(attrs, check_test=lambda value: value == "none")

    def format_value(self, value) -> str:
        return "none"

    def value_from_datadict(self, data, files, name) -> str:
        value = data.get(name)
        if value in (None, ""):
            return "auto"
        return "none" if value == "on" else value

    def value_omitted_from_data(self, data, files, name) -> bool:
        return False  # unticked is a value: auto


class NudgeFields(forms.Form):
    instructions = RelayText(
        limit=MAX_INSTRUCTIONS_CHARS,
        too_long="{n} characters; at most {limit} are allowed.",
        required=False,
        label="Instructions for the next response",
        # No `maxlength`: the browser would cut a longer paste short, silently, and send that.
        # The page's script and the form refuse it instead, saying by how much it is over.
        widget=forms.Textarea(
            attrs={
                "rows": 4,
                "data-max-chars": MAX_INSTRUCTIONS_CHARS,
                "placeholder": "e.g. Offer the refund.",
                "aria-describedby": "err-instructions",
            }
        ),
    )
    instructions_mode = forms.ChoiceField(
        choices=[("append", "append (keep the persona)"), ("replace", "replace")],
        required=False,
        initial="append",
        widget=forms.RadioSelect,
        error_messages={"invalid_choice": "Choose append or replace."},
    )
    conversation = forms.ChoiceField(
        choices=[("auto", "in the conversation"), ("none", "out of band")],
        required=False,
        initial="auto",
        widget=OutOfBand,
        error_messages={"invalid_choice": "Choose auto or none."},
    )
    as_note = forms.BooleanField(required=False)

    def clean_instructions_mode(self) -> str:
        return self.cleaned_data["instructions_mode"] or "append"

    def clean_conversation(self) -> str:
        return self.cleaned_data["conversation"] or "auto"

    def clean(self) -> dict:
        cleaned = super().clean()
        if cleaned.get("as_note") and cleaned.get("instructions") == "":
            self.add_error("instructions", "Write the note's text.")
        return cleaned


class MetadataRow(forms.Form):
    key = RelayText(
        limit=MAX_METADATA_KEY_CHARS,
        too_long="{n} characters; a key has at most {limit}.",
        required=False,
        label="Key",
        widget=forms.TextInput(attrs={"placeholder": "key"}),
    )
    value = RelayText(
        limit=MAX_METADATA_VALUE_CHARS,
        too_long="{n} characters; a value has at most {limit}.",
        required=False,
        label="Value",
        widget=forms.TextInput(attrs={"placeholder": "value"}),
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name, field in self.fields.items():
            field.widget.attrs["aria-describedby"] = f"err-{self.add_prefix(name)}"

    def clean(self) -> dict:
        cleaned = super().clean()
        key = cleaned.get("key")
        if key == "" and cleaned.get("value"):
            self.add_error("key", "A value needs a key.")
        elif key == OC_REQUEST_KEY:
            self.add_error("key", f"'{OC_REQUEST_KEY}' is reserved by the relay.")
        return cleaned

    @property
    def is_blank(self) -> bool:
        return not self.has_changed()


class BaseMetadataRows(forms.BaseFormSet):
    default_error_messages = {
        **forms.BaseFormSet.default_error_messages,
        "too_many_forms": "At most %(num)d metadata rows.",
        "missing_management_form": (
            "The metadata rows came without their count (%(field_names)s); reload the page and try again."
        ),
    }

    def clean(self) -> None:
        seen: set[str] = set()
        filled = 0
        for row in self.forms:
            if row.is_blank:
                continue
            filled += 1
            key = row.cleaned_data.get("key")
            if key and key in seen and not row.has_error("key"):
                row.add_error("key", "This key is already used above.")
            seen.add(key)
        if filled > MAX_METADATA_PAIRS:
            raise forms.ValidationError(
                f"At most {MAX_METADATA_PAIRS} metadata rows; remove {filled - MAX_METADATA_PAIRS}.",
                code="too_many_rows",
            )

    def pairs(self) -> dict[str, str]:
        return {row.cleaned_data["key"]: row.cleaned_data["value"] for row in self.forms if not row.is_blank}


MetadataRows = formset_factory(
    MetadataRow,
    formset=BaseMetadataRows,
    extra=1,
    max_num=MAX_METADATA_PAIRS,
    absolute_max=ABSOLUTE_MAX_ROWS,
    can_delete=True,
)


@dataclass(frozen=True)
class Row:
    """One metadata row as the page shows it."""

    key: BoundField
    value: BoundField
    remove: BoundField
    key_error: str
    value_error: str


class Nudge:
    """The whole nudge form: its `form` (the fields) and its `metadata` rows, checked together.

    `Nudge()` is the empty form (one blank row); `Nudge(request.POST)` is what was posted;
    `Nudge.with_row_added(request.POST)` is what was posted, unchecked, with one more row.
    """

    def __init__(self, data: QueryDict | None = None) -> None:
        if data is not None and not any(name.startswith(f"{PREFIX}-") for name in data):
            data = data.copy()  # no metadata fields at all (a script's POST): no rows
            data.update({f"{PREFIX}-{TOTAL_FORM_COUNT}": "0", f"{PREFIX}-{INITIAL_FORM_COUNT}": "0"})
        elif data is not None:
            data = _without_removed_rows(data)
        self.form = NudgeFields(data, auto_id="%s")
        self.metadata = MetadataRows(data, prefix=PREFIX, auto_id="%s")
        self.overrides: ResponseOverrides | None = None
        self.checked = False

    @classmethod
    def with_row_added(cls, data: QueryDict) -> Nudge:
        """What was typed, with one more empty row (at most MAX_METADATA_PAIRS rows), not
        checked yet: the "Add a metadata row" button of a page without JavaScript."""
        posted = cls(data)
        nudge = cls()
        typed = {name: posted.form[name].data for name in posted.form.fields}
        nudge.form = NudgeFields(initial={k: v for k, v in typed.items() if v is not None}, auto_id="%s")
        rows = [{part: row[part].data for part in ("key", "value")} for row in posted.metadata]
        nudge.metadata = MetadataRows(initial=rows, prefix=PREFIX, auto_id="%s")
        nudge._focus(nudge.metadata.forms[-1].add_prefix("key"))  # the new row, as the script does
        return nudge

    # ------------------------------------------------------------------ checking

    def is_valid(self) -> bool:
        self.checked = True
        valid = self.form.is_valid() & self.metadata.is_valid()
        if valid and self.as_note:
            # A note is only its text: what it cannot carry is refused, not dropped.
            if self.metadata.pairs():
                self.refuse(PREFIX, NOTE_WITH_METADATA)
            if self.form.cleaned_data["conversation"] == "none":
                self.refuse("conversation", NOTE_OUT_OF_BAND)
            return not self.errors()
        if not valid:
            self._focus_first_error()
            return valid
        cleaned = self.form.cleaned_data
        given: dict = {"instructions_mode": cleaned["instructions_mode"]}
        if cleaned["instructions"]:
            given["instructions"] = cleaned["instructions"]
        if metadata := self.metadata.pairs():
            given["metadata"] = metadata
        if cleaned["conversation"] == "none":
            given["conversation"] = "none"
        try:
            self.overrides = ResponseOverrides.model_validate(given)
        except PydanticError as exc:  # the REST hook's check: what this form missed, if anything
            for error in exc.errors():
                self.refuse(str(error["loc"][0]) if error["loc"] else "form", _words(error["msg"]))
            return False
        return True

    def refuse(self, name: str, message: str) -> None:
        """Add an error beside the field `name` (`metadata`: the rows; `form`: the form)."""
        if name == PREFIX:
            self.metadata.non_form_errors().append(message)
        else:
            self.form.add_error(name if name in self.form.fields else None, message)
        self._focus_first_error()

    # Without JavaScript a refused form (or one with a row added) comes back at the page's top,
    # the field to fix perhaps a screen below on a phone: it gets `autofocus`, which puts the
    # focus there and scrolls it into view. (The page's script focuses the same field itself.)

    def _focus_first_error(self) -> None:
        errors = self.errors()
        rows = [row.add_prefix(part) for row in self.metadata.forms for part in ("key", "value")]
        aliases = {"form": "instructions", PREFIX: rows[-2] if rows else "instructions"}
        order = ["instructions", "instructions_mode", *rows, "conversation", "as_note"]
        named = {aliases.get(name, name) for name in errors}
        first = next((name for name in order if name in named), None)
        if first is not None:
            self._focus(first)

    def _focus(self, name: str) -> None:
        for row in self.metadata.forms:
            for field in ("key", "value"):
                row.fields[field].widget.attrs.pop("autofocus", None)
                if row.add_prefix(field) == name:
                    row.fields[field].widget.attrs["autofocus"] = True
        for field_name, field in self.form.fields.items():
            field.widget.attrs.pop("autofocus", None)
            if field_name == name:
                field.widget.attrs["autofocus"] = True

    @property
    def as_note(self) -> bool:
        return bool(self.form.cleaned_data.get("as_note"))

    @property
    def instructions(self) -> str:
        return self.form.cleaned_data.get("instructions", "")

    def errors(self) -> dict[str, str]:
        """Every error, named by the HTML name of its field (`form`, `metadata` as above)."""
        if not self.checked:
            return {}
        named: dict[str, str] = {}
        for name, messages in self.form.errors.items():
            named["form" if name == forms.forms.NON_FIELD_ERRORS else name] = " ".join(messages)
        for row in self.metadata.forms:
            for name, messages in row.errors.items():
                named["form" if name == forms.forms.NON_FIELD_ERRORS else row.add_prefix(name)] = " ".join(messages)
        if self.metadata.non_form_errors():
            named[PREFIX] = " ".join(self.metadata.non_form_errors())
        return named

    # ------------------------------------------------------------------ showing

    @property
    def error(self) -> dict[str, str]:
        """The errors of the fields outside the rows, for the template (`nudge.error.form`)."""
        return self.errors()

    @property
    def rows(self) -> list[Row]:
        errors = self.errors()
        return [
            Row(
                key=row["key"],
                value=row["value"],
                remove=row["DELETE"],
                key_error=errors.get(row.add_prefix("key"), ""),
                value_error=errors.get(row.add_prefix("value"), ""),
            )
            for row in self.metadata.forms
        ]

    @property
    def can_add_row(self) -> bool:
        return len(self.metadata.forms) < MAX_METADATA_PAIRS


def _without_removed_rows(data: QueryDict) -> QueryDict:
    """`data` without the rows ticked "Remove", the others renumbered from 0 as the page numbers
    them. When every row is removed one blank row stays, as the script leaves one."""
    try:
        total = min(int(data[f"{PREFIX}-{TOTAL_FORM_COUNT}"]), ABSOLUTE_MAX_ROWS)
        initial = int(data[f"{PREFIX}-{INITIAL_FORM_COUNT}"])
    except (KeyError, ValueError):
        return data  # the formset names what is wrong with its count
    ticked = forms.CheckboxInput().value_from_datadict
    removed = {row for row in range(total) if ticked(data, None, f"{PREFIX}-{row}-DELETE")}
    if not removed:
        return data
    kept = [row for row in range(total) if row not in removed]
    renumbered = data.copy()
    for row in range(total):
        for part in ("key", "value", "DELETE"):
            renumbered.pop(f"{PREFIX}-{row}-{part}", None)
    for new, old in enumerate(kept):
        for part in ("key", "value"):
            if f"{PREFIX}-{old}-{part}" in data:
                renumbered.setlist(f"{PREFIX}-{new}-{part}", data.getlist(f"{PREFIX}-{old}-{part}"))
    renumbered[f"{PREFIX}-{TOTAL_FORM_COUNT}"] = str(max(len(kept), 1))
    renumbered[f"{PREFIX}-{INITIAL_FORM_COUNT}"] = str(min(initial, len(kept)))
    return renumbered


def _words(message: str) -> str:
    """Pydantic's message without its "Value error, " prefix."""
    return message.removeprefix("Value error, ")
