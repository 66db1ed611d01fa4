"""The Alertmanager and Grafana adapters, fed their documented example payloads (payloads/):
events with labels and annotations kept, rules and ?channels= routing, re-sent alerts announced
once, authentication by header, basic auth or ?token= (on these routes only)."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from msgpush.events.adapters import Routing, alertmanager_events, grafana_events
from tests.events.conftest import Hook
from tests.server import ServerProcess

PAYLOADS = Path(__file__).parent / "payloads"


def payload(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((PAYLOADS / name).read_text())
    return loaded


def resolved(body: dict[str, Any], ends_at: str) -> dict[str, Any]:
    """The same notification once its alerts resolved, as Alertmanager sends it."""
    later = copy.deepcopy(body)
    later["status"] = "resolved"
    for alert in later["alerts"]:
        alert["status"] = "resolved"
        alert["endsAt"] = ends_at
    return later


# -- the mapping (units) ----------------------------------------------------------------------


def test_alertmanagers_documented_payload_becomes_one_event_per_alert() -> None:
    [event], warnings = alertmanager_events(payload("alertmanager_v4.json"), Routing())
    assert warnings == []
    assert event.type == "alert.firing" and event.source == "alertmanager"
    assert event.level is not None and event.level.value == "critical"
    assert event.labels == {
        "alertname": "ProbeFailure",
        "severity": "critical",
        "namespace": "monitoring",
        "cluster": "foo",
        "node": "node.foo.example.com",
        "prometheus": "monitoring/k8s",
    }
    assert (
        event.data["annotations"]["summary"] == "BlackBox Probe Failure: https://server.example.org"
    )
    assert event.data["summary"] == "BlackBox Probe Failure: https://server.example.org"
    assert event.data["fingerprint"] == "1a30ba71cca2921f"
    assert event.data["since"] == "2023-02-06T13:08:45.828Z"
    assert "ends_at" not in event.data  # the zero time of a firing alert
    assert event.occurred_at is not None and event.occurred_at.year == 2023
    assert event.idempotency_key and event.idempotency_key.startswith("alertmanager:")


def test_the_resolved_notification_keeps_the_start_and_pairs_by_fingerprint() -> None:
    firing = payload("alertmanager_v4.json")
    [event], _ = alertmanager_events(resolved(firing, "2023-02-06T13:20:15.828Z"), Routing())
    assert event.type == "alert.resolved" and event.level is not None
    assert event.level.value == "success"
    assert event.data["ends_at"] == "2023-02-06T13:20:15.828Z"
    [again], _ = alertmanager_events(firing, Routing())
    assert event.idempotency_key != again.idempotency_key


def test_grafanas_documented_payload_keeps_values_and_links() -> None:
    events, _ = grafana_events(payload("grafana_unified.json"), Routing(channels=["ops"]))
    assert [e.labels["alertname"] for e in events] == ["High memory usage", "High CPU usage"]
    memory = events[0]
    assert memory.source == "grafana" and memory.channels == ["ops"]
    assert memory.data["value"] == "B=44.2394, C=1"
    assert memory.data["values"] == {"B": 44.23943737541908, "C": 1}
    assert memory.data["runbook_url"] == "https://myrunbook.com/runbook/1234"
    assert memory.data["silence_url"].startswith("https://play.grafana.org/alerting/silence/new")
    assert "dashboard_url" not in memory.data  # sent empty
    assert memory.labels["zone"] == "us-1"


def test_grafana_9s_value_string_is_read() -> None:
    body = payload("grafana_unified.json")
    for alert in body["alerts"]:
        del alert["values"]
        alert["valueString"] = "[ metric='' labels={} value=14151.331895396988 ]"
    events, _ = grafana_events(body, Routing())
    assert events[0].data["value"] == 14151.331895396988


def test_grafanas_legacy_payload_becomes_one_event_per_match() -> None:
    [event], warnings = grafana_events(payload("grafana_legacy.json"), Routing())
    assert warnings == []
    assert event.type == "alert.firing"
    assert event.labels == {"alertname": "Panel Title alert", "tag_name": "tag value"}
    assert event.data["metric"] == "Count" and event.data["value"] == 1
    assert event.data["url"].startswith("http://localhost:3000/d/hZ7BuVbWz/test-dashboard")
    ok = {**payload("grafana_legacy.json"), "state": "ok", "evalMatches": []}
    [back], _ = grafana_events(ok, Routing())
    assert back.type == "alert.resolved"
    pending, warnings = grafana_events({**ok, "state": "pending"}, Routing())
    assert pending == [] and "pending" in warnings[0]


# -- through the API ----------------------------------------------------------------------------


def test_alertmanager_notifications_reach_the_channels_once_per_state(
    api: httpx.Client, hook: Hook, unique: str
) -> None:
    body = payload("alertmanager_v4.json")
    body["alerts"][0]["fingerprint"] = f"fp-{unique}"  # each backend's run is its own alert
    url = f"/integrations/alertmanager?channels={hook.name}"
    first = api.post(url, json=body)
    assert first.status_code == 202, first.text
    [answer] = first.json()["items"]
    assert answer["type"] == "alert.firing" and answer["level"] == "critical"
    # Alertmanager sends the group again when it changes, and on every repeat interval
    assert api.post(url, json=body).json()["items"][0]["id"] == answer["id"]
    gone = api.post(url, json=resolved(body, "2023-02-06T13:20:15.828Z"))
    assert gone.status_code == 202 and gone.json()["items"][0]["type"] == "alert.resolved"

    firing, done = hook.bodies(2)
    assert firing["title"] == "ProbeFailure is firing"
    assert firing["content"].startswith("**BlackBox Probe Failure: https://server.example.org**")
    assert firing["fields"]["Severity"] == "critical"
    assert firing["fields"]["namespace"] == "monitoring"
    assert firing["links"] == [
        {"title": "Open alert", "url": "https://console.apps.example.com/monitoring"}
    ]
    assert firing["event"]["data"]["annotations"]["description"].startswith("Instance https://")
    assert done["title"] == "Resolved: ProbeFailure"
    assert "after firing for 11m30s" in done["content"]
    assert len(hook.settle()) == 2


def test_rules_route_integration_alerts(
    api: httpx.Client, hook: Hook, rules: Callable[..., Any], unique: str
) -> None:
    rules(
        name=f"grafana {unique}",
        event_types=["alert.firing"],
        labels={"team": "blue", "zone": f"=~us-.*|{unique}"},
        channels=[hook.name],
    )
    body = payload("grafana_unified.json")
    for alert in body["alerts"]:
        alert["fingerprint"] += unique
    response = api.post("/integrations/grafana", json=body)
    assert response.status_code == 202, response.text
    routed = [a for a in response.json()["items"] if a["messages"]]
    assert len(routed) == 1  # the us-1 alert; eu-1 does not match the rule
    [body_sent] = hook.bodies(1)
    assert body_sent["title"] == "High memory usage is firing"
    assert body_sent["fields"]["Value"] == "B=44.2394, C=1"
    titles = [link["title"] for link in body_sent["links"]]
    assert titles == ["Open alert", "Runbook", "Silence"]


def test_the_integrations_group_their_own_channels(
    api: httpx.Client, hook: Hook, unique: str
) -> None:
    body = payload("alertmanager_v4.json")
    alerts = []
    for n in range(30):
        alert = copy.deepcopy(body["alerts"][0])
        alert["labels"]["node"] = f"node-{n}"
        alert["fingerprint"] = f"{unique}-{n}"
        alerts.append(alert)
    body["alerts"] = alerts
    url = f"/integrations/alertmanager?channels={hook.name}&group_by=alertname&group_window_s=1"
    response = api.post(url, json=body)
    assert response.status_code == 202, response.text
    items = response.json()["items"]
    assert sum(1 for a in items if a["messages"]) == 1
    assert len({a["grouped"][0]["digest"] for a in items if a["grouped"]}) == 1
    lead, digest = hook.bodies(2, timeout=10)
    assert lead["event"]["type"] == "alert.firing"
    assert digest["event"]["data"]["count"] == 29


@pytest.mark.parametrize("route", ["alertmanager", "grafana"])
def test_the_token_may_come_in_the_query_or_as_basic_auth_here(
    server: ServerProcess, sender_token: str, route: str
) -> None:
    url = f"{server.url}/api/v1/integrations/{route}"
    body = {"alerts": []}
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(f"{url}?token=mpk_wrong", json=body).status_code == 401
    assert httpx.post(f"{url}?token={sender_token}", json=body).status_code == 202
    basic = base64.b64encode(f"alertmanager:{sender_token}".encode()).decode()
    assert (
        httpx.post(url, json=body, headers={"Authorization": f"Basic {basic}"}).status_code == 202
    )
    bearer = {"Authorization": f"Bearer {sender_token}"}
    assert httpx.post(url, json=body, headers=bearer).status_code == 202
    # a wrong header is not rescued by a right query token
    wrong = {"Authorization": "Bearer mpk_wrong"}
    assert httpx.post(f"{url}?token={sender_token}", json=body, headers=wrong).status_code == 401
    odd = httpx.post(f"{url}?token={sender_token}&colour=red", json=body)
    assert odd.status_code == 422 and odd.json()["error"]["field"] == "colour"


@pytest.mark.parametrize(
    ("query", "body", "field"),
    [
        ("", {"version": "4"}, "alerts"),
        ("", {"alerts": [{"labels": "x"}]}, "labels"),
        ("?channels=no-such-channel", None, "channels.0"),
        ("?group_window_s=soon", {"alerts": []}, "group_window_s"),
    ],
)
def test_bad_notifications_are_422(
    api: httpx.Client, query: str, body: dict[str, Any] | None, field: str
) -> None:
    body = body if body is not None else payload("alertmanager_v4.json")
    response = api.post(f"/integrations/alertmanager{query}", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"].endswith(field), response.text


def test_truncated_alerts_are_reported(api: httpx.Client) -> None:
    response = api.post("/integrations/alertmanager", json={"alerts": [], "truncatedAlerts": 12})
    assert response.status_code == 202
    assert "left out 12 alerts" in response.json()["warnings"][0]
