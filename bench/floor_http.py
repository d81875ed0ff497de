"""HTTP floor: the smallest ASGI app (200, a constant JSON body), served by Daphne.

The nudge part's baseline for what Daphne itself costs per HTTP round trip, without Django.

    daphne -b 127.0.0.1 -p 9003 bench.floor_http:application
"""

from __future__ import annotations

BODY = b'{"status":"ok"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def application(scope, receive, send) -> None:
    if scope["type"] != "http":  # Daphne sends no lifespan events
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
