"""The protocol's current shape, as the service holds clients to it. No Django.

The beta shape is switched off. The service answers it with an `error` event, then closes the
WebSocket with code 4000 and the reason `invalid_request_error.beta_api_shape_disabled`::

    {"type": "error", "event_id": "...", "error": {"type": "invalid_request_error",
     "code": "beta_api_shape_disabled", "message": "The Realtime Beta API is no longer
     supported. Please use /v1/realtime for the GA API.", "param": null, "event_id": <the
     client event's id, or null>}}

It does so for a handshake with the header `OpenAI-Beta: realtime=v1` (or the browser
subprotocol `openai-beta.realtime-v1`), as many of the service's users report: the WebSocket
opens, the error comes first (no `session.created`), then the close.

A beta-shaped *event* is not refused that way: the service answers it as any invalid event of
the GA shape, with an `error` and the session going on (TanStack/ai issue #586, 2026-05-19, and
PR #699; the simulator follows). Nothing of a refused `session.update` is applied:
- a `session` without `type`: `missing_required_parameter`, param `session.type` (also when
  its other keys are beta-named: `voice`, `modalities`, ...);
- a key the GA session shape does not have (`temperature`, `modalities`, and the read-only
  `id`, `object`, `expires_at` the service itself announces in `session.created`; no report
  says it takes them back): `unknown_parameter`, "Unknown parameter: 'session.temperature'.";
  nested objects too (`session.audio.input.turn_detection.eagerness` with `server_vad`,
  `session.tools[2].meta` as livekit/agents issue #3398 shows). The shape is the official
  SDK's type, read by `apps.realtime.ga`;
- likewise a `response.create` whose `response` has a key outside the GA response shape
  (`response.modalities`);
- a value of a JSON type the shape does not allow (`session.tools: "x"`,
  `response.output_modalities: "text"`): `invalid_type`, "Invalid type for 'session.tools':
  expected an array, but got string instead.". A null passes (the service announces some
  settings as null and takes them back).

A `conversation.item.create`'s item is checked against its variant of the SDK's
`ConversationItemParam` (`ga`), after the session has checked its `type`, a message's `role`
and that `content` is an array; nothing of a refused item is added:
- a key the variant lacks: `unknown_parameter`, "Unknown parameter: 'item.foo'." (also
  `item.content[0].foo`). `object` and `status` are the variants' own ("Optional when creating
  a new item", "Has no effect on the conversation": SDK docstrings; the beta reference said
  they "are accepted for consistency with the conversation.item.created event"): they pass;
- a value of a JSON type the variant does not allow: `invalid_type`, as for a session;
- a content part whose `type` the role does not take (system: `input_text`; user:
  `input_text`, `input_audio`, `input_image`; assistant: `output_text`, `output_audio`), or a
  `status`/`object`/`detail` outside its choices: `invalid_value` with param
  `item.content[0].type`, "Invalid value: 'text'. Supported values are: 'input_text',
  'input_audio', and 'input_image'.", and for a single choice "Invalid value: 'output_text'.
  Value must be 'input_text'." (the wording users report of the service for `text` in a user
  message and `input_text` in an assistant one, OpenAI community thread 1068134, beta-era;
  the GA lists are the SDK's, the serial comma as in the service's other lists: assumed);
- a key the variant marks `Required` missing or null (`item.call_id` of a
  `function_call_output`, `item.id` of an `mcp_approval_response`: the SDK's, assumed):
  `missing_required_parameter`, "Missing required parameter: 'item.call_id'.";
- an assistant content part without `text`, as an `output_audio` part with only its
  transcript: "Missing required parameter: 'item.content[0].text'." (openai-agents-js issue
  #963, 2026-02; the service cannot create assistant audio, PRs #1175 and #1665 there).

Current fields, checked as the service checks them (errors name the parameter):
`reasoning` (`{"effort": "minimal"|"low"|"medium"|"high"|"xhigh"}`) and `parallel_tool_calls`
(a boolean), in `session.update` and in `response.create`. They are accepted for every model
(the service documents them for reasoning models such as `gpt-realtime-2`; the simulator does
not refuse them elsewhere). The audio settings the simulator acts on, where they are given: a
format is an object, of `type` `audio/pcm` (`rate` 24000), `audio/pcmu` or `audio/pcma`, and
turn detection's `type` is `server_vad` or `semantic_vad` (as for `reasoning.effort`, the
error lists the supported values).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from apps.realtime import ga
from apps.realtime.audio import FORMAT_RATES
from apps.realtime.events import error_event
from apps.simulator.wire import Rejected, dumps, new_event_id

BETA_CODE = "beta_api_shape_disabled"
BETA_MESSAGE = (
    "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
)
BETA_CLOSE_CODE = 4000
BETA_CLOSE_REASON = "invalid_request_error.beta_api_shape_disabled"
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
REASONING_EFFORTS = ("minimal", "low", "medium", "high", "xhigh")
TURN_DETECTION_TYPES = ("server_vad", "semantic_vad")


def beta_handshake(headers: Any) -> bool:
    """Whether a handshake's headers ask for the beta shape."""
    beta = ",".join(headers.get_all("OpenAI-Beta"))
    if any(part.strip().lower() == "realtime=v1" for part in beta.split(",")):
        return True
    offered = ",".join(headers.get_all("Sec-WebSocket-Protocol"))
    return BETA_SUBPROTOCOL in (part.strip() for part in offered.split(","))


