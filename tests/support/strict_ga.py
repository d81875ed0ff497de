"""A strict reading of the Realtime GA protocol for what the project sends upstream, built from
the `openai` SDK's request types (`RealtimeClientEventParam` and the calls REST's params).

Stricter than the SDK, which lets a caller send anything: every object is a `TypedDict` of the
SDK's and may hold only its keys (at any depth), each key it marks `Required` is present, a
null passes only where the type is `Optional`, a `Literal` is one of its values, a number is
not a boolean, a list is a list. A union passes when any of its variants does. Beside the
types, the limits the service documents: metadata ≤ 16 pairs, keys ≤ 64 characters, values
≤ 512; a client's item id ≤ 32 characters; and, as the service reads `session.update`, no
`model` in it (a session's model is fixed when it opens: "update any field except for `voice`
and `model`", `SessionUpdateEventParam`'s docstring).

`problems(event)` lists what a strict server would refuse in one client event, each naming
the parameter as the service does (`response.metadata.oc_request`, `session.include`)."""

from __future__ import annotations

import collections.abc
import functools
import types
import typing
from typing import Any

import typing_extensions
from openai._utils._transform import PropertyInfo
from openai.types.realtime import RealtimeClientEventParam
from openai.types.realtime.call_refer_params import CallReferParams
from openai.types.realtime.call_reject_params import CallRejectParams
from openai.types.realtime.realtime_session_create_request_param import (
    RealtimeSessionCreateRequestParam,
)

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_ITEM_ID_CHARS = 32
_LISTS = {list, collections.abc.Sequence, collections.abc.Iterable, collections.abc.MutableSequence}
_MAPS = {dict, collections.abc.Mapping, collections.abc.MutableMapping}


@functools.cache
def _fields(typed_dict: type) -> tuple[dict[str, Any], frozenset[str]]:
    """A TypedDict's keys as they go on the wire (an `alias` applied) with their annotations,
    and the ones it marks `Required`."""
    hints = typing_extensions.get_type_hints(typed_dict, include_extras=True)
    fields: dict[str, Any] = {}
    required = set()
    for name, hint in hints.items():
        key = name
        if typing.get_origin(hint) is typing.Annotated:
            for meta in hint.__metadata__:
                if isinstance(meta, PropertyInfo) and meta.alias:
                    key = meta.alias
            hint = typing.get_args(hint)[0]
        if typing.get_origin(hint) is typing.Required:
            required.add(key)
            hint = typing.get_args(hint)[0]
        elif typing.get_origin(hint) is typing.NotRequired:
            hint = typing.get_args(hint)[0]
        fields[key] = hint
    return fields, frozenset(required)


def _is_typed_dict(annotation: object) -> bool:
    return isinstance(annotation, type) and typing_extensions.is_typeddict(annotation)


def _tags_matched(value: Any, annotation: Any) -> int:
    """How many of a TypedDict's tags (`type`, `role`: `Literal` keys) `value` holds."""
    if not _is_typed_dict(annotation) or not isinstance(value, dict):
        return 0
    fields, _ = _fields(annotation)
    matched = 0
    for key in ("type", "role"):
        hint = fields.get(key)
        if typing.get_origin(hint) in (typing.Literal, typing_extensions.Literal):
            matched += value.get(key) in typing.get_args(hint)
    return matched


