"""Call profiles (how a phone call is answered) and the upstream webhooks already handled."""

from __future__ import annotations

import re

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

# A dialled number as profiles name it: digits, optionally a leading + and a trailing * (prefix).
NUMBER_PATTERN = re.compile(r"\+?[0-9]{1,20}\*?")


class CallProfile(models.Model):
    """How the agent answers a phone call to a number: the session configuration sent with
    the call's `accept`. A call is matched by the number dialled (the SIP `To` header): a
    profile naming that exact number first, then the one with the longest matching prefix
    (`+1555*`), then the default profile."""

    name = models.CharField(max_length=100, unique=True)
    dialled_number = models.CharField(
        max_length=64,
        blank=True,
        help_text="The number this profile answers, e.g. +15551234567, or a prefix ending in * "
        "(+1555*). Empty: only as the default.",
    )
    instructions = models.TextField(blank=True, help_text="The agent's instructions for these calls.")
    voice = models.CharField(max_length=32, default="marin", help_text="The agent's voice, e.g. marin, cedar, alloy.")
    model = models.CharField(max_length=100, blank=True, help_text="Empty: OC_REALTIME_MODEL.")
    tools = models.JSONField(
        default=list, blank=True, help_text="The session's tools, as a JSON list in the Realtime API's shape."
    )
    is_default = models.BooleanField(
        default=False, help_text="Answers calls to numbers no other profile names (at most one profile)."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=Q(is_default=True),
                name="one_default_call_profile",
                violation_error_message="Another profile is the default already: untick it there first.",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """Every field's problem at once: the form shows each beside its field, not the next
        only once the first is fixed."""
        problems: dict[str, str] = {}
        tools = self.tools if self.tools is not None else []
        if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("type") for t in tools):
            problems["tools"] = 'Tools must be a JSON list of objects, each with a "type".'
        number = self.dialled_number.strip()
        if number and not NUMBER_PATTERN.fullmatch(number):
            problems["dialled_number"] = (
                "A number is + and digits (e.g. +15551234567), or such a prefix ending in *."
            )
        elif number:
            # Two profiles for one number: which answers would depend on their names' order.
            other = CallProfile.objects.filter(dialled_number=number).exclude(pk=self.pk).first()
            if other is not None:
                problems["dialled_number"] = (
                    f"{other.name} answers this number already: change that profile instead."
                )
        if "tools" not in problems:
            problems.update(self._refused_by_the_service())
        if problems:
            raise ValidationError(problems)
        self.dialled_number = number

    def _refused_by_the_service(self) -> dict[str, str]:
        """What the service would refuse in the call's accept, as a minted key's session is
        (apps/calls/keys.py), by field: saved, such a profile would leave every call to its
        numbers ringing unanswered (the upstream refuses each accept)."""
        from apps.calls.keys import InvalidParameter, session_config

        try:
            session_config(self.session_config("gpt-realtime"))
        except InvalidParameter as refused:
            parts = (refused.param or "").removeprefix("session.").replace("[", ".").split(".")
            fields = {"audio": "voice", "instructions": "instructions", "tools": "tools"}
            return {fields.get(parts[0], NON_FIELD_ERRORS): refused.message}
        return {}

    def session_config(self, default_model: str) -> dict:
        """The `session` of the call's accept (the Realtime API's shape)."""
        config: dict = {"type": "realtime", "model": self.model or default_model}
        if self.instructions:
            config["instructions"] = self.instructions
        if self.voice:
            config["audio"] = {"output": {"voice": self.voice}}
        if self.tools:
            config["tools"] = self.tools
        return config


class SeenWebhook(models.Model):
    """A webhook delivery, by its `webhook-id`, and the claim on acting on it
    (apps/calls/deliveries.py): one handler at a time, in any process, until it is `done`.
    Rows older than a day are deleted (the upstream retries for less)."""

    class Stage(models.TextChoices):
        RECEIVED = "received", "received"  # nothing done upstream yet
        ACCEPTED = "accepted", "accepted"  # the upstream accepted the call; not attached yet
        DONE = "done", "done"  # handled: `answer` is what it was answered

    webhook_id = models.CharField(max_length=128, unique=True)
    event_type = models.CharField(max_length=64, blank=True)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    stage = models.CharField(max_length=16, choices=Stage.choices, default=Stage.RECEIVED)
    # Until then a handler holds the delivery; null or past: nobody does (it failed, or its
    # process died), and the next delivery takes it over from `stage`.
    claimed_until = models.DateTimeField(null=True, blank=True)
    answer = models.JSONField(null=True, blank=True)

    def __str__(self) -> str:
        return self.webhook_id
