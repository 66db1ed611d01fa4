"""Rate limits are kept, not discovered: a burst waits for its window, nothing is dropped."""

from __future__ import annotations

import httpx

from tests.fakes.receiver import Receiver
from tests.helpers import make_webhook, wait_delivery


def test_burst_waits_for_the_window_and_all_are_delivered(
    api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    path = f"/limited/{unique}"
    name = f"limited-{unique}"
    make_webhook(api, name, receiver.url(path))
    assert api.patch(f"/channels/{name}", json={"rate_limit": {"per_second": 4}}).status_code == 200
    messages = [{"channels": [name], "title": f"m{i}"} for i in range(10)]
    answer = api.post("/messages/batch", json={"messages": messages})
    assert answer.status_code == 202, answer.text
    ids = [item["deliveries"][0]["id"] for item in answer.json()["items"]]

    arrivals = sorted(r.at for r in receiver.wait_for(path, 10, timeout=20))
    for index in range(len(arrivals) - 4):
        # any five consecutive sends span more than the one-second window
        assert arrivals[index + 4] - arrivals[index] >= 1.0, arrivals
    for delivery_id in ids:
        final = wait_delivery(api, delivery_id)
        assert final["status"] == "delivered"
        assert final["attempts"] == 1  # waiting for a window is not a failed attempt


def test_rate_limit_is_validated(api: httpx.Client, receiver: Receiver, unique: str) -> None:
    name = f"rl-{unique}"
    make_webhook(api, name, receiver.url("/rl"))
    bad = api.patch(f"/channels/{name}", json={"rate_limit": {"per_minute": 0}})
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "rate_limit.per_minute"
    unknown = api.patch(f"/channels/{name}", json={"rate_limit": {"per_day": 5}})
    assert unknown.status_code == 422
    assert unknown.json()["error"]["field"] == "rate_limit.per_day"
