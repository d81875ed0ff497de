"""Opening upstream Realtime connections with the official `openai` SDK. No Django.

One `AsyncOpenAI` client is shared per (base URL, API key) in the process: a client per
session costs close to a megabyte of memory, a shared one almost nothing per session.
The relay moves raw frames (`recv_bytes`/`send_raw`), so no frame is parsed into SDK models
on the hot path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import openai

if TYPE_CHECKING:
    from openai.resources.realtime.realtime import AsyncRealtimeConnection

_clients: dict[tuple[str, str], openai.AsyncOpenAI] = {}

# The embedded simulator needs no key, but the SDK insists on one.
PLACEHOLDER_KEY = "sk-no-key-needed-for-the-embedded-simulator"


def shared_client(base_url: str, api_key: str) -> openai.AsyncOpenAI:
    key = (base_url, api_key)
    client = _clients.get(key)
    if client is None:
        client = openai.AsyncOpenAI(
            api_key=api_key or PLACEHOLDER_KEY,
            websocket_base_url=base_url,
            max_retries=0,
        )
        _clients[key] = client
    return client


async def open_connection(
    *,
    base_url: str,
    api_key: str,
    model: str,
    extra_headers: dict[str, str] | None = None,
    open_timeout: float = 10.0,
) -> AsyncRealtimeConnection:
    """Connect to `{base_url}/realtime?model=…`. Raises on refusal or timeout."""
    client = shared_client(base_url, api_key)
    manager = client.realtime.connect(
        model=model,
        extra_headers=extra_headers or {},
        websocket_connection_options={
            "max_size": None,  # no 1 MiB cap: audio and large items pass whole
            "open_timeout": open_timeout,
            "close_timeout": 2.0,
        },
    )
    return await manager.enter()


def import_lazy_modules() -> None:
    """Import now what the first connection would import: the SDK loads its realtime resources
    (some 200 modules) and its HTTP stack when a client is first made and used."""
    import websockets.asyncio.client  # noqa: F401

    openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY, max_retries=0).realtime  # noqa: B018
