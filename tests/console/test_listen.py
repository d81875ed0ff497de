"""Listen-in (CONTRACT section 6): who may listen, what a listener hears and when, and that a
listener never slows the call."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import time
import uuid
from array import array

import httpx
import pytest
import websockets
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from apps.realtime import audio
from apps.sessions.models import LiveSession
from operator_console.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://127.0.0.1:8000")
HOST = (b"host", b"127.0.0.1:8000")  # as a browser's handshake names the site it opens


def _cookie(name: str, *, may_listen: bool) -> str:
    user = get_user_model().objects.create_user(name, password="pw-for-tests")
    if may_listen:
        user.user_permissions.add(Permission.objects.get(codename="listen_session"))
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


@pytest.fixture
def cookies(transactional_db) -> dict[str, str]:
    return {"ann": _cookie("ann", may_listen=True), "bob": _cookie("bob", may_listen=True),
            "eve": _cookie("eve", may_listen=False)}


async def _listener(session_id: str, cookie: str | None) -> tuple[WebsocketCommunicator, bool]:
    headers = [HOST, ORIGIN] + ([(b"cookie", cookie.encode())] if cookie else [])
    path = f"/ws/console/sessions/{session_id}/audio"
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    return communicator, connected


async def _started(session_id: str, cookie: str) -> WebsocketCommunicator:
    listener, connected = await _listener(session_id, cookie)
    assert connected
    first = await listener.receive_from(timeout=5)
    assert json.loads(first) == {"type": "listen.started", "format": "pcm16", "rate": 24000}
    return listener


def _tone(samples: int, amplitude: int = 8000) -> bytes:
    return array("h", [amplitude if (i // 20) % 2 else -amplitude for i in range(samples)]).tobytes()


def _append(pcm: bytes) -> dict:
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}


async def _binary(listener: WebsocketCommunicator, timeout: float = 5.0) -> bytes:
    while True:
        message = await listener.receive_output(timeout=timeout)
        if message.get("bytes") is not None:
            return message["bytes"]


async def test_only_operators_with_the_listen_permission_get_past_the_handshake(caller, cookies):
    _, anonymous = await _listener(caller.session_id, None)
    assert not anonymous, "no login, no listening"
    _, refused = await _listener(caller.session_id, cookies["eve"])
    assert not refused, "logged in without 'Can listen to live sessions'"
    listener = await _started(caller.session_id, cookies["ann"])
    await listener.disconnect()


async def test_a_listener_hears_the_callers_audio_from_listen_started_on(caller, cookies):
    await caller.send(_append(_tone(480)))  # before anyone listens: not copied
    ann = await _started(caller.session_id, cookies["ann"])
    bob = await _started(caller.session_id, cookies["bob"])
    spoken = _tone(960)
    await caller.send(_append(spoken))
    for listener in (ann, bob):
        frame = await _binary(listener)
        assert frame[0] == 0, "byte 0 names the side: the caller"
        assert frame[1:] == spoken, "PCM16 24 kHz as the caller sent it"
    assert await ann.receive_nothing(timeout=0.2), "the audio from before listen.started is not sent"
    await ann.disconnect()
    await bob.disconnect()


async def test_a_listener_hears_the_call_while_the_database_thread_is_busy(caller, cookies):
    """Channels hops to its one database thread before each message a consumer handles; a
    listener's audio (25 pieces a second or more) waited there behind any slow query of the
    process. Audio touches no database: it goes straight to the listener."""
    listener = await _started(caller.session_id, cookies["ann"])
    busy = asyncio.ensure_future(sync_to_async(time.sleep)(3))  # the thread Channels hops to
    await asyncio.sleep(0.05)
    spoken = _tone(960)
    await caller.send(_append(spoken))
    frame = await _binary(listener, timeout=1.5)
    assert frame[1:] == spoken
    assert not busy.done(), "the database thread was busy all along"
    await busy
    await listener.disconnect()


async def test_a_burst_of_small_appends_reaches_a_listener_whole_and_in_order(caller, cookies):
    listener = await _started(caller.session_id, cookies["ann"])
    pieces = [n.to_bytes(2, "little") * 240 for n in range(400)]  # 10 ms each, numbered
    for piece in pieces:
        await caller.send(_append(piece))
    heard = b""
    while len(heard) < len(b"".join(pieces)):
        frame = await _binary(listener)
        assert frame[0] == 0, "the caller's side"
        heard += frame[1:]
    assert heard == b"".join(pieces), "every piece, in the order the caller sent them"
    await listener.disconnect()


async def test_appends_that_split_a_sample_are_heard_as_one_stream(caller, cookies):
    """The upstream takes the appends' bytes as one stream: an append may end within a sample
    and the next one finish it."""
    listener = await _started(caller.session_id, cookies["ann"])
    spoken = _tone(960)
    for part in (spoken[:481], spoken[481:1441], spoken[1441:]):
        await caller.send(_append(part))
    heard = b""
    while not await listener.receive_nothing(timeout=0.5):
        heard += (await _binary(listener))[1:]
    assert heard == spoken, "every sample as the caller sent it"
    await listener.disconnect()


async def test_g711_audio_reaches_listeners_as_pcm16_at_24khz(caller, cookies):
    await caller.send({"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}})
    await caller.until("session.updated")
    listener = await _started(caller.session_id, cookies["ann"])
    pcm_8k = _tone(320)  # 40 ms at 8 kHz
    await caller.send({"type": "input_audio_buffer.append",
                       "audio": base64.b64encode(audio.ulaw_encode(pcm_8k)).decode()})
    frame = await _binary(listener)
    assert frame[0] == 0 and len(frame[1:]) == 3 * len(pcm_8k), "decoded and raised to 24 kHz"
    assert audio.pcm16_rms(frame[1:]) == pytest.approx(audio.pcm16_rms(pcm_8k), rel=0.1)
    await listener.disconnect()


async def test_a_long_g711_append_is_decoded_without_stopping_the_process(caller, cookies):
    """An append may hold minutes of G.711 (3 MiB: 6.5 minutes at 8 kHz). Decoding it for a
    listener (and the recorder) must not stop the event loop, every other session's with it,
    for seconds: the loop is measured by a ticker while the listener waits for the audio."""
    await caller.send({"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"format": {"type": "audio/pcma"},
                                                "turn_detection": None}}}})
    await caller.until("session.updated")
    listener = await _started(caller.session_id, cookies["ann"])
    g711 = audio.alaw_encode(_tone(8000)) * 393  # 3 144 000 bytes
    longest_gap = 0.0

    async def ticker() -> None:
        nonlocal longest_gap
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            longest_gap, last = max(longest_gap, now - last), now

    ticking = asyncio.create_task(ticker())
    try:
        await caller.send({"type": "input_audio_buffer.append",
                           "audio": base64.b64encode(g711).decode()})
        heard = b""
        while len(heard) < 6 * len(g711):
            frame = await _binary(listener, timeout=30)
            assert frame[0] == 0
            heard += frame[1:]
    finally:
        ticking.cancel()
    assert longest_gap < 0.5, f"the event loop stopped for {longest_gap:.2f} s"
    whole = heard == audio.g711_to_pcm16_24k(g711, "audio/pcma")  # not in assert: 18 MB to diff
    assert whole, "the audio is heard whole, as if decoded at once"
    await listener.disconnect()


async def test_audio_appended_right_after_a_format_change_is_decoded_in_the_new_format(
    caller, cookies
):
    """A G.711 caller streams as soon as it has asked for its format, without waiting for
    `session.updated`: the upstream takes its events in order, and so does the listener."""
    listener = await _started(caller.session_id, cookies["ann"])
    await caller.send({"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"format": {"type": "audio/pcma"}}}}})
    pcm_8k = _tone(320)
    await caller.send({"type": "input_audio_buffer.append",
                       "audio": base64.b64encode(audio.alaw_encode(pcm_8k)).decode()})
    frame = await _binary(listener)
    assert len(frame[1:]) == 3 * len(pcm_8k), "decoded as G.711 and raised to 24 kHz"
    # A format change the upstream refuses changes nothing: PCM16 is heard as it came.
    await caller.send({"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}})
    await caller.until("error")
    await caller.send({"type": "input_audio_buffer.append",
                       "audio": base64.b64encode(audio.alaw_encode(_tone(160))).decode()})
    frame = await _binary(listener)
    assert len(frame[1:]) == 3 * 160 * 2, "still G.711, as the upstream still hears it"
    await listener.disconnect()


async def test_a_reply_spoken_in_a_format_of_its_own_reaches_listeners_decoded(
    caller, simulator, cookies
):
    """A response may ask for its own output format (`response.audio.output.format`): its
    audio is heard in that format, whatever the session's."""
    listener = await _started(caller.session_id, cookies["ann"])
    with simulator.configured(speech_engine="tone", audio_pace=0, reply_audio_ms=300):
        pcmu = {"format": {"type": "audio/pcmu"}}
        await caller.send({"type": "response.create", "response": {
            "output_modalities": ["audio"], "audio": {"output": pcmu}}})
        events = await caller.until("response.done")
    sent = sum(len(base64.b64decode(e["delta"])) for e in events
               if e["type"] == "response.output_audio.delta")
    assert sent == 300 * 8, "300 ms of G.711 at 8 kHz"
    heard = 0
    while not await listener.receive_nothing(timeout=0.5):
        frame = await _binary(listener)
        assert frame[0] == 1, "the agent's side"
        heard += len(frame) - 1
    assert heard == 3 * 2 * sent, "decoded from G.711 and raised to 24 kHz"
    await listener.disconnect()


