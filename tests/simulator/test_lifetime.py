"""The simulator's session cap, and the conversation length every reply names."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from apps.simulator.lifetime import expiry_message, minutes_text
from apps.simulator.server import Simulator, SimulatorConfig
from tests.simulator.client import add_user_text, recv, recv_until, sdk_client

ECHO = re.compile(r"[(]conversation: ([0-9]+) items[)]")


def test_the_cap_is_printed_in_minutes_as_the_service_prints_it():
    assert expiry_message(3600) == "Your session hit the maximum duration of 60 minutes."
    assert expiry_message(900) == "Your session hit the maximum duration of 15 minutes."
    assert minutes_text(10) == "0.17"
    assert minutes_text(90) == "1.5"
    assert minutes_text(60) == "1"


async def _frames_until_closed(ws, timeout: float) -> list[dict]:
    frames = []
    async with asyncio.timeout(timeout):
        try:
            async for frame in ws:
                frames.append(json.loads(frame))
        except ConnectionClosed:
            pass
    return frames


@pytest.mark.asyncio
async def test_the_cap_ends_the_session_with_session_expired_and_close_1001():
    config = SimulatorConfig(max_session_seconds=0.6, deltas_per_response=400, delta_interval=0.01)
    async with Simulator(config) as sim:
        loop = asyncio.get_running_loop()
        async with ws_connect(sim.url + "/realtime?model=gpt-realtime") as ws:
            opened = loop.time()
            created = json.loads(await ws.recv())
            assert created["type"] == "session.created"
            # A long response is streaming when the cap comes: it is cut where it stands.
            await ws.send(json.dumps({"type": "response.create"}))
            frames = await _frames_until_closed(ws, timeout=5)
            closed_after = loop.time() - opened
            assert ws.close_code == 1001
            assert ws.close_reason == "Your session hit the maximum duration of 0.01 minutes."
    assert 0.5 <= closed_after < 2.0, "the cap counts from the session's creation"
    kinds = [f["type"] for f in frames]
    assert "response.output_text.delta" in kinds, "the response was streaming"
    assert "response.done" not in kinds, "a cut response gets no response.done"
    last = frames[-1]
    assert last["type"] == "error"
    assert last["error"] == {
        "type": "invalid_request_error",
        "code": "session_expired",
        "message": "Your session hit the maximum duration of 0.01 minutes.",
        "param": None,
        "event_id": None,
    }


@pytest.mark.asyncio
async def test_expires_at_is_the_cap_from_creation():
    sim = Simulator(SimulatorConfig(max_session_seconds=120))
    async with sim, sdk_client(sim).realtime.connect(model="gpt-realtime") as conn:
        created = await recv(conn)
        assert abs(created.session.expires_at - (time.time() + 120)) <= 2


@pytest.mark.asyncio
async def test_each_reply_names_the_conversation_length_when_it_started(sim, conn):
    await add_user_text(conn, "one")
    await conn.response.create()
    first = (await recv_until(conn, "response.done"))[-1].response
    assert first.output[0].content[0].text.endswith("Reply 1 to: one (conversation: 1 items)")
    await add_user_text(conn, "two")
    await conn.response.create()
    second = (await recv_until(conn, "response.done"))[-1].response
    # user, assistant, user: the reply's own item is not yet counted.
    assert ECHO.findall(second.output[0].content[0].text) == ["3"]
    # An out-of-band response names the conversation too, and adds nothing to it.
    await conn.response.create(response={"conversation": "none"})
    oob = (await recv_until(conn, "response.done"))[-1].response
    assert ECHO.findall(oob.output[0].content[0].text) == ["4"]
    await conn.response.create()
    third = (await recv_until(conn, "response.done"))[-1].response
    assert ECHO.findall(third.output[0].content[0].text) == ["4"]


def test_the_standalone_command_takes_the_cap():
    from django.core.management.base import CommandError

    from apps.simulator.management.commands.simulate_upstream import Command

    parser = Command().create_parser("manage.py", "simulate_upstream")
    assert parser.parse_args([]).max_session_seconds is None  # the setting's, else 3600
    assert parser.parse_args(["--max-session-seconds", "10"]).max_session_seconds == 10.0
    with pytest.raises(CommandError, match="--max-session-seconds must be positive"):
        Command().handle(**{**vars(parser.parse_args(["--max-session-seconds", "0"]))})


@pytest.mark.asyncio
async def test_the_embedded_simulator_takes_the_cap_from_the_setting(settings):
    from apps.sessions.upstream import _start_simulator

    settings.OC_SIM_MAX_SESSION_SECONDS = 42.0
    simulator = await _start_simulator()
    try:
        assert simulator.config.max_session_seconds == 42.0
    finally:
        await simulator.aclose()
