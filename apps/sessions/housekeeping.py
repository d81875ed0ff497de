"""Housekeeping: one task per process (per event loop) that keeps the table honest.

- **Pickup**, the safety net under the "new request" ping: every `OC_PICKUP_INTERVAL`
  seconds it asks the table for operator requests still `queued` in the sessions this process
  holds, and hands each to its actor as a ping would. The actor ignores requests it already
  knows, so a pinged request is never sent twice; one whose ping was lost is sent at most an
  interval (plus a grace period for pings in flight) late.
- **Heartbeat**: every `OC_HEARTBEAT_INTERVAL` seconds it stamps `heartbeat_at` on the
  sessions this process holds (one UPDATE for all of them). The stamp is written by the
  history writer, in order with the sessions' other writes: it is the one writer of this
  process's session rows, so two transactions of the process never lock them in opposite
  orders (PostgreSQL found such deadlocks between a beat and a batch of usage updates).
- **Sweep**: sessions of other processes whose heartbeat is older than
  `OC_SESSION_STALE_AFTER` seconds belong to a process that died; they are marked `failed`
  (`session_lost`) with every pending request, so nothing waits forever, and those who
  followed them through the channel layer are told, as the dead actor would have told them:
  operators watching get the requests' ends and `ended`, listeners `listen.ended`. After
  losing the database a process judges no one for `OC_SESSION_STALE_AFTER`: no holder could
  write its heartbeat meanwhile. A holder that was only held up (paused, its writes stalled)
  finds its swept sessions at its next heartbeat and ends them too (`end_swept`): their
  callers are told, and the sweep's record stands.
- **Lease**: so that such a holder does nothing for a swept session before it knows (a
  request the sweep failed sent upstream after all, a response finishing one the sweep
  failed), each actor asks the `Lease` before it handles anything, and the lease asks the
  table only once no heartbeat has vouched for the sessions for longer than the sweep could
  wait (see `Lease`).

The task starts with the first connection or request the process serves (see
`operator_console.asgi`), so every live process sweeps, not only those holding sessions.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, Protocol

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection, transaction

from apps.realtime import tools
from apps.realtime.relay import LOST_CALL
from apps.sessions import groups, metrics, recorder
from apps.sessions.db import db_async, log_failure
from apps.sessions.history import writer as history
from apps.sessions.listening import LISTEN_ENDED
from apps.sessions.loops import per_loop
from apps.sessions.models import LiveSession, ResponseRequest, ToolApproval
from apps.sessions.process import PROCESS_ID

log = logging.getLogger(__name__)

OPERATOR_ORIGINS = (ResponseRequest.Origin.CONSOLE, ResponseRequest.Origin.API)
# A request younger than this is left to its ping.
GRACE = timedelta(seconds=0.5)
# Other apps' upkeep, run by every process at its housekeeping's start and then every
# CHORE_INTERVAL seconds (apps/events prunes its log and starts its webhook worker here).
CHORE_INTERVAL = 30.0
chores: list[Callable[[], Awaitable[object]]] = []
# Other apps' last words at a graceful stop, once the sessions have ended and been written:
# the operators' sockets and streams this process serves are closed saying why, so that
# they reconnect (to another process) instead of finding them cut.
farewells: list[Callable[[], Awaitable[object]]] = []
# How long a graceful stop waits, from the signal, for its sessions to end and be written: a
# database busy meanwhile (SQLite locked by another connection, rows locked, a failover) that
# answers within it still gets them `server_shutdown`. With the margin below, under the 10 s a
# container runtime gives a stopped process before it kills it.
STOP_GRACE = 7.0
# A stop still not over this long after the grace (a thread that waits for the stopped event
# loop, the database still locked at exit) ends the process all the same (`exit_at_the_latest`).
EXIT_MARGIN = 2.0
LOST = "The process holding the session stopped; the session is lost."
# Why a stopping process takes no new session, and closes its operators' sockets.
STOPPING = "This server is restarting; connect again."


class Refusal(NamedTuple):
    """Why a process takes no new session: an error code and the message that says it."""

    code: str  # `server_restarting` (it is stopping) or `too_many_sessions`
    message: str


class Holder(Protocol):
    key: uuid.UUID

    def operator_message(self, message: dict) -> None: ...

    def shutdown(self) -> None: ...

    async def wait_finished(self, timeout: float = 5.0) -> None: ...


class Lease:
    """How long the sessions this process holds are surely its own: no other process can have
    swept them before `until` (a `time.monotonic()`), since a heartbeat that stamped every one
    of them was committed less than `OC_SESSION_STALE_AFTER` before (less one heartbeat
    interval, for the clocks of other machines and a sweep judged as of its start).

    A process that was paused (SIGSTOP, a frozen VM) or whose writes stalled finds its lease
    run out when it goes on. Before an actor then handles anything (a frame that arrived
    meanwhile, a tick, an operator's message) it asks `swept`: one query for all the sessions
    held, at most once a heartbeat interval, whose answer the actors share. A swept session
    ends at once (`RelayCore.lost`), before anything of it is sent or recorded; the others go
    on. A query that fails, or that has not answered within `_PATIENCE`, lets them go on, as
    before there was a lease: nothing can be known, and a call is not stopped for a database
    outage (the question goes on, and its answer is used when it comes). Until the next
    heartbeat that stamps every session held renews the lease, each input costs a set lookup.

    While it has run out, the history writer leaves out any change of a request the table
    has as over (`history.without_settled`): the writes handed in before the pause, or held
    while the database could not be reached, do not undo the sweep's record. What it does
    not cover: a request the sweep failed that an actor sends upstream while the table cannot
    be asked (the call goes on), and a sweep made between the query and the next heartbeat."""

    def __init__(self, holders: dict[uuid.UUID, Holder]) -> None:
        self._holders = holders
        self.until = time.monotonic() + _lease_length()
        self._swept: frozenset[uuid.UUID] = frozenset()
        self._asked_at = -math.inf
        self._asking: asyncio.Future | None = None
        self._patient_until = -math.inf  # until when the actors wait for the question asked

    def expired(self) -> bool:
        return time.monotonic() > self.until

    def renew(self, beat_at: float) -> None:
        """A heartbeat begun at `beat_at` stamped every session held, and is committed (it may
        be called on the history writer's thread)."""
        self.until = max(self.until, beat_at + _lease_length())

    async def swept(self, key: uuid.UUID) -> bool:
        """Whether another process swept this session as lost, as the table said at most a
        heartbeat interval ago."""
        interval = settings.OC_HEARTBEAT_INTERVAL
        if self._asking is None and time.monotonic() - self._asked_at >= interval:
            self._asking = asyncio.ensure_future(self._ask())
            self._patient_until = time.monotonic() + _PATIENCE
        patience = self._patient_until - time.monotonic()
        if self._asking is not None and patience > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._asking), patience)
        return key in self._swept

    async def _ask(self) -> None:
        asked_at = time.monotonic()
        try:
            keys = list(self._holders)
            self._swept = frozenset(await db_async(_swept)(keys)) if keys else frozenset()
        except Exception as exc:
            log_failure(log, "could not ask whether this process's sessions were swept", exc)
            asked_at = time.monotonic()  # the next question an interval after this failure
        finally:
            self._asked_at, self._asking = asked_at, None


