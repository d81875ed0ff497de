"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

import gc
import os
import sys

# The relay's event loop shares the GIL with the history writer's thread. With CPython's
# default 5 ms switch interval a frame can wait up to 5 ms behind a batch being prepared; 1 ms
# cut the relay's p99 per-delta latency at C=100 by about 2 ms in bench runs, at no CPU cost.
sys.setswitchinterval(0.001)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "operator_console.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from django.conf import settings  # noqa: E402
from django.core import signals  # noqa: E402
from django.core.exceptions import ImproperlyConfigured, RequestAborted  # noqa: E402
from django.core.handlers.asgi import ASGIHandler, get_script_prefix  # noqa: E402
from django.urls import set_script_prefix  # noqa: E402

from apps.sessions.checks import several_processes_need_redis  # noqa: E402

# `daphne` runs no system checks: the one that matters at start-up is made here, so several
# processes on the in-memory channel layer refuse to start instead of serving half-connected.
for error in several_processes_need_redis():
    raise ImproperlyConfigured(f"{error.msg} {error.hint} ({error.id})")


class ApiHandler(ASGIHandler):
    """Django for `/api/`: the same URLs and views, with `OC_API_MIDDLEWARE` only, and nothing
    per request that goes through a thread.

    Django's `ASGIHandler.handle` sends `request_started` and closes the response (which sends
    `request_finished`) through `sync_to_async`, and, with asgiref 3.13, runs each request in a
    `ThreadSensitiveContext` that starts a thread for the request's sync work and another to
    join it. The REST hook's views are async and do their database work on
    `apps.sessions.db`'s threads; the signals' receivers (Django's `reset_queries`,
    `close_old_connections`, `close_caches`, `reset_urlconf`) touch only the calling thread's
    connections, caches and URLconf, and the loop's thread has none of them. So here the
    signals are sent inline, and the view runs as the request's own task: no thread trips, and
    no second task to listen for a disconnect (a REST call that was stored is answered and
    pinged whether or not its client is still there).
    """

    async def __call__(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        response = None
        try:
            set_script_prefix(get_script_prefix(scope))
            signals.request_started.send(sender=self.__class__, scope=scope)
            request, response = self.create_request(scope, body_file)
            if request is not None:
                response = await self.run_get_response(request)
            await self.send_response(response, send)
        finally:
            body_file.close()
            if response is not None:
                response.close()  # sends request_finished

    def load_middleware(self, is_async=False):
        everything = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.OC_API_MIDDLEWARE
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = everything


api_asgi_app = ApiHandler()


async def http_app(scope, receive, send):
    app = api_asgi_app if scope["path"].startswith("/api/") else django_asgi_app
    return await app(scope, receive, send)


from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

from apps.console.consumers import ConsoleConsumer  # noqa: E402
from apps.sessions.consumers import RelayConsumer  # noqa: E402
from apps.sessions.housekeeping import housekeeping  # noqa: E402
from operator_console import daphne_compat  # noqa: E402

daphne_compat.install()

# The relay authenticates its handshake itself (apps/sessions/auth.py) and is not wrapped in
# AuthMiddlewareStack, whose session wrapper does work on every frame sent. The console's
# socket is for logged-in operators only, from this site's pages only (the Origin must be
# one of DJANGO_ALLOWED_HOSTS; a missing Origin is refused).
websocket_urls = [
    path("v1/realtime", RelayConsumer.as_asgi()),
    path(
        "ws/console/",
        AllowedHostsOriginValidator(AuthMiddlewareStack(ConsoleConsumer.as_asgi())),
    ),
]


class StartHousekeeping:
    """Start this process's housekeeping (heartbeats, sweeps of dead processes' sessions,
    pickup of lost pings) with the first connection or request it serves."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            housekeeping().start()
        return await self.app(scope, receive, send)


application = StartHousekeeping(
    ProtocolTypeRouter(
        {
            "http": http_app,
            "websocket": URLRouter(websocket_urls),
        }
    )
)


def _import_lazy_modules() -> None:
    """Import now what the first request and session would: the URLconf (the REST hook and its
    schemas), the channel layer's client, the SDK's realtime resources and HTTP stack, the
    PostgreSQL pool. Imported later, they stay in the collector's full collections."""
    from channels.layers import get_channel_layer
    from django.urls import get_resolver

    from apps.realtime import upstream

    get_resolver().url_patterns  # noqa: B018
    get_channel_layer()
    upstream.import_lazy_modules()
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        import psycopg_pool  # noqa: F401


_import_lazy_modules()

# Everything loaded so far lives as long as the process: keep it out of the garbage
# collector's full collections. Each visits every tracked object (the time is memory
# latency, ~0.1 µs a reference here); before the freeze a full collection took ~100 ms, and
# with the modules above left out, 30-60 ms every 20 s under the soak, in the nudges' tail.
gc.collect()
gc.freeze()
