"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "operator_console.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from apps.sessions.consumers import RelayConsumer  # noqa: E402
from operator_console import daphne_compat  # noqa: E402

daphne_compat.install()

# The relay authenticates its handshake itself (apps/sessions/auth.py) and is not wrapped in
# AuthMiddlewareStack, whose session wrapper does work on every frame sent.
websocket_urls = [
    path("v1/realtime", RelayConsumer.as_asgi()),
]

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(websocket_urls),
    }
)
