"""/healthz (the process is up) and /readyz (its database and channel layer answer)."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from apps.sessions import recorder
from apps.sessions.history import writer as history
from apps.sessions.models import LiveSession
from apps.sessions.recorder import Recording
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


async def test_healthz_counts_the_history_writes_not_yet_committed():
    """A drain script (and the suite's `wait_quiet`) reads "nothing left to write" from it."""
    await history.flush()
    started, release = threading.Event(), threading.Event()
    history.submit(lambda: (started.set(), release.wait(5)))
    try:
        assert await asyncio.to_thread(started.wait, 5), "the writer took the blocking write"
        history.submit(lambda: None)  # waits behind it
        health = (await _get("/healthz")).json()
        assert health["history_pending"] == 2, "one being written, one waiting"
    finally:
        release.set()
    await history.flush()
    assert (await _get("/healthz")).json()["history_pending"] == 0


async def test_healthz_counts_the_recordings_not_yet_saved(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    session = await LiveSession.objects.acreate(model="gpt-realtime", upstream_id="sess_health")
    recording = Recording(session.id, started_at=0.0)
    recording.add(0, bytes(4800), 0.1)
    assert (await _get("/healthz")).json()["recordings_pending"] == 1, "a call being recorded"
    recording.finish(at=0.5)
    assert await asyncio.to_thread(recorder.flush, 5)
    assert (await _get("/healthz")).json()["recordings_pending"] == 0, "saved"


async def test_readyz_is_503_naming_the_part_that_fails(settings, caplog):
    # The unanswering address stands for any detail of the deployment: the log has it, the
    # answer (no token needed) does not.
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
    assert body["channel_layer"].startswith("failed: ")
    assert "127.0.0.1" not in ready.text
    assert "channel_layer check failed" in caplog.text and "127.0.0.1" in caplog.text
