"""The hub's hand-out of the events this process commits: straight to the followers when they
follow on from the cursor, from the log otherwise; never twice, never out of order. A stream
that joins it misses nothing committed since the stream was asked for."""

from __future__ import annotations

import asyncio
import types
import uuid

import pytest
from asgiref.sync import sync_to_async

from apps.events.models import Event
from apps.events.stream import Follower, Hub, event_stream_response
from apps.sessions.models import LiveSession

KEY = uuid.uuid4()


def row(event_id: int) -> tuple[int, uuid.UUID, str, str]:
    return (event_id, KEY, "request.status", '{"type":"request.status"}')


def ids(follower: Follower) -> list[int]:
    return [int(frame.split(b"\n", 1)[0].removeprefix(b"id: ")) for frame in follower.frames]


@pytest.mark.parametrize(
    ("cursor", "committed", "handed_out", "reads_the_log"),
    [
        (10, [11, 12], [11, 12], False),  # they follow on: handed out as they are
        (10, [12, 13], [], True),  # 11 lies between (another process's): read the log
        (10, [11, 13], [], True),  # a gap among them
        (12, [11, 12], [], False),  # a read of the log handed them out already
        (11, [11, 12, 13], [12, 13], False),  # partly handed out already
        (10, [], [], True),  # a commit that did not say what it wrote
    ],
)
async def test_committed_rows(cursor, committed, handed_out, reads_the_log):
    hub = Hub()
    hub.cursor = cursor
    follower = Follower(None, limit=100)
    hub.everything.add(follower)

    hub._committed([row(i) for i in committed])

    assert ids(follower) == handed_out
    assert hub.cursor == (handed_out[-1] if handed_out else cursor)
    assert hub._wake.is_set() is reads_the_log


async def test_a_read_of_the_log_skips_what_was_handed_out_meanwhile():
    hub = Hub()
    hub.cursor = 10
    follower = Follower(None, limit=100)
    hub.everything.add(follower)

    hub._committed([row(11), row(12)])  # while a read from 10 was on its way
    hub._hand_out([row(11), row(12), row(13)])  # the read's answer

    assert ids(follower) == [11, 12, 13]
    assert hub.cursor == 13


async def test_a_sessions_follower_takes_nothing_after_its_end():
    """Its end and a relabelling after it, handed out together: the stream ends with the end."""
    hub = Hub()
    hub.cursor = 10
    follower = Follower(KEY, limit=100)
    hub.by_session[KEY] = {follower}

    hub._hand_out([
        row(11),
        (12, KEY, "session.ended", '{"type":"session.ended"}'),
        (13, KEY, "session.updated", '{"type":"session.updated"}'),
    ])  # fmt: skip

    assert ids(follower) == [11, 12] and follower.ending


def _end(session: LiveSession) -> None:
    LiveSession.objects.filter(pk=session.pk).update(status=LiveSession.Status.ENDED)
    Event.objects.create(
        type="session.ended", session_key=session.pk, session_id=session.upstream_id,
        payload='{"type":"session.ended"}',
    )  # fmt: skip


@pytest.mark.django_db(transaction=True)
async def test_a_session_that_ends_as_its_stream_opens_still_ends_the_stream():
    session = await sync_to_async(LiveSession.objects.create)(
        upstream_id="sess_ending", model="gpt-realtime", status=LiveSession.Status.LIVE
    )
    response = await event_stream_response(
        types.SimpleNamespace(), session_id="sess_ending", last_event_id=None
    )
    await sync_to_async(_end)(session)  # while the answer's head is on its way
    sent = []
    async with asyncio.timeout(3):
        async for chunk in response.streaming_content:
            sent.append(chunk)
    assert b"session.ended" in sent[-1], "the stream ends with the end it was asked just before"


@pytest.mark.django_db(transaction=True)
async def test_a_session_that_ends_between_the_streams_two_reads_sends_its_end(monkeypatch):
    """A new stream starts after the newest event, then reads the session: an end committed
    between the two is the stream's to send. It answered 204, as for an end before the stream."""
    from apps.events import stream

    session = await sync_to_async(LiveSession.objects.create)(
        upstream_id="sess_ends_between", model="gpt-realtime", status=LiveSession.Status.LIVE
    )
    real_session_found = stream.session_found

    def ends_first(session_id: str):
        _end(session)
        return real_session_found(session_id)

    monkeypatch.setattr(stream, "session_found", ends_first)
    response = await event_stream_response(
        types.SimpleNamespace(), session_id="sess_ends_between", last_event_id=None
    )
    assert response.status_code == 200
    sent = []
    async with asyncio.timeout(3):
        async for chunk in response.streaming_content:
            sent.append(chunk)
    assert b"session.ended" in sent[-1]


@pytest.mark.django_db(transaction=True)
async def test_a_session_relabelled_after_its_end_has_its_stream_end_there_still():
    """Its `session.updated` comes after its `session.ended`: resumed after the end, the
    session's stream answers 204 (it followed the relabelling, for ever); before, it ends
    with the end. /events has the relabelling."""
    from apps.events.stream import events_after
    from apps.sessions.services import live_session_label_set

    session = await sync_to_async(LiveSession.objects.create)(
        upstream_id="sess_relabelled", model="gpt-realtime", status=LiveSession.Status.LIVE
    )
    await sync_to_async(_end)(session)
    end = await Event.objects.aget(session_key=session.pk, type="session.ended")
    await live_session_label_set(session_id="sess_relabelled", label="Refund", by="test")
    after = await sync_to_async(events_after)(end.id, None, 10)
    # Of this session: a Daphne of this process's earlier tests serves the same database.
    assert [kind for _, key, kind, _ in after if key == session.pk] == ["session.updated"]

    resumed = await event_stream_response(
        types.SimpleNamespace(), session_id="sess_relabelled", last_event_id=end.id
    )
    assert resumed.status_code == 204, "nothing more will come: the end was seen"
    before = await event_stream_response(
        types.SimpleNamespace(), session_id="sess_relabelled", last_event_id=end.id - 1
    )
    sent = []
    async with asyncio.timeout(3):
        async for chunk in before.streaming_content:
            sent.append(chunk)
    assert b"session.ended" in sent[-1], "the stream ends with the end"
    assert b"session.updated" not in b"".join(sent), (
        "nothing after the end: the relabelling is for /events, read from the log in the same "
        "page as the end"
    )


@pytest.mark.django_db(transaction=True)
async def test_a_stopping_process_sends_its_streams_the_events_committed_before_it_stopped():
    """The farewell ran as soon as the sessions' ends were committed, before the hub had
    handed them out (its notice on the way): a stream ended without its sessions' ends."""
    from apps.events import stream

    the_hub = stream.hub()
    the_hub.cursor = await sync_to_async(stream.newest_id)()
    sent = []

    class Flow:
        stopped = False

        def detach(self) -> None:
            pass

        async def send(self, message) -> None:
            sent.append(message)

    follower = Follower(None, limit=100)
    follower.flow = Flow()
    the_hub.everything.add(follower)
    session = await sync_to_async(LiveSession.objects.create)(
        upstream_id="sess_stopping", model="gpt-realtime", status=LiveSession.Status.LIVE
    )
    await sync_to_async(_end)(session)  # committed; the hub not told

    assert await stream.farewell() == 1
    [last] = sent
    assert b"session.ended" in last["body"] and last["more_body"] is False
    assert last["body"].endswith(stream.STOPPING)
