"""The Agents SDK's realtime model, pointed at the relay, completes a text turn unchanged."""

from __future__ import annotations

import asyncio

import pytest
from agents.realtime import RealtimeAgent, RealtimeRunner

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _assistant_text(history) -> str:
    texts = []
    for item in history:
        if getattr(item, "role", None) != "assistant":
            continue
        for part in getattr(item, "content", []) or []:
            texts.append(getattr(part, "text", None) or getattr(part, "transcript", None) or "")
    return "".join(texts)


async def test_agents_sdk_text_turn_through_the_relay(daphne, simulator, api_token):
    agent = RealtimeAgent(name="relay-test", instructions="You are the relay test agent.")
    runner = RealtimeRunner(
        agent, config={"model_settings": {"model_name": "gpt-realtime", "modalities": ["text"]}}
    )
    session = await runner.run(
        model_config={"url": f"{daphne.ws_base}/realtime?model=gpt-realtime", "api_key": api_token}
    )
    errors, history = [], []
    async with session:
        await session.send_message("Is the relay transparent?")

        async def consume():
            async for event in session:
                if event.type == "error":
                    errors.append(event)
                elif event.type == "history_updated":
                    history[:] = event.history
                elif event.type == "agent_end":
                    return

        await asyncio.wait_for(consume(), timeout=15)
    assert errors == []
    text = _assistant_text(history)
    assert "You are the relay test agent." in text, f"agent instructions reached the model: {text!r}"
    assert "Is the relay transparent?" in text
