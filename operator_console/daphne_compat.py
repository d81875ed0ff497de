"""Five fixes to Daphne's WebSockets that a relay cannot do without.

- Close codes: Daphne 4.2 closes through autobahn's `sendClose()`, which accepts only 1000 and
  3000–4999: a `websocket.close` with code 1011 (what the relay must send when its upstream
  fails) raises inside Daphne and the socket stays open. Daphne also drops the `reason` that
  ASGI's `websocket.close` has carried since spec 2.3. This sends the close frame directly,
  with both.
- Outgoing size: Daphne's `--websocket-max-message-size` (1 MiB by default) guards against
  large *incoming* messages, but autobahn applies it to messages sent too, so an upstream event
  over 1 MiB could never reach the caller. Messages the application sends are not limited.
- Incoming size: Daphne's default limit is 1 MiB, but the Realtime service takes audio appends
  of up to 15 MiB, so a caller's 3 MiB append would close its connection. Every WebSocket
  takes messages (and frames) of up to `MAX_MESSAGE_BYTES`, 16 MiB: the 15 MiB append plus
  the JSON around it. A larger limit given to Daphne is kept.
- Too-large incoming messages: autobahn "fails by drop" by default, cutting the TCP connection
  without a close frame, so a client sending a message over the limit saw only 1006. Failing
  by close sends 1009 with autobahn's reason, which names the size and the limit ("received
  WebSocket message size 17825792 exceeds payload limit of 16777216 octets").
- Readers that stop reading: Daphne writes whatever the application sends into Twisted's
  buffer, which grows without bound when the peer stops reading. For the paths in
  `SLOW_READER_PATHS` (audio listeners, CONTRACT section 6: "a listener that cannot keep up
  is dropped, never slowing the call"), the socket's kernel send buffer is kept small, and a
  connection whose Twisted buffer has stayed full for `SLOW_READER_SECONDS` while more is
  sent is dropped: the application gets its `websocket.disconnect` as for any lost
  connection.

If Daphne's protocol class changes shape, the patch is skipped.

And three fixes to Daphne's HTTP: the status line's reason phrase for the codes Twisted's table
lacks, 429 among them (`add_reason_phrases`, a fix of data only); no parsing of form bodies
by Twisted (`leave_bodies_to_the_application`), which answered a POST whose multipart body it
could not parse with a bare `400` before the application saw it; and a bound on request
bodies (`refuse_huge_bodies`), which Twisted and Django otherwise keep whole, however large.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import socket
import time
from http import HTTPStatus

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# The largest request body the server takes in; Django's own, lower limit
# (DATA_UPLOAD_MAX_MEMORY_SIZE) still answers bodies between the two in each endpoint's words.
MAX_BODY_BYTES = 16 * 1024 * 1024
SLOW_READER_PATHS = re.compile(rb"^/ws/console/sessions/.+/audio$")
SLOW_READER_SECONDS = 2.0
SLOW_READER_SEND_BUFFER = 64 * 1024  # bytes the kernel may hold for a listener

# Codes an endpoint may send in a close frame (RFC 6455 7.4): not 1004-1006 or 1015.
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def install() -> None:
    add_reason_phrases()
    leave_bodies_to_the_application()
    refuse_huge_bodies()
    try:
        from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
    except ImportError:  # Daphne not in use
        return
    _limits(WebSocketFactory)
    original = WebSocketProtocol.handle_reply
    if getattr(original, "_oc_patched", False):
        return
    if not hasattr(WebSocketProtocol, "sendCloseFrame"):
        log.warning("daphne/autobahn changed: close codes other than 1000 may fail")
        return

    def handle_reply(self, message):
        kind = message.get("type")
        if kind == "websocket.send":
            if SLOW_READER_PATHS.match(getattr(self, "path", b"")) and _too_slow(self):
                return None
            limit = getattr(self, "maxMessagePayloadSize", 0)  # set per connection by autobahn
            payload = message.get("text") or message.get("bytes") or b""
            # 4 bytes per character at most in UTF-8: only large messages take this branch.
            if limit and len(payload) * 4 > limit:
                self.maxMessagePayloadSize = 0
                try:
                    return original(self, message)
                finally:
                    self.maxMessagePayloadSize = limit
            return original(self, message)
        if kind == "websocket.close" and self.state != self.STATE_CONNECTING:
            code = message.get("code") or 1000
            if code not in _SENDABLE and not 3000 <= code <= 4999:
                code = 1011
            reason = (message.get("reason") or "").encode()[:123]
            self.sendCloseFrame(code=code, reasonUtf8=reason or None, isReply=False)
            return None
        return original(self, message)

    handle_reply._oc_patched = True
    WebSocketProtocol.handle_reply = handle_reply


def _too_slow(protocol) -> bool:
    """Watch this connection's backlog; drop it (and say True) once it is too slow.

    Twisted's transport says when its buffer is over full (`producerPaused`: it has paused
    the connection's producer, Twisted's HTTP channel, which Daphne's WebSocket upgrade
    leaves registered) and clears it once the buffer has drained."""
    transport = protocol.transport
    if not hasattr(protocol, "_oc_full_since"):
        protocol._oc_full_since = None
        try:
            handle = transport.getHandle()
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SLOW_READER_SEND_BUFFER)
        except Exception as exc:  # not a TCP socket: the bound is Twisted's buffer alone
            log.warning("cannot bound the send buffer of %r: %r", protocol, exc)
    if not getattr(transport, "producerPaused", False):
        protocol._oc_full_since = None
        return False
    now = time.monotonic()
    if protocol._oc_full_since is None:
        protocol._oc_full_since = now
    if now - protocol._oc_full_since < SLOW_READER_SECONDS:
        return False
    if protocol.state != protocol.STATE_CLOSED:
        log.warning("dropping %r: it has read nothing for %.0f s", protocol, SLOW_READER_SECONDS)
        protocol.dropConnection(abort=True)
    return True


def _limits(factory_class) -> None:
    """Fail by close, and take messages of up to MAX_MESSAGE_BYTES."""
    original = factory_class.__init__
    if getattr(original, "_oc_patched", False):
        return

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.setProtocolOptions(failByDrop=False)

    __init__._oc_patched = True
    factory_class.__init__ = __init__

    set_options = factory_class.setProtocolOptions

    def setProtocolOptions(self, **options):  # noqa: N802 (autobahn's name)
        for name in ("maxMessagePayloadSize", "maxFramePayloadSize"):
            if name in options and 0 < options[name] < MAX_MESSAGE_BYTES:
                options[name] = MAX_MESSAGE_BYTES
        return set_options(self, **options)

    factory_class.setProtocolOptions = setProtocolOptions


def add_reason_phrases() -> None:
    """Give Twisted the reason phrases of the status codes it does not know.

    Daphne writes HTTP answers through Twisted, whose table of reason phrases
    (`twisted.web.http.RESPONSES`) has no entry for later codes such as 422 and 429: their
    status line read `429 Unknown Status`. This adds, for each code Python's `HTTPStatus`
    knows and the table lacks, the standard phrase (`429 Too Many Requests`); the table's own
    entries are kept as they are.
    """
    try:
        from twisted.web.http import RESPONSES
    except ImportError:  # Twisted not in use
        return
    for status in HTTPStatus:
        RESPONSES.setdefault(status.value, status.phrase.encode("ascii"))


def leave_bodies_to_the_application() -> None:
    """Have Twisted hand every request body to Daphne as it came, unparsed.

    Twisted's `Request` parses a POST's `multipart/form-data` or URL-encoded body into
    `request.args`, which Daphne never reads (it sends the application the raw body). A
    multipart body it cannot parse (`Content-Type: multipart/form-data` on a JSON body, a
    boundary missing) is answered by Twisted itself with a bare `400` and no body, before the
    application sees the request: not the REST hook's error body (CONTRACT section 2), nor the
    service's error shape under /v1/. Parsed or not, it cost a copy of every such body in
    memory. Twisted's own switch (`Request(parsePOSTFormSubmission=False)`) turns it off."""
    try:
        from daphne.http_protocol import WebRequest
        from twisted.web.http import Request
    except ImportError:  # Daphne not in use
        return
    original = WebRequest.__init__
    if getattr(original, "_oc_patched", False):
        return
    if "parsePOSTFormSubmission" not in inspect.signature(Request.__init__).parameters:
        log.warning("twisted changed: a multipart body it cannot parse may get a bare 400")
        return

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("parsePOSTFormSubmission", False)  # Daphne passes it on to Twisted
        original(self, *args, **kwargs)

    __init__._oc_patched = True
    WebRequest.__init__ = __init__


