"""A WebRTC caller for tests: an `aiortc` peer that places a call as a browser would.

`CallClient(base_url, api_key)` posts its SDP offer to `{base_url}/realtime/calls` with the
`openai` SDK (`realtime.calls.create`: `application/sdp`, or multipart with a `session`), sets
the answer, and then has the call's `oai-events` data channel (`events`, `send`, `wait_for`)
and one audio track each way: what it sends (`audio=`: a sine, silence, or any aiortc audio
track, e.g. `MediaPlayer(path).audio`; `media=False`: no audio at all, the cheapest call) and
what it hears (`audio_bytes`, `loud_frames`).
Like the simulator, it gathers a 127.0.0.1 candidate only and drops remote candidates that
are not loopback; every offer and answer it sees goes to `apps.simulator.webrtc.sdp_log`,
which `non_loopback_candidates` checks (the suite's conftest does after every test).

Use::

    async with CallClient(sim_http_base, "sk-test") as call:
        await call.place(session={"type": "realtime", "output_modalities": ["text"]})
        await call.wait_for("session.created")
        call.send({"type": "response.create"})
        await call.wait_for("response.done")
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from typing import Any

import av
import openai
from aiortc import RTCDataChannel
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from apps.realtime.audio import pcm16_rms
from apps.simulator import webrtc

_RATE = 48000


def http_base(ws_base: str) -> str:
    """`ws://h:p/v1` → `http://h:p/v1` (as the console maps `OC_UPSTREAM_URL`)."""
    if ws_base.startswith("wss://"):
        return "https://" + ws_base[len("wss://") :]
    if ws_base.startswith("ws://"):
        return "http://" + ws_base[len("ws://") :]
    return ws_base


def non_loopback_candidates(entries=None) -> list[tuple[str, str]]:
    """(kind, candidate address) of every SDP candidate in `entries` (default: every SDP
    this process has seen) that is not 127.0.0.1."""
    found = []
    for kind, sdp in webrtc.sdp_log if entries is None else entries:
        found += [(kind, host) for host in webrtc.candidate_hosts(sdp) if host != "127.0.0.1"]
    return found


class ToneTrack(webrtc.PacedAudioTrack):
    """A microphone: a sine of `frequency` Hz (0: silence), 48 kHz mono, in real time; when
    `seconds` is set, that much tone and then silence."""

    def __init__(self, frequency: float = 440.0, amplitude: int = 8000, seconds: float | None = None):
        super().__init__(_RATE)
        self.frequency = frequency
        self.amplitude = amplitude
        self.seconds = seconds

    async def recv(self) -> av.AudioFrame:
        pts = await self.next_frame_time()
        audible = self.frequency > 0 and (self.seconds is None or pts / _RATE < self.seconds)
        w = 2 * math.pi * self.frequency / _RATE
        samples = [
            int(self.amplitude * math.sin(w * (pts + i))) if audible else 0
            for i in range(self.samples_per_frame)
        ]
        return self.frame(b"".join(sample.to_bytes(2, "little", signed=True) for sample in samples))


class CallClient:
    """One WebRTC call, placed against the simulator or the console (module docstring)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        audio: MediaStreamTrack | None = None,
        media: bool = True,
        loopback_only: bool = True,
    ) -> None:
        self.base_url = http_base(base_url)
        self.api_key = api_key
        self.loopback_only = loopback_only
        self.pc = webrtc.new_peer_connection()
        self.channel: RTCDataChannel = self.pc.createDataChannel("oai-events")
        self.microphone: MediaStreamTrack | None = None
        if media:  # else: the data channel alone (a cheap call: events, no audio)
            self.microphone = audio if audio is not None else ToneTrack(frequency=0)
            self.pc.addTrack(self.microphone)
        self.events: list[dict[str, Any]] = []
        self.call_id: str | None = None
        self.location: str | None = None
        self.offer: str | None = None
        self.answer: str | None = None
        self.audio_bytes = 0  # PCM16 heard (48 kHz mono after conversion)
        self.loud_frames = 0  # frames heard above -40 dBFS: the agent speaking
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self.channel.on("message", self._on_message)
        self.channel.on("close", self.closed.set)
        self.pc.on("track", self._on_track)

    async def __aenter__(self) -> CallClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def place(
        self, *, session: dict[str, Any] | None = None, model: str | None = None, timeout: float = 10.0
    ) -> str:
        """Offer, post, answer; returns the call id (from `Location`)."""
        self.offer = await webrtc.create_local(self.pc, "offer", loopback_only=self.loopback_only)
        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=timeout)
        try:
            kwargs: dict[str, Any] = {"sdp": self.offer}
            if session is not None:
                kwargs["session"] = session
            raw = await client.realtime.calls.with_raw_response.create(
                **kwargs, extra_query={"model": model} if model else None
            )
            self.location = raw.headers.get("location")
            self.answer = raw.http_response.text
        finally:
            await client.close()
        self.call_id = (self.location or "").rstrip("/").rsplit("/", 1)[-1] or None
        await webrtc.apply_remote(self.pc, self.answer, "answer", loopback_only=self.loopback_only)
        return self.call_id or ""

    def send(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    def kinds(self) -> list[str]:
        return [e.get("type") for e in self.events]

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 5.0) -> dict[str, Any]:
        """The `count`-th event of `kind` received (waits for it)."""
        async with asyncio.timeout(timeout):
            while True:
                seen = [e for e in self.events if e.get("type") == kind]
                if len(seen) >= count:
                    return seen[count - 1]
                self._changed.clear()
                await self._changed.wait()

    async def wait_until(self, predicate, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.05)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        await self.pc.close()

    def _on_message(self, message: str | bytes) -> None:
        try:
            event = json.loads(message)
        except ValueError:
            event = {"type": None, "raw": message}
        self.events.append(event)
        self._changed.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen(track))

    async def _listen(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=_RATE)
        threshold = 32768 * 10 ** (-40 / 20)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            for out in resampler.resample(frame):
                pcm = bytes(out.planes[0])[: out.samples * 2]
                self.audio_bytes += len(pcm)
                if pcm16_rms(pcm) >= threshold:
                    self.loud_frames += 1
                    self._changed.set()


def drain_non_loopback() -> list[tuple[str, str]]:
    """`non_loopback_candidates` of the SDPs seen since the last call; forgets them (the
    suite's conftest calls it after every test)."""
    entries = list(webrtc.sdp_log)
    webrtc.sdp_log.clear()
    return non_loopback_candidates(entries)
