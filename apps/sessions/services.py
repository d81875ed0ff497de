"""Services: the writes every surface (REST hook, console) makes on live sessions.

A response request is written to the database before anyone is told it was accepted; then the
session's group is pinged with the request, so the actor holding the session can send it at
once. The table is the durable record: a lost ping only delays a request until the holding
process's next look at the table (`pickup`), within `OC_PICKUP_INTERVAL` seconds.

Cancels, notes and interrupts go to the actor and wait for its answer: only the actor knows
whether a request is still queued (the database learns of a send a moment later), so
a cancel is never answered `cancelled` for a request that was in fact sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F

from apps.realtime import events
from apps.sessions import groups, selectors
from apps.sessions.db import db_async, serialised_write
from apps.sessions.history import writer as history
from apps.sessions.models import LiveSession, ResponseRequest
from apps.sessions.overrides import ResponseOverrides

log = logging.getLogger(__name__)
events_log = logging.getLogger("oc.events")


# ---------------------------------------------------------------------------- errors


class ServiceError(Exception):
    """A refusal the requester can act on. `status` is the HTTP status the REST hook answers."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SessionNotFound(ServiceError):
    status, code = 404, "session_not_found"


class RequestNotFound(ServiceError):
    status, code = 404, "response_not_found"


class SessionNotLive(ServiceError):
    status, code = 409, "session_not_live"


class NotCancellable(ServiceError):
    status, code = 409, "not_cancellable"


class IdempotencyConflict(ServiceError):
    status, code = 409, "idempotency_conflict"


class QueueFull(ServiceError):
    status, code = 429, "queue_full"


class SessionUnavailable(ServiceError):
    """The session is live in the table, but no actor answered: its process is gone or stuck."""

    status, code = 503, "session_unavailable"


# ---------------------------------------------------------------------------- submit


async def response_request_submit(
    *,
    session_id: str,
    overrides: ResponseOverrides,
    origin: str,
    requested_by: str,
    idempotency_key: str | None = None,
    idempotency_scope: str | None = None,
    timing: dict[str, float] | None = None,
) -> tuple[ResponseRequest, bool]:
    """Store a request for the next response, then tell the session. Returns (request, created).

    With an `idempotency_key` (unique per `idempotency_scope`, whose key it is: "token:<pk>",
    "user:<pk>"), a repeat for the same session and overrides returns the first request and
    stores nothing (created is False); the same key for anything else is IdempotencyConflict.
    `timing`, when given, receives the seconds of the store (`db`) and of the ping (`ping`).
    """
    if idempotency_key is not None and not idempotency_scope:
        raise ValueError("an idempotency key needs the scope it belongs to")
    started = time.perf_counter()
    request, created = await db_async(_request_store)(
        session_id=session_id,
        overrides=overrides,
        origin=origin,
        requested_by=requested_by,
        idempotency_scope=idempotency_scope if idempotency_key is not None else None,
        idempotency_key=idempotency_key,
        idempotency_digest=_digest(session_id, overrides) if idempotency_key is not None else "",
    )
    stored = time.perf_counter()
    if created:
        await ping(request)
    if timing is not None:
        timing["db"] = stored - started
        if created:
            timing["ping"] = time.perf_counter() - stored
    return request, created


