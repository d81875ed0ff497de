"""A caller's items around an upstream rotation, in every order the two upstreams may answer.

A `Wire` runs one session through the relay core (`rotate_after=6`, as in test_rotation.py)
with two fake upstreams as queues: what the core sends each waits in its inbox, what each
answers waits in its outbox, and a step moves one of them on. The actor's routing is followed:
the session's upstream's events reach `upstream_frame`; the fresh leg's reach `fresh_frame`
until the swap, after which the fresh leg is the session's upstream and the old one is closed,
with whatever it had not yet answered, or not yet delivered, lost.

The invariant (`Wire.check`): once every queue is empty, the session's upstream holds the
conversation from before and every item the caller created, in the order sent, each once; it
was sent each of them once; and the caller was told of each (`conversation.item.added`) once.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.realtime.relay import ToCaller, ToUpstream
from apps.realtime.rotation import CloseFresh, OpenFresh, SwapUpstream, ToFresh
from tests.realtime.test_rotation import AGENT_ITEM, GA_ACKS, USER_ITEM, frame, started

BEFORE = [USER_ITEM["id"], AGENT_ITEM["id"]]


class FakeUpstream:
    """An upstream session as queues: it answers what it is sent in order, as the GA service
    does (an item's `.added` and `.done`, `session.updated`, a retrieve or its `error`)."""

    def __init__(self, session_id: str, items: list[dict] | None = None) -> None:
        self.session_id = session_id
        self.items: list[dict] = list(items or [])
        self.inbox: list[str | bytes] = []
        self.outbox: list[str] = [frame("session.created", session={"id": session_id})]
        self.created: list[str] = []  # the ids of the items it was asked to create, in order

    @property
    def ids(self) -> list[str]:
        return [item["id"] for item in self.items]

    def answer_one(self) -> None:
        text = self.inbox.pop(0)
        if type(text) is bytes:
            return
        event = json.loads(text)
        kind = event["type"]
        if kind == "session.update":
            updated = {"id": self.session_id, **event["session"]}
            self.outbox.append(frame("session.updated", session=updated))
        elif kind == "conversation.item.create":
            item = {**event["item"], "object": "realtime.item", "status": "completed"}
            self.created.append(item["id"])
            if item["id"] in self.ids:
                self.outbox.append(self.error("item_already_exists", event))
                return
            previous = event.get("previous_item_id")
            index = self.ids.index(previous) + 1 if previous in self.ids else len(self.items)
            self.items.insert(index, item)
            before = self.items[index - 1]["id"] if index else None
            self.outbox += [frame(ack, previous_item_id=before, item=item) for ack in GA_ACKS]
        elif kind == "conversation.item.retrieve":
            found = [item for item in self.items if item["id"] == event["item_id"]]
            if found:
                self.outbox.append(frame("conversation.item.retrieved", item=found[0]))
            else:
                self.outbox.append(self.error("item_not_found", event))

    @staticmethod
    def error(code: str, event: dict) -> str:
        fields = {"type": "invalid_request_error", "code": code, "message": code}
        return frame("error", error={**fields, "event_id": event.get("event_id")})


class Wire:
    """One session with its conversation (`item_u1`, `item_a1`) on the old upstream, the fresh
    leg attached as soon as the core asks for it."""

    def __init__(self) -> None:
        self.core = started()
        self.upstream = FakeUpstream("sess_1", [dict(USER_ITEM), dict(AGENT_ITEM)])
        self.upstream.outbox.clear()  # its session.created was read by `started`
        self.fresh: FakeUpstream | None = None
        self.now = 4.0
        self.sent: list[str] = []
        self.told: list[str] = []  # the item ids of the caller's `conversation.item.added`

    def take(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, ToUpstream):
                self.upstream.inbox.append(action.frame)
            elif isinstance(action, ToFresh):
                assert self.fresh is not None
                self.fresh.inbox.append(action.frame)
            elif isinstance(action, ToCaller):
                event = json.loads(action.frame)
                if event["type"] == "conversation.item.added":
                    self.told.append(event["item"]["id"])
            elif isinstance(action, OpenFresh):
                self.fresh = FakeUpstream(f"sess_{len(self.core.rotation.state.session_ids) + 1}")
                self.take(self.core.rotation.fresh_attached(now=self.now))
            elif isinstance(action, CloseFresh):
                self.fresh = None
            elif isinstance(action, SwapUpstream):
                assert self.fresh is not None
                self.upstream, self.fresh = self.fresh, None  # the old one closes: all lost

    # ------------------------------------------------------------------ steps

    def create(self) -> None:
        item_id = f"item_c{len(self.sent) + 1}"
        self.sent.append(item_id)
        item = {
            "id": item_id,
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": item_id}],
        }
        created = frame("conversation.item.create", item=item)
        self.take(self.core.caller_frame(created, now=self.now))

    def tick(self) -> None:
        self.now += 0.5
        self.take(self.core.tick(now=self.now))

    def up(self) -> None:
        """The session's upstream answers one thing it was sent."""
        if self.upstream.inbox:
            self.upstream.answer_one()

    def up_event(self) -> None:
        """One event of the session's upstream reaches the core."""
        if self.upstream.outbox:
            self.take(self.core.upstream_frame(self.upstream.outbox.pop(0), now=self.now))

    def fresh_all(self) -> None:
        """The fresh leg answers all it was sent, and its events reach the core, one by one
        (the core's answers to them included)."""
        while self.fresh is not None and (self.fresh.inbox or self.fresh.outbox):
            if self.fresh.inbox:
                self.fresh.answer_one()
            else:
                event = self.fresh.outbox.pop(0)
                self.take(self.core.rotation.fresh_frame(event, now=self.now))

    def old_all(self) -> None:
        while self.upstream.inbox or self.upstream.outbox:
            self.up()
            self.up_event()

    def settle(self) -> None:
        """Everything answered and delivered; time goes on until a rotation has been made."""
        for _ in range(60):
            self.old_all()
            self.fresh_all()
            if self.core.rotation.state.rotations and not self.core.rotation.holding:
                self.old_all()
                return
            self.tick()
        raise AssertionError("no rotation was made")

    def check(self) -> None:
        self.settle()
        expected = BEFORE + self.sent
        assert self.upstream.ids == expected, "the session's upstream lacks an item or order"
        for item_id in self.sent:
            assert self.upstream.created.count(item_id) == 1, f"{item_id} sent upstream twice"
            assert self.told.count(item_id) == 1, f"the caller was told of {item_id} != once"


STEPS = {
    "create": Wire.create,
    "tick": Wire.tick,
    "up": Wire.up,
    "up_event": Wire.up_event,
    "fresh": Wire.fresh_all,
}


def run(steps: list[str]) -> Wire:
    wire = Wire()
    for step in steps:
        STEPS[step](wire)
    return wire


@pytest.mark.parametrize(
    "steps",
    [
        # Created while the fresh leg waits for the rotation to be due (open).
        pytest.param(["tick", "create", "up", "up_event", "up_event"], id="open, acked, due"),
        pytest.param(
            ["tick", "create", "up", "tick", "tick", "tick", "fresh", "up_event", "up_event"],
            id="open, due, replay built, old acks it after the fresh leg is ready",
        ),
        pytest.param(
            ["tick", "create", "tick", "tick", "tick", "up", "up_event", "up_event", "fresh"],
            id="open, due, replay built, old acks it before the fresh leg is ready",
        ),
        pytest.param(
            ["tick", "create", "tick", "tick", "tick", "fresh", "up", "up_event"],
            id="open, due, the fresh leg ready before the old upstream read it",
        ),
        # Created once the rotation is due, while a response streams (the queue held).
        pytest.param(
            ["tick", "tick", "tick", "tick", "create", "fresh", "up", "up_event"],
            id="due, then created: replayed or held",
        ),
        # Created while the replay is under way (held), before or after its acknowledgements.
        pytest.param(["tick", "tick", "tick", "tick", "create", "fresh"], id="replaying"),
        pytest.param(
            ["tick", "tick", "tick", "tick", "fresh", "create", "fresh"],
            id="replaying, the fresh leg acknowledged",
        ),
        pytest.param(
            ["tick", "create", "create", "tick", "tick", "tick", "up", "fresh", "up_event"],
            id="two created, one read by the old upstream before the fresh leg was ready",
        ),
    ],
)
def test_every_item_the_caller_created_is_on_the_fresh_upstream_once_in_order(steps):
    run(steps).check()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(sorted(STEPS)), max_size=30))
def test_in_any_order_every_item_the_caller_created_is_on_the_session_upstream_once(steps):
    run(steps).check()
