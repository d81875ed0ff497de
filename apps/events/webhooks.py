"""Outbound webhooks: each event of the log, POSTed to every active endpoint that wants its
type, signed as Standard Webhooks are (the scheme the upstream's own webhooks use, which
the `openai` SDK's `client.webhooks.unwrap(body, headers, secret=...)` verifies):

    webhook-id:        evt_<event id>  (the same on every attempt: receivers drop repeats)
    webhook-timestamp: Unix seconds of this attempt
    webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}", keyed with the
                       base64-decoded secret after its `whsec_` prefix>; for a day after the
                       endpoint's secret was rolled, a second one with the previous secret,
                       after a space (a receiver takes a delivery when any of them matches)

One worker per process (per event loop), started with the process's first request like the
housekeeping; none in a process with OC_WEBHOOK_SEND off. Each round it
1. turns new events into deliveries: per endpoint (one turned off too), under a row lock taken with
   `select_for_update(skip_locked=True)` (so one process at a time), the events after the
   endpoint's cursor become `WebhookDelivery` rows and the cursor moves, in one transaction;
2. claims due deliveries of active endpoints (`pending` and due, or `sending` claims older
   than three timeouts: a process that died mid-send) with `select_for_update(skip_locked=True)`,
   marking them `sending` in the claiming transaction, so two processes never send the same
   one; an endpoint turned off keeps its deliveries `pending` until it is turned on again;
3. POSTs them (httpx, `OC_WEBHOOK_TIMEOUT`), each endpoint's batch apart from the others', so
   a slow endpoint delays only its own; and records the outcome, on the delivery and as a
   row of its attempt log (`WebhookAttempt`: times, status code or error): a 2xx is
   `delivered`; anything else is tried again after OC_WEBHOOK_RETRY_BASE × 2^(attempts-1)
   seconds (at most OC_WEBHOOK_RETRY_MAX), until OC_WEBHOOK_RETRY_FOR seconds after the
   event, then `failed`.
SQLite has no row locks; there one process writes at a time and a deployment on SQLite
runs one process.

Rounds run every `OC_WEBHOOK_INTERVAL` seconds, and at once when this process commits events
unless the last round found no active endpoint and nothing to send.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import random
from collections import Counter
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

import httpx
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.events import notify
from apps.events.models import (
    Event,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    event_body,
)
from apps.events.stream import newest_id
from apps.sessions.db import db_async, log_failure, serialised_write
from apps.sessions.loops import per_loop

log = logging.getLogger(__name__)

FAN_OUT_PAGE = 500
CLAIM_PAGE = 50
USER_AGENT = "OperatorConsole-Webhooks/1"
ERROR_BODY_BYTES = 300  # of a failed answer's body, kept in the delivery log


def sign(secret: str, webhook_id: str, timestamp: str, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    message = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(delivery: WebhookDelivery, timestamp: str, body: bytes) -> dict[str, str]:
    secrets = delivery.endpoint.signing_secrets(timezone.now())
    signatures = [sign(secret, delivery.webhook_id, timestamp, body) for secret in secrets]
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": delivery.webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": " ".join(signatures),
    }


def retry_delay(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones, with ±10 % jitter, never more
    than OC_WEBHOOK_RETRY_MAX (the jitter included)."""
    base = settings.OC_WEBHOOK_RETRY_BASE * 2 ** min(attempts - 1, 40)
    return min(settings.OC_WEBHOOK_RETRY_MAX, base * random.uniform(0.9, 1.1))  # noqa: S311


# ---------------------------------------------------------------------------- services


def webhook_endpoint_create(
    *, url: str, event_types: list[str] | None = None, description: str = "", active: bool = True
) -> WebhookEndpoint:
    """A new endpoint, which receives the events committed from now on."""
    endpoint = WebhookEndpoint(
        url=url, event_types=list(event_types or []), description=description, active=active
    )
    endpoint.cursor = newest_id()
    endpoint.save()
    return endpoint


