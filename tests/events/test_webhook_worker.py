"""The webhook worker with real local endpoints: one that takes seconds to answer holds up its
own deliveries only, never another endpoint's; one that answers a byte at a time, or without
end, has its attempt ended and recorded in time."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from apps.events import retention
from apps.events.models import Event, WebhookDelivery, WebhookEndpoint
from apps.events.webhooks import WebhookWorker, worker

pytestmark = pytest.mark.django_db(transaction=True)


class Endpoint:
    """A webhook endpoint on a loopback port, answered by a request handler class."""

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        # Polled often, so that `stop` (which waits for the next poll) is quick.
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Receiver(Endpoint):
    """A webhook endpoint that answers 204 after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.got: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.got.append(self.headers["webhook-id"])
                time.sleep(delay)
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.serve(Handler)


class Trickler(Endpoint):
    """A webhook endpoint that writes its answer's `head` a line every `pace` seconds, then
    `chunk` every `pace` seconds without end (a body that never ends)."""

    def __init__(self, head: list[bytes], chunk: bytes = b"", pace: float = 0.2) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    for line in head:
                        self.wfile.write(line)
                        self.wfile.flush()
                        time.sleep(pace)
                    while chunk:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        time.sleep(pace)
                except OSError:  # the worker hung up
                    pass

            def log_message(self, *args):
                pass

        self.serve(Handler)


def _event() -> int:
    return Event.objects.create(
        type="request.status", session_key=uuid.uuid4(), payload='{"type":"request.status"}'
    ).id


def _endpoint_from(event_id: int, **fields) -> WebhookEndpoint:
    """An endpoint whose deliveries start at the event `event_id` (the test's first own event).
    Not at the log's start: a Daphne that earlier tests of this process started serves the
    same database, and may have committed events of its sessions' ends after the last test's
    flush; each would be one more delivery to this endpoint."""
    return WebhookEndpoint.objects.create(cursor=event_id - 1, **fields)


