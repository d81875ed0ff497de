"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

import asyncio
import gc
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "operator_console.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.urls import get_resolver, path  # noqa: E402

from apps.console.consumers import ConsoleConsumer  # noqa: E402
from apps.console.listen import ListenConsumer  # noqa: E402
from apps.events.flow import with_flow_control  # noqa: E402
from apps.sessions.auth import SameOriginOnly  # noqa: E402
from apps.sessions.checks import several_processes_need_redis  # noqa: E402
from apps.sessions.consumers import RelayConsumer  # noqa: E402
from apps.sessions.housekeeping import housekeeping, install_shutdown_trigger  # noqa: E402
from operator_console import daphne_compat, daphne_denial  # noqa: E402

# `daphne` runs no system checks: the one that matters at start-up is made here, so several
# processes on the in-memory channel layer refuse to start instead of serving half-connected.
for error in several_processes_need_redis():
    raise ImproperlyConfigured(f"{error.msg} {error.hint} ({error.id})")

daphne_compat.install()
daphne_denial.install()  # a refused relay handshake says why, in JSON
install_shutdown_trigger()

# The relay authenticates its handshake itself (apps/sessions/auth.py) and is not wrapped in
# AuthMiddlewareStack, whose session wrapper does work on every frame sent. The console's
# sockets are for logged-in operators only, from this site's pages only (the Origin must be
# one of DJANGO_ALLOWED_HOSTS and the handshake's own scheme, host and port; a missing Origin
# is refused).
websocket_urls = [
    path("v1/realtime", RelayConsumer.as_asgi()),
    path(
        "ws/console/",
        SameOriginOnly(AllowedHostsOriginValidator(AuthMiddlewareStack(ConsoleConsumer.as_asgi()))),
    ),
    path(
        "ws/console/sessions/<path:session_id>/audio",
        SameOriginOnly(AllowedHostsOriginValidator(AuthMiddlewareStack(ListenConsumer.as_asgi()))),
    ),
]


class StartHousekeeping:
    """Start this process's housekeeping (heartbeats, sweeps of dead processes' sessions,
    pickup of lost pings) with the first connection or request it serves, and count the HTTP
    requests being answered, which a graceful stop waits for (`Housekeeping.shutdown`)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        keeper = housekeeping()
        keeper.start()
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        keeper.request_began()
        try:
            return await self.app(scope, receive, send)
        finally:
            keeper.request_ended()


class EndDisconnectListeners:
    """Daphne cancels every request still being answered when it stops (an event stream, say).
    Django's handler, cancelled, leaves behind its own task that listens for the client's
    `http.disconnect` (`ASGIHandler.handle` in Django 5.2): when the connection closes, that
    task raises `RequestAborted` that nobody retrieves, and asyncio logs "Task exception was
    never retrieved" with a traceback at each restart. Here the tasks that called `receive`
    are seen to when the request is cancelled: those still listening are cancelled with it,
    and a disconnect one of them has already raised is read, as Django would have."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        callers: set[asyncio.Task] = set()

        async def noted_receive():
            callers.add(asyncio.current_task())
            return await receive()

        try:
            return await self.app(scope, noted_receive, send)
        except asyncio.CancelledError:
            this = asyncio.current_task()
            for task in callers - {this}:
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # read, so not logged as never retrieved
            raise


application = StartHousekeeping(
    ProtocolTypeRouter(
        {
            "http": EndDisconnectListeners(with_flow_control(django_asgi_app)),
            "websocket": URLRouter(websocket_urls),
        }
    )
)


def freeze_what_is_loaded() -> None:
    """Load every view now (Django would at the first request), then move everything loaded
    so far to the collector's permanent generation. Nearly all of it lives as long as the
    process, and a full collection no longer walks it: on a busy process that walk was a
    pause of every thread long enough to show in the slowest nudges (bench/RESULTS.md,
    "Full collections and `gc.freeze`"). Reference counting still frees what is dropped."""
    get_resolver().url_patterns  # noqa: B018 - imports every view module
    gc.collect()
    gc.freeze()


freeze_what_is_loaded()
