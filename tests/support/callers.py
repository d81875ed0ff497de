"""A Realtime caller on a real socket (plain `websockets`): a reader task keeps every event."""

from __future__ import annotations

import asyncio
import contextlib
import json

import websockets

from tests.support.realtime import user_text


class SocketCaller:
    def __init__(self, socket, session_id: str) -> None:
        self.socket = socket
        self.session_id = session_id
        self.events: list[dict] = []
        self.changed = asyncio.Event()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, ws_base: str, token: str) -> SocketCaller:
        """`ws_base` is the relay's `ws://HOST:PORT/v1`."""
        socket = await websockets.connect(
            f"{ws_base}/realtime?model=gpt-realtime",
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=10,
            max_size=None,
        )
        created = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert created["type"] == "session.created", created
        return cls(socket, created["session"]["id"])

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in self.socket:
                self.events.append(json.loads(frame))
                self.changed.set()
        self.changed.set()

    def count(self, kind: str) -> int:
        return sum(e["type"] == kind for e in self.events)

    async def wait_for(self, kind: str, n: int = 1, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.count(kind) < n:
                if self.reader.done():
                    raise AssertionError(f"the caller's socket closed before {n} {kind}")
                self.changed.clear()
                await self.changed.wait()

    async def say(self, text: str) -> None:
        await self.socket.send(json.dumps({"type": "conversation.item.create", "item": user_text(text)}))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.socket.close(), 5)
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)


async def until_live(rest, session_id: str, timeout: float = 10.0) -> dict:
    """Until the REST hook (an httpx client on /api/v1) shows the session live."""
    async with asyncio.timeout(timeout):
        while True:
            answer = await rest.get(f"/sessions/{session_id}")
            if answer.status_code == 200 and answer.json()["status"] == "live":
                return answer.json()
            await asyncio.sleep(0.02)
