"""The same idempotency key within 24 hours answers the first answer and sends nothing again."""

from __future__ import annotations

import threading
import time

import httpx

from tests.fakes.receiver import Receiver
from tests.helpers import make_webhook, wait_delivery
from tests.server import ServerProcess


def test_repeat_returns_first_answer_and_sends_once(
    api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    path = f"/idem/{unique}"
    make_webhook(api, f"idem-{unique}", receiver.url(path))
    body = {"channels": [f"idem-{unique}"], "title": "once", "idempotency_key": f"k-{unique}"}
    first = api.post("/messages", json=body)
    second = api.post("/messages", json={**body, "title": "different text, same key"})
    assert first.status_code == second.status_code == 202
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert second.json()["id"] == first.json()["id"]
    assert [d["id"] for d in second.json()["deliveries"]] == [
        d["id"] for d in first.json()["deliveries"]
    ]
    wait_delivery(api, first.json()["deliveries"][0]["id"])
    time.sleep(0.5)
    assert len(receiver.at(path)) == 1
    assert receiver.at(path)[0].json()["title"] == "once"


def test_concurrent_repeats_store_one_message(
    api: httpx.Client, server: ServerProcess, receiver: Receiver, unique: str
) -> None:
    path = f"/idem-race/{unique}"
    make_webhook(api, f"race-{unique}", receiver.url(path))
    body = {"channels": [f"race-{unique}"], "title": "race", "idempotency_key": f"race-{unique}"}
    answers: list[str] = []

    def post() -> None:
        with server.client() as client:
            response = client.post("/messages", json=body)
            assert response.status_code == 202, response.text
            answers.append(response.json()["id"])

    threads = [threading.Thread(target=post) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(answers)) == 1
    time.sleep(1.0)
    assert len(receiver.at(path)) == 1


def test_batch_with_a_repeated_key_stores_it_once(
    api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    path = f"/idem-batch/{unique}"
    make_webhook(api, f"ib-{unique}", receiver.url(path))
    message = {"channels": [f"ib-{unique}"], "title": "b", "idempotency_key": f"b-{unique}"}
    response = api.post("/messages/batch", json={"messages": [message, message]})
    assert response.status_code == 202
    first, second = response.json()["items"]
    assert first["id"] == second["id"]
    time.sleep(1.0)
    assert len(receiver.at(path)) == 1
