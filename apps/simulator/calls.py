"""Calls that do not pass through a WebSocket: WebRTC and SIP calls, as the service has them.

The interface (what the console's calls endpoints, webhook endpoint and sideband actor talk to).
Every path is on the simulator's own host and port, the same as its WebSocket: with
`OC_UPSTREAM_URL` = `ws://127.0.0.1:PORT/v1`, the HTTP base is `http://127.0.0.1:PORT/v1`.
Plain HTTP/1.1, one request per connection (`Connection: close`); see `apps.simulator.http`.

Every request needs `Authorization: Bearer <key>`: any non-empty key, or exactly
`SimulatorConfig.required_api_key` when that is set (else 401). Errors have the service's shape
`{"error": {"message", "type", "code", "param"}}`: 400 a bad body, 401 no key, 404 an unknown
path or call, 405 a method other than POST, 413 a body over 1 MiB, 415 an SDP offer that is
neither `application/sdp` nor `multipart/form-data`.

WebRTC
- `POST /v1/realtime/calls[?model=M]`, body `application/sdp` (the offer), or
  `multipart/form-data` with the parts `sdp` (the offer) and `session` (JSON: a session
  configuration, `{"type": "realtime", "model", "instructions", "audio", "tools", ...}`), as the
  `openai` SDK's `realtime.calls.create` sends them. → `201`, `Content-Type: application/sdp`,
  body = the answer SDP, `Location: /v1/realtime/calls/{call_id}` (`rtc_<hex>`).
  The answer is a real `aiortc` peer: DTLS, the caller's `oai-events` data channel, one audio
  track each way. Every ICE candidate of the simulator is 127.0.0.1, and remote candidates that
  are not loopback are dropped before use (`apps.simulator.webrtc`).
- The call is a `SimSession` (the same protocol as a WebSocket session). Its server events go
  to the data channel *and* to every sideband joined to the call; client events from either act
  on the session. The first event on the data channel is `session.created`.
- Audio: the caller's incoming track is resampled to the session's input format (PCM16 24 kHz by
  default) and appended to the input buffer, so server VAD, commits and VAD responses work as
  over a WebSocket. A spoken reply is played on the outgoing track. As the service does over
  WebRTC, the reply's audio is not sent as `response.output_audio.delta` events on the data
  channel or the sidebands (the transcript deltas and every other event are).

Sideband
- `ws /v1/realtime?call_id=C` (same auth as any WebSocket) joins call C's session; an unknown or
  ended call id → handshake refused with 404. First event: `session.created` carrying the
  session's *current* configuration (our assumption of what the service sends a sideband), then
  every server event of the call. Client events sent on it act on the call's session (their
  `error` events go to every output, as the call has one session). When the call ends (hang up,
  refer, the peer closing its connection, the data channel closing) every sideband is closed
  with code 1000.

Call REST (`{call_id}` from `Location`, or the webhook's `data.call_id`); each answers `200`
with an empty body.
- `POST /v1/realtime/calls/{call_id}/accept`, JSON: a session configuration (`type` must be
  `realtime`; `model`, `instructions`, `audio`, `tools`, `output_modalities`, ... are applied to
  the session as a `session.update` would). Only a pending SIP call can be accepted (else 400
  `call_not_pending`); the call then starts (the simulated phone caller speaks).
- `POST /v1/realtime/calls/{call_id}/reject`, optional JSON `{"status_code": 486}` (default
  603): a pending SIP call is gone.
- `POST /v1/realtime/calls/{call_id}/hangup`: ends the call (peer closed, sidebands closed 1000).
- `POST /v1/realtime/calls/{call_id}/refer`, JSON `{"target_uri": "tel:…" | "sip:…"}`: recorded;
  the call then ends as transferred.

SIP (simulator only, not part of the service)
- `POST /v1/_sim/sip_calls`, JSON `{"from": "+1555…", "to": "+1555…", "webhook_url": "http://…",
  "webhook_secret": "whsec_…", "say": ["sentence", ...] (optional)}` → creates a pending SIP call
  and POSTs the webhook the service would send, signed per Standard Webhooks (headers
  `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
  "{id}.{timestamp}.{body}" keyed by the base64-decoded secret after "whsec_">`), body::

      {"object": "event", "id": "evt_…", "type": "realtime.call.incoming", "created_at": <unix s>,
       "data": {"call_id": "rtc_…", "sip_headers": [
           {"name": "From", "value": "sip:+1555…@sim.invalid"},
           {"name": "To", "value": "sip:+1555…@sip.api.openai.com"},
           {"name": "Call-ID", "value": "…"}]}}

  `openai.OpenAI(webhook_secret=...).webhooks.unwrap(body, headers)` verifies it. Answers `201`
  `{"call_id": "rtc_…", "webhook_status": 200}` once the webhook was answered (`webhook_status`
  null and `webhook_error` set when it could not be delivered). Once accepted the caller speaks
  each sentence of `say` (speech synthesis, fed as input audio in real time, each after the
  agent's previous reply is done); the agent's audio is consumed.
- `GET /v1/_sim/calls` → the counters below as JSON (tests of another process can read them).

What tests assert on: `Simulator.calls` (a `CallRegistry`): `calls` (live and pending, by id),
`accepts` [(call_id, session config)], `rejects` [(call_id, status_code)], `hangups` [call_id],
`refers` [(call_id, target_uri)], `offers` and `answers` (every SDP seen, in order).
"""
