"""Webhook deliveries, claimed in the database so that each is acted on once (CONTRACT §7).

The upstream delivers an event again (same `webhook-id`) when it saw no 2xx for it: after a
5xx, or when it stopped waiting for the answer ("respond within a few seconds", OpenAI's
webhooks guide; it retries with exponential backoff for up to 72 hours). The repeat may come
while the first delivery is still being handled, in this process or another. The delivery's
`SeenWebhook` row is the claim:

- The first to create the row holds it, until `claimed_until` (`HOLD_FOR`). Its work then runs
  to its end even if the upstream hangs up on it (`run_detached`): an accept the upstream took
  is always followed by the attach, and recorded.
- The holder records how far it got: `accepted` once the upstream accepted the call (before
  attaching it), `done` with its answer once handled. A failure releases the claim: a
  delivery that did nothing upstream is forgotten; an accepted call keeps `accepted`, so the
  next delivery attaches it instead of accepting it again (the upstream would refuse that).
- A repeat finding the claim held waits for it (`REPEAT_WAIT`), polling the row: `done` → it
  answers 200 with what the first was answered; released → it takes the claim and does the
  rest of the work itself; still held at the end of the wait → 200 `in_progress`, not acted
  on (CONTRACT §7: a repeated `webhook-id` is answered 200). That stops the upstream's
  retries: should the first then fail, the call is not steered.
- A claim whose holder died (its process stopped) lapses at `claimed_until`; the next delivery
  takes it over.

Nothing here calls the upstream: apps/calls/webhooks.py does the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from django.db import IntegrityError
from django.db.models import Q
from django.utils import timezone

from apps.calls.models import SeenWebhook
from apps.sessions.db import db_async, serialised_write
from apps.sessions.loops import per_loop

Stage = SeenWebhook.Stage
T = TypeVar("T")

SEEN_FOR = timedelta(days=1)
# The longest a delivery's handling may take (webhooks.py bounds it so): the upstream's calls
# REST allows 5 s to connect and 15 s per read (apps/sessions/upstream_calls.py).
HANDLING_LIMIT = 30.0
# A claim lapses this long after it was taken: past any handling of a live holder.
HOLD_FOR = timedelta(seconds=2 * HANDLING_LIMIT)
# How long a repeat waits for the delivery in hand. The service's own wait is not published
# ("a few seconds"); the simulator's is 8 s (apps/simulator/calls.py). Half of that leaves
# the repeat time to answer before its sender gives up on it too.
REPEAT_WAIT = 4.0
POLL_EVERY = 0.1


@dataclass(frozen=True, slots=True)
class Claim:
    held: bool  # True: this delivery now holds the claim, and does the work from `stage`
    stage: str
    answer: dict[str, Any] | None = None  # `done`: what the first delivery was answered


def claim(webhook_id: str, event_type: str) -> Claim:
    """Take the delivery's claim if nobody holds it, else say where its holder is."""
    now = timezone.now()
    rows = SeenWebhook.objects.filter(webhook_id=webhook_id)
    with serialised_write():
        try:
            SeenWebhook.objects.create(
                webhook_id=webhook_id, event_type=event_type[:64], claimed_until=now + HOLD_FOR
            )
            return Claim(held=True, stage=Stage.RECEIVED)
        except IntegrityError:
            pass
        # One UPDATE, so that of two deliveries finding the claim free only one takes it.
        free = Q(claimed_until__isnull=True) | Q(claimed_until__lte=now)
        taken = rows.exclude(stage=Stage.DONE).filter(free).update(claimed_until=now + HOLD_FOR)
    row = rows.first()
    if row is None:  # forgotten between the two statements: the next look creates it
        return Claim(held=False, stage=Stage.RECEIVED)
    return Claim(held=bool(taken), stage=row.stage, answer=row.answer)


def forget_old() -> None:
    """Deliveries older than SEEN_FOR are forgotten (once per delivery, before its claim)."""
    with serialised_write():
        SeenWebhook.objects.filter(received_at__lt=timezone.now() - SEEN_FOR).delete()


def advance(webhook_id: str, stage: str) -> None:
    with serialised_write():
        SeenWebhook.objects.filter(webhook_id=webhook_id).update(stage=stage)


def finish(webhook_id: str, answer: dict[str, Any]) -> None:
    with serialised_write():
        SeenWebhook.objects.filter(webhook_id=webhook_id).update(
            stage=Stage.DONE, answer=answer, claimed_until=None
        )


def release(webhook_id: str) -> None:
    """The holder failed: nothing done upstream → forgotten; else free for the next one."""
    rows = SeenWebhook.objects.filter(webhook_id=webhook_id)
    with serialised_write():
        rows.filter(stage=Stage.RECEIVED).delete()
        rows.update(claimed_until=None)


async def claim_or_wait(webhook_id: str, event_type: str) -> Claim:
    """The claim, once this delivery holds it or the delivery is done; or, after REPEAT_WAIT
    of another holding it, that (`held` False, `stage` not done)."""
    await db_async(forget_old)()
    deadline = asyncio.get_running_loop().time() + REPEAT_WAIT
    while True:
        found = await db_async(claim)(webhook_id, event_type)
        if found.held or found.stage == Stage.DONE:
            return found
        if asyncio.get_running_loop().time() >= deadline:
            return found
        await asyncio.sleep(POLL_EVERY)


_running = per_loop(set)


async def run_detached(work: Callable[[], Awaitable[T]]) -> T:
    """`work()`'s result. It runs in a task of its own, which goes on to its end when the
    request awaiting it is cancelled (the upstream hung up on the delivery)."""
    task = asyncio.ensure_future(work())
    running = _running()
    running.add(task)
    task.add_done_callback(running.discard)
    return await asyncio.shield(task)