def check_session_update(update: Mapping[str, Any]) -> None:
    """A `session.update`'s session, refused as the service refuses it (module docstring)."""
    session_type = update.get("type")
    if session_type is None:
        raise Rejected.missing_parameter("session.type")
    if session_type != ga.SESSION_TYPE:
        shown = session_type if isinstance(session_type, str) else dumps(session_type)
        raise Rejected(
            "invalid_value",
            f"Invalid value: '{shown}'. Supported values are: 'realtime'.",
            "session.type",
        )
    check_known_keys(ga.unknown_session_parameter(update))
    check_current_fields(update, "session")
    check_types(ga.mistyped_session_parameter(update, null_allowed=True))
    check_audio(update, "session")


def check_response_params(params: Mapping[str, Any]) -> None:
    """The keys and current fields of a `response.create`'s response."""
    check_known_keys(ga.unknown_response_parameter(params))
    check_current_fields(params, "response")
    check_types(ga.mistyped_response_parameter(params))
    check_audio(params, "response")


def check_item(item: Mapping[str, Any]) -> None:
    """A `conversation.item.create`'s item, refused as the service refuses it (module
    docstring); its `type`, a message's `role` and `content` array are checked before."""
    check_known_keys(ga.unknown_item_parameter(item))
    check_types(ga.mistyped_item_parameter(item))
    if (unsupported := ga.unsupported_item_value(item)) is not None:
        raise invalid_choice(*unsupported)
    missing = ga.missing_item_parameter(item) or _assistant_text_missing(item)
    if missing is not None:
        raise Rejected.missing_parameter(missing)


def _assistant_text_missing(item: Mapping[str, Any]) -> str | None:
    if item.get("type") != "message" or item.get("role") != "assistant":
        return None
    for index, part in enumerate(item["content"]):
        if isinstance(part, Mapping) and part.get("text") is None:
            return f"item.content[{index}].text"
    return None


def invalid_choice(param: str, supported: tuple[Any, ...], value: object) -> Rejected:
    """The refusal of a `param` that is none of the `supported` values, in the service's
    words: "Invalid value: 'x'. Supported values are: 'a', 'b', and 'c'." ("'a' and 'b'";
    one: "Value must be 'a'.")."""
    shown = value if isinstance(value, str) else dumps(value)
    quoted = [f"'{choice}'" for choice in supported]
    if len(quoted) == 1:
        message = f"Invalid value: '{shown}'. Value must be {quoted[0]}."
        return Rejected("invalid_value", message, param)
    if len(quoted) == 2:
        listed = " and ".join(quoted)
    else:
        listed = ", ".join(quoted[:-1]) + ", and " + quoted[-1]
    return Rejected(
        "invalid_value", f"Invalid value: '{shown}'. Supported values are: {listed}.", param
    )


