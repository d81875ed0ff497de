"""Health endpoints for load balancers and orchestrators."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, JsonResponse

from apps.sessions import recorder
from apps.sessions.history import writer as history
from apps.sessions.housekeeping import housekeeping
from apps.sessions.process import PROCESS_ID

READY_TIMEOUT = 2.0

logger = logging.getLogger(__name__)


async def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and serving; with what it holds (for operators and leak checks), and
    what it has still to write: the history's operations not yet committed, the recordings
    not yet saved. Once all three are 0 its sessions' rows are final, and stopping it loses
    nothing (a drain script waits for that)."""
    return JsonResponse(
        {
            "status": "ok",
            "process": PROCESS_ID,
            "sessions": len(housekeeping().holders),
            "history_pending": history.pending(),
            "recordings_pending": recorder.pending(),
            "tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
            "open_files": _open_files(),
        }
    )


def _open_files() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux
        return None


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _channel_layer() -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel()  # the default prefix: see services._ask_actor
    await layer.send(channel, {"type": "readyz.ping"})
    await layer.receive(channel)


async def readyz(request: HttpRequest) -> JsonResponse:
    """The process can do its work: its database and its channel layer answer, and it was
    not told to stop."""
    checks: dict[str, str] = {}
    for name, check in (("database", sync_to_async(_database)), ("channel_layer", _channel_layer)):
        started = time.perf_counter()
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await check()
            checks[name] = f"ok ({(time.perf_counter() - started) * 1000:.1f} ms)"
        except Exception as exc:
            # Anyone may ask, so the answer names the kind of failure and the log says why: an
            # error's text may hold a host, a port or a user name (a database's refusal does).
            logger.warning("readyz: the %s check failed: %s: %s", name, type(exc).__name__, exc)
            checks[name] = f"failed: {type(exc).__name__} (the server's log says why)"
    if housekeeping().stopping:  # told to stop: a load balancer sends it nothing new
        checks["process"] = "stopping"
    ready = all(value.startswith("ok") for value in checks.values())
    return JsonResponse({"status": "ready" if ready else "not ready", **checks}, status=200 if ready else 503)
