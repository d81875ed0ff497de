"""The event log (what `GET /api/v1/events` streams and webhooks deliver) and the outbound
webhooks: endpoints and their delivery log."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timedelta

from django.db import models
from django.utils import timezone

# The event types (CONTRACT section 8's, and `approval.status`); a webhook endpoint may
# filter on them.
EVENT_TYPES = (
    "session.opened",
    "session.live",
    "session.updated",
    "session.ended",
    "request.status",
    "transcript.entry",
    "approval.status",
)


class Event(models.Model):
    """One event, in the order it was committed: ids grow with commit order (SQLite writes one
    transaction at a time; on PostgreSQL every transaction that writes events takes one
    advisory lock before it inserts them, so a reader never sees id N+1 before id N).

    `payload` is the event's JSON without its id, serialised once when it is written, so a
    stream or a webhook sends the stored text as it is."""

    id = models.BigAutoField(primary_key=True)
    type = models.CharField(max_length=32)
    session_key = models.UUIDField(help_text="LiveSession.id (the row's key).")
    session_id = models.CharField(max_length=128, blank=True, help_text="The public id, if named.")
    created_at = models.DateTimeField(default=timezone.now)
    payload = models.TextField()

    class Meta:
        indexes = [
            models.Index(fields=["session_key", "id"]),
            models.Index(fields=["created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.type}"

    def body(self) -> str:
        """The event as scripts and webhooks receive it: `{"id": …, "type": …, …}`."""
        return event_body(self.id, self.payload)


def event_body(event_id: int, payload: str) -> str:
    return f'{{"id":{event_id},{payload[1:]}' if payload != "{}" else f'{{"id":{event_id}}}'


class EventLogHorizon(models.Model):
    """One row: the newest event id pruned so far. A `Last-Event-ID` below it may have missed
    events that are gone."""

    pruned_through = models.BigIntegerField(default=0)


# How long a rolled-over secret still signs deliveries beside its successor.
SECRET_OVERLAP = timedelta(hours=24)


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes, base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class WebhookEndpoint(models.Model):
    url = models.URLField(max_length=2000, help_text="Receives each event as a signed POST.")
    description = models.CharField(max_length=200, blank=True)
    secret = models.CharField(
        max_length=100,
        default=new_webhook_secret,
        help_text="Verify each delivery with it (Standard Webhooks; the openai SDK's "
        "client.webhooks.unwrap(body, headers, secret=...)).",
    )
    # The secret before the last roll, which also signs deliveries until `previous_secret_until`,
    # so that a receiver can move to the new one without refusing a delivery meanwhile.
    previous_secret = models.CharField(max_length=100, blank=True, editable=False)
    previous_secret_until = models.DateTimeField(null=True, blank=True, editable=False)
    event_types = models.JSONField(
        default=list,
        blank=True,
        help_text=f"Types to deliver, e.g. [\"request.status\", \"session.*\"]; empty: all. "
        f"Types: {', '.join(EVENT_TYPES)}.",
    )
    active = models.BooleanField(default=True)
    # The newest event already turned into deliveries for this endpoint; None until the
    # worker first sees the endpoint (it starts from the events after that moment).
    cursor = models.BigIntegerField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.url

    def roll_secret(self, now: datetime) -> None:
        """A new secret; the one it replaces signs deliveries too for `SECRET_OVERLAP`."""
        self.previous_secret, self.previous_secret_until = self.secret, now + SECRET_OVERLAP
        self.secret = new_webhook_secret()

    def signing_secrets(self, now: datetime) -> list[str]:
        """The secrets a delivery made at `now` is signed with: the current one, and the
        previous one while it overlaps."""
        if self.previous_secret and self.previous_secret_until and now < self.previous_secret_until:
            return [self.secret, self.previous_secret]
        return [self.secret]

    def wants(self, event_type: str) -> bool:
        if not self.event_types:
            return True
        for pattern in self.event_types:
            if pattern == event_type or (
                pattern.endswith(".*") and event_type.startswith(pattern[:-1])
            ):
                return True
        return False


class WebhookDelivery(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"  # due at next_attempt_at
        SENDING = "sending"  # claimed by a worker
        DELIVERED = "delivered"
        FAILED = "failed"  # retried for the whole window without a 2xx

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.BigIntegerField(help_text="The event's id; the webhook-id is evt_ and this id.")
    event_type = models.CharField(max_length=32)
    payload = models.TextField(help_text="The body sent, as JSON.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "event_id"], name="one_delivery_per_event")
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.event_type} #{self.event_id} → {self.endpoint_id} ({self.status})"

    @property
    def webhook_id(self) -> str:
        return f"evt_{self.event_id}"


class WebhookAttempt(models.Model):
    """One try of a delivery, kept with it (and deleted with it) so that the log shows every
    attempt, not only the last: when it started and ended, the endpoint's status code or the
    error. As many rows per delivery as the retry schedule makes attempts, which bounds them:
    1 + the retries that fit in OC_WEBHOOK_RETRY_FOR (with the defaults, 5 s doubling to an
    hour apart, less 10 % jitter, for a day: at most 33)."""

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    number = models.PositiveIntegerField(help_text="1 for the first attempt, and so on.")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-number"]

    def __str__(self) -> str:
        return f"attempt {self.number} of delivery {self.delivery_id}"