def fan_out() -> int:
    """New events → deliveries, for every endpoint no other process is doing. One turned off
    gets its deliveries too, kept `pending` until it is on again: the log keeps events only
    OC_EVENTS_RETENTION seconds, an endpoint may be off for longer. Returns how many
    endpoints are active."""
    endpoints = list(WebhookEndpoint.objects.values_list("id", "active"))
    for endpoint_id, _ in endpoints:
        with serialised_write(), transaction.atomic():
            endpoint = (
                WebhookEndpoint.objects.select_for_update(skip_locked=True)
                .filter(pk=endpoint_id)
                .first()
            )
            if endpoint is None:
                continue
            if endpoint.cursor is None:  # made outside `webhook_endpoint_create`: from now on
                endpoint.cursor = newest_id()
                endpoint.save(update_fields=["cursor"])
                continue
            rows = list(
                Event.objects.filter(id__gt=endpoint.cursor)
                .order_by("id")
                .values_list("id", "type", "payload", "created_at")[:FAN_OUT_PAGE]
            )
            if not rows:
                continue
            deliveries = [
                WebhookDelivery(
                    endpoint=endpoint,
                    event_id=event_id,
                    event_type=kind,
                    payload=event_body(event_id, payload),
                    created_at=created_at,
                    next_attempt_at=created_at,
                )
                for event_id, kind, payload, created_at in rows
                if endpoint.wants(kind)
            ]
            WebhookDelivery.objects.bulk_create(deliveries, ignore_conflicts=True)
            endpoint.cursor = rows[-1][0]
            endpoint.save(update_fields=["cursor"])
    return sum(active for _, active in endpoints)


def claim_due(limit: int = CLAIM_PAGE, *, busy: Collection[int] = ()) -> list[WebhookDelivery]:
    """Due deliveries of active endpoints, none of those in `busy` (ids), marked `sending`."""
    now = timezone.now()
    abandoned = now - timedelta(seconds=3 * settings.OC_WEBHOOK_TIMEOUT)
    is_due = Q(status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now) | Q(
        status=WebhookDelivery.Status.SENDING, claimed_at__lt=abandoned
    )
    is_due &= Q(endpoint__active=True)  # one turned off in the admin is sent nothing, retries too
    if busy:
        is_due &= ~Q(endpoint_id__in=busy)
    if not WebhookDelivery.objects.filter(is_due).exists():  # most rounds: no write lock taken
        return []
    with serialised_write(), transaction.atomic():
        due = list(
            WebhookDelivery.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(is_due)
            .select_related("endpoint")
            .order_by("next_attempt_at", "id")[:limit]
        )
        if due:
            WebhookDelivery.objects.filter(pk__in=[d.pk for d in due]).update(
                status=WebhookDelivery.Status.SENDING, claimed_at=now, updated_at=now
            )
    return due


def record_attempt(
    delivery: WebhookDelivery, status_code: int | None, error: str, *, started_at: datetime
) -> str:
    """The outcome of an attempt that began at `started_at`: on the delivery (its status,
    the next try) and in its attempt log."""
    now = timezone.now()
    attempts = delivery.attempts + 1
    error = error[:2000]
    fields = {
        "attempts": attempts,
        "last_status_code": status_code,
        "last_error": error,
        "updated_at": now,
        "claimed_at": None,
    }
    if status_code is not None and 200 <= status_code < 300:
        fields.update(status=WebhookDelivery.Status.DELIVERED, delivered_at=now, last_error="")
    else:
        retry_at = now + timedelta(seconds=retry_delay(attempts))
        give_up_at = delivery.created_at + timedelta(seconds=settings.OC_WEBHOOK_RETRY_FOR)
        if retry_at > give_up_at:
            fields["status"] = WebhookDelivery.Status.FAILED
        else:
            fields.update(status=WebhookDelivery.Status.PENDING, next_attempt_at=retry_at)
    with serialised_write(), transaction.atomic():
        claimed = WebhookDelivery.objects.filter(
            pk=delivery.pk, status=WebhookDelivery.Status.SENDING
        )
        if claimed.update(**fields):
            WebhookAttempt.objects.create(
                delivery_id=delivery.pk,
                number=attempts,
                started_at=started_at,
                finished_at=now,
                status_code=status_code,
                error=error,
            )
    return fields["status"]


def expire_deliveries(*, now: datetime) -> int:
    """Deliveries an endpoint turned off kept pending past their window (OC_WEBHOOK_RETRY_FOR
    after the event): failed, as they would have been had it been on and not answered.
    An endpoint on tries its own once more before they fail."""
    window_start = now - timedelta(seconds=settings.OC_WEBHOOK_RETRY_FOR)
    with serialised_write():
        return WebhookDelivery.objects.filter(
            status=WebhookDelivery.Status.PENDING,
            endpoint__active=False,
            created_at__lt=window_start,
        ).update(
            status=WebhookDelivery.Status.FAILED,
            last_error="The retry window ended while the endpoint was turned off.",
            updated_at=now,
        )


