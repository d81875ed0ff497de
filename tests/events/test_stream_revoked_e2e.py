"""A token revoked while one of its event streams is open: the stream ends within
OC_EVENTS_KEEPALIVE seconds (it would otherwise go on reading every session's events for as long
as the connection lasts), events or none, and the client's reconnect is refused."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from asgiref.sync import sync_to_async

from apps.events.stream import follow, hub
from apps.sessions.models import ApiToken
from apps.sessions.tokens import api_token_revoke
from tests.support.realtime import eventually
from tests.support.sse import Follower

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def test_a_revoked_tokens_stream_ends_and_stays_shut(daphne_with, make_token):
    server = daphne_with(OC_EVENTS_KEEPALIVE="0.5")
    plain = await sync_to_async(make_token)(name="leaked")
    async with httpx.AsyncClient(
        base_url=f"{server.http_url}/api/v1",
        headers={"Authorization": f"Bearer {plain}"},
        timeout=httpx.Timeout(10, read=30),
    ) as rest:
        follower = await Follower(rest, "/events").start()
        try:
            assert follower.status == 200
            token = await sync_to_async(ApiToken.objects.get)(name="leaked")
            await sync_to_async(api_token_revoke)(token=token)
            await follower.wait_ended(timeout=5)
            assert any("revoked" in comment for comment in follower.comments), follower.comments
        finally:
            await follower.close()
        again = await rest.get("/events")
        assert again.status_code == 401, "the reconnect is refused"


async def test_a_stream_busy_after_the_revoke_still_ends_within_the_keepalive(
    settings, make_token
):
    settings.OC_EVENTS_KEEPALIVE = 2.0
    await sync_to_async(make_token)(name="leaked")
    token = await sync_to_async(ApiToken.objects.get)(name="leaked")
    stream = follow(session_key=None, after=None, gap=None, flow=None, token_id=token.pk)
    await anext(stream)  # the `retry:` preamble
    waiting = asyncio.ensure_future(anext(stream))
    the_hub = hub()
    await eventually(lambda: the_hub.everything)
    joined = time.monotonic()  # the stream looks at its token a keep-alive after it joined
    await sync_to_async(api_token_revoke)(token=token)
    revoked = time.monotonic()
    # An event comes just before the stream would look at its token: timed from the join, not
    # from the revoke, whose write may take a while on a loaded machine (past the look, the
    # stream would answer its keep-alive before the event came).
    await asyncio.sleep(max(0.0, joined + 1.7 - time.monotonic()))
    event = (the_hub.cursor + 1, uuid.uuid4(), "request.status", '{"type":"request.status"}')
    the_hub._hand_out([event])
    assert b"request.status" in await waiting
    sent = [chunk async for chunk in stream]
    took = time.monotonic() - revoked
    assert b"revoked" in sent[-1]
    assert took < 2.0 + 0.6, f"the stream went on {took:.1f} s after its token was revoked"
