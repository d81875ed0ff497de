"""A token revoked while one of its event streams is open: the stream ends (it would otherwise
go on reading every session's events for as long as the connection lasts), and the client's
reconnect is refused."""

from __future__ import annotations

import httpx
import pytest
from asgiref.sync import sync_to_async

from apps.sessions.models import ApiToken
from apps.sessions.tokens import api_token_revoke
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
