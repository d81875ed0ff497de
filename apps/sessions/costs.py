"""Usage into cost: the price table of `settings.OC_PRICES` (operator_console/prices.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings

from operator_console.prices import cost_of_counts, price_of, token_counts

# Costs are given to the millionth of a dollar: finer than any one token's price.
DIGITS = 6


def priced(model: str) -> bool:
    return price_of(settings.OC_PRICES, model) is not None


def cost_usd(*, model: str, usage: Mapping[str, Any] | None) -> float | None:
    """The cost in USD of `usage` (one response's, or a session's sum) on `model`: None when
    the model has no price, or there is no usage (a request not finished)."""
    if not isinstance(usage, Mapping):
        return None
    entry = price_of(settings.OC_PRICES, model)
    if entry is None:
        return None
    return round(cost_of_counts(entry, token_counts(dict(usage))), DIGITS)


def cost_of_counts_usd(*, model: str, counts: Mapping[str, int]) -> float | None:
    """The cost of token counts already split by type (the selectors' sums)."""
    entry = price_of(settings.OC_PRICES, model)
    if entry is None:
        return None
    return round(cost_of_counts(entry, dict(counts)), DIGITS)
