"""`services.response_request_submit`, the one submit path of the REST hook and the console:
its idempotency and its queue limit are rules of the service, whoever calls it."""

from __future__ import annotations

import pytest

from apps.sessions import services
from apps.sessions.models import LiveSession, ResponseRequest
from apps.sessions.overrides import ResponseOverrides

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sessions(transactional_db) -> list[str]:
    """Two sessions the table says are live, held by no process: what is stored stays queued."""
    for upstream_id in ("sess_one", "sess_two"):
        LiveSession.objects.create(upstream_id=upstream_id, model="gpt-realtime", status="live")
    return ["sess_one", "sess_two"]


async def _submit(session_id: str, key: str | None = None, scope: str | None = "token:1", **overrides):
    return await services.response_request_submit(
        session_id=session_id,
        overrides=ResponseOverrides(**overrides),
        origin="console",
        requested_by="ops",
        idempotency_key=key,
        idempotency_scope=scope if key else None,
    )


async def test_the_same_key_and_overrides_return_the_first_request_and_store_nothing(sessions):
    first, created = await _submit("sess_one", "k1", instructions="Be brief.", metadata={"a": "1"})
    repeat, again = await _submit("sess_one", "k1", metadata={"a": "1"}, instructions="Be brief.")
    assert created and not again
    assert repeat.id == first.id and repeat.to_dict() == first.to_dict()
    assert await ResponseRequest.objects.acount() == 1


@pytest.mark.parametrize(
    ("session", "overrides"),
    [
        ("sess_one", {"instructions": "Be long."}),
        ("sess_one", {"instructions": "Be brief.", "conversation": "none"}),
        ("sess_two", {"instructions": "Be brief."}),  # the digest names the session too
    ],
)
async def test_the_same_key_for_anything_else_is_an_idempotency_conflict(sessions, session, overrides):
    first, _ = await _submit("sess_one", "k1", instructions="Be brief.")
    with pytest.raises(services.IdempotencyConflict, match=first.id):
        await _submit(session, "k1", **overrides)
    assert await ResponseRequest.objects.acount() == 1


async def test_keys_belong_to_their_scope(sessions):
    mine, _ = await _submit("sess_one", "k1", scope="token:1", instructions="x")
    theirs, created = await _submit("sess_one", "k1", scope="user:7", instructions="y")
    assert created and theirs.id != mine.id
    with pytest.raises(ValueError, match="scope"):
        await services.response_request_submit(
            session_id="sess_one", overrides=ResponseOverrides(), origin="api", requested_by="x",
            idempotency_key="k2",
        )


async def test_out_of_band_requests_are_never_refused_for_a_full_in_conversation_queue(sessions, settings):
    for _ in range(settings.OC_QUEUE_LIMIT):
        await _submit("sess_one")
    with pytest.raises(services.QueueFull):
        await _submit("sess_one")
    _, created = await _submit("sess_one", conversation="none", instructions="Summarise.")
    assert created, "an out-of-band request is not queued behind in-conversation ones"


async def test_queued_out_of_band_requests_do_not_count_toward_the_queue_limit(sessions, settings):
    for _ in range(settings.OC_QUEUE_LIMIT):
        _, created = await _submit("sess_two", conversation="none")
        assert created
    for _ in range(settings.OC_QUEUE_LIMIT):
        _, created = await _submit("sess_two", conversation="auto")
        assert created, "refused for out-of-band requests in the queue"
    with pytest.raises(services.QueueFull, match=f"already has {settings.OC_QUEUE_LIMIT} queued"):
        await _submit("sess_two")


async def test_a_submit_records_its_store_and_ping_times_when_asked(sessions):
    timing: dict[str, float] = {}
    await services.response_request_submit(
        session_id="sess_one", overrides=ResponseOverrides(), origin="api", requested_by="x", timing=timing
    )
    assert set(timing) == {"db", "ping"} and all(seconds >= 0 for seconds in timing.values())
