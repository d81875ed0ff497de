"""A token holds at most OC_MAX_STREAMS_PER_TOKEN event streams open in a process, so that a
leaked token or a runaway script cannot take the process's memory: one more is refused 429
before it starts, and a stream that ends, however it ends, gives its place back."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import types

import httpx
import pytest
from asgiref.sync import sync_to_async

from apps.events import stream
from apps.sessions.models import ApiToken
from apps.sessions.tokens import api_token_revoke
from tests.support.sse import Follower

pytestmark = pytest.mark.django_db(transaction=True)


def rest_client(server, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"{server.http_url}/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(10, read=30),
    )


async def opened_once_a_place_is_free(rest: httpx.AsyncClient, timeout: float = 10.0) -> Follower:
    """A stream on /events, asked again while the answer is 429: the server gives a place back
    once it has seen the other stream's client go, a moment after the client closed."""
    deadline = time.monotonic() + timeout
    while True:
        follower = await Follower(rest, "/events").start()
        if follower.status == 200:
            return follower
        await follower.close()
        assert follower.status == 429, (follower.status, getattr(follower, "body", ""))
        assert time.monotonic() < deadline, "no place was given back"
        await asyncio.sleep(0.05)


@pytest.mark.e2e
async def test_a_stream_over_the_tokens_cap_is_refused_and_a_closed_one_frees_its_place(
    daphne_with, make_token
):
    server = daphne_with(OC_MAX_STREAMS_PER_TOKEN="2")
    plain = await sync_to_async(make_token)(name="script")
    other = await sync_to_async(make_token)(name="another-script")
    async with rest_client(server, plain) as rest, rest_client(server, other) as rest_other:
        held = [await Follower(rest, "/events").start() for _ in range(2)]
        theirs = None
        try:
            assert [follower.status for follower in held] == [200, 200]
            async with rest.stream("GET", "/events") as over:  # not read on, were it a stream
                assert over.status_code == 429
                await over.aread()
            assert over.headers["content-type"] == "application/json"
            assert over.headers["Retry-After"] == "1"
            error = over.json()["error"]
            assert error["code"] == "too_many_streams"
            assert "2 event streams" in error["message"]
            assert "OC_MAX_STREAMS_PER_TOKEN" in error["message"]
            refused_head = await rest.head("/events")
            assert refused_head.status_code == 429, "HEAD answers as the GET would"
            theirs = await Follower(rest_other, "/events").start()
            assert theirs.status == 200, "the cap is each token's own"
            await held.pop(0).close()  # the client goes
            held.append(await opened_once_a_place_is_free(rest))
        finally:
            for follower in [*held, theirs]:
                if follower is not None:
                    await follower.close()


@pytest.mark.e2e
async def test_a_head_takes_no_place_for_longer_than_its_answer(daphne_with, make_token):
    """A HEAD is answered as the GET, without the stream's body: the stream never starts, so
    its `finally` never runs, and its place goes with it all the same."""
    server = daphne_with(OC_MAX_STREAMS_PER_TOKEN="1")
    plain = await sync_to_async(make_token)(name="script")
    async with rest_client(server, plain) as rest:
        for _ in range(3):
            assert (await rest.head("/events")).status_code == 200
        follower = await Follower(rest, "/events").start()
        try:
            assert follower.status == 200, getattr(follower, "body", "")
        finally:
            await follower.close()


async def test_every_way_a_stream_ends_gives_its_place_back(settings, make_token):
    """In process: a stream cancelled (its client went, or the server stops), one never
    started (dropped), and one the server ends (here its token is revoked)."""
    settings.OC_MAX_STREAMS_PER_TOKEN = 1
    settings.OC_EVENTS_KEEPALIVE = 0.2
    await sync_to_async(make_token)(name="script")
    token = await sync_to_async(ApiToken.objects.get)(name="script")
    request = types.SimpleNamespace(auth=token)

    async def answer():
        return await stream.event_stream_response(request, session_id=None, last_event_id=None)

    cancelled = await answer()
    content = cancelled.streaming_content
    await anext(content)  # the `retry:` preamble
    reading = asyncio.ensure_future(anext(content))  # waits for events
    with pytest.raises(stream.TooManyStreams):
        await answer()
    reading.cancel()  # as Daphne cancels the request's task when its client goes, or it stops
    with contextlib.suppress(asyncio.CancelledError):
        await reading
    assert stream.streams.count(token.pk) == 0

    dropped = await answer()
    assert stream.streams.count(token.pk) == 1
    del dropped
    gc.collect()  # CPython frees it at once; the collection makes the test not depend on it
    assert stream.streams.count(token.pk) == 0

    ended = await answer()
    await sync_to_async(api_token_revoke)(token=token)
    async with asyncio.timeout(5):
        sent = [chunk async for chunk in ended.streaming_content]
    assert b"revoked" in sent[-1]
    assert stream.streams.count(token.pk) == 0
