"""`POST /v1/webhooks/openai`: the upstream's webhooks (CONTRACT section 7).

Verified with the `openai` SDK's `webhooks.unwrap` (Standard Webhooks: the HMAC of
`{webhook-id}.{webhook-timestamp}.{body}` keyed by `OPENAI_WEBHOOK_SECRET`; the SDK refuses a
timestamp more than 300 seconds away from now, either way). Without a secret, a valid
signature, or a recent timestamp → 400 and nothing is done. A `webhook-id` already handled →
200 and nothing is done again (the upstream repeats a delivery it saw no 2xx for).

`realtime.call.incoming`: a phone call is ringing. The number dialled (SIP `To`) picks the call
profile (apps/calls/profiles.py); the call is accepted with the profile's session
configuration, or rejected when no profile names the number and `OC_SIP_REJECT_UNKNOWN` is
set, or rejected busy (SIP 486) when this process already holds OC_MAX_SESSIONS: a call the
console could not steer is not taken. An accepted call gets a sideband session (kind `sip`)
with both numbers. Other event types are answered 200 and ignored.
"""

from __future__ import annotations

import functools
import json
import logging
from datetime import timedelta

import httpx
import openai
from django.conf import settings
from django.db import IntegrityError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from apps.calls import profiles
from apps.calls.attach import attach
from apps.calls.auth import error
from apps.calls.models import SeenWebhook
from apps.sessions import upstream_calls
from apps.sessions.db import db_async, serialised_write
from apps.sessions.housekeeping import housekeeping

log = logging.getLogger("oc.events")

SEEN_FOR = timedelta(days=1)


class UpstreamFailed(Exception):
    """The upstream failed (5xx) to act on the call: the webhook is answered 502, to be retried."""


@functools.lru_cache(maxsize=2)
def _webhooks(secret: str):
    # The client is used only to verify: it makes no request, so it needs no real key.
    return openai.OpenAI(api_key="unused-for-verification", webhook_secret=secret).webhooks


def verify(body: bytes, headers: dict[str, str], secret: str) -> str | None:
    """None if the delivery is genuine and recent, else why not."""
    try:
        _webhooks(secret).unwrap(body, headers)
    except openai.InvalidWebhookSignatureError as refused:
        return str(refused)
    except ValueError as refused:  # a missing header, a body that is not JSON, a bad secret
        return str(refused)
    return None


def _first_time(webhook_id: str, event_type: str) -> bool:
    """Record the delivery; False if it was handled before. Forgets ids older than a day."""
    with serialised_write():
        SeenWebhook.objects.filter(received_at__lt=timezone.now() - SEEN_FOR).delete()
        try:
            SeenWebhook.objects.create(webhook_id=webhook_id[:128], event_type=event_type[:64])
        except IntegrityError:
            return False
    return True


def _forget(webhook_id: str) -> None:
    with serialised_write():
        SeenWebhook.objects.filter(webhook_id=webhook_id[:128]).delete()


@csrf_exempt
async def openai_webhook(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        response = error(405, "method_not_allowed", f"{request.method} is not allowed here: use POST.")
        response["Allow"] = "POST"
        return response
    secret = settings.OPENAI_WEBHOOK_SECRET
    if not secret:
        log.warning(json.dumps({"event": "webhook.refused", "reason": "OPENAI_WEBHOOK_SECRET is not set"}))
        return error(400, "webhooks_not_configured", "Webhooks are refused: OPENAI_WEBHOOK_SECRET is not set.")
    body = request.body
    headers = {name.lower(): value for name, value in request.headers.items()}
    refused = verify(body, headers, secret)
    if refused is not None:
        log.warning(json.dumps({"event": "webhook.refused", "reason": refused, "webhook_id": headers.get("webhook-id", "")}))
        return error(400, "invalid_signature", f"The webhook was refused: {refused}.")
    event = json.loads(body)
    event_type = str(event.get("type", ""))
    webhook_id = headers["webhook-id"]
    if not await db_async(_first_time)(webhook_id, event_type):
        log.info(json.dumps({"event": "webhook.repeated", "webhook_id": webhook_id, "type": event_type}))
        return JsonResponse({"status": "already_handled"})
    if event_type != "realtime.call.incoming":
        log.info(json.dumps({"event": "webhook.ignored", "webhook_id": webhook_id, "type": event_type}))
        return JsonResponse({"status": "ignored"})
    try:
        return await _incoming_call(event.get("data") or {}, webhook_id)
    except (httpx.HTTPError, UpstreamFailed) as exc:
        # Not handled: the upstream may deliver it again, and then it is acted on.
        await db_async(_forget)(webhook_id)
        log.warning(json.dumps({"event": "call.upstream_unreachable", "webhook_id": webhook_id, "error": type(exc).__name__}))
        return error(502, "upstream_unreachable", "The upstream could not be reached to answer the call.", kind="upstream_error")


async def _incoming_call(data: dict, webhook_id: str) -> JsonResponse:
    call_id = str(data.get("call_id") or "")
    if not call_id:
        return error(400, "invalid_value", "realtime.call.incoming without data.call_id.", param="data.call_id")
    caller_number = profiles.sip_number(profiles.sip_header(data, "From"))
    dialled_number = profiles.sip_number(profiles.sip_header(data, "To"))
    profile = await db_async(profiles.profile_for)(dialled_number)
    common = {"call_id": call_id, "from": caller_number, "to": dialled_number, "webhook_id": webhook_id}
    if profile is None:
        answer = await upstream_calls.call_action(call_id, "reject")
        log.info(json.dumps({"event": "call.rejected", **common, "reason": "no call profile names the number", "upstream_status": answer.status}))
        return JsonResponse({"status": "rejected", "call_id": call_id})
    if housekeeping().full() is not None:
        # 486 Busy Here: the caller's phone says the line is busy, and they may call again.
        answer = await upstream_calls.call_action(call_id, "reject", {"status_code": 486})
        log.warning(json.dumps({"event": "call.rejected", **common, "reason": "too_many_sessions", "upstream_status": answer.status}))
        return JsonResponse({"status": "rejected", "call_id": call_id, "reason": "too_many_sessions"})
    config = profile.session_config(settings.OC_REALTIME_MODEL)
    answer = await upstream_calls.call_action(call_id, "accept", config)
    if not answer.ok:
        log.warning(json.dumps({"event": "call.accept_failed", **common, "profile": profile.name, "upstream_status": answer.status}))
        if answer.status >= 500:
            raise UpstreamFailed(f"accept answered {answer.status}")
        return JsonResponse({"status": "accept_failed", "call_id": call_id, "upstream_status": answer.status})
    log.info(json.dumps({"event": "call.accepted", **common, "profile": profile.name}))
    await attach(
        call_id=call_id,
        kind="sip",
        model=config["model"],
        connected_by=f"sip:{caller_number or 'unknown'}",
        caller_number=caller_number,
        dialled_number=dialled_number,
        label=profile.name,
    )
    return JsonResponse({"status": "accepted", "call_id": call_id, "profile": profile.name})
