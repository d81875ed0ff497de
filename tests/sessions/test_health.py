"""/healthz (the process is up) and /readyz (its database and channel layer answer)."""

from __future__ import annotations

import httpx
import pytest

from operator_console.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


async def _get(path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://127.0.0.1") as client:
        return await client.get(path)


async def test_healthz_and_readyz_answer_when_all_is_well():
    health = (await _get("/healthz")).json()
    assert health["status"] == "ok" and health["sessions"] == 0 and health["tasks"] >= 1
    ready = await _get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["database"].startswith("ok") and body["channel_layer"].startswith("ok")


async def test_healthz_counts_the_sessions_the_process_holds(caller):
    """The caller-churn leak test reads leaked sessions from this count: it must count one."""
    health = (await _get("/healthz")).json()
    assert health["sessions"] == 1, health


async def test_readyz_is_503_naming_the_part_that_fails(settings):
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]}}
    }
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    try:
        ready = await _get("/readyz")
    finally:
        channel_layers.backends.clear()
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not ready" and body["database"].startswith("ok")
    assert body["channel_layer"].startswith("failed")
