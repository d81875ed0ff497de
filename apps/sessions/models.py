"""Durable record of live sessions, response requests and API tokens (DESIGN "Storage")."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from apps.realtime.relay import EndReason
from apps.realtime.sequencer import TERMINAL_STATUSES, RequestStatus
from apps.sessions.costs import cost_usd

# Each end reason as an operator reads it (the session page, the admin; the code stays in the
# record and the REST hook). As docs/architecture.md's "How sessions end" says who decided it.
END_REASON_WORDS = {
    EndReason.CALLER_CLOSED: "The caller disconnected",
    EndReason.UPSTREAM_CLOSED: "The upstream ended the session",
    EndReason.SESSION_EXPIRED: "The upstream session expired",
    EndReason.HUNG_UP: "The call was hung up",
    EndReason.SERVER_SHUTDOWN: "The console's server stopped",
    EndReason.SESSION_LOST: "Its process stopped answering",
    EndReason.RELAY_ERROR: "The relay failed",
}


def _iso(moment) -> str | None:
    """ISO 8601 with an offset (`+00:00`), as every time in the API is."""
    return moment.isoformat() if moment is not None else None


class LiveSession(models.Model):
    class Status(models.TextChoices):
        CONNECTING = "connecting"
        LIVE = "live"
        ENDED = "ended"
        FAILED = "failed"

    OPEN = (Status.CONNECTING, Status.LIVE)  # not ended yet

    class Kind(models.TextChoices):
        RELAY = "relay", "Relay"  # the caller connected to /v1/realtime
        WEBRTC = "webrtc", "WebRTC"
        SIP = "sip", "SIP"

    # The row's key is chosen by the actor when the caller connects, so history can be written
    # before the upstream has named the session. The public id is the upstream session.id from
    # session.created (null until then).
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    upstream_id = models.CharField(max_length=128, unique=True, null=True, blank=True)
    model = models.TextField()  # as the caller named it (`?model=`): any length
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CONNECTING)
    connected_by = models.CharField(max_length=150, blank=True)
    process_id = models.CharField(max_length=128, blank=True, help_text="The process holding it.")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    instructions = models.TextField(blank=True, help_text="Session instructions as last seen.")
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=32, choices=[(r.value, r.value) for r in EndReason], blank=True)
    end_code = models.IntegerField(null=True, blank=True, help_text="The upstream's close code.")
    end_detail = models.TextField(blank=True, help_text="Why, in words.")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.RELAY)
    call_id = models.CharField(max_length=128, null=True, blank=True)
    label = models.CharField(max_length=200, blank=True)
    caller_number = models.CharField(max_length=128, blank=True, help_text="A phone call's From.")
    dialled_number = models.CharField(max_length=128, blank=True, help_text="A phone call's To.")
    upstream_sessions = models.JSONField(
        default=list, blank=True, help_text="The upstream session ids it went through, in order."
    )
    rate_limits = models.JSONField(
        default=list, blank=True, help_text="The latest rate_limits.updated: its `rate_limits` list."
    )
    usage = models.JSONField(default=dict, blank=True, help_text="Tokens so far: every response's usage, summed.")
    watchers = models.JSONField(default=list, blank=True, help_text="Operators watching it now.")
    # Its requests of each origin so far (`counter()` names the field). The writers of requests
    # (the submit service, the history writer) add one in the transaction that inserts the
    # request, so the dashboard's once-a-second read of every live session reads these
    # instead of counting each session's requests (which grow for as long as a call lasts).
    requests_caller = models.PositiveIntegerField(default=0, editable=False)
    requests_console = models.PositiveIntegerField(default=0, editable=False)
    requests_api = models.PositiveIntegerField(default=0, editable=False)
    requests_server = models.PositiveIntegerField(default=0, editable=False)
    recording = models.FileField(
        upload_to="recordings/", blank=True, help_text="Both sides of a voice call, as a stereo WAV."
    )
    recording_seconds = models.FloatField(null=True, blank=True, help_text="The recording's length.")
    recording_transcript = models.JSONField(
        default=list,
        blank=True,
        help_text="The recorded call's transcript: final entries with `at`, seconds into the recording.",
    )

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            models.Index(fields=["status", "-started_at"]),
            # Every session newest first (the admin's list, the REST hook's): the id breaks ties.
            models.Index(fields=["started_at", "id"]),
            # The sessions an API token connected (its usage in the admin's token list).
            models.Index(fields=["connected_by"]),
        ]
        permissions = [("listen_session", "Can listen to live sessions")]

    def __str__(self) -> str:
        return self.upstream_id or f"(connecting {self.id})"

    @staticmethod
    def counter(origin: str) -> str:
        """The field that counts a session's requests of `origin`."""
        return f"requests_{origin}"

    @property
    def end_summary(self) -> str:
        """Why it ended, in words: `The upstream ended the session: The upstream …`."""
        if not self.end_reason:
            return ""
        words = END_REASON_WORDS.get(self.end_reason, self.end_reason)
        return f"{words}: {self.end_detail}" if self.end_detail else f"{words}."

    @property
    def end_code_summary(self) -> str:
        """The reason's code, and the upstream's close code: `upstream_closed · 1011`."""
        code = f" · {self.end_code}" if self.end_code is not None else ""
        return f"{self.end_reason}{code}" if self.end_reason else ""

    def to_dict(self) -> dict[str, Any]:
        """The `Session` of CONTRACT section 2. The counts come from the annotations of
        `selectors.sessions_with_counts()`; a plain row has them counted here."""
        if not hasattr(self, "queued"):
            from apps.sessions.selectors import annotate_counts

            annotate_counts(self)
        return {
            "id": self.upstream_id,
            "status": self.status,
            "model": self.model,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "active_response_id": self.active_response or None,
            "queued": self.queued,
            "origin_counts": {origin: getattr(self, f"origin_{origin}") for origin in ORIGINS},
            "end_reason": self.end_reason or None,
            "kind": self.kind,
            "call_id": self.call_id,
            "label": self.label or None,
            "upstream_sessions": self.upstream_sessions or ([self.upstream_id] if self.upstream_id else []),
            "caller_number": self.caller_number or None,
            "dialled_number": self.dialled_number or None,
            "usage": self.usage or {},
            "cost_usd": cost_usd(model=self.model, usage=self.usage or {}),
        }