async def _until(condition, timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "not within the time allowed"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_a_slow_endpoint_holds_up_only_its_own_deliveries(settings):
    settings.OC_WEBHOOK_INTERVAL = 0.05
    settings.OC_WEBHOOK_TIMEOUT = 10
    slow, fast = Receiver(delay=4), Receiver(delay=0)
    first = await sync_to_async(_event)()
    for receiver in (slow, fast):
        await sync_to_async(_endpoint_from)(first, url=receiver.url)
    worker = WebhookWorker()
    try:
        worker.start()
        await _until(lambda: f"evt_{first}" in slow.got and f"evt_{first}" in fast.got, 5)
        second = await sync_to_async(_event)()  # while the slow endpoint still answers the first
        took = await _until(lambda: f"evt_{second}" in fast.got, 5)
        assert took < 1.5, f"the fast endpoint waited {took:.1f} s for the slow one"
    finally:
        for task in (worker._task, *worker._deliveries):
            task.cancel()
        slow.stop()
        fast.stop()


async def _first_attempt(
    settings, receiver, within: float, timeout: float = 1
) -> tuple[WebhookDelivery, float]:
    settings.OC_WEBHOOK_INTERVAL = 0.05
    settings.OC_WEBHOOK_TIMEOUT = timeout
    settings.OC_WEBHOOK_RETRY_BASE = 60
    event_id = await sync_to_async(_event)()
    endpoint = await sync_to_async(_endpoint_from)(event_id, url=receiver.url)
    deliveries = WebhookDelivery.objects.filter(
        endpoint=endpoint, event_id=event_id, attempts__gte=1
    )
    worker = WebhookWorker()
    try:
        worker.start()
        started = time.monotonic()
        while not await sync_to_async(deliveries.exists)():
            assert time.monotonic() - started < within, f"no attempt recorded within {within} s"
            await asyncio.sleep(0.05)
        return await sync_to_async(deliveries.get)(), time.monotonic() - started
    finally:
        for task in (worker._task, *worker._deliveries):
            task.cancel()
        receiver.stop()


async def test_an_answer_that_trickles_in_past_the_timeout_is_not_a_delivery(settings):
    # 42 lines, 0.2 s apart: 8.4 s without the 1 s timeout; within 6 s, whatever the load.
    head = [b"HTTP/1.1 200 OK\r\n", *[b"x-wait: %d\r\n" % n for n in range(40)], b"\r\n"]
    delivery, _ = await _first_attempt(settings, Trickler(head), within=6)
    assert delivery.status == WebhookDelivery.Status.PENDING, "a 2xx later than the timeout is a failure"
    assert "Timeout" in delivery.last_error, delivery.last_error


async def test_an_error_with_a_body_without_end_is_recorded_from_its_status_and_first_bytes(settings):
    head = [b"HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n"]
    endless = Trickler(head, chunk=b"x" * 65536, pace=0.01)
    delivery, took = await _first_attempt(settings, endless, within=3.5, timeout=4)
    assert delivery.last_status_code == 500, "the status is recorded without reading the whole body"
    assert delivery.last_error.startswith("HTTP 500: xxx") and len(delivery.last_error) < 400


async def test_a_secret_that_cannot_sign_is_recorded_as_the_attempts_error(settings):
    settings.OC_WEBHOOK_RETRY_BASE = 60
    event_id = await sync_to_async(_event)()
    endpoint = await sync_to_async(_endpoint_from)(
        event_id, url="http://127.0.0.1:9/hook", secret="whsec_abc"  # not base64: set by hand
    )
    worker = WebhookWorker()
    assert await worker.round() == 1
    await asyncio.gather(*worker._deliveries)
    delivery = await sync_to_async(WebhookDelivery.objects.get)(endpoint=endpoint)
    assert (delivery.status, delivery.attempts) == (WebhookDelivery.Status.PENDING, 1), (
        "the attempt is recorded and retried, not left `sending`"
    )
    assert "padding" in delivery.last_error, delivery.last_error


class Flaky(Endpoint):
    """A webhook endpoint that answers each attempt with the next of `statuses`."""

    def __init__(self, statuses: list[int]) -> None:
        answers = iter(statuses)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                body = b"try later"
                self.send_response(next(answers))
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.serve(Handler)


async def _attempts(endpoint: WebhookEndpoint) -> int:
    """How many attempts the endpoint's delivery has had (0 before it is made)."""
    delivery = await WebhookDelivery.objects.filter(endpoint=endpoint).afirst()
    return 0 if delivery is None else delivery.attempts


async def test_every_attempt_of_a_delivery_is_kept_with_its_outcome_and_times(settings):
    settings.OC_WEBHOOK_RETRY_BASE = 0.01  # each retry due at once
    receiver = Flaky([503, 500, 204])
    endpoint = await sync_to_async(_endpoint_from)(await sync_to_async(_event)(), url=receiver.url)
    pending = WebhookDelivery.objects.filter(
        endpoint=endpoint, status=WebhookDelivery.Status.PENDING
    )
    worker = WebhookWorker()
    try:
        for n in (1, 2, 3):
            # Each retry is made due here by hand, whoever scheduled it: the test Daphnes send no
            # webhooks (OC_WEBHOOK_SEND), but one that did would schedule with its own retry
            # base (5 s) and make the attempt itself; the log is the same whoever made it.
            deadline = time.monotonic() + 5  # a busy machine may lag
            while await _attempts(endpoint) < n:
                assert time.monotonic() < deadline, f"attempt {n} did not happen"
                await pending.aupdate(next_attempt_at=timezone.now())
                await worker.round()
                await asyncio.gather(*worker._deliveries)
                await asyncio.sleep(0.02)
    finally:
        receiver.stop()
    delivery = await WebhookDelivery.objects.aget(endpoint=endpoint)
    assert (delivery.status, delivery.attempts) == (WebhookDelivery.Status.DELIVERED, 3)
    attempts = [a async for a in delivery.attempt_log.all()]
    assert [(a.number, a.status_code) for a in attempts] == [(3, 204), (2, 500), (1, 503)]
    assert [a.error for a in attempts] == ["", "HTTP 500: try later", "HTTP 503: try later"]
    for attempt, earlier in zip(attempts, attempts[1:], strict=False):
        assert earlier.finished_at <= attempt.started_at <= attempt.finished_at


async def test_a_process_with_sending_off_starts_no_webhook_worker(settings):
    """OC_WEBHOOK_SEND off: the housekeeping prunes, but this process sends nothing."""
    settings.OC_WEBHOOK_SEND = False
    await retention.housekeeping_chore()
    assert worker()._task is None
    settings.OC_WEBHOOK_SEND = True
    await retention.housekeeping_chore()
    try:
        assert worker()._task is not None and not worker()._task.done()
    finally:
        worker()._task.cancel()


class Forger(Endpoint):
    """A webhook endpoint whose error page holds a line break and a line of a log's shape."""

    BODY = b"no\n2026-01-01 00:00:00,000 INFO apps.console all is well"

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(500)
                self.send_header("content-length", str(len(Forger.BODY)))
                self.end_headers()
                self.wfile.write(Forger.BODY)

            def log_message(self, *args):
                pass

        self.serve(Handler)


async def test_an_endpoints_answer_cannot_forge_a_line_of_the_log(settings, caplog):
    """The endpoint's answer is another server's text: the warning that a delivery failed for
    good quotes it on its own line, its line breaks escaped."""
    settings.OC_WEBHOOK_RETRY_FOR = 0  # the first failure is the last
    receiver = Forger()
    endpoint = await sync_to_async(_endpoint_from)(await sync_to_async(_event)(), url=receiver.url)
    worker = WebhookWorker()
    try:
        assert await worker.round() == 1
        await asyncio.gather(*worker._deliveries)
    finally:
        receiver.stop()
    delivery = await WebhookDelivery.objects.aget(endpoint=endpoint)
    assert delivery.status == WebhookDelivery.Status.FAILED
    [warning] = [r.getMessage() for r in caplog.records if "failed for good" in r.getMessage()]
    assert "\n" not in warning and "all is well" in warning, warning
