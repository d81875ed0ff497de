"""The GA protocol's shape of a session, a response and a conversation item, read from the
official SDK. Pure.

The service refuses a `session.update` whose session names a key the GA shape does not have
(`unknown_parameter`, "Unknown parameter: 'session.temperature'.") and applies nothing of it;
likewise a `response.create`. The shapes are not listed by hand here: they are the `openai`
package's request types (`RealtimeSessionCreateRequestParam`,
`RealtimeResponseCreateParamsParam`), which are generated from the service's API description,
so a new field is known as soon as the SDK knows it.

Checked: every object the types describe as a `TypedDict` — the top level, `audio`,
`audio.input`/`audio.output`, `format`, `turn_detection` (by its `type`: `server_vad` or
`semantic_vad`), `noise_reduction`, `transcription`, `reasoning`, `tracing`, `prompt`,
`tools[i]` (by `type`), `tool_choice`. A union whose variant cannot be told (no `type`, or
several variants with it and no `role` to tell them) is checked against all its variants'
keys together, not deeper. Free-form values (`metadata`, a tool's `parameters`,
`prompt.variables`) and a response's `input` items are not checked here.
`mistyped_session_parameter` walks the same shapes for a value of a JSON type the shape does
not allow (`tools: "x"`), as the service refuses it (`invalid_type`) where a key is minted and
in a `session.update`; `mistyped_response_parameter` likewise for a `response.create`.

A `conversation.item.create`'s item is read the same way, from `ConversationItemParam`: its
variant is told by `type`, a message's by `role` (system, user and assistant messages each
take their own content part types). `unknown_item_parameter`, `mistyped_item_parameter`,
`unsupported_item_value` (a part's `type` the role does not take) and `missing_item_parameter`
(a key the variant marks `Required`) each name the first offending parameter.

The session object the service announces (`session.created`/`session.updated`) holds keys an
update does not take (`id`, `object`, `expires_at`; a client secret's session also
`client_secret`): `updatable_session` is what of such an object can be sent back.
"""

from __future__ import annotations

import collections.abc
import copy
import functools
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any

import typing_extensions
from openai.types.realtime.conversation_item_param import ConversationItemParam
from openai.types.realtime.realtime_response_create_params_param import (
    RealtimeResponseCreateParamsParam,
)
from openai.types.realtime.realtime_session_create_request_param import (
    RealtimeSessionCreateRequestParam,
)

from apps.realtime.events import json_type

SESSION_TYPE = "realtime"


@functools.cache
def _hints(typed_dict: type) -> dict[str, Any]:
    return typing.get_type_hints(typed_dict)


SESSION_KEYS = frozenset(_hints(RealtimeSessionCreateRequestParam))
RESPONSE_KEYS = frozenset(_hints(RealtimeResponseCreateParamsParam))


def _is_typed_dict(annotation: object) -> bool:
    # The SDK's TypedDicts are typing_extensions': `typing.is_typeddict` does not know them.
    return isinstance(annotation, type) and typing_extensions.is_typeddict(annotation)


def _variants(annotation: object) -> list[Any]:
    """The members of a union (an Optional's None left out), or the annotation alone."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _tag(typed_dict: type, key: str = "type") -> tuple[str, ...]:
    """The values a TypedDict's `key` may hold (a `Literal`), else ()."""
    annotation = _hints(typed_dict).get(key)
    if typing.get_origin(annotation) in (typing.Literal, typing_extensions.Literal):
        return tuple(v for v in typing.get_args(annotation) if isinstance(v, str))
    return ()


