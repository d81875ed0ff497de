"""System checks: deployment mistakes found at `manage.py check` / `migrate`, and as the ASGI
application loads (`operator_console/asgi.py`; `daphne` itself runs no system checks).

Several server processes on the in-memory channel layer do not fail at start-up: each process
gets a layer of its own, so a request that reaches a process other than the one holding its
session is never pinged there (the table's pickup still sends it, seconds late), and cancels,
notes, interrupts and console watchers from other processes never reach the session at all.
"""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error

IN_MEMORY_LAYER = "channels.layers.InMemoryChannelLayer"


def several_processes_need_redis(app_configs=None, **kwargs) -> list[Error]:
    processes = max(settings.OC_PROCESSES, settings.WEB_CONCURRENCY)
    backend = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    if processes <= 1 or backend != IN_MEMORY_LAYER:  # the layer is in-memory when REDIS_URL is unset
        return []
    said = " and ".join(
        f"{name}={value}"
        for name, value in (
            ("OC_PROCESSES", settings.OC_PROCESSES),
            ("WEB_CONCURRENCY", settings.WEB_CONCURRENCY),
        )
        if value > 1
    )
    return [
        Error(
            f"The deployment runs several server processes ({said}) on the in-memory channel "
            "layer, which each process keeps to itself: sessions held by one process cannot be "
            "reached from the others (their nudges arrive late; cancels, notes, interrupts and "
            "console views fail).",
            hint="Set REDIS_URL (e.g. redis://127.0.0.1:6379/0) so every process shares one "
            "channels_redis layer, or run a single process (OC_PROCESSES=1, WEB_CONCURRENCY unset).",
            id="oc_sessions.E001",
        )
    ]
