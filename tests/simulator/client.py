"""Driving the simulator with the official `openai` SDK: the client, bounded receives."""

from __future__ import annotations

import asyncio
from typing import Any

import openai

from apps.simulator.server import Simulator

DELTAS = 5
RESPONSE_EVENTS = [
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * DELTAS,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]


def sdk_client(sim: Simulator, api_key: str = "sk-test") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=api_key, websocket_base_url=sim.url, max_retries=0)


async def recv(conn, timeout: float = 5.0):
    async with asyncio.timeout(timeout):
        return await conn.recv()


async def recv_until(conn, event_type: str, timeout: float = 5.0) -> list[Any]:
    """Events up to and including the first of `event_type`."""
    events = []
    async with asyncio.timeout(timeout):
        while True:
            event = await conn.recv()
            events.append(event)
            if event.type == event_type:
                return events


async def add_user_text(conn, text: str) -> Any:
    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    )
    events = await recv_until(conn, "conversation.item.done")
    return events[0].item


async def still_works(conn) -> None:
    """The connection is open and serves events."""
    item = await add_user_text(conn, "still there?")
    assert item.id.startswith("item_")
