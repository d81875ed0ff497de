"""The protocol's current shape, as the service holds clients to it. No Django.

The beta shape is switched off. The service answers it with an `error` event, then closes the
WebSocket with code 4000 and the reason `invalid_request_error.beta_api_shape_disabled`::

    {"type": "error", "event_id": "...", "error": {"type": "invalid_request_error",
     "code": "beta_api_shape_disabled", "message": "The Realtime Beta API is no longer
     supported. Please use /v1/realtime for the GA API.", "param": null, "event_id": <the
     client event's id, or null>}}

It does so for (as reported by the service's users; the simulator follows):
- a handshake with the header `OpenAI-Beta: realtime=v1` (or the browser subprotocol
  `openai-beta.realtime-v1`): the WebSocket opens, the error comes first (no
  `session.created`), then the close;
- a beta-shaped `session.update`: a `session` without `type` that holds a key only the beta
  shape had (`modalities`, `voice`, `input_audio_format`, `output_audio_format`,
  `input_audio_transcription`, `input_audio_noise_reduction`, `turn_detection`, `temperature`,
  `max_response_output_tokens`); the error names the event. (With `type` set, such a key is an
  ordinary unknown parameter, and the session goes on.)

Current fields, checked as the service checks them (errors name the parameter):
`reasoning` (`{"effort": "minimal"|"low"|"medium"|"high"|"xhigh"}`) and `parallel_tool_calls`
(a boolean), in `session.update` and in `response.create`. They are accepted for every model
(the service documents them for reasoning models such as `gpt-realtime-2`; the simulator does
not refuse them elsewhere).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from apps.realtime.events import error_event
from apps.simulator.wire import Rejected, dumps, new_event_id

BETA_CODE = "beta_api_shape_disabled"
BETA_MESSAGE = (
    "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
)
BETA_CLOSE_CODE = 4000
BETA_CLOSE_REASON = "invalid_request_error.beta_api_shape_disabled"
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
BETA_SESSION_KEYS = frozenset(
    {
        "modalities",
        "voice",
        "input_audio_format",
        "output_audio_format",
        "input_audio_transcription",
        "input_audio_noise_reduction",
        "turn_detection",
        "temperature",
        "max_response_output_tokens",
    }
)
REASONING_EFFORTS = ("minimal", "low", "medium", "high", "xhigh")


def beta_handshake(headers: Any) -> bool:
    """Whether a handshake's headers ask for the beta shape."""
    beta = ",".join(headers.get_all("OpenAI-Beta"))
    if any(part.strip().lower() == "realtime=v1" for part in beta.split(",")):
        return True
    offered = ",".join(headers.get_all("Sec-WebSocket-Protocol"))
    return BETA_SUBPROTOCOL in (part.strip() for part in offered.split(","))


def beta_session(update: Mapping[str, Any]) -> bool:
    """Whether a `session.update`'s session is beta-shaped (module docstring)."""
    return "type" not in update and not BETA_SESSION_KEYS.isdisjoint(update)


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


def check_unknown_beta_keys(update: Mapping[str, Any]) -> None:
    """With `type` set, a beta-only key is an unknown parameter (the session goes on)."""
    for key in update:
        if key in BETA_SESSION_KEYS:
            raise Rejected(
                "unknown_parameter", f"Unknown parameter: 'session.{key}'.", f"session.{key}"
            )
