"""`since`: the time from a moment to now as the dashboard shows it (`12s`, `3m 4s`,
`2h 5m`), for a page without JavaScript. dom.js `since()` says it the same way, live."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.utils import timezone

register = template.Library()


@register.filter
def since(iso: str | None) -> str:
    if not iso:
        return "—"
    seconds = max(0, round((timezone.now() - datetime.fromisoformat(iso)).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m {seconds % 60}s"
    return f"{minutes // 60}h {minutes % 60}m"
