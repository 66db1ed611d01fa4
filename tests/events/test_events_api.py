"""``POST /api/v1/events`` end to end: rendered messages that keep a link to their event, the
event in the webhook envelope, validation, idempotency, reading events back, CLI and client."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from msgpush import Client
from tests.events.conftest import Hook, post_event
from tests.helpers import wait_delivery
from tests.server import ServerProcess


def test_an_event_arrives_rendered_with_itself_in_the_envelope(
    api: httpx.Client, hook: Hook
) -> None:
    answer = post_event(
        api,
        type="task.failed",
        source="scheduler",
        data={
            "task": "daily_sales",
            "run_id": 7,
            "error": "timeout",
            "url": "https://example.com/r/7",
        },
        labels={"env": "prod", "team": "data"},
        channels=[hook.name],
    )
    assert answer["id"].startswith("evt_") and answer["level"] == "error"
    [message] = answer["messages"]
    [delivery] = message["deliveries"]
    assert delivery["channel"] == hook.name and delivery["status"] == "queued"
    assert wait_delivery(api, delivery["id"])["status"] == "delivered"

    [body] = hook.bodies(1)
    assert body["title"] == "Task daily_sales failed"
    assert body["content"] == "**daily_sales** failed.\n\nError: timeout"
    assert body["fields"] == {"Task": "daily_sales", "Run": "7", "Source": "scheduler"}
    assert body["links"] == [{"title": "Open task", "url": "https://example.com/r/7"}]
    assert body["category"] == "task" and body["labels"] == {"env": "prod", "team": "data"}
    event = body["event"]
    assert event["id"] == answer["id"] and event["type"] == "task.failed"
    assert event["data"]["run_id"] == 7 and event["labels"]["team"] == "data"
    assert event["channels"] == [hook.name]

    # the message keeps its link to the event, and the event says where it went
    assert api.get(f"/messages/{message['id']}").json()["event_id"] == answer["id"]
    stored = api.get(f"/events/{answer['id']}").json()
    assert stored["routing"]["messages"][0]["id"] == message["id"]
    assert stored["data"]["task"] == "daily_sales" and stored["source"] == "scheduler"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "Task Failed!"}, "type"),
        ({"type": ""}, "type"),
        ({}, "type"),
        ({"type": "task.failed", "level": "fatal"}, "level"),
        ({"type": "task.failed", "data": [1, 2]}, "data"),
        ({"type": "task.failed", "labels": {"env": 1}}, "labels.env"),
        ({"type": "task.failed", "labels": {"bad name": "x"}}, "labels.bad name.[key]"),
        ({"type": "task.failed", "channels": ["no-such-channel"]}, "channels.0"),
        ({"type": "task.failed", "occurred_at": "yesterday"}, "occurred_at"),
        ({"type": "task.failed", "colour": "red"}, "colour"),
        ({"type": "task.failed", "data": {"x": "a\u0000b"}}, "data.x"),
        ({"type": "task.failed", "data": {"blob": "x" * 300_000}}, "data"),
        ({"type": "alert.firing", "group_window_s": -1}, "group_window_s"),
    ],
)
def test_a_bad_event_is_a_422_naming_the_field(
    api: httpx.Client, body: dict[str, object], field: str
) -> None:
    response = api.post("/events", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field, response.text


def test_malformed_json_is_a_400(api: httpx.Client) -> None:
    response = api.post("/events", content=b"{not json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_the_same_idempotency_key_answers_the_first_event_and_sends_nothing(
    api: httpx.Client, hook: Hook, unique: str
) -> None:
    body = {
        "type": "task.succeeded",
        "data": {"task": "nightly"},
        "channels": [hook.name],
        "idempotency_key": f"nightly-{unique}",
    }
    first = api.post("/events", json=body)
    again = api.post("/events", json={**body, "data": {"task": "changed"}})
    assert first.status_code == again.status_code == 202
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["messages"] == first.json()["messages"]
    hook.bodies(1)
    assert len(hook.settle()) == 1


def test_an_event_nothing_routes_is_stored_with_a_warning(api: httpx.Client, unique: str) -> None:
    answer = post_event(api, type=f"audit.{unique}", data={"who": "me"})
    assert answer["messages"] == [] and answer["rules"] == []
    assert "nothing is sent" in answer["warnings"][0]
    assert api.get(f"/events/{answer['id']}").json()["type"] == f"audit.{unique}"


@pytest.mark.parametrize(
    ("event_type", "labels", "level"),
    [
        ("task.failed", {}, "error"),
        ("task.retrying", {}, "warning"),
        ("task.succeeded", {}, "success"),
        ("alert.firing", {}, "warning"),
        ("alert.firing", {"severity": "critical"}, "critical"),
        ("alert.resolved", {"severity": "critical"}, "success"),
        ("data.updated", {}, "info"),
        ("system.permission_requested", {}, "info"),
        ("something.else", {}, "info"),
    ],
)
def test_the_level_defaults_to_the_types_own(
    api: httpx.Client, event_type: str, labels: dict[str, str], level: str
) -> None:
    assert post_event(api, type=event_type, labels=labels)["level"] == level


def test_events_are_listed_newest_first_and_filtered(api: httpx.Client, unique: str) -> None:
    kind = f"listing.{unique}"
    ids = [
        post_event(api, type=kind, source=f"src-{unique}", data={"n": n})["id"] for n in range(3)
    ]
    page = api.get("/events", params={"type": kind, "limit": 2}).json()
    assert [e["id"] for e in page["items"]] == ids[::-1][:2]
    rest = api.get("/events", params={"type": kind, "cursor": page["next_cursor"]}).json()
    assert [e["id"] for e in rest["items"]] == ids[:1] and rest["next_cursor"] is None
    by_source = api.get("/events", params={"source": f"src-{unique}"}).json()["items"]
    assert len(by_source) == 3
    assert api.get("/events", params={"kind": "x"}).status_code == 422  # a misspelt filter
    assert api.get("/events/evt_00000000000000000000000000").status_code == 404
    assert api.get("/events/nope").status_code == 404


def test_a_sender_token_reports_events(
    server: ServerProcess, sender_token: str, hook: Hook
) -> None:
    with server.client(sender_token) as sender:
        response = sender.post("/events", json={"type": "data.updated", "channels": [hook.name]})
        assert response.status_code == 202, response.text
        assert sender.get(f"/events/{response.json()['id']}").status_code == 200
        assert sender.get("/rules").status_code == 403


def test_the_client_and_the_cli_report_events(server: ServerProcess, hook: Hook) -> None:
    with Client(server.url, server.admin_token) as client:
        answer = client.event(
            "data.updated",
            {"dataset": "dw.orders", "rows": 1200},
            source="warehouse",
            channels=hook.name,
            labels={"env": "prod"},
        )
        assert answer["id"].startswith("evt_")
        assert client.get_event(answer["id"])["data"]["dataset"] == "dw.orders"

    env = {**os.environ, "MSGPUSH_URL": server.url, "MSGPUSH_TOKEN": server.admin_token}
    done = subprocess.run(
        [
            sys.executable, "-m", "msgpush", "event", "task.retrying",
            "--source", "cron", "-d", "task=backup", "-d", "attempt=2",
            "--label", "env=prod", "-c", hook.name,
        ],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    event_id = done.stdout.strip()
    assert event_id.startswith("evt_")
    assert hook.name in done.stderr
    titles = sorted(b["title"] for b in hook.bodies(2))
    assert titles == ["Data set dw.orders updated", "Task backup is retrying"]

    bad = subprocess.run(
        [sys.executable, "-m", "msgpush", "event", "task.failed", "-c", "no-such-channel"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 1 and "channels.0" in bad.stderr
