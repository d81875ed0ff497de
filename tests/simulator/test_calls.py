"""WebRTC and SIP calls on the simulator (`apps.simulator.calls`), driven as the console will
drive them: an aiortc caller, the `openai` SDK's calls REST and sideband, a webhook receiver
that verifies with the SDK's `webhooks.unwrap`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
from django.core.management import CommandError, call_command
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from apps.simulator import discovery, webrtc
from apps.simulator import voice as voice_module
from apps.simulator.server import Simulator, SimulatorConfig
from tests.support.servers import SimulatorThread
from tests.support.webrtc import (
    CallClient,
    ToneTrack,
    drain_non_loopback,
    http_base,
    non_loopback_candidates,
)

KEY = "sk-test"
SECRET = "whsec_" + base64.b64encode(b"a webhook secret of 32 bytes....").decode()
TEXT = {"type": "realtime", "output_modalities": ["text"]}


def fast_config(**changes) -> SimulatorConfig:
    return SimulatorConfig(
        deltas_per_response=3, delta_interval=0.002, audio_pace=0, speech_engine="tone", **changes
    )


@pytest.fixture
async def sim():
    simulator = Simulator(fast_config())
    await simulator.start()
    yield simulator
    await simulator.aclose()


def rest(sim: Simulator, api_key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=http_base(sim.url), api_key=api_key, max_retries=0)


async def post(sim: Simulator, path: str, body: bytes = b"", headers: dict | None = None):
    """A raw POST (for the refusals the SDK would not send): (status, JSON body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    head = f"POST /v1{path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    for name, value in (headers if headers is not None else {"Authorization": f"Bearer {KEY}"}).items():
        head += f"{name}: {value}\r\n"
    writer.write(head.encode() + b"\r\n" + body)
    async with asyncio.timeout(5):
        raw = await reader.read()
    writer.close()
    status_line, _, rest_ = raw.partition(b"\r\n")
    payload = rest_.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(payload) if payload else None


async def sideband(sim: Simulator, call_id: str):
    return ws_connect(
        f"{sim.url}/realtime?call_id={call_id}", additional_headers={"Authorization": f"Bearer {KEY}"}
    )


async def recv_until(ws, kind: str, timeout: float = 5.0) -> list[dict]:
    events = []
    async with asyncio.timeout(timeout):
        while True:
            events.append(json.loads(await ws.recv()))
            if events[-1]["type"] == kind:
                return events


# --- WebRTC ------------------------------------------------------------------------------------


async def test_webrtc_call_answers_with_a_loopback_peer_and_a_location(sim):
    async with CallClient(sim.url, KEY) as call:
        call_id = await call.place(session={**TEXT, "instructions": "Be brief."}, model="gpt-realtime-mini")
        assert call_id.startswith("rtc_")
        assert call.location == f"/v1/realtime/calls/{call_id}"
        assert call.answer.startswith("v=0") and "a=fingerprint:" in call.answer  # DTLS
        assert sim.calls.offers == [call.offer] and sim.calls.answers == [call.answer]
        assert set(webrtc.candidate_hosts(call.answer)) == {"127.0.0.1"}
        created = await call.wait_for("session.created")
        assert created["session"]["instructions"] == "Be brief."
        assert created["session"]["model"] == "gpt-realtime-mini"
        assert sim.calls.calls[call_id].session.id == created["session"]["id"]


async def test_text_response_round_trip_on_the_data_channel(sim):
    async with CallClient(sim.url, KEY) as call:
        await call.place(session=TEXT)
        await call.wait_for("session.created")
        call.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi there"}]},
            }
        )
        call.send({"type": "response.create", "event_id": "evt_c1"})
        done = await call.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        assert "Reply 1 to: hi there" in done["response"]["output"][0]["content"][0]["text"]
        call.send({"type": "nonsense"})
        error = await call.wait_for("error")
        assert error["error"]["param"] == "type"


