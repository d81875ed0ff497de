"""Load generator of the voice part: C full-duplex voice callers against one target, and
optionally operators listening to one of the sessions, in a process of its own (run by
bench/voice.py).

Each caller connects, waits for `session.created`, sets its session to audio in and out
(PCM16 24 kHz, `turn_detection: null`), then its microphone sends FRAME_MS of audio every
FRAME_MS as `input_audio_buffer.append` (on an absolute schedule: a late loop sends what is
due at once, as a microphone's backlog would be), and every `turn` seconds, when its last
reply is over, `input_audio_buffer.commit` + `response.create`; the simulator answers with a
fixed-length spoken reply paced in real time.

Stamps, all `time.time_ns()` on this host:
- a microphone frame's first 8 bytes of audio are its send time, and so is its `event_id`
  (`event_<n>_<ns>` inside the window, so the simulator records its one-way latency);
- the simulator stamps its `event_id` (and, `--audio-stamp`, the first 8 bytes of each audio
  chunk) with its send time.
So up latency = simulator receive − append stamp (reported by the simulator), down latency =
caller receive − delta stamp, listen-in latency = listener receive − the stamp in the audio.

Phases: connect → listeners join (`listen.started`) → warm-up → window (CPU of the target,
simulator and this process; audio bytes; latencies) → drain (microphones stop, last replies
end) → the simulator's byte counts (`GET {sim}/_stats`) are compared with what the callers
sent and received. Progress and the result are JSON lines on stdout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import math
import os
import time
from array import array
from dataclasses import dataclass, field

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.common import (
    DONE,
    ERROR,
    STAMP_RE,
    TYPE_RE,
    CpuWindow,
    ProcessGroup,
    Stats,
    client_main,
    emit,
    in_batches,
    open_caller,
    realtime_url,
    summary,
)

RATE = 24_000
FRAME_MS = 40
FRAME_S = FRAME_MS / 1000
FRAME_BYTES = RATE * 2 * FRAME_MS // 1000  # PCM16 mono: 1920
STAMP_BYTES = 8
MIN_COMMIT_FRAMES = 3  # the service refuses a commit of less than 100 ms
AUDIO_DELTA = b"response.output_audio.delta"
DELTA_KEY = b'"delta":"'
PLAUSIBLE_NS = 60 * 10**9  # a stamp further than this from now is not a stamp
MAX_SAMPLES = 400_000  # latency samples kept per kind (bounded memory)
LISTEN_ATTEMPTS = 25
CONNECT_TIMEOUT = 30.0
DRAIN_S = 10.0  # at most this long for the last replies, and again for the bytes to land


def _tone() -> bytes:
    """One microphone frame: a quiet 300 Hz tone (its first 8 bytes become the stamp)."""
    w = 2 * math.pi * 300 / RATE
    n = FRAME_BYTES // 2
    return array("h", (int(3000 * math.sin(w * i)) for i in range(n))).tobytes()


# base64 works in 3-byte groups: the stamp (8 bytes) and one byte of the tone are 12 characters
# of their own, and the rest of the frame is encoded once.
_TONE = _tone()
_HEAD = STAMP_BYTES + 1
_REST_B64 = base64.b64encode(_TONE[_HEAD:]).decode("ascii")
_APPEND_A = '{"type":"input_audio_buffer.append","event_id":"'
_APPEND_B = '","audio":"'


def append_frame(seq: int, ns: int, measuring: bool) -> str:
    head = base64.b64encode(ns.to_bytes(STAMP_BYTES, "little") + _TONE[STAMP_BYTES:_HEAD])
    event_id = f"event_{seq}_{ns}" if measuring else f"mic_{seq}_{ns}"
    return _APPEND_A + event_id + _APPEND_B + head.decode("ascii") + _REST_B64 + '"}'


def delta_audio(frame: bytes) -> tuple[int, int | None]:
    """An output audio delta frame → (decoded bytes of its audio, the stamp in its first 8
    bytes or None). Read from the bytes: the frame is not parsed."""
    start = frame.rfind(DELTA_KEY)
    end = frame.rfind(b'"')
    if start < 0 or end <= start:
        return 0, None
    start += len(DELTA_KEY)
    length = end - start
    padding = (frame[end - 1] == 61) + (frame[end - 2] == 61) if length >= 2 else 0
    size = length * 3 // 4 - padding
    stamp = None
    if length >= 12:
        with contextlib.suppress(ValueError):
            head = base64.b64decode(frame[start : start + 12])
            stamp = int.from_bytes(head[:STAMP_BYTES], "little")
    return size, stamp


@dataclass(kw_only=True)
class Plan(Stats):
    """What every caller and listener shares: the phase, the window, and the figures kept
    (`latencies_ns`: down latency)."""

    turn_frames: int
    max_frames: int
    window_start_ns: int = 0
    window_end_ns: int = 0


SESSION_UPDATE = json.dumps({
    "type": "session.update",
    "event_id": "evt_voice_session",
    "session": {
        "type": "realtime",
        "output_modalities": ["audio"],
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": RATE}, "turn_detection": None},
            "output": {"format": {"type": "audio/pcm", "rate": RATE}, "voice": "alloy"},
        },
    },
}, separators=(",", ":"))
COMMIT = '{"type":"input_audio_buffer.commit"}'
CREATE = '{"type":"response.create"}'


@dataclass(eq=False)
class VoiceCaller:
    ws: object
    session_id: str
    index: int
    plan: Plan
    tracked: bool = False  # the listened session: keep the stamps it sent and received
    sent_bytes: int = 0  # audio appended, whole run
    received_bytes: int = 0  # audio received, whole run
    window_sent: int = 0
    window_received: int = 0
    appends: int = 0  # in the window
    deltas: int = 0
    responses: int = 0
    turns: int = 0
    skipped_turns: int = 0  # the last reply was not over when the next turn was due
    replying: bool = False
    reply_over: asyncio.Event = field(default_factory=asyncio.Event)
    mic_stamps: set[int] = field(default_factory=set)
    agent_stamps: set[int] = field(default_factory=set)
    closed: str | None = None

    async def configure(self, timeout: float) -> None:
        await self.ws.send(SESSION_UPDATE)
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.ws.recv(decode=False)
                match = TYPE_RE.search(frame)
                if match and match.group(1) == b"session.updated":
                    return
                if match and match.group(1) == ERROR:
                    raise RuntimeError(f"session.update refused: {frame[:300]!r}")

    async def read(self) -> None:
        plan = self.plan
        try:
            while True:
                frame = await self.ws.recv(decode=False)
                now = time.time_ns()
                match = TYPE_RE.search(frame)
                kind = match.group(1) if match else None
                if kind == AUDIO_DELTA:
                    size, stamp = delta_audio(frame)
                    self.received_bytes += size
                    if plan.measuring:
                        self.window_received += size
                        self.deltas += 1
                        sent = STAMP_RE.search(frame)
                        if sent is None:
                            plan.unstamped += 1
                        elif len(plan.latencies_ns) < MAX_SAMPLES:
                            plan.latencies_ns.append(now - int(sent.group(1)))
                        if self.tracked and stamp is not None:
                            self.agent_stamps.add(stamp)
                elif kind == DONE:
                    if plan.measuring:
                        self.responses += 1
                    self.replying = False
                    self.reply_over.set()
                elif kind == ERROR:
                    plan.error(f"caller {self.index}: {frame[:300].decode(errors='replace')}")
        except ConnectionClosed as exc:
            if not plan.stop:
                self.closed = f"closed by target: {exc}"
                plan.error(f"caller {self.index} {self.closed}")
        finally:
            self.reply_over.set()

    async def microphone(self, t0: float, offset: int) -> None:
        """FRAME_MS of audio every FRAME_MS from loop time `t0`; a turn every `turn_frames`
        frames (this caller's turns `offset` frames into the cycle)."""
        plan, loop = self.plan, asyncio.get_running_loop()
        seq = 0
        try:
            while not plan.stop and seq < plan.max_frames:
                delay = t0 + seq * FRAME_S - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                    if plan.stop:
                        break
                ns, measuring = time.time_ns(), plan.measuring
                await self.ws.send(append_frame(seq, ns, measuring))
                self.sent_bytes += FRAME_BYTES
                if measuring:
                    self.window_sent += FRAME_BYTES
                    self.appends += 1
                    if self.tracked:
                        self.mic_stamps.add(ns)
                seq += 1
                if seq >= MIN_COMMIT_FRAMES and seq % plan.turn_frames == offset:
                    await self.turn()
        except ConnectionClosed:
            pass  # the reader says why

    async def turn(self) -> None:
        if self.replying:
            self.skipped_turns += 1
            return
        self.replying = True
        self.reply_over.clear()
        self.turns += 1
        await self.ws.send(COMMIT)
        await self.ws.send(CREATE)


@dataclass(eq=False)
class Listener:
    """An operator's listen socket: binary frames, byte 0 the side, then PCM16 whose first
    8 bytes are the stamp of whoever sent that audio."""

    ws: object
    plan: Plan
    stamps: tuple[set[int], set[int]] = field(default_factory=lambda: (set(), set()))
    latency_ns: tuple[array, array] = field(default_factory=lambda: (array("q"), array("q")))
    frames: int = 0
    other: int = 0  # frames whose first bytes were not a stamp
    ended: str | None = None
    reader: asyncio.Task | None = None

    async def read(self) -> None:
        plan = self.plan
        try:
            while True:
                data = await self.ws.recv()
                now = time.time_ns()
                if isinstance(data, str):
                    if json.loads(data).get("type") != "listen.ended":
                        plan.error(f"listener: {data[:300]}")
                    continue
                self.frames += 1
                side = data[0]
                stamp = int.from_bytes(data[1 : 1 + STAMP_BYTES], "little")
                if side not in (0, 1) or abs(now - stamp) > PLAUSIBLE_NS:
                    self.other += 1
                    continue
                self.stamps[side].add(stamp)
                in_window = 0 < plan.window_start_ns <= stamp <= (plan.window_end_ns or now)
                if in_window and len(self.latency_ns[side]) < MAX_SAMPLES:
                    self.latency_ns[side].append(now - stamp)
        except ConnectionClosed as exc:
            if not plan.stop:
                self.ended = f"closed: {exc}"
                plan.error(f"listener {self.ended}")


# ---------------------------------------------------------------------------- phases


async def open_callers(args, plan: Plan) -> list[VoiceCaller]:
    url = realtime_url(args.base)

    async def one(index: int) -> VoiceCaller | None:
        try:
            ws, session_id = await open_caller(url, args.token, CONNECT_TIMEOUT)
            caller = VoiceCaller(ws, session_id, index, plan)
            await caller.configure(CONNECT_TIMEOUT)
            return caller
        except Exception as exc:  # noqa: BLE001 - a failed caller is a figure, not a crash
            plan.error(f"connect: {type(exc).__name__}: {exc}")
            return None

    return await in_batches(args.concurrency, one)


async def open_listeners(args, plan: Plan, session_id: str) -> list[Listener]:
    """`listeners` listen sockets on the session, each once `listen.started` came. The
    session's row turns live a moment after `session.created`; until then the socket says
    the session is not live (4404) and is opened again (≤ LISTEN_ATTEMPTS times)."""
    url = args.base.replace("http", "ws", 1) + f"/ws/console/sessions/{session_id}/audio"
    headers = {"Cookie": args.cookie, "Origin": args.base}

    async def one() -> Listener:
        refusal = ""
        for _ in range(LISTEN_ATTEMPTS):
            ws = await connect(url, additional_headers=headers, max_size=None, compression=None,
                               open_timeout=CONNECT_TIMEOUT, close_timeout=2,
                               ping_interval=None)
            with contextlib.suppress(ConnectionClosed):
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    first = await ws.recv()
                if isinstance(first, str) and json.loads(first).get("type") == "listen.started":
                    listener = Listener(ws, plan)
                    listener.reader = asyncio.create_task(listener.read())
                    return listener
                refusal = str(first)[:300]
            await ws.close()
            await asyncio.sleep(0.2)
        raise RuntimeError(f"listening refused {LISTEN_ATTEMPTS} times: {refusal}")

    return [await one() for _ in range(args.listeners)]


async def simulator_counts(args, session_ids: list[str]) -> dict[str, dict]:
    counts: dict[str, dict] = {}
    async with httpx.AsyncClient(timeout=10) as client:
        for start in range(0, len(session_ids), 40):
            batch = session_ids[start : start + 40]
            url = args.sim_stats.replace("ws", "http", 1)
            reply = await client.get(url, params=[("session", i) for i in batch])
            reply.raise_for_status()
            counts.update(reply.json()["sessions"])
    return counts


async def settle_counts(args, callers: list[VoiceCaller]) -> dict[str, dict]:
    """The simulator's counts once what the callers sent has arrived (or DRAIN_S passed):
    appends still queued in the target are in flight, not lost."""
    deadline = time.monotonic() + DRAIN_S
    while True:
        counts = await simulator_counts(args, [c.session_id for c in callers])
        arrived = all(counts.get(c.session_id, {}).get("audio_in_bytes") == c.sent_bytes
                      for c in callers)
        if arrived or time.monotonic() >= deadline:
            return counts
        await asyncio.sleep(0.25)


async def main(args) -> dict:
    window_s = args.window
    total_s = args.warmup + window_s
    plan = Plan(turn_frames=max(3, round(args.turn / FRAME_S)),
                max_frames=int((total_s + 5) / FRAME_S))
    groups = {"target": ProcessGroup(args.target_pid), "load": ProcessGroup(os.getpid())}
    groups.update((name, ProcessGroup(pid)) for name, pid in args.watch.items())
    started = time.monotonic()
    callers = await open_callers(args, plan)
    emit(event="connected", sessions=len(callers), seconds=round(time.monotonic() - started, 2))
    if not callers:
        raise RuntimeError(f"no caller connected: {plan.error_samples}")
    readers = [asyncio.create_task(c.read()) for c in callers]
    listeners: list[Listener] = []
    if args.listeners:
        callers[0].tracked = True
        listeners = await open_listeners(args, plan, callers[0].session_id)
        emit(event="listening", listeners=len(listeners), session=callers[0].session_id)
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.1
    spread = len(callers)
    mics = [
        asyncio.create_task(c.microphone(t0 + FRAME_S * i / spread, plan.turn_frames * i // spread))
        for i, c in enumerate(callers)
    ]
    await asyncio.sleep(args.warmup)
    window = CpuWindow(groups)
    plan.window_start_ns = time.time_ns()
    plan.measuring = True
    emit(event="measure_start")
    await asyncio.sleep(window_s)
    plan.measuring = False
    plan.window_end_ns = time.time_ns()
    measured = window.end()
    emit(event="measure_end")
    plan.stop = True
    await asyncio.gather(*mics, return_exceptions=True)
    with contextlib.suppress(TimeoutError):  # the last replies end
        async with asyncio.timeout(DRAIN_S):
            await asyncio.gather(*(c.reply_over.wait() for c in callers if c.replying))
    counts = await settle_counts(args, callers)
    await asyncio.sleep(0.5)  # the listeners' last frames
    for task in readers + [listener.reader for listener in listeners]:
        if task is not None:
            task.cancel()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            sockets = [c.ws for c in callers] + [lis.ws for lis in listeners]
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return result(plan, callers, listeners, measured, counts)


def listen_result(listeners: list[Listener], tracked: VoiceCaller | None) -> dict | None:
    if not listeners or tracked is None:
        return None
    expected = (tracked.mic_stamps, tracked.agent_stamps)
    sides = {}
    for side, name in ((0, "caller"), (1, "agent")):
        latencies = [v for lis in listeners for v in lis.latency_ns[side]]
        sides[name] = {
            **summary(latencies, unit=1e-6, quantiles=(0.5, 0.9, 0.95, 0.99)),
            "expected_frames": len(expected[side]),
            "missing_frames": sum(len(expected[side] - lis.stamps[side]) for lis in listeners),
        }
    return {
        "listeners": len(listeners),
        "frames": sum(lis.frames for lis in listeners),
        "unstamped_frames": sum(lis.other for lis in listeners),
        "ended_early": [lis.ended for lis in listeners if lis.ended],
        **sides,
    }


def result(plan: Plan, callers: list[VoiceCaller], listeners: list[Listener], measured: dict,
           counts: dict[str, dict]) -> dict:
    seconds, target_cpu = measured["seconds"], measured["cpu_s"]["target"]
    up = sum(c.window_sent for c in callers)
    down = sum(c.window_received for c in callers)
    mb = (up + down) / 1e6
    missing = [c.session_id for c in callers if c.session_id not in counts]
    sim_in = sum(counts.get(c.session_id, {}).get("audio_in_bytes", 0) for c in callers)
    sim_out = sum(counts.get(c.session_id, {}).get("audio_out_bytes", 0) for c in callers)
    sent = sum(c.sent_bytes for c in callers)
    received = sum(c.received_bytes for c in callers)
    up_latency = [v for n in counts.values() for v in n["append_latency_ns"]]
    tracked = next((c for c in callers if c.tracked), None)
    return {
        "event": "result",
        "sessions": len(callers),
        "window_seconds": seconds,
        "appends": sum(c.appends for c in callers),
        "deltas": sum(c.deltas for c in callers),
        "responses": sum(c.responses for c in callers),
        "turns": sum(c.turns for c in callers),
        "skipped_turns": sum(c.skipped_turns for c in callers),
        "audio_up_bytes": up,
        "audio_down_bytes": down,
        "audio_mb_per_s": mb / seconds if seconds else None,
        "target_cpu_s_per_mb": target_cpu / mb if target_cpu is not None and mb else None,
        "latency_up_ms": summary(up_latency, unit=1e-6),
        "latency_down_ms": summary(plan.latencies_ns, unit=1e-6),
        "unstamped_deltas": plan.unstamped,
        "bytes": {
            "callers_sent": sent,
            "upstream_received": sim_in,
            "upstream_sent": sim_out,
            "callers_received": received,
            "lost_up": sent - sim_in,
            "lost_down": sim_out - received,
            "sessions_unknown_to_upstream": len(missing),
        },
        "listen": listen_result(listeners, tracked),
        "errors": plan.errors,
        "error_samples": plan.error_samples,
        "closed_callers": sum(1 for c in callers if c.closed),
        "cpu_seconds": measured["cpu_s"],
        "other_cpu_s": measured["other_cpu_s"],
        "other_cpu_share": measured["other_cpu_share"],
        "machine_cpu_percent": measured["machine_cpu_percent"],
    }


if __name__ == "__main__":
    client_main(main)
