"""A Server-Sent Events reader for tests: what a script following /api/v1/events does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class SseEvent:
    id: str | None
    data: dict[str, Any]


@dataclass(eq=False)
class Follower:
    """Follows one stream in a task of its own; keeps every event and comment."""

    client: httpx.AsyncClient
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    events: list[SseEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    status: int | None = None
    content_type: str = ""
    ended: bool = False
    error: BaseException | None = None
    _task: asyncio.Task | None = None
    _opened: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> Follower:
        self._task = asyncio.get_running_loop().create_task(self._read())
        async with asyncio.timeout(10):
            await self._opened.wait()
        return self

    async def _read(self) -> None:
        try:
            async with self.client.stream("GET", self.path, headers=self.headers, params=self.params) as answer:
                self.status = answer.status_code
                self.content_type = answer.headers.get("content-type", "")
                self._opened.set()
                if answer.status_code != 200:
                    await answer.aread()
                    self.body = answer.text
                    return
                event_id, data = None, []
                async for line in answer.aiter_lines():
                    if line == "":
                        if data:
                            self.events.append(SseEvent(event_id, json.loads("\n".join(data))))
                            self._changed.set()
                        event_id, data = None, []
                    elif line.startswith(":"):
                        self.comments.append(line[1:].strip())
                        self._changed.set()
                    elif line.startswith("id:"):
                        event_id = line[3:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip())
        except Exception as exc:  # noqa: BLE001 - a test reads it
            self.error = exc
        finally:
            self.ended = True
            self._opened.set()
            self._changed.set()

    async def until(self, predicate: Callable[[list[SseEvent]], bool], timeout: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.events):
            if self.ended:
                raise AssertionError(f"the stream ended ({self.error!r}) before {what}; got {self.types()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {self.types()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()

    async def wait_ended(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self._task

    def types(self) -> list[str]:
        out = []
        for event in self.events:
            kind = event.data.get("type")
            if kind == "request.status":
                kind += f":{event.data['request']['status']}"
            out.append(kind)
        return out

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
