"""The voice part: full-duplex voice callers through the relay and through both floors in the
same run (CPU per MB of audio, bytes lost either way, audio frame latency both ways), then the
relay again with operators listening to one session and every session recorded (recordings go
to the run's private directory: `bench/voice_settings.py`). The set-up, how the callers talk
and what the stamps are: the report's text, `body` and HOW below; the load generator is `main`
(`python -m bench.voice`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import math
import time
from array import array
from dataclasses import dataclass, field
from functools import partial

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench import common
from bench.common import Bench, at_most, fmt, say, summary, table

TITLE = "Full-duplex voice"
CONCURRENCY = [50, 100]  # a full run's; `-c` other than the run's default, or --quick, decides
RUN_DEFAULT_C = [10, 100, 300]  # bench/run.py's default: the relay part's, not this part's
LISTENERS = 10
REPLY_MS = 2400  # each spoken reply: 24 deltas of 100 ms, paced in real time
TURN_S = 4.0  # each caller commits and asks for a reply this often
CPU_RATIO_TARGET = 1.1  # relay CPU per MB ÷ the Channels floor's
P99_RATIO_TARGET = 1.5  # relay audio frame p99 ÷ the Channels floor's
LISTEN_CPU_TARGET = 1.25  # relay CPU per MB listened to and recorded ÷ the same without
LISTEN_P95_TARGET_MS = 150.0
CPU_KEY = "target_cpu_s_per_mb"

LABELS = {**common.TARGETS, "listen": f"relay, {LISTENERS} listening, recording on"}
LOGIN = """
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
user, _ = get_user_model().objects.get_or_create(username="bench-listener")
user.user_permissions.add(
    Permission.objects.get(codename="listen_session", content_type__app_label="oc_sessions"))
