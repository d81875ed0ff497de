"""`POST /v1/webhooks/openai`: the upstream's webhooks (CONTRACT section 7).

Verified with the `openai` SDK's `webhooks.unwrap` (Standard Webhooks: the HMAC of
`{webhook-id}.{webhook-timestamp}.{body}` keyed by `OPENAI_WEBHOOK_SECRET`; the SDK refuses a
timestamp more than 300 seconds away from now, either way). Without a secret, a valid
signature, or a recent timestamp → 400 and nothing is done. A `webhook-id` already handled →
200 and nothing is done again (the upstream repeats a delivery it saw no 2xx for). A
genuine delivery that is malformed (not a JSON object, a `webhook-id` empty or longer than
the 128 characters kept, a call without `data.call_id`, …) → 400 naming what is wrong, and it
is not recorded. A delivery is claimed in the database before it is acted on, so that it is
acted on once whatever the timing of the upstream's repeats, in any process
(apps/calls/deliveries.py): a repeat arriving while it is in hand waits for it and answers as
it does, or does the rest of the work itself if it failed (past its wait, it is answered 200
`in_progress` and not acted on, as the contract has it). A failure is answered 5xx (502 for
the upstream's, 500 for ours), so that the upstream retries; an accepted call whose session
could not be attached is attached by the retry, not accepted again.

`realtime.call.incoming`: a phone call is ringing. The number dialled (SIP `To`) picks the call
profile (apps/calls/profiles.py); the call is accepted with the profile's session
configuration, or rejected when no profile names the number and `OC_SIP_REJECT_UNKNOWN` is
set, or rejected busy (SIP 486) when this process already holds OC_MAX_SESSIONS: a call the
console could not steer is not taken. An accepted call gets a sideband session (kind `sip`)
with both numbers. Other event types are answered 200 and ignored.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

import httpx
import openai
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from apps.calls import deliveries, profiles
from apps.calls.attach import attach
from apps.calls.auth import error
from apps.calls.keys import InvalidParameter
from apps.calls.models import CallProfile, SeenWebhook
from apps.calls.views import body_too_big
from apps.realtime import events
from apps.sessions import upstream_calls
from apps.sessions.db import db_async
from apps.sessions.housekeeping import housekeeping
from apps.sessions.models import LiveSession

log = logging.getLogger("oc.events")
failures = logging.getLogger(__name__)

Stage = SeenWebhook.Stage
MAX_WEBHOOK_ID_CHARS = SeenWebhook._meta.get_field("webhook_id").max_length  # 128
INCOMING_CALL = "realtime.call.incoming"
# The numbers are kept with the session (128 characters). They come from the caller's SIP
# headers, which are the caller's to write: a longer one is cut to fit, not left to fail the
# session's record (the call would go on, accepted, and no operator would see it).
NUMBER_CHARS = LiveSession._meta.get_field("caller_number").max_length


class UpstreamFailed(Exception):
    """The upstream failed (5xx) to act on the call: the webhook is answered 502, to be retried."""


class AttachFailed(Exception):
    """The call was accepted and its session not attached: answered 500, the retry attaches it."""


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
    found = await deliveries.claim_or_wait(webhook_id, event_type)
    if found.stage == Stage.DONE:
        log.info(json.dumps({"event": "webhook.repeated", "webhook_id": webhook_id, "type": event_type}))
        return JsonResponse({"status": "already_handled", "handled": found.answer})
    if not found.held:
        # CONTRACT §7: a repeated webhook-id is answered 200, and this one is not acted on. A
        # 503 would have the upstream retry, in case the first fails after all; the contract
        # does not allow it.
        in_hand = {"event": "webhook.in_hand", "webhook_id": webhook_id, "type": event_type}
        log.warning(json.dumps(in_hand))
        message = (
            f"The first delivery of this webhook-id is still being handled after "
            f"{deliveries.REPEAT_WAIT:g} s; this one is not acted on."
        )
        return JsonResponse({"status": "in_progress", "message": message})
    if event_type != INCOMING_CALL:
        log.info(json.dumps({"event": "webhook.ignored", "webhook_id": webhook_id, "type": event_type}))
        await db_async(deliveries.finish)(webhook_id, {"status": "ignored"})
        return JsonResponse({"status": "ignored"})
    return await deliveries.run_detached(
        functools.partial(_handle_call, event["data"], webhook_id, found.stage)
    )


async def _handle_call(data: dict, webhook_id: str, stage: str) -> JsonResponse:
    """Act on the call from `stage` on, and record the outcome: done with the answer, or the
    claim released for the upstream's retry (answered 5xx, so that it retries)."""
    try:
        async with asyncio.timeout(deliveries.HANDLING_LIMIT):
            response = await _incoming_call(data, webhook_id, stage)
    except (httpx.HTTPError, UpstreamFailed) as exc:
        log.warning(json.dumps({"event": "call.upstream_unreachable", "webhook_id": webhook_id, "error": type(exc).__name__}))
        response = error(
            502,
            "upstream_unreachable",
            "The upstream could not be reached to answer the call.",
            kind="upstream_error",
        )
    except Exception:
        failures.exception("webhook %s: handling the incoming call failed", webhook_id)
        response = error(
            500,
            "server_error",
            "The server failed to handle the incoming call; the failure is logged and the "
            "delivery is not recorded as handled, so a retry is.",
            kind="server_error",
        )
    except BaseException:  # cancelled: the process is stopping; the retry is acted on
        await db_async(deliveries.release)(webhook_id)
        raise
    if response.status_code == 200:
        await db_async(deliveries.finish)(webhook_id, json.loads(response.content))
    else:
        await db_async(deliveries.release)(webhook_id)
    return response