async def test_a_reply_the_caller_cuts_short_is_cut_for_listeners_too(caller, simulator, cookies):
    """The service sends a reply faster than it is spoken: when the caller stops playing it
    (`conversation.item.truncate`), listeners are told to drop what they have not played."""
    listener = await _started(caller.session_id, cookies["ann"])
    with simulator.configured(speech_engine="tone", audio_pace=0, reply_audio_ms=2000):
        await caller.send({"type": "response.create", "response": {"output_modalities": ["audio"]}})
        events = await caller.until("response.done")
    item_id = next(e["item_id"] for e in events if e["type"] == "response.output_audio.delta")
    await caller.send({"type": "conversation.item.truncate", "item_id": item_id,
                       "content_index": 0, "audio_end_ms": 300})
    await caller.until("conversation.item.truncated")
    heard = 0
    while (message := await listener.receive_output(timeout=5)).get("bytes") is not None:
        heard += len(message["bytes"]) - 1
    assert heard == 2 * 24 * 2000, "the whole reply came first, faster than it is spoken"
    assert json.loads(message["text"]) == {"type": "listen.cut", "side": 1}
    await listener.disconnect()


async def test_a_malformed_append_is_left_to_the_upstream_and_listening_goes_on(caller, cookies):
    listener = await _started(caller.session_id, cookies["ann"])
    await caller.send({"type": "input_audio_buffer.append", "audio": "not base64 at all!"})
    error = await caller.until("error")
    assert error[-1]["type"] == "error", "the upstream answers it as the service does"
    await caller.send(_append(_tone(480)))
    assert (await _binary(listener))[0] == 0, "the next piece is heard"
    await listener.disconnect()


