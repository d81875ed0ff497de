"""The service's cap on a session's life: `SimulatorConfig.max_session_seconds`, from creation.

At the cap the service ends the session, with no renewal, as it is seen doing::

    {"type": "error", "event_id": "...", "error": {"type": "invalid_request_error",
     "code": "session_expired", "message": "Your session hit the maximum duration of 60 minutes.",
     "param": null, "event_id": null}}

then closes the WebSocket with code 1001 and that message as the reason. A response still
streaming is cut where it stands: no further events for it, no `response.done` (the socket
closes under it).

The service's caps are whole minutes and it prints them so ("60 minutes"). A test cap that is
not a whole number of minutes is printed as minutes with up to two decimals, trailing zeros
dropped: 10 s → "0.17 minutes", 90 s → "1.5 minutes"; the sentence is otherwise the service's
(always "minutes").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from websockets.exceptions import ConnectionClosed

if TYPE_CHECKING:
    from apps.simulator.session import SimSession

log = logging.getLogger(__name__)

EXPIRED_CODE = "session_expired"
EXPIRED_CLOSE_CODE = 1001


def minutes_text(seconds: float) -> str:
    """The cap in minutes as the message prints it: "60", "0.17", "1.5"."""
    minutes = round(seconds / 60, 2)
    if minutes == int(minutes):
        return str(int(minutes))
    return f"{minutes:.2f}".rstrip("0")


def expiry_message(seconds: float) -> str:
    return f"Your session hit the maximum duration of {minutes_text(seconds)} minutes."


async def expire_at_cap(session: SimSession, seconds: float) -> None:
    """Sleep out the session's life, then end it as the service does (module docstring)."""
    await asyncio.sleep(seconds)
    message = expiry_message(seconds)
    log.debug("simulator session %s hit its cap of %s s", session.id, seconds)
    session.stop_responses()
    with contextlib.suppress(ConnectionClosed):
        await session.error(EXPIRED_CODE, message)
    await session.connection.close(EXPIRED_CLOSE_CODE, message)
