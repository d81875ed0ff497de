"""The simulator as a server: handshakes, connections, event ids, its command, the Agents SDK as client."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from apps.simulator.server import Simulator, SimulatorConfig, event_sent_time_ns, new_event_id
from tests.simulator.client import (
    recv,
    sdk_client,
)

# --- auth, server-side responses, connections --------------------------------------------------


@pytest.mark.asyncio
async def test_required_api_key():
    simulator = Simulator(SimulatorConfig(required_api_key="sk-right"))
    await simulator.start()
    try:
        with pytest.raises(InvalidStatus) as refused:
            async with sdk_client(simulator, "sk-wrong").realtime.connect(model="gpt-realtime"):
                pass
        assert refused.value.response.status_code == 401
        assert json.loads(refused.value.response.body)["error"]["code"] == "invalid_api_key"
        with pytest.raises(InvalidStatus):
            async with ws_connect(simulator.url + "/realtime?model=gpt-realtime"):
                pass
        assert simulator.connections_opened == 0
        assert simulator.handshakes_refused == 2

        async with sdk_client(simulator, "sk-right").realtime.connect(model="gpt-realtime") as c:
            assert (await recv(c)).type == "session.created"
        # Browsers pass the key as a subprotocol.
        async with ws_connect(
            simulator.url + "/realtime?model=gpt-realtime",
            subprotocols=["realtime", "openai-insecure-api-key.sk-right"],
        ) as ws:
            assert ws.subprotocol == "realtime"
            assert json.loads(await ws.recv())["type"] == "session.created"
        assert simulator.connections_opened == 2
    finally:
        await simulator.aclose()


@pytest.mark.asyncio
async def test_only_realtime_paths_are_served(sim):
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(sim.url + "/chat"):
            pass
    assert refused.value.response.status_code == 404
    async with ws_connect(sim.url.removesuffix("/v1") + "/realtime") as ws:
        created = json.loads(await ws.recv())
    assert created["session"]["model"] == "gpt-realtime"


@pytest.mark.asyncio
async def test_connection_counters_and_server_side_close(sim):
    client = sdk_client(sim)
    async with client.realtime.connect(model="gpt-realtime") as first:
        await recv(first)
        async with client.realtime.connect(model="gpt-realtime") as second:
            await recv(second)
            assert (sim.connections_opened, sim.connections_active) == (2, 2)
            assert len(sim.sessions) == 2
            first_id = await sim.wait_for_session()
            second_id = await sim.wait_for_session()
            assert set(sim.sessions) == {first_id, second_id}
            await sim.close_session(second_id, 1011, "upstream went away")
            with pytest.raises(ConnectionClosed) as closed:
                await recv(second)
            assert closed.value.rcvd.code == 1011
            assert closed.value.rcvd.reason == "upstream went away"
    for _ in range(200):  # the server notices the closes a moment later
        if not sim.connections_active:
            break
        await asyncio.sleep(0.01)
    assert (sim.connections_opened, sim.connections_active, sim.sessions) == (2, 0, {})
    # The logs of ended sessions stay readable.
    assert sim.sent(second_id)[0][1]["type"] == "session.created"


@pytest.mark.asyncio
async def test_aclose_closes_every_connection():
    simulator = Simulator(SimulatorConfig(deltas_per_response=100, delta_interval=0.05))
    await simulator.start()
    async with sdk_client(simulator).realtime.connect(model="gpt-realtime") as conn:
        await recv(conn)
        await conn.response.create()
        await recv(conn)
        await simulator.aclose()
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                while True:
                    await conn.recv()
    assert simulator.connections_active == 0


# --- the Agents SDK as client ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_agents_sdk_realtime_session_text_turn(sim):
    from agents import realtime  # a test dependency (requirements-test.txt): never skipped
    agent = realtime.RealtimeAgent(name="ada", instructions="You are Ada.")
    runner = realtime.RealtimeRunner(
        agent, config={"model_settings": {"output_modalities": ["text"]}}
    )
    session = await runner.run(
        model_config={"url": sim.url + "/realtime?model=gpt-realtime", "api_key": "sk-test"}
    )
    errors = []
    history: list[Any] = []
    async with session:
        await session.send_message("hello there")
        async with asyncio.timeout(10):
            async for event in session:
                if event.type == "error":
                    errors.append(event.error)
                elif event.type == "history_updated":
                    history = list(event.history)
                elif event.type == "agent_end":
                    break
    assert errors == []
    assert [(item.role, item.status) for item in history] == [
        ("user", "completed"),
        ("assistant", "completed"),
    ]
    assert history[1].content[0].text == (
        "[instructions: You are Ada.] Reply 1 to: hello there (conversation: 1 items)"
    )


# --- helpers and the management command ------------------------------------------------------


def test_event_ids_carry_their_send_time():
    before = time.time_ns()
    event_id = new_event_id()
    assert before <= event_sent_time_ns(event_id) <= time.time_ns()
    assert event_sent_time_ns("event_CdulTJIOI2YjBMxYUiRzZ") is None
    assert event_sent_time_ns(None) is None


def test_management_command_arguments():
    from apps.simulator.management.commands.simulate_upstream import Command

    parser = Command().create_parser("manage.py", "simulate_upstream")
    options = parser.parse_args([])
    assert (options.host, options.port) == ("127.0.0.1", 9100)
    options = parser.parse_args(
        ["--host", "0.0.0.0", "--port", "9200", "--deltas", "3", "--interval", "0.1"]
        + ["--api-key", "sk-x"]
    )
    assert (options.host, options.port, options.deltas) == ("0.0.0.0", 9200, 3)
    assert (options.interval, options.api_key) == (0.1, "sk-x")
    assert (options.audio_pace, options.speech) == (None, "auto")
    options = parser.parse_args(["--audio-pace", "0", "--speech", "tone"])
    assert (options.audio_pace, options.speech) == (0.0, "tone")
    shown = " ".join(parser.format_help().split())
    assert "OC_SIM_INTERVAL, else 0.05)" in shown, "the help names the default the settings give"


def test_simulate_sip_call_help_names_every_source_of_the_secret():
    from apps.simulator.management.commands.simulate_sip_call import Command

    shown = " ".join(Command().create_parser("manage.py", "simulate_sip_call").format_help().split())
    assert "OPENAI_WEBHOOK_SECRET, else var/webhook-secret" in shown, shown