def check_known_keys(unknown: str | None) -> None:
    """Refuse the parameter `unknown` names, if any, as the service does."""
    if unknown is not None:
        raise Rejected("unknown_parameter", f"Unknown parameter: '{unknown}'.", unknown)


def check_types(mistyped: tuple[str, tuple[str, ...], Any] | None) -> None:
    """Refuse the value `mistyped` names (`ga.mistyped_*`), if any, as the service does:
    "Invalid type for 'session.tools': expected an array, but got string instead."."""
    if mistyped is not None:
        param, allowed, value = mistyped
        raise Rejected.invalid_type(param, ga.expected_types(allowed), value)


async def refuse_beta(connection: ServerConnection, client_event_id: str | None = None) -> None:
    """Answer the beta shape as the service does: the error, then close 4000."""
    event = error_event(code=BETA_CODE, message=BETA_MESSAGE, client_event_id=client_event_id)
    event["event_id"] = new_event_id()
    try:
        await connection.send(dumps(event))
    except ConnectionClosed:
        return
    await connection.close(BETA_CLOSE_CODE, BETA_CLOSE_REASON)


def check_current_fields(params: Mapping[str, Any], where: str) -> None:
    """`reasoning` and `parallel_tool_calls` of a session or response (`where`), if present."""
    if "reasoning" in params and params["reasoning"] is not None:
        reasoning = params["reasoning"]
        if not isinstance(reasoning, dict):
            raise Rejected.invalid_type(f"{where}.reasoning", "an object", reasoning)
        for key in reasoning:
            if key != "effort":
                raise Rejected(
                    "unknown_parameter",
                    f"Unknown parameter: '{where}.reasoning.{key}'.",
                    f"{where}.reasoning.{key}",
                )
        effort = reasoning.get("effort")
        if effort is not None and effort not in REASONING_EFFORTS:
            shown = effort if isinstance(effort, str) else dumps(effort)
            raise Rejected(
                "invalid_value",
                f"Invalid value: '{shown}'. Supported values are: 'minimal', 'low', 'medium', "
                "'high' and 'xhigh'.",
                f"{where}.reasoning.effort",
            )
    if "parallel_tool_calls" in params and params["parallel_tool_calls"] is not None:
        value = params["parallel_tool_calls"]
        if not isinstance(value, bool):
            raise Rejected.invalid_type(f"{where}.parallel_tool_calls", "a boolean", value)


def check_audio(params: Mapping[str, Any], where: str) -> None:
    """The audio formats and the turn detection type of a session or response (`where`), if
    present: the service speaks and hears only its formats, and PCM only at 24 kHz."""
    audio = params.get("audio")
    if not isinstance(audio, Mapping):
        return
    for direction in ("input", "output"):
        config = audio.get(direction)
        if not isinstance(config, Mapping):
            continue
        path = f"{where}.audio.{direction}"
        if config.get("format") is not None:
            _check_format(config["format"], f"{path}.format")
        turn_detection = config.get("turn_detection")
        if isinstance(turn_detection, Mapping):
            kind = turn_detection.get("type")
            _check_choice(kind, TURN_DETECTION_TYPES, f"{path}.turn_detection.type")


def _check_format(audio_format: object, path: str) -> None:
    if not isinstance(audio_format, Mapping):
        raise Rejected.invalid_type(path, "an object", audio_format)
    _check_choice(audio_format.get("type"), tuple(FORMAT_RATES), f"{path}.type")
    rate = audio_format.get("rate")
    if audio_format.get("type") == "audio/pcm" and rate is not None and rate != 24000:
        raise Rejected(
            "invalid_value",
            f"Invalid value: {dumps(rate)}. Supported values are: 24000.",
            f"{path}.rate",
        )


def _check_choice(value: object, supported: tuple[str, ...], path: str) -> None:
    """A value that must be one of `supported`; absent, the session's own stays."""
    if value is None or value in supported:
        return
    raise invalid_choice(path, supported, value)
