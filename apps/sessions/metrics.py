"""This process's figures for `GET /metrics` (Prometheus text format), label `process`.

Nothing here is on the relay's hot path beyond what the actor already does: frames and bytes
are plain int attributes of each actor (`SessionActor.frames_to_caller`, …) and upstream
errors a plain dict of its core (`RelayCore.upstream_errors`); requests, nudge latency and
tool approvals are counted here, once per transition, as the actor records it; the approvals
pending are read from the live actors' tool desks when scraped. Everything is read and written
on the process's event loop (actors and the async /metrics view alike), so no lock is taken:
prometheus_client's own Counter takes one on every `inc()`.

`REGISTRY` is the app's own registry, holding only `RelayCollector`: no process or platform
collectors, and nothing registered by a library can appear in the output by accident.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from apps.realtime import relay, tools
from apps.sessions.process import PROCESS_NAME

if TYPE_CHECKING:
    from apps.sessions.actor import SessionActor

OPERATOR_ORIGINS = relay.OPERATOR_ORIGINS
# Nudge → start, seconds: from the request's row (created) to its response.created.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Error codes come from the upstream: only code-like ones become label values, and at most
# this many of them (the rest are counted as "other"), so a stray one cannot flood the series.
_CODE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_ERROR_CODES = 100
FRAME_COUNTS = ("frames_to_caller", "bytes_to_caller", "frames_to_upstream", "bytes_to_upstream")


# Who decided an approval, as `oc_approvals_total` labels it: an operator (console or REST
# hook; never the name, which would make a series per person), the caller's own app, or nobody
# (it expired: its timeout ran out, or its session ended first).
BY_OPERATOR, BY_CALLER, BY_TIMEOUT, BY_SESSION_END = "operator", "caller", "timeout", "session_end"


def approval_by(approval: dict[str, Any]) -> str:
    """The `by` label of a decided approval (`Approval.as_dict()`)."""
    if approval["status"] == tools.EXPIRED:
        return BY_SESSION_END if approval["reason"] == tools.UNDECIDED_AT_END else BY_TIMEOUT
    return BY_CALLER if approval["decided_by"] == tools.BY_CALLER else BY_OPERATOR


def frame_size(frame: str | bytes) -> int:
    """A frame's size as it goes on the wire, in bytes: a text frame's in UTF-8. Most frames
    are ASCII, which `isascii` tells from a flag of the string: those are not encoded."""
    if isinstance(frame, str) and not frame.isascii():
        return len(frame.encode("utf-8", "surrogatepass"))
    return len(frame)


class _Histogram:
    """Bucket counts and a sum, as plain numbers (see the module's docstring)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        total, out = 0, []
        for bound, count in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


class Figures:
    """The process's counts: live actors, the totals of ended ones, requests, latency."""

    def __init__(self) -> None:
        self.actors: set[SessionActor] = set()
        self.ended = dict.fromkeys(FRAME_COUNTS, 0)
        self.ended_errors: dict[str, int] = {}
        self.requests: dict[tuple[str, str], int] = {}  # (origin, terminal status) → count
        self.approvals: dict[tuple[str, str], int] = {}  # (outcome, who decided) → count
        self.latency = {origin: _Histogram(LATENCY_BUCKETS) for origin in sorted(OPERATOR_ORIGINS)}

    # -------------------------------------------------------------- fed by the actors

    def actor_started(self, actor: SessionActor) -> None:
        self.actors.add(actor)

    def actor_ended(self, actor: SessionActor) -> None:
        if actor not in self.actors:
            return
        self.actors.discard(actor)
        for name in FRAME_COUNTS:
            self.ended[name] += getattr(actor, name)
        for code, count in actor.core.upstream_errors.items():
            self.ended_errors[code] = self.ended_errors.get(code, 0) + count

    def recorded(self, actor: SessionActor, action: relay.Action) -> None:
        """One of the actions the actor records: the transitions counted here."""
        if type(action) is relay.RequestChanged:
            self.request_changed(actor, action)
        elif type(action) is tools.ApprovalChanged:
            self.approval_changed(actor, action)

    def request_changed(self, actor: SessionActor, change: relay.RequestChanged) -> None:
        """A request's transition, as the actor records it. An operator's request that starts
        is timed from its row's creation (`actor.created_at`, kept from the ping)."""
        status = change.status
        if status is relay.RequestStatus.IN_PROGRESS:
            created_at = actor.created_at.pop(change.request_id, None)
            origin = actor.core.origin_of(change.request_id)
            if created_at is not None and origin in self.latency:
                self.latency[origin].observe(max(0.0, change.at - created_at))
        elif status.is_terminal:
            actor.created_at.pop(change.request_id, None)
            if change.error_code == "session_lost":
                return  # failed and counted by the sweep that found the session lost
            origin = actor.core.origin_of(change.request_id) or "unknown"
            key = (origin, status.value)
            self.requests[key] = self.requests.get(key, 0) + 1

    def approval_changed(self, actor: SessionActor, change: tools.ApprovalChanged) -> None:
        """An approval decided: counted by its outcome and by who decided (`approval_by`).
        One made pending is not counted here: `pending` reads them when scraped."""
        approval = change.approval
        status = approval["status"]
        if status == tools.PENDING:
            return
        ended = actor.core.ended
        if ended is not None and ended.reason is relay.EndReason.SESSION_LOST:
            return  # expired and counted by the sweep that found the session lost
        key = (status, approval_by(approval))
        self.approvals[key] = self.approvals.get(key, 0) + 1

    def approvals_lost(self, count: int) -> None:
        """Approvals this process's sweep expired with a lost session of another process:
        counted here, where they expired, as the requests are (`requests_lost`)."""
        if count:
            key = (tools.EXPIRED, BY_SESSION_END)
            self.approvals[key] = self.approvals.get(key, 0) + count

    def requests_lost(self, origins: list[str]) -> None:
        """Requests this process's sweep failed with a lost session of another process: they
        are counted here, where they failed, since the holder is gone or no longer scraped
        (one that was only held up skips them as it ends the session: `request_changed`)."""
        for origin in origins:
            key = (origin, "failed")
            self.requests[key] = self.requests.get(key, 0) + 1

    # -------------------------------------------------------------- read by the collector

    def frame_totals(self) -> dict[str, int]:
        totals = dict(self.ended)
        for actor in list(self.actors):
            for name in FRAME_COUNTS:
                totals[name] += getattr(actor, name)
        return totals

    def error_totals(self) -> dict[str, int]:
        totals = dict(self.ended_errors)
        for actor in list(self.actors):
            for code, count in actor.core.upstream_errors.items():
                totals[code] = totals.get(code, 0) + count
        shown: dict[str, int] = {}
        for code, count in sorted(totals.items(), key=lambda item: -item[1]):
            label = code if _CODE.match(code) and len(shown) < MAX_ERROR_CODES else "other"
            shown[label] = shown.get(label, 0) + count
        return shown

    def pending(self) -> int:
        """Approval requests of the live sessions waiting for a decision (each tool desk
        remembers at most `tools.MAX_APPROVALS`)."""
        waiting = 0
        for actor in list(self.actors):
            if actor.core.ended is None:
                approvals = actor.core.tools.approvals.values()
                waiting += sum(a.status == tools.PENDING for a in approvals)
        return waiting

    def live(self) -> tuple[dict[str, int], int]:
        """Live sessions by kind (named by the upstream, not ended), and their listeners."""
        by_kind: dict[str, int] = {}
        listeners = 0
        for actor in list(self.actors):
            core = actor.core
            if core.session_id is None or core.ended is not None:
                continue
            kind = actor.call.get("kind", "relay")  # an attached call's: webrtc or sip
            by_kind[kind] = by_kind.get(kind, 0) + 1
            listeners += core.listeners
        return by_kind, listeners


figures = Figures()


class RelayCollector(Collector):
    def __init__(self, source: Figures) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        process = PROCESS_NAME
        by_kind, listeners = self.source.live()
        live = GaugeMetricFamily("oc_live_sessions", "Live sessions held by this process, by kind.", labels=["process", "kind"])
        for kind in sorted({"relay", "webrtc", "sip", *by_kind}):
            live.add_metric([process, kind], by_kind.get(kind, 0))
        yield live

        listening = GaugeMetricFamily("oc_listeners", "Operators listening to live calls.", labels=["process"])
        listening.add_metric([process], listeners)
        yield listening

        requests = CounterMetricFamily(
            "oc_requests", "Response requests that reached a terminal status.", labels=["process", "origin", "status"]
        )
        for (origin, status), count in sorted(self.source.requests.items()):
            requests.add_metric([process, origin, status], count)
        yield requests

        latency = HistogramMetricFamily(
            "oc_nudge_start_seconds",
            "Operators' requests (console, api): from the request stored to its response started.",
            labels=["process", "origin"],
        )
        for origin, histogram in self.source.latency.items():
            latency.add_metric([process, origin], histogram.cumulative(), histogram.sum)
        yield latency

        approvals = CounterMetricFamily(
            "oc_approvals",
            "Tool approval requests decided, by outcome and by who decided.",
            labels=["process", "outcome", "by"],
        )
        for (outcome, by), count in sorted(self.source.approvals.items()):
            approvals.add_metric([process, outcome, by], count)
        yield approvals

        pending = GaugeMetricFamily(
            "oc_pending_approvals",
            "Tool approval requests of live sessions waiting for a decision.",
            labels=["process"],
        )
        pending.add_metric([process], self.source.pending())
        yield pending

        errors = CounterMetricFamily("oc_upstream_errors", "Upstream errors, by code.", labels=["process", "code"])
        for code, count in sorted(self.source.error_totals().items()):
            errors.add_metric([process, code], count)
        yield errors

        totals = self.source.frame_totals()
        frames = CounterMetricFamily("oc_relayed_frames", "Frames relayed, by direction.", labels=["process", "direction"])
        size = CounterMetricFamily(
            "oc_relayed_bytes",
            "Frames relayed, by direction: their size in bytes (text frames in UTF-8).",
            labels=["process", "direction"],
        )
        for direction in ("to_caller", "to_upstream"):
            frames.add_metric([process, direction], totals[f"frames_{direction}"])
            size.add_metric([process, direction], totals[f"bytes_{direction}"])
        yield frames
        yield size


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(RelayCollector(figures))