async def test_the_agents_speech_is_played_on_the_callers_track(sim):
    async with CallClient(sim.url, KEY) as call:
        await call.place()  # no session: the service's default, spoken replies
        created = await call.wait_for("session.created")
        assert created["session"]["output_modalities"] == ["audio"]
        call.send({"type": "response.create"})
        done = await call.wait_for("response.done")
        assert done["response"]["output"][0]["content"][0]["transcript"]
        await call.wait_until(lambda: call.loud_frames >= 10, timeout=5)
        # As over the service's WebRTC: the audio is on the track, not in events.
        assert "response.output_audio.delta" not in call.kinds()
        assert "response.output_audio_transcript.delta" in call.kinds()
        assert sim.calls.calls[call.call_id].agent_audio_bytes > 0


async def test_the_callers_microphone_is_input_audio_for_server_vad(sim):
    async with CallClient(sim.url, KEY, audio=ToneTrack(frequency=440, seconds=0.5)) as call:
        await call.place(session=TEXT)
        started = await call.wait_for("input_audio_buffer.speech_started", timeout=5)
        stopped = await call.wait_for("input_audio_buffer.speech_stopped", timeout=5)
        assert 300 <= stopped["audio_end_ms"] - started["audio_start_ms"] <= 1200
        await call.wait_for("input_audio_buffer.committed")
        done = await call.wait_for("response.done")  # server VAD answered the turn
        assert "[speech, " in done["response"]["output"][0]["content"][0]["text"]
        assert sim.calls.calls[call.call_id].caller_audio_bytes > 0


async def test_sideband_joined_by_call_id_sees_the_calls_events_and_steers_it(sim):
    async with CallClient(sim.url, KEY) as call:
        call_id = await call.place(session=TEXT)
        first = await call.wait_for("session.created")
        client = openai.AsyncOpenAI(api_key=KEY, websocket_base_url=sim.url, max_retries=0)
        async with client.realtime.connect(call_id=call_id) as side:
            async with asyncio.timeout(5):
                created = await side.recv()
            assert created.type == "session.created"
            assert created.session.id == first["session"]["id"]
            await side.response.create(response={"instructions": "from the sideband"})
            async with asyncio.timeout(5):
                while (event := await side.recv()).type != "response.done":
                    pass
            assert "[instructions: from the sideband]" in event.response.output[0].content[0].text
            on_channel = await call.wait_for("response.done")
            assert on_channel["response"]["id"] == event.response.id  # one session, two outputs
            # and what the caller asks for is seen on the sideband
            call.send({"type": "response.create"})
            async with asyncio.timeout(5):
                while (event := await side.recv()).type != "response.done":
                    pass
            assert event.response.id == (await call.wait_for("response.done", 2))["response"]["id"]


async def test_sideband_for_an_unknown_call_is_refused_404(sim):
    with pytest.raises(InvalidStatus) as refused:
        async with await sideband(sim, "rtc_nope"):
            pass
    assert refused.value.response.status_code == 404
    assert json.loads(refused.value.response.body)["error"]["code"] == "call_not_found"


async def test_hangup_ends_the_call_closes_its_sidebands_and_its_peer(sim):
    async with CallClient(sim.url, KEY) as call:
        call_id = await call.place(session=TEXT)
        async with await sideband(sim, call_id) as side:
            await recv_until(side, "session.created")
            await rest(sim).realtime.calls.hangup(call_id)
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(5):
                    await side.recv()
            assert side.close_code == 1000
        async with asyncio.timeout(5):
            await call.closed.wait()
    assert sim.calls.hangups == [call_id]
    assert sim.calls.get(call_id).end_reason == "hung_up"
    assert call_id not in sim.calls.calls


