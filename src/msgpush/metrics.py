"""Prometheus metrics, served at ``/metrics``.

When ``serve`` may start delivery worker processes it sets ``PROMETHEUS_MULTIPROC_DIR``
before this module is imported (prometheus_client's multiprocess mode): every process then
writes its figures to files there and ``/metrics`` adds them up, so the counts of sends made
by worker processes are served too, and survive a worker's exit.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

MESSAGES_ACCEPTED = Counter(
    "msgpush_messages_accepted_total", "Messages stored and answered 202", ["api"]
)
ATTEMPTS = Counter(
    "msgpush_delivery_attempts_total",
    "Delivery attempts by channel type and outcome",
    ["channel_type", "outcome"],
)
DELIVERIES_FINISHED = Counter(
    "msgpush_deliveries_finished_total",
    "Deliveries that reached a final status",
    ["channel_type", "status"],
)
ATTEMPT_SECONDS = Histogram(
    "msgpush_delivery_attempt_seconds",
    "Duration of one delivery attempt (vendor round trip)",
    ["channel_type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ENQUEUE_TO_DELIVERED = Histogram(
    "msgpush_enqueue_to_delivered_seconds",
    "Time from acceptance to successful delivery",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 3600),
)
RATE_LIMIT_WAITS = Counter(
    "msgpush_rate_limit_waits_total", "Deliveries deferred to their channel's next rate window"
)
INFLIGHT = Gauge(
    "msgpush_deliveries_inflight", "Deliveries being sent now", multiprocess_mode="livesum"
)
QUEUE_DEPTH = Gauge(
    "msgpush_queue_depth",
    "Unfinished deliveries by status",
    ["status"],
    multiprocess_mode="mostrecent",
)
TOKEN_FETCHES = Counter("msgpush_vendor_token_fetches_total", "Access tokens fetched from vendors")


# ``labels(...)`` looks its child up under a lock on every call; the engine asks per attempt.
@functools.cache
def attempt_counter(channel_type: str, outcome: str) -> Any:
    return ATTEMPTS.labels(channel_type, outcome)


@functools.cache
def attempt_seconds(channel_type: str) -> Any:
    return ATTEMPT_SECONDS.labels(channel_type)


@functools.cache
def finished_counter(channel_type: str, status: str) -> Any:
    return DELIVERIES_FINISHED.labels(channel_type, status)


def exposition() -> bytes:
    """The text ``/metrics`` answers: this process's registry, or every process's figures."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    ProcessCollector(registry=registry)  # serve's own CPU, memory and file descriptors
    return generate_latest(registry)


def process_gone(pid: int) -> None:
    """A worker process ended: drop its live gauges (its counters stay counted)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
