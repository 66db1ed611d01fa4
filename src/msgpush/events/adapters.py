"""Inbound adapters: what Prometheus Alertmanager and Grafana already send, as ``alert.*`` events.

- Alertmanager's webhook (payload version 4): one event per alert, firing or resolved, with its
  labels and annotations kept.
- Grafana's webhook contact point: unified alerting sends the Alertmanager shape plus
  ``values``, ``silenceURL``, ``dashboardURL`` and ``panelURL`` per alert; legacy (pre-8)
  alerting sends one flat body with ``evalMatches``, one event per match.

The payloads as the tools document them:
https://prometheus.io/docs/alerting/latest/configuration/#webhook_config and
https://grafana.com/docs/grafana/latest/alerting/configure-notifications/manage-contact-points/integrations/webhook-notifier/

Both tools send a group's every alert again whenever the group changes, and again on each repeat
interval: each alert's event carries an idempotency key made of its fingerprint, status and
start, so one alert is announced once per state, however often it is re-sent.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from msgpush.errors import validation_error
from msgpush.events.models import Event
from msgpush.events.templates import severity_level, to_ms
from msgpush.message import Level

MAX_LABELS = 50
MAX_VALUE_CHARS = 1024
# labels kept first when an alert has more than an event takes
KEY_LABELS = ("alertname", "severity", "instance", "job", "namespace", "service", "env")


class Lenient(BaseModel):
    """The tools' payloads grow new fields; unknown ones are kept aside, never an error."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Alert(Lenient):
    status: str = "firing"
    labels: dict[str, Any] = Field(default_factory=dict)
    annotations: dict[str, Any] | None = None
    starts_at: str | None = Field(default=None, alias="startsAt")
    ends_at: str | None = Field(default=None, alias="endsAt")
    generator_url: str | None = Field(default=None, alias="generatorURL")
    fingerprint: str | None = None
    # Grafana's additions
    silence_url: str | None = Field(default=None, alias="silenceURL")
    dashboard_url: str | None = Field(default=None, alias="dashboardURL")
    panel_url: str | None = Field(default=None, alias="panelURL")
    image_url: str | None = Field(default=None, alias="imageURL")
    values: dict[str, Any] | None = None
    value_string: str | None = Field(default=None, alias="valueString")


class Notification(Lenient):
    """Alertmanager's webhook body (version "4"); Grafana's unified alerting sends the same."""

    version: str | None = None
    group_key: str | None = Field(default=None, alias="groupKey")
    truncated_alerts: int | None = Field(default=0, alias="truncatedAlerts")
    status: str | None = None
    receiver: str | None = None
    group_labels: dict[str, Any] | None = Field(default=None, alias="groupLabels")
    common_labels: dict[str, Any] | None = Field(default=None, alias="commonLabels")
    common_annotations: dict[str, Any] | None = Field(default=None, alias="commonAnnotations")
    external_url: str | None = Field(default=None, alias="externalURL")
    alerts: list[Alert]
    org_id: int | None = Field(default=None, alias="orgId")


class EvalMatch(Lenient):
    value: Any = None
    metric: str | None = None
    tags: dict[str, Any] | None = None


class LegacyGrafana(Lenient):
    """Grafana's alerting before version 8: one rule, its state and its matches."""

    title: str | None = None
    rule_id: int | None = Field(default=None, alias="ruleId")
    rule_name: str | None = Field(default=None, alias="ruleName")
    rule_url: str | None = Field(default=None, alias="ruleUrl")
    state: str
    message: str | None = None
    image_url: str | None = Field(default=None, alias="imageUrl")
    eval_matches: list[EvalMatch] = Field(default_factory=list, alias="evalMatches")
    tags: dict[str, Any] | None = None


class Routing(BaseModel):
    """What the adapter's query string adds to every event: channels and grouping."""

    channels: list[str] = Field(default_factory=list)
    group_by: list[str] | None = None
    group_window_s: int | None = None


def _short(value: Any) -> str:
    return str(value)[:MAX_VALUE_CHARS]


INVALID_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_.:-]")


def _label_name(name: str) -> str:
    """A tag name as a label name: Grafana's "tag name" becomes tag_name (Prometheus' way)."""
    cleaned = INVALID_LABEL_CHARS.sub("_", name)[:128] or "_"
    return cleaned if re.match(r"[A-Za-z_]", cleaned) else f"_{cleaned}"[:128]


def _labels(raw: dict[str, Any]) -> dict[str, str]:
    """An alert's labels within an event's limits (50, of 1,024 characters), the ones that
    identify it first."""
    names = [k for k in KEY_LABELS if k in raw] + sorted(k for k in raw if k not in KEY_LABELS)
    return {_label_name(name): _short(raw[name]) for name in names[:MAX_LABELS]}


def _key(source: str, *parts: Any) -> str:
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()[:40]
    return f"{source}:{digest}"


def _event(body: dict[str, Any], field: str) -> Event:
    try:
        return Event.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc.errors(), field) from None


def _parse(model: type[Lenient], payload: Any) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


VALUE = re.compile(r"value=(-?[0-9.]+(?:e[-+]?[0-9]+)?)")


