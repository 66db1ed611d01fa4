"""Alert storms end to end: 500 alerts become a handful of messages that account for every one
of them; digests survive a SIGKILL; a resolved storm closes its group; on PostgreSQL two API
processes folding into the same group count every event exactly once."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.events.conftest import Hook, post_event
from tests.fakes.dingtalk import FakeDingTalk
from tests.fakes.receiver import Receiver
from tests.helpers import make_webhook, wait_delivery
from tests.server import ServerProcess


@pytest.fixture(scope="module")
def dingtalk() -> Iterator[FakeDingTalk]:
    fake = FakeDingTalk().start()
    yield fake
    fake.stop()


def blast(
    url: str | list[str], token: str, bodies: list[dict[str, Any]], workers: int = 8
) -> list[dict[str, Any]]:
    """POST every body to /events from ``workers`` threads (round robin over ``url``s)."""
    urls = [url] if isinstance(url, str) else url
    local = threading.local()

    def one(indexed: tuple[int, dict[str, Any]]) -> dict[str, Any]:
        index, body = indexed
        if not hasattr(local, "clients"):
            local.clients = [
                httpx.Client(
                    base_url=f"{u}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30
                )
                for u in urls
            ]
        response = local.clients[index % len(urls)].post("/events", json=body)
        assert response.status_code == 202, response.text
        answer: dict[str, Any] = response.json()
        return answer

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, enumerate(bodies)))


def account(api: httpx.Client, answers: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """Every event sent at once or folded into exactly one digest, none twice, none lost.
    Returns the leads and the digests' events (digest message id -> its event)."""
    leads = [a["id"] for a in answers if a["messages"]]
    digests: dict[str, Any] = {}
    for answer in answers:
        for grouped in answer["grouped"]:
            if grouped["digest"] not in digests:
                digests[grouped["digest"]] = api.get(f"/events/{grouped['digest_event']}").json()
    folded = [e for d in digests.values() for e in d["data"]["event_ids"]]
    for digest in digests.values():
        assert digest["type"] == "msgpush.digest"
        assert digest["data"]["count"] == len(digest["data"]["event_ids"])
    assert len(folded) == len(set(folded)), "an event was folded twice"
    assert sorted(leads + folded) == sorted(a["id"] for a in answers), "events were lost"
    return leads, digests


def settle_digests(api: httpx.Client, digests: dict[str, Any], timeout: float = 20.0) -> None:
    for message_id in digests:
        [delivery] = api.get(f"/messages/{message_id}").json()["deliveries"]
        assert wait_delivery(api, delivery["id"], timeout=timeout)["status"] == "delivered"


def test_a_storm_of_500_alerts_is_a_handful_of_messages_that_count_all_500(
    server: ServerProcess,
    api: httpx.Client,
    dingtalk: FakeDingTalk,
    rules: Callable[..., Any],
    unique: str,
) -> None:
    robot = dingtalk.add_robot()
    channel = f"storm-{unique}"
    created = api.post(
        "/channels",
        json={
            "name": channel,
            "type": "dingtalk_bot",
            "config": {"webhook_url": dingtalk.webhook_url(robot)},
        },
    )
    assert created.status_code == 201, created.text
    rules(
        name=f"storm {unique}",
        event_types=["alert.*"],
        labels={"run": unique},
        channels=[channel],
        group_by=["alertname"],
        group_window_s=2,
    )
    bodies = [
        {
            "type": "alert.firing",
            "source": "monitoring",
            "data": {"value": 97 + i % 3, "threshold": 95, "comparison": ">"},
            "labels": {"alertname": "DiskFull", "instance": f"node-{i % 120}", "run": unique},
        }
        for i in range(500)
    ]
    started = time.monotonic()
    answers = blast(server.url, server.admin_token, bodies)
    took = time.monotonic() - started
    leads, digests = account(api, answers)
    settle_digests(api, digests)

    posted = robot.posted
    assert len(posted) == len(leads) + len(digests) <= 5, [p.body for p in posted]
    assert sum(d["data"]["count"] for d in digests.values()) + len(leads) == 500
    assert robot.rate_rejections() == []
    texts = [
        p.body["markdown"]["text"] if "markdown" in p.body else p.body["actionCard"]["text"]
        for p in posted
    ]
    assert len([t for t in texts if re.search(r"DiskFull on node-\d+ is firing", t)]) == len(leads)
    for digest in digests.values():
        count = digest["data"]["count"]
        assert any(f"**{count}** more alerts" in t for t in texts)
        assert digest["data"]["instances"] and len(digest["data"]["instances"]) <= 120
    print(f"\n500 alerts posted in {took:.2f} s -> {len(posted)} DingTalk messages")


