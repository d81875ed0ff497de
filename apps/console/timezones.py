"""Times in the operator's timezone: their setting (`OperatorProfile.timezone`), else their
browser's (the `oc_tz` cookie, which static/js/clock.js keeps current), else UTC.

The middleware activates it for the pages (console, admin, login), so `{{ moment|date }}`
shows local time; the API and the relay keep ISO 8601 with an offset and are left alone.
"""

from __future__ import annotations

import functools
import zoneinfo
from urllib.parse import unquote

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.http import HttpRequest
from django.utils import timezone
from django.utils.decorators import sync_and_async_middleware

from apps.sessions.db import AWAY
from operator_console.unavailable import unavailable

COOKIE = "oc_tz"
PAGES = ("/console/", "/admin/", "/accounts/")


@functools.cache
def zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def valid(name: str | None) -> bool:
    return bool(name) and name in zones()


def chosen(user) -> str:
    """The operator's own setting ("" for the browser's)."""
    from apps.console.models import OperatorProfile

    if user is None or not user.is_authenticated:
        return ""
    return OperatorProfile.objects.filter(user=user).values_list("timezone", flat=True).first() or ""


def browser_zone(request: HttpRequest) -> str:
    """The browser's zone as clock.js keeps it: percent-encoded in the cookie (the `/` of
    "America/New_York"), so decoded here; "" when there is none."""
    return unquote(request.COOKIES.get(COOKIE, ""))


def zone_for(request: HttpRequest) -> str:
    """The zone of this request's times; `request.oc_timezone_chosen` says whether it is the
    operator's setting (else the browser's, which the page's script uses as it is)."""
    setting = chosen(getattr(request, "user", None))
    request.oc_timezone_chosen = valid(setting)
    if request.oc_timezone_chosen:
        return setting
    browser = browser_zone(request)
    return browser if valid(browser) else "UTC"


def _applies(request: HttpRequest) -> bool:
    return request.path.startswith(PAGES)


@sync_and_async_middleware
def operator_timezone(get_response):
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest):
            if not _applies(request):
                return await get_response(request)
            try:
                zone = await sync_to_async(zone_for)(request)
            except AWAY as exc:  # say so now: the view would wait out the pool a second time
                return unavailable(request, exc)
            with timezone.override(zoneinfo.ZoneInfo(zone)):
                return await get_response(request)

    else:

        def middleware(request: HttpRequest):
            if not _applies(request):
                return get_response(request)
            try:
                zone = zone_for(request)
            except AWAY as exc:
                return unavailable(request, exc)
            with timezone.override(zoneinfo.ZoneInfo(zone)):
                return get_response(request)

    return middleware
