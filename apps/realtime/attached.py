"""Attached mode of the relay core: a call the relay does not carry. Pure, sans-I/O.

An attached call (a WebRTC call placed through `/v1/realtime/calls`, or a phone call accepted
from a webhook) talks to the model directly; the console holds only a **sideband**, a second
WebSocket to the same call (`{base}/realtime?call_id=C`). `RelayCore(attached=True)` drives
it: the session has no caller leg, and the core sees every server event of the call but none
of the caller's client events.

Who started a response
  The caller's own `response.create` reaches the model without passing the sequencer, so the
  core learns of it only from its `response.created`, which names nothing of ours (no
  `oc_request`). Such a response is observed, as a server response is in a relayed session,
  with the origin decided here:
  - `caller`, and outside the conversation, when its `conversation_id` is null: an
    out-of-band response (`"conversation": "none"`), which the server never starts by itself.
    Nothing waits for it (the model runs it beside others) and it answers no turn.
  - `server` when the server's turn detection ended a turn of the caller's speech
    (`input_audio_buffer.speech_stopped`) since the last response the core observed, and the
    session's turn detection creates responses (`create_response`, true unless the session
    says otherwise; no turn detection at all means the server never starts one);
  - `caller` otherwise: the server starts a response only at the end of a detected turn, so
    any other response nobody in the console asked for was asked for by the caller's app.
  A user item added to the conversation (`conversation.item.added`, `input_audio_buffer.
  committed`) does not decide it: a detected turn adds one too, and a caller's app may ask
  for a response with no new item at all (a greeting). When turn detection ends a turn and
  the caller's app also asks, the first response is counted as the server's (the model
  refuses the second while the first runs, and tells the caller's app).

What is guaranteed, and what is not
  - **A race is possible.** The caller's `response.create` and ours can cross on their way to
    the model. The model takes one and refuses the other with
    `conversation_already_has_active_response`. When ours is refused, the sequencer puts it
    back at the head of the queue and sends it again once the active response is done (or
    after its retry delay), and the core forwards the error nowhere (there is no caller leg;
    operators watching see it among the session's events). The model answers an event on the
    connection that sent it, so that refusal goes to the sideband alone and the caller's app
    never sees it (the simulator does the same). When the caller's create is the one refused,
    the caller's app gets the model's error, as it would for any second create of its own.
    Operator requests are sent only while no response is known to be active, so the two cross
    only when both are sent within the time the other's `response.created` takes to arrive.
  - **Nothing is lost**: every operator request reaches exactly one terminal status
    (completed, cancelled, incomplete, failed with a reason), as in a relayed session.
  - **Nothing is sent twice**: at most one `response.create` of ours is outstanding; a
    re-send after the refusal above reuses the request's event id and is the only one out.
  - **No overlap caused by us**: ours is sent only while no in-conversation response is
    active, so a response of ours never overlaps one the core knows of.

What the caller can read
  The caller's client receives every server event of the call, so what the relay hides from a
  relayed caller is visible there: an operator response's `metadata` (with `oc_request`, the
  request's opaque id, kept because it is how the core matches the response to its request)
  and `instructions`, and operators' out-of-band responses. Operators are told so on the form
  of an attached call. The core sends nothing else of the operators': no user names, no
  notes beyond the items they add to the conversation (which the model reads anyway).

Naming the session
  The session's public id is the upstream's `session.id` from the first session event on the
  sideband (`session.created`, or `session.updated` if that comes first). If none comes within
  `NAME_WAIT` seconds of the sideband opening, the session is named by its call id, and a
  later session event no longer renames it.

Ending
  A sideband whose upstream closes ends the session with `upstream_closed`. A close cannot tell
  a hang-up from any other end of the call (the model closes sidebands with 1000 either way),
  so whoever hangs up tells the core first (`hangup_requested`); a normal close that follows
  ends the session with `hung_up`.

Opening the sideband again
  A sideband lost while the call may go on (any close but 1000, not after the session's
  expiry or a hang-up: `RelayCore.may_reattach`) is opened again at once. A sideband that
  cannot be opened, the first one or a new one, is tried again after `REOPEN_DELAY` seconds,
  doubled after each failure in a row, unless the upstream refused it for good (a 4xx but
  408 and 429: the call is gone, 404, or the key is wrong). Both count against one bound,
  `MAX_REATTACHES` a session (`Sideband`); the core decides, the actor opens
  (`OpenUpstream`). The session goes on with its requests and its name; what the model sent
  while no sideband was open is not seen (a response that ended then is caught by the stall
  check). While none is open, nothing of the operators' is lost or sent twice: their
  requests wait in the sequencer (`offline`: out-of-band ones too) and their notes and
  cancels in `Sideband.frames`, all sent once one opens, or failed (`session_ended`) when the
  session ends. A first sideband still not open `NAME_WAIT` seconds after its first failure
  names the session by its call id, so that operators see it, and may queue requests, while
  it is tried. When no try is left, or the upstream refused for good, the session ends
  `upstream_closed`: as the lost sideband closed, or `failed` when none was ever open, with
  the upstream's answer and the number of tries in its detail.
"""