def test_a_resolved_storm_closes_its_group_at_once(
    api: httpx.Client, hook: Hook, rules: Callable[..., Any], unique: str
) -> None:
    rules(
        name=f"close {unique}",
        event_types=["alert.*"],
        labels={"run": unique},
        channels=[hook.name],
        group_by=["alertname"],
        group_window_s=300,  # long: only closing the group can send the digest this soon
    )

    def alert(status: str, host: str) -> dict[str, Any]:
        labels = {"alertname": "NodeDown", "instance": host, "run": unique}
        return post_event(api, type=f"alert.{status}", labels=labels)

    first = alert("firing", "a")
    assert first["messages"], first  # the first goes at once
    assert alert("firing", "b")["grouped"]
    assert alert("resolved", "a")["grouped"]
    last = alert("resolved", "b")["grouped"][0]
    assert last["due_at"] <= time.strftime("%Y-%m-%dT%H:%M:%S.999Z", time.gmtime(time.time() + 1))
    lead, digest = hook.bodies(2, timeout=10)
    assert lead["title"] == "NodeDown on a is firing"
    assert digest["event"]["data"]["count"] == 3
    assert "- alert.resolved: 2" in digest["content"] and "Still firing: 0" in digest["content"]
    assert digest["level"] == "warning"
    # the group is closed: the next alert is news again, sent at once
    assert alert("firing", "c")["messages"]


def test_the_events_own_channels_can_be_grouped(api: httpx.Client, hook: Hook, unique: str) -> None:
    group = {"group_by": ["data.task"], "group_window_s": 60, "channels": [hook.name]}
    answers = [
        post_event(api, type="task.failed", data={"task": f"t-{unique}", "run": n}, **group)
        for n in range(4)
    ]
    assert [bool(a["messages"]) for a in answers] == [True, False, False, False]
    assert len({a["grouped"][0]["digest"] for a in answers[1:]}) == 1


def test_a_pending_digest_survives_sigkill(
    make_server: Callable[..., ServerProcess], receiver: Receiver, unique: str
) -> None:
    server = make_server()
    path = f"/storm-crash/{unique}"
    with server.client() as api:
        make_webhook(api, "crashy", receiver.url(path))
        rule = {
            "name": "crash storm",
            "event_types": ["alert.*"],
            "channels": ["crashy"],
            "group_by": ["alertname"],
            "group_window_s": 4,
        }
        assert api.post("/rules", json=rule).status_code == 201
        alert = {"type": "alert.firing", "labels": {"alertname": "Flapping"}}
        before = [post_event(api, **alert, data={"n": n}) for n in range(21)]
    server.kill()  # the digest is queued for the window's end; nothing runs on the way down
    server.start()
    with server.client() as api:
        after = [post_event(api, **alert, data={"n": n}) for n in range(21, 26)]
        leads, digests = account(api, before + after)
        settle_digests(api, digests, timeout=30)
        got = [r.json() for r in receiver.wait_for(path, len(leads) + len(digests), timeout=30)]
    counted = sum(
        b["event"]["data"]["count"] for b in got if b["event"]["type"] == "msgpush.digest"
    )
    assert counted + len(leads) == 26


def test_two_api_processes_fold_into_one_group_exactly_once(
    backend: str,
    server: ServerProcess,
    api: httpx.Client,
    hook: Hook,
    rules: Callable[..., Any],
    unique: str,
    tmp_path: Any,
) -> None:
    if backend != "postgresql":
        pytest.skip("several processes share one database on PostgreSQL only")
    second = ServerProcess(
        tmp_path / "second",
        database_url=server.database_url,
        admin_token=server.admin_token,
        args=("--no-worker",),
    ).start()
    try:
        rules(
            name=f"shared {unique}",
            event_types=["alert.*"],
            labels={"run": unique},
            channels=[hook.name],
            group_by=["alertname"],
            group_window_s=2,
        )
        bodies = [
            {
                "type": "alert.firing",
                "labels": {"alertname": "Shared", "instance": f"h{i}", "run": unique},
            }
            for i in range(300)
        ]
        answers = blast([server.url, second.url], server.admin_token, bodies, workers=12)
    finally:
        second.stop()
    leads, digests = account(api, answers)
    settle_digests(api, digests)
    assert len(leads) + len(digests) <= 5
