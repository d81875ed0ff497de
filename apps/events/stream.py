"""Server-Sent Events of the event log: `GET /api/v1/events` and `/sessions/{id}/events`.

One `Hub` per process (per event loop) serves all of its streams, and does nothing while
nobody follows. The events this process commits come to it from the committing thread
(`notify`), and it hands them out as they are, one turn of the loop after the commit, when
they follow on from the last event it handed out. When they do not (another process's
events, or a commit it has not yet heard of, lie between), it reads the log from there
instead, as it does every `OC_EVENTS_POLL_INTERVAL` seconds for other processes' events.
Each event's frame is made once and handed to every follower whose filter it passes; a
follower's queue holds at most `OC_EVENTS_FOLLOWER_QUEUE` events, and one that is full is
dropped (its stream ends) rather than waited for: neither a call nor the history writer ever
waits on a reader.

A stream starts with the events after `Last-Event-ID` (or `last_event_id=` in the query),
read from the log page by page, then joins the hub where the log's newest id was when it
joined, and goes on with what the hub hands it: no event is missed or sent twice, as ids
grow in commit order (see `recorder`).

`Last-Event-ID`:
- absent: events from now on (after the newest as the stream is asked for);
- `0`: every event the log still holds (the last `OC_EVENTS_RETENTION` seconds);
- an id older than what the log holds: the stream starts with a `stream.gap` event (no id)
  naming it and the oldest id kept, then everything kept; a script should re-read the state
  it needs (`GET /api/v1/sessions/{id}`, `/responses`) and carry on;
- not a whole number, or above the newest id: `400 invalid_last_event_id`.

A session's stream ends after its `session.ended`; asked for again with that id (or for an
ended session without one), it answers `204 No Content`, which tells an EventSource to stop.
What the log holds of the session after its end (a `session.updated`: it was relabelled) is
on `/events` and the webhooks, not on that stream.
An ended session whose events after the id are all pruned, its end included, has a stream
of the `stream.gap` event alone, which ends with it. That event has an id, the newest id
pruned: an EventSource reconnects with it, and having missed nothing since, gets the 204
(without the id it would reconnect with the old one, and be told the gap again, for ever).
A stream also ends once its token is revoked (looked at every `OC_EVENTS_KEEPALIVE` seconds).

A token has at most `OC_MAX_STREAMS_PER_TOKEN` streams open at once in this process; one more
is refused `429 too_many_streams` before it starts. Each holds a `StreamSlot` from then until
it ends, however it ends (`follow`'s `finally`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Max, Min
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from apps.events import notify
from apps.events.flow import Flow, flow_of
from apps.events.models import Event, EventLogHorizon, event_body
from apps.sessions.caps import PerKeyCap
from apps.sessions.db import db_async, log_failure
from apps.sessions.loops import per_loop
from apps.sessions.models import LiveSession
from apps.sessions.services import ServiceError, session_found
from apps.sessions.tokens import api_token_revoked

log = logging.getLogger(__name__)

PAGE = 500  # events per read of the log
COALESCE = 0.05  # s: at least this long between two reads, so a busy log is read in batches
ENDED = frozenset({LiveSession.Status.ENDED, LiveSession.Status.FAILED})
RETRY_MS = 2000


class InvalidLastEventId(ServiceError):
    status, code = 400, "invalid_last_event_id"


class TooManyStreams(ServiceError):
    status, code = 429, "too_many_streams"


streams = PerKeyCap()  # the open streams of each token (by its id), in this process


class StreamSlot:
    """One stream's place under its token's cap, from before its answer is made until it
    ends. A stream never started (a HEAD's, whose body is not read) drops it unreleased: the
    cap holds it weakly, so it goes with the stream."""

    __slots__ = ("token_id", "__weakref__")

    def __init__(self, token_id: int) -> None:
        self.token_id = token_id

    def release(self) -> None:
        streams.release(self.token_id, self)


def take_stream_slot(token_id: int) -> StreamSlot:
    slot = StreamSlot(token_id)
    limit = settings.OC_MAX_STREAMS_PER_TOKEN
    if not streams.take(token_id, slot, limit):
        raise TooManyStreams(
            f"This token already has {limit} event streams open on this server process, the "
            "most OC_MAX_STREAMS_PER_TOKEN allows; close one before opening another."
        )
    return slot


# JSON leaves these unescaped in strings, and a client that splits lines as `str.splitlines`
# does (httpx's `iter_lines`, so the README's script) would cut a data line at them.
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def frame(event_id: int, payload: str) -> bytes:
    data = event_body(event_id, payload).translate(_LINE_BREAKS)
    return f"id: {event_id}\ndata: {data}\n\n".encode()


# ---------------------------------------------------------------------------- the hub


class Follower:
    """One stream's queue. `offer` never blocks: a full queue drops the follower, unless its
    client is taking what is sent (its `Flow` is not paused). The queue bounds what waits for
    a client that does not read; a burst handed out at once (a page of the log, a busy
    commit) is not that, and is no more than one hand-out, which the stream then sends."""

    __slots__ = ("session_key", "frames", "wake", "dropped", "ending", "limit", "after", "flow")

    def __init__(self, session_key: uuid.UUID | None, limit: int) -> None:
        self.session_key = session_key
        self.frames: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.dropped = False
        self.ending = False  # the session's end is queued: the stream ends after it
        self.limit = limit
        self.after = 0  # events up to this id were sent from the log: the hub's are skipped
        self.flow: Flow | None = None  # the stream's connection, under Daphne (`farewell`)

    def offer(self, event_id: int, data: bytes, *, last: bool = False) -> bool:
        if event_id <= self.after or self.ending:
            return True  # sent from the log already, or after the session's end: not for it
        if len(self.frames) >= self.limit and not (self.flow is not None and self.flow.taking):
            self.dropped = True
            self.wake.set()
            return False
        self.frames.append(data)
        self.ending = self.ending or last
        self.wake.set()
        return True


class Hub:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.everything: set[Follower] = set()
        self.by_session: dict[uuid.UUID, set[Follower]] = {}
        self.cursor = 0  # the newest event handed out
        self.reads = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        notify.listen(self)

    @property
    def followers(self) -> int:
        return len(self.everything) + sum(len(s) for s in self.by_session.values())

    async def join(self, follower: Follower) -> int:
        """Follow from now on; returns the id after which this follower gets every event."""
        async with self._lock:
            if self._task is None or self._task.done():
                self.cursor = await db_async(newest_id)()
                self._task = self.loop.create_task(self._run(), name="event-hub")
            if follower.session_key is None:
                self.everything.add(follower)
            else:
                self.by_session.setdefault(follower.session_key, set()).add(follower)
            return self.cursor

    def leave(self, follower: Follower) -> None:
        if follower.session_key is None:
            self.everything.discard(follower)
            return
        followers = self.by_session.get(follower.session_key)
        if followers is not None:
            followers.discard(follower)
            if not followers:
                del self.by_session[follower.session_key]

    def committed_threadsafe(self, rows: Sequence[notify.Row]) -> None:
        if self._task is not None and not self._task.done() and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self.loop.call_soon_threadsafe(self._committed, rows)

    def _committed(self, rows: Sequence[notify.Row]) -> None:
        """Events this process has just committed: handed out now if they follow on from the
        cursor (ids grow in commit order, so nothing can come between), else read from the
        log, where whatever lies between them and the cursor is."""
        fresh = [row for row in rows if row[0] > self.cursor]
        if rows and not fresh:
            return  # a read of the log has handed them out already
        ids = [row[0] for row in fresh]
        if ids and ids == list(range(self.cursor + 1, self.cursor + 1 + len(ids))):
            self._hand_out(fresh)
        else:
            self._wake.set()  # no rows given, or some lie between: read the log

    async def _run(self) -> None:
        while self.followers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.OC_EVENTS_POLL_INTERVAL):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.catch_up()
            except Exception as exc:  # the database hiccuped: the next round reads from the same id
                log_failure(log, "reading the event log failed", exc)
            await asyncio.sleep(COALESCE)

    async def catch_up(self) -> None:
        """Hand out every event the log holds after the cursor."""
        while self.followers:
            rows = await db_async(events_after)(self.cursor, None, PAGE)
            self.reads += 1
            self._hand_out(rows)
            if len(rows) < PAGE:
                break

    def _hand_out(self, rows: list[tuple[int, uuid.UUID, str, str]]) -> None:
        dropped: list[Follower] = []
        everything, by_session = self.everything, self.by_session
        for event_id, key, kind, payload in rows:
            if event_id <= self.cursor:
                continue  # handed out already, as this process committed it
            data = frame(event_id, payload)
            for follower in everything:
                if not follower.offer(event_id, data):
                    dropped.append(follower)
            session = by_session.get(key)
            if session:
                last = kind == "session.ended"
                for follower in session:
                    if not follower.offer(event_id, data, last=last):
                        dropped.append(follower)
            self.cursor = event_id
        for follower in dropped:
            self.leave(follower)


hub = per_loop(Hub)

STOPPING = b": the server is restarting; reconnect with Last-Event-ID\n\n"


async def farewell() -> int:
    """At a graceful stop (a housekeeping farewell, once this process's sessions have ended
    and been written): each stream it serves gets the events queued for it, its own
    sessions' ends among them, and a last comment, and ends cleanly, so that a script
    reconnects with `Last-Event-ID` (to another process) instead of finding it cut. Daphne
    has cancelled the streams' tasks as it began to stop; their connections, still open,
    take the end through the `send` their `Flow` holds."""
    the_hub = hub()
    # The sessions' ends are committed, but the hub may not have handed them out yet (its
    # notice is on its way, or it reads the log on its own time): it reads up to them now.
    with contextlib.suppress(Exception):  # the database went: the streams end with what they have
        await the_hub.catch_up()
    followers = [*the_hub.everything, *(f for s in the_hub.by_session.values() for f in s)]
    for follower in followers:
        the_hub.leave(follower)
        flow, follower.flow = follower.flow, None
        if flow is None or flow.stopped:
            continue
        flow.detach()
        body = b"".join(follower.frames) + STOPPING
        with contextlib.suppress(Exception):  # the client went meanwhile
            await flow.send({"type": "http.response.body", "body": body, "more_body": False})
    return len(followers)


# ---------------------------------------------------------------------------- the log


def newest_id() -> int:
    return Event.objects.aggregate(newest=Max("id"))["newest"] or 0


def events_after(
    after: int, session_key: uuid.UUID | None, limit: int, through: int | None = None
) -> list[tuple[int, uuid.UUID, str, str]]:
    events = Event.objects.filter(id__gt=after)
    if through is not None:
        events = events.filter(id__lte=through)
    if session_key is not None:
        events = events.filter(session_key=session_key)
    return list(events.order_by("id").values_list("id", "session_key", "type", "payload")[:limit])


def ended_after(after: int, session_key: uuid.UUID) -> bool:
    """Whether the session's `session.ended` is in the log after `after`."""
    ended = Event.objects.filter(id__gt=after, session_key=session_key, type="session.ended")
    return ended.exists()


@dataclass(frozen=True, kw_only=True)
class Gap:
    """Events after `last_event_id`, up to `through`, were pruned (older than the log keeps)."""

    last_event_id: int
    through: int
    oldest_event_id: int | None

    def frame(self, *, ended: bool = False) -> bytes:
        """The `stream.gap` event. On a live stream, without an id: the kept events follow.
        On an ended session's, which ends with it: with `through`, after which nothing of
        the session is kept, as its id (see the module's doc)."""
        goes_on = (
            "the session has ended, and nothing of it after that is kept"
            if ended
            else "the stream goes on from the oldest kept"
        )
        event = {
            "type": "stream.gap",
            "last_event_id": self.last_event_id,
            "oldest_event_id": self.oldest_event_id,
            "message": (
                f"Events after {self.last_event_id} up to {self.through} are older than the "
                f"{settings.OC_EVENTS_RETENTION:g} s the log keeps and are gone; {goes_on}. "
                "Re-read the state you need from the REST hook."
            ),
        }
        event_id = f"id: {self.through}\n" if ended else ""
        return f"{event_id}data: {json.dumps(event)}\n\n".encode()


def check_resume(after: int) -> Gap | None:
    """Refuse an id never given; a `Gap` when events after it were pruned."""
    bounds = Event.objects.aggregate(oldest=Min("id"), newest=Max("id"))
    horizon = EventLogHorizon.objects.filter(pk=1).values_list("pruned_through", flat=True).first() or 0
    newest = max(bounds["newest"] or 0, horizon)
    if after > newest:
        raise InvalidLastEventId(
            f"Last-Event-ID {after} was never given: the newest event is {newest}. "
            "Reconnect without it to follow from now."
        )
    if 0 < after < horizon:
        return Gap(last_event_id=after, through=horizon, oldest_event_id=bounds["oldest"])
    return None


def parse_last_event_id(header: str | None, query: str | None) -> int | None:
    raw = header if header not in (None, "") else query
    if raw is None or raw == "":
        return None
    text = raw.strip()
    # ASCII digits only: str.isdigit() also takes '²' (which int() refuses) and '١' (which
    # int() reads as 1), and this stream never gave such an id.
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise InvalidLastEventId(
            f"Last-Event-ID {raw[:40]!r} is not an event id (a whole number from an event's "
            "'id:' line)."
        )
    return int(text)


# ---------------------------------------------------------------------------- the response


async def event_stream_response(
    request: HttpRequest, *, session_id: str | None, last_event_id: int | None
) -> HttpResponse:
    """The stream, or the refusal (a ServiceError) before anything is sent."""
    session_key = None
    after = last_event_id
    if after is None:
        # From now on: from the newest event as the session's status is read, so that one
        # committed before the stream joins the hub (its end, say) comes from the log.
        after = await db_async(newest_id)()
    if session_id is not None:
        session = await db_async(session_found)(session_id)
        session_key = session.pk
    gap = None
    if last_event_id is not None:
        gap = await db_async(check_resume)(last_event_id)
    if session_key is not None and session.status in ENDED:
        # Nothing more will come unless the client has not yet seen the end (it was committed
        # after `after`: after Last-Event-ID, or after the newest event read just above), or
        # it is gone. (What comes after the end, a relabelling, is for /events: this stream
        # ends there.)
        pending = await db_async(ended_after)(after, session_key)
        if not pending:
            return HttpResponse(status=204) if gap is None else _event_stream(_ended_after(gap))
    token_id = getattr(getattr(request, "auth", None), "pk", None)
    # Taken last, with nothing awaited between it and the stream that gives it back.
    slot = take_stream_slot(token_id) if token_id is not None else None
    return _event_stream(
        follow(
            session_key=session_key,
            after=after,
            gap=gap,
            flow=flow_of(request),
            token_id=token_id,
            slot=slot,
        )
    )


def _event_stream(events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # proxies: pass each event on at once
    return response


async def _ended_after(gap: Gap) -> AsyncIterator[bytes]:
    """An ended session's stream when every event of it after Last-Event-ID is pruned."""
    yield f"retry: {RETRY_MS}\n".encode() + gap.frame(ended=True)


async def follow(
    *,
    session_key: uuid.UUID | None,
    after: int | None,
    gap: Gap | None,
    flow: Flow | None,
    token_id: int | None = None,
    slot: StreamSlot | None = None,
) -> AsyncIterator[bytes]:
    keepalive = settings.OC_EVENTS_KEEPALIVE
    follower = Follower(session_key, settings.OC_EVENTS_FOLLOWER_QUEUE)
    follower.flow = flow
    the_hub = hub()
    if flow is not None:
        flow.attach()
    try:
        yield f"retry: {RETRY_MS}\n: following\n\n".encode()
        if gap is not None:
            yield gap.frame()
        if after is not None:
            # The backlog, page by page, then what came in while it was read.
            while True:
                rows = await db_async(events_after)(after, session_key, PAGE)
                if rows:
                    if not await _room(flow, keepalive):
                        return
                    sent, ended = _through_end(rows, session_key)
                    after = sent[-1][0]
                    yield b"".join(frame(i, p) for i, _, _, p in sent)
                    if ended:
                        return
                if len(rows) < PAGE:
                    break
        # The hub may not have read as far as the backlog did: it skips what was sent.
        follower.after = after or 0
        joined = await the_hub.join(follower)
        while after is not None and after < joined:
            rows = await db_async(events_after)(after, session_key, PAGE, joined)
            if not rows:
                break
            sent, ended = _through_end(rows, session_key)
            after = sent[-1][0]
            yield b"".join(frame(i, p) for i, _, _, p in sent)
            if ended:
                return
        check_token_at = time.monotonic() + keepalive
        while True:
            if token_id is not None and time.monotonic() >= check_token_at:
                check_token_at = time.monotonic() + keepalive
                if await db_async(api_token_revoked)(token_id=token_id):
                    yield b": the token of this stream was revoked\n\n"
                    return
            if follower.dropped:
                log.info("an event follower fell %d events behind and was dropped", follower.limit)
                yield (
                    f": dropped: more than {follower.limit} events were waiting for this "
                    "client; reconnect with Last-Event-ID to catch up\n\n"
                ).encode()
                if flow is not None:
                    flow.abort()
                return
            if not follower.frames:
                follower.wake.clear()
                # Wait no later than the token's next look, which events coming just before it
                # would otherwise put off by up to a keep-alive.
                idle = keepalive
                if token_id is not None:
                    idle = min(keepalive, max(0.0, check_token_at - time.monotonic()))
                try:
                    async with asyncio.timeout(idle):
                        await follower.wake.wait()
                except TimeoutError:
                    yield b": keep-alive\n\n"
                continue
            if not await _room(flow, keepalive):
                if flow.stopped:
                    return  # the client has gone
                continue  # still full: the queue grows until the hub drops this follower
            frames, follower.frames = follower.frames, deque()
            yield b"".join(frames)
            if follower.ending:
                return
    finally:
        if slot is not None:
            slot.release()
        the_hub.leave(follower)
        if flow is not None:
            flow.detach()


def _through_end(
    rows: list[tuple[int, uuid.UUID, str, str]], session_key: uuid.UUID | None
) -> tuple[list[tuple[int, uuid.UUID, str, str]], bool]:
    """The rows a stream sends from the log, and whether it ends with them. A session's
    stream ends with its `session.ended` (what the log holds of the session after it, a
    relabelling, is not for that stream); /events goes on past every session's end."""
    if session_key is not None:
        for index, (_, _, kind, _) in enumerate(rows):
            if kind == "session.ended":
                return rows[: index + 1], True
    return rows, False


async def _room(flow: Flow | None, timeout: float) -> bool:
    return True if flow is None else await flow.writable(timeout)
