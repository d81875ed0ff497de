"""Floor 2: a minimal Channels consumer relay, served by Daphne in its own process.

Accept, open the upstream with the `websockets` client, pump frames both ways, nothing else:
no auth, no database, no parsing, no channel layer.

    BENCH_UPSTREAM_URL=ws://127.0.0.1:9000/v1 daphne -b 127.0.0.1 -p 9002 \
        bench.floor_channels:application
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-floor",
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=["channels"],
        DATABASES={},
        USE_TZ=True,
        LOGGING_CONFIG=None,
    )
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

UPSTREAM = os.environ.get("BENCH_UPSTREAM_URL", "ws://127.0.0.1:9000/v1").rstrip("/")


class FloorConsumer(AsyncWebsocketConsumer):
    upstream = None
    pump: asyncio.Task | None = None

    async def connect(self) -> None:
        await self.accept()
        query = self.scope.get("query_string", b"").decode("latin1")
        url = f"{UPSTREAM}/realtime" + (f"?{query}" if query else "")
        try:
            self.upstream = await connect(url, max_size=None)
        except Exception:
            await self.close(code=1011)
            return
        self.pump = asyncio.create_task(self._pump_down())

    async def _pump_down(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in self.upstream:
                if isinstance(frame, str):
                    await self.send(text_data=frame)
                else:
                    await self.send(bytes_data=frame)
        await self.close()

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if self.upstream is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.upstream.send(text_data if text_data is not None else bytes_data)

    async def disconnect(self, code) -> None:
        if self.pump is not None:
            self.pump.cancel()
        if self.upstream is not None:
            await self.upstream.close()


application = ProtocolTypeRouter({"websocket": FloorConsumer.as_asgi()})