def prune_deliveries(*, older_than: datetime) -> int:
    """Delivered and failed deliveries finished before `older_than`, with their attempts.
    Returns how many deliveries."""
    finished = (WebhookDelivery.Status.DELIVERED, WebhookDelivery.Status.FAILED)
    with serialised_write():
        # Their ids only are read, to delete their attempts: never the payloads.
        _, deleted = (
            WebhookDelivery.objects.filter(status__in=finished, updated_at__lt=older_than)
            .only("pk")
            .delete()
        )
    return deleted.get(WebhookDelivery._meta.label, 0)


# ---------------------------------------------------------------------------- the worker


class WebhookWorker:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._client: httpx.AsyncClient | None = None
        self._idle = False  # the last round found no active endpoint and nothing due
        self._sending: Counter[int] = Counter()  # endpoint id → its deliveries in flight
        self._deliveries: set[asyncio.Task] = set()
        notify.listen(self)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._run(), name="webhooks")

    def committed_threadsafe(self, rows: Sequence[notify.Row]) -> None:
        """Events were committed here: a round now (it reads what is due from the log, so the
        rows are not needed). Not while idle: then the next timed round is soon enough (a new
        endpoint's cursor starts at its creation, so it misses nothing), and a busy relay's
        commits do not each cost a round of queries."""
        if self._task is not None and not self._idle and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.OC_WEBHOOK_INTERVAL):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.round()
            except Exception as exc:  # a database hiccup: the next round tries again
                log_failure(log, "webhook round failed", exc)

    async def round(self) -> int:
        """Fan out, then start sending what is due, a batch at a time to each endpoint that has
        none in flight: an endpoint slow to answer holds up its own deliveries, never another's
        (a batch's end starts a round for what came meanwhile). Returns the attempts started."""
        endpoints = await db_async(fan_out)()
        started = 0
        while due := await db_async(claim_due)(busy=set(self._sending)):
            for delivery in due:
                self._sending[delivery.endpoint_id] += 1
                task = self.loop.create_task(self._send(delivery), name="webhook-delivery")
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)
            started += len(due)
        self._idle = endpoints == 0 and started == 0 and not self._sending
        return started

    async def _send(self, delivery: WebhookDelivery) -> None:
        try:
            await self._deliver(delivery)
        finally:
            self._sending[delivery.endpoint_id] -= 1
            if not self._sending[delivery.endpoint_id]:
                del self._sending[delivery.endpoint_id]
                self._wake.set()  # what is due to it now may go

    async def _deliver(self, delivery: WebhookDelivery) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=settings.OC_WEBHOOK_TIMEOUT, follow_redirects=False
            )
        body = delivery.payload.encode()
        started_at = timezone.now()
        timestamp = str(int(started_at.timestamp()))
        status_code, error = None, ""
        timeout = settings.OC_WEBHOOK_TIMEOUT
        try:
            headers = signed_headers(delivery, timestamp, body)
            # The whole answer within the timeout: httpx's own bounds each read, and an
            # endpoint that answers a byte at a time would hold the delivery for ever.
            async with (
                asyncio.timeout(timeout),
                self._client.stream(
                    "POST", delivery.endpoint.url, content=body, headers=headers
                ) as answer,
            ):
                status_code = answer.status_code
                if not 200 <= status_code < 300:
                    error = f"HTTP {status_code}: {await _beginning(answer)}"
        except TimeoutError:
            error = f"TimeoutError: no whole answer within {timeout:g} s"
        except Exception as exc:  # unreachable, timed out; or a bad URL or secret: retried
            error = f"{type(exc).__name__}: {exc}"
        outcome = await db_async(record_attempt)(
            delivery, status_code, error, started_at=started_at
        )
        if outcome == WebhookDelivery.Status.FAILED:
            # The error quotes the endpoint's answer, another server's text: as a repr, its
            # line breaks cannot start a line of the log that looks like ours.
            log.warning("webhook %s to %s failed for good: %r", delivery.webhook_id, delivery.endpoint.url, error)


async def _beginning(answer: httpx.Response) -> str:
    """The start of an answer's body, for the delivery log; the rest is never read (an
    endpoint's error page may be huge, or have no end)."""
    head = b""
    async for chunk in answer.aiter_bytes():
        head += chunk
        if len(head) >= ERROR_BODY_BYTES:
            break
    return head[:ERROR_BODY_BYTES].decode(answer.encoding or "utf-8", errors="replace")


worker = per_loop(WebhookWorker)
