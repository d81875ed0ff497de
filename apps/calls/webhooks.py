"""`POST /v1/webhooks/openai`: the upstream's webhooks (CONTRACT section 7).

Verified with the `openai` SDK's `webhooks.unwrap` (Standard Webhooks: the HMAC of
`{webhook-id}.{webhook-timestamp}.{body}` keyed by `OPENAI_WEBHOOK_SECRET`; the SDK refuses a
timestamp more than 300 seconds away from now, either way). Without a secret, a valid
signature, or a recent timestamp → 400 and nothing is done. A `webhook-id` already handled →
200 and nothing is done again (the upstream repeats a delivery it saw no 2xx for). A
genuine delivery that is malformed (not a JSON object, a `webhook-id` empty or longer than
the 128 characters kept, a call without `data.call_id`, …) → 400 naming what is wrong, and it
is not recorded. A delivery is recorded as handled before it is acted on (so two deliveries
at once are not both acted on) and forgotten again if acting on it fails, whatever the
failure: the upstream's retry is then acted on, not answered `already_handled` with the call
lost. The failure is answered 5xx (502 for the upstream's, 500 for ours), so it retries.

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
from typing import Any

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
from apps.calls.keys import InvalidParameter
from apps.calls.models import SeenWebhook
from apps.calls.views import body_too_big
from apps.realtime import events
from apps.sessions import upstream_calls
from apps.sessions.db import db_async, serialised_write
from apps.sessions.housekeeping import housekeeping

log = logging.getLogger("oc.events")
failures = logging.getLogger(__name__)

SEEN_FOR = timedelta(days=1)
MAX_WEBHOOK_ID_CHARS = SeenWebhook._meta.get_field("webhook_id").max_length  # 128
INCOMING_CALL = "realtime.call.incoming"


class UpstreamFailed(Exception):
    """The upstream failed (5xx) to act on the call: the webhook is answered 502, to be retried."""


@functools.lru_cache(maxsize=2)
def _webhooks(secret: str):
    # The client is used only to verify: it makes no request, so it needs no real key.
    return openai.OpenAI(api_key="unused-for-verification", webhook_secret=secret).webhooks


def verify(body: bytes, headers: dict[str, str], secret: str) -> str | None:
    """None if the delivery is genuine and recent, else why not. Only the signature: what the
    body holds is `parse_event`'s to judge."""
    try:
        _webhooks(secret).verify_signature(body, headers)
    except openai.InvalidWebhookSignatureError as refused:
        return str(refused)
    except ValueError as refused:  # a missing header, a body that is not UTF-8, a bad secret
        return str(refused)
    return None


def webhook_id_problem(webhook_id: str) -> str | None:
    """Why a signed `webhook-id` cannot be told apart from others, or None. It is kept whole
    to drop repeats: an id cut to fit would make two deliveries one."""
    if not webhook_id:
        return "The webhook-id header is empty: it must name the delivery."
    if len(webhook_id) > MAX_WEBHOOK_ID_CHARS:
        return f"The webhook-id header is over {MAX_WEBHOOK_ID_CHARS} characters long."
    return None


def parse_event(body: bytes) -> dict[str, Any]:
    """The delivery's event, with what this endpoint reads of it checked: an object whose
    `type` is a string; for an incoming call, `data` an object with a `call_id` string and
    `sip_headers` a list (or absent), and no text the database could not store. Raises
    InvalidParameter naming the part that is wrong."""
    try:
        event = events.loads(body)  # nesting too deep for json.loads is a ValueError there
    except ValueError as exc:
        message = f"The webhook body is not JSON: {exc}."
        raise InvalidParameter(None, message, "invalid_json") from None
    if not isinstance(event, dict):
        raise InvalidParameter.wrong_type(None, "an object", event, what="the webhook body")
    event_type = event.get("type", "")
    if not isinstance(event_type, str):
        raise InvalidParameter.wrong_type("type", "a string", event_type)
    if event_type != INCOMING_CALL:
        return event
    data = event.get("data")
    if not isinstance(data, dict):
        raise InvalidParameter.wrong_type("data", "an object", data)
    call_id = data.get("call_id")
    if call_id is None or call_id == "":
        raise InvalidParameter("data.call_id", f"{INCOMING_CALL} without data.call_id.")
    if not isinstance(call_id, str):
        raise InvalidParameter.wrong_type("data.call_id", "a string", call_id)
    sip_headers = data.get("sip_headers")
    if sip_headers is not None and not isinstance(sip_headers, list):
        raise InvalidParameter.wrong_type("data.sip_headers", "an array", sip_headers)
    problem = events.find_problem(data, "data")
    if problem is not None:
        path, reason = problem
        raise InvalidParameter(path, f"Invalid '{path}': it {reason}.")
    return event