def _grafana_value(alert: Alert) -> Any:
    """Grafana's numbers: ``values`` {refId: n} (one shown as it is, several as B=44.2, C=1),
    or the numbers inside the older ``valueString``."""
    if alert.values:
        if len(alert.values) == 1:
            return next(iter(alert.values.values()))
        return ", ".join(
            f"{ref}={round(v, 4) if isinstance(v, float) else v}" for ref, v in alert.values.items()
        )
    if alert.value_string:
        found = VALUE.findall(alert.value_string)
        if len(found) == 1:
            return float(found[0])
        if found:
            return ", ".join(found)
    return None


def alertmanager_events(
    payload: Any, routing: Routing, source: str = "alertmanager"
) -> tuple[list[Event], list[str]]:
    """One event per alert of an Alertmanager (or Grafana unified alerting) notification."""
    note = _parse(Notification, payload)
    warnings = []
    if note.truncated_alerts:
        warnings.append(
            f"{source} left out {note.truncated_alerts} alerts of this group (its max_alerts)"
        )
    found = []
    for index, alert in enumerate(note.alerts):
        status = "resolved" if alert.status.lower() == "resolved" else "firing"
        labels = _labels(alert.labels)
        annotations = {k: _short(v) for k, v in (alert.annotations or {}).items()}
        ends = to_ms(alert.ends_at)
        data: dict[str, Any] = {
            "alertname": labels.get("alertname"),
            "status": status,
            "summary": annotations.get("summary"),
            "description": annotations.get("description") or annotations.get("message"),
            "instance": labels.get("instance"),
            "since": alert.starts_at,
            "ends_at": alert.ends_at if ends is not None else None,
            "generator_url": alert.generator_url,
            "fingerprint": alert.fingerprint,
            "annotations": annotations,
            "receiver": note.receiver,
            "group_key": note.group_key,
            "external_url": note.external_url,
        }
        for name in ("value", "threshold", "metric", "comparison", "runbook_url"):
            if annotations.get(name):
                data[name] = annotations[name]
        if source == "grafana":
            data |= {
                "value": _grafana_value(alert) if data.get("value") is None else data["value"],
                "silence_url": alert.silence_url,
                "dashboard_url": alert.dashboard_url or alert.panel_url,
                "image_url": alert.image_url,
                "values": alert.values,
                "org_id": note.org_id,
            }
        data = {k: v for k, v in data.items() if v not in (None, "", {})}
        level = Level.success if status == "resolved" else severity_level(labels.get("severity"))
        occurred = alert.ends_at if status == "resolved" and ends is not None else alert.starts_at
        found.append(
            _event(
                {
                    "type": f"alert.{status}",
                    "source": source,
                    "level": level.value,
                    "data": data,
                    "labels": labels,
                    "channels": routing.channels,
                    "occurred_at": occurred if to_ms(occurred) is not None else None,
                    "idempotency_key": _key(
                        source,
                        note.receiver,
                        routing.channels,
                        alert.fingerprint or sorted(labels.items()),
                        status,
                        alert.starts_at,
                    ),
                    "group_by": routing.group_by,
                    "group_window_s": routing.group_window_s,
                },
                f"alerts.{index}",
            )
        )
    return found, warnings


LEGACY_STATES = {"alerting": "firing", "no_data": "firing", "ok": "resolved"}


def grafana_events(payload: Any, routing: Routing) -> tuple[list[Event], list[str]]:
    """Grafana's webhook: unified alerting (with ``alerts``) or the legacy flat body."""
    if isinstance(payload, dict) and "alerts" in payload:
        return alertmanager_events(payload, routing, source="grafana")
    legacy = _parse(LegacyGrafana, payload)
    status = LEGACY_STATES.get(legacy.state)
    if status is None:  # pending, paused: nothing has happened yet
        return [], [f"grafana state {legacy.state!r} is not an alert; nothing is sent"]
    name = legacy.rule_name or legacy.title or "Grafana alert"
    matches = legacy.eval_matches or [EvalMatch()]
    found = []
    for index, match in enumerate(matches):
        labels = _labels({**(legacy.tags or {}), **(match.tags or {}), "alertname": name})
        level = Level.success if status == "resolved" else severity_level(labels.get("severity"))
        if legacy.state == "no_data":
            level = Level.warning
        data = {
            "alertname": name,
            "status": status,
            "summary": legacy.title,
            "description": legacy.message,
            "metric": match.metric,
            "value": match.value,
            "instance": labels.get("instance"),
            "url": legacy.rule_url,
            "image_url": legacy.image_url,
            "rule_id": legacy.rule_id,
            "state": legacy.state,
        }
        data = {k: v for k, v in data.items() if v not in (None, "")}
        found.append(
            _event(
                {
                    "type": f"alert.{status}",
                    "source": "grafana",
                    "level": level.value,
                    "data": data,
                    "labels": labels,
                    "channels": routing.channels,
                    "group_by": routing.group_by,
                    "group_window_s": routing.group_window_s,
                },
                f"evalMatches.{index}",
            )
        )
    return found, []
