"""Call control of attached calls: hang up and transfer (CONTRACT section 7).

Interface (the REST hook and the console call these; both raise `ServiceError`s):

    action = await call_hangup(session_id=S, requested_by=NAME)
    action = await call_refer(session_id=S, target_uri="tel:+1…" | "sip:…", requested_by=NAME)

Each returns the `CallAction` row it recorded, with who asked and the upstream's answer
(`ok`, and `error` when it refused). Refusals: `SessionNotFound` (404); `NotACall` (409) for a
relayed session, which has no call to control; `NotAPhoneCall` (409) for a transfer of a WebRTC
call (the service transfers SIP calls only: its refer is the SIP REFER verb);
`SessionNotLive` (409) for one that has ended, or whose call the upstream no longer knows (it
answers 404: the call ended meanwhile, hung up by another operator or by the caller; nothing is
recorded then); `InvalidTargetUri` (422, field `target_uri`); `CallControlFailed` (502) when
the upstream refuses or cannot be reached (the row records that too).

Both use the upstream's calls REST (`upstream_calls`), `POST {base}/realtime/calls/{call_id}/hangup|refer`, where
`{base}` is OC_UPSTREAM_URL with http(s) for ws(s) (or the embedded simulator's URL), with
`Authorization: Bearer OPENAI_API_KEY`.

A hang-up ends the session with `hung_up`. The model then closes the sideband with 1000, as it
does for any end of the call, so the session's actor is told first (`session.hangup`,
`pending`), and a normal close that follows ends the session `hung_up` rather than
`upstream_closed`; if the upstream refuses the hang-up, the actor is told it is no longer
pending. A hang-up from the caller's side (the phone put down, the browser closed) reaches the
console only as that close: such a session ends `upstream_closed`.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata

import httpx
from channels.layers import get_channel_layer

from apps.realtime.events import text_problem
from apps.sessions import groups, upstream_calls
from apps.sessions.db import db_async
from apps.sessions.models import CallAction, LiveSession
from apps.sessions.services import (
    ServiceError,
    SessionNotLive,
    _ask_actor,
    session_found,
)

log = logging.getLogger(__name__)
events_log = logging.getLogger("oc.events")

MAX_TARGET_URI_CHARS = 512  # CallAction.target_uri's max_length
# A URI's scheme is case-insensitive (RFC 3986 section 3.1): `TEL:`, `Sip:` and `SIPS:` are
# taken, and sent upstream as the operator wrote them.
# A tel: URI may carry parameters after the number (RFC 3966 section 3): an extension
# (`tel:+14155550123;ext=42`), or the context a local number is dialled in
# (`tel:7042;phone-context=example.com`).
_TEL = re.compile(
    r"tel:\+?[0-9][0-9().\-]*(;[a-z0-9\-]+(=[a-z0-9\-_.!~*'()\[\]/:&+$%]+)?)*", re.IGNORECASE
)
_SIP = re.compile(r"sips?:[^\s@<>\"]+(@[^\s@<>\"]+)?", re.IGNORECASE)
TARGET_URI_RULE = (
    "must be a tel: URI (a phone number: 'tel:+14155550123') or a sip: or sips: URI "
    f"('sip:agent@example.com'), at most {MAX_TARGET_URI_CHARS} characters"
)


_VERBS = {CallAction.Action.HANGUP: "hang up", CallAction.Action.REFER: "transfer"}


class NotACall(ServiceError):
    status, code = 409, "not_a_call"


class NotAPhoneCall(ServiceError):
    status, code = 409, "not_a_phone_call"


class InvalidTargetUri(ServiceError):
    status, code = 422, "invalid_target_uri"
    field = "target_uri"


class CallControlFailed(ServiceError):
    status, code = 502, "upstream_error"


def target_uri_problem(target_uri: object) -> str | None:
    """Why a transfer target is refused, or None. Besides the rule, a target may hold no
    control character (the sip: pattern stops only at whitespace, and a NUL, DEL or C1 control
    would be stored and sent upstream) and no lone surrogate (`events.text_problem`)."""
    if not isinstance(target_uri, str):
        return f"'target_uri' {TARGET_URI_RULE}; got {type(target_uri).__name__}."
    problem = text_problem(target_uri)
    if problem is not None:
        return f"'target_uri' {problem}; it {TARGET_URI_RULE}."
    control = next((ch for ch in target_uri if unicodedata.category(ch) == "Cc"), None)
    if control is not None:
        return (
            f"'target_uri' contains a control character (U+{ord(control):04X}), which is not "
            f"allowed; it {TARGET_URI_RULE}."
        )
    if len(target_uri) > MAX_TARGET_URI_CHARS or not (
        _TEL.fullmatch(target_uri) or _SIP.fullmatch(target_uri)
    ):
        return f"'target_uri' {TARGET_URI_RULE}."
    return None


async def call_hangup(*, session_id: str, requested_by: str) -> CallAction:
    session = await db_async(_attached_session)(session_id, "hang up")
    await _ask_actor(session, {"type": groups.SESSION_HANGUP, "pending": True})
    try:
        action = await _perform(session, CallAction.Action.HANGUP, "", requested_by)
    except SessionNotLive:
        await _hangup_not_pending(session)
        raise
    if not action.ok:
        await _hangup_not_pending(session)
        raise CallControlFailed(f"The upstream did not hang up the call: {action.error}")
    return action


async def _hangup_not_pending(session: LiveSession) -> None:
    """Tell the actor this hang-up is no longer pending, without waiting for its answer: it may
    have ended meanwhile (the call is over), and then nobody answers; nothing is pending then."""
    message = {"type": groups.SESSION_HANGUP, "pending": False}
    try:
        await get_channel_layer().group_send(groups.session_group(session.id), message)
    except Exception as exc:  # the channel layer is down: the actor cannot be told, nor asked
        log.warning("telling the actor of %s failed: %r", session.upstream_id, exc)


async def call_refer(*, session_id: str, target_uri: str, requested_by: str) -> CallAction:
    problem = target_uri_problem(target_uri)
    if problem is not None:
        raise InvalidTargetUri(problem)
    session = await db_async(_attached_session)(session_id, "transfer")
    if session.kind != LiveSession.Kind.SIP:
        raise NotAPhoneCall(
            f"Session '{session_id}' is a WebRTC call: only phone (SIP) calls can be "
            "transferred. Hang it up instead."
        )
    action = await _perform(session, CallAction.Action.REFER, target_uri, requested_by)
    if not action.ok:
        raise CallControlFailed(f"The upstream did not transfer the call: {action.error}")
    return action


def _attached_session(session_id: str, what: str) -> LiveSession:
    session = session_found(session_id)
    if session.kind == LiveSession.Kind.RELAY or not session.call_id:
        raise NotACall(
            f"Session '{session_id}' is relayed (its caller is connected to /v1/realtime): it "
            f"has no call to {what}. Only WebRTC and phone calls can be."
        )
    if session.status != LiveSession.Status.LIVE:
        raise SessionNotLive(
            f"Session '{session_id}' is {session.status}, not live: its call is over, there is "
            f"nothing to {what}."
        )
    return session


async def _perform(session: LiveSession, verb: str, target_uri: str, requested_by: str) -> CallAction:
    body = {"target_uri": target_uri} if verb == CallAction.Action.REFER else {}
    ok, error = False, ""
    try:
        answer = await upstream_calls.call_action(session.call_id, verb, body)
        if answer.status == 404:  # the call ended meanwhile: there is nothing left to do
            message = answer.error_body()["error"].get("message", "")
            log.info("%s of call %s: the upstream no longer knows it (%s)", verb, session.call_id, message)
            raise SessionNotLive(
                f"Session '{session.upstream_id}': its call is over (the upstream no longer knows "
                f"it: {message}); there is nothing to {_VERBS[verb]}."
            )
        ok = answer.ok
        if not ok:
            error = f"HTTP {answer.status}: {answer.error_body()['error'].get('message', '')}"[:600]
    except httpx.HTTPError as exc:
        error = f"the upstream could not be reached ({type(exc).__name__}: {exc})"
    if error:
        log.warning("%s of call %s failed: %s", verb, session.call_id, error)
    events_log.info(json.dumps({
        "event": f"call.{verb}", "session": session.upstream_id, "call_id": session.call_id,
        "target_uri": target_uri or None, "by": requested_by, "ok": ok,
    }))
    return await db_async(CallAction.objects.create)(
        session=session,
        action=verb,
        target_uri=target_uri,
        requested_by=requested_by,
        ok=ok,
        error=error,
    )