def _first_time(webhook_id: str, event_type: str) -> bool:
    """Record the delivery; False if it was handled before. Forgets ids older than a day."""
    with serialised_write():
        SeenWebhook.objects.filter(received_at__lt=timezone.now() - SEEN_FOR).delete()
        try:
            SeenWebhook.objects.create(webhook_id=webhook_id, event_type=event_type[:64])
        except IntegrityError:
            return False
    return True


def _forget(webhook_id: str) -> None:
    with serialised_write():
        SeenWebhook.objects.filter(webhook_id=webhook_id).delete()


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
    if (refused := body_too_big(request)) is not None:
        return refused
    body = request.body
    headers = {name.lower(): value for name, value in request.headers.items()}
    refused = verify(body, headers, secret)
    if refused is not None:
        log.warning(json.dumps({"event": "webhook.refused", "reason": refused, "webhook_id": headers.get("webhook-id", "")}))
        return error(400, "invalid_signature", f"The webhook was refused: {refused}.")
    webhook_id = headers["webhook-id"]
    if (problem := webhook_id_problem(webhook_id)) is not None:
        log.warning(json.dumps({"event": "webhook.refused", "reason": problem}))
        return error(400, "invalid_value", problem, param="webhook-id")
    try:
        event = parse_event(body)
    except InvalidParameter as invalid:
        refusal = {"event": "webhook.refused", "reason": invalid.message, "webhook_id": webhook_id}
        log.warning(json.dumps(refusal))
        return error(400, invalid.code, invalid.message, param=invalid.param)
    event_type = event.get("type", "")
    if not await db_async(_first_time)(webhook_id, event_type):
        log.info(json.dumps({"event": "webhook.repeated", "webhook_id": webhook_id, "type": event_type}))
        return JsonResponse({"status": "already_handled"})
    if event_type != INCOMING_CALL:
        log.info(json.dumps({"event": "webhook.ignored", "webhook_id": webhook_id, "type": event_type}))
        return JsonResponse({"status": "ignored"})
    handled = False
    try:
        response = await _incoming_call(event["data"], webhook_id)
        handled = True
        return response
    except (httpx.HTTPError, UpstreamFailed) as exc:
        log.warning(json.dumps({"event": "call.upstream_unreachable", "webhook_id": webhook_id, "error": type(exc).__name__}))
        return error(502, "upstream_unreachable", "The upstream could not be reached to answer the call.", kind="upstream_error")
    except Exception:
        failures.exception("webhook %s: handling the incoming call failed", webhook_id)
        return error(
            500,
            "server_error",
            "The server failed to handle the incoming call; the failure is logged and the "
            "delivery is not recorded as handled, so a retry is.",
            kind="server_error",
        )
    finally:
        if not handled:
            # Not handled, whatever stopped it (even a cancelled request): the upstream may
            # deliver it again, and then it is acted on.
            await db_async(_forget)(webhook_id)


async def _reject(call_id: str, body: dict | None = None) -> upstream_calls.UpstreamAnswer:
    """Reject the call. A rejection answers the call too: if the upstream fails to take it
    (5xx), the delivery is left to its retry, as for an accept."""
    answer = await upstream_calls.call_action(call_id, "reject", body)
    if answer.status >= 500:
        raise UpstreamFailed(f"reject answered {answer.status}")
    return answer


async def _incoming_call(data: dict, webhook_id: str) -> JsonResponse:
    call_id = data["call_id"]  # a string, not empty (parse_event)
    caller_number = profiles.sip_number(profiles.sip_header(data, "From"))
    dialled_number = profiles.sip_number(profiles.sip_header(data, "To"))
    profile = await db_async(profiles.profile_for)(dialled_number)
    common = {"call_id": call_id, "from": caller_number, "to": dialled_number, "webhook_id": webhook_id}
    if profile is None:
        answer = await _reject(call_id)
        log.info(json.dumps({"event": "call.rejected", **common, "reason": "no call profile names the number", "upstream_status": answer.status}))
        return JsonResponse({"status": "rejected", "call_id": call_id})
    if housekeeping().full() is not None:
        # 486 Busy Here: the caller's phone says the line is busy, and they may call again.
        answer = await _reject(call_id, {"status_code": 486})
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
