"""`/ws/console/` on the real application: who may connect, what a watcher receives, and how
often (deltas coalesced), with a real caller session on the simulator."""

from __future__ import annotations

import asyncio

import pytest
from autobahn.exception import Disconnected
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from apps.sessions import db
from apps.sessions.history import writer as history
from apps.sessions.models import LiveSession
from operator_console.asgi import application
from tests.support.realtime import user_text

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://127.0.0.1:8000")
HOST = (b"host", b"127.0.0.1:8000")  # as a browser's handshake names the site it opens


def _cookie(name: str) -> bytes:
    user = get_user_model().objects.create_user(name, password="pw-for-tests")
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


@pytest.fixture
def cookies(transactional_db) -> dict[str, bytes]:
    return {"alice": _cookie("alice"), "bob": _cookie("bob")}


async def _console(cookie: bytes | None, origin=ORIGIN) -> tuple[WebsocketCommunicator, bool]:
    headers = [h for h in (HOST, origin, (b"cookie", cookie) if cookie else None) if h]
    communicator = WebsocketCommunicator(application, "/ws/console/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    return communicator, connected


async def _receive(communicator, kind: str, timeout: float = 5.0) -> dict:
    while True:
        message = await communicator.receive_json_from(timeout=timeout)
        if message["type"] == kind:
            return message


async def test_only_logged_in_operators_from_this_site_connect(cookies):
    _, anonymous = await _console(None)
    assert not anonymous, "no login, no socket"
    _, foreign = await _console(cookies["alice"], origin=(b"origin", b"https://evil.example"))
    assert not foreign, "a foreign page cannot use the operator's cookie"
    _, missing = await _console(cookies["alice"], origin=None)
    assert not missing, "a cookie without an Origin is refused"
    communicator, ok = await _console(cookies["alice"])
    assert ok
    await communicator.disconnect()


async def test_the_dashboard_lists_live_sessions(caller, cookies):
    communicator, _ = await _console(cookies["alice"])
    await communicator.send_json_to({"type": "watch.sessions"})
    listing = await _receive(communicator, "sessions")
    [session] = [s for s in listing["rows"] if s["id"] == caller.session_id]
    assert listing["total"] == listing["live"] == 1 and listing["page"] == listing["pages"] == 1
    assert session["state"] == "idle" and session["connected_by"] == "token:caller"
    assert set(listing["stats"]) == {"nudges_last_minute", "median_nudge_to_start_ms"}
    await communicator.disconnect()


async def test_a_watcher_gets_a_snapshot_then_coalesced_transcript_updates(caller, cookies, simulator):
    communicator, _ = await _console(cookies["alice"])
    await communicator.send_json_to({"type": "watch.session", "session_id": caller.session_id})
    snapshot = await _receive(communicator, "snapshot")
    assert snapshot["watchers"] == [] or snapshot["watchers"] == ["alice"]
    assert (await _receive(communicator, "presence"))["watchers"] == ["alice"]

    with simulator.configured(deltas_per_response=60, delta_interval=0.005):
        await caller.send({"type": "conversation.item.create", "item": user_text("Tell me everything.")})
        await caller.send({"type": "response.create"})
        await caller.until("response.done")
    updates = []  # until the one that carries the agent's finished text
    while not any(e["role"] == "agent" and e.get("done") for u in updates for e in u["entries"]):
        message = await communicator.receive_json_from(timeout=5)
        if message["type"] == "transcript":
            updates.append(message)
    deltas = sum(e["type"] == "response.output_text.delta" for e in caller.events)
    assert deltas == 60
    assert 2 <= len(updates) <= 12, f"{len(updates)} transcript messages for {deltas} deltas"
    agent = [e for u in updates for e in u["entries"] if e["role"] == "agent"]
    final = [e for e in agent if e.get("done")]
    assert final and "Tell me everything." in final[-1]["text"]
    appended = "".join(e.get("append", "") for e in agent)
    assert final[-1]["text"].startswith(appended[:40]), "appends build the same text"
    user = [e for u in updates for e in u["entries"] if e["role"] == "user"]
    assert user and user[0]["text"] == "Tell me everything."
    await communicator.disconnect()


async def test_a_new_watcher_is_told_the_requests_as_they_are_now(caller, cookies):
    """A page shows the requests as rendered, then what its socket tells: a change between
    the two (a response that ended meanwhile) reaches the page when it starts watching."""
    await caller.send({"type": "conversation.item.create", "item": user_text("Hello?")})
    await caller.send({"type": "response.create"})
    await caller.until("response.done")
    await history.flush()
    communicator, _ = await _console(cookies["alice"])
    await communicator.send_json_to({"type": "watch.session", "session_id": caller.session_id})
    told = await _receive(communicator, "request")
    assert (told["origin"], told["status"]) == ("caller", "completed")
    await communicator.disconnect()


async def test_a_change_not_yet_in_the_table_comes_with_the_snapshot(caller, cookies):
    """The history writer commits a response a moment after the actor has it: a page that
    starts watching in that moment reads the table before it, and the snapshot has it."""
    await caller.send({"type": "conversation.item.create", "item": user_text("Hello?")})
    await history.flush()
    with db.serialised_write():  # the writer's next commit waits: the end stays uncommitted
        await caller.send({"type": "response.create"})
        await caller.until("response.done")
        communicator, _ = await _console(cookies["alice"])
        await communicator.send_json_to({"type": "watch.session", "session_id": caller.session_id})
        from_table = []
        while (message := await communicator.receive_json_from(timeout=5))["type"] != "snapshot":
            from_table += [message] if message["type"] == "request" else []
    assert from_table == [], "the table has not even the caller's request yet"
    [told] = message["requests"]
    assert (told["origin"], told["status"]) == ("caller", "completed")
    await communicator.disconnect()


async def test_presence_follows_who_watches(caller, cookies):
    alice, _ = await _console(cookies["alice"])
    bob, _ = await _console(cookies["bob"])
    await alice.send_json_to({"type": "watch.session", "session_id": caller.session_id})
    await _receive(alice, "snapshot")
    await bob.send_json_to({"type": "watch.session", "session_id": caller.session_id})
    while (await _receive(alice, "presence"))["watchers"] != ["alice", "bob"]:
        pass
    await bob.disconnect()
    assert (await _receive(alice, "presence"))["watchers"] == ["alice"]
    await history.flush()
    session = await LiveSession.objects.aget(upstream_id=caller.session_id)
    assert session.watchers == ["alice"], "the dashboard reads who watches from the table"
    await alice.disconnect()
    layer = get_channel_layer()
    assert not layer.groups.get(f"watch.{session.id.hex}"), "no watcher left in the group"


async def test_out_of_band_output_reaches_watchers_marked_and_never_the_caller(caller, cookies, rest):
    communicator, _ = await _console(cookies["alice"])
    await communicator.send_json_to({"type": "watch.session", "session_id": caller.session_id})
    await _receive(communicator, "snapshot")
    posted = await rest.post(
        f"/sessions/{caller.session_id}/responses",
        json={"conversation": "none", "instructions": "Summarise the call so far."},
    )
    assert posted.status_code == 202
    entry = None
    while entry is None or not entry.get("done"):
        message = await _receive(communicator, "transcript")
        entry = next((e for e in message["entries"] if e["role"] == "agent"), entry)
    assert entry["oob"] is True and "Summarise the call so far." in entry["text"]
    assert await caller.communicator.receive_nothing(timeout=0.3)
    assert not [e for e in caller.events if "Summarise" in str(e)]
    await communicator.disconnect()


async def test_an_ended_session_says_so_to_its_watchers(caller, cookies):
    communicator, _ = await _console(cookies["alice"])
    await communicator.send_json_to({"type": "watch.session", "session_id": caller.session_id})
    await _receive(communicator, "snapshot")
    await caller.communicator.disconnect()
    ended = await _receive(communicator, "ended")
    assert ended["status"] == "ended" and ended["reason"] == "caller_closed"
    await communicator.disconnect()


async def test_dashboards_arriving_together_share_one_feed_task(cookies):
    sockets = [(await _console(cookies["alice"]))[0] for _ in range(5)]
    for socket in sockets:
        await socket.send_json_to({"type": "watch.sessions"})
    for socket in sockets:
        await _receive(socket, "sessions")
    feeds = [t for t in asyncio.all_tasks() if t.get_name() == "dashboard-feed" and not t.done()]
    assert len(feeds) == 1, f"{len(feeds)} feed tasks for one process"
    for socket in sockets:
        await socket.disconnect()


class _AsDaphne:
    """The application behind a server that refuses a send once the browser's socket has
    closed, as Daphne does (autobahn's `Disconnected`)."""

    def __init__(self) -> None:
        self.closed = False
        self.refused = 0

    async def __call__(self, scope, receive, send):
        async def refusing_send(message):
            if self.closed and message["type"] == "websocket.send":
                self.refused += 1
                raise Disconnected("Attempt to send on a closed protocol")
            await send(message)

        await application(scope, receive, refusing_send)


async def test_a_message_for_a_socket_the_browser_just_closed_is_dropped_quietly(cookies):
    server = _AsDaphne()
    headers = [HOST, ORIGIN, (b"cookie", cookies["alice"])]
    communicator = WebsocketCommunicator(server, "/ws/console/", headers=headers)
    assert (await communicator.connect(timeout=5))[0]
    server.closed = True  # the browser left; its disconnect is not yet in the consumer
    await communicator.send_json_to({"type": "watch.session", "session_id": "sess_gone"})
    await communicator.disconnect(timeout=5)  # raises what the consumer ended with
    assert server.refused == 1


class _Viewer:
    """A dashboard socket, as the feed sees one: what it was sent."""

    def __init__(self) -> None:
        self.pages: list[dict] = []

    async def send_json(self, content, close=False) -> None:
        self.pages.append(content)


async def test_a_new_viewers_older_read_is_followed_by_the_newer_page(monkeypatch):
    """A new viewer's page is read afresh; under load that read could finish after a newer
    one of the feed's task, whose page had gone out meanwhile. The older page then stayed on
    the dashboard until something else changed: the task saw nothing new to send."""
    import threading

    from asgiref.sync import sync_to_async

    from apps.console import feed as feed_module

    await sync_to_async(LiveSession.objects.create)(
        upstream_id="sess_feed_late", model="gpt-realtime", status="live", label="before"
    )
    real_read, reads = feed_module._read, []
    started, release = threading.Event(), threading.Event()

    def read():
        result = real_read()
        reads.append(result)
        started.set()
        if len(reads) == 1:  # the new viewer's read: done, but slow to come back
            assert release.wait(10)
        return result

    monkeypatch.setattr(feed_module, "_read", read)
    feed = feed_module.Feed(interval=3600)  # reads when the test says, not on a clock
    viewer = _Viewer()
    adding = asyncio.ensure_future(feed.add(viewer))
    assert await asyncio.to_thread(started.wait, 10)
    row = LiveSession.objects.filter(upstream_id="sess_feed_late")
    await sync_to_async(row.update)(label="after")
    await feed.once()  # the task's newer read goes out first
    release.set()
    await adding  # then the new viewer's older one

    def label() -> str:
        return viewer.pages[-1]["rows"][0]["label"]

    assert label() == "before", "the race was not set up"
    await feed.once()
    assert label() == "after", "the older page stayed"
    feed.discard(viewer)
    feed._task.cancel()


async def test_a_change_of_view_is_cut_from_the_feeds_latest_read():
    """Each change of search, filter, sort or page read every live session again, so with a
    thousand live sessions the page answered the operator's typing most of a second late.
    While the feed runs, a change is cut from its latest read; its next read sends what
    changed since. A new viewer follows a page just rendered, and is read afresh."""
    from asgiref.sync import sync_to_async

    from apps.console.dashboard import View
    from apps.console.feed import Feed

    def live(*session_ids: str) -> None:
        for session_id in session_ids:
            LiveSession.objects.create(upstream_id=session_id, model="gpt-realtime", status="live")

    await sync_to_async(live)("sess_feed_a", "sess_feed_b")
    feed = Feed(interval=3600)  # reads when the test says, not on a clock
    viewer = _Viewer()
    await feed.add(viewer)
    await feed.once()  # the task's read
    ended = LiveSession.objects.filter(upstream_id="sess_feed_b")
    await sync_to_async(ended.update)(status="ended")
    await feed.add(viewer, View(q="feed"))

    def shown(watching: _Viewer) -> list[str]:
        return sorted(row["id"] for row in watching.pages[-1]["rows"])

    assert viewer.pages[-1]["view"] == {"q": "feed"}
    assert shown(viewer) == ["sess_feed_a", "sess_feed_b"], "not cut from the latest read"
    newcomer = _Viewer()
    await feed.add(newcomer)
    assert shown(newcomer) == ["sess_feed_a"], "a new viewer was sent an older page"
    await feed.once()
    assert shown(viewer) == ["sess_feed_a"], "the next read sends what changed"
    for watching in (viewer, newcomer):
        feed.discard(watching)
    feed._task.cancel()


async def test_operators_on_the_same_view_share_one_page_a_read(monkeypatch):
    """A read cuts one page per distinct view, however many operators watch it; the figures
    of the whole fleet (how many live, which models, the cost) are counted once and are the
    same on every page, and a model named in a link stays among the choices."""
    from asgiref.sync import sync_to_async

    from apps.console.dashboard import View
    from apps.console.feed import Feed

    def live() -> None:
        for n, model in enumerate(("gpt-realtime", "gpt-realtime", "gpt-realtime-mini")):
            LiveSession.objects.create(upstream_id=f"sess_share_{n}", model=model, status="live")

    await sync_to_async(live)()
    feed = Feed(interval=3600)  # reads when the test says, not on a clock
    crowd, alone = [_Viewer() for _ in range(5)], _Viewer()
    for viewer in crowd:
        await feed.add(viewer)
    await feed.add(alone, View(model="gpt-4o-realtime-preview"))
    cut = []
    real_page_of = View.page_of
    monkeypatch.setattr(View, "page_of", lambda view, *a: cut.append(view) or real_page_of(view, *a))
    await sync_to_async(LiveSession.objects.filter(upstream_id="sess_share_0").update)(label="x")
    await feed.once()

    assert sorted(view.model for view in cut) == ["", "gpt-4o-realtime-preview"]
    pages = [viewer.pages[-1] for viewer in (*crowd, alone)]
    assert all(page == pages[0] for page in pages[:5])
    assert [row["label"] for row in pages[0]["rows"] if row["id"] == "sess_share_0"] == ["x"]
    assert pages[-1]["rows"] == [] and pages[-1]["live"] == pages[0]["live"] == 3
    assert pages[0]["models"] == ["gpt-realtime", "gpt-realtime-mini"]
    assert pages[-1]["models"] == ["gpt-4o-realtime-preview", "gpt-realtime", "gpt-realtime-mini"]
    for viewer in (*crowd, alone):
        feed.discard(viewer)
    feed._task.cancel()
