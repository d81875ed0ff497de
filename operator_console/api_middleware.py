"""The REST hook's middleware: Django's security and common middleware, run on the event loop.

Under ASGI, `MiddlewareMixin` runs each hook through `sync_to_async(thread_sensitive=True)`: a
trip to asgiref's one shared thread and back through the loop's queue. SecurityMiddleware and
CommonMiddleware have a request and a response hook each, so four trips per REST call, each of
them a wait behind whatever else the loop is running (in the soak's slowest 1 % of nudges,
about 10 ms of ~80 were spent between Daphne and the view, and after it).

Their hooks only read the request, the settings and the URLconf, and set headers or answer a
redirect or a 400 (`DisallowedHost`); they do no I/O. So this middleware calls them inline,
in Django's order: request hooks outside-in until one answers, then the response hooks of those
that ran, inside-out. Only middleware that does no I/O may be listed in `INLINE`.
"""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.utils.module_loading import import_string

INLINE = (
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
)


def _unused(request):  # pragma: no cover - the wrapped middleware never calls on
    raise AssertionError("inline middleware does not call its own get_response")


class ApiMiddleware:
    sync_capable = False
    async_capable = True

    def __init__(self, get_response) -> None:
        if not iscoroutinefunction(get_response):
            raise TypeError("ApiMiddleware needs an async middleware chain")
        self.get_response = get_response
        self.layers = [import_string(path)(_unused) for path in INLINE]
        markcoroutinefunction(self)

    async def __call__(self, request):
        response = None
        ran = []
        for layer in self.layers:
            ran.append(layer)
            if hasattr(layer, "process_request"):
                response = layer.process_request(request)
                if response is not None:
                    break
        if response is None:
            response = await self.get_response(request)
        for layer in reversed(ran):
            if hasattr(layer, "process_response"):
                response = layer.process_response(request, response)
        return response
