"""Whether a streaming client is reading: flow control for the event streams, the CSV exports
and the recordings under Daphne.

ASGI gives an HTTP application no backpressure: under Daphne, `send` writes into Twisted's
buffer for the connection at once, however full it is, so a client that stops reading would
make the server hold every event sent to it, or the whole of an export. Twisted itself knows:
a push producer registered on the request is paused when the connection's buffer is full and
resumed once it drains. `with_flow_control` gives each HTTP request a `Flow` (in the scope's
`extensions`, as `oc.flow`) that a streaming answer registers as that producer. An event
stream then stops taking events while it is paused, its bounded queue fills, and it is
dropped; an export or a recording sends its next chunk only once the client has room for it
(`room`).

Under another server (or in-process tests) `attach()` finds no Twisted request: the stream
relies on its queue alone, and the export goes as fast as it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)

EXTENSION = "oc.flow"
STALL_SECONDS = 60.0  # a streamed answer's client that takes nothing for this long is cut off


class Flow:
    def __init__(self, send: Any) -> None:
        self._send = send
        self._request: Any = None
        self._resumed: asyncio.Event | None = None
        self.paused = False
        self.stopped = False

    def attach(self) -> bool:
        """Register with Daphne's Twisted request, if there is one (on the event loop)."""
        request = next(iter(getattr(self._send, "args", ())), None)  # daphne: partial(handle_reply, protocol)
        if request is None or not hasattr(request, "registerProducer") or request.producer is not None:
            return False
        channel = getattr(request, "channel", None)
        if channel is None:
            return False
        self._resumed = asyncio.Event()
        self._resumed.set()
        request.registerProducer(self, True)
        self._request = request
        if getattr(channel, "_waitingForTransport", False):  # already full
            self.pauseProducing()
        return True

    async def send(self, message: dict[str, Any]) -> None:
        """Send on the request's connection directly (`stream.farewell`)."""
        await self._send(message)

    def detach(self) -> None:
        request, self._request = self._request, None
        if request is not None and request.producer is self and request.channel is not None:
            with contextlib.suppress(Exception):
                request.unregisterProducer()

    def abort(self) -> None:
        """Cut the connection: a client that does not read would never take the end."""
        request = self._request
        self.detach()
        channel = getattr(request, "channel", None)
        transport = getattr(channel, "transport", None)
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()

    @property
    def taking(self) -> bool:
        """Registered with Twisted, which has not paused it: the client takes what is sent."""
        return self._request is not None and not self.paused and not self.stopped

    async def writable(self, timeout: float) -> bool:
        """Wait until the client has room (True), or `timeout` passes (False). False at once
        when the client has gone (`stopped`): the caller must stop, not ask again."""
        if not self.paused or self._resumed is None:
            return not self.stopped
        try:
            async with asyncio.timeout(timeout):
                await self._resumed.wait()
        except TimeoutError:
            return False
        return not self.stopped

    # IPushProducer, called by Twisted on the event loop's thread
    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True
        if self._resumed is not None:
            self._resumed.clear()

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False
        if self._resumed is not None:
            self._resumed.set()

    def stopProducing(self) -> None:  # noqa: N802
        self.stopped = True
        self.resumeProducing()


async def room(flow: Flow | None) -> bool:
    """Before a streamed answer's next chunk: wait while the client's side is full. False once
    the client has gone, or has taken nothing for STALL_SECONDS: then the connection is cut,
    so that the answer cannot look finished, and what it holds (a database connection, a
    file) is given back. Without a `Flow` (not under Daphne): True at once."""
    if flow is None or await flow.writable(STALL_SECONDS):
        return True
    if not flow.stopped:
        log.warning("a client took nothing for %g s: cut off", STALL_SECONDS)
        flow.abort()
    return False


def flow_of(request: Any) -> Flow | None:
    scope = getattr(request, "scope", None) or {}
    return (scope.get("extensions") or {}).get(EXTENSION)


def with_flow_control(app):
    """Wrap the HTTP application: each request gets a `Flow`, for its answer to use if it
    streams (it registers with Twisted only then)."""

    async def wrapped(scope, receive, send):
        if scope.get("type") == "http":
            extensions = dict(scope.get("extensions") or {})
            extensions[EXTENSION] = Flow(send)
            scope = {**scope, "extensions": extensions}
        return await app(scope, receive, send)

    return wrapped