class ResponseRequest(models.Model):
    class Origin(models.TextChoices):
        CALLER = "caller"
        CONSOLE = "console"
        API = "api", "API"
        SERVER = "server"

    # The sequencer's statuses are the record's: one list, in apps/realtime/sequencer.py.
    Status = RequestStatus
    TERMINAL = TERMINAL_STATUSES

    id = models.CharField(primary_key=True, max_length=40, editable=False)
    session = models.ForeignKey(LiveSession, on_delete=models.CASCADE, related_name="requests")
    origin = models.CharField(max_length=16, choices=Origin.choices)
    instructions = models.TextField(null=True, blank=True, help_text="The requester's text.")
    instructions_mode = models.CharField(max_length=16, default="append")
    sent_instructions = models.TextField(null=True, blank=True, help_text="What was sent.")
    # None: not set by the requester, so not sent (the upstream's default, "auto", applies).
    conversation = models.CharField(max_length=16, null=True, blank=True)
    metadata = models.JSONField(null=True, blank=True)
    status = models.CharField(
        max_length=16,
        choices=[(status.value, status.value) for status in RequestStatus],
        default=RequestStatus.QUEUED.value,
    )
    response_id = models.CharField(max_length=128, blank=True)
    event_id = models.TextField(blank=True)  # the caller's, free-form: any length
    output_text = models.TextField(blank=True)
    usage = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=128, blank=True)
    error_message = models.TextField(blank=True)
    requested_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Idempotency-Key of the REST hook: unique per requester (scope), with a digest of the
    # request it was first used for, so a repeat with another body can be refused.
    idempotency_scope = models.CharField(max_length=64, null=True, blank=True, editable=False)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True, editable=False)
    idempotency_digest = models.CharField(max_length=64, blank=True, editable=False)

    class Meta:
        ordering = ["created_at"]
        permissions = [("steer_session", "Can steer live sessions (nudge, note, cancel, interrupt)")]
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_scope", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="unique_idempotency_key_per_scope",
            )
        ]
        indexes = [
            models.Index(fields=["session", "created_at"]),
            models.Index(fields=["status", "-created_at"]),
            models.Index(fields=["origin", "-created_at"]),
            models.Index(fields=["response_id"]),
            # A session's latest finished request (the dashboard's last activity), read alone.
            models.Index(fields=["session", "finished_at"]),
            # What one operator or token asked for (the admin's token list, `requested_by=`),
            # and the server's responses in the sessions a token connected (the same list).
            models.Index(fields=["requested_by"]),
            models.Index(fields=["session", "origin"]),
            # The history as the REST hook pages and exports it: by time, the id breaking ties.
            models.Index(fields=["created_at", "id"]),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def error(self) -> dict | None:
        if not self.error_code and not self.error_message:
            return None
        return {"code": self.error_code, "message": self.error_message}

    def to_dict(self) -> dict[str, Any]:
        """The `ResponseRequest` of CONTRACT section 2 (load it with its session)."""
        return {
            "id": self.id,
            "session_id": self.session.upstream_id or "",
            "origin": self.origin,
            "instructions": self.instructions,
            "instructions_mode": self.instructions_mode,
            "sent_instructions": self.sent_instructions,
            "conversation": self.conversation or "auto",
            "metadata": self.metadata,
            "status": self.status,
            "response_id": self.response_id or None,
            "output_text": self.output_text or None,
            "usage": self.usage,
            "cost_usd": cost_usd(model=self.session.model, usage=self.usage),
            "error": self.error,
            "created_at": _iso(self.created_at),
            "sent_at": _iso(self.sent_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "requested_by": self.requested_by,
        }


# Every origin, in the order the `Session` shape lists their counts.
ORIGINS = tuple(ResponseRequest.Origin.values)

# The operators' permissions (declared in the models' Meta), as `has_perm` names them.
STEER = "oc_sessions.steer_session"
LISTEN = "oc_sessions.listen_session"


class ClientSecret(models.Model):
    """A short-lived key of the project's own (`POST /v1/realtime/client_secrets`), valid as a
    bearer for `/v1/realtime/calls` and `/v1/realtime` until `expires_at`. Only a SHA-256 digest
    is stored, as for API tokens."""

    PREFIX = "ek_oc_"

    digest = models.CharField(max_length=64, unique=True, editable=False)
    session = models.JSONField(default=dict, blank=True, help_text="The session configuration it was minted for.")
    created_by = models.CharField(max_length=150, blank=True)
    # The token that minted it: a key is refused once its token is revoked (or deleted).
    token = models.ForeignKey(
        "ApiToken",
        null=True,
        blank=True,
        editable=False,
        on_delete=models.CASCADE,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["expires_at"])]

    def __str__(self) -> str:
        return f"client secret of {self.created_by} until {self.expires_at:%H:%M:%S}"

    @classmethod
    def generate(cls) -> str:
        return cls.PREFIX + secrets.token_urlsafe(32)


class ToolApproval(models.Model):
    """An agent's request to run a tool that needs a human's approval (an MCP approval request,
    or a function the deployment marks as sensitive), and the decision taken on it."""

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        DENIED = "denied"
        EXPIRED = "expired"  # nobody decided within OC_APPROVAL_TIMEOUT: denied, and said so

    session = models.ForeignKey(LiveSession, on_delete=models.CASCADE, related_name="approvals")
    approval_id = models.CharField(max_length=128, help_text="The upstream's approval request item id.")
    kind = models.CharField(max_length=16, default="mcp", help_text="`mcp` or `function`.")
    server_label = models.CharField(max_length=128, blank=True)
    name = models.CharField(max_length=128)
    arguments = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    reason = models.TextField(blank=True)
    decided_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["session", "approval_id"], name="unique_approval_per_session")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"

    def to_dict(self) -> dict[str, Any]:
        """The `Approval` of the REST hook and of the event log's `approval.status` (load it
        with its session). `reason` and `decided_by` stay empty until it is decided (and
        `decided_by` when it expired)."""
        return {
            "id": self.approval_id,
            "session_id": self.session.upstream_id or "",
            "kind": self.kind,
            "name": self.name,
            "server_label": self.server_label,
            "arguments": self.arguments,
            "status": self.status,
            "reason": self.reason,
            "decided_by": self.decided_by,
            "created_at": _iso(self.created_at),
            "decided_at": _iso(self.decided_at),
        }