def _object_shape(annotation: object, value: Mapping[str, Any]) -> tuple[frozenset[str], Any]:
    """For an object `value` of `annotation`: the keys it may have, and the TypedDict to look
    deeper with (None when the variant is not known). Empty keys: not an object type."""
    candidates = [v for v in _variants(annotation) if _is_typed_dict(v)]
    if not candidates:
        return frozenset(), None
    tagged = [c for c in candidates if value.get("type") in _tag(c)]
    if len(tagged) > 1:  # the messages of a conversation item share a `type`: told by `role`
        tagged = [c for c in tagged if value.get("role") in _tag(c, "role")] or tagged
    if len(tagged) == 1:
        return frozenset(_hints(tagged[0])), tagged[0]
    if len(candidates) == 1:
        return frozenset(_hints(candidates[0])), candidates[0]
    return frozenset().union(*(_hints(c) for c in tagged or candidates)), None


def _unknown_in(value: object, annotation: object, path: str) -> str | None:
    if isinstance(value, Mapping):
        keys, _ = _object_shape(annotation, value)
        if not keys:
            return None
        for key in value:
            if key not in keys:
                return f"{path}.{key}"
    for item, member, where in _inside(value, annotation, path):
        if (found := _unknown_in(item, member, where)) is not None:
            return found
    return None


def unknown_session_parameter(session: Mapping[str, Any]) -> str | None:
    """The first key of a `session.update`'s session the GA shape does not have, as the
    service names it (`session.temperature`, `session.audio.input.foo`); None if all are known.
    """
    return _unknown_in(session, RealtimeSessionCreateRequestParam, "session")


def mistyped_session_parameter(
    session: Mapping[str, Any], *, null_allowed: bool = False
) -> tuple[str, tuple[str, ...], Any] | None:
    """The first value of a session whose JSON type the GA shape does not allow, as (param,
    the JSON types it allows, the value): `("session.tools", ("array",), "x")`; None if every
    typed value fits. Free-form values (`metadata`, a tool's `parameters`) are not judged, nor
    which string of a `Literal` it is (that is a value, not a type). With `null_allowed`, a
    null passes anywhere: the service announces settings as null (`audio.input.transcription`,
    `noise_reduction`) that the SDK's request types do not let be null, and takes them back."""
    return _mistyped_in(session, RealtimeSessionCreateRequestParam, "session", null_allowed)


def expected_types(allowed: tuple[str, ...]) -> str:
    """The JSON types a `mistyped_*` answer allows, as the service names them in its
    `invalid_type` message: "an array", "a string or null"."""
    return " or ".join(
        kind if kind == "null" else f"{'an' if kind[0] in 'aio' else 'a'} {kind}" for kind in allowed
    )


def mistyped_response_parameter(
    response: Mapping[str, Any],
) -> tuple[str, tuple[str, ...], Any] | None:
    """The same for a `response.create`'s response (a null passes: an unset field); its
    `input` items are left to the item checks."""
    checked = {key: value for key, value in response.items() if key != "input"}
    return _mistyped_in(checked, RealtimeResponseCreateParamsParam, "response", True)


def unsupported_session_value(
    session: Mapping[str, Any],
) -> tuple[str, tuple[Any, ...], Any] | None:
    """The first value of a session that the GA shape takes from a fixed set only (a
    `Literal`: each of `session.output_modalities` is "text" or "audio"; an object's `type`
    tag: `session.audio.input.format.type`) and that is none of them, as (param, the values
    allowed, the value); None if each is one of its choices. A value of a JSON type the shape
    does not allow is `mistyped_session_parameter`'s: ask that first."""
    return _unsupported_in(session, RealtimeSessionCreateRequestParam, "session")


def unknown_response_parameter(response: Mapping[str, Any]) -> str | None:
    """The same for a `response.create`'s response (`response.modalities`); its `input`
    items are left to the item checks."""
    checked = {key: value for key, value in response.items() if key != "input"}
    return _unknown_in(checked, RealtimeResponseCreateParamsParam, "response")


# The `type`s of the items a client may create.
ITEM_TYPES = frozenset(
    tag for variant in _variants(ConversationItemParam) for tag in _tag(variant)
)