from __future__ import annotations

from typing import Any

from apps.realtime.sequencer import CALLER_ORIGIN, SERVER_ORIGIN

# The server's turn detection ended a turn of the caller's speech.
TURN_ENDED = "input_audio_buffer.speech_stopped"
# How long an attached session waits for a session event to name it before using its call id.
NAME_WAIT = 2.0
# Sidebands opened again in one session, after a lost one or a failed open ("Opening the
# sideband again").
MAX_REATTACHES = 3
# Seconds before the next try after a failed open; doubled after each failure in a row.
REOPEN_DELAY = 0.25
# Refusals of a handshake that pass, although 4xx: a timeout and a rate limit.
PASSING_REFUSALS = frozenset({408, 429})


def refused_for_good(status: int | None) -> bool:
    """Whether a sideband refused with HTTP `status` (None: no answer at all) can never open:
    the call is gone (404) or the request is wrong (other 4xx), so trying again is no use."""
    return status is not None and 400 <= status < 500 and status not in PASSING_REFUSALS


class Sideband:
    """An attached call's sideband: whether one is open, the tries to open another, and the
    operators' frames for the upstream while none is open (see "Opening the sideband
    again")."""

    __slots__ = ("delay", "failures", "frames", "lost", "open", "reopen_at", "reopens")

    def __init__(self, delay: float = REOPEN_DELAY) -> None:
        self.delay = delay
        self.open = False
        self.reopens = 0  # opens tried again, after a lost sideband or a failed open
        self.failures = 0  # opens failed in a row
        self.reopen_at: float | None = None  # when the next open is due
        self.lost: tuple[int, str] | None = None  # how the last open one closed
        self.frames: list[str | bytes] = []

    def may_reopen(self) -> bool:
        """Whether another open may be tried; counts it when it may."""
        if self.reopens >= MAX_REATTACHES:
            return False
        self.reopens += 1
        return True

    def opened(self) -> list[str | bytes]:
        """One is open: what waited for it, in order."""
        self.open, self.failures, self.lost = True, 0, None
        frames, self.frames = self.frames, []
        return frames

    def closed(self, code: int, reason: str) -> None:
        """The open one was lost: another is tried at once."""
        self.open, self.lost = False, (code, reason)

    def failed(self, now: float) -> None:
        """An open failed: the next one is due after the backoff."""
        self.reopen_at = now + self.delay * 2**self.failures
        self.failures += 1

    def due(self, now: float) -> bool:
        """Whether the next open is due now (it is then no longer pending)."""
        if self.reopen_at is None or now < self.reopen_at:
            return False
        self.reopen_at = None
        return True


class Turns:
    """Who started the responses the core did not send (see the module docstring)."""

    __slots__ = ("server_creates", "turn_ended")

    def __init__(self) -> None:
        self.server_creates = True  # the service's default: server VAD creates responses
        self.turn_ended = False

    def session(self, session: dict[str, Any]) -> None:
        """Read the session's turn detection (GA `audio.input.turn_detection`, or the beta
        `turn_detection`); a session event that does not mention it changes nothing."""
        audio = session.get("audio")
        given = audio.get("input") if isinstance(audio, dict) else None
        if isinstance(given, dict) and "turn_detection" in given:
            detection = given["turn_detection"]
        elif "turn_detection" in session:
            detection = session["turn_detection"]
        else:
            return
        self.server_creates = isinstance(detection, dict) and detection.get(
            "create_response", True
        ) is not False

    def speech_stopped(self) -> None:
        self.turn_ended = True

    def origin(self) -> str:
        """The origin of a response observed now."""
        return SERVER_ORIGIN if self.server_creates and self.turn_ended else CALLER_ORIGIN

    def observed(self) -> None:
        """A response nobody in the console asked for started: the turn it answers is over."""
        self.turn_ended = False
