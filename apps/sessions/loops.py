"""One object per running event loop: Daphne runs one loop, the tests run one per test."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def per_loop(make: Callable[[], T]) -> Callable[[], T]:
    """A function that returns the running loop's own object, made by `make` on first use.
    Objects of loops that have closed are dropped."""
    made: dict[asyncio.AbstractEventLoop, T] = {}

    def get() -> T:
        loop = asyncio.get_running_loop()
        for other in [other for other in made if other.is_closed()]:
            del made[other]
        if loop not in made:
            made[loop] = make()
        return made[loop]

    return get