async def test_listeners_are_told_when_the_session_ends(caller, cookies):
    listener = await _started(caller.session_id, cookies["ann"])
    await caller.communicator.disconnect()
    assert json.loads(await listener.receive_from(timeout=5)) == {"type": "listen.ended"}
    assert (await listener.receive_output(timeout=5))["type"] == "websocket.close"


async def test_an_operator_who_logs_out_stops_hearing_the_call(caller, cookies):
    listener = await _started(caller.session_id, cookies["ann"])
    session_cookie = cookies["ann"].removeprefix("sessionid=")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url="http://127.0.0.1",
        cookies={"sessionid": session_cookie},
    ) as http:
        page = await http.get("/console/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        out = await http.post("/accounts/logout/", data={"csrfmiddlewaretoken": token})
        assert out.status_code == 302
    await caller.send(_append(_tone(2400)))
    while (message := await listener.receive_output(timeout=5))["type"] != "websocket.close":
        assert message.get("bytes") is None, "audio reached an operator who had logged out"
    assert message["code"] == 4401


async def test_no_listening_to_a_session_that_is_not_live(cookies):
    listener, connected = await _listener("sess_nobody", cookies["ann"])
    assert connected
    message = json.loads(await listener.receive_from(timeout=5))
    assert message["type"] == "error" and "sess_nobody" in message["message"]
    assert (await listener.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4404}


@pytest.mark.parametrize("kind", ["webrtc", "sip"])
async def test_an_attached_calls_audio_cannot_be_listened_to_and_the_page_says_why(cookies, kind):
    """Its audio goes between the caller and the model: none of it passes the console."""
    session = await LiveSession.objects.acreate(
        id=uuid.uuid4(), upstream_id=f"sess_{kind}1", model="gpt-realtime", status="live",
        kind=kind, call_id=f"rtc_{kind}",
    )
    listener, connected = await _listener(session.upstream_id, cookies["ann"])
    assert connected
    message = json.loads(await listener.receive_from(timeout=5))
    assert message["type"] == "error" and "does not pass the console" in message["message"]
    assert (await listener.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4409}
    client = Client(headers={"cookie": cookies["ann"]})
    page = (await sync_to_async(client.get)(f"/console/sessions/{session.upstream_id}/")).content
    assert b"data-listen-toggle" not in page and b"the audio does not pass the console" in page


# ---------------------------------------------------------------------------- over real sockets


def _closed(sock: socket.socket) -> bool:
    """Whether the server has closed this (unread) socket: its end of the stream is there
    once everything before it is read, so look for the end without reading the data."""
    try:
        with open("/proc/net/tcp") as table:  # the socket's TCP state, as the kernel has it
            port = f"{sock.getsockname()[1]:04X}"
            states = [line.split()[3] for line in table if line.split()[1].endswith(":" + port)]
        return not states or states[0] != "01"  # 01: ESTABLISHED; reset: gone
    except OSError:
        return True


@pytest.mark.e2e
async def test_the_handshake_is_refused_with_403_without_the_permission(daphne, cookies, api_token):
    async with websockets.connect(
        f"{daphne.ws_base}/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {api_token}"},
    ) as call:
        session_id = json.loads(await call.recv())["session"]["id"]
        url = f"ws://127.0.0.1:{daphne.port}/ws/console/sessions/{session_id}/audio"
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url, origin=websockets.Origin(daphne.http_url),
                                     additional_headers={"Cookie": cookies["eve"]})
        assert refused.value.response.status_code == 403