def unknown_item_parameter(item: Mapping[str, Any]) -> str | None:
    """The first key of a `conversation.item.create`'s item that its variant of the SDK's
    `ConversationItemParam` (told by `type`, a message by `role`) does not have, as the
    service names it (`item.foo`, `item.content[0].foo`); None if all are known."""
    return _unknown_in(item, ConversationItemParam, "item")


def mistyped_item_parameter(item: Mapping[str, Any]) -> tuple[str, tuple[str, ...], Any] | None:
    """`mistyped_session_parameter` for an item (a null passes: an unset field)."""
    return _mistyped_in(item, ConversationItemParam, "item", True)


def unsupported_item_value(item: Mapping[str, Any]) -> tuple[str, tuple[Any, ...], Any] | None:
    """`unsupported_session_value` for an item: a content part's `type` that its message's
    role does not take (`("item.content[0].type", ("input_text",), "output_text")` for a
    system message), a `status` or `object` the type does not list."""
    return _unsupported_in(item, ConversationItemParam, "item")


def missing_item_parameter(item: Mapping[str, Any]) -> str | None:
    """The first key the item's variant marks `Required` that it lacks or holds as null
    (`item.call_id` of a `function_call_output`); None if it has them all."""
    return _missing_in(item, ConversationItemParam, "item")


def updatable_session(session: Mapping[str, Any]) -> dict[str, Any]:
    """What of a session object the service announced (or a minted key's configuration) a
    `session.update` may send: the keys of the GA shape (nested objects pruned the same way),
    with `type` set. A copy: the given object is left as it was.

    Left out besides: `model`, which an update may not name (the session's model is fixed
    when it opens: "any field except for `voice` and `model`", `SessionUpdateEventParam`), and
    every null the shape does not allow. The service announces settings that are off as null
    (`include`, `audio.input.transcription`, `audio.input.noise_reduction`) where its request
    types take no null; left out, a session keeps them off, which is their default. A null the
    shape allows (`audio.input.turn_detection`, `tracing`, `prompt`) is kept: there it says
    "off" to a session whose default is on."""
    pruned = _pruned(session, RealtimeSessionCreateRequestParam)
    pruned.pop("model", None)
    pruned["type"] = SESSION_TYPE
    return pruned


_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}
_ARRAYS = (list, collections.abc.Sequence, collections.abc.Iterable)
# The order the allowed types are named in.
JSON_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")


def _allowed(annotation: object) -> tuple[str, ...] | None:
    """The JSON types a value of `annotation` may have, in JSON_TYPES order; None when the
    annotation says nothing checkable (`object`, a type this does not know)."""
    origin = typing.get_origin(annotation)
    union = origin is typing.Union or origin is types.UnionType
    kinds: set[str] = set()
    for member in typing.get_args(annotation) if union else (annotation,):
        origin = typing.get_origin(member)
        if member is type(None):
            kinds.add("null")
        elif _is_typed_dict(member) or member is dict or origin in (dict, collections.abc.Mapping):
            kinds.add("object")
        elif origin in _ARRAYS:
            kinds.add("array")
        elif origin in (typing.Literal, typing_extensions.Literal):
            kinds.update(json_type(value) for value in typing.get_args(member))
        elif member in _SCALARS:
            kinds.add(_SCALARS[member])
        else:
            return None
    if "number" in kinds:
        kinds.add("integer")  # a whole number is a number
    return tuple(kind for kind in JSON_TYPES if kind in kinds)


def _mistyped_in(
    value: Any, annotation: object, path: str, null_allowed: bool = False
) -> tuple[str, tuple[str, ...], Any] | None:
    allowed = _allowed(annotation)
    if allowed is None or (value is None and null_allowed):
        return None
    if json_type(value) not in allowed:
        return path, allowed, value
    for item, member, where in _inside(value, annotation, path):
        if found := _mistyped_in(item, member, where, null_allowed):
            return found
    return None


@functools.cache
def _required(typed_dict: type) -> tuple[str, ...]:
    """The keys a TypedDict marks `Required`, in its order. (Its `__required_keys__` does
    not know them: the SDK's modules postpone their annotations.)"""
    hints = typing_extensions.get_type_hints(typed_dict, include_extras=True)
    return tuple(key for key, hint in hints.items() if typing.get_origin(hint) is typing.Required)


