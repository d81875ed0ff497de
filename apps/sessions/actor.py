"""SessionActor: one live session, one task, one mailbox.

The relay core (`apps/realtime/relay.py`) decides everything about a session; the actor feeds
it inputs, in the order they arrive, and performs the actions it returns: frames onto the
sockets, rows for the history writer, messages onto the channel layer. Because one task does
all of it, the core needs no locks and each socket has exactly one writer, which keeps frames
in order.

The legs
  caller    zero or one. A relayed session's caller leg is its `/v1/realtime` socket
            (`RelayConsumer`), given when the actor is made. `caller_closed()` detaches it and
            ends the session. A session without a caller leg (an attached call, steered
            through a sideband) drops what the core has for the caller.
  upstream  exactly one while the session lives. The actor opens it as it starts (the
            session's start: `session.created` must follow within OC_UPSTREAM_CONNECT_TIMEOUT)
            and closes it when the session ends. `replace_upstream()` attaches a new one and
            closes the old; frames the old one had sent but the actor had not yet read are
            dropped, since every mailbox item names the leg it came from. An attached call's
            sideband, lost or not opened, is opened again when the core says (`OpenUpstream`).

Everything else reaches the actor through its mailbox: operators' requests, cancels, notes,
interrupts and watches (from the session's channel-layer group, or the table's pickup), the
timer, and the process's shutdown. The timer is armed at the core's `next_deadline`, and
re-armed only when that moves earlier: a tick that comes early finds nothing to do.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

from apps.realtime import events, relay
from apps.realtime.relay import (
    Answer,
    AudioCut,
    AudioTapped,
    CloseCaller,
    ListenersChanged,
    OpenUpstream,
    RelayCore,
    SessionEnded,
    ToCaller,
    ToUpstream,
    ToWatcher,
    ToWatchers,
    TranscriptFinal,
)
from apps.realtime.upstream import failure_detail, failure_status
from apps.sessions import approvals, clock, costs, groups, metrics, records
from apps.sessions.history import writer as history
from apps.sessions.housekeeping import housekeeping
from apps.sessions.legs import UPSTREAM_CLOSED, UPSTREAM_FRAME, Caller, Mailbox, UpstreamLeg
from apps.sessions.listening import AudioTap
from apps.sessions.process import PROCESS_ID
from apps.sessions.rotating import ACTIONS as ROTATION_ACTIONS
from apps.sessions.rotating import FreshLeg
from apps.sessions.upstream import open_upstream

log = logging.getLogger(__name__)

# Mailbox items: (kind, payload, the upstream leg a frame or close came from); the upstream
# leg's own kinds are in `legs`.
CALLER_FRAME = "caller.frame"
CALLER_CLOSED = "caller.closed"
OPERATOR = "operator"
TICK = "tick"
SHUTDOWN = "shutdown"
AUDIO_DUE = "audio.due"  # the audio held for listeners is due (`AudioTap`)
# How long `session.created` waits for the session's row, so that the REST hook knows the id
# the caller is given; past that (a stuck database) it goes out anyway.
NAMED_COMMIT_WAIT = 2.0


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


class SessionActor:
    def __init__(
        self,
        *,
        caller: Caller | None,
        model: str,
        connected_by: str,
        upstream_headers: dict[str, str] | None = None,
        opener: Callable[..., Awaitable[Any]] = open_upstream,
        label: str = "",
        call: dict[str, str] | None = None,
        minted_session: dict[str, Any] | None = None,
    ) -> None:
        self.key = uuid.uuid4()
        # An attached call (`apps/sessions/sideband.py`): kind, call_id and numbers.
        self.call = dict(call or {})
        self.model = model
        self.connected_by = connected_by
        self.label = label
        self.mailbox = Mailbox()
        self.core = RelayCore(
            fallback_id=self.call.get("call_id") or f"sess_{self.key.hex}",
            connected_by=connected_by,
            send_timeout=settings.OC_SEND_TIMEOUT,
            connect_timeout=settings.OC_UPSTREAM_CONNECT_TIMEOUT,
            stall_timeout=settings.OC_UPSTREAM_STALL_TIMEOUT,
            queue_limit=settings.OC_QUEUE_LIMIT,
            new_request_id=new_request_id,
            new_event_id=events.new_event_id,
            record_audio=settings.OC_RECORD_AUDIO,
            approval_timeout=settings.OC_APPROVAL_TIMEOUT,
            attached=bool(self.call),
            rotate_after=settings.OC_ROTATE_AFTER,
            minted_session=minted_session,
            price=functools.partial(costs.cost_usd, model=model),
            reopen_delay=settings.OC_SIDEBAND_RETRY_DELAY,
        )
        self.audio = AudioTap(
            self.key,
            record=settings.OC_RECORD_AUDIO,
            started_at=clock.now(),
            due=lambda: self.mailbox.put((AUDIO_DUE, None, None)),
        )
        self._caller = caller
        self._opener = opener
        self._upstream_headers = dict(upstream_headers or {})
        self._upstream: UpstreamLeg | None = None
        self._fresh = FreshLeg(  # a rotation's fresh upstream, until it replaces this one
            self.mailbox, lambda: opener(model=model, extra_headers=self._upstream_headers), str(self.key)
        )
        self._opening: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._outbox: list[dict[str, Any]] = []
        # For /metrics (apps/sessions/metrics.py): plain counts, cheap on every frame.
        self.frames_to_caller = self.bytes_to_caller = self.frames_to_upstream = self.bytes_to_upstream = 0
        self.created_at: dict[str, float] = {}  # operators' requests not started yet: stored at

    # ------------------------------------------------------------------ outside interface

    def start(self) -> asyncio.Task:
        self._task = asyncio.create_task(self._run(), name=f"session-actor-{self.key}")
        return self._task

    def caller_frame(self, frame: str | bytes) -> None:
        self.mailbox.put((CALLER_FRAME, frame, None))

    def operator_message(self, message: dict[str, Any]) -> None:
        """A `session.*` message from the session's group (see `groups`), or from the pickup."""
        self.mailbox.put((OPERATOR, message, None))

    def caller_closed(self, detail: str = "") -> None:
        """The caller leg is gone: the session ends (`detail`: why, if the relay closed it)."""
        self._stop_opening()
        self.mailbox.put((CALLER_CLOSED, detail, None))

    def shutdown(self) -> None:
        """The process is stopping: the session ends cleanly (`server_shutdown`)."""
        self._stop_opening()
        self.mailbox.put((SHUTDOWN, None, None))

    async def replace_upstream(self, connection: Any) -> None:
        """Attach a new upstream leg (a connection, or a rotation's open leg) and close the old
        one (the core decides when)."""
        leg = connection if isinstance(connection, UpstreamLeg) else None
        old, self._upstream = self._upstream, leg or UpstreamLeg(connection, self.mailbox, str(self.key))
        if old is not None:
            await old.close()

    async def wait_finished(self, timeout: float = 5.0) -> None:
        if self._task is None:
            return
        # asyncio.wait neither raises the task's outcome nor cancels it on timeout.
        _, pending = await asyncio.wait({self._task}, timeout=timeout)
        if pending:
            log.warning("session actor %s did not stop in %.1fs; cancelling", self.key, timeout)
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)

    # ------------------------------------------------------------------ the task

    async def _run(self) -> None:
        housekeeping().add(self)  # heartbeats from now on; requests once the session is named
        metrics.figures.actor_started(self)
        opened = records.session_opened(
            key=self.key, model=self.model, connected_by=self.connected_by,
            process_id=PROCESS_ID, label=self.label, at=clock.now(), **self.call,
        )
        history.submit(opened)
        try:
            await self._open_upstream()
            get, handle, lease = self.mailbox.get, self._handle, housekeeping().lease
            while self.core.ended is None:
                kind, payload, leg = await get()
                if lease.expired() and await lease.swept(self.key):  # while this was held up
                    kind, payload, leg = OPERATOR, {"type": groups.SESSION_LOST}, None
                await handle(kind, payload, leg)
                self._arm_timer()
        except Exception as exc:
            log.exception("session actor %s failed", self.key)
            try:
                await self._perform(self.core.crashed(repr(exc), now=clock.now()))
            except Exception as again:  # a leg is what failed: the end is recorded all the same
                log.warning("telling the legs of %s failed too: %r", self.key, again)
        finally:
            await self._cleanup()

    async def _open_upstream(self) -> None:
        """Open an upstream leg, or tell the core why it could not be opened (it decides what
        then: an attached call's sideband is tried again)."""
        if (failure := await self._attach_upstream()) is not None:
            detail = failure_detail(failure, secret=settings.OPENAI_API_KEY)
            log.warning("upstream connection failed for %s: %s", self.key, detail)
            status = failure_status(failure)
            await self._perform(self.core.upstream_failed(detail, status=status, now=clock.now()))
            self._arm_timer()

    async def _attach_upstream(self) -> Exception | None:
        """Open an upstream leg and attach it; the failure, when it could not be opened
        (refused, unreachable, timed out). An opening stopped by `_stop_opening` is no failure:
        the caller left, or the process stops, and their message is in the mailbox."""
        self._opening = asyncio.ensure_future(
            self._opener(model=self.model, extra_headers=self._upstream_headers)
        )
        try:
            connection = await self._opening
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise
            return None
        except Exception as exc:
            return exc
        finally:
            self._opening = None
        await self.replace_upstream(connection)
        await self._perform(self.core.upstream_attached(now=clock.now()))
        self._arm_timer()
        return None

    def _stop_opening(self) -> None:
        if self._opening is not None:
            self._opening.cancel()

    async def _handle(self, kind: str, payload: Any, leg: Any) -> None:
        core, now = self.core, clock.now()
        if leg is not None and leg is not self._upstream and self._fresh.owns(leg):
            await self._perform(self._fresh.route(core, kind, payload, now))
        elif kind is UPSTREAM_FRAME:
            if leg is self._upstream:
                await self._perform(core.upstream_frame(payload, now=now))
        elif kind is CALLER_FRAME:
            await self._perform(core.caller_frame(payload, now=now))
        elif kind is OPERATOR:
            await self._on_operator(payload, now)
        elif kind is TICK:
            self._timer_at = None
            await self._perform(core.tick(now=now))
        elif kind is UPSTREAM_CLOSED:
            if leg is self._upstream:
                await self._perform(core.upstream_closed(*payload, now=now))
        elif kind is CALLER_CLOSED:
            self._caller = None
            await self._perform(core.caller_closed(now=now, detail=payload or ""))
        elif kind is SHUTDOWN:
            await self._perform(core.shutdown(now=now))
        elif kind is AUDIO_DUE:
            await self.audio.flush()

    async def _on_operator(self, message: dict[str, Any], now: float) -> None:
        core, kind = self.core, message.get("type")
        if kind == groups.SESSION_REQUEST:
            stored = message["request"]
            if core.origin_of(stored["id"]) is None and stored.get("created_at") is not None:
                self.created_at[stored["id"]] = stored["created_at"]
            actions = core.submit(groups.operator_request(stored), now=now)
        elif kind == groups.SESSION_CANCEL:
            actions = core.cancel(message["request_id"], now=now)
        elif kind == groups.SESSION_NOTE:
            text, role = message["text"], message["role"]
            actions = core.note(item_id=message["item_id"], role=role, text=text, now=now)
        elif kind == groups.SESSION_INTERRUPT:
            actions = core.interrupt(now=now)
        elif kind == groups.SESSION_HANGUP:
            actions = core.hangup_requested(pending=bool(message.get("pending")), now=now)
        elif kind == groups.SESSION_WATCH and isinstance(channel := message.get("channel"), str):
            on, user = bool(message.get("watch", True)), str(message.get("user") or "")
            again = bool(message.get("snapshot"))
            actions = core.watch(channel, user=user, watching=on, now=now, snapshot=again)
        elif kind == groups.SESSION_LISTEN and isinstance(channel := message.get("channel"), str):
            on, user = bool(message.get("listen", True)), str(message.get("user") or "")
            actions = core.listen(channel, user=user, listening=on, now=now)
        elif kind == groups.SESSION_APPROVAL:
            actions = approvals.decide(core, message, now)
        elif kind == groups.SESSION_LOST:
            actions = core.lost(now=now)
        else:
            log.warning("unknown operator message %r on %s", kind, self.key)
            return
        # A cancel's answer (done, or refused as already sent) is what the asker then reads in
        # the table, and counts on (the queue's limit): it waits for the commit.
        committed = kind == groups.SESSION_CANCEL
        await self._perform(actions, reply_to=message.get("reply_to"), committed=committed)

    async def _cleanup(self) -> None:
        housekeeping().discard(self)
        metrics.figures.actor_ended(self)
        if self._timer is not None:
            self._timer.cancel()
        if self.core.ended is None:  # cancelled before the core knew: the caller left
            await self._perform(self.core.caller_closed(now=clock.now()))
        await self._fresh.close()
        if self._upstream is not None:
            await self._upstream.close()
        await self.audio.finish(at=self.core.ended.at if self.core.ended else clock.now())

    # ------------------------------------------------------------------ performing actions

    async def _perform(
        self, actions: list[relay.Action], *, reply_to: str | None = None, committed: bool = False
    ) -> None:
        # The record first: it stands whatever happens to the sockets next.
        named = False
        for action in actions:
            if type(action) in records.RECORDED:
                history.submit(records.of_action(self.key, action))
                metrics.figures.recorded(self, action)  # requests' and approvals' transitions
                named = named or type(action) is relay.SessionNamed
        # Whoever is told the session's id finds it; an answer `committed` is in the table.
        if named or (committed and reply_to):
            await self._committed()
        for action in actions:
            kind = type(action)
            if kind is ToCaller:
                if self._caller is not None:
                    self.frames_to_caller += 1
                    self.bytes_to_caller += metrics.frame_size(action.frame)
                    await self._caller.send_frame(action.frame)
            elif kind is ToUpstream:
                if self._upstream is not None:
                    self.frames_to_upstream += 1
                    self.bytes_to_upstream += metrics.frame_size(action.frame)
                    await self._upstream.send(action.frame)
            elif kind is AudioTapped:
                await self.audio.tapped(action)
            elif kind is AudioCut:
                await self.audio.cut(action)
            elif kind is ToWatchers:
                self._outbox.append(action.message)
            elif kind is ToWatcher:
                await groups.send(action.watcher, action.message)
            elif kind is Answer:
                if reply_to:
                    await groups.send(reply_to, {"type": groups.ACTOR_REPLY, **action.payload})
            elif kind is TranscriptFinal:
                self.audio.transcript_final(action.entry, action.started_at or action.at)
            elif kind is ListenersChanged:
                self.audio.listeners_changed(action.count)
            elif kind is CloseCaller:
                await self._close_caller(action.code, action.reason)
            elif kind is OpenUpstream:  # an attached call's sideband, lost or not opened
                await self._open_upstream()
            elif kind in ROTATION_ACTIONS:
                await self._fresh.perform(action, self.replace_upstream)
            elif kind is SessionEnded:
                who = self.core.session_id or self.key
                log.info("session %s ended: %s %s", who, action.reason, action.detail)
        if self._outbox:
            messages, self._outbox = self._outbox, []
            await groups.publish(self.key, messages)

    async def _close_caller(self, code: int, reason: str) -> None:
        caller, self._caller = self._caller, None
        if caller is not None:
            try:
                await caller.close_with(code, reason)
            except Exception as exc:
                log.warning("closing the caller of %s with %d failed: %r", self.key, code, exc)

    async def _committed(self) -> None:
        """Wait (a little) until the history writer has committed what it was given."""
        try:
            await history.flush(timeout=NAMED_COMMIT_WAIT)
        except TimeoutError:
            log.warning("session %s: its row was not written within %g s", self.key, NAMED_COMMIT_WAIT)

    def _arm_timer(self) -> None:
        deadline = self.core.next_deadline
        if deadline is None or (self._timer_at is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        delay = max(0.0, deadline - clock.now())
        self._timer = asyncio.get_running_loop().call_later(
            delay, self.mailbox.put, (TICK, None, None)
        )
