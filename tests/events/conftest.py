"""Fixtures of the event tests: a webhook channel on the shared receiver, rules that are removed
after each test (rules are global: a stale one would route other tests' events), helpers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.fakes.receiver import Receiver
from tests.helpers import make_webhook


@dataclass
class Hook:
    """A webhook channel and where its requests land on the receiver."""

    name: str
    path: str
    receiver: Receiver

    def bodies(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        return [r.json() for r in self.receiver.wait_for(self.path, count, timeout)]

    def now(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.receiver.at(self.path)]

    def settle(self, quiet_s: float = 0.6, timeout: float = 15.0) -> list[dict[str, Any]]:
        """What arrived once nothing more has come for ``quiet_s``."""
        deadline = time.monotonic() + timeout
        seen, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            count = len(self.receiver.at(self.path))
            if count != seen:
                seen, since = count, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                break
            time.sleep(0.05)
        return self.now()


@pytest.fixture
def make_hook(
    api: httpx.Client, receiver: Receiver, unique: str
) -> Iterator[Callable[[str], Hook]]:
    made: list[str] = []

    def make(suffix: str = "") -> Hook:
        name = f"ev-{unique}{suffix}"
        path = f"/events/{unique}{suffix}"
        make_webhook(api, name, receiver.url(path))
        made.append(name)
        return Hook(name, path, receiver)

    yield make
    for name in made:
        api.delete(f"/channels/{name}")


@pytest.fixture
def hook(make_hook: Callable[[str], Hook]) -> Hook:
    return make_hook("")


@pytest.fixture
def rules(api: httpx.Client) -> Iterator[Callable[..., dict[str, Any]]]:
    """``rules(name=…, …)`` creates a rule (201 asserted); all of them go after the test."""
    made: list[str] = []

    def create(**body: Any) -> dict[str, Any]:
        response = api.post("/rules", json=body)
        assert response.status_code == 201, response.text
        rule: dict[str, Any] = response.json()
        made.append(rule["id"])
        return rule

    yield create
    for rule_id in made:
        api.delete(f"/rules/{rule_id}")


def post_event(api: httpx.Client, **body: Any) -> dict[str, Any]:
    response = api.post("/events", json=body)
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer
