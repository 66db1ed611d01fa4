"""Receiver faults hitting many messages at once: 5xx storms, timeouts, connection resets and
429 storms with Retry-After. Every message ends delivered, or failed with the reason when its
attempts run out; attempt counts and waits are the policy's; the receiver saw exactly the
attempts the history shows, so no send is hidden and no message is lost.

(``tests/test_retries.py`` checks each rule on one message; this module checks that they hold
when a whole burst meets the fault.)
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from itertools import pairwise
from typing import Any

import httpx
import pytest

from tests.fakes.receiver import Receiver, Reply
from tests.helpers import FINAL, make_webhook
from tests.server import FAST_ENGINE

BURST = 30
MAX_ATTEMPTS = int(FAST_ENGINE["MSGPUSH_MAX_ATTEMPTS"])
BASE_S = float(FAST_ENGINE["MSGPUSH_RETRY_BASE_S"])

# fault -> (the first answers each delivery gets, channel config, what the diagnosis says)
FAULTS: dict[str, tuple[tuple[Reply, ...], dict[str, Any], str]] = {
    "5xx-storm": (
        (Reply(500, b"db down"), Reply(503, b"busy"), Reply(502)),
        {},
        "the receiver answered HTTP 50",
    ),
    "timeouts": ((Reply(200, delay_s=1.0),), {"timeout_s": 0.3}, "did not answer within 0.3 s"),
    "resets": (
        (Reply(reset=True), Reply(reset=True)),
        {},
        "the receiver closed the connection without answering",
    ),
    "429-storm": (
        (Reply(429, b"slow down", headers={"Retry-After": "1"}),),
        {},
        "the receiver answered HTTP 429",
    ),
}


def _t(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def burst(api: httpx.Client, channel: str, count: int = BURST) -> list[str]:
    """Send ``count`` messages in one batch; their delivery ids."""
    messages = [{"channels": [channel], "title": f"{channel} #{n}"} for n in range(count)]
    response = api.post("/messages/batch", json={"messages": messages})
    assert response.status_code == 202, response.text
    return [item["deliveries"][0]["id"] for item in response.json()["items"]]


def settle(api: httpx.Client, delivery_ids: list[str], timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    pending = set(delivery_ids)
    final: dict[str, dict[str, Any]] = {}
    while pending and time.monotonic() < deadline:
        for delivery_id in sorted(pending):
            detail = api.get(f"/deliveries/{delivery_id}").json()
            if detail["status"] in FINAL:
                final[delivery_id] = detail
                pending.discard(delivery_id)
        time.sleep(0.1)
    assert not pending, f"{len(pending)} deliveries did not settle in {timeout:g} s"
    return [final[delivery_id] for delivery_id in delivery_ids]


def sends_per_delivery(receiver: Receiver, path: str) -> Counter[str]:
    return Counter(request.headers.get("webhook-id", "") for request in receiver.at(path))


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_burst_through_a_receiver_fault_is_all_delivered_on_schedule(
    fault: str, api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    replies, config, says = FAULTS[fault]
    path = f"/fault/{fault}/{unique}"
    receiver.script_each(path, *replies)
    make_webhook(api, f"{fault}-{unique}", receiver.url(path), **config)
    delivery_ids = burst(api, f"{fault}-{unique}")
    finals = settle(api, delivery_ids)

    failures = len(replies)
    for final in finals:
        assert final["status"] == "delivered", final
        log = final["attempt_log"]
        assert [a["outcome"] for a in log] == ["retry"] * failures + ["delivered"], log
        assert all(says in a["diagnosis"] for a in log[:failures]), log
        retry_after = replies[0].headers.get("Retry-After")
        for number, (first, second) in enumerate(pairwise(log), start=1):
            gap = _t(second["started_at"]) - _t(first["started_at"])
            # the vendor's own wait when it gave one, else at least half the backoff ceiling
            least = float(retry_after) if retry_after else BASE_S * 2 ** (number - 1) / 2
            assert gap >= least - 0.05, (number, gap, log)
    # nothing hidden, nothing lost: the receiver saw each delivery exactly as often as its
    # history says it was tried
    sent = sends_per_delivery(receiver, path)
    assert sent == {final["id"]: len(final["attempt_log"]) for final in finals}


def test_a_burst_that_never_gets_through_fails_with_the_last_error(
    api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    path = f"/fault/down/{unique}"
    receiver.script_each(path, *[Reply(500, b"still down")] * MAX_ATTEMPTS)
    make_webhook(api, f"down-{unique}", receiver.url(path))
    delivery_ids = burst(api, f"down-{unique}")
    finals = settle(api, delivery_ids)
    for final in finals:
        assert final["status"] == "failed", final
        assert final["attempts"] == MAX_ATTEMPTS
        assert final["error"].startswith(f"gave up after {MAX_ATTEMPTS} attempts; last error: ")
        assert "HTTP 500: still down" in final["error"], final["error"]
    assert sends_per_delivery(receiver, path) == dict.fromkeys(delivery_ids, MAX_ATTEMPTS)
