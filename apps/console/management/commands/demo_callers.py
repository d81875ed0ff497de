"""demo_callers: simulated callers through the relay, so the console has something to show.

Each caller opens a Realtime session on the relay (like any client would), gives its agent a
persona, and says a line from a support conversation every few seconds, waiting for the
agent's answer each time. Callers reconnect when their session ends, so a dashboard stays
alive for as long as the command runs.

Some callers are voice callers (`--voice`, half of them by default): their sessions answer in
audio, with server VAD and input transcription, and they speak their lines — synthesised with
the simulator's voice (espeak-ng, else a tone a word; `apps.simulator.speech`) and sent as
`input_audio_buffer.append`s of 40 ms in real time, followed by a second of silence, so VAD
hears the turn end. On the embedded simulator a caller's line is transcribed as the honest
`[speech, N s — the simulator does not transcribe]`; this command prints what each caller said.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import signal

import websockets
from django.core.management.base import BaseCommand, CommandError

from apps.sessions.models import ApiToken
from apps.sessions.tokens import api_token_create, api_token_free_name, api_token_revoke
from apps.simulator.speech import synthesise

PERSONA = "You are Ava, the support agent of Acme Outfitters. Be brief and kind."
LINES = [
    "Hi, my order hasn't arrived yet.",
    "It was supposed to come last Tuesday.",
    "The order number is A-1042.",
    "Can I get my money back?",
    "Is there a discount for the trouble?",
    "What are your opening hours?",
    "Thanks, that helps.",
]
# Voice callers' sessions: spoken answers, server VAD, transcripts of what the caller says.
AGENT_VOICES = ["marin", "coral", "cedar"]
CALLER_VOICE = "echo"  # the microphone's voice, unlike any agent's
MIC_CHUNK_MS = 40
PCM_BYTES_PER_MS = 48  # PCM16, 24 kHz, mono


def voice_session(n: int) -> dict:
    pcm = {"type": "audio/pcm", "rate": 24000}
    return {
        "type": "realtime",
        "instructions": PERSONA,
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": pcm,
                "transcription": {"model": "gpt-4o-mini-transcribe"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500,
                                   "create_response": True, "interrupt_response": True},
            },
            "output": {"format": pcm, "voice": AGENT_VOICES[n % len(AGENT_VOICES)]},
        },
    }


class Command(BaseCommand):
    help = "Run N simulated Realtime callers through the relay (for demos: `make run` starts three)."

    def add_arguments(self, parser):
        parser.add_argument("--count", type=int, default=3, help="how many callers (default 3)")
        parser.add_argument(
            "--voice", type=int, default=None,
            help="how many of them speak (default: half, rounded up; 0: text only)",
        )
        parser.add_argument("--url", default="ws://127.0.0.1:8000/v1", help="the relay's base URL")
        parser.add_argument("--interval", type=float, default=6.0, help="seconds between a caller's turns")
        parser.add_argument("--turns", type=int, default=0, help="turns per session (0: until stopped)")
        parser.add_argument("--sessions", type=int, default=0, help="sessions per caller (0: until stopped)")
        parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the relay to come up")
        parser.add_argument("--token", default="", help="an API token (default: a new one, scope realtime:connect)")

    def handle(self, *args, count, voice, url, interval, turns, sessions, wait, token, **options):
        if count < 0 or interval < 0 or turns < 0 or sessions < 0 or (voice or 0) < 0:
            raise CommandError(
                "--count, --voice, --interval, --turns and --sessions must not be negative"
            )
        self.voice_callers = (count + 1) // 2 if voice is None else min(voice, count)
        if count == 0:
            return
        made = None
        if not token:
            # A name of its own: the last start's token, revoked, still names its requests.
            made, token = api_token_create(
                name=api_token_free_name("demo-callers"), scopes=[ApiToken.Scope.REALTIME_CONNECT]
            )
        try:
            asyncio.run(self._run(count, url.rstrip("/"), interval, turns, sessions, wait, token))
        finally:
            if made is not None:  # nobody else holds it: not one more valid token every start
                api_token_revoke(token=made)

    async def _run(self, count, url, interval, turns, sessions, wait, token):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        callers = [
            asyncio.create_task(self._caller(n, url, interval, turns, sessions, wait, token, stop))
            for n in range(1, count + 1)
        ]
        stopper = asyncio.create_task(stop.wait())
        everyone = asyncio.gather(*callers)
        await asyncio.wait([stopper, everyone], return_when=asyncio.FIRST_COMPLETED)
        everyone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await everyone
        stopper.cancel()

    async def _caller(self, n, url, interval, turns, sessions, wait, token, stop):
        rng = random.Random(n)
        opened, delay = 0, 1.0
        deadline = loop_time() + wait
        while not stop.is_set() and (not sessions or opened < sessions):
            try:
                async with websockets.connect(
                    f"{url}/realtime?model=gpt-realtime",
                    additional_headers={"Authorization": f"Bearer {token}"},
                    open_timeout=10,
                ) as socket:
                    opened, delay = opened + 1, 1.0
                    converse = self._converse_aloud if n <= self.voice_callers else self._converse
                    await converse(n, socket, rng, interval, turns, stop)
            except (OSError, websockets.WebSocketException) as exc:
                if opened == 0 and loop_time() > deadline:
                    self.stderr.write(f"caller {n}: the relay at {url} is not answering ({exc}); giving up")
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _converse(self, n, socket, rng, interval, turns, stop):
        created = json.loads(await socket.recv())
        session_id = created.get("session", {}).get("id", "?")
        self.stdout.write(f"caller {n}: session {session_id}")
        await socket.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": PERSONA}}))
        said = 0
        while not stop.is_set() and (not turns or said < turns):
            line = LINES[(said + n) % len(LINES)]
            await socket.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": line}]}}))
            await socket.send(json.dumps({"type": "response.create"}))
            said += 1
            async with asyncio.timeout(60):
                while json.loads(await socket.recv()).get("type") != "response.done":
                    pass
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval * rng.uniform(0.6, 1.4)):
                    # Keep reading while waiting: operators' nudges produce responses too.
                    while True:
                        await socket.recv()
        self.stdout.write(f"caller {n}: session {session_id} done after {said} turns")

    async def _converse_aloud(self, n, socket, rng, interval, turns, stop):
        """A voice caller: speaks each line, lets server VAD end the turn, hears the answer."""
        created = json.loads(await socket.recv())
        session_id = created.get("session", {}).get("id", "?")
        self.stdout.write(f"caller {n} (voice): session {session_id}")
        await socket.send(json.dumps({"type": "session.update", "session": voice_session(n)}))
        answered, quiet = asyncio.Event(), asyncio.Event()
        reader = asyncio.create_task(_read_answers(socket, answered, quiet))
        said = 0
        try:
            while not stop.is_set() and (not turns or said < turns):
                line = LINES[(said + n) % len(LINES)]
                speech = await synthesise(line, voice=CALLER_VOICE, rate=24000)
                # A caller lets the agent finish (a nudged answer too) before speaking: talking
                # over it would cut it short, and that answer's end would pass for the next one.
                if not await _until(quiet, reader):
                    return
                self.stdout.write(f"caller {n} says: {line}")
                answered.clear()
                await _speak(socket, speech.pcm + bytes(PCM_BYTES_PER_MS * 1000), reader)
                said += 1
                if not await _until(answered, reader):
                    return
                await asyncio.sleep(interval * rng.uniform(0.6, 1.4))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.WebSocketException):
                await reader
        self.stdout.write(f"caller {n}: session {session_id} done after {said} turns")


async def _speak(socket, pcm: bytes, reader: asyncio.Task) -> None:
    """The microphone: `pcm` as 40 ms appends, in real time."""
    step = PCM_BYTES_PER_MS * MIC_CHUNK_MS
    start = loop_time()
    for index, offset in enumerate(range(0, len(pcm), step)):
        if reader.done():
            return
        chunk = base64.b64encode(pcm[offset : offset + step]).decode("ascii")
        await socket.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        await asyncio.sleep(max(0.0, start + (index + 1) * MIC_CHUNK_MS / 1000 - loop_time()))


async def _read_answers(socket, answered: asyncio.Event, quiet: asyncio.Event) -> None:
    """Reads everything the session sends (spoken answers, nudged ones too); marks each
    `response.done`, and keeps `quiet` set while no response is in progress."""
    talking = set()
    quiet.set()
    async for message in socket:
        event = json.loads(message)
        if event.get("type") == "response.created":
            talking.add(event["response"]["id"])
            quiet.clear()
        elif event.get("type") == "response.done":
            talking.discard(event["response"]["id"])
            answered.set()
            if not talking:
                quiet.set()


async def _until(event: asyncio.Event, reader: asyncio.Task, timeout: float = 90) -> bool:
    """Waits for `event` (at most `timeout` seconds); False when the connection ended first,
    raising its error for `_caller` to handle."""
    waiter = asyncio.create_task(event.wait())
    await asyncio.wait([waiter, reader], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if reader.done():
        reader.result()
        return False
    return True


def loop_time() -> float:
    return asyncio.get_running_loop().time()
