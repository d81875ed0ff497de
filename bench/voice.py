"""The voice part: full-duplex voice callers through the relay and through both floors in the
same run (CPU per MB of audio, bytes lost either way, audio frame latency both ways), then the
relay again with operators listening to one session and every session recorded.

One simulator process (`simulate_upstream --reply-audio-ms REPLY_MS --audio-stamp`, replies
paced in real time) feeds every target. For each C and target a fresh target process is
started, `bench/voice_load.py` runs C callers (and the listeners) in a process of its own,
and the target is stopped. The listening run's relay has `OC_RECORD_AUDIO=true`; recordings
go to the run's private directory (`bench/voice_settings.py`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bench.common import (
    CORES,
    HOST,
    PY,
    TARGETS,
    Bench,
    examples,
    fmt,
    say,
    section,
    table,
    target_problems,
    targets_table,
    verdict,
)

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

LABELS = {**TARGETS, "listen": f"relay, {LISTENERS} listening, recording on"}
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


@dataclass
class Setup:
    env: dict[str, str]  # the targets' environment: the simulator, the migrated database
    token: str  # the relay's callers'
    cookie: str  # the listeners' session cookie
    sim_pid: int
    sim_url: str
    warmup: float
    window: float


def concurrency(args) -> list[int]:
    return CONCURRENCY if args.concurrency == RUN_DEFAULT_C else args.concurrency


async def run(bench: Bench, args) -> dict:
    cs = concurrency(args)
    warmup, window = (max(args.warmup, 2.0), max(args.window, 4.0)) if args.quick else (
        args.warmup, args.window)
    sim, url = await start_simulator(bench)
    try:
        env = bench.env(
            OC_UPSTREAM_URL=url, BENCH_UPSTREAM_URL=url, OC_RECORD_AUDIO="false",
            DJANGO_SETTINGS_MODULE="bench.voice_settings",
            BENCH_MEDIA_ROOT=str(bench.workdir / "media"),
        )
        token = await bench.migrate_with_token("bench-voice", env)
        out = await bench.run_command([PY, "manage.py", "shell", "-c", LOGIN], env)
        cookie = out.strip().splitlines()[-1]
        setup = Setup(env, token, cookie, sim.pid, url, warmup, window)
        runs = []
        for c in cs:
            for key in ("websockets", "channels", "relay", "listen"):
                if key == "listen" and c != cs[0]:
                    continue
                say(f"{LABELS[key]}, C={c}")
                runs.append({**await measure(bench, args, setup, key, c),
                             "target": key, "concurrency": c})
                await asyncio.sleep(1.0)
    finally:
        await bench.stop(sim)
    return {"runs": runs, "warmup": warmup, "window": window, "turn_s": TURN_S,
            "reply_ms": REPLY_MS, "listeners": LISTENERS}


async def start_simulator(bench: Bench):
    handle, port = await bench.listening("voice-simulator", lambda port: [
        PY, "manage.py", "simulate_upstream", "--host", HOST, "--port", str(port),
        "--audio-pace", "1", "--reply-audio-ms", str(REPLY_MS), "--audio-stamp",
        "--speech", "tone",
    ], bench.env())
    url = f"ws://{HOST}:{port}/v1"
    say(f"voice simulator at {url} (pid {handle.pid})")
    return handle, url


async def measure(bench: Bench, args, setup: Setup, key: str, c: int) -> dict:
    """One target at one C, measured again once (not with --quick) when disturbed."""
    result = await bench.measured_twice(lambda: with_target(bench, setup, key, c),
                                        retry=not args.quick)
    if "failure" in result:
        return result
    b, up, down = result["bytes"], result["latency_up_ms"], result["latency_down_ms"]
    say(f"    {fmt(result['audio_mb_per_s'], 2)} MB/s of audio, "
        f"{fmt(result[CPU_KEY], 3)} CPU-s/MB, p99 up {fmt(up['p99'], 1)} ms / down "
        f"{fmt(down['p99'], 1)} ms, lost "
        f"{b['lost_up']}/{b['lost_down']} B, {result['errors']} errors")
    if listen := result.get("listen"):
        say(f"    listeners: agent p95 {fmt(listen['agent']['p95'], 1)} ms, caller p95 "
            f"{fmt(listen['caller']['p95'], 1)} ms, missing "
            f"{listen['agent']['missing_frames']}/{listen['caller']['missing_frames']} frames")
    return result


async def with_target(bench: Bench, setup: Setup, key: str, c: int) -> dict:
    env = dict(setup.env, OC_RECORD_AUDIO="true") if key == "listen" else setup.env
    config = {
        "token": setup.token if key in ("relay", "listen") else "", "concurrency": c,
        "warmup": setup.warmup, "window": setup.window, "turn": TURN_S,
        "watch": {"simulator": setup.sim_pid}, "sim_stats": setup.sim_url + "/_stats",
        "listeners": LISTENERS if key == "listen" else 0, "cookie": setup.cookie,
    }
    budget = 150 + setup.warmup + setup.window + c / 5
    return await bench.against_target(key, f"voice-{key}-c{c}", env, "voice_load", config, budget)


# ---------------------------------------------------------------------------- report

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
    return bool(run) and "failure" not in run and bool(run.get(CPU_KEY))


def ratio(a: dict | None, b: dict | None, get) -> float | None:
    if not (ok(a) and ok(b)):
        return None
    x, y = get(a), get(b)
    return x / y if x is not None and y else None


def cpu(run: dict) -> float | None:
    return run[CPU_KEY]


def p99(direction: str):
    return lambda run: run[f"latency_{direction}_ms"]["p99"]


def render(result: dict | None) -> str:
    return section("Full-duplex voice", result, _body)


def _body(result: dict) -> list[str]:
    runs = result["runs"]
    by = {(r["target"], r["concurrency"]): r for r in runs}
    cs = sorted({r["concurrency"] for r in runs})
    out = [
        f"- Upstream: `manage.py simulate_upstream --reply-audio-ms {result['reply_ms']} "
        "--audio-stamp`, one process for the whole part.\n"
        "- Per target and C: a fresh target process; C callers in one load-generator process "
        f"(`bench/voice_load.py`); {result['warmup']:g} s warm-up, then a {result['window']:g} s "
        "window.\n",
        HOW.format(frame=40, turn=result["turn_s"], reply=result["reply_ms"],
                   listeners=result["listeners"], cores=CORES),
    ]
    for c in cs:
        rows = [by[k, c] for k in LABELS if (k, c) in by]
        out += [f"### C = {c}\n", c_table(rows), ratios(by, c)]
    out += [listen_section(by, cs), targets(by, cs), "### Errors, log lines, disturbed runs\n",
            problems(runs)]
    return out


def c_table(runs: list[dict]) -> str:
    rows = []
    for r in runs:
        label = LABELS[r["target"]]
        if "failure" in r:
            rows.append([label, f"failed: {r['failure'].splitlines()[0][:80]}", *[""] * 11])
            continue
        cpu_s, b = r["cpu_seconds"], r["bytes"]
        up, down = r["latency_up_ms"], r["latency_down_ms"]
        rows.append([
            label, r["sessions"], fmt(r["audio_mb_per_s"], 2), fmt(r[CPU_KEY], 3),
            fmt(cpu_s["target"] and 100 * cpu_s["target"] / r["window_seconds"], 0),
            f"{fmt(up['p50'])} / {fmt(up['p99'])}", f"{fmt(down['p50'])} / {fmt(down['p99'])}",
            f"{b['lost_up']:,} / {b['lost_down']:,}", r["responses"], r["errors"],
            f"{fmt(cpu_s['simulator'])} / {fmt(cpu_s['load'])} / {fmt(r['other_cpu_s'])}",
            fmt(r["machine_cpu_percent"], 0),
        ])
    columns = ["target", "sessions", "audio MB/s", "CPU-s / MB", "target CPU %",
               "up p50 / p99 ms", "down p50 / p99 ms", "lost up / down B", "replies",
               "errors", "sim / load / other CPU-s", "machine CPU %"]
    return table(columns, rows)


def ratios(by: dict, c: int) -> str:
    relay, chan, ws = (by.get((k, c)) for k in ("relay", "channels", "websockets"))
    parts = []
    if (r := ratio(relay, chan, cpu)) is not None:
        parts.append(f"relay / Channels floor CPU per MB = **{r:.2f}×**")
    if (r := ratio(relay, ws, cpu)) is not None:
        parts.append(f"relay / websockets floor = {r:.2f}×")
    if (r := ratio(chan, ws, cpu)) is not None:
        parts.append(f"Channels floor / websockets floor = {r:.2f}×")
    for direction in ("up", "down"):
        if (r := ratio(relay, chan, p99(direction))) is not None:
            parts.append(f"relay / Channels floor p99 {direction} = {r:.2f}×")
    return "; ".join(parts) + ".\n" if parts else ""


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
        r = ratio(listen, relay, cpu)
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
        if (r := ratio(relay, chan, cpu)) is not None:
            what = f"relay CPU per MB of audio ≤ {CPU_RATIO_TARGET}× Channels floor"
            rows.append([what, c,
                         f"{r:.2f}× ({relay[CPU_KEY]:.3f} vs {chan[CPU_KEY]:.3f} CPU-s/MB)",
                         verdict(r <= CPU_RATIO_TARGET)])
        if ok(relay):
            b = relay["bytes"]
            lost = b["lost_up"] != 0 or b["lost_down"] != 0 or b["sessions_unknown_to_upstream"]
            rows.append(["relay: 0 bytes lost either way", c,
                         f"{b['lost_up']:,} B up of {b['callers_sent']:,}, {b['lost_down']:,} B "
                         f"down of {b['upstream_sent']:,}", verdict(not lost)])
        for direction in ("up", "down"):
            if (r := ratio(relay, chan, p99(direction))) is not None:
                what = f"relay audio frame p99 ({direction}) ≤ {P99_RATIO_TARGET}× Channels"
                rows.append([f"{what} floor", c, f"{r:.2f}× ({p99(direction)(relay):.1f} vs "
                             f"{p99(direction)(chan):.1f} ms)", verdict(r <= P99_RATIO_TARGET)])
        if (r := ratio(listen, relay, cpu)) is not None:
            rows.append([f"relay CPU, {LISTENERS} listening + recording ≤ {LISTEN_CPU_TARGET}× "
                         "without (per MB)", c, f"{r:.2f}×", verdict(r <= LISTEN_CPU_TARGET)])
        if ok(listen) and listen.get("listen") and listen["listen"]["agent"]["p95"] is not None:
            p95 = listen["listen"]["agent"]["p95"]
            rows.append([f"listen-in latency p95 ≤ {LISTEN_P95_TARGET_MS:g} ms (upstream frame "
                         "sent → listener)", c, f"{p95:.1f} ms",
                         verdict(p95 <= LISTEN_P95_TARGET_MS)])
    return targets_table(rows, "### Targets", ("C", "measured"), left=1)


def problems(runs: list[dict]) -> str:
    lines = []
    for r in runs:
        label = f"{LABELS[r['target']]}, C={r['concurrency']}"
        if "failure" in r:
            lines.append(f"- {label}: run failed: `{' '.join(r['failure'].split())[-600:]}`")
            continue
        if r["errors"] or r["unstamped_deltas"] or r["closed_callers"]:
            lines.append(f"- {label}: {r['errors']} error(s), {r['closed_callers']} caller(s) "
                         f"closed, {r['unstamped_deltas']} unstamped deltas; e.g. "
                         + examples(r["error_samples"]))
        if r["skipped_turns"]:
            lines.append(f"- {label}: {r['skipped_turns']} turn(s) skipped: the previous reply "
                         f"had not ended {TURN_S:g} s later")
        if r["bytes"]["sessions_unknown_to_upstream"]:
            lines.append(f"- {label}: {r['bytes']['sessions_unknown_to_upstream']} session(s) "
                         "the simulator no longer knew (their bytes count as lost)")
        lines += target_problems(label, r, f"attempt {r['attempt']}")
    return "\n".join(lines) + "\n" if lines else (
        "None: no caller or listener saw an `error` event or a failed connect, and no target "
        "logged a warning, error or traceback.\n"
    )
