"""Helpers for the calls tests: Standard Webhooks signatures, as the service signs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"calls-tests-webhook-secret-32byte").decode()


def signed(
    event: Any,
    *,
    secret: str = WEBHOOK_SECRET,
    webhook_id: str | None = None,
    timestamp: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of a webhook delivery signed with `secret`: `event` as JSON, or as it
    is when it is bytes already."""
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    webhook_id = f"wh_{uuid.uuid4().hex}" if webhook_id is None else webhook_id
    timestamp = int(time.time()) if timestamp is None else timestamp
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signature = base64.b64encode(hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()).decode()
    return body, {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
    }


def incoming_call(call_id: str, *, to: str = "+15550001111", from_: str = "+15559998888") -> dict:
    return {
        "object": "event",
        "id": f"evt_{uuid.uuid4().hex[:12]}",
        "type": "realtime.call.incoming",
        "created_at": int(time.time()),
        "data": {
            "call_id": call_id,
            "sip_headers": [
                {"name": "From", "value": f"sip:{from_}@sim.invalid"},
                {"name": "To", "value": f"sip:{to}@sip.api.openai.com"},
                {"name": "Call-ID", "value": uuid.uuid4().hex},
            ],
        },
    }
