"""Plain HTTP requests on the simulator's WebSocket port. No Django.

What it works around: the service has its HTTP endpoints (`POST /v1/realtime/calls`, ...) on
the same host as its WebSocket, and the console derives one from the other (`ws://H:P/v1` →
`http://H:P/v1`). websockets 15, which serves the simulator, parses nothing but the `GET` of
an opening handshake: any other request line fails the handshake. Its `serve()` takes the class
of the connections it makes (`create_connection`), and a connection is an asyncio Protocol, so
`HTTPServerConnection` looks at the request line first: `GET` goes to websockets untouched
(WebSocket handshakes, and the GETs `process_request` answers); any other method is read here
(head, then a `Content-Length` body), handed to an `HTTPHandler`, answered, and the connection
closed. One request per connection (`Connection: close`); `Expect: 100-continue` is honoured
(curl sends it); no chunked bodies, no keep-alive, no pipelining — the clients in play (httpx in
the `openai` SDK, urllib, curl) need none of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 1024 * 1024
_GET = b"GET "


@dataclass(frozen=True, kw_only=True)
class HTTPRequest:
    method: str
    target: str  # path and query, as sent
    headers: Headers  # case-insensitive
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)

    @property
    def content_type(self) -> str:
        """The media type, lower case, without parameters."""
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


@dataclass(kw_only=True)
class HTTPResponse:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)

    def encode(self) -> bytes:
        reason = HTTPStatus(self.status).phrase if self.status in HTTPStatus._value2member_map_ else ""
        lines = [f"HTTP/1.1 {self.status} {reason}"]
        if self.content_type is not None:
            lines.append(f"Content-Type: {self.content_type}")
        lines += [f"{name}: {value}" for name, value in self.headers]
        lines += [f"Content-Length: {len(self.body)}", "Connection: close", "", ""]
        return "\r\n".join(lines).encode("latin-1") + self.body


def json_response(status: int, body: Any, headers: list[tuple[str, str]] | None = None) -> HTTPResponse:
    return HTTPResponse(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers or [],
    )


def error_response(
    status: int, message: str, *, code: str | None = None, param: str | None = None,
    error_type: str = "invalid_request_error",
) -> HTTPResponse:
    """The service's error shape: `{"error": {"message", "type", "code", "param"}}`."""
    error = {"message": message, "type": error_type, "code": code, "param": param}
    return json_response(status, {"error": error})


HTTPHandler = Callable[[HTTPRequest], Awaitable[HTTPResponse]]


class HTTPServerConnection(ServerConnection):
    """A websockets server connection that also answers one plain (non-GET) HTTP request."""

    def __init__(self, *args: Any, http_handler: HTTPHandler, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http_handler = http_handler
        self._sniffed: bytearray | None = bytearray()  # None once the request line decided
        self._plain: bytearray | None = None  # a plain request being read
        self._continued = False  # `100 Continue` sent
        self._plain_ready: asyncio.Future[HTTPRequest | HTTPResponse] = self.loop.create_future()

    def data_received(self, data: bytes) -> None:
        if self._sniffed is not None:
            self._sniffed += data
            if len(self._sniffed) < len(_GET) and _GET.startswith(bytes(self._sniffed)):
                return  # too short to tell yet
            data, self._sniffed = bytes(self._sniffed), None
            if not data.startswith(_GET):
                self._plain = bytearray()
        if self._plain is None:
            super().data_received(data)
            return
        if self._plain_ready.done():
            return  # a request was read (or refused); anything after it is ignored
        self._plain += data
        outcome = _parse(self._plain)
        if outcome is not None:
            self._plain_ready.set_result(outcome)
        elif not self._continued and _expects_continue(self._plain):
            self._continued = True  # curl waits for this before sending a body over 1 KiB
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def eof_received(self) -> None:
        if self._plain is None:
            super().eof_received()

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        await asyncio.wait(
            [self.request_rcvd, self._plain_ready, self.connection_lost_waiter],
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not self._plain_ready.done():
            await super().handshake(*args, **kwargs)
            return
        outcome = self._plain_ready.result()
        if isinstance(outcome, HTTPResponse):
            response = outcome
        else:
            try:
                response = await self._http_handler(outcome)
            except asyncio.CancelledError:  # websockets' open_timeout (10 s) ran out, or shutdown
                self.transport.abort()
                raise
            except Exception:
                log.exception("simulator failed on %s %s", outcome.method, outcome.path)
                response = error_response(
                    500, "The server had an error while processing your request.",
                    error_type="server_error",
                )
        # Answered and closed here: websockets then finds the handshake not done and lets go.
        self.transport.write(response.encode())
        self.transport.close()
        await self.connection_lost_waiter


def connection_factory(handler: HTTPHandler) -> Callable[..., ServerConnection]:
    """The `create_connection` argument of `websockets.asyncio.server.serve`."""

    def create(*args: Any, **kwargs: Any) -> ServerConnection:
        return HTTPServerConnection(*args, http_handler=handler, **kwargs)

    return create


def _expects_continue(buffer: bytearray) -> bool:
    end = buffer.find(b"\r\n\r\n")
    return end >= 0 and b"\r\nexpect: 100-continue" in bytes(buffer[:end]).lower()


def _parse(buffer: bytearray) -> HTTPRequest | HTTPResponse | None:
    """The request in `buffer` once it is whole; a refusal for one this server won't read;
    None while more is needed."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            return error_response(431, f"Request headers larger than {MAX_HEAD_BYTES} bytes.")
        return None
    try:
        head = bytes(buffer[:end]).decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        method, target, version = request_line.split(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError(version)
        headers = Headers()
        for line in header_lines:
            name, value = line.split(":", 1)
            headers[name.strip()] = value.strip()
    except ValueError:
        return error_response(400, "Malformed HTTP request.")
    if "Transfer-Encoding" in headers:
        return error_response(411, "Chunked bodies are not supported: send Content-Length.")
    try:
        length = int(headers.get("Content-Length", "0"))
    except ValueError:
        return error_response(400, "Invalid Content-Length header.")
    if length < 0:
        return error_response(400, "Invalid Content-Length header.")
    if length > MAX_BODY_BYTES:
        return error_response(413, f"Request body larger than {MAX_BODY_BYTES} bytes.")
    body_start = end + 4
    if len(buffer) - body_start < length:
        return None
    body = bytes(buffer[body_start : body_start + length])
    return HTTPRequest(method=method, target=target, headers=headers, body=body)