async def test_the_peer_closing_ends_the_call(sim):
    call = CallClient(sim.url, KEY)
    call_id = await call.place(session=TEXT)
    await call.wait_for("session.created")
    async with await sideband(sim, call_id) as side:
        await recv_until(side, "session.created")
        await call.close()
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                await side.recv()
        assert side.close_code == 1000
    assert sim.calls.get(call_id).end_reason == "peer_closed"


async def accepted_sip_call(sim, receiver) -> str:
    """A phone call placed and accepted; its caller says nothing."""
    call_id = (await place_sip_call(sim, receiver, say=[]))["call_id"]
    await rest(sim).realtime.calls.accept(call_id, type="realtime")
    return call_id


async def test_refer_records_the_target_and_ends_the_call_as_transferred(sim, receiver):
    call_id = await accepted_sip_call(sim, receiver)
    status, body = await post(sim, f"/realtime/calls/{call_id}/refer", b'{"target_uri": "mailto:x"}')
    assert (status, body["error"]["param"]) == (400, "target_uri")
    # A URI's scheme is case-insensitive (RFC 3986); the target is recorded as written.
    await rest(sim).realtime.calls.refer(call_id, target_uri="TEL:+15550100")
    assert sim.calls.refers == [(call_id, "TEL:+15550100")]
    assert sim.calls.get(call_id).end_reason == "transferred"


async def test_a_webrtc_call_cannot_be_transferred_and_goes_on(sim):
    """The service's refer is the SIP REFER verb: it transfers SIP calls only."""
    async with CallClient(sim.url, KEY, media=False) as call:
        call_id = await call.place(session=TEXT)
        status, body = await post(sim, f"/realtime/calls/{call_id}/refer", b'{"target_uri": "tel:+15550100"}')
        assert (status, body["error"]["code"]) == (400, "call_not_sip"), body
        assert "only SIP calls" in body["error"]["message"]
        assert sim.calls.refers == [] and sim.calls.get(call_id).status == "active"


