"""The simulator's knobs (`SimulatorConfig`). No Django: the settings are read by its callers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class SimulatorConfig:
    deltas_per_response: int = 8
    delta_interval: float = 0.02  # seconds between deltas
    # If set, a handshake without `Authorization: Bearer <key>` (or the browser subprotocol
    # `openai-insecure-api-key.<key>`) is refused with HTTP 401.
    required_api_key: str | None = None
    default_instructions: str = "You are a helpful assistant."
    # The service's cap on a session's life, counted from its creation: at it the session gets
    # `error` `session_expired` and close 1001 (`lifetime`). The service's is 60 minutes.
    max_session_seconds: float = 3600.0
    # The limits `rate_limits.updated` reports, per session and one-minute window (`limits`).
    rate_limit_requests: int = 5000
    rate_limit_tokens: int = 400_000
    # Events kept per session and direction for `received`/`sent` (the latest ones);
    # None keeps all, 0 none. Bounded by default so long benchmarks don't grow memory.
    record_limit: int | None = 256
    # Metadata keys left out of the reply text (they stay in `response.metadata`):
    # the relay's own bookkeeping key is not something a model would talk about.
    text_hides_metadata_keys: tuple[str, ...] = ("oc_request",)
    # Fault injection: after this many deltas a response goes silent (no more events, not
    # even for response.cancel), as a stalled upstream would. None: never.
    stall_after_deltas: int | None = None
    # Spoken replies (sessions whose output modalities include audio): the pace of the audio
    # stream as a realtime factor — 1.0 real time (as the service streams it), 2.0 twice as
    # fast, 0 as fast as possible (tests) — and the length of each `response.output_audio.delta`.
    audio_pace: float = 1.0
    audio_chunk_ms: int = 100
    # "auto": espeak-ng when installed, else a tone sequence; "tone": always the tone (cheaper).
    speech_engine: str = "auto"
    # Benchmarks: every spoken reply is this many ms of one cached tone (the same length each
    # time, nothing synthesised per reply); None speaks the reply text as above.
    reply_audio_ms: int | None = None
    # Benchmarks: the first 8 bytes of each PCM16 output audio chunk are replaced by its send
    # time (`time.time_ns()`, little-endian), so the audio itself says when it left, wherever
    # it lands (a caller, a listener, a recording).
    audio_stamp: bool = False
    # WebRTC calls (`calls`): the simulator's ICE gathers a 127.0.0.1 host candidate only and
    # drops remote candidates that are not loopback (`webrtc`). A tool for tests and local
    # development on 127.0.0.1; turn it off only to take calls from another machine.
    ice_loopback_only: bool = True
    # A WebRTC call whose peer is not connected (ICE and DTLS) this many seconds after its
    # answer ends (`not_connected`): the service does not keep a call whose media never came.
    # Its figure is not published; 30 s is our assumption (a browser gives up ICE about then).
    webrtc_connect_seconds: float = 30.0