def _missing_in(value: Any, annotation: object, path: str) -> str | None:
    if isinstance(value, Mapping):
        _, typed_dict = _object_shape(annotation, value)
        if typed_dict is None:
            return None
        for key in _required(typed_dict):
            if value.get(key) is None:
                return f"{path}.{key}"
    for item, member, where in _inside(value, annotation, path):
        if found := _missing_in(item, member, where):
            return found
    return None


def _inside(value: Any, annotation: object, path: str) -> Iterator[tuple[Any, Any, str]]:
    """The values inside `value` whose annotation is known, each with it and its path: an
    object's keys (when its variant can be told), a list's items."""
    if isinstance(value, Mapping):
        _, typed_dict = _object_shape(annotation, value)
        hints = _hints(typed_dict) if typed_dict is not None else {}
        for key, item in value.items():
            if key in hints:
                yield item, hints[key], f"{path}.{key}"
    elif isinstance(value, list):
        yield from _items(value, annotation, path)


def _items(value: list, annotation: object, path: str) -> Iterator[tuple[Any, Any, str]]:
    """Each item of a list, with the annotation of an item and its path; none when no
    variant of `annotation` is an array."""
    for variant in _variants(annotation):
        if typing.get_origin(variant) in _ARRAYS:
            (member,) = typing.get_args(variant)
            for index, item in enumerate(value):
                yield item, member, f"{path}[{index}]"
            return


def _choices(annotation: object, value: Any) -> tuple[Any, ...] | None:
    """The values of `value`'s JSON type that `annotation` allows when it allows only some
    (its `Literal`s); None when any value of that type will do, or none (a wrong type)."""
    kind = json_type(value)
    choices: list[Any] = []
    for member in _variants(annotation):
        if typing.get_origin(member) in (typing.Literal, typing_extensions.Literal):
            choices += [choice for choice in typing.get_args(member) if json_type(choice) == kind]
        elif _SCALARS.get(member) == kind or (member is float and kind == "integer"):
            return None
    return tuple(choices) or None


def _unsupported_in(
    value: Any, annotation: object, path: str
) -> tuple[str, tuple[Any, ...], Any] | None:
    if isinstance(value, Mapping):
        _, typed_dict = _object_shape(annotation, value)
        if typed_dict is None:  # no variant, or several, has this `type`: is it any's?
            tags = tuple(tag for v in _variants(annotation) if _is_typed_dict(v) for tag in _tag(v))
            kind = value.get("type")
            if tags and isinstance(kind, str) and kind not in tags:
                return f"{path}.type", tags, kind
            return None
    elif not isinstance(value, list):
        choices = _choices(annotation, value)
        return (path, choices, value) if choices is not None and value not in choices else None
    for item, member, where in _inside(value, annotation, path):
        if found := _unsupported_in(item, member, where):
            return found
    return None


def _null_refused(annotation: object) -> bool:
    """Whether the shape says what a value of `annotation` may be, and null is not one."""
    allowed = _allowed(annotation)
    return allowed is not None and "null" not in allowed


def _pruned(value: Any, annotation: object) -> Any:
    if isinstance(value, Mapping):
        keys, typed_dict = _object_shape(annotation, value)
        if not keys:
            return copy.deepcopy(dict(value))
        hints = _hints(typed_dict) if typed_dict is not None else {}
        return {
            key: _pruned(item, hints.get(key))
            for key, item in value.items()
            if key in keys and not (item is None and _null_refused(hints.get(key)))
        }
    if isinstance(value, list):
        for annotation_variant in _variants(annotation):
            if typing.get_origin(annotation_variant) in (list, collections.abc.Sequence):
                (member,) = typing.get_args(annotation_variant)
                return [_pruned(item, member) for item in value]
    return copy.deepcopy(value)