# How long the actors wait, together, for the table's answer once the lease has run out. A
# paused process's question is answered at once; one unanswered this long meets a database
# that is away or stalled, for which the pool waits up to its `timeout` for a connection, and
# the calls are not held up for that.
_PATIENCE = 0.5


def _lease_length() -> float:
    return settings.OC_SESSION_STALE_AFTER - settings.OC_HEARTBEAT_INTERVAL


class Housekeeping:
    def __init__(self) -> None:
        self.holders: dict[uuid.UUID, Holder] = {}
        self.lease = Lease(self.holders)
        self._task: asyncio.Task | None = None
        # The loop time from which this process judges other processes' heartbeats (see sweep).
        self._judge_from = -math.inf
        self.stopping = False  # told to stop (`shutdown`): no more sessions are taken
        self.answering = 0  # HTTP requests being answered (`operator_console.asgi`)
        self._none_answering = asyncio.Event()

    def request_began(self) -> None:
        self.answering += 1
        self._none_answering.clear()

    def request_ended(self) -> None:
        self.answering -= 1
        if not self.answering:
            self._none_answering.set()

    def start(self) -> None:
        # The history writer asks this process's lease before it writes over the sweep's record.
        history.doubtful = self.lease.expired
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="housekeeping")

    def add(self, holder: Holder) -> None:
        self.holders[holder.key] = holder
        self.start()

    def discard(self, holder: Holder) -> None:
        if self.holders.get(holder.key) is holder:
            del self.holders[holder.key]

    def full(self) -> Refusal | None:
        """Why this process takes no more sessions (it holds OC_MAX_SESSIONS), or None. The
        relay refuses a caller with it, and an attached call is refused before it is placed
        or answered: a call the console could not steer is not taken. A process told to stop
        takes none either (`stopping`): the load balancer may send it some while it drains."""
        if self.stopping:
            return Refusal("server_restarting", STOPPING)
        if len(self.holders) < settings.OC_MAX_SESSIONS:
            return None
        message = f"This server holds its maximum of {settings.OC_MAX_SESSIONS} live sessions; try again later."
        return Refusal("too_many_sessions", message)

    async def shutdown(self, grace: float = STOP_GRACE) -> int:
        """End every session this process holds (`server_shutdown`: their callers are told,
        their pending requests fail) and wait until that is in the table, their recordings
        included (the recorder's thread does not outlive the process).

        All of it within `grace` seconds, one budget: the history waits for a busy database
        (`history.HistoryWriter._commit`), and meanwhile so does the process. What is not
        written by then is left to the sweep (`session_lost`): the operators are told goodbye
        all the same. Last, the HTTP requests being answered are waited for (`answering`):
        one held up too (its write behind the same lock) comes back to the event loop, which
        must still run then; a thread of Django's that came back to a stopped loop would wait
        for it for ever and keep the process."""
        self.stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace

        def left() -> float:
            return max(0.0, deadline - loop.time())

        holders = list(self.holders.values())
        for holder in holders:
            holder.shutdown()
        await asyncio.gather(*(holder.wait_finished(left()) for holder in holders))
        await asyncio.to_thread(recorder.flush, left())
        try:
            await history.flush(left())
        except TimeoutError:
            log.warning(
                "stopping: the database took none of the sessions' ends within %g s; a sweep "
                "will find them session_lost",
                grace,
            )
        for farewell in farewells:
            try:
                await farewell()
            except Exception as exc:  # its own failure only: the process stops anyway
                log_failure(log, f"farewell {farewell.__qualname__} failed", exc)
        if self.answering:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._none_answering.wait(), left())
        return len(holders)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_pickup = next_beat = next_chores = loop.time()
        while True:
            now = loop.time()
            if now >= next_chores:
                next_chores = now + CHORE_INTERVAL
                for chore in chores:
                    try:
                        await chore()
                    except Exception as exc:  # its own failure only: the heartbeat goes on
                        log_failure(log, f"housekeeping chore {chore.__qualname__} failed", exc)
            try:
                if now >= next_beat:
                    next_beat = now + settings.OC_HEARTBEAT_INTERVAL
                    await self.heartbeat()
                    await self.sweep()
                    await self.end_swept()
                if now >= next_pickup:
                    next_pickup = now + settings.OC_PICKUP_INTERVAL
                    await self.pickup()
            except Exception as exc:  # a database hiccup: try again next round
                log_failure(log, "housekeeping failed; trying again", exc)
            await asyncio.sleep(max(0.01, min(next_pickup, next_beat) - loop.time()))

    async def pickup(self) -> int:
        """Hand every waiting operator request of the held sessions to its actor."""
        keys = list(self.holders)
        if not keys:
            return 0
        rows = await db_async(_waiting_requests)(keys)
        for row in rows:
            holder = self.holders.get(row.session_id)
            if holder is not None:
                holder.operator_message({"type": groups.SESSION_REQUEST, "request": groups.request_message(row)})
        return len(rows)

    async def heartbeat(self) -> int:
        """Have this process's sessions stamped; returns how many. The lease is renewed once
        the stamps are committed (with none held, at once: there is nothing to sweep). Not
        before the writes handed in earlier are: those of sessions swept meanwhile, which
        ended since, must still find it run out (`history.without_settled`)."""
        keys = list(self.holders)
        if keys or history.pending():
            history.submit(functools.partial(_beat, keys, self.lease))
        else:
            self.lease.renew(time.monotonic())
        return len(keys)

    async def end_swept(self) -> int:
        """Tell the actors of held sessions that another process swept as lost (this one
        wrote no heartbeat for OC_SESSION_STALE_AFTER: it was paused, or its writes stalled)
        to end them: everyone else already has them as over, and none can steer them."""
        keys = list(self.holders)
        swept = await db_async(_swept)(keys) if keys else []
        for key in swept:
            holder = self.holders.get(key)
            if holder is not None:
                log.warning("session %s was swept as lost by another process; ending it", key)
                holder.operator_message({"type": groups.SESSION_LOST})
        return len(swept)

    async def sweep(self) -> list[str]:
        """Fail the sessions of processes that stopped beating. A process that could not reach
        the database (a call failed, or waited for it longer than a heartbeat interval) judges
        no one until it has reached it for OC_SESSION_STALE_AFTER again: the holders could not
        write their heartbeats meanwhile either, and live sessions would be failed."""
        loop = asyncio.get_running_loop()
        started, now = loop.time(), datetime.now(UTC)  # judged as of the start, not of the answer
        judging = started >= self._judge_from
        try:
            if judging:
                lost = await db_async(sweep_lost_sessions)(now=now)
            else:
                await db_async(_reach_database)()
                lost = {}
        except Exception:
            self._judge_from = math.inf
            raise
        if self._judge_from == math.inf or loop.time() - started > settings.OC_HEARTBEAT_INTERVAL:
            self._judge_from = loop.time() + settings.OC_SESSION_STALE_AFTER
        for session_id, session in lost.items():
            log.warning("session %s lost: its process stopped sending heartbeats", session_id)
            metrics.figures.requests_lost(session.origins)
            metrics.figures.approvals_lost(session.approvals)
            await _tell_followers(session_id, session)
        return list(lost)


