"""`rate_limits.updated`, as the service sends it: at the start of every response, right after
`response.created`, with the `requests` and `tokens` limits of the simulator's one-minute window.

Each session has its own window (the service's are the organisation's; per session keeps tests
apart). The window opens at the session's first response and lasts `RATE_WINDOW_SECONDS`;
`reset_seconds` is what is left of it. Each response takes one request and its tokens: its input
tokens plus the output it will produce (the service reserves output tokens at the start and
settles them at the end; the simulator knows its reply in advance, so it takes them at once).
`remaining` never goes below 0. The limits are `SimulatorConfig.rate_limit_requests` and
`.rate_limit_tokens`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from apps.simulator.wire import new_event_id, tokens

if TYPE_CHECKING:
    from apps.simulator.session import SimResponse, SimSession

RATE_WINDOW_SECONDS = 60.0


@dataclass(kw_only=True)
class RateWindow:
    opened_at: float | None = None  # time.monotonic()
    requests: int = 0
    tokens: int = 0

    def take(self, *, requests: int, tokens: int, now: float) -> float:
        """Count a response; returns the seconds left in the window."""
        if self.opened_at is None or now - self.opened_at >= RATE_WINDOW_SECONDS:
            self.opened_at, self.requests, self.tokens = now, 0, 0
        self.requests += requests
        self.tokens += tokens
        return max(0.0, self.opened_at + RATE_WINDOW_SECONDS - now)


async def announce(session: SimSession, response: SimResponse) -> None:
    """Send the `rate_limits.updated` of a response that has just been created."""
    used = response.input_tokens + response.input_audio_tokens + tokens(response.text)
    reset = session.rate_window.take(requests=1, tokens=used, now=time.monotonic())
    reset = round(reset, 3)
    options = session.options
    await session.send(
        {
            "type": "rate_limits.updated",
            "event_id": new_event_id(),
            "rate_limits": [
                {
                    "name": "requests",
                    "limit": options.rate_limit_requests,
                    "remaining": max(0, options.rate_limit_requests - session.rate_window.requests),
                    "reset_seconds": reset,
                },
                {
                    "name": "tokens",
                    "limit": options.rate_limit_tokens,
                    "remaining": max(0, options.rate_limit_tokens - session.rate_window.tokens),
                    "reset_seconds": reset,
                },
            ],
        }
    )
