"""Security (issue 5): sockets end with the login, CSRF on console forms, and the upstream
key and API tokens appear in no page, API response or log line."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
import websockets
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from apps.sessions.models import ApiToken
from operator_console.asgi import application
from tests.conftest import UPSTREAM_KEY
from tests.support.realtime import user_text

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://127.0.0.1")
HOST = (b"host", b"127.0.0.1")  # as a browser's handshake names the site it opens


@pytest.fixture
def operator_cookie(transactional_db) -> str:
    user = get_user_model().objects.create_user("op", password="pw-for-tests")
    user.user_permissions.add(Permission.objects.get(codename="steer_session"))
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


@pytest.fixture
def listener_cookie(operator_cookie) -> str:
    Permission.objects.get(codename="listen_session").user_set.add(get_user_model().objects.get())
    return operator_cookie


def _http(cookie: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application),
        base_url="http://127.0.0.1",
        cookies={"sessionid": cookie},
    )


async def _open_console(cookie: str) -> WebsocketCommunicator:
    console = WebsocketCommunicator(
        application,
        "/ws/console/",
        headers=[HOST, ORIGIN, (b"cookie", f"sessionid={cookie}".encode())],
    )
    assert (await console.connect(timeout=5))[0]
    return console


async def test_logging_out_closes_the_operators_open_console_socket(operator_cookie):
    console = await _open_console(operator_cookie)
    async with _http(operator_cookie) as http:
        page = await http.get("/console/")
        assert page.status_code == 200
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        out = await http.post("/accounts/logout/", data={"csrfmiddlewaretoken": token})
        assert out.status_code == 302
        assert "You have signed out." in (await http.get(out.headers["Location"])).text
    closed = await console.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4401}
    again = WebsocketCommunicator(
        application,
        "/ws/console/",
        headers=[HOST, ORIGIN, (b"cookie", f"sessionid={operator_cookie}".encode())],
    )
    assert not (await again.connect(timeout=5))[0], "the old session cookie no longer opens a socket"


@pytest.mark.parametrize("change", ["turned off", "deleted", "password changed"])
async def test_an_operator_turned_off_or_deleted_loses_their_open_console_socket(operator_cookie, change):
    """An admin turns off (or deletes) the account of an operator whose console is open, or
    changes its password (a leaked login): the socket closes at once, as at a logout, instead
    of watching on until it reconnects."""
    console = await _open_console(operator_cookie)
    user = await get_user_model().objects.aget(username="op")
    if change == "turned off":
        user.is_active = False
        await user.asave()
    elif change == "password changed":
        user.set_password("a-new-password")
        await user.asave()
    else:
        await user.adelete()
    closed = await console.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4401}


async def test_saving_an_operator_without_a_new_password_keeps_their_socket(operator_cookie):
    """Only a new password ends the sockets: a save of other fields (their name, another
    login's `last_login`) leaves the operator's open console alone."""
    console = await _open_console(operator_cookie)
    user = await get_user_model().objects.aget(username="op")
    user.first_name = "Olga"
    await user.asave()
    await user.asave(update_fields=["last_login"])
    assert await console.receive_nothing(timeout=0.5)
    await console.disconnect()


async def test_a_console_post_without_the_csrf_token_is_refused(operator_cookie, caller):
    async with _http(operator_cookie) as http:
        forged = await http.post(f"/console/sessions/{caller.session_id}/responses", data={"instructions": "x"})
    assert forged.status_code == 403
    # The console's own page, saying what happened and what to do: not Django's bare one.
    assert "This page is out of date" in forged.text and "Nothing was sent or changed." in forged.text
    assert "Reason: CSRF cookie not set." in forged.text
    async with _http(operator_cookie) as http:
        await http.get("/console/")  # the CSRF cookie; the form's token is from an older login
        stale = await http.post(
            f"/console/sessions/{caller.session_id}/responses",
            data={"instructions": "x", "csrfmiddlewaretoken": "x" * 64},
            headers={"Referer": "http://127.0.0.1/console/"},
        )
    assert stale.status_code == 403
    assert "loaded before you last signed in or out" in stale.text


@pytest.mark.parametrize("path", ["/ws/console/", "/ws/console/sessions/sess_any/audio"])
@pytest.mark.parametrize(
    "origin",
    [b"http://127.0.0.1:9999", b"https://127.0.0.1", b"http://evil.example"],
    ids=["another-port", "another-scheme", "another-host"],
)
async def test_an_operators_socket_opens_from_this_sites_own_origin_only(
    listener_cookie, path, origin
):
    """A page of another port or scheme of the same host (or of a subdomain an ALLOWED_HOSTS
    pattern admits) is another site, whose handshakes carry the operator's cookie all the same:
    it must not read the live sessions or hear a call. The relay refuses it likewise."""
    cookie = (b"cookie", f"sessionid={listener_cookie}".encode())
    foreign = WebsocketCommunicator(application, path, headers=[HOST, (b"origin", origin), cookie])
    connected, _ = await foreign.connect(timeout=5)  # closed before accept: Daphne's 403
    assert not connected, f"a handshake from {origin.decode()} is refused"
    own = WebsocketCommunicator(application, path, headers=[HOST, ORIGIN, cookie])
    assert (await own.connect(timeout=5))[0], "this site's own page still connects"
    await own.disconnect()


def test_tokens_are_stored_only_as_digests(api_token):
    row = ApiToken.objects.get()
    stored = json.dumps([str(value) for value in ApiToken.objects.values_list().get()])
    assert api_token not in stored and row.digest == ApiToken.hash(api_token)


@pytest.mark.e2e
async def test_the_upstream_key_and_tokens_appear_in_no_page_response_or_log(daphne, api_token, operator_cookie):
    seen: list[str] = []
    headers = {"Authorization": f"Bearer {api_token}"}
    async with websockets.connect(f"{daphne.ws_base}/realtime?model=gpt-realtime", additional_headers=headers) as socket:
        created = await socket.recv()
        seen.append(created)
        session_id = json.loads(created)["session"]["id"]
        await socket.send(json.dumps({"type": "conversation.item.create", "item": user_text("hi")}))
        await socket.send(json.dumps({"type": "response.create"}))
        await socket.send("not json")
        while '"response.done"' not in (frame := await socket.recv()):
            seen.append(frame)
        seen.append(frame)
        async with httpx.AsyncClient(base_url=daphne.http_url, headers=headers) as rest:
            for method, path, body in (
                ("GET", "/api/v1/sessions?status=live", None),
                ("GET", f"/api/v1/sessions/{session_id}", None),
                ("POST", f"/api/v1/sessions/{session_id}/responses", {"metadata": {"k": 1}}),
                ("POST", f"/api/v1/sessions/{session_id}/responses", {}),
                ("GET", f"/api/v1/sessions/{session_id}/responses", None),
                ("GET", "/api/v1/openapi.json", None),
                ("GET", "/api/v1/docs", None),
                ("GET", "/readyz", None),
            ):
                seen.append((await rest.request(method, path, json=body)).text)
            seen.append((await rest.get("/api/v1/sessions", headers={"Authorization": "Bearer wrong"})).text)
        async with httpx.AsyncClient(base_url=daphne.http_url, cookies={"sessionid": operator_cookie}) as browser:
            for path in ("/console/", f"/console/sessions/{session_id}/", "/accounts/login/"):
                seen.append((await browser.get(path, follow_redirects=True)).text)
    log = daphne.output()
    for text in seen + [log]:
        assert UPSTREAM_KEY not in text
    for text in seen:
        assert api_token not in text, "a token was sent back"
    assert api_token not in log, "a token was written to the log"
    assert '"event":"request.status"' in log, "transitions are logged (structured)"


@pytest.fixture
def revocable(make_token) -> tuple[str, ApiToken]:
    plain = make_token(name="soon-revoked")
    return plain, ApiToken.objects.get(digest=ApiToken.hash(plain))


async def test_a_revoked_token_is_refused_at_once(revocable):
    from asgiref.sync import sync_to_async

    from apps.sessions.tokens import api_token_revoke

    plain, token = revocable
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application),
        base_url="http://127.0.0.1",
        headers={"Authorization": f"Bearer {plain}"},
    ) as rest:
        assert (await rest.get("/api/v1/sessions")).status_code == 200
        await sync_to_async(api_token_revoke)(token=token)
        assert (await rest.get("/api/v1/sessions")).status_code == 401, "the very next call is refused"


async def test_keys_a_revoked_token_minted_are_refused_with_it(revocable):
    """A key minted with a token stands for that token: revoking the token (a leaked one,
    say) must not leave its keys opening sessions and placing calls for up to two hours."""
    from asgiref.sync import sync_to_async

    from apps.sessions.tokens import api_token_revoke

    plain, token = revocable
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url="http://127.0.0.1"
    ) as http:
        minted = await http.post(
            "/v1/realtime/client_secrets", json={}, headers={"Authorization": f"Bearer {plain}"}
        )
        key = minted.json()["value"]
        await sync_to_async(api_token_revoke)(token=token)
        call = await http.post(
            "/v1/realtime/calls",
            content=b"v=0\r\n",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/sdp"},
        )
    assert call.status_code == 401 and call.json()["error"]["code"] == "invalid_client_secret"
    relay = WebsocketCommunicator(
        application, "/v1/realtime", headers=[(b"authorization", f"Bearer {key}".encode())]
    )
    assert not (await relay.connect(timeout=5))[0], "the relay refuses the key too"


async def _answer_to(port: int, head: bytes, body: bytes = b"") -> bytes:
    """What the server answers to a request of `head` and then `body`, read while the body is
    still being sent (the server may answer, and close, before it has all of it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        try:
            writer.write(head)
            for start in range(0, len(body), 1 << 20):
                writer.write(body[start:start + (1 << 20)])
                await writer.drain()
        except ConnectionError:
            pass  # refused and closed mid-body: the answer says so

    sending = asyncio.create_task(send())
    try:
        return await asyncio.wait_for(reader.read(4096), timeout=10)
    finally:
        sending.cancel()
        writer.close()


@pytest.mark.e2e
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_huge_request_body_is_refused_before_it_is_stored(daphne, framing):
    """Twisted keeps a request's whole body (in a temporary file past 100 kB), then Django
    copies it again, before any view can look at its size: without a bound, anyone could fill
    the server's disk with one POST. A body over the bound is refused with 413 as it comes."""
    from operator_console.daphne_compat import MAX_BODY_BYTES

    target = b"POST /v1/webhooks/openai HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if framing == "content-length":
        head = target + b"Content-Length: %d\r\n\r\n" % (1 << 40)  # a terabyte, announced
        answer = await _answer_to(daphne.port, head)
    else:
        chunk = b"%x\r\n%s\r\n" % (1 << 20, b"x" * (1 << 20))
        head = target + b"Transfer-Encoding: chunked\r\n\r\n"
        answer = await _answer_to(daphne.port, head, chunk * (MAX_BODY_BYTES // (1 << 20) + 2))
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b'"code": "request_too_large"' in answer and str(MAX_BODY_BYTES).encode() in answer


async def _relay_session(headers) -> WebsocketCommunicator:
    relay = WebsocketCommunicator(application, "/v1/realtime?model=gpt-realtime", headers=headers)
    assert (await relay.connect(timeout=5))[0]
    created = json.loads(await relay.receive_from(timeout=5))
    assert created["type"] == "session.created"
    relay.session_id = created["session"]["id"]
    return relay


async def _ended_saying(relay: WebsocketCommunicator, detail: str) -> None:
    """The session's record says why it ended: the caller did not close it."""
    from apps.sessions.history import writer as history
    from apps.sessions.models import LiveSession

    await history.flush()
    session = await LiveSession.objects.aget(upstream_id=relay.session_id)
    assert (session.status, session.end_reason, session.end_detail) == (
        "ended", "caller_closed", detail,
    )


async def _closed(relay: WebsocketCommunicator) -> dict:
    """The close the relay sent, past the events before it; then the caller goes."""
    while (output := await relay.receive_output(timeout=5))["type"] != "websocket.close":
        pass
    await relay.disconnect(timeout=5)
    return output


@pytest.mark.parametrize("credential", ["token", "minted key"])
async def test_revoking_a_token_ends_the_relay_sessions_it_opened(
    relay_settings, simulator, revocable, credential
):
    """A leaked token is revoked: the sessions it (or a key it minted) has open end too, rather
    than talking on to the model for as long as they like (a session moves to a fresh
    upstream before the service's 60 minutes are up, so it has no end of its own)."""
    from asgiref.sync import sync_to_async

    from apps.sessions.tokens import api_token_revoke

    plain, token = revocable
    if credential == "minted key":
        async with _http("") as http:
            minted = await http.post(
                "/v1/realtime/client_secrets", json={}, headers={"Authorization": f"Bearer {plain}"}
            )
        plain = minted.json()["value"]
    relay = await _relay_session([(b"authorization", f"Bearer {plain}".encode())])
    await sync_to_async(api_token_revoke)(token=token)
    assert (await _closed(relay))["code"] == 4401
    await _ended_saying(relay, "The token that opened this session was revoked.")


@pytest.mark.parametrize("change", ["logged out", "turned off"])
async def test_an_operator_logged_out_or_turned_off_loses_the_relay_session_they_opened(
    relay_settings, simulator, operator_cookie, change
):
    cookie = (b"cookie", f"sessionid={operator_cookie}".encode())
    relay = await _relay_session([HOST, ORIGIN, cookie])
    if change == "logged out":
        async with _http(operator_cookie) as http:
            page = await http.get("/console/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
            await http.post("/accounts/logout/", data={"csrfmiddlewaretoken": token})
    else:
        user = await get_user_model().objects.aget(username="op")
        user.is_active = False
        await user.asave()
    assert (await _closed(relay))["code"] == 4401
    await _ended_saying(relay, "The console login that opened this session has ended.")
