"""Admin: live sessions with their response history inline, read-only response history,
API tokens. History tables grow large, so lists avoid full counts and every history view is
read-only (the record is written by the relay, never edited by hand)."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ERROR_FLAG
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.forms.models import BaseInlineFormSet
from django.http import HttpResponseRedirect, StreamingHttpResponse
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from apps.events.flow import flow_of
from apps.sessions import costs, export, recordings, selectors
from apps.sessions.models import END_REASON_WORDS, LISTEN, ApiToken, LiveSession, ResponseRequest
from apps.sessions.tokens import api_token_create, api_token_name_problem, api_token_revoke


def _as_json(obj) -> str:
    """The row as the REST hook and the console give it (`to_dict()`), to read or copy."""
    return format_html("<pre>{}</pre>", json.dumps(obj.to_dict(), indent=2, ensure_ascii=False))


def _usage_words(usage: dict | None) -> str:
    """A response's or a session's usage as a person reads it: `998 tokens: 212 in (122 text,
    90 audio), 786 out (108 text, 678 audio)`; the JSON is under "As the REST hook gives it"."""
    if not usage:
        return "—"

    def side(total, details: dict | None) -> str:
        kinds = [f"{n:,} {kind[:-7]}" for kind, n in (details or {}).items()
                 if kind.endswith("_tokens") and isinstance(n, int) and n]
        return f"{total or 0:,}" + (f" ({', '.join(kinds)})" if kinds else "")

    return (
        f"{usage.get('total_tokens') or 0:,} tokens: "
        f"{side(usage.get('input_tokens'), usage.get('input_token_details'))} in, "
        f"{side(usage.get('output_tokens'), usage.get('output_token_details'))} out"
    )


def _lines(rows: list[str]) -> str:
    return format_html_join("", "{}<br>", ((row,) for row in rows)) if rows else "—"


def _usd(cost: float | None) -> str:
    return "no price" if cost is None else f"${cost:,.4f}"


def _csv_response(request, rows) -> StreamingHttpResponse:
    """The CSV of the REST hook's export (`GET /api/v1/responses?format=csv`) for `rows`, but
    for a spreadsheet: a cell that would be a formula is written as text, after a `'`."""
    chunks = export.csv_chunks(
        selectors.RequestFilter(), queryset=rows, flow=flow_of(request), spreadsheet=True
    )
    response = StreamingHttpResponse(chunks, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{export.csv_filename()}"'
    return response


class TextInputFilter(admin.SimpleListFilter):
    """A filter typed in, not chosen from a list (the values are too many to list)."""

    template = "admin/oc_sessions/text_filter.html"
    placeholder = ""

    def lookups(self, request, model_admin):
        return ()

    def has_output(self):
        return True

    def choices(self, changelist):
        yield {
            "value": self.value() or "",
            "placeholder": self.placeholder,
            "others": [(k, v) for k, v in changelist.params.items() if k != self.parameter_name],
        }


class RequestedByFilter(TextInputFilter):
    title = "requested by"
    parameter_name = "requested_by"
    placeholder = "user or token:name"

    def queryset(self, request, queryset):
        value = (self.value() or "").strip()
        return queryset.filter(requested_by=value) if value else queryset


class MetadataFilter(TextInputFilter):
    title = "metadata"
    parameter_name = "metadata"
    placeholder = "key=value"

    def queryset(self, request, queryset):
        key, sep, value = (self.value() or "").partition("=")
        if not sep or not key.strip():
            return queryset
        return selectors.with_metadata(queryset, [(key.strip(), value.strip())])


class EndReasonFilter(admin.SimpleListFilter):
    title = "end reason"
    parameter_name = "end_reason"

    def lookups(self, request, model_admin):
        return [(reason.value, words) for reason, words in END_REASON_WORDS.items()]

    def queryset(self, request, queryset):
        return queryset.filter(end_reason=self.value()) if self.value() else queryset


def time_and_day(moment) -> str:
    """`16:54:12`, and `Dec 06` on a line below."""
    when = timezone.localtime(moment)
    return format_html("{}<br><small>{}</small>", when.strftime("%H:%M:%S"), when.strftime("%b %d"))


def _short(text: str, keep: int = 13) -> str:
    return text if len(text) <= keep + 1 else f"{text[:keep]}…"


def duration_ms(start, end) -> str:
    """The time from `start` to `end` in whole milliseconds ("—" when either is unknown)."""
    if start is None or end is None:
        return "—"
    return f"{(end - start).total_seconds() * 1000:.0f} ms"


class ReadOnlyAdmin(admin.ModelAdmin):
    show_full_result_count = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


INLINE_LIMIT = 200


class LatestRequestsFormSet(BaseInlineFormSet):
    """A long session's history would make a page of thousands of rows: show the latest."""

    def get_queryset(self):
        if not hasattr(self, "_latest"):
            latest = super().get_queryset().order_by("-created_at")[:INLINE_LIMIT]
            self._latest = sorted(latest, key=lambda row: row.created_at)
        return self._latest


