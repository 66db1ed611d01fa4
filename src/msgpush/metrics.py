"""Prometheus metrics, served at ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
INFLIGHT = Gauge("msgpush_deliveries_inflight", "Deliveries being sent by this process")
QUEUE_DEPTH = Gauge("msgpush_queue_depth", "Unfinished deliveries by status", ["status"])
TOKEN_FETCHES = Counter("msgpush_vendor_token_fetches_total", "Access tokens fetched from vendors")