def refuse_huge_bodies() -> None:
    """Refuse a request body over MAX_BODY_BYTES with `413` as it arrives, and close.

    Twisted keeps each body whole (in a temporary file past 100 kB) before Daphne hands it to
    the application, and Django's ASGI handler copies all of it again before a view can look
    at its size: one POST of a terabyte, from anyone, would fill the server's disk. The bound
    is checked as the body comes: on the announced `Content-Length`, and on the bytes of a
    chunked body so far. The answer is JSON in the service's error shape, which the API
    clients read."""
    try:
        from daphne.http_protocol import WebRequest
    except ImportError:  # Daphne not in use
        return
    if getattr(WebRequest.gotLength, "_oc_patched", False):
        return
    got_length, content_chunk, process = (
        WebRequest.gotLength, WebRequest.handleContentChunk, WebRequest.process
    )

    def gotLength(self, length):  # noqa: N802 (Twisted's name)
        self._oc_body_bytes = 0
        if length is not None and length > MAX_BODY_BYTES:
            _refuse_body(self)
            return got_length(self, 0)  # nothing is kept: no temporary file for it
        return got_length(self, length)

    def handleContentChunk(self, data):  # noqa: N802 (Twisted's name)
        if getattr(self, "_oc_refused", False):
            return None
        self._oc_body_bytes = getattr(self, "_oc_body_bytes", 0) + len(data)
        if self._oc_body_bytes > MAX_BODY_BYTES:
            return _refuse_body(self)
        return content_chunk(self, data)

    def process_unless_refused(self):
        # The end of a refused body may already be in what the connection read.
        if not getattr(self, "_oc_refused", False):
            return process(self)
        return None

    gotLength._oc_patched = True
    WebRequest.gotLength = gotLength
    WebRequest.handleContentChunk = handleContentChunk
    WebRequest.process = process_unless_refused


def _refuse_body(request) -> None:
    request._oc_refused = True
    message = f"The request body is over the server's limit of {MAX_BODY_BYTES} bytes."
    error = {"type": "invalid_request_error", "code": "request_too_large", "message": message}
    body = json.dumps({"error": {**error, "param": None}}).encode()
    head = (
        "HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    request.channel.transport.write(head.encode("ascii") + body)
    request.channel.loseConnection()
