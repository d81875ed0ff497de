"""Admin: webhook endpoints (the secret generated, shown to copy) and the delivery log
(read-only, filterable; each delivery's page lists its attempts). The event log itself is not
shown: it lives ten minutes."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.core.validators import URLValidator
from django.db import transaction
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html

from apps.events.models import (
    EVENT_TYPES,
    SECRET_OVERLAP,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from apps.events.stream import newest_id
from apps.sessions.admin import ReadOnlyAdmin, duration_ms, time_and_day


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(
        max_length=2000,
        assume_scheme="https",
        # The model's URLField also takes ftp(s), to which no delivery could ever be POSTed.
        validators=[
            URLValidator(
                schemes=["http", "https"],
                message="Enter an http:// or https:// URL.",
                code="scheme",
            )
        ],
        help_text=WebhookEndpoint._meta.get_field("url").help_text,
    )

    class Meta:
        model = WebhookEndpoint
        fields = ("url", "description", "event_types", "active")

    def clean_event_types(self):
        chosen = self.cleaned_data.get("event_types") or []
        if not isinstance(chosen, list) or not all(isinstance(t, str) for t in chosen):
            raise forms.ValidationError('A list of event types, e.g. ["request.status"].')
        families = {t.split(".")[0] + ".*" for t in EVENT_TYPES}
        unknown = [t for t in chosen if t not in EVENT_TYPES and t not in families]
        if unknown:
            raise forms.ValidationError(
                f"Unknown: {', '.join(unknown)}. Choose from {', '.join(EVENT_TYPES)}, "
                f"or a family such as {', '.join(sorted(families))}."
            )
        return chosen


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ("url", "active", "types", "description", "created_at")
    list_filter = ("active",)
    search_fields = ("url", "description")
    readonly_fields = ("signing_secret", "signing_secret_withheld", "cursor", "created_at")
    actions = ["roll_secret"]

    def get_fields(self, request, obj=None):
        fields = ["url", "description", "event_types", "active"]
        if obj is None:
            return fields
        # Whoever has the secret can sign a delivery the receivers take for ours: it is shown
        # to those who may change the endpoint (and roll it), not to those who may only look.
        may_change = self.has_change_permission(request, obj)
        return [*fields, "signing_secret" if may_change else "signing_secret_withheld",
                "cursor", "created_at"]

    @admin.display(description="types")
    def types(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.event_types) or "all"

    @admin.display(description="signing secret")
    def signing_secret(self, obj: WebhookEndpoint) -> str:
        overlap = ""
        if len(obj.signing_secrets(timezone.now())) > 1:
            overlap = format_html(
                " The previous secret signs each delivery too, beside this one, until {} (this "
                "one alone after that).",
                date_format(timezone.localtime(obj.previous_secret_until), "DATETIME_FORMAT"),
            )
        return format_html(
            "<code>{}</code><p class='help'>Verify each delivery with it: in Python, "
            "<code>OpenAI().webhooks.unwrap(body, headers, secret=…)</code>.{} To replace it, "
            "select the endpoint in the list and roll its secret.</p>",
            obj.secret,
            overlap,
        )

    @admin.display(description="signing secret")
    def signing_secret_withheld(self, obj: WebhookEndpoint) -> str:
        return "Shown to staff who may change webhook endpoints."

    @admin.action(
        description="Roll the signing secret (the old one also signs for a day)",
        permissions=["change"],
    )
    def roll_secret(self, request, queryset) -> None:
        now = timezone.now()
        with transaction.atomic():
            endpoints = list(queryset.select_for_update())
            for endpoint in endpoints:
                endpoint.roll_secret(now)
                endpoint.save(update_fields=["secret", "previous_secret", "previous_secret_until"])
        until = date_format(timezone.localtime(now + SECRET_OVERLAP), "DATETIME_FORMAT")
        self.message_user(
            request,
            f"New signing secret for {len(endpoints)} endpoint(s): it signs every delivery "
            f"from now on. The previous one signs them too, beside it, until {until}: give "
            "the receivers the new one before then (its endpoint's page shows it).",
            messages.SUCCESS,
        )

    def save_model(self, request, obj, form, change):
        if not change:  # a new endpoint receives the events committed from now on
            obj.cursor = newest_id()
        super().save_model(request, obj, form, change)

    def get_deleted_objects(self, objs, request):
        """An endpoint goes with its delivery log, and each delivery with its attempts. The
        log is read-only here, so Django would refuse the deletion for want of a permission
        on it; and it may hold a week of events, so it is counted, not listed row by row."""
        endpoints = list(objs)
        deleted = [f"{WebhookEndpoint._meta.verbose_name}: {endpoint}" for endpoint in endpoints]
        counts = {WebhookEndpoint._meta.verbose_name_plural: len(endpoints)}
        for rows in (
            WebhookDelivery.objects.filter(endpoint__in=endpoints),
            WebhookAttempt.objects.filter(delivery__endpoint__in=endpoints),
        ):
            opts, count = rows.model._meta, rows.count()
            if count:
                noun = opts.verbose_name if count == 1 else opts.verbose_name_plural
                deleted.append(f"{count} {noun}")
                counts[opts.verbose_name_plural] = count
        return deleted, counts, set(), []


class WebhookAttemptInline(admin.TabularInline):
    """Every attempt of the delivery, newest first (a few dozen at most: see the model)."""

    model = WebhookAttempt
    verbose_name_plural = "attempts, newest first"
    fields = ("number", "started_at", "took", "status_code", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_view_permission(self, request, obj=None):
        """An attempt is part of its delivery: whoever may view the delivery sees them."""
        return self.admin_site.get_model_admin(WebhookDelivery).has_view_permission(request, obj)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="duration")
    def took(self, obj: WebhookAttempt) -> str:
        return duration_ms(obj.started_at, obj.finished_at)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    inlines = [WebhookAttemptInline]
    # Short columns, as the session and request lists have: ten columns ran past the list's
    # edge at 1280 px, whether and when a delivery went out among them.
    list_display = ("id", "event", "state", "next_or_delivered", "created")
    list_filter = ("status", "event_type", "endpoint", "created_at")
    search_fields = ("event_id", "last_error")
    list_select_related = ("endpoint",)
    # No date_hierarchy: its year/month links scan the whole log. The date filter does not.
    fields = (
        "endpoint", "event_id", "event_type", "body", "status", "attempts", "next_attempt_at",
        "claimed_at", "last_status_code", "last_error", "created_at", "delivered_at", "updated_at",
    )  # fmt: skip
    readonly_fields = fields

    @admin.display(description="event", ordering="event_type")
    def event(self, obj: WebhookDelivery):
        """The event's type, and its id and the endpoint on a line below."""
        return format_html(
            "{}<br><small>#{} to {}</small>", obj.event_type, obj.event_id, obj.endpoint.url
        )

    @admin.display(description="status", ordering="status")
    def state(self, obj: WebhookDelivery):
        """The status, and the attempts with the last answer's code on a line below."""
        tries = f"{obj.attempts} attempt{'' if obj.attempts == 1 else 's'}"
        if obj.last_status_code is not None:
            tries += f", last HTTP {obj.last_status_code}"
        return format_html("{}<br><small>{}</small>", obj.get_status_display(), tries)

    @admin.display(description="delivered / next try")
    def next_or_delivered(self, obj: WebhookDelivery):
        """When it was delivered, else when it is tried next, saying which."""
        if obj.delivered_at is not None:
            moment, word = obj.delivered_at, "delivered"
        elif obj.status == WebhookDelivery.Status.FAILED:
            return "— (given up)"
        else:
            moment, word = obj.next_attempt_at, "next try"
        when = timezone.localtime(moment)
        return format_html(
            "{}<br><small>{} {}</small>", when.strftime("%H:%M:%S"), word, when.strftime("%b %d")
        )

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: WebhookDelivery):
        return time_and_day(obj.created_at)

    @admin.display(description="payload")
    def body(self, obj: WebhookDelivery):
        """The body sent, indented to read (it is sent on one line)."""
        try:
            text = json.dumps(json.loads(obj.payload), indent=2, ensure_ascii=False)
        except ValueError:
            text = obj.payload
        help_text = WebhookDelivery._meta.get_field("payload").help_text
        return format_html("<pre>{}</pre><p class='help'>{}</p>", text, help_text)
