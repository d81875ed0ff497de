"""What the simulator tells a benchmark about audio: fixed-length replies, send times stamped in
the output audio, the bytes it took in and sent, append latencies, and `GET …/_stats`."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect

from apps.simulator.server import Simulator, SimulatorConfig
from apps.simulator.wire import new_event_id

REPLY_MS = 300  # three chunks of 100 ms
SESSION = {
    "type": "realtime",
    "output_modalities": ["audio"],
    "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None},
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"},
    },
}


@pytest_asyncio.fixture
async def bench_sim():
    simulator = Simulator(
        SimulatorConfig(audio_pace=0, reply_audio_ms=REPLY_MS, audio_stamp=True, record_limit=0)
    )
    await simulator.start()
    yield simulator
    await simulator.aclose()


async def until(ws, kind: str) -> list[dict]:
    events = []
    while True:
        event = json.loads(await ws.recv())
        events.append(event)
        if event["type"] == kind:
            return events


@pytest.mark.asyncio
async def test_counts_stamps_and_stats_match_what_the_caller_sent_and_heard(bench_sim):
    async with connect(f"{bench_sim.url}/realtime?model=m", max_size=None) as ws:
        session_id = (await until(ws, "session.created"))[0]["session"]["id"]
        await ws.send(json.dumps({"type": "session.update", "session": SESSION}))
        await until(ws, "session.updated")
        mic = bytes(4800)  # 100 ms of silence
        before = time.time_ns()
        for stamped in (True, False):  # only the stamped append's latency is recorded
            event_id = new_event_id() if stamped else "evt_plain"
            append = {
                "type": "input_audio_buffer.append",
                "event_id": event_id,
                "audio": base64.b64encode(mic).decode(),
            }
            await ws.send(json.dumps(append))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        await ws.send(json.dumps({"type": "response.create"}))
        events = await until(ws, "response.done")
        after = time.time_ns()

    chunks = [
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    ]
    assert [len(c) for c in chunks] == [4800] * 3, "a fixed-length reply in 100 ms chunks"
    stamps = [int.from_bytes(c[:8], "little") for c in chunks]
    assert all(before <= s <= after for s in stamps), "each chunk starts with its send time"
    assert stamps == sorted(stamps)

    async with httpx.AsyncClient() as client:
        url = bench_sim.url.replace("ws://", "http://") + "/_stats"
        reply = await client.get(url, params=[("session", session_id), ("session", "sess_x")])
    assert reply.status_code == 200
    counts = reply.json()["sessions"]
    assert list(counts) == [session_id], "an unknown session is left out"
    assert counts[session_id]["audio_in_bytes"] == 2 * len(mic)
    assert counts[session_id]["audio_out_bytes"] == sum(len(c) for c in chunks)
    (latency,) = counts[session_id]["append_latency_ns"]
    assert 0 <= latency <= after - before
