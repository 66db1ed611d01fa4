"""Retries with backoff on 5xx and timeouts, permanent failures with their reason, resend."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from itertools import pairwise

import httpx

from tests.fakes.receiver import Receiver, Reply
from tests.helpers import make_webhook, send, wait_delivery
from tests.server import ServerProcess


def _t(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_5xx_is_retried_with_growing_backoff_then_delivered(
    api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    path = f"/flaky/{unique}"
    receiver.script(path, Reply(500, b"db down"), Reply(503, b"busy"), Reply(502))
    make_webhook(api, f"flaky-{unique}", receiver.url(path))
    delivery_id = send(api, [f"flaky-{unique}"])["deliveries"][0]["id"]
    final = wait_delivery(api, delivery_id)
    assert final["status"] == "delivered", final
    log = final["attempt_log"]
    assert [a["outcome"] for a in log] == ["retry", "retry", "retry", "delivered"]
    assert [a["status_code"] for a in log] == [500, 503, 502, 200]
    assert "HTTP 500: db down" in log[0]["diagnosis"]
    # the recorded schedule: base 0.2 s doubling, jittered between half and all of it
    delays = [_t(a["next_attempt_at"]) - _t(a["started_at"]) for a in log[:3]]
    for attempt, delay in enumerate(delays, start=1):
        ceiling = 0.2 * 2 ** (attempt - 1)
        # (the recorded delay also holds the send itself, which a loaded machine can slow)
        assert ceiling / 2 - 0.05 <= delay <= ceiling + 0.5, (attempt, delays)
    gaps = [_t(b["started_at"]) - _t(a["started_at"]) for a, b in pairwise(log)]
    assert all(gap >= 0.09 for gap in gaps), gaps
    assert final["attempts"] == 4


def test_timeout_is_retried(api: httpx.Client, receiver: Receiver, unique: str) -> None:
    path = f"/slow/{unique}"
    receiver.script(path, Reply(200, delay_s=3.0))
    make_webhook(api, f"slow-{unique}", receiver.url(path), timeout_s=0.5)
    delivery_id = send(api, [f"slow-{unique}"])["deliveries"][0]["id"]
    final = wait_delivery(api, delivery_id)
    assert final["status"] == "delivered"
    first = final["attempt_log"][0]
    assert first["outcome"] == "retry"
    assert "did not answer within 0.5 s" in first["diagnosis"]
    assert first["status_code"] is None


def test_permanent_4xx_fails_at_once_with_the_reason(
    api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    path = f"/reject/{unique}"
    receiver.script(path, Reply(400, b'{"error":"unknown field foo"}'))
    make_webhook(api, f"reject-{unique}", receiver.url(path))
    delivery_id = send(api, [f"reject-{unique}"])["deliveries"][0]["id"]
    final = wait_delivery(api, delivery_id)
    assert final["status"] == "failed"
    assert final["attempts"] == 1
    assert "HTTP 400" in final["error"] and "unknown field foo" in final["error"]
    assert final["attempt_log"][0]["request"][0]["url"] == receiver.url(path)


def test_retries_stop_after_max_attempts_and_resend_starts_a_fresh_budget(
    api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    path = f"/down/{unique}"
    receiver.script(path, *([500] * 4))
    make_webhook(api, f"down-{unique}", receiver.url(path))
    delivery_id = send(api, [f"down-{unique}"])["deliveries"][0]["id"]
    final = wait_delivery(api, delivery_id)
    assert final["status"] == "failed"
    assert final["error"].startswith("gave up after 4 attempts")
    assert len(receiver.at(path)) == 4

    response = api.post(f"/deliveries/{delivery_id}/retry")
    assert response.status_code == 202, response.text
    final = wait_delivery(api, delivery_id, statuses=("delivered",))
    assert final["attempts"] == 5
    assert final["error"] is None

    again = api.post(f"/deliveries/{delivery_id}/retry")
    assert again.status_code == 409
    assert "only failed or cancelled" in again.json()["error"]["message"]


def test_connection_refused_is_retried(api: httpx.Client, unique: str) -> None:
    make_webhook(api, f"refused-{unique}", "http://127.0.0.1:9/nothing-listens")
    delivery_id = send(api, [f"refused-{unique}"])["deliveries"][0]["id"]
    final = wait_delivery(api, delivery_id, timeout=30)
    assert final["status"] == "failed"
    assert all(a["outcome"] == "retry" for a in final["attempt_log"])
    assert "cannot connect to 127.0.0.1:9" in final["attempt_log"][0]["diagnosis"]


def test_redirect_is_a_permanent_failure(
    api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    path = f"/moved/{unique}"
    receiver.script(path, Reply(301, b"", headers={"Location": "https://elsewhere.example/"}))
    make_webhook(api, f"moved-{unique}", receiver.url(path))
    delivery_id = send(api, [f"moved-{unique}"])["deliveries"][0]["id"]
    final = wait_delivery(api, delivery_id)
    assert final["status"] == "failed"
    assert "https://elsewhere.example/" in final["error"]


def test_a_retry_after_beyond_the_age_limit_fails_at_once_quoting_the_wait(
    make_server: Callable[..., ServerProcess], receiver: Receiver, unique: str
) -> None:
    server = make_server(MSGPUSH_MAX_AGE_S="600")
    path = f"/parked/{unique}"
    receiver.script(path, Reply(503, b"maintenance", headers={"Retry-After": "999999999"}))
    with server.client() as api:
        make_webhook(api, f"parked-{unique}", receiver.url(path))
        delivery_id = send(api, [f"parked-{unique}"])["deliveries"][0]["id"]
        final = wait_delivery(api, delivery_id)
    assert final["status"] == "failed"
    assert final["attempts"] == 1
    reason = final["error"]
    assert "asked to wait 999999999 s" in reason and "MSGPUSH_MAX_AGE_S" in reason, reason
    assert "HTTP 503" in reason


def test_a_retry_after_within_the_age_limit_is_honoured(
    api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    path = f"/later/{unique}"
    receiver.script(path, Reply(503, headers={"Retry-After": "1"}))
    make_webhook(api, f"later-{unique}", receiver.url(path))
    delivery_id = send(api, [f"later-{unique}"])["deliveries"][0]["id"]
    final = wait_delivery(api, delivery_id)
    assert final["status"] == "delivered"
    first, second = final["attempt_log"]
    assert _t(second["started_at"]) - _t(first["started_at"]) >= 0.95
