"""The upstream's calls REST: where it is, and the requests the console makes to it.

The Realtime WebSocket base (`OC_UPSTREAM_URL`, or the embedded simulator's) names the REST
base too: `ws://` → `http://`, `wss://` → `https://`, the same host and path
(`wss://api.openai.com/v1` → `https://api.openai.com/v1/realtime/calls`). Requests carry
`Authorization: Bearer OPENAI_API_KEY` (the embedded simulator's placeholder key when the
upstream is the simulator), which never leaves the server: the console passes on the
upstream's status and JSON body, and builds every header it answers with itself. The calls
endpoint, the webhook (`apps/calls`) and call control (`apps/sessions/calls.py`) all go
through here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from django.conf import settings

from apps.realtime.upstream import PLACEHOLDER_KEY, redact
from apps.sessions import upstream as session_upstream

TIMEOUT = httpx.Timeout(15.0, connect=5.0)


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    status: int
    body: bytes
    content_type: str
    location: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error_body(self) -> dict[str, Any]:
        """The upstream's JSON error, or one in its shape that says what came back. Its words
        are passed on to callers without what names a key (`redact`): the service names the
        key it was refused, masked, and OPENAI_API_KEY is none of a caller's business."""
        try:
            body = json.loads(self.body)
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            secret = settings.OPENAI_API_KEY
            return {
                "error": {
                    key: redact(value, secret) if isinstance(value, str) else value
                    for key, value in body["error"].items()
                }
            }
        return {
            "error": {
                "type": "upstream_error",
                "code": "upstream_error",
                "message": f"The upstream answered {self.status} without a JSON error.",
                "param": None,
            }
        }


def http_base(ws_base: str) -> str:
    """The REST base of a Realtime WebSocket base (`ws` → `http`, `wss` → `https`)."""
    if ws_base.startswith("wss://"):
        return "https://" + ws_base[len("wss://"):]
    if ws_base.startswith("ws://"):
        return "http://" + ws_base[len("ws://"):]
    return ws_base


async def rest_base() -> str:
    return http_base(await session_upstream.base_url()).rstrip("/")


def _headers() -> dict[str, str]:
    # As the relay's upstream connection: the key goes only to a configured upstream (the
    # embedded simulator takes any key, and gets a placeholder).
    key = settings.OPENAI_API_KEY if settings.OC_UPSTREAM_URL else ""
    return {"Authorization": f"Bearer {key or PLACEHOLDER_KEY}"}


def client(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=TIMEOUT, transport=transport, trust_env=False)


async def _send(request: httpx.Request, transport: httpx.AsyncBaseTransport | None) -> UpstreamAnswer:
    async with client(transport) as http:
        response = await http.send(request)
        return UpstreamAnswer(
            status=response.status_code,
            body=response.content,
            content_type=response.headers.get("content-type", ""),
            location=response.headers.get("location", ""),
        )


async def create_call(
    *, sdp: str, model: str, session: dict[str, Any] | None, transport: httpx.AsyncBaseTransport | None = None
) -> UpstreamAnswer:
    """Forward a WebRTC offer: `application/sdp` when there is no session configuration to
    send, else `multipart/form-data` with `sdp` and `session` (as the SDK sends it)."""
    url = f"{await rest_base()}/realtime/calls"
    headers = {**_headers(), "Accept": "application/sdp"}
    if session:
        files = {
            "sdp": (None, sdp.encode(), "application/sdp"),
            "session": (None, json.dumps(session).encode(), "application/json"),
        }
        request = httpx.Request("POST", url, headers=headers, files=files)
    else:
        headers["Content-Type"] = "application/sdp"
        request = httpx.Request("POST", url, params={"model": model}, headers=headers, content=sdp.encode())
    return await _send(request, transport)


async def call_action(
    call_id: str, action: str, body: dict[str, Any] | None = None, *, transport: httpx.AsyncBaseTransport | None = None
) -> UpstreamAnswer:
    """`POST {base}/realtime/calls/{call_id}/{action}` (accept, reject, hangup, refer)."""
    url = f"{await rest_base()}/realtime/calls/{quote(call_id, safe='')}/{action}"
    request = httpx.Request("POST", url, headers=_headers(), json=body or {})
    return await _send(request, transport)


def call_id_from_location(location: str) -> str:
    """`/v1/realtime/calls/rtc_abc` (or a full URL) → `rtc_abc`."""
    return location.rstrip("/").rsplit("/", 1)[-1] if location else ""