class ResponseRequestInline(admin.TabularInline):
    model = ResponseRequest
    formset = LatestRequestsFormSet
    verbose_name_plural = f"Response requests (the latest {INLINE_LIMIT}; all under 'Response requests')"
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("id", "origin", "status", "instructions", "metadata", "created_at", "finished_at", "error_code")
    readonly_fields = fields
    ordering = ("created_at",)

    def has_add_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        """The history is never deleted by hand (`can_delete` is off). Answering the model's
        delete permission here showed a user who may delete requests but not view them an
        empty inline, as if the session had made none: the inline is for those who may view
        requests, and Django leaves it out for the others."""
        return False


# A session's page groups its fields; whatever field is not named here is shown under "Detail".
_SESSION_GROUPS = {
    None: ("id", "upstream_id", "console", "status", "kind", "model", "label", "connected_by"),
    "Times": ("started_at", "ended_at", "heartbeat_at"),
    "End": ("ended_because", "end_reason", "end_code", "end_detail"),
    "Recording": ("recording_player", "recording_length"),
}
# Shown by the player and its length instead: the file, the timeline, the seconds.
_grouped = {name for names in _SESSION_GROUPS.values() for name in names} | {
    "recording", "recording_transcript", "recording_seconds"
}
_READABLE = {"usage": "usage_read", "rate_limits": "rate_limits_read"}
SESSION_FIELDSETS = (
    *((title, {"fields": names}) for title, names in _SESSION_GROUPS.items()),
    # Usage and rate limits in words (their JSON is in the REST hook's shape below).
    ("Detail", {"fields": (
        *(_READABLE.get(f.name, f.name) for f in LiveSession._meta.fields
          if f.name not in _grouped),
        "cost", "history",
    )}),
    ("As the REST hook gives it", {"fields": ("as_json",), "classes": ("collapse",)}),
)