def _swept(keys: list[uuid.UUID]) -> list[uuid.UUID]:
    return list(
        LiveSession.objects.filter(id__in=keys, end_reason="session_lost").values_list(
            "id", flat=True
        )
    )


def _waiting_requests(keys: list[uuid.UUID]) -> list[ResponseRequest]:
    before = datetime.now(UTC) - GRACE
    return list(
        ResponseRequest.objects.filter(
            session_id__in=keys,
            status=ResponseRequest.Status.QUEUED,
            origin__in=OPERATOR_ORIGINS,
            created_at__lt=before,
        ).order_by("created_at")
    )


def _reach_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _beat(keys: list[uuid.UUID], lease: Lease) -> int:
    beat_at = time.monotonic()
    stamped = LiveSession.objects.filter(id__in=keys, status__in=LiveSession.OPEN).update(
        heartbeat_at=datetime.now(UTC), process_id=PROCESS_ID
    )
    # Not stamped: ended since (the lease holds), or swept (its actor must learn it first).
    if stamped == len(keys) or not _swept(keys):
        transaction.on_commit(functools.partial(lease.renew, beat_at))
    return stamped


@dataclass(frozen=True, slots=True)
class LostSession:
    key: uuid.UUID
    requests: list[str]  # the ids of the requests failed with it
    origins: list[str]  # theirs, in the same order
    at: datetime
    detail: str = LOST  # why, in words, as the session's end and its requests' errors say
    approvals: int = 0  # how many of its approval requests expired with it


