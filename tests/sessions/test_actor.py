"""The session actor without sockets: fake legs, the in-memory channel layer, the real history
writer. The core's decisions are tested in tests/realtime/test_relay.py; here, that the actor
performs them: in order, on the right leg, with the timer, the replies and the end."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from apps.realtime import events
from apps.sessions import groups
from apps.sessions.actor import SessionActor
from apps.sessions.history import writer as history
from apps.sessions.models import LiveSession, ResponseRequest

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def history_written():
    """Each test's history is in the table before the next test's database is made."""
    yield
    await history.flush()


class FakeUpstream:
    """An upstream connection: `recv` gives what the test `push`es, `send` records."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.sent: list = []
        self.closed = False
        self.arrived = asyncio.Event()

    def push(self, event_or_frame) -> None:
        self.inbox.put_nowait(
            event_or_frame
            if isinstance(event_or_frame, str | bytes | Exception)
            else events.dumps(event_or_frame)
        )

    def close_from_upstream(self, code: int, reason: str = "") -> None:
        self.inbox.put_nowait(ConnectionClosed(Close(code, reason), None))

    async def recv(self):
        item = await self.inbox.get()
        if isinstance(item, Exception):
            raise item
        return item

    async def send(self, frame) -> None:
        self.sent.append(frame)
        self.arrived.set()

    async def until_sent(self, count: int, timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.sent) < count:
                self.arrived.clear()
                await self.arrived.wait()

    async def close(self) -> None:
        self.closed = True

    def sent_events(self) -> list[dict]:
        return [json.loads(frame) for frame in self.sent if isinstance(frame, str)]