@admin.register(LiveSession)
class LiveSessionAdmin(ReadOnlyAdmin):
    # Short columns, as the request list has: the list fits beside the filters at 1280 px.
    list_display = ("short_session", "status", "model_and_caller", "started", "ended")
    list_display_links = ("short_session",)
    list_filter = ("status", EndReasonFilter, "model", "started_at")
    search_fields = ("upstream_id", "label", "connected_by", "call_id", "caller_number")
    # No date_hierarchy: its year/month links scan the whole table. The date filter does not.
    readonly_fields = [
        *(f.name for f in LiveSession._meta.fields), "ended_because", "console", "cost", "history", "as_json", "recording_player",
        "recording_withheld", "recording_length", "usage_read", "rate_limits_read",
    ]
    fieldsets = SESSION_FIELDSETS
    inlines = [ResponseRequestInline]

    @admin.display(description="ended because", ordering="end_reason")
    def ended_because(self, obj):
        """The reason in words, the upstream's close code and the detail, on one line (the code
        itself on hover)."""
        if not obj.end_reason:
            return "—"
        code = f" ({obj.end_code})" if obj.end_code is not None else ""
        detail = f": {obj.end_detail}" if obj.end_detail else ""
        return format_html('<span title="{}">{}{}{}</span>', obj.end_reason, END_REASON_WORDS.get(obj.end_reason, obj.end_reason), code, detail)

    @admin.display(description="session", ordering="upstream_id")
    def short_session(self, obj):
        """The id (whole on hover), and the label on a line below."""
        name = str(obj)
        label = format_html("<br><small>{}</small>", obj.label) if obj.label else ""
        return format_html('<span title="{}">{}</span>{}', name, _short(name, 14), label)

    @admin.display(description="model · connected by", ordering="model")
    def model_and_caller(self, obj):
        return format_html("{}<br><small>{}</small>", obj.model, obj.connected_by or "—")

    @admin.display(description="started", ordering="started_at")
    def started(self, obj):
        return time_and_day(obj.started_at)

    @admin.display(description="ended", ordering="ended_at")
    def ended(self, obj):
        """When, and why in words (the code and the detail on hover)."""
        if obj.ended_at is None:
            return "—"
        when = timezone.localtime(obj.ended_at).strftime("%H:%M:%S")
        if not obj.end_reason:
            return when
        return format_html(
            '{}<br><small title="{}">{}</small>', when, obj.end_code_summary + (f": {obj.end_detail}" if obj.end_detail else ""),
            END_REASON_WORDS.get(obj.end_reason, obj.end_reason),
        )

    @admin.display(description="usage")
    def usage_read(self, obj):
        return _usage_words(obj.usage)

    @admin.display(description="rate limits")
    def rate_limits_read(self, obj):
        """The latest `rate_limits.updated`, a line a limit: `requests: 4,997 of 5,000 left,
        reset in 45.1 s`."""
        def n(value) -> str:
            return f"{value:,}" if isinstance(value, int | float) else "?"

        rows = [
            f"{limit.get('name', '?')}: "
            f"{n(limit.get('remaining'))} of {n(limit.get('limit'))} left, "
            f"reset in {n(round(limit.get('reset_seconds') or 0, 1))} s"
            for limit in (obj.rate_limits or []) if isinstance(limit, dict)
        ]
        return _lines(rows)

    @admin.display(description="cost (USD)")
    def cost(self, obj):
        """The session's usage priced by OC_PRICES (`cost_usd` of the REST hook's Session)."""
        return _usd(costs.cost_usd(model=obj.model, usage=obj.usage or {}))

    @admin.display(description="console page")
    def console(self, obj):
        if not obj.upstream_id:
            return "—"
        return format_html('<a href="{}">{}</a>', reverse("console:session", args=[obj.upstream_id]), obj.upstream_id)

    @admin.display(description="Session JSON")
    def as_json(self, obj):
        return _as_json(obj)

    @admin.display(description="recording")
    def recording_player(self, obj):
        """The call's recording with its transcript and requests as a timeline to seek (the
        audio itself is for users who may listen to sessions)."""
        if not obj.recording:
            return "— (not a recorded voice session, recording off, or deleted after the retention)"
        return render_to_string(
            "console/parts/recording.html",
            {
                "session": obj,
                "recording_url": reverse("console:recording", args=[obj.upstream_id]),
                "timeline": recordings.recording_timeline(obj),
            },
        )

    def get_fieldsets(self, request, obj=None):
        """Only what the user may follow. The recording is the conversation itself: as on the
        console, only users who may listen to sessions get its player; others are told there
        is one (a player whose audio the server refuses them would be a button they cannot
        use). The link to the session's requests is for users who may view requests."""
        instead: dict[str, str | None] = {}  # field → the one shown instead (None: none)
        if not request.user.has_perm(LISTEN):
            instead["recording_player"] = "recording_withheld"
        if not self.admin_site.get_model_admin(ResponseRequest).has_view_permission(request):
            instead["history"] = None
        fieldsets = []
        for title, options in self.fieldsets:
            shown = (instead.get(name, name) for name in options["fields"])
            fieldsets.append((title, {**options, "fields": tuple(f for f in shown if f)}))
        return fieldsets

    @admin.display(description="length")
    def recording_length(self, obj):
        """The recording's length to the second, as a person reads it (`5 min 33 s`)."""
        if obj.recording_seconds is None:
            return "—"  # as the recording line says it (a read-only page shows None as "None")
        minutes, seconds = divmod(round(obj.recording_seconds), 60)
        return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"

    @admin.display(description="recording")
    def recording_withheld(self, obj):
        if not obj.recording:
            return self.recording_player(obj)
        return "Recorded. Hearing it needs the permission “Can listen to live sessions”."

    @admin.display(description="response history")
    def history(self, obj):
        url = reverse("admin:oc_sessions_responserequest_changelist")
        return format_html('<a href="{}?session__id__exact={}">all requests</a>', url, obj.pk)