async def _reject(call_id: str, body: dict | None = None) -> upstream_calls.UpstreamAnswer:
    """Reject the call. A rejection answers the call too: if the upstream fails to take it
    (5xx), the delivery is left to its retry, as for an accept."""
    answer = await upstream_calls.call_action(call_id, "reject", body)
    if answer.status >= 500:
        raise UpstreamFailed(f"reject answered {answer.status}")
    return answer


async def _incoming_call(data: dict, webhook_id: str, stage: str) -> JsonResponse:
    """Answer the call and attach it; from `stage` `accepted` (an earlier delivery's accept
    was taken, its attach failed), attach it only: the upstream refuses a second accept."""
    call_id = data["call_id"]  # a string, not empty (parse_event)
    caller_number = profiles.sip_number(profiles.sip_header(data, "From"))[:NUMBER_CHARS]
    dialled_number = profiles.sip_number(profiles.sip_header(data, "To"))[:NUMBER_CHARS]
    profile = await db_async(profiles.profile_for)(dialled_number)
    common = {"call_id": call_id, "from": caller_number, "to": dialled_number, "webhook_id": webhook_id}
    if stage == Stage.ACCEPTED:
        # Ours already: attached whatever the profiles and the load say now.
        profile = profile or CallProfile(name="(no profile)")
        log.info(json.dumps({"event": "call.attach_retried", **common, "profile": profile.name}))
    else:
        not_accepted = await _accept(call_id, profile, common)
        if not_accepted is not None:
            return not_accepted
        await db_async(deliveries.advance)(webhook_id, Stage.ACCEPTED)
    attached = await attach(
        call_id=call_id,
        kind="sip",
        model=profile.session_config(settings.OC_REALTIME_MODEL)["model"],
        connected_by=f"sip:{caller_number or 'unknown'}",
        caller_number=caller_number,
        dialled_number=dialled_number,
        label=profile.name,
    )
    if not attached:
        raise AttachFailed(f"call {call_id} was accepted and not attached")
    return JsonResponse({"status": "accepted", "call_id": call_id, "profile": profile.name})


async def _accept(call_id: str, profile: CallProfile | None, common: dict) -> JsonResponse | None:
    """Accept the call with the profile's session configuration (None), or reject it, or say
    that the upstream refused the accept (the answer to give)."""
    if profile is None:
        answer = await _reject(call_id)
        rejected = {"reason": "no call profile names the number", "upstream_status": answer.status}
        log.info(json.dumps({"event": "call.rejected", **common, **rejected}))
        return JsonResponse({"status": "rejected", "call_id": call_id})
    if housekeeping().full() is not None:
        # 486 Busy Here: the caller's phone says the line is busy, and they may call again.
        answer = await _reject(call_id, {"status_code": 486})
        rejected = {"reason": "too_many_sessions", "upstream_status": answer.status}
        log.warning(json.dumps({"event": "call.rejected", **common, **rejected}))
        return JsonResponse({"status": "rejected", "call_id": call_id, "reason": "too_many_sessions"})
    config = profile.session_config(settings.OC_REALTIME_MODEL)
    answer = await upstream_calls.call_action(call_id, "accept", config)
    if not answer.ok:
        failed = {"profile": profile.name, "upstream_status": answer.status}
        log.warning(json.dumps({"event": "call.accept_failed", **common, **failed}))
        if answer.status >= 500:
            raise UpstreamFailed(f"accept answered {answer.status}")
        # Refused for good (the profile's configuration, or the call is over): the caller
        # hears the call declined rather than ringing until the service gives up on it.
        await _reject(call_id)
        return JsonResponse({"status": "accept_failed", "call_id": call_id, "upstream_status": answer.status})
    log.info(json.dumps({"event": "call.accepted", **common, "profile": profile.name}))
    return None