class FakeCaller:
    def __init__(self) -> None:
        self.frames: list = []
        self.closed: tuple[int, str] | None = None
        self.arrived = asyncio.Event()

    async def send_frame(self, frame) -> None:
        self.frames.append(frame)
        self.arrived.set()

    async def close_with(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.arrived.set()

    def events(self) -> list[dict]:
        return [json.loads(frame) for frame in self.frames if isinstance(frame, str)]

    async def until(self, predicate, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self.arrived.clear()
                await self.arrived.wait()


def _opener(*legs: FakeUpstream):
    remaining = list(legs)

    async def open_upstream(*, model, extra_headers):
        return remaining.pop(0)

    return open_upstream


async def _started(settings, **overrides) -> tuple[SessionActor, FakeCaller, FakeUpstream]:
    for name, value in overrides.items():
        setattr(settings, name, value)
    caller, upstream = FakeCaller(), FakeUpstream()
    actor = SessionActor(
        caller=caller, model="gpt-realtime", connected_by="token:t", opener=_opener(upstream)
    )
    actor.start()
    upstream.push(
        {
            "type": "session.created",
            "session": {"id": f"sess_{actor.key.hex}", "instructions": "Be kind."},
        }
    )
    await caller.until(lambda c: c.frames)
    return actor, caller, upstream


async def _row(actor: SessionActor) -> LiveSession:
    await history.flush()
    return await LiveSession.objects.aget(id=actor.key)


async def test_frames_pass_in_order_both_ways(settings):
    actor, caller, upstream = await _started(settings)
    for n in range(20):
        actor.caller_frame(
            events.dumps({"type": "conversation.item.create", "event_id": f"c{n}", "item": {}})
        )
        upstream.push({"type": "response.output_text.delta", "response_id": "r", "delta": str(n)})
    actor.caller_frame(b"\x01binary")
    upstream.push(b"\x02binary")
    await caller.until(lambda c: len(c.frames) == 22)
    assert [e["delta"] for e in caller.events()[1:]] == [str(n) for n in range(20)]
    assert caller.frames[-1] == b"\x02binary"
    await upstream.until_sent(21)
    assert [e["event_id"] for e in upstream.sent_events()] == [f"c{n}" for n in range(20)]
    assert upstream.sent[-1] == b"\x01binary"
    actor.caller_closed()
    await actor.wait_finished()


async def test_upstream_close_closes_the_caller_with_its_code_and_records_the_end(settings):
    actor, caller, upstream = await _started(settings)
    upstream.close_from_upstream(1011, "simulated failure")
    await actor.wait_finished()
    assert caller.closed == (1011, "simulated failure")
    assert upstream.closed, "the upstream leg is closed as the session ends"
    row = await _row(actor)
    assert (row.status, row.end_reason, row.end_code, row.end_detail) == (
        "failed",
        "upstream_closed",
        1011,
        "simulated failure",
    )


async def test_caller_leaving_while_the_upstream_opens_ends_the_session_without_one(settings):
    opened = asyncio.Event()

    async def never(*, model, extra_headers):
        opened.set()
        await asyncio.Event().wait()

    caller = FakeCaller()
    actor = SessionActor(caller=caller, model="m", connected_by="t", opener=never)
    actor.start()
    await opened.wait()
    actor.caller_closed()
    await actor.wait_finished(timeout=2)
    await history.flush()
    row = await LiveSession.objects.aget(id=actor.key)
    assert (row.status, row.end_reason) == ("ended", "caller_closed")


async def test_shutdown_ends_the_session_and_fails_what_is_pending_before_it_finishes(settings):
    actor, caller, upstream = await _started(settings)
    actor.caller_frame(events.dumps({"type": "response.create", "event_id": "c1"}))
    actor.caller_frame(events.dumps({"type": "response.create", "event_id": "c2"}))
    await upstream.until_sent(1)  # c1 is sent; c2 waits its turn
    actor.shutdown()
    await actor.wait_finished()
    assert caller.closed[0] == 1012
    row = await _row(actor)
    assert (row.status, row.end_reason) == ("ended", "server_shutdown")
    requests = [r async for r in ResponseRequest.objects.filter(session=row)]
    assert len(requests) == 2
    assert {(r.status, r.error_code) for r in requests} == {("failed", "session_ended")}


async def test_a_new_upstream_leg_replaces_the_old_and_the_old_ones_frames_are_dropped(settings):
    actor, caller, old = await _started(settings)
    new = FakeUpstream()
    old.push({"type": "response.output_text.delta", "response_id": "r", "delta": "old, before"})
    await caller.until(lambda c: len(c.frames) == 2)
    await actor.replace_upstream(new)
    assert old.closed
    old.push({"type": "response.output_text.delta", "response_id": "r", "delta": "old, after"})
    new.push({"type": "response.output_text.delta", "response_id": "r", "delta": "new"})
    actor.caller_frame(
        events.dumps({"type": "conversation.item.create", "event_id": "c1", "item": {}})
    )
    await caller.until(lambda c: len(c.frames) == 3)
    assert [e.get("delta") for e in caller.events()[1:]] == ["old, before", "new"]
    await new.until_sent(1)
    assert [e["event_id"] for e in new.sent_events()] == ["c1"], (
        "the caller's frames go to the new leg"
    )
    actor.caller_closed()
    await actor.wait_finished()


async def test_an_operator_command_is_answered_on_its_reply_channel(settings):
    actor, caller, upstream = await _started(settings)
    layer = get_channel_layer()
    reply_to = await layer.new_channel()
    actor.operator_message({"type": groups.SESSION_INTERRUPT, "reply_to": reply_to})
    async with asyncio.timeout(2):
        reply = await layer.receive(reply_to)
    assert reply == {"type": groups.ACTOR_REPLY, "response_id": None}
    actor.caller_closed()
    await actor.wait_finished()


async def test_the_timer_fails_a_request_the_upstream_never_answers(settings):
    actor, caller, upstream = await _started(settings, OC_SEND_TIMEOUT=0.2)
    actor.caller_frame(events.dumps({"type": "response.create", "event_id": "c1"}))
    await caller.until(lambda c: any(e["type"] == "error" for e in c.events()), timeout=2)
    error = [e for e in caller.events() if e["type"] == "error"][0]["error"]
    assert (error["code"], error["event_id"]) == ("upstream_timeout", "c1")
    actor.caller_closed()
    await actor.wait_finished()


async def test_a_failure_of_the_actor_itself_ends_the_session_as_a_relay_error(settings):
    actor, caller, upstream = await _started(settings)

    async def broken(frame):
        raise RuntimeError("bug")

    caller.send_frame = broken
    upstream.push({"type": "response.output_text.delta", "response_id": "r", "delta": "x"})
    await actor.wait_finished()
    assert upstream.closed
    row = await _row(actor)
    assert (row.status, row.end_reason) == ("failed", "relay_error")
    assert "bug" in row.end_detail


async def test_the_sessions_usage_is_recorded_as_responses_finish(settings):
    actor, caller, upstream = await _started(settings)
    for response_id in ("r1", "r2"):
        upstream.push(
            {
                "type": "response.done",
                "response": {
                    "id": response_id,
                    "status": "completed",
                    "usage": {"total_tokens": 5, "input_tokens": 2},
                },
            }
        )
    await caller.until(lambda c: len(c.frames) == 3)
    actor.caller_closed()
    await actor.wait_finished()
    row = await _row(actor)
    assert row.usage == {"total_tokens": 10, "input_tokens": 4}
    assert (await sync_to_async(row.to_dict)())["usage"] == row.usage


@pytest.mark.parametrize("end", ["caller", "upstream"])
async def test_a_reply_the_end_cut_short_is_shown_final_and_interrupted_once_over(settings, end):
    """The caller hangs up, or the upstream goes away, while an operator watches the agent
    speak: the turn never ends by itself. The page reloaded once the session is over (from
    the event log's final entries) shows it as far as it went, marked interrupted."""
    from apps.console.transcripts import ended_transcript

    actor, caller, upstream = await _started(settings)
    layer = get_channel_layer()
    watcher = await layer.new_channel()
    actor.operator_message({"type": groups.SESSION_WATCH, "channel": watcher, "user": "ann"})
    async with asyncio.timeout(2):
        await layer.receive(watcher)  # the snapshot: the deltas are read from now on
    upstream.push({"type": "response.created", "response": {"id": "r1", "status": "in_progress"}})
    upstream.push(
        {"type": "response.output_text.delta", "response_id": "r1", "item_id": "i1", "delta": "Ah"}
    )
    await caller.until(lambda c: len(c.frames) == 3)
    if end == "caller":
        actor.caller_closed()
    else:
        upstream.close_from_upstream(1006)
    await actor.wait_finished()
    session = await _row(actor)
    entries, _ = await sync_to_async(ended_transcript)(session, [])
    assert [(e["id"], e["text"], e["interrupted"]) for e in entries] == [("i1", "Ah", True)]


async def test_a_response_that_comes_after_its_request_timed_out_is_in_the_history(settings):
    """The request stays `failed` (`upstream_timeout`); its row gets the late response's id,
    output and usage, its error message what became of the response, and the session's
    event log a `request.status` with the request as it now is."""
    from apps.events.models import Event

    actor, caller, upstream = await _started(settings, OC_SEND_TIMEOUT=0.2)
    actor.caller_frame(events.dumps({"type": "response.create", "event_id": "c1"}))
    await caller.until(lambda c: any(e["type"] == "error" for e in c.events()), timeout=2)
    [create] = [e for e in upstream.sent_events() if e["type"] == "response.create"]
    tag = {"oc_request": create["response"]["metadata"]["oc_request"]}
    upstream.push({"type": "response.created", "response": {"id": "r1", "metadata": tag}})
    output = [{"id": "i1", "type": "message", "role": "assistant",
               "content": [{"type": "output_text", "text": "Late, sorry"}]}]
    upstream.push({"type": "response.done", "response": {
        "id": "r1", "status": "completed", "metadata": tag, "output": output,
        "usage": {"total_tokens": 7}}})
    await caller.until(lambda c: any(e["type"] == "response.done" for e in c.events()))
    actor.caller_closed()
    await actor.wait_finished()
    await _row(actor)
    row = await ResponseRequest.objects.aget(id=tag["oc_request"])
    assert (row.status, row.error_code) == ("failed", "upstream_timeout")
    came = (row.response_id, row.output_text, row.usage)
    assert came == ("r1", "Late, sorry", {"total_tokens": 7})
    assert row.error_message.endswith("Its response came later and ended completed.")
    logged = [
        json.loads(payload)["request"]
        async for payload in Event.objects.filter(
            session_key=actor.key, type="request.status"
        ).order_by("id").values_list("payload", flat=True)
    ]
    mine = [r for r in logged if r["id"] == row.id]
    assert [r["status"] for r in mine][-2:] == ["failed", "failed"]
    assert (mine[-1]["response_id"], mine[-2]["response_id"]) == ("r1", None)
