"""Attach a sideband session to a call the upstream answered, without holding up the answer.

The caller's SDP answer (or the webhook's 200) goes back at once; the sideband
(`apps.sessions.sideband.attach_call`) starts in a task of this process's loop, which
outlives the request (Daphne runs the async views in its loop). A failure to attach is logged:
the call goes on, unseen by the console.
"""

from __future__ import annotations

import asyncio
import json
import logging

log = logging.getLogger("oc.events")

_attaching: set[asyncio.Task] = set()


def attach_later(**arguments) -> asyncio.Task:
    task = asyncio.get_running_loop().create_task(_attach(arguments), name=f"attach {arguments.get('call_id')}")
    _attaching.add(task)
    task.add_done_callback(_attaching.discard)
    return task


async def _attach(arguments: dict) -> None:
    from apps.sessions.sideband import attach_call  # the sessions app's; imported when first used

    try:
        await attach_call(**arguments)
    except Exception:
        log.exception(json.dumps({"event": "call.attach_failed", "call_id": arguments.get("call_id"), "kind": arguments.get("kind")}))
