"""The GA shapes read from the official SDK's types: which keys are unknown, and what of an
announced session an update may send back."""

from __future__ import annotations

import copy

import pytest

from apps.realtime import ga
from apps.simulator.session import default_session_config


def test_the_known_keys_are_the_sdks_and_hold_no_beta_or_read_only_key():
    assert {"type", "instructions", "audio", "output_modalities", "tools", "model"} <= ga.SESSION_KEYS
    assert {"instructions", "metadata", "conversation", "input", "audio"} <= ga.RESPONSE_KEYS
    beta = {"modalities", "voice", "temperature", "input_audio_format", "turn_detection"}
    assert ga.SESSION_KEYS.isdisjoint(beta | {"id", "object", "expires_at", "client_secret"})
    assert ga.RESPONSE_KEYS.isdisjoint(beta)


@pytest.mark.parametrize(
    ("session", "unknown"),
    [
        ({"type": "realtime", "instructions": "x"}, None),
        ({"type": "realtime", "temperature": 1}, "session.temperature"),
        ({"type": "realtime", "audio": {"output": {"voice": "ash", "speed": 1.1}}}, None),
        ({"type": "realtime", "audio": {"outputs": {}}}, "session.audio.outputs"),
        (
            {"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}}}},
            None,
        ),
        (
            {"audio": {"input": {"turn_detection": {"type": "semantic_vad", "threshold": 0.5}}}},
            "session.audio.input.turn_detection.threshold",
        ),
        ({"audio": {"input": {"turn_detection": None, "transcription": None}}}, None),
        ({"audio": {"input": {"transcription": {"model": "whisper-1", "x": 1}}}}, (
            "session.audio.input.transcription.x"
        )),
        ({"tools": [{"type": "function", "name": "f", "parameters": {"any": "thing"}}]}, None),
        ({"tools": [{"type": "mcp", "server_label": "s", "meta": {}}]}, "session.tools[0].meta"),
        ({"tool_choice": {"type": "function", "name": "f", "strict": True}}, (
            "session.tool_choice.strict"
        )),
        ({"prompt": {"id": "p", "variables": {"free": {"form": 1}}}}, None),
    ],
)
def test_unknown_session_parameter_names_the_first_unknown_key(session, unknown):
    assert ga.unknown_session_parameter(session) == unknown


def test_unknown_response_parameter_leaves_input_items_to_the_item_checks():
    assert ga.unknown_response_parameter({"modalities": ["text"]}) == "response.modalities"
    assert ga.unknown_response_parameter({"metadata": {"free": "form"}, "input": [{"x": 1}]}) is None


def test_updatable_session_keeps_every_ga_key_and_drops_the_rest_at_any_depth():
    announced = default_session_config("sess_1", "gpt-realtime", "Be brief.")
    announced["client_secret"] = {"value": "ek_1", "expires_at": 1}
    announced["audio"]["input"]["turn_detection"]["future_field"] = 1
    before = copy.deepcopy(announced)
    update = ga.updatable_session(announced)
    assert announced == before, "the announced session is left as it was"
    assert update["type"] == "realtime"
    assert ga.unknown_session_parameter(update) is None
    assert not {"id", "object", "expires_at", "client_secret"} & set(update)
    assert "future_field" not in update["audio"]["input"]["turn_detection"]
    del before["audio"]["input"]["turn_detection"]["future_field"]
    # Not updatable either: the model, and the nulls the GA request types take no null for
    # (the settings they turn off are off by default).
    for key in ("id", "object", "expires_at", "client_secret", "model", "include"):
        del before[key]
    for key in ("transcription", "noise_reduction"):
        del before["audio"]["input"][key]
    assert update == before, "everything updatable is kept as it was"


def test_updatable_session_keeps_a_null_the_shape_allows_and_never_names_the_model():
    announced = {
        "model": "gpt-realtime-2025-08-28",
        "tracing": None,
        "include": None,
        "audio": {"input": {"turn_detection": None, "transcription": None}},
    }
    assert ga.updatable_session(announced) == {
        "type": "realtime",
        "tracing": None,
        "audio": {"input": {"turn_detection": None}},
    }