def sweep_lost_sessions(*, now: datetime | None = None) -> dict[str, LostSession]:
    """Fail the open sessions of processes that stopped beating, their pending requests and
    approvals.
    Returns the sessions failed, by id (public, or the row key while still connecting)."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=settings.OC_SESSION_STALE_AFTER)
    stale = list(
        LiveSession.objects.filter(status__in=LiveSession.OPEN, heartbeat_at__lt=cutoff)
        .exclude(process_id=PROCESS_ID)
        .values_list("id", "upstream_id", "kind")
    )
    lost = {}
    for key, upstream_id, kind in stale:
        # An attached call was only steered from here: the call may go on without the console.
        detail = LOST if kind == LiveSession.Kind.RELAY else LOST_CALL
        with transaction.atomic():
            # Conditional: another process's sweep, or a late heartbeat, may have come first.
            claimed = LiveSession.objects.filter(
                id=key, status__in=LiveSession.OPEN, heartbeat_at__lt=cutoff
            ).update(
                status=LiveSession.Status.FAILED,
                end_reason="session_lost",
                end_detail=detail,
                ended_at=now,
            )
            if not claimed:
                continue
            pending, origins = _pending(key)
            ResponseRequest.objects.filter(id__in=pending).update(
                status=ResponseRequest.Status.FAILED,
                error_code="session_lost",
                error_message=detail,
                finished_at=now,
            )
            # Nobody can decide its pending tool approvals now: expired, as at any session's end.
            undecided = ToolApproval.objects.filter(
                session_id=key, status=ToolApproval.Status.PENDING
            )
            expired = list(undecided.values_list("id", flat=True))
            ToolApproval.objects.filter(id__in=expired).update(
                status=ToolApproval.Status.EXPIRED, reason=tools.UNDECIDED_AT_END, decided_at=now
            )
            if history.recorder is not None:  # the event log: these ends, in this transaction
                history.recorder.session_lost(
                    key=key, request_ids=pending, approval_ids=expired
                )
        lost[upstream_id or str(key)] = LostSession(
            key=key,
            requests=pending,
            origins=origins,
            at=now,
            detail=detail,
            approvals=len(expired),
        )
    return lost


def _pending(key: uuid.UUID) -> tuple[list[str], list[str]]:
    """The ids of the session's requests not yet over, and their origins."""
    rows = list(
        ResponseRequest.objects.filter(session_id=key)
        .exclude(status__in=ResponseRequest.TERMINAL)
        .values_list("id", "origin")
    )
    return [request_id for request_id, _ in rows], [origin for _, origin in rows]


