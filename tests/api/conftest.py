"""REST hook fixtures: an HTTP client on the real ASGI application, and a live caller session.

The HTTP client and the caller's WebsocketCommunicator run the same application in the same
event loop, so they share the channel layer exactly as one Daphne process does.
"""

from __future__ import annotations

import httpx
import pytest
from channels.testing import WebsocketCommunicator

from apps.sessions.history import writer as history
from operator_console.asgi import application


@pytest.fixture
def rest_token(make_token) -> str:
    return make_token(name="script")


@pytest.fixture
async def rest(rest_token):
    """An httpx client for /api/v1/ authenticated with a token of every scope."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application),
        base_url="http://127.0.0.1/api/v1",
        headers={"Authorization": f"Bearer {rest_token}"},
        timeout=10,
    ) as client:
        yield client


class Caller:
    """A Realtime caller on the relay (communicator), with helpers to read its events."""

    def __init__(self, communicator: WebsocketCommunicator, session_id: str) -> None:
        self.communicator = communicator
        self.session_id = session_id
        self.events: list[dict] = []

    async def send(self, event: dict) -> None:
        await self.communicator.send_json_to(event)

    async def until(self, kind: str, n: int = 1, timeout: float = 10.0) -> list[dict]:
        """Receive until `n` events of `kind` have been seen since the session began."""
        while sum(e["type"] == kind for e in self.events) < n:
            self.events.append(await self.communicator.receive_json_from(timeout=timeout))
        return self.events


@pytest.fixture
def caller_token(make_token) -> str:
    return make_token(name="caller")


@pytest.fixture
async def caller(relay_settings, simulator, caller_token):
    communicator = WebsocketCommunicator(
        application,
        "/v1/realtime?model=gpt-realtime",
        headers=[(b"authorization", f"Bearer {caller_token}".encode())],
    )
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    created = await communicator.receive_json_from(timeout=5)
    assert created["type"] == "session.created"
    await history.flush()  # the session is `live` in the table: the REST hook can name it
    session = Caller(communicator, created["session"]["id"])
    yield session
    await communicator.disconnect()
