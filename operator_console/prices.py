"""The price table (`OC_PRICES`): USD per 1 million tokens, per model and token type.

The defaults are OpenAI's published prices of the Realtime models (2025); a deployment sets
`OC_PRICES` to a JSON object to override or add models, for example

    OC_PRICES='{"gpt-realtime": {"text_input": 4, "cached_input": 0.4, "audio_input": 32,
                "text_output": 16, "audio_output": 64}, "gpt-4o-realtime-preview": null}'

Each model named replaces that model's default entry; `null` leaves a model unpriced (its
cost is then null). A bad value stops start-up with ImproperlyConfigured naming the key.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from django.core.exceptions import ImproperlyConfigured

# Token types, as `usage` of `response.done` counts them. `cached_audio_input` is optional: it
# defaults to `cached_input`, which prices cached text (and cached audio when not given).
REQUIRED_TYPES = ("text_input", "cached_input", "audio_input", "text_output", "audio_output")
OPTIONAL_TYPES = ("cached_audio_input",)
TOKEN_TYPES = REQUIRED_TYPES + OPTIONAL_TYPES

Prices = dict[str, dict[str, float]]

DEFAULT_PRICES: Prices = {
    "gpt-realtime": {
        "text_input": 4.00,
        "cached_input": 0.40,
        "audio_input": 32.00,
        "cached_audio_input": 0.40,
        "text_output": 16.00,
        "audio_output": 64.00,
    },
    "gpt-realtime-mini": {
        "text_input": 0.60,
        "cached_input": 0.06,
        "audio_input": 10.00,
        "cached_audio_input": 0.30,
        "text_output": 2.40,
        "audio_output": 20.00,
    },
}


def parse_prices(raw: str, *, name: str = "OC_PRICES") -> Prices:
    """The table: the defaults with the models of `raw` (a JSON object) over them."""
    prices: Prices = {model: dict(entry) for model, entry in DEFAULT_PRICES.items()}
    if not raw.strip():
        return prices
    try:
        given = json.loads(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not JSON: {exc}.") from None
    if not isinstance(given, dict):
        raise ImproperlyConfigured(f"{name} must be a JSON object of model → prices.")
    for model, entry in given.items():
        where = f"{name}[{model!r}]"
        if not model.strip():
            raise ImproperlyConfigured(f"{where}: a model name cannot be empty.")
        if entry is None:
            prices.pop(model, None)
            continue
        if not isinstance(entry, dict):
            raise ImproperlyConfigured(f"{where} must be an object of token type → USD per 1M tokens, or null.")
        for key, value in entry.items():
            if key not in TOKEN_TYPES:
                raise ImproperlyConfigured(
                    f"{where}[{key!r}] is not a token type; use {', '.join(TOKEN_TYPES)}."
                )
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ImproperlyConfigured(f"{where}[{key!r}]={value!r} is not a price (a number ≥ 0).")
        missing = [key for key in REQUIRED_TYPES if key not in entry]
        if missing:
            raise ImproperlyConfigured(f"{where} lacks {', '.join(missing)}.")
        prices[model] = {key: float(value) for key, value in entry.items()}
    return prices


def prices_from_env(name: str = "OC_PRICES") -> Prices:
    return parse_prices(os.environ.get(name, ""), name=name)


def price_of(prices: Prices, model: str) -> dict[str, float] | None:
    """The entry for `model`: its own, else that of the longest name it extends with a dash
    (a dated snapshot, `gpt-realtime-2025-08-28`, is priced as `gpt-realtime`); None if none."""
    entry = prices.get(model)
    if entry is not None:
        return entry
    best = max((name for name in prices if model.startswith(f"{name}-")), key=len, default=None)
    return prices[best] if best is not None else None


def _int(mapping: Any, *path: str) -> int:
    for key in path:
        if not isinstance(mapping, dict):
            return 0
        mapping = mapping.get(key)
    return mapping if isinstance(mapping, int) and not isinstance(mapping, bool) else 0


def token_counts(usage: dict[str, Any]) -> dict[str, int]:
    """A `usage` object (one response's, or a sum) split by the table's token types. Cached
    tokens are part of the input counts, so they are taken out of them here."""
    details = usage.get("input_token_details")
    if isinstance(details, dict):
        text_in, audio_in = _int(details, "text_tokens"), _int(details, "audio_tokens")
        cached_text = _int(details, "cached_tokens_details", "text_tokens")
        cached_audio = _int(details, "cached_tokens_details", "audio_tokens")
        if not isinstance(details.get("cached_tokens_details"), dict):
            cached_text = _int(details, "cached_tokens")  # no split given: count it as text
    else:  # no details: every input token is text
        text_in, audio_in, cached_text, cached_audio = _int(usage, "input_tokens"), 0, 0, 0
    out = usage.get("output_token_details")
    if isinstance(out, dict):
        text_out, audio_out = _int(out, "text_tokens"), _int(out, "audio_tokens")
    else:
        text_out, audio_out = _int(usage, "output_tokens"), 0
    return {
        "text_input": max(0, text_in - cached_text),
        "cached_input": cached_text,
        "audio_input": max(0, audio_in - cached_audio),
        "cached_audio_input": cached_audio,
        "text_output": text_out,
        "audio_output": audio_out,
    }


def cost_of_counts(entry: dict[str, float], counts: dict[str, int]) -> float:
    rates = {"cached_audio_input": entry.get("cached_input", 0.0), **entry}
    return sum(counts.get(key, 0) * rates.get(key, 0.0) for key in TOKEN_TYPES) / 1_000_000