async def _tell_followers(session_id: str, lost: LostSession) -> None:
    """What the lost session's actor would have sent at its end: to the operators watching,
    each failed request and `ended`; to the listeners, `listen.ended`."""
    failed = {
        "type": groups.CONSOLE_REQUEST,
        "session_id": session_id,
        "status": ResponseRequest.Status.FAILED,
        "at": lost.at.timestamp(),
        "error_code": "session_lost",
        "error_message": lost.detail,
    }
    ended = {
        "type": groups.CONSOLE_ENDED,
        "session_id": session_id,
        "status": LiveSession.Status.FAILED,
        "reason": "session_lost",
        "code": None,
        "detail": lost.detail,
    }
    messages = [{**failed, "request_id": request_id} for request_id in lost.requests] + [ended]
    layer = get_channel_layer()
    try:
        for message in messages:
            await layer.group_send(groups.watch_group(lost.key), groups.console_frame(message))
        await layer.group_send(groups.listen_group(lost.key), {"type": LISTEN_ENDED})
    except Exception as exc:  # the table has it; a page shows it when reloaded
        log.warning("telling the followers of %s it was lost failed: %r", session_id, exc)


# This event loop's housekeeping.
housekeeping = per_loop(Housekeeping)


def install_shutdown_trigger() -> None:
    """Under Daphne, end this process's sessions cleanly when it is told to stop.

    Daphne runs on Twisted's asyncio reactor, which turns SIGTERM and SIGINT into a reactor
    shutdown; Daphne then cancels every connection's task at once, so without this a caller's
    session would end as if the caller had left, or not at all if the process exits first,
    and another process's sweep would later find it `session_lost`. A "before shutdown"
    trigger that returns a Deferred holds the reactor until it fires: each session ends with
    `server_shutdown`, its caller gets close 1012 (service restart), and the history is
    written. Registered when the application loads, so it runs before Daphne's own trigger.
    Outside Daphne (no reactor imported yet) it does nothing: importing the reactor would
    install one.
    """
    import sys

    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        return
    from twisted.internet import defer

    def before_shutdown():
        log.info("stopping: ending this process's sessions")
        atexit.register(finish_unfinished_tasks, asyncio.get_event_loop())
        exit_at_the_latest(STOP_GRACE + EXIT_MARGIN)
        return defer.Deferred.fromFuture(asyncio.ensure_future(housekeeping().shutdown()))

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)


def exit_at_the_latest(seconds: float) -> threading.Timer:
    """End the process `seconds` from now if it has not ended by then (exit status 1).

    A stop is bounded by its grace only while the event loop runs. After it, a thread can keep
    the process: Python joins the request threads at exit, and one that was held up (by a
    locked database, say) and then waits for the stopped loop, as a sync view going back to
    async middleware does, is never done. A supervisor would kill the process at its own limit,
    or never (`make run`); this one ends it at a known one, saying so.
    """

    def exit_now() -> None:
        log.error("stopping: not done %g s after the signal; exiting now", seconds)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(1)

    timer = threading.Timer(seconds, exit_now)
    timer.daemon = True
    timer.start()
    return timer


def finish_unfinished_tasks(loop: asyncio.AbstractEventLoop, timeout: float = 2.0) -> int:
    """At exit, cancel the tasks a stopped loop would never resume, and let them finish.

    Twisted's reactor stops the asyncio loop with some tasks still pending (a connection's
    `receive` woken, say, but not yet run). Left alone, Python 3.11.7 closes their coroutines
    only while it finalizes its modules, and closing one that waits in `asyncio.Queue.get`
    formats a Future's repr after `_asyncio` has cleared its globals: a segfault at exit
    (CPython gh-113566, fixed in 3.11.8). Here, from `atexit`, while every module is whole,
    they are cancelled and run to their end, as `asyncio.run` does with what is left; one that
    does not end within `timeout` has its coroutine closed. Returns how many there were.
    """
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks and not loop.is_closed() and not loop.is_running():
        loop.run_until_complete(asyncio.wait(tasks, timeout=timeout))
    for task in tasks:
        if not task.done():
            with contextlib.suppress(Exception):  # a coroutine that will not close: exit anyway
                task.get_coro().close()
    return len(tasks)