@pytest.mark.e2e
async def test_a_listener_that_stops_reading_is_dropped_and_the_call_goes_on(daphne, cookies, api_token):
    async with websockets.connect(
        f"{daphne.ws_base}/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {api_token}"},
    ) as call:
        session_id = json.loads(await call.recv())["session"]["id"]
        # A listener that reads nothing after the handshake: a socket with a small receive
        # buffer, whose handshake is done by hand.
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", daphne.port))
        key = base64.b64encode(b"0123456789abcdef").decode()
        stalled.sendall(
            (f"GET /ws/console/sessions/{session_id}/audio HTTP/1.1\r\nHost: 127.0.0.1:{daphne.port}\r\n"
             f"Origin: {daphne.http_url}\r\nCookie: {cookies['ann']}\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        )
        assert stalled.recv(12) == b"HTTP/1.1 101"
        stalled.setblocking(False)
        # Audio for the listener: 1 s of it every 50 ms, for at most 30 s, while the caller
        # keeps talking; each append must still be answered in good time.
        second = _append(_tone(24_000))
        slowest, dropped = 0.0, False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not dropped:
            began = time.monotonic()
            await call.send(json.dumps(second))
            await call.send(json.dumps({"type": "input_audio_buffer.clear"}))
            while json.loads(await call.recv())["type"] != "input_audio_buffer.cleared":
                pass
            slowest = max(slowest, time.monotonic() - began)
            dropped = _closed(stalled)
            await asyncio.sleep(0.05)
        stalled.close()
        assert dropped, "the listener that stopped reading was dropped"
        assert slowest < 1.0, f"the call went on at its pace (slowest round trip {slowest:.2f} s)"


async def test_a_listener_leaving_does_not_stop_the_others_and_a_later_one_hears_again(
    caller, cookies
):
    ann = await _started(caller.session_id, cookies["ann"])
    bob = await _started(caller.session_id, cookies["bob"])
    await ann.disconnect()
    spoken = _tone(960)
    await caller.send(_append(spoken))
    assert (await _binary(bob))[1:] == spoken, "bob still hears the call after ann left"
    await bob.disconnect()
    again = await _started(caller.session_id, cookies["ann"])  # nobody listened in between
    await caller.send(_append(spoken))
    assert (await _binary(again))[1:] == spoken
    await again.disconnect()


async def test_an_operator_who_loses_the_permission_stops_hearing_the_call(caller, cookies, monkeypatch):
    """The permission is checked again at each renewal: an operator whose "Can listen" is
    taken away hears no more of a call already playing (4403); the others hear on."""
    monkeypatch.setattr("apps.console.listen.RENEW_SECONDS", 0.05)
    ann = await _started(caller.session_id, cookies["ann"])
    bob = await _started(caller.session_id, cookies["bob"])
    listen = await Permission.objects.aget(codename="listen_session")
    await sync_to_async(listen.user_set.remove)(await get_user_model().objects.aget(username="ann"))
    closed = await ann.receive_output(timeout=5)
    while closed["type"] != "websocket.close":
        closed = await ann.receive_output(timeout=5)
    assert closed["code"] == 4403
    spoken = _tone(960)
    await caller.send(_append(spoken))
    assert (await _binary(bob))[1:] == spoken, "an operator who may still listen hears on"
    await bob.disconnect()


async def test_an_operator_over_the_listener_cap_is_refused_and_a_socket_closed_frees_a_place(
    caller, cookies, settings
):
    """Each listener costs a copy of the call's audio: an operator holds at most
    OC_MAX_LISTENERS_PER_USER listen sockets in a process. One more is told why (the page shows
    the `error`) and closed with 4429; once one of theirs closes, they may listen again. The
    cap is the operator's own: another operator listens all the same."""
    settings.OC_MAX_LISTENERS_PER_USER = 2
    first = await _started(caller.session_id, cookies["ann"])
    second = await _started(caller.session_id, cookies["ann"])
    extra, connected = await _listener(caller.session_id, cookies["ann"])
    assert connected
    message = json.loads(await extra.receive_from(timeout=5))
    assert message["type"] == "error" and "OC_MAX_LISTENERS_PER_USER" in message["message"]
    assert "2" in message["message"], message
    closed = await extra.receive_output(timeout=5)
    assert closed["type"] == "websocket.close" and closed["code"] == 4429, closed
    assert "OC_MAX_LISTENERS_PER_USER=2" in closed["reason"]
    bob = await _started(caller.session_id, cookies["bob"])
    await first.disconnect()
    again = await _started(caller.session_id, cookies["ann"])
    spoken = _tone(960)
    await caller.send(_append(spoken))
    assert (await _binary(again))[1:] == spoken, "the operator hears the call on the freed place"
    for listener in (second, again, bob):
        await listener.disconnect()
