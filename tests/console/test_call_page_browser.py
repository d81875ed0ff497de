"""Real Chromium calls the agent from the "Call the agent" page: a fake microphone, a WebRTC
call through /v1/realtime/calls on the operator's login, the agent's events on the page, and
the session live on its console page. Screenshots at 1280×800 and 390×844 go to
var/screenshots/ for a person to look at."""

from __future__ import annotations

import asyncio
import math
import struct
import wave
from pathlib import Path

import pytest
import pytest_asyncio

from apps.sessions.models import LiveSession
from apps.simulator.webrtc import candidate_hosts
from tests.conftest import UPSTREAM_KEY
from tests.console.conftest import CHROMIUM_ARGS, fresh_contexts, launched

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WEBRTC_ARGS = [
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


def microphone_file(path: Path) -> Path:
    """What the fake microphone says: a second of tone (a caller's turn), then silence. The
    default fake device beeps forever, and every beep is a turn that interrupts the agent."""
    rate = 48000
    tone = b"".join(struct.pack("<h", int(6000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(rate))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(tone + bytes(2 * rate * 60))
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def webrtc_chromium(chromium_path, tmp_path_factory):
    """A Chromium of this module's, with a fake microphone and loopback WebRTC."""
    speech = microphone_file(tmp_path_factory.mktemp("microphone") / "caller.wav")
    args = [*CHROMIUM_ARGS, *WEBRTC_ARGS, f"--use-file-for-fake-audio-capture={speech}%noloop"]
    async with launched(chromium_path, args) as browser:
        yield browser


@pytest_asyncio.fixture(loop_scope="session")
async def chromium(webrtc_chromium):
    """The module's Chromium, contexts of the test's own (overrides the conftest's, which
    `login` uses)."""
    async with fresh_contexts(webrtc_chromium) as browser:
        yield browser


@pytest.fixture
def fast_speech(simulator):
    """The simulator speaks four times faster than real time: the test waits less."""
    with simulator.configured(audio_pace=4.0):
        yield


def loopback_only(sdp: str) -> str:
    """The offer without candidates off loopback: tests send traffic to 127.0.0.1 only, and
    Chromium gathers the machine's other address too."""
    lines = sdp.split("\r\n")
    kept = [line for line in lines if not (line.startswith("a=candidate:") and candidate_hosts(line) != ["127.0.0.1"])]
    return "\r\n".join(kept)


async def keep_offers_on_loopback(page, offers: list[str]) -> None:
    async def handle(route):
        offer = loopback_only(route.request.post_data or "")
        offers.append(offer)
        await route.continue_(post_data=offer)

    await page.route("**/v1/realtime/calls", handle)


async def test_an_operator_calls_the_agent_from_the_browser_and_sees_the_session_live(login, daphne, simulator, fast_speech):
    operator = await login("alice")
    page = operator.page
    offers: list[str] = []
    await keep_offers_on_loopback(page, offers)
    await page.click("nav >> text=Call the agent")
    await page.wait_for_url(f"{daphne.http_url}/console/call/")
    await operator.screenshot("call-page-idle-1280")
    assert UPSTREAM_KEY not in await page.content()

    answers: list[str] = []
    page.on("response", lambda r: "/v1/realtime/calls" in r.url and answers.append(r))
    await page.click("[data-call]")
    await page.wait_for_selector("[data-call-badge][data-state=live]", timeout=15000)
    link = await page.wait_for_selector("[data-call-session-link]:visible", timeout=15000)
    session_id = (await link.text_content()).strip()
    assert session_id.startswith("sess_")
    assert offers and all(host == "127.0.0.1" for host in candidate_hosts(offers[0]))
    answer_text = await answers[0].text()
    assert answers[0].status == 201 and UPSTREAM_KEY not in answer_text and UPSTREAM_KEY not in str(await answers[0].all_headers())
    await page.wait_for_selector("[data-call-events] li", timeout=5000)
    await operator.screenshot("call-page-live-1280")

    # The session page (another tab of the same login) shows the call live.
    session_page = await page.context.new_page()
    await session_page.goto(f"{daphne.http_url}{await link.get_attribute('href')}")
    await session_page.wait_for_selector("[data-session-status]:text('live')", timeout=10000)
    assert "webrtc" in await session_page.text_content(".meta")
    assert UPSTREAM_KEY not in await session_page.content()
    # The fake microphone's second of tone is a turn of the caller's: server VAD answers it. A
    # nudge sent while that turn is still being detected would be cut by it (turn_detected), so
    # the nudge waits for the agent's answer to it.
    await page.wait_for_selector(".transcript .role-agent p", timeout=20000)
    # A nudge from the session page is answered in the call: its reply shows on the call page.
    await session_page.fill("#instructions", "Say the words BLUE HERON.")
    await session_page.click("[data-send]")
    await page.wait_for_selector(".transcript .role-agent p:has-text('BLUE HERON')", timeout=20000)
    await session_page.close()

    await page.set_viewport_size({"width": 390, "height": 844})
    await operator.screenshot("call-page-live-390")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways at 390 px ({width} px wide)"

    await page.click("[data-hangup]")
    await page.wait_for_selector("[data-call-badge][data-state=ended]", timeout=5000)
    assert await page.is_enabled("[data-call]")
    # The call is over upstream, so the console's session ends too.
    for _ in range(100):
        session = await LiveSession.objects.aget(upstream_id=session_id)
        if session.status != "live":
            break
        await asyncio.sleep(0.1)
    assert (session.status, session.end_reason) == ("ended", "hung_up"), "hung up, by whom"
    await page.set_viewport_size({"width": 1280, "height": 800})
    await operator.screenshot("call-page-ended-1280")
    assert operator.errors == []


@pytest.fixture
def another_site():
    """A page on another origin (another port of 127.0.0.1): a customer's own web app."""
    import http.server
    import threading

    class Blank(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<!doctype html><title>A customer's app</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Blank)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


async def test_another_sites_page_reaches_the_calls_endpoint_through_cors(chromium, daphne, api_token, another_site):
    """Chromium's own CORS: the preflight for a bearer token passes, and the page reads the
    answer (here the refusal of a body that is no offer, so no call is placed)."""
    page = await (await chromium.new_context()).new_page()
    await page.goto(another_site)
    answer = await page.evaluate(
        """async ([url, token]) => {
            const response = await fetch(url, {method: "POST", body: "not an offer",
                headers: {Authorization: `Bearer ${token}`, "Content-Type": "application/sdp"}});
            return [response.status, await response.json()];
        }""",
        [f"{daphne.http_url}/v1/realtime/calls", api_token],
    )
    assert answer == [400, {"error": {
        "type": "invalid_request_error", "code": "invalid_value",
        "message": "The SDP offer is missing or is not SDP (it must start with v=).", "param": "sdp",
    }}]