client = Client()
client.force_login(user)
print(f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}")
"""


async def run(bench: Bench, args) -> dict:
    cs = CONCURRENCY if args.concurrency == RUN_DEFAULT_C else args.concurrency
    warmup, window = (max(args.warmup, 2.0), max(args.window, 4.0)) if args.quick else (
        args.warmup, args.window)
    sim, url = await bench.simulator("voice-simulator", "--audio-pace", 1, "--reply-audio-ms",
                                     REPLY_MS, "--audio-stamp", "--speech", "tone")
    try:
        env = bench.env(
            OC_UPSTREAM_URL=url, BENCH_UPSTREAM_URL=url, OC_RECORD_AUDIO="false",
            DJANGO_SETTINGS_MODULE="bench.voice_settings",
            BENCH_MEDIA_ROOT=str(bench.workdir / "media"),
        )
        token = await bench.migrate_with_token("bench-voice", env)
        out = await bench.run_command([common.PY, "manage.py", "shell", "-c", LOGIN], env)
        load = {"token": token, "cookie": out.strip().splitlines()[-1], "warmup": warmup,
                "window": window, "turn": TURN_S, "watch": {"simulator": sim.pid},
                "sim_stats": url + "/_stats"}  # `main`'s settings, less the target's and C's
        runs = []
        for c in cs:
            for key in ("websockets", "channels", "relay", "listen"):
                if key == "listen" and c != cs[0]:
                    continue
                say(f"{LABELS[key]}, C={c}")
                measure = partial(with_target, bench, env, load, key, c)
                # Measured again once when disturbed (not with --quick).
                result = await bench.measured_twice(measure, retry=not args.quick)
                runs.append({**result, "target": key, "concurrency": c})
                await asyncio.sleep(1.0)
    finally:
        await bench.stop(sim)
    return {"runs": runs, "warmup": warmup, "window": window, "turn_s": TURN_S,
            "reply_ms": REPLY_MS, "listeners": LISTENERS}


async def with_target(bench: Bench, env: dict, load: dict, key: str, c: int) -> dict:
    """A fresh target process, C voice callers against it (the listeners too for `listen`, with
    every session recorded), the target stopped."""
    listen = key == "listen"
    env = dict(env, OC_RECORD_AUDIO="true") if listen else env
    config = {**load, "concurrency": c, "listeners": LISTENERS if listen else 0,
              "token": load["token"] if key in ("relay", "listen") else ""}
    budget = 150 + load["warmup"] + load["window"] + c / 5
    return await bench.against_target(key, f"voice-{key}-c{c}", env, "voice", config, budget)


RATE = 24_000
FRAME_MS = 40
FRAME_S = FRAME_MS / 1000
FRAME_BYTES = RATE * 2 * FRAME_MS // 1000  # PCM16 mono: 1920
STAMP_BYTES = 8
AGENT_CHUNK_BYTES = RATE * 2 * 100 // 1000  # the simulator's deltas: 100 ms of PCM16
MIN_COMMIT_FRAMES = 3  # the service refuses a commit of less than 100 ms
AUDIO_DELTA = b"response.output_audio.delta"
DELTA_KEY = b'"delta":"'
PLAUSIBLE_NS = 60 * 10**9  # a stamp further than this from now is not a stamp
MAX_SAMPLES = 400_000  # latency samples kept per kind (bounded memory)
LISTEN_ATTEMPTS = 25
CONNECT_TIMEOUT = 30.0
DRAIN_S = 10.0  # at most this long for the last replies, and again for the bytes to land


# One microphone frame: a quiet 300 Hz tone (its first 8 bytes become the stamp). base64 works
# in 3-byte groups: the stamp (8 bytes) and one byte of the tone are 12 characters of their
# own, and the rest of the frame is encoded once.
_TONE = array("h", (int(3000 * math.sin(2 * math.pi * 300 * i / RATE))
                    for i in range(FRAME_BYTES // 2))).tobytes()
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
class Plan(common.Stats):
    """What every caller and listener shares: the phase, the window, and the figures kept
    (`latencies_ns`: down latency)."""

    turn_frames: int
    max_frames: int


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
    responses: int = 0  # in the window
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
                match = common.TYPE_RE.search(frame)
                if match and match.group(1) == b"session.updated":
                    return
                if match and match.group(1) == common.ERROR:
                    raise RuntimeError(f"session.update refused: {frame[:300]!r}")

    async def read(self) -> None:
        plan = self.plan
        try:
            while True:
                frame = await self.ws.recv(decode=False)
                now = time.time_ns()
                match = common.TYPE_RE.search(frame)
                kind = match.group(1) if match else None
                if kind == AUDIO_DELTA:
                    size, stamp = delta_audio(frame)
                    self.received_bytes += size
                    if plan.measuring:
                        self.window_received += size
                        sent = common.STAMP_RE.search(frame)
                        if sent is None:
                            plan.unstamped += 1
                        elif len(plan.latencies_ns) < MAX_SAMPLES:
                            plan.latencies_ns.append(now - int(sent.group(1)))
                        if self.tracked and stamp is not None:
                            self.agent_stamps.add(stamp)
                elif kind == common.DONE:
                    if plan.measuring:
                        self.responses += 1
                    self.replying = False
                    self.reply_over.set()
                elif kind == common.ERROR:
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
    other: int = 0  # pieces whose first bytes were not a stamp
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
                if side not in (0, 1):
                    self.other += 1
                    continue
                # Pieces that came close together come as one frame: each has its stamp.
                piece = FRAME_BYTES if side == 0 else AGENT_CHUNK_BYTES
                for offset in range(1, len(data), piece):
                    stamp = int.from_bytes(data[offset : offset + STAMP_BYTES], "little")
                    if abs(now - stamp) > PLAUSIBLE_NS:
                        self.other += 1
                        continue
                    self.stamps[side].add(stamp)
                    in_window = 0 < plan.window_start_ns <= stamp <= (plan.window_end_ns or now)
                    if in_window and len(self.latency_ns[side]) < MAX_SAMPLES:
                        self.latency_ns[side].append(now - stamp)
        except ConnectionClosed as exc:
            if not plan.stop:
                plan.error(f"listener closed: {exc}")


async def open_callers(args, plan: Plan) -> list[VoiceCaller]:
    url = common.realtime_url(args.base)

    async def one(index: int) -> VoiceCaller:
        ws, session_id = await common.open_caller(url, args.token, CONNECT_TIMEOUT)
        caller = VoiceCaller(ws, session_id, index, plan)
        await caller.configure(CONNECT_TIMEOUT)
        return caller

    return await common.connect_all(args.concurrency, one, plan)


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


async def settle_counts(args, callers: list[VoiceCaller]) -> dict[str, dict]:
    """The simulator's counts per session (`GET {sim}/_stats`, 40 sessions a request) once what
    the callers sent has arrived (or DRAIN_S passed): appends still queued in the target are in
    flight, not lost."""
    deadline, url = time.monotonic() + DRAIN_S, args.sim_stats.replace("ws", "http", 1)
    ids = [c.session_id for c in callers]
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            counts: dict[str, dict] = {}
            for start in range(0, len(ids), 40):
                batch = [("session", i) for i in ids[start : start + 40]]
                reply = await client.get(url, params=batch)
                reply.raise_for_status()
                counts.update(reply.json()["sessions"])
            arrived = all(counts.get(c.session_id, {}).get("audio_in_bytes") == c.sent_bytes
                          for c in callers)
            if arrived or time.monotonic() >= deadline:
                return counts
            await asyncio.sleep(0.25)


async def main(args) -> dict:
    """The load generator (`python -m bench.voice CONFIG`): C voice callers, the listeners.
    Phases: connect → listeners join → warm-up → window (CPU of the target, the simulator and
    this process; audio bytes; latencies) → drain (microphones stop, last replies end) → the
    simulator's byte counts (`GET {sim}/_stats`) against what the callers sent and received."""
    plan = Plan(turn_frames=max(3, round(args.turn / FRAME_S)),
                max_frames=int((args.warmup + args.window + 5) / FRAME_S))
    callers = await open_callers(args, plan)
    readers = [asyncio.create_task(c.read()) for c in callers]
    listeners: list[Listener] = []
    if args.listeners:
        callers[0].tracked = True
        listeners = await open_listeners(args, plan, callers[0].session_id)
    gc.collect()
    gc.freeze()
    t0, spread = asyncio.get_running_loop().time() + 0.1, len(callers)
    mics = [
        asyncio.create_task(c.microphone(t0 + FRAME_S * i / spread, plan.turn_frames * i // spread))
        for i, c in enumerate(callers)
    ]
    await asyncio.sleep(args.warmup)
    measured = await common.measure_for(args.window, common.load_groups(args), plan)
    plan.stop = True
    await asyncio.gather(*mics, return_exceptions=True)
    with contextlib.suppress(TimeoutError):  # the last replies end
        async with asyncio.timeout(DRAIN_S):
            await asyncio.gather(*(c.reply_over.wait() for c in callers if c.replying))
    counts = await settle_counts(args, callers)
    await asyncio.sleep(0.5)  # the listeners' last frames
    await common.cancel_all(readers + [listener.reader for listener in listeners])
    await common.close_sockets([c.ws for c in callers] + [lis.ws for lis in listeners])
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
        **sides,
    }


def result(plan: Plan, callers: list[VoiceCaller], listeners: list[Listener], measured: dict,
           counts: dict[str, dict]) -> dict:
    seconds, target_cpu = measured["seconds"], measured["cpu_s"]["target"]
    up, down, sent, received = common.totals(
        callers, "window_sent", "window_received", "sent_bytes", "received_bytes").values()
    mb = (up + down) / 1e6
    at_sim = [counts.get(c.session_id, {}) for c in callers]
    sim_in, sim_out = (sum(n.get(f"audio_{k}_bytes", 0) for n in at_sim) for k in ("in", "out"))
    up_latency = [v for n in counts.values() for v in n["append_latency_ns"]]
    tracked = next((c for c in callers if c.tracked), None)
    return {
        **measured,
        **common.totals(callers, "responses", "skipped_turns"),
        "sessions": len(callers),
        "audio_mb_per_s": mb / seconds if seconds else None,
        "target_cpu_s_per_mb": target_cpu / mb if target_cpu is not None and mb else None,
        "latency_up_ms": summary(up_latency, unit=1e-6),
        "latency_down_ms": summary(plan.latencies_ns, unit=1e-6),
        "unstamped_deltas": plan.unstamped,
        "bytes": {
            "callers_sent": sent,
            "upstream_sent": sim_out,
            "lost_up": sent - sim_in,
            "lost_down": sim_out - received,
            "sessions_unknown_to_upstream": sum(c.session_id not in counts for c in callers),
        },
        "listen": listen_result(listeners, tracked),
        "errors": plan.errors, "error_samples": plan.error_samples,
        "closed_callers": sum(1 for c in callers if c.closed),
    }


HOW = """How it is measured. Each caller: `session.update` (audio in and out, PCM16 24 kHz,
`turn_detection: null`), then its microphone appends {frame} ms of audio every {frame} ms
(`input_audio_buffer.append`, on an absolute schedule; a late event loop sends the backlog at
once, as a microphone would), and every {turn:g} s, once its last reply is over,
`input_audio_buffer.commit` + `response.create`; the simulator answers with {reply} ms of audio
in 100 ms `response.output_audio.delta`s paced in real time. The callers' start times and turns
are spread evenly over a frame and a turn.

- *Audio MB* = decoded audio payload (not base64, not JSON) relayed in the window, both
  directions: appends the callers sent + audio deltas they received; 1 MB = 10⁶ bytes.
  *CPU-s/MB* = target-process user+system CPU seconds in the window ÷ that.
- *Up latency* (caller → upstream): each append's `event_id` is `event_<n>_<time_ns>` at send;
  the simulator records its receive `time.time_ns()` − that stamp (`GET {{sim}}/_stats`).
  *Down latency* (upstream → caller): the simulator stamps each delta's `event_id` with its send
  time; the caller subtracts it from its receive time. One host, one clock.
- *Lost bytes*: over each whole session (not just the window), audio bytes the callers appended
  − the bytes the simulator decoded from appends, and bytes the simulator sent in audio deltas −
  bytes the callers received (after the microphones stop, the last replies end and the
  simulator's count stops changing, ≤ 10 s).
- *Listen-in*: {listeners} operators (a user with `oc_sessions.listen_session`, logged in with
  Django's test client in the bench database; its session cookie and an `Origin` of the
  relay's host) on the first caller's session, with `OC_RECORD_AUDIO=true` (every session is
  recorded). Exact correlation: the simulator (`--audio-stamp`) writes each chunk's send
  `time.time_ns()` into the first 8 bytes of its PCM, and the callers write their send time into
  the first 8 bytes of each microphone frame; a listener frame (byte 0 the side, then PCM16)
  carries its own send time, so latency = listener receive − the stamp in the audio, for
  stamps inside the window. *Missing* = frames the listened caller sent (caller side) or
  received (agent side) in the window whose stamp some listener never got, summed over
  listeners.
- *Simulator, target and load generator share the same {cores} cores*: the *machine CPU*
  column says how busy they were; latency includes queueing in every process.
"""


def ok(run: dict | None) -> bool:
    return common.ok_run(run, CPU_KEY)


def p99(direction: str):
    return lambda run: run[f"latency_{direction}_ms"]["p99"]


def body(result: dict) -> list[str]:
    runs = result["runs"]
    by, cs, per = common.per_c(runs, LABELS, c_table, ratios)
    clean = ("no caller or listener saw an `error` event or a failed connect, and no target "
             "logged a warning, error or traceback.")
    return [
        f"- Upstream: `manage.py simulate_upstream --reply-audio-ms {result['reply_ms']} "
        "--audio-stamp`, one process for the whole part.\n"
        "- Per target and C: a fresh target process; C callers in one load-generator process "
        f"(`python -m bench.voice`); {result['warmup']:g} s warm-up, then a "
        f"{result['window']:g} s window.\n",
        HOW.format(frame=FRAME_MS, turn=result["turn_s"], reply=result["reply_ms"],
                   listeners=result["listeners"], cores=common.CORES),
        *per, listen_section(by, cs), targets(by, cs), "### Errors, log lines, disturbed runs\n",
        common.runs_problems(runs, LABELS, problems, clean),
    ]


def c_table(runs: list[dict]) -> str:
    def cells(r: dict) -> list:
        cpu_s, b = r["cpu_s"], r["bytes"]
        up, down = r["latency_up_ms"], r["latency_down_ms"]
        return [
            r["sessions"], fmt(r["audio_mb_per_s"], 2), fmt(r[CPU_KEY], 3),
            fmt(cpu_s["target"] and 100 * cpu_s["target"] / r["seconds"], 0),
            f"{fmt(up['p50'])} / {fmt(up['p99'])}", f"{fmt(down['p50'])} / {fmt(down['p99'])}",
            f"{b['lost_up']:,} / {b['lost_down']:,}", r["responses"], r["errors"],
            f"{fmt(cpu_s['simulator'])} / {fmt(cpu_s['load'])} / {fmt(r['other_cpu_s'])}",
            fmt(r["machine_cpu_percent"], 0),
        ]

    columns = ["target", "sessions", "audio MB/s", "CPU-s / MB", "target CPU %",
               "up p50 / p99 ms", "down p50 / p99 ms", "lost up / down B", "replies",
               "errors", "sim / load / other CPU-s", "machine CPU %"]
    return common.runs_table(runs, LABELS, columns, cells)


def ratios(by: dict, c: int) -> str:
    return common.ratios_text(by, c, CPU_KEY, [
        ("relay", "channels", "relay / Channels floor CPU per MB = **{:.2f}×**", None),
        ("relay", "websockets", "relay / websockets floor = {:.2f}×", None),
        ("channels", "websockets", "Channels floor / websockets floor = {:.2f}×", None),
        *(("relay", "channels", f"relay / Channels floor p99 {d} = {{:.2f}}×", p99(d))
          for d in ("up", "down")),
    ])


def listen_section(by: dict, cs: list[int]) -> str:
    out = ["### Listening and recording\n"]
    for c in cs:
        listen, relay = by.get(("listen", c)), by.get(("relay", c))
        if not ok(listen) or not listen.get("listen"):
            continue
        lis = listen["listen"]
        rows = []
        for side, what in (("agent", "agent (upstream delta sent → listener)"),
                           ("caller", "caller (append sent → listener)")):
            s = lis[side]
            rows.append([what, s["n"], fmt(s["p50"]), fmt(s["p95"]), fmt(s["p99"]),
                         fmt(s["max"]), f"{s['missing_frames']:,} of "
                         f"{s['expected_frames'] * lis['listeners']:,}"])
        r = common.run_ratio(listen, relay, CPU_KEY)
        cpu_text = (f"relay CPU per MB with {lis['listeners']} listeners and recording "
                    f"{listen[CPU_KEY]:.3f} vs {relay[CPU_KEY]:.3f} CPU-s/MB without = "
                    f"**{r:.2f}×**" if r is not None else "no run without listeners to compare")
        out += [
            f"C = {c}: {cpu_text}; {lis['frames']:,} listener frames "
            f"({lis['unstamped_frames']} without a stamp).\n",
            table(["listen-in latency, side", "frames", "p50 ms", "p95 ms", "p99 ms", "max ms",
                   "missing frames"], rows),
        ]
    return "\n".join(out) if len(out) > 1 else out[0] + "Not run.\n"


def targets(by: dict, cs: list[int]) -> str:
    rows = []
    for c in cs:
        relay, chan, listen = by.get(("relay", c)), by.get(("channels", c)), by.get(("listen", c))
        if (r := common.run_ratio(relay, chan, CPU_KEY)) is not None:
            what = f"relay CPU per MB of audio ≤ {CPU_RATIO_TARGET}× Channels floor"
            rows.append([what, c,
                         f"{r:.2f}× ({relay[CPU_KEY]:.3f} vs {chan[CPU_KEY]:.3f} CPU-s/MB)",
                         at_most(r, CPU_RATIO_TARGET)])
        if ok(relay):
            b = relay["bytes"]
            lost = b["lost_up"] != 0 or b["lost_down"] != 0 or b["sessions_unknown_to_upstream"]
            rows.append(["relay: 0 bytes lost either way", c,
                         f"{b['lost_up']:,} B up of {b['callers_sent']:,}, {b['lost_down']:,} B "
                         f"down of {b['upstream_sent']:,}", at_most(lost, 0)])
        for direction in ("up", "down"):
            if (r := common.run_ratio(relay, chan, CPU_KEY, p99(direction))) is not None:
                what = f"relay audio frame p99 ({direction}) ≤ {P99_RATIO_TARGET}× Channels"
                rows.append([f"{what} floor", c, f"{r:.2f}× ({p99(direction)(relay):.1f} vs "
                             f"{p99(direction)(chan):.1f} ms)", at_most(r, P99_RATIO_TARGET)])
        if (r := common.run_ratio(listen, relay, CPU_KEY)) is not None:
            rows.append([f"relay CPU, {LISTENERS} listening + recording ≤ {LISTEN_CPU_TARGET}× "
                         "without (per MB)", c, f"{r:.2f}×", at_most(r, LISTEN_CPU_TARGET)])
        if ok(listen) and listen.get("listen") and listen["listen"]["agent"]["p95"] is not None:
            p95 = listen["listen"]["agent"]["p95"]
            rows.append([f"listen-in latency p95 ≤ {LISTEN_P95_TARGET_MS:g} ms (upstream frame "
                         "sent → listener)", c, f"{p95:.1f} ms",
                         at_most(p95, LISTEN_P95_TARGET_MS)])
    return common.targets_table(rows, "### Targets", ("C", "measured"), left=1)


def problems(label: str, r: dict) -> list[str]:
    lines = []
    if r["errors"] or r["unstamped_deltas"] or r["closed_callers"]:
        lines.append(f"- {label}: {r['errors']} error(s), {r['closed_callers']} caller(s) "
                     f"closed, {r['unstamped_deltas']} unstamped deltas; e.g. "
                     + common.examples(r["error_samples"]))
    if r["skipped_turns"]:
        lines.append(f"- {label}: {r['skipped_turns']} turn(s) skipped: the previous reply "
                     f"had not ended {TURN_S:g} s later")
    if r["bytes"]["sessions_unknown_to_upstream"]:
        lines.append(f"- {label}: {r['bytes']['sessions_unknown_to_upstream']} session(s) "
                     "the simulator no longer knew (their bytes count as lost)")
    return lines


if __name__ == "__main__":
    common.client_main(main)
