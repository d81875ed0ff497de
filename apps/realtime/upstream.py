"""Opening the relay's upstream Realtime connection. No Django.

The relay moves frames, not events: it needs the WebSocket itself, with text frames as text and
binary frames as binary, and no parsing into SDK models on the way. So the connection is opened
with `websockets`, as the `openai` SDK's realtime client opens it: `{base}/realtime?model=M`,
`Authorization: Bearer <key>`. Incoming messages have no size limit (audio and large items
pass whole). With `call_id`, the same opener joins an existing call as its sideband:
`{base}/realtime?call_id=C` (no model: the call has one already).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

# The embedded simulator needs no key; a placeholder keeps the header's shape.
PLACEHOLDER_KEY = "sk-no-key-needed-for-the-embedded-simulator"


# What of an upstream's refusal names a key: the service names the key it was sent, masked
# (`Incorrect API key provided: sk-proj-****…abcd.`), a proxy may echo it or the header whole.
# The relay's key is not the caller's business, and no part of it leaves the server.
_KEY_WORDS = re.compile(r"(?:\bBearer\s+\S+)|(?:\bsk-[\w*.\-]*[\w*])", re.IGNORECASE)
REDACTED = "[redacted]"


def redact(text: str, secret: str = "") -> str:
    """`text` without `secret` (the upstream key) or anything that looks like a key."""
    if secret:
        text = text.replace(secret, REDACTED)
    return _KEY_WORDS.sub(REDACTED, text)


def realtime_url(base_url: str, query: Sequence[tuple[str, str]]) -> str:
    return f"{base_url.rstrip('/')}/realtime?{urlencode(list(query))}"


async def open_connection(
    *,
    base_url: str,
    api_key: str,
    model: str,
    extra_headers: dict[str, str] | None = None,
    open_timeout: float = 10.0,
    call_id: str | None = None,
    query: Sequence[tuple[str, str]] = (),
) -> ClientConnection:
    """Connect to `{base_url}/realtime?model=…` and the other parameters of `query` (or
    `?call_id=…`, a call's sideband). Raises on refusal or timeout."""
    headers = {"Authorization": f"Bearer {api_key or PLACEHOLDER_KEY}", **(extra_headers or {})}
    url_query = [("call_id", call_id)] if call_id else [("model", model), *query]
    return await connect(
        realtime_url(base_url, url_query),
        additional_headers=headers,
        max_size=None,
        open_timeout=open_timeout,
        close_timeout=2.0,
        user_agent_header="operator-console",
    )


def failure_status(exc: Exception) -> int | None:
    """The HTTP status of a refused handshake; None when the upstream did not answer at all."""
    return exc.response.status_code if isinstance(exc, InvalidStatus) else None


def failure_detail(exc: Exception, *, secret: str = "") -> str:
    """Why the upstream could not be opened. A refused handshake says it in its body, in the
    service's error shape (a wrong key: `Incorrect API key provided.`): its message is kept,
    `redact`ed, as it goes to the caller, the log and the console."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, InvalidStatus):
        with contextlib.suppress(ValueError, TypeError, KeyError):  # else the status alone
            detail += f": {json.loads(exc.response.body)['error']['message']}"
    return redact(detail, secret)
