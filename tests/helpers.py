"""Small test helpers: waiting for a delivery to settle, making channels."""

from __future__ import annotations

import time
from typing import Any

import httpx

FINAL = ("delivered", "failed", "cancelled")


def wait_delivery(
    api: httpx.Client, delivery_id: str, statuses: tuple[str, ...] = FINAL, timeout: float = 20.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = api.get(f"/deliveries/{delivery_id}").json()
        if last.get("status") in statuses:
            return last
        time.sleep(0.05)
    raise AssertionError(f"delivery {delivery_id} still {last.get('status')}: {last}")


def make_webhook(api: httpx.Client, name: str, url: str, **config: Any) -> dict[str, Any]:
    response = api.post(
        "/channels", json={"name": name, "type": "webhook", "config": {"url": url, **config}}
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def send(api: httpx.Client, channels: list[str], **message: Any) -> dict[str, Any]:
    body = {"channels": channels, "title": "t", "content": "c", **message}
    response = api.post("/messages", json=body)
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    return result