class CallAction(models.Model):
    """Call control on an attached call: a hang-up or a transfer, with who asked."""

    class Action(models.TextChoices):
        HANGUP = "hangup"
        REFER = "refer"

    session = models.ForeignKey(LiveSession, on_delete=models.CASCADE, related_name="call_actions")
    action = models.CharField(max_length=16, choices=Action.choices)
    target_uri = models.CharField(max_length=512, blank=True)
    requested_by = models.CharField(max_length=150, blank=True)
    ok = models.BooleanField(null=True, help_text="The upstream's answer: accepted or not (null: not yet).")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.action} {self.target_uri}".strip()


class ApiToken(models.Model):
    """A bearer token for scripts and Realtime clients. Only a SHA-256 digest is stored."""

    class Scope(models.TextChoices):
        REALTIME_CONNECT = "realtime:connect"
        RESPONSES_WRITE = "responses:write"
        SESSIONS_READ = "sessions:read"
        METRICS_READ = "metrics:read"

    ALL_SCOPES = tuple(Scope.values)
    # What a token gets when no scope is named; `metrics:read` only when named (CONTRACT).
    DEFAULT_SCOPES = (Scope.REALTIME_CONNECT.value, Scope.RESPONSES_WRITE.value, Scope.SESSIONS_READ.value)
    PREFIX = "oct_"

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="First characters, to recognise a token.")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def hash(plain: str) -> str:
        # Tokens are 256-bit random values, so a fast unsalted hash is enough to make the
        # stored digest useless to a reader of the database (no dictionary to attack).
        return hashlib.sha256(plain.encode()).hexdigest()

    @classmethod
    def generate(cls) -> str:
        return cls.PREFIX + secrets.token_urlsafe(32)

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes
