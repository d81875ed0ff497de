"""Attach a sideband session to a call the upstream answered (`apps.sessions.sideband`).

`attach_call` returns at once with the session's actor started in the running loop (Daphne's,
which the async views run in), so the actor outlives the request. A failure to attach is
logged, not raised: the call goes on, unseen by the console, and its caller still gets the
answer the upstream gave.
"""

from __future__ import annotations

import json
import logging

from apps.sessions.sideband import attach_call

log = logging.getLogger("oc.events")


async def attach(**arguments) -> bool:
    try:
        await attach_call(**arguments)
    except Exception:
        log.exception(json.dumps({"event": "call.attach_failed", "call_id": arguments.get("call_id"), "kind": arguments.get("kind")}))
        return False
    return True