@admin.register(ResponseRequest)
class ResponseRequestAdmin(ReadOnlyAdmin):
    # Short columns: the list fits beside the filters at 1280 px (ids shortened, full on hover
    # and on the request's page; costs and the timeline's other steps are on that page too).
    # The status next to the id, as the session list has it: on a phone the table scrolls in
    # its box, and what is looked for is on screen.
    list_display = ("short_id", "status", "short_session", "requested", "created", "latency")
    list_display_links = ("short_id",)
    list_filter = ("status", "origin", "created_at", RequestedByFilter, MetadataFilter)
    change_list_template = "admin/oc_sessions/responserequest/change_list.html"
    actions = ["export_csv"]
    search_fields = ("instructions", "metadata", "id", "response_id")
    # No date_hierarchy: its year/month links scan the whole table. The date filter does not.
    list_select_related = ("session",)
    # The latest first, as the session list (the REST hook's history is oldest first).
    ordering = ("-created_at",)
    readonly_fields = [f.name for f in ResponseRequest._meta.fields] + [
        "queue_wait", "latency", "duration", "cost", "as_json", "metadata_read", "usage_read",
        "session_link", "session_text",
    ]
    fieldsets = (
        (None, {"fields": ("id", "session_link", "origin", "requested_by", "status", "error_code", "error_message")}),
        ("Overrides", {"fields": (
            "instructions", "instructions_mode", "sent_instructions", "conversation",
            "metadata_read",
        )}),
        ("Timeline", {"fields": ("created_at", "sent_at", "started_at", "finished_at", "queue_wait", "latency", "duration")}),
        ("Result", {"fields": ("response_id", "event_id", "output_text", "usage_read", "cost")}),
        ("As the REST hook gives it", {"fields": ("as_json",), "classes": ("collapse",)}),
    )

    @admin.display(description="ResponseRequest JSON")
    def as_json(self, obj):
        return _as_json(obj)

    def get_fieldsets(self, request, obj=None):
        """The session is a link for users who may view sessions; for the others its id is
        text (a link would lead them to a 403)."""
        if self.admin_site.get_model_admin(LiveSession).has_view_permission(request):
            return self.fieldsets
        return [
            (title, {**options, "fields": tuple(
                "session_text" if name == "session_link" else name for name in options["fields"]
            )})
            for title, options in self.fieldsets
        ]

    @admin.display(description="session")
    def session_link(self, obj):
        url = reverse("admin:oc_sessions_livesession_change", args=[obj.session_id])
        return format_html('<a href="{}">{}</a>', url, obj.session)

    @admin.display(description="session")
    def session_text(self, obj):
        return str(obj.session)

    @admin.display(description="metadata")
    def metadata_read(self, obj):
        """A line a pair, `key = value`."""
        return _lines([f"{key} = {value}" for key, value in (obj.metadata or {}).items()])

    @admin.display(description="usage")
    def usage_read(self, obj):
        return _usage_words(obj.usage)

    @admin.display(description="cost (USD)")
    def cost(self, obj):
        if obj.usage is None:
            return "—"
        return _usd(costs.cost_usd(model=obj.session.model, usage=obj.usage))

    def get_urls(self):
        export_view = self.admin_site.admin_view(self.export_view)
        return [path("export.csv", export_view, name="oc_sessions_responserequest_export"), *super().get_urls()]

    def export_view(self, request):
        """'Export CSV' on the list: every request the list's filters and search keep."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            rows = self.get_changelist_instance(request).get_queryset(request)
        except IncorrectLookupParameters:
            # As the list answers a filter it cannot apply: the list, unfiltered, saying so.
            return HttpResponseRedirect(f"{reverse('admin:oc_sessions_responserequest_changelist')}?{ERROR_FLAG}=1")
        return _csv_response(request, rows)

    @admin.action(description="Export the selected requests as CSV", permissions=["view"])
    def export_csv(self, request, queryset):
        return _csv_response(request, queryset)

    @admin.display(description="id", ordering="id")
    def short_id(self, obj):
        return format_html('<span title="{}">{}</span>', obj.id, _short(obj.id, 10))

    @admin.display(description="session", ordering="session__upstream_id")
    def short_session(self, obj):
        name = str(obj.session)
        return format_html('<span title="{}">{}</span>', name, _short(name, 11))

    @admin.display(description="requested by", ordering="origin")
    def requested(self, obj):
        """The origin, and who (the operator or the token) on a line below."""
        return format_html("{}<br><small>{}</small>", obj.get_origin_display(), obj.requested_by or "—")

    @admin.display(description="created", ordering="created_at")
    def created(self, obj):
        return time_and_day(obj.created_at)

    @admin.display(description="queued for")
    def queue_wait(self, obj):
        return duration_ms(obj.created_at, obj.sent_at)

    @admin.display(description="sent → started")
    def latency(self, obj):
        return duration_ms(obj.sent_at, obj.started_at)

    @admin.display(description="started → finished")
    def duration(self, obj):
        return duration_ms(obj.started_at, obj.finished_at)


class TokenStateFilter(admin.SimpleListFilter):
    """Active or revoked, in words (a filter on `revoked_at` offered "No date" and "Has date")."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() in ("active", "revoked"):
            return queryset.filter(revoked_at__isnull=self.value() == "active")
        return queryset


class ApiTokenAddForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=ApiToken.Scope.choices,
        initial=list(ApiToken.DEFAULT_SCOPES),
        widget=forms.CheckboxSelectMultiple,
    )

    class Meta:
        model = ApiToken
        fields = ("name", "scopes")

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if (problem := api_token_name_problem(name)) is not None:
            raise forms.ValidationError(problem[0].upper() + problem[1:] + ".", code="taken")
        return name


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created here or with `manage.py create_api_token`; the plain token is shown
    once, on the page that answers the creation, and only its digest is stored."""

    # Short columns, as the other lists have: whether a token is revoked is what is looked for,
    # and it was past the list's edge at 1280 px (when it was made is on the token's page).
    list_display = ("name", "prefix", "scope_list", "state", "last_used")
    list_filter = (TokenStateFilter,)
    search_fields = ("name", "prefix")
    readonly_fields = ("name", "prefix", "scopes", "created_at", "last_used_at", "revoked_at", "created_by", "usage")
    actions = ["revoke"]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ApiTokenAddForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def get_fields(self, request, obj=None):
        return ("name", "scopes") if obj is None else self.readonly_fields

    def has_change_permission(self, request, obj=None):
        return False  # a token is never edited: revoke it and make another

    def save_model(self, request, obj, form, change):
        if change:
            return
        token, plain = api_token_create(
            name=form.cleaned_data["name"], scopes=form.cleaned_data["scopes"], created_by=request.user
        )
        obj.pk, obj._plain = token.pk, plain

    def response_add(self, request, obj, post_url_continue=None):
        # Answer with the token itself instead of redirecting: a redirect would have to carry
        # it in the session or a message cookie.
        return TemplateResponse(
            request,
            "admin/oc_sessions/apitoken/created.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "token": ApiToken.objects.get(pk=obj.pk),
                "plain": obj._plain,
                "title": "API token created",
            },
        )

    @admin.display(description="scopes")
    def scope_list(self, obj):
        return ", ".join(obj.scopes)

    @admin.display(description="state", ordering="revoked_at")
    def state(self, obj):
        """Active, or revoked with when on a line below."""
        if obj.revoked_at is None:
            return "Active"
        return format_html(
            "Revoked<br><small>{}</small>",
            timezone.localtime(obj.revoked_at).strftime("%b %d, %H:%M"),
        )

    @admin.display(description="last used", ordering="last_used_at")
    def last_used(self, obj):
        return "never" if obj.last_used_at is None else time_and_day(obj.last_used_at)

    def get_list_display(self, request):
        return (*super().get_list_display(request), "usage_column")

    def get_changelist_instance(self, request):
        """The page's tokens with their usage: one grouped query over what the page's tokens
        asked for (found by their names' indexes), not over the whole history."""
        changelist = super().get_changelist_instance(request)
        tokens = changelist.result_list  # evaluated once here, and shown as they are now
        usage = selectors.api_token_usage(tokens=[f"token:{token.name}" for token in tokens])
        for token in tokens:
            token.usage_total = usage.get(f"token:{token.name}")
        return changelist

    @admin.display(description="usage (tokens, USD)")
    def usage_column(self, obj):
        return _token_usage(obj.usage_total)

    @admin.display(description="usage")
    def usage(self, obj):
        """Tokens and cost of the requests it made (its requests are named `token:<name>`)."""
        name = f"token:{obj.name}"
        return _token_usage(selectors.api_token_usage(tokens=[name]).get(name))

    def has_revoke_permission(self, request):
        """Revoking changes a token: it needs the change permission of the model, which the
        admin otherwise hides (a token's fields are never edited)."""
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")

    @admin.action(description="Revoke the selected tokens", permissions=["revoke"])
    def revoke(self, request, queryset):
        for token in queryset.filter(revoked_at__isnull=True):
            api_token_revoke(token=token)
        self.message_user(request, f"Revoked at {timezone.localtime():%H:%M:%S}.")


def _token_usage(total: dict | None) -> str:
    if not total:
        return "—"
    cost = f"${total['cost_usd']:,.4f}"
    if total["unpriced_tokens"]:
        cost += f" (+{total['unpriced_tokens']:,} tokens without a price)"
    tokens, requests = _count(total["total_tokens"], "token"), _count(total["requests"], "request")
    return f"{tokens} in {requests}, {cost}"


def _count(number: int, noun: str) -> str:
    """`1 request`, `2 requests`: the list reads as a sentence."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"