async def test_the_counters_are_readable_over_http(sim, receiver):
    call_id = await accepted_sip_call(sim, receiver)
    # A secure SIP URI is a SIP URI too (the console takes it).
    await rest(sim).realtime.calls.refer(call_id, target_uri="sips:desk@example.com")
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    writer.write(b"GET /v1/_sim/calls HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        raw = await reader.read()
    writer.close()
    summary = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert summary["refers"] == [{"call_id": call_id, "target_uri": "sips:desk@example.com"}]
    assert summary["calls"][call_id] == {"kind": "sip", "status": "ended", "end_reason": "transferred"}
    assert summary["accepts"] == [{"call_id": call_id, "session": {"type": "realtime"}}]


async def test_a_call_whose_peer_never_connects_ends_and_a_connected_one_goes_on():
    """The service does not keep a call whose media never came: the caller posted its offer
    and went away before applying the answer."""
    simulator = Simulator(fast_config(webrtc_connect_seconds=1.0))
    await simulator.start()
    try:
        async with CallClient(simulator.url, KEY, media=False) as good:
            good_id = await good.place(session=TEXT)
            await good.wait_for("session.created")  # the data channel is open: connected
            pc = webrtc.new_peer_connection()
            pc.createDataChannel("oai-events")
            offer = await webrtc.create_local(pc, "offer", loopback_only=True)
            placed = await rest(simulator).realtime.calls.with_raw_response.create(sdp=offer)
            assert placed.http_response.status_code == 201
            await pc.close()  # gone, the answer never applied
            [gone] = [c for c in simulator.calls.history.values() if c.id != good_id]
            async with await sideband(simulator, gone.id) as side:
                await recv_until(side, "session.created")
                with pytest.raises(ConnectionClosed):
                    async with asyncio.timeout(5):
                        await side.recv()
                assert (side.close_code, side.close_reason) == (1000, "call ended: not_connected")
            assert gone.end_reason == "not_connected"
            # Placed first, its wait is over too: a connected call is not ended.
            assert simulator.calls.get(good_id).status == "active"
    finally:
        await simulator.aclose()


async def test_a_calls_session_expires_at_the_cap_and_ends_the_call():
    simulator = Simulator(fast_config(max_session_seconds=0.5))
    await simulator.start()
    try:
        async with CallClient(simulator.url, KEY) as call:
            call_id = await call.place(session=TEXT)
            error = await call.wait_for("error", timeout=5)
            assert error["error"]["code"] == "session_expired"
            async with asyncio.timeout(5):
                await call.closed.wait()
        assert simulator.calls.get(call_id).end_reason.startswith("Your session hit the maximum")
    finally:
        await simulator.aclose()


async def test_calls_rest_refusals_have_the_services_error_shape(sim):
    status, body = await post(sim, "/realtime/calls/rtc_unknown/hangup")
    assert status == 404
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["code"] == "call_not_found"
    status, body = await post(sim, "/realtime/calls", b"v=0\r\n", headers={"Content-Type": "application/sdp"})
    assert (status, body["error"]["code"]) == (401, "missing_api_key")
    status, body = await post(
        sim, "/realtime/calls", b"hello", {"Authorization": f"Bearer {KEY}", "Content-Type": "text/plain"}
    )
    assert status == 415
    status, body = await post(
        sim, "/realtime/calls", b"not sdp", {"Authorization": f"Bearer {KEY}", "Content-Type": "application/sdp"}
    )
    assert (status, body["error"]["param"]) == (400, "sdp")
    async with CallClient(sim.url, KEY) as call:
        call_id = await call.place(session=TEXT)
        status, body = await post(sim, f"/realtime/calls/{call_id}/accept", b"[1]")
        assert status == 400
        status, body = await post(sim, f"/realtime/calls/{call_id}/accept", b'{"type": "realtime"}')
        assert (status, body["error"]["code"]) == (400, "call_not_pending")
    assert sim.calls.accepts == []


async def test_an_offer_without_a_media_section_is_refused_and_no_call_is_left_open(sim):
    """An SDP with no m= line (no audio, no data channel) can never connect: the service
    refuses it, 400 `invalid_offer` ("... a WHIP-compliant offer"). Answered 201, its call
    (and the console's session attached to it) would stay live until the session cap."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/sdp"}
    for offer in (b"v=0\r\n", b"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"):
        status, body = await post(sim, "/realtime/calls", offer, headers)
        assert status == 400, body
        assert (body["error"]["code"], body["error"]["param"]) == ("invalid_offer", "sdp"), body
        assert "WHIP" in body["error"]["message"], body
    assert sim.calls.calls == {} and sim.calls.answers == []


# --- SIP ---------------------------------------------------------------------------------------


class WebhookReceiver:
    """The console's side of a webhook, minimal: verifies with the SDK and answers `status`."""

    def __init__(self, secret: str = SECRET, status: int = 200) -> None:
        self.events: list = []
        self.refused = 0
        verifier = openai.OpenAI(api_key="unused", webhook_secret=secret)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    receiver.events.append(verifier.webhooks.unwrap(body, dict(self.headers)))
                    code = status
                except openai.InvalidWebhookSignatureError:
                    receiver.refused += 1
                    code = 400
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/webhooks/openai"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    webhook = WebhookReceiver()
    yield webhook
    webhook.stop()


async def place_sip_call(sim, receiver, **extra) -> dict:
    body = {"from": "+15550001", "to": "+15550199", "webhook_url": receiver.url, "webhook_secret": SECRET, **extra}
    status, answer = await post(sim, "/_sim/sip_calls", json.dumps(body).encode())
    assert status == 201, answer
    return answer


async def test_incoming_sip_call_sends_a_signed_webhook_the_sdk_verifies(sim, receiver):
    answer = await place_sip_call(sim, receiver)
    assert answer["webhook_status"] == 200
    (event,) = receiver.events
    assert event.type == "realtime.call.incoming"
    assert event.data.call_id == answer["call_id"]
    headers = {h.name: h.value for h in event.data.sip_headers}
    assert headers["From"].startswith("sip:+15550001@")
    assert headers["To"].startswith("sip:+15550199@")
    assert sim.calls.calls[answer["call_id"]].status == "pending"
    assert sim.calls.webhooks == [(answer["call_id"], 200)]


async def test_a_webhook_with_the_wrong_secret_is_refused_by_the_receiver(sim):
    receiver = WebhookReceiver(secret="whsec_" + base64.b64encode(b"another secret").decode())
    try:
        answer = await place_sip_call(sim, receiver)
    finally:
        receiver.stop()
    assert answer["webhook_status"] == 400
    assert receiver.refused == 1 and receiver.events == []


async def test_accepted_sip_call_speaks_into_the_session_and_hears_the_agent(sim, receiver):
    answer = await place_sip_call(sim, receiver, say=["Hello, is anybody there?"])
    call_id = answer["call_id"]
    await rest(sim).realtime.calls.accept(
        call_id, type="realtime", instructions="You answer the phone.", audio={"output": {"voice": "marin"}}
    )
    assert sim.calls.accepts == [
        (call_id, {"type": "realtime", "instructions": "You answer the phone.", "audio": {"output": {"voice": "marin"}}})
    ]
    async with await sideband(sim, call_id) as side:
        created = (await recv_until(side, "session.created"))[-1]
        assert created["session"]["instructions"] == "You answer the phone."
        assert created["session"]["audio"]["output"]["voice"] == "marin"
        events = await recv_until(side, "response.done", timeout=10)
    kinds = [e["type"] for e in events]
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("input_audio_buffer.committed")
    assert events[-1]["response"]["status"] == "completed"
    call = sim.calls.calls[call_id]
    assert call.caller_audio_bytes > 0
    assert call.agent_audio_bytes > 0  # the phone heard the reply
    await rest(sim).realtime.calls.hangup(call_id)
    assert sim.calls.get(call_id).status == "ended"


async def test_rejected_sip_call_is_gone(sim, receiver):
    call_id = (await place_sip_call(sim, receiver))["call_id"]
    await rest(sim).realtime.calls.reject(call_id, status_code=486)
    assert sim.calls.rejects == [(call_id, 486)]
    status, body = await post(sim, f"/realtime/calls/{call_id}/accept", b'{"type": "realtime"}')
    assert (status, body["error"]["code"]) == (404, "call_not_found")
    assert sim.calls.accepts == []


async def test_sip_call_request_is_checked(sim, receiver):
    status, body = await post(sim, "/_sim/sip_calls", json.dumps({"from": "+1", "to": ""}).encode())
    assert (status, body["error"]["param"]) == (400, "to")
    assert receiver.events == []


# --- simulate_sip_call -------------------------------------------------------------------------


@pytest.fixture
def sim_thread():
    thread = SimulatorThread(fast_config(required_api_key=KEY))
    yield thread
    thread.stop()


def test_simulate_sip_call_prints_the_call_id_once_the_webhook_is_answered(sim_thread, receiver, capsys):
    call_command(
        "simulate_sip_call", "--to", "+15550199", "--from", "+15550001", "--upstream", sim_thread.url,
        "--webhook-url", receiver.url, "--secret", SECRET, "--api-key", KEY,
    )  # fmt: skip
    call_id = capsys.readouterr().out.strip().splitlines()[-1]
    assert call_id.startswith("rtc_")
    assert receiver.events[0].data.call_id == call_id


def test_simulate_sip_call_fails_clearly_when_the_webhook_is_refused(sim_thread, settings):
    refusing = WebhookReceiver(status=500)
    settings.OPENAI_WEBHOOK_SECRET = SECRET
    settings.OPENAI_API_KEY = KEY
    try:
        with pytest.raises(CommandError, match="answered 500"):
            call_command(
                "simulate_sip_call", "--to", "+1555", "--from", "+1666", "--upstream", sim_thread.url,
                "--webhook-url", refusing.url,
            )  # fmt: skip
    finally:
        refusing.stop()


def test_simulate_sip_call_finds_the_embedded_simulator_by_its_url_file(sim_thread, receiver, settings, tmp_path, capsys):
    settings.VAR_DIR = tmp_path
    settings.OC_UPSTREAM_URL = ""
    settings.OPENAI_API_KEY = KEY
    with pytest.raises(CommandError, match="No simulator to call"):
        call_command("simulate_sip_call", "--to", "+1", "--from", "+2", "--secret", SECRET)
    discovery.write_url(tmp_path, sim_thread.url)
    call_command(
        "simulate_sip_call", "--to", "+1", "--from", "+2", "--secret", SECRET, "--webhook-url", receiver.url
    )
    assert capsys.readouterr().out.strip().startswith("rtc_")


async def test_the_embedded_simulator_writes_its_url_file(settings, tmp_path):
    from apps.sessions.upstream import _start_simulator

    settings.VAR_DIR = tmp_path
    simulator = await _start_simulator()
    try:
        assert discovery.read_url(tmp_path) == simulator.url
    finally:
        await simulator.aclose()


# --- loopback ----------------------------------------------------------------------------------


async def test_every_candidate_of_a_call_is_loopback_and_foreign_ones_are_dropped(sim):
    assert webrtc.loopback_sdp(
        "v=0\r\na=candidate:1 1 udp 1 192.0.2.7 5000 typ host\r\n"
        "a=candidate:2 1 udp 1 127.0.0.1 5001 typ host\r\na=candidate:3 1 udp 1 x.local 5002 typ host\r\n"
    ) == "v=0\r\na=candidate:2 1 udp 1 127.0.0.1 5001 typ host\r\n"
    async with CallClient(sim.url, KEY) as call:
        await call.place(session=TEXT)
        await call.wait_for("session.created")
    seen = [("offer", call.offer), ("answer", call.answer)]
    seen += [("offer", s) for s in sim.calls.offers] + [("answer", s) for s in sim.calls.answers]
    assert all(webrtc.candidate_hosts(sdp) for _, sdp in seen)  # there are candidates to check
    assert non_loopback_candidates(seen) == []
    assert non_loopback_candidates() == []  # and in every SDP this test has seen


def test_the_suites_check_catches_a_foreign_candidate():
    webrtc.sdp_log.append(("offer", "v=0\r\na=candidate:1 1 udp 1 192.0.2.7 5000 typ host\r\n"))
    assert drain_non_loopback() == [("offer", "192.0.2.7")]
    assert list(webrtc.sdp_log) == []  # drained: the conftest check after this test passes


async def test_closing_the_sidebands_leaves_the_call_going(sim):
    async with CallClient(sim.url, KEY) as call:
        call_id = await call.place(session=TEXT)
        async with await sideband(sim, call_id) as side:
            await recv_until(side, "session.created")
            assert await sim.calls.close_sidebands(call_id, 1011, "upstream failed") == 1
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(5):
                    await side.recv()
            assert side.close_code == 1011
        await call.wait_for("session.created")
        call.send({"type": "response.create"})
        assert (await call.wait_for("response.done"))["response"]["status"] == "completed"
        assert sim.calls.calls[call_id].status == "active"


async def test_checks_from_an_address_that_is_not_loopback_are_ignored():
    from aioice import stun

    pc = webrtc.new_peer_connection()
    pc.createDataChannel("oai-events")
    try:
        await webrtc.create_local(pc, "offer", loopback_only=True)
        (connection,) = webrtc._ice_connections(pc)

        class Protocol:
            sent: list = []

            def send_stun(self, message, addr):
                self.sent.append(addr)

        protocol = Protocol()
        unsigned = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        connection.request_received(unsigned, ("192.0.2.7", 5000), protocol)
        assert protocol.sent == []  # dropped unanswered
        connection.request_received(unsigned, ("127.0.0.1", 5000), protocol)
        assert protocol.sent == [("127.0.0.1", 5000)]  # answered (400: it is not signed)
    finally:
        await pc.close()


async def test_a_call_offering_only_the_data_channel_gets_events_and_no_track(sim):
    async with CallClient(sim.url, KEY, media=False) as call:
        call_id = await call.place()
        assert "m=audio" not in call.answer
        await call.wait_for("session.created")
        call.send({"type": "response.create"})
        done = await call.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        assert sim.calls.calls[call_id].track is None



async def test_an_error_goes_back_only_to_the_connection_whose_event_caused_it():
    """A sideband's response.create refused while the caller's response is active is the
    sideband's error: the caller's app on the data channel never sees it, and the other way round."""
    slow = Simulator(SimulatorConfig(deltas_per_response=5, delta_interval=0.1, audio_pace=0, speech_engine="tone"))
    await slow.start()
    try:
        async with CallClient(slow.url, KEY, media=False) as call:
            call_id = await call.place(session=TEXT)
            await call.wait_for("session.created")
            async with await sideband(slow, call_id) as side:
                await recv_until(side, "session.created")
                call.send({"type": "response.create", "event_id": "evt_caller"})
                await recv_until(side, "response.created")
                await side.send(json.dumps({"type": "response.create", "event_id": "evt_side"}))
                refused = (await recv_until(side, "error"))[-1]["error"]
                assert refused["code"] == "conversation_already_has_active_response"
                assert refused["event_id"] == "evt_side"
                await call.wait_for("response.done")
                assert "error" not in call.kinds()

                call.send({"type": "response.create", "event_id": "evt_caller_2"})
                call.send({"type": "response.create", "event_id": "evt_caller_3"})
                assert (await call.wait_for("error"))["error"]["event_id"] == "evt_caller_3"
                on_side = await recv_until(side, "response.done")
                assert "error" not in [event["type"] for event in on_side]
    finally:
        await slow.aclose()


# --- the output audio buffer (WebRTC and SIP only) ---------------------------------------------


def _buffer_events(events: list[dict]) -> list[tuple[str, str]]:
    return [
        (e["type"], e["response_id"])
        for e in events
        if e.get("type", "").startswith("output_audio_buffer.")
    ]


async def test_the_output_audio_buffer_starts_then_stops_once_the_reply_has_played():
    from openai.types.realtime import RealtimeServerEvent
    from pydantic import TypeAdapter

    simulator = Simulator(fast_config(reply_audio_ms=300))
    await simulator.start()
    try:
        async with CallClient(simulator.url, KEY) as call:
            call_id = await call.place()
            await call.wait_for("session.created")
            async with await sideband(simulator, call_id) as side:
                await recv_until(side, "session.created")
                call.send({"type": "response.create"})
                stopped = await call.wait_for("output_audio_buffer.stopped")
                rid = stopped["response_id"]
                kinds = call.kinds()
                assert _buffer_events(call.events) == [
                    ("output_audio_buffer.started", rid),
                    ("output_audio_buffer.stopped", rid),
                ]
                # started once audio goes out, stopped after response.done, once played
                assert kinds.index("response.content_part.added") < kinds.index(
                    "output_audio_buffer.started"
                ) < kinds.index("response.done") < kinds.index("output_audio_buffer.stopped")
                assert simulator.calls.calls[call_id].track.queued_bytes == 0
                on_side = await recv_until(side, "output_audio_buffer.stopped")
                assert _buffer_events(on_side) == _buffer_events(call.events)
                adapter = TypeAdapter(RealtimeServerEvent)
                for event in call.events:
                    adapter.validate_python(event, strict=True)
    finally:
        await simulator.aclose()


@contextlib.asynccontextmanager
async def _agent_speaking(reply_audio_ms: int):
    """A call whose agent has begun a spoken reply `reply_audio_ms` long: (simulator, call,
    its call id, the `output_audio_buffer.started`)."""
    simulator = Simulator(fast_config(reply_audio_ms=reply_audio_ms))
    await simulator.start()
    try:
        async with CallClient(simulator.url, KEY) as call:
            call_id = await call.place()
            await call.wait_for("session.created")
            call.send({"type": "response.create"})
            started = await call.wait_for("output_audio_buffer.started")
            yield simulator, call, call_id, started
    finally:
        await simulator.aclose()


async def test_clearing_the_output_audio_buffer_says_cleared_and_never_stopped():
    async with _agent_speaking(4000) as (simulator, call, call_id, started):
        await call.wait_for("response.done")
        call.send({"type": "output_audio_buffer.clear", "event_id": "evt_clear"})
        cleared = await call.wait_for("output_audio_buffer.cleared")
        assert cleared["response_id"] == started["response_id"]
        assert simulator.calls.calls[call_id].track.queued_bytes == 0
        assert "output_audio_buffer.stopped" not in call.kinds()
        assert "error" not in call.kinds()


async def test_a_sideband_can_clear_the_calls_output_audio_buffer():
    """The sideband is a WebSocket, but the session it joins is a call's: its clear is the
    call's, not refused as a WebSocket session's is."""
    async with _agent_speaking(4000) as (simulator, call, call_id, started):
        async with await sideband(simulator, call_id) as side:
            await recv_until(side, "session.created")
            await side.send(json.dumps({"type": "output_audio_buffer.clear", "event_id": "e1"}))
            on_side = await recv_until(side, "output_audio_buffer.cleared")
        assert on_side[-1]["response_id"] == started["response_id"]
        assert "error" not in [event["type"] for event in on_side]
        assert simulator.calls.calls[call_id].track.queued_bytes == 0


async def test_the_caller_speaking_over_the_agent_clears_the_output_audio_buffer():
    async with _agent_speaking(6000) as (simulator, call, call_id, started):
        session = simulator.calls.calls[call_id].session
        await voice_module.on_audio_append(
            session, {"audio": base64.b64encode(_loud_pcm(600)).decode()}
        )
        cleared = await call.wait_for("output_audio_buffer.cleared")
        assert cleared["response_id"] == started["response_id"]
        kinds = call.kinds()
        assert kinds.index("input_audio_buffer.speech_started") < kinds.index(
            "output_audio_buffer.cleared"
        )
        assert simulator.calls.calls[call_id].track.queued_bytes == 0


def _loud_pcm(ms: int) -> bytes:
    """PCM16 at 24 kHz of a square wave, far over server VAD's threshold."""
    period = b"\x00\x40" * 12 + b"\x00\xc0" * 12  # 1 kHz
    return period * ms


async def test_a_calls_turn_detection_given_in_part_is_completed_as_session_update_does(
    sim, receiver
):
    """A call configured with a bare `server_vad` (in its offer's session or its accept)
    announces and uses the whole of it, the service's defaults filling what was left out,
    just as a `session.update` with the same turn detection would."""
    given = {"type": "server_vad", "silence_duration_ms": 700}
    expected = {**voice_module.TURN_DETECTION_DEFAULTS["server_vad"], **given}
    session = {**TEXT, "audio": {"input": {"turn_detection": given}}}
    async with CallClient(sim.url, KEY) as call:
        await call.place(session=session)
        created = await call.wait_for("session.created")
    assert created["session"]["audio"]["input"]["turn_detection"] == expected
    call_id = (await place_sip_call(sim, receiver, say=[]))["call_id"]
    await rest(sim).realtime.calls.accept(call_id, **session)
    accepted = sim.calls.calls[call_id].session.config
    assert accepted["audio"]["input"]["turn_detection"] == expected
