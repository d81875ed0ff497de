"""A stream whose client has gone ends, even while events wait for it.

Twisted tells the stream's `Flow` that the connection is gone (`stopProducing`); `writable`
then answers False at once. The stream once took that for "still full" and asked again
without ever yielding to the event loop, which held the whole Daphne process at 100 % CPU.
The scenario runs on a loop in a thread of its own, so that a stream spinning again fails
this test instead of hanging the suite."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid

import pytest

from apps.events.flow import Flow
from apps.events.stream import follow, hub
from tests.support.realtime import eventually

pytestmark = pytest.mark.django_db(transaction=True)


async def a_client_leaves_with_events_waiting() -> list[bytes]:
    flow = Flow(send=None)  # no Twisted request: attach() registers nothing
    stream = follow(session_key=None, after=None, gap=None, flow=flow)
    sent = [await anext(stream)]  # the `retry:` preamble
    following = asyncio.ensure_future(anext(stream))  # joins the hub, waits for events
    the_hub = hub()
    await eventually(lambda: the_hub.everything)
    flow.stopProducing()  # Twisted: the connection is gone
    the_hub._hand_out([(the_hub.cursor + 1, uuid.uuid4(), "request.status", "{}")])
    with contextlib.suppress(StopAsyncIteration):
        sent.append(await following)
    return sent


def test_a_stream_whose_client_left_ends_with_events_waiting():
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["sent"] = asyncio.run(a_client_leaves_with_events_waiting())
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="stream-whose-client-left", daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the stream kept running after its client left"
    assert "error" not in outcome, outcome.get("error")
    assert len(outcome["sent"]) == 1 and outcome["sent"][0].startswith(b"retry:")