def check(value: Any, annotation: Any, path: str) -> list[str]:
    """What of `value` a strict server refuses, read as `annotation`; [] if nothing."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return check(value, typing.get_args(annotation)[0], path)
    if annotation is Any or annotation is object:
        return []
    if origin is typing.Union or origin is types.UnionType:
        variants = typing.get_args(annotation)
        if value is None:
            return [] if type(None) in variants else [f"{path}: null is not allowed"]
        found: list[tuple[int, list[str]]] = []
        for variant in variants:
            if variant is type(None):
                continue
            problems = check(value, variant, path)
            if not problems:
                return []
            found.append((-_tags_matched(value, variant), problems))
        # The variant the value's `type` (and `role`) names says best what is wrong.
        return min(found, key=lambda pair: (pair[0], len(pair[1])))[1]
    if value is None:
        return [f"{path}: null is not allowed"]
    if origin in (typing.Literal, typing_extensions.Literal):
        choices = typing.get_args(annotation)
        if any(value == c and type(value) is type(c) for c in choices):
            return []
        return [f"{path}: {value!r} is none of {choices!r}"]
    if _is_typed_dict(annotation):
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        fields, required = _fields(annotation)
        problems = [f"{path}.{key}: unknown parameter" for key in value if key not in fields]
        problems += [f"{path}.{key}: missing" for key in sorted(required) if key not in value]
        for key, item in value.items():
            if key in fields:
                problems += check(item, fields[key], f"{path}.{key}")
        return problems
    if origin in _LISTS or getattr(origin, "__name__", "") == "SequenceNotStr":
        if not isinstance(value, list):
            return [f"{path}: expected an array, got {type(value).__name__}"]
        (member,) = typing.get_args(annotation)
        return [p for i, item in enumerate(value) for p in check(item, member, f"{path}[{i}]")]
    if origin in _MAPS or annotation is dict:
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        args = typing.get_args(annotation) or (str, Any)
        return [p for k, v in value.items() for p in check(v, args[1], f"{path}.{k}")]
    if annotation is bool:
        return [] if isinstance(value, bool) else [f"{path}: expected a boolean"]
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected an integer"]
    if annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected a number"]
    if annotation is str:
        return [] if isinstance(value, str) else [f"{path}: expected a string"]
    return [f"{path}: the checker does not know the type {annotation!r}"]


def _metadata_problems(metadata: Any, path: str) -> list[str]:
    if not isinstance(metadata, dict):
        return []
    problems = []
    if len(metadata) > MAX_METADATA_PAIRS:
        problems.append(f"{path}: {len(metadata)} pairs, over {MAX_METADATA_PAIRS}")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY_CHARS:
            problems.append(f"{path}: key {key!r} over {MAX_METADATA_KEY_CHARS} characters")
        if isinstance(value, str) and len(value) > MAX_METADATA_VALUE_CHARS:
            problems.append(f"{path}.{key}: over {MAX_METADATA_VALUE_CHARS} characters")
    return problems


def _item_id_problems(item: Any, path: str) -> list[str]:
    item_id = item.get("id") if isinstance(item, dict) else None
    if isinstance(item_id, str) and len(item_id) > MAX_ITEM_ID_CHARS:
        return [f"{path}.id: {len(item_id)} characters, over {MAX_ITEM_ID_CHARS}"]
    return []


def problems(event: Any) -> list[str]:
    """What a strict GA server refuses in one client event."""
    found = check(event, RealtimeClientEventParam, "event")
    if not isinstance(event, dict):
        return found
    kind = event.get("type")
    session = event.get("session")
    if kind == "session.update" and isinstance(session, dict) and "model" in session:
        found.append("event.session.model: a session's model cannot be updated")
    if kind == "response.create" and isinstance(event.get("response"), dict):
        found += _metadata_problems(event["response"].get("metadata"), "event.response.metadata")
        for index, item in enumerate(event["response"].get("input") or []):
            found += _item_id_problems(item, f"event.response.input[{index}]")
    if kind == "conversation.item.create":
        found += _item_id_problems(event.get("item"), "event.item")
    return found


def session_problems(session: Any) -> list[str]:
    """A session configuration as the calls REST takes it (`accept`'s body)."""
    return check(session, RealtimeSessionCreateRequestParam, "session")


def call_body_problems(action: str, body: Any) -> list[str]:
    """The JSON body of `POST /realtime/calls/{id}/{action}`, as the SDK's methods send it."""
    if action == "accept":
        return session_problems(body)
    if action == "reject":
        return check(body, CallRejectParams, "body")
    if action == "refer":
        return check(body, CallReferParams, "body")
    if action == "hangup":
        return [] if body in (None, {}) else [f"body: hangup takes no parameters, got {body!r}"]
    return [f"{action}: not a calls action"]
