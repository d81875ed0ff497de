"""WhiteNoise, without putting every request through a thread.

`WhiteNoiseMiddleware` is synchronous only, so under ASGI Django runs it (and, through it,
the rest of the chain) by way of a thread hop on every request — about a millisecond each on
a small machine, on every REST call. This middleware is async: requests under STATIC_URL are
served by WhiteNoise (in a thread: it reads files), all others go straight on.
"""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from whitenoise.middleware import WhiteNoiseMiddleware


class AsyncWhiteNoiseMiddleware:
    sync_capable = False
    async_capable = True

    def __init__(self, get_response) -> None:
        if not iscoroutinefunction(get_response):
            raise TypeError("AsyncWhiteNoiseMiddleware needs an async middleware chain")
        self.get_response = get_response
        # WhiteNoise's own lookup, answering None for anything that is not a static file.
        self.whitenoise = WhiteNoiseMiddleware(lambda request: None)
        self.prefix = "/" + settings.STATIC_URL.lstrip("/")
        markcoroutinefunction(self)

    async def __call__(self, request):
        if request.path_info.startswith(self.prefix):
            response = await sync_to_async(self.whitenoise, thread_sensitive=False)(request)
            if response is not None:
                return response
        return await self.get_response(request)