def _digest(session_id: str, overrides: ResponseOverrides) -> str:
    """What an idempotency key was first used for: the session and the overrides as sent."""
    body = overrides.model_dump(mode="json", exclude_unset=True)
    canonical = json.dumps({"session": session_id, "body": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _request_store(
    *,
    session_id: str,
    overrides: ResponseOverrides,
    origin: str,
    requested_by: str,
    idempotency_scope: str | None,
    idempotency_key: str | None,
    idempotency_digest: str,
) -> tuple[ResponseRequest, bool]:
    try:
        with serialised_write(), transaction.atomic():
            return _request_store_locked(
                session_id=session_id,
                overrides=overrides,
                origin=origin,
                requested_by=requested_by,
                idempotency_scope=idempotency_scope,
                idempotency_key=idempotency_key,
                idempotency_digest=idempotency_digest,
            )
    except IntegrityError:
        # A concurrent request with the same key won the insert (on databases where the
        # session row lock does not serialise requests of different sessions).
        if idempotency_key is None:
            raise
        prior = ResponseRequest.objects.select_related("session").get(
            idempotency_scope=idempotency_scope, idempotency_key=idempotency_key
        )
        return _idempotent_repeat(prior, idempotency_key, idempotency_digest), False


def _session_locked(session_id: str) -> LiveSession:
    """Inside a transaction: the session's row, locked until the commit. `no_key`: the
    history writer's inserts of the session's requests (their foreign-key checks take a
    key-share lock on this row) need not wait for it."""
    session = (
        LiveSession.objects.select_for_update(no_key=True).filter(upstream_id=session_id).first()
        if selectors.nameable(session_id)
        else None
    )
    if session is None:
        raise SessionNotFound(f"No session with id '{session_id}'.")
    return session


def _request_store_locked(
    *,
    session_id: str,
    overrides: ResponseOverrides,
    origin: str,
    requested_by: str,
    idempotency_scope: str | None,
    idempotency_key: str | None,
    idempotency_digest: str,
) -> tuple[ResponseRequest, bool]:
    # The row lock serialises submissions to one session, so the queue limit holds under
    # races. SQLite has no row locks: there `serialised_write` and its one writer do this.
    session = _session_locked(session_id)
    if idempotency_key is not None:
        prior = (
            ResponseRequest.objects.select_related("session")
            .filter(idempotency_scope=idempotency_scope, idempotency_key=idempotency_key)
            .first()
        )
        if prior is not None:
            return _idempotent_repeat(prior, idempotency_key, idempotency_digest), False
    if session.status != LiveSession.Status.LIVE:
        raise SessionNotLive(f"Session '{session_id}' is {session.status}, not live.")
    if overrides.conversation != "none":
        # Out-of-band requests are sent at once, never queued behind in-conversation ones:
        # only the in-conversation queue has a limit, and they are not refused for it.
        queued = (
            ResponseRequest.objects.filter(session=session, status=ResponseRequest.Status.QUEUED)
            .exclude(conversation="none")
            .count()
        )
        if queued >= settings.OC_QUEUE_LIMIT:
            raise QueueFull(
                f"Session '{session_id}' already has {queued} queued requests; "
                f"the limit is {settings.OC_QUEUE_LIMIT}. Retry when some have been sent."
            )
    request = ResponseRequest.objects.create(
        id=f"req_{uuid.uuid4().hex}",
        session=session,
        origin=origin,
        instructions=overrides.instructions,
        instructions_mode=overrides.instructions_mode,
        metadata=overrides.metadata,
        conversation=overrides.conversation,
        requested_by=requested_by,
        status=ResponseRequest.Status.QUEUED,
        idempotency_scope=idempotency_scope,
        idempotency_key=idempotency_key,
        idempotency_digest=idempotency_digest,
    )
    counter = LiveSession.counter(origin)  # counted in this transaction, as the row is stored
    LiveSession.objects.filter(pk=session.pk).update(**{counter: F(counter) + 1})
    if history.recorder is not None:  # the event log (apps/events): `queued`, in this transaction
        history.recorder.request_queued(request)
    transaction.on_commit(
        lambda: events_log.info(
            json.dumps(
                {
                    "event": "request.created",
                    "request": request.id,
                    "session": session_id,
                    "origin": origin,
                    "by": requested_by,
                    "status": "queued",
                }
            )
        )
    )
    return request, True


def _idempotent_repeat(prior: ResponseRequest, key: str, digest: str) -> ResponseRequest:
    if prior.idempotency_digest != digest:
        raise IdempotencyConflict(
            f"Idempotency-Key '{key}' was already used for another request "
            f"({prior.id}); use a new key for a new request."
        )
    return prior


async def ping(request: ResponseRequest) -> None:
    """Tell the holding actor about a stored request. Losing this only delays the request."""
    try:
        await get_channel_layer().group_send(
            groups.session_group(request.session_id),
            {"type": groups.SESSION_REQUEST, "request": groups.request_message(request)},
        )
    except Exception as exc:  # the channel layer is down: the pickup finds the request
        log.warning("ping for %s failed (it will be picked up from the table): %r", request.id, exc)


# ---------------------------------------------------------------------------- ask the actor


ENDED_LOOK_INTERVAL = 0.25  # seconds between looks at the table while an actor is silent


async def _ask_actor(session: LiveSession, message: dict[str, Any]) -> dict[str, Any]:
    layer = get_channel_layer()
    # The default prefix, as the consumers' channels have: channels_redis lets one receive at a
    # time read Redis per process, from the list of *its* channel's prefix, and hands what it
    # reads to the right waiter only among channels of that list. With a prefix of its own, the
    # reply (or a consumer's message) waited for the other's read to end: up to 5 s, or until
    # this timeout when the message it waited for was the actor's own question.
    reply_to = await layer.new_channel()
    try:
        await layer.group_send(groups.session_group(session.id), {**message, "reply_to": reply_to})
    except Exception as exc:  # the channel layer is down: nobody can reach the actor now
        log.warning("asking the actor of %s failed: %r", session.upstream_id, exc)
        raise SessionUnavailable(
            f"Session '{session.upstream_id}' cannot be reached right now; retry shortly."
        ) from None
    # An actor that ended a moment ago (the call hung up, transferred) answers nothing, while
    # the table, written a moment later, still said live: while the answer is awaited, the
    # table is looked at again, so that such a session is refused as ended, not unavailable.
    reply = asyncio.ensure_future(layer.receive(reply_to))
    try:
        async with asyncio.timeout(settings.OC_ACTOR_REPLY_TIMEOUT):
            while not (await asyncio.wait({reply}, timeout=ENDED_LOOK_INTERVAL))[0]:
                await _refuse_if_ended(session)
            return reply.result()
    except TimeoutError:
        await _refuse_if_ended(session)
        raise SessionUnavailable(
            f"Session '{session.upstream_id}' did not answer within "
            f"{settings.OC_ACTOR_REPLY_TIMEOUT:g} s; its process may have stopped. Retry later."
        ) from None
    finally:
        reply.cancel()


async def _refuse_if_ended(session: LiveSession) -> None:
    await db_async(_live_session)(session.upstream_id)  # raises SessionNotLive once it ended


def session_found(session_id: str) -> LiveSession:
    """The session with this public id (without counts), or SessionNotFound. Database work."""
    session = selectors.session_row(session_id=session_id)
    if session is None:
        raise SessionNotFound(f"No session with id '{session_id}'.")
    return session


def _live_session(session_id: str) -> LiveSession:
    session = session_found(session_id)
    if session.status != LiveSession.Status.LIVE:
        raise SessionNotLive(f"Session '{session_id}' is {session.status}, not live.")
    return session


async def response_request_cancel(*, request_id: str) -> ResponseRequest:
    """Cancel a request that is still queued; anything further along is NotCancellable."""
    request = await db_async(selectors.request_get)(request_id=request_id)
    if request is None:
        raise RequestNotFound(f"No response request with id '{request_id}'.")
    # The table lags behind the actor, never ahead of it: a request it shows past `queued`
    # really is.
    if request.status != ResponseRequest.Status.QUEUED:
        raise NotCancellable(
            f"Request '{request_id}' is {request.status}; only a queued request can be cancelled."
        )
    if request.session.status != LiveSession.Status.LIVE:
        raise NotCancellable(
            f"Request '{request_id}' belongs to a session that is {request.session.status}."
        )
    reply = await _ask_actor(
        request.session,
        {"type": groups.SESSION_CANCEL, "request_id": request_id},
    )
    # Only a cancel made now carries its time, `at`. A bare `cancelled` means an earlier
    # DELETE cancelled it and the table does not show that yet: no longer queued, so 409.
    if reply.get("status") != ResponseRequest.Status.CANCELLED or "at" not in reply:
        raise NotCancellable(
            f"Request '{request_id}' is {reply.get('status')}; only a queued request can be cancelled."
        )
    request.status = ResponseRequest.Status.CANCELLED
    request.finished_at = datetime.fromtimestamp(reply["at"], tz=UTC)
    return request


@dataclass(frozen=True, kw_only=True)
class Note:
    id: str  # the conversation item's id
    session_id: str
    role: str
    text: str
    created_at: datetime
    requested_by: str


async def note_add(*, session_id: str, text: str, role: str, requested_by: str) -> Note:
    """Add a message item to the conversation without asking for a response."""
    session = await db_async(_live_session)(session_id)
    item_id = f"item_oc{uuid.uuid4().hex[:25]}"  # the upstream allows client ids ≤ 32 chars
    reply = await _ask_actor(
        session,
        {"type": groups.SESSION_NOTE, "item_id": item_id, "role": role, "text": text, "by": requested_by},
    )
    if not reply.get("ok"):
        raise SessionNotLive(reply.get("message") or f"Session '{session_id}' is not live.")
    return Note(
        id=item_id,
        session_id=session_id,
        role=role,
        text=text,
        created_at=datetime.fromtimestamp(reply["at"], tz=UTC),
        requested_by=requested_by,
    )


async def session_interrupt(*, session_id: str) -> str | None:
    """Cancel the active in-conversation response, if any. Returns its id (None: none was active)."""
    session = await db_async(_live_session)(session_id)
    reply = await _ask_actor(session, {"type": groups.SESSION_INTERRUPT})
    return reply.get("response_id")


# ---------------------------------------------------------------------------- labels

MAX_LABEL_CHARS = 200  # LiveSession.label's max_length


class InvalidLabel(ServiceError):
    status, code = 422, "invalid_fields"
    field = "label"


def label_problem(label: str) -> str | None:
    """Why a label cannot be stored (None: it can). The caller's `oc_label`, the REST hook's
    PATCH and the console's form share these words."""
    if len(label) > MAX_LABEL_CHARS:
        return f"label is {len(label)} characters; at most {MAX_LABEL_CHARS} are allowed"
    problem = events.text_problem(label)
    return f"label {problem}" if problem is not None else None


async def live_session_label_set(*, session_id: str, label: str, by: str) -> LiveSession:
    """Set (or, with "", clear) a session's label, live or over: a label is how a session is
    found afterwards too. Returns the session with its counts (`to_dict()` ready). The
    operators watching it are told (`console.label`), in whichever process their page's socket
    is; dashboards read it from the table with the rest of their next update; scripts and
    webhooks get `session.updated` when the label changed."""
    session = await db_async(_label_store)(session_id=session_id, label=label, by=by)
    message = {"type": groups.CONSOLE_LABEL, "session_id": session_id, "label": session.label}
    await groups.publish(session.id, [message])
    return session


def _label_store(*, session_id: str, label: str, by: str) -> LiveSession:
    label = label.strip()
    problem = label_problem(label)
    if problem is not None:
        raise InvalidLabel(problem[0].upper() + problem[1:] + ".")
    with serialised_write(), transaction.atomic():
        # Locked: of two scripts setting the same label, one changes it, one finds it set.
        session = _session_locked(session_id)
        if session.label != label:
            session.label = label
            session.save(update_fields=["label"])
            if history.recorder is not None:  # the event log: `session.updated`, in here
                history.recorder.session_updated(session)
    events_log.info(json.dumps({"event": "session.labelled", "session": session_id, "label": label, "by": by}))
    return selectors.session_get(session_id=session_id)
