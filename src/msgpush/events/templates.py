"""Built-in event types and their templates, overrides, and rendering an event into a message.

An event becomes a message in three steps: its data is read into *facts* (the names each family
of types understands, with common aliases: ``task``/``task_name``, ``url``/``link``, …), the
title and content templates (sandboxed Jinja2: a rule's, else the stored override for the type,
else the built-in one) are rendered, and fields and links are laid out from the facts so every
channel type shows them natively. Rendering never fails an event: a custom template that breaks
on this event's data falls back to the built-in one, with a warning in the answer.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from jinja2 import TemplateSyntaxError, meta
from pydantic import HttpUrl, TypeAdapter, ValidationError

from msgpush import template_worker
from msgpush.errors import ApiError
from msgpush.events.models import TemplateOverride, category_of
from msgpush.ids import iso, parse_time
from msgpush.message import MAX_CONTENT_CHARS, MAX_TITLE_CHARS, Level, Recipients
from msgpush.templating import (
    MESSAGE_OUTPUT_CHARS,
    TemplateError,
    TemplateLimitError,
    parse_template,
    render_limited,
)

MAX_FIELDS = 50
MAX_FIELD_CHARS = 1024
MAX_LINKS = 10
MAX_LABELS = 50
# the names a template sees (see README "Templates"); anything else is a mistake worth a 422
CONTEXT_NAMES = frozenset(
    {"event", "type", "source", "level", "labels", "data", "f", "occurred_at", "duration", "when"}
)


@dataclass
class EventRecord:
    """An accepted event as it is stored, rendered and carried in the webhook envelope."""

    id: str
    type: str
    source: str
    level: str
    labels: dict[str, str]
    data: dict[str, Any]
    occurred_at: int
    created_at: int
    channels: list[str] = field(default_factory=list)
    fingerprint: str | None = None

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "level": self.level,
            "labels": self.labels,
            "data": self.data,
            "channels": self.channels,
            "occurred_at": iso(self.occurred_at),
            "created_at": iso(self.created_at),
        }


# -- reading data into facts ----------------------------------------------------------------


def pick(event: EventRecord, *names: str) -> Any:
    """The first present, non-empty value among data keys (``annotations.summary`` reads
    nested objects) and, for names written ``labels.x``, labels."""
    for name in names:
        if name.startswith("labels."):
            value: Any = event.labels.get(name[7:])
        else:
            value = event.data
            for part in name.split("."):
                value = value.get(part) if isinstance(value, dict) else None
        if value is not None and value != "" and value != [] and value != {}:
            return value
    return None


def text(value: Any) -> str | None:
    """A fact as one line of text (numbers kept readable, objects as compact JSON)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return number(value)
    if isinstance(value, int | str):
        return str(value)
    return orjson.dumps(value).decode()


def number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}" if abs(value) >= 10_000 else str(int(value))
    if abs(value) >= 1:
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def duration(value: Any) -> str | None:
    """Seconds (a number, or text like "192") as 3m12s; other text as it is."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return str(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return text(value)
    seconds = float(value)
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    total = round(seconds)
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def to_ms(value: Any) -> int | None:
    """A time (ISO 8601 text, epoch seconds or milliseconds) in milliseconds, or None."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            return int(value if value > 1e11 else value * 1000)
        ms = parse_time(str(value))
    except (ValueError, OverflowError):
        return None
    # Alertmanager's endsAt of a firing alert is the zero time 0001-01-01
    return ms if ms > 0 else None


def when(value: Any) -> str | None:
    """A time as 2026-01-31 08:00:05 UTC; text that is not a time as it is."""
    ms = to_ms(value)
    if ms is None:
        return text(value)
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


COMPARISONS = {
    ">": "above",
    ">=": "at or above",
    "<": "below",
    "<=": "at or below",
    "==": "equal to",
    "=": "equal to",
    "!=": "not equal to",
    "gt": "above",
    "gte": "at or above",
    "lt": "below",
    "lte": "at or below",
}


def task_facts(event: EventRecord) -> dict[str, Any]:
    seconds = pick(event, "duration_s", "duration", "elapsed_s", "elapsed")
    if seconds is None and (ms := pick(event, "duration_ms")) is not None:
        seconds = ms / 1000 if isinstance(ms, int | float) else ms
    if seconds is None:
        started, finished = to_ms(pick(event, "started_at")), to_ms(pick(event, "finished_at"))
        if started is not None and finished is not None and finished >= started:
            seconds = (finished - started) / 1000
    next_at = pick(event, "next_attempt_at", "next_retry_at")
    retry_in = pick(event, "retry_in_s", "retry_in")
    return {
        "task": text(pick(event, "task", "task_name", "task_id", "dag_id", "job", "name")),
        "run": text(pick(event, "run", "run_id", "execution_id", "execution_date")),
        "duration": duration(seconds),
        "attempt": text(pick(event, "attempt", "try_number", "retry")),
        "max_attempts": text(pick(event, "max_attempts", "max_tries", "retries")),
        "error": text(pick(event, "error", "exception", "reason", "message")),
        "next_attempt": f"at {when(next_at)}"
        if next_at is not None
        else (f"in {duration(retry_in)}" if retry_in is not None else None),
        "link": pick(event, "url", "link", "task_url"),
        "log_url": pick(event, "log_url", "logs_url"),
        "owner": text(pick(event, "owner", "labels.owner")),
    }


ALERT_LABELS_SHOWN = 10


def alert_facts(event: EventRecord) -> dict[str, Any]:
    since_ms = to_ms(pick(event, "since", "starts_at", "startsAt"))
    if since_ms is None and event.type == "alert.firing":
        since_ms = event.occurred_at
    ended_ms = to_ms(pick(event, "ends_at", "endsAt", "resolved_at"))
    if ended_ms is None and event.type == "alert.resolved":
        ended_ms = event.occurred_at
    fired_for = None
    if since_ms is not None and ended_ms is not None and ended_ms >= since_ms:
        fired_for = duration((ended_ms - since_ms) / 1000)
    comparison = text(pick(event, "comparison", "operator", "op"))
    shown = {"alertname", "instance", "severity", "__name__"}
    extra = {k: v for k, v in sorted(event.labels.items()) if k not in shown}
    return {
        "alertname": text(pick(event, "alertname", "labels.alertname", "rule", "name")),
        "summary": text(pick(event, "summary", "annotations.summary", "title")),
        "description": text(pick(event, "description", "annotations.description", "message")),
        "metric": text(pick(event, "metric", "labels.__name__")),
        "value": text(pick(event, "value", "current_value")),
        "comparison": comparison,
        "comparison_text": COMPARISONS.get(comparison or "", comparison or "beyond"),
        "threshold": text(pick(event, "threshold", "limit")),
        "instance": text(pick(event, "instance", "labels.instance", "labels.host", "labels.pod")),
        "severity": text(pick(event, "severity", "labels.severity")),
        "since": when(since_ms) if since_ms is not None else None,
        "ended": when(ended_ms) if ended_ms is not None else None,
        "fired_for": fired_for,
        "link": pick(event, "url", "link", "generator_url", "generatorURL"),
        "dashboard_url": pick(event, "dashboard_url", "dashboardURL", "panel_url", "panelURL"),
        "runbook_url": pick(event, "runbook_url", "annotations.runbook_url"),
        "silence_url": pick(event, "silence_url", "silenceURL"),
        "labels_shown": dict(list(extra.items())[:ALERT_LABELS_SHOWN]),
    }


def data_facts(event: EventRecord) -> dict[str, Any]:
    rows = pick(event, "rows", "row_count", "records")
    return {
        "dataset": text(pick(event, "dataset", "data_set", "table", "name")),
        "rows": number(rows)
        if isinstance(rows, int | float) and not isinstance(rows, bool)
        else text(rows),
        "freshness": when(pick(event, "freshness", "as_of", "data_time", "updated_to")),
        "partition": text(pick(event, "partition", "batch")),
        "link": pick(event, "url", "link"),
    }


def system_facts(event: EventRecord) -> dict[str, Any]:
    return {
        "title": text(pick(event, "title", "summary")),
        "message": text(pick(event, "message", "description", "text")),
        "requester": text(pick(event, "requester", "user", "applicant")),
        "resource": text(pick(event, "resource", "target", "object")),
        "permission": text(pick(event, "permission", "access", "role")),
        "reason": text(pick(event, "reason", "comment")),
        "approve_url": pick(event, "approve_url", "approval_url", "url", "link"),
        "reject_url": pick(event, "reject_url"),
        "link": pick(event, "link", "url"),
    }


GENERIC_HEAD = ("title", "summary", "message", "description", "text")


def generic_facts(event: EventRecord) -> dict[str, Any]:
    return {
        "title": text(pick(event, "title", "summary", "subject")),
        "message": text(pick(event, "message", "description", "text", "body")),
        "link": pick(event, "url", "link"),
    }


# -- fields and links -----------------------------------------------------------------------


def flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested data as dotted keys and one-line values (lists and deep objects as JSON)."""
    items: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not prefix:
            items.extend(flatten(value, f"{name}."))
        else:
            items.append((name, text(value) or ""))
    return items


def all_data_fields(event: EventRecord, skip: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k, v in flatten(event.data) if k not in skip}


def task_fields(event: EventRecord, f: dict[str, Any]) -> dict[str, Any]:
    attempt = f["attempt"]
    if attempt and f["max_attempts"]:
        attempt = f"{attempt} of {f['max_attempts']}"
    return {
        "Task": f["task"],
        "Run": f["run"],
        "Attempt": attempt,
        "Duration": f["duration"],
        "Next attempt": f["next_attempt"],
        "Owner": f["owner"],
        "Source": event.source,
    }


def alert_fields(event: EventRecord, f: dict[str, Any]) -> dict[str, Any]:
    threshold = f["threshold"]
    if threshold and f["comparison"]:
        threshold = f"{f['comparison']} {threshold}"
    fields: dict[str, Any] = {
        "Alert": f["alertname"],
        "Instance": f["instance"],
        "Severity": f["severity"],
        "Metric": f["metric"],
        "Value": f["value"],
        "Threshold": threshold,
    }
    if event.type == "alert.resolved":
        fields |= {"Fired for": f["fired_for"], "Since": f["since"], "Resolved": f["ended"]}
    else:
        fields["Since"] = f["since"]
    fields["Source"] = event.source
    fields |= f["labels_shown"]
    return fields


def data_fields(event: EventRecord, f: dict[str, Any]) -> dict[str, Any]:
    return {
        "Data set": f["dataset"],
        "Rows": f["rows"],
        "Data as of": f["freshness"],
        "Partition": f["partition"],
        "Source": event.source,
    }


def permission_fields(event: EventRecord, f: dict[str, Any]) -> dict[str, Any]:
    return {
        "Requester": f["requester"],
        "Resource": f["resource"],
        "Permission": f["permission"],
        "Source": event.source,
    }


def system_fields(event: EventRecord, f: dict[str, Any]) -> dict[str, Any]:
    return {**all_data_fields(event, GENERIC_HEAD), "Source": event.source}


def generic_fields(event: EventRecord, f: dict[str, Any]) -> dict[str, Any]:
    return {**all_data_fields(event, GENERIC_HEAD), "Source": event.source}


LinkSpec = list[tuple[str, Any]]


def extra_links(event: EventRecord) -> LinkSpec:
    """``data.links``: [{"title", "url"}] any event may carry."""
    links = event.data.get("links")
    if not isinstance(links, list):
        return []
    return [
        (str(item.get("title") or "Open"), item.get("url"))
        for item in links
        if isinstance(item, dict)
    ]


# -- the built-in templates -----------------------------------------------------------------


@dataclass(frozen=True)
class Builtin:
    """One built-in event type (or family): its usual level, templates, facts and layout."""

    event_type: str
    name: str
    level: Level
    title: str
    content: str
    facts: Callable[[EventRecord], dict[str, Any]]
    fields: Callable[[EventRecord, dict[str, Any]], dict[str, Any]]
    links: Callable[[dict[str, Any]], LinkSpec]
    sample: dict[str, Any]  # {"source", "data", "labels"}: for previews, docs and tests


TASK_NAME = '{{ f.task or "A task" }}'
ERROR_BLOCK = """
{%- if f.error %}

Error: {{ f.error }}
{%- endif %}"""

BUILTINS: list[Builtin] = [
    Builtin(
        "task.failed",
        "Task failed",
        Level.error,
        title='Task {{ f.task or "" }} failed',
        content=(
            f"**{TASK_NAME}** failed"
            "{% if f.duration %} after {{ f.duration }}{% endif %}"
            "{% if f.attempt %} (attempt {{ f.attempt }}"
            "{% if f.max_attempts %} of {{ f.max_attempts }}{% endif %}){% endif %}."
            f"{ERROR_BLOCK}"
        ),
        facts=task_facts,
        fields=task_fields,
        links=lambda f: [("Open task", f["link"]), ("Open log", f["log_url"])],
        sample={
            "source": "scheduler",
            "data": {
                "task": "daily_sales",
                "run_id": 7,
                "duration_s": 192,
                "attempt": 3,
                "max_attempts": 3,
                "error": "timeout after 180 s waiting for warehouse.orders",
                "url": "https://scheduler.example.com/tasks/daily_sales/runs/7",
            },
            "labels": {"env": "prod", "team": "data"},
        },
    ),
    Builtin(
        "task.retrying",
        "Task retrying",
        Level.warning,
        title='Task {{ f.task or "" }} is retrying',
        content=(
            f"**{TASK_NAME}** failed"
            "{% if f.attempt %} on attempt {{ f.attempt }}"
            "{% if f.max_attempts %} of {{ f.max_attempts }}{% endif %}{% endif %}"
            " and will be retried{% if f.next_attempt %} {{ f.next_attempt }}{% endif %}."
            f"{ERROR_BLOCK}"
        ),
        facts=task_facts,
        fields=task_fields,
        links=lambda f: [("Open task", f["link"]), ("Open log", f["log_url"])],
        sample={
            "source": "scheduler",
            "data": {
                "task": "daily_sales",
                "run_id": 7,
                "attempt": 1,
                "max_attempts": 3,
                "duration_s": 61,
                "retry_in_s": 300,
                "error": "connection reset by warehouse",
                "url": "https://scheduler.example.com/tasks/daily_sales/runs/7",
            },
            "labels": {"env": "prod", "team": "data"},
        },
    ),
    Builtin(
        "task.succeeded",
        "Task succeeded",
        Level.success,
        title='Task {{ f.task or "" }} succeeded',
        content=(
            f"**{TASK_NAME}** finished successfully"
            "{% if f.duration %} in {{ f.duration }}{% endif %}."
        ),
        facts=task_facts,
        fields=task_fields,
        links=lambda f: [("Open task", f["link"]), ("Open log", f["log_url"])],
        sample={
            "source": "scheduler",
            "data": {
                "task": "daily_sales",
                "run_id": 8,
                "duration_s": 754,
                "url": "https://scheduler.example.com/tasks/daily_sales/runs/8",
            },
            "labels": {"env": "prod", "team": "data"},
        },
    ),
    Builtin(
        "alert.firing",
        "Alert firing",
        Level.warning,
        title=(
            '{{ f.alertname or "Alert" }}{% if f.instance %} on {{ f.instance }}{% endif %}'
            " is firing"
        ),
        content="""\
{%- if f.summary %}**{{ f.summary }}**

{% endif -%}
{%- if f.value %}{{ f.metric or "The value" }} is {{ f.value }}
{%- if f.threshold %}, {{ f.comparison_text }} the threshold of {{ f.threshold }}{% endif %}.

{% endif -%}
{%- if f.description and f.description != f.summary %}{{ f.description }}

{% endif -%}
Firing since {{ f.since }}.""",
        facts=alert_facts,
        fields=alert_fields,
        links=lambda f: [
            ("Open alert", f["link"]),
            ("Open dashboard", f["dashboard_url"]),
            ("Runbook", f["runbook_url"]),
            ("Silence", f["silence_url"]),
        ],
        sample={
            "source": "monitoring",
            "data": {
                "alertname": "HighCPU",
                "metric": "cpu_usage_percent",
                "value": 93.5,
                "comparison": ">",
                "threshold": 90,
                "instance": "db-1",
                "since": "2026-01-31T08:00:05Z",
                "summary": "CPU above 90% for 5 minutes",
                "url": "https://grafana.example.com/d/cpu?var-host=db-1",
            },
            "labels": {"alertname": "HighCPU", "env": "prod", "severity": "warning"},
        },
    ),
    Builtin(
        "alert.resolved",
        "Alert resolved",
        Level.success,
        title=(
            'Resolved: {{ f.alertname or "alert" }}'
            "{% if f.instance %} on {{ f.instance }}{% endif %}"
        ),
        content="""\
{%- if f.summary %}**{{ f.summary }}**

{% endif -%}
{{ f.alertname or "The alert" }}{% if f.instance %} on {{ f.instance }}{% endif %} is resolved
{%- if f.fired_for %} after firing for {{ f.fired_for }}{% endif %}
{%- if f.since %} (since {{ f.since }}){% endif %}.
{%- if f.value %}

Last value: {{ f.value }}{% if f.threshold %} (threshold {{ f.comparison or "" }} {{ f.threshold }}){% endif %}.
{%- endif %}""",
        facts=alert_facts,
        fields=alert_fields,
        links=lambda f: [("Open alert", f["link"]), ("Open dashboard", f["dashboard_url"])],
        sample={
            "source": "monitoring",
            "data": {
                "alertname": "HighCPU",
                "metric": "cpu_usage_percent",
                "value": 41.2,
                "comparison": ">",
                "threshold": 90,
                "instance": "db-1",
                "since": "2026-01-31T08:00:05Z",
                "ends_at": "2026-01-31T08:12:35Z",
                "url": "https://grafana.example.com/d/cpu?var-host=db-1",
            },
            "labels": {"alertname": "HighCPU", "env": "prod", "severity": "warning"},
        },
    ),
    Builtin(
        "data.updated",
        "Data set updated",
        Level.info,
        title='Data set {{ f.dataset or "" }} updated',
        content=(
            '**{{ f.dataset or "A data set" }}** was refreshed'
            "{% if f.rows %}: {{ f.rows }} rows{% endif %}"
            "{% if f.freshness %}, data as of {{ f.freshness }}{% endif %}."
        ),
        facts=data_facts,
        fields=data_fields,
        links=lambda f: [("Open data set", f["link"])],
        sample={
            "source": "warehouse",
            "data": {
                "dataset": "dw.sales_daily",
                "rows": 1284019,
                "freshness": "2026-01-31T07:00:00Z",
                "partition": "dt=2026-01-30",
                "url": "https://data.example.com/datasets/dw.sales_daily",
            },
            "labels": {"env": "prod", "team": "data"},
        },
    ),
    Builtin(
        "system.permission_requested",
        "Permission requested",
        Level.info,
        title=(
            '{{ f.requester or "Someone" }} requests '
            '{{ f.permission or "access" }} to {{ f.resource or "a resource" }}'
        ),
        content=(
            '**{{ f.requester or "Someone" }}** asks for {{ f.permission or "access" }} '
            'to **{{ f.resource or "a resource" }}**.'
            "{% if f.reason %}\n\nReason: {{ f.reason }}{% endif %}"
        ),
        facts=system_facts,
        fields=permission_fields,
        links=lambda f: [("Approve", f["approve_url"]), ("Reject", f["reject_url"])],
        sample={
            "source": "approvals",
            "data": {
                "requester": "zhangsan",
                "resource": "dw.finance_ledger",
                "permission": "read",
                "reason": "Quarter-end reconciliation",
                "approve_url": "https://approvals.example.com/requests/381/approve",
                "reject_url": "https://approvals.example.com/requests/381/reject",
            },
            "labels": {"env": "prod"},
        },
    ),
    Builtin(
        "system.*",
        "System event",
        Level.info,
        title='{{ f.title or ("System event: " ~ type) }}',
        content="{{ f.message or '' }}",
        facts=system_facts,
        fields=system_fields,
        links=lambda f: [("Open", f["link"])],
        sample={
            "type": "system.maintenance",
            "source": "platform",
            "data": {
                "title": "Maintenance window starts at 22:00",
                "message": "The warehouse is read-only from 22:00 to 23:00 UTC.",
                "window": "22:00-23:00 UTC",
            },
            "labels": {"env": "prod"},
        },
    ),
]

GENERIC = Builtin(
    "*",
    "Any other event",
    Level.info,
    title="{{ f.title or type }}{% if source %} from {{ source }}{% endif %}",
    content="""\
{{- f.message or "" }}
{%- if labels %}

Labels: {% for k, v in labels | dictsort %}{{ k }}={{ v }}{% if not loop.last %}, {% endif %}{% endfor %}
{%- endif %}""",
    facts=generic_facts,
    fields=generic_fields,
    links=lambda f: [("Open", f["link"])],
    sample={
        "type": "billing.invoices_sent",
        "source": "billing",
        "data": {"title": "Invoice run finished", "invoices": 412, "total": "¥1,284,019.00"},
        "labels": {"env": "prod"},
    },
)

_BY_TYPE = {b.event_type: b for b in BUILTINS}


def builtin_for(event_type: str) -> Builtin:
    """The built-in template of a type: exact, else its family (system.*), else the generic."""
    exact = _BY_TYPE.get(event_type)
    if exact is not None:
        return exact
    if event_type.startswith("system."):
        return _BY_TYPE["system.*"]
    return GENERIC


def default_level(event_type: str, labels: dict[str, str]) -> Level:
    builtin = builtin_for(event_type)
    if event_type == "alert.firing":
        return severity_level(labels.get("severity"), builtin.level)
    return builtin.level


SEVERITIES = {
    "critical": Level.critical,
    "crit": Level.critical,
    "fatal": Level.critical,
    "page": Level.critical,
    "p0": Level.critical,
    "p1": Level.critical,
    "disaster": Level.critical,
    "error": Level.error,
    "err": Level.error,
    "high": Level.error,
    "major": Level.error,
    "p2": Level.error,
    "warning": Level.warning,
    "warn": Level.warning,
    "medium": Level.warning,
    "average": Level.warning,
    "minor": Level.warning,
    "p3": Level.warning,
    "info": Level.info,
    "information": Level.info,
    "low": Level.info,
    "none": Level.info,
    "p4": Level.info,
}


def severity_level(severity: str | None, default: Level = Level.warning) -> Level:
    """An alert's ``severity`` label as a level (critical, high/error, warning, info, …)."""
    return SEVERITIES.get((severity or "").strip().lower(), default)


# -- rendering ------------------------------------------------------------------------------


# built-ins are msgpush's own: they loop over at most an event's 50 labels, and their output
# is bounded by the event's data (256 KiB); this limit is only a backstop
BUILTIN_OUTPUT_CHARS = 4 * 1024 * 1024
PARTS = ("title", "content")


def render_text(source: str, context: dict[str, Any]) -> str:
    """A user-written template rendered in this process, with the sandbox's and the output
    limits but no time limit: for tests and tools; the server uses :func:`render_bounded`."""
    return render_limited(source, context, MESSAGE_OUTPUT_CHARS)


def undeclared_names(source: str) -> list[str]:
    """Top-level names a template uses that no template is given (a misspelt ``evnt``)."""
    try:
        names = meta.find_undeclared_variables(parse_template(source))
    except TemplateSyntaxError:  # reported by the compile check with its line
        return []
    return sorted(names - CONTEXT_NAMES)


def check_names(template: TemplateOverride, field: str) -> None:
    """422 for a name no template is given (``{{ evnt.type }}``), naming the part."""
    for part in ("title", "content"):
        source = getattr(template, part)
        unknown = undeclared_names(source) if source else []
        if unknown:
            known = ", ".join(sorted(CONTEXT_NAMES))
            where = f"{field}.{part}" if field else part
            raise ApiError(
                422,
                "invalid",
                f"{where}: unknown variable {unknown[0]!r}; a template can use {known}",
                where,
            )


def context(event: EventRecord, facts: dict[str, Any]) -> dict[str, Any]:
    occurred = iso(event.occurred_at)
    return {
        "event": {**event.view(), "occurred_at": occurred},
        "type": event.type,
        "source": event.source,
        "level": event.level,
        "labels": event.labels,
        "data": event.data,
        "f": facts,
        "occurred_at": occurred,
        "duration": duration,
        "when": when,
    }


_URL = TypeAdapter(HttpUrl)
_BLANK_LINES = re.compile(r"\n{3,}")
_SPACES = re.compile(r"\s+")


def _links(specs: LinkSpec) -> list[dict[str, str]]:
    links: list[dict[str, str]] = []
    seen: set[str] = set()
    for title, url in specs:
        if not isinstance(url, str) or not url or url in seen:
            continue
        try:
            _URL.validate_python(url)
        except ValidationError:  # relative (Alertmanager without --web.external-url) or not a URL
            continue
        seen.add(url)
        links.append({"title": title[:128] or "Open", "url": url})
        if len(links) == MAX_LINKS:
            break
    return links


def _fields(pairs: dict[str, Any]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in pairs.items():
        shown = text(value)
        if shown is None or shown == "" or not name:
            continue
        fields[str(name)[:MAX_FIELD_CHARS]] = shown[:MAX_FIELD_CHARS]
        if len(fields) == MAX_FIELDS:
            break
    return fields


class RenderError(ValueError):
    """A template given for a preview cannot render this event; ``part`` says which."""

    def __init__(self, part: str, error: TemplateError) -> None:
        super().__init__(f"{part}: {error}")
        self.part = part


@dataclass
class Rendered:
    payload: dict[str, Any]  # msgpush.message.Message as JSON
    warnings: list[str]


# what a template's parts rendered to, asked for by the part choice below
PartSources = dict[str, str]
PartResults = dict[str, str | TemplateError]
Choice = Generator[PartSources, PartResults, tuple[dict[str, str], list[str]]]


def _choose_parts(
    templates: tuple[TemplateOverride | None, ...], strict: bool, where: tuple[str, ...]
) -> Choice:
    """Each part from the first template that has it and renders. Yields the parts of one
    template at a time to render (in this process or in the render workers) and receives what
    they rendered to, so that a later template is rendered only for the parts still missing."""
    chosen: dict[str, str] = {}
    warnings: list[str] = []
    for index, template in enumerate(templates):
        if template is None:
            continue
        wanted = {
            p: getattr(template, p) for p in PARTS if p not in chosen and getattr(template, p)
        }
        if not wanted:
            continue
        results = yield wanted
        for part in wanted:
            result = results[part]
            if not isinstance(result, TemplateError):
                chosen[part] = result
                continue
            if strict and index == 0:
                raise RenderError(f"template.{part}", result)
            name = where[index] if index < len(where) else "template"
            warnings.append(f"{name}: the {part} template failed ({result}); used the built-in one")
    return chosen, warnings


def render(
    event: EventRecord,
    *templates: TemplateOverride | None,
    recipients: Recipients | None = None,
    strict: bool = False,
    where: tuple[str, ...] = (),
) -> Rendered:
    """The message for ``event``: each part from the first of ``templates`` that has it and
    renders (a rule's, then the type's override), else the built-in one.

    ``strict`` (previews): the first template failing raises RenderError naming the part instead
    of falling back; ``where`` names each template for warnings (``rule 'x'``).

    Renders in this process without a time limit (tests and tools); the server renders with
    :func:`render_bounded`.
    """
    builtin, facts, ctx = _prepare(event)
    choice = _choose_parts(templates, strict, where)
    try:
        wanted = next(choice)
        while True:
            wanted = choice.send({p: _inline(source, ctx) for p, source in wanted.items()})
    except StopIteration as done:
        chosen, warnings = done.value
    return _layout(event, builtin, facts, ctx, templates, chosen, warnings, recipients)


async def render_bounded(
    event: EventRecord,
    *templates: TemplateOverride | None,
    budget: template_worker.Budget,
    recipients: Recipients | None = None,
    strict: bool = False,
    where: tuple[str, ...] = (),
) -> Rendered:
    """:func:`render` with the user-written templates rendered in the render workers within
    ``budget`` (time, output): an overrun is that template failing (a warning and the
    built-in part, or the RenderError of a preview), never a stalled server. An event with
    built-in templates only makes no trip."""
    builtin, facts, ctx = _prepare(event)
    choice = _choose_parts(templates, strict, where)
    try:
        wanted = next(choice)
        while True:
            results = await template_worker.render(list(wanted.values()), ctx, budget)
            wanted = choice.send(dict(zip(wanted, results, strict=True)))
    except StopIteration as done:
        chosen, warnings = done.value
    return _layout(event, builtin, facts, ctx, templates, chosen, warnings, recipients)


def _inline(source: str, ctx: dict[str, Any]) -> str | TemplateError:
    try:
        return render_text(source, ctx)
    except TemplateError as exc:
        return exc


def _prepare(event: EventRecord) -> tuple[Builtin, dict[str, Any], dict[str, Any]]:
    builtin = builtin_for(event.type)
    facts = builtin.facts(event)
    return builtin, facts, context(event, facts)


def _layout(
    event: EventRecord,
    builtin: Builtin,
    facts: dict[str, Any],
    ctx: dict[str, Any],
    templates: tuple[TemplateOverride | None, ...],
    chosen: dict[str, str],
    warnings: list[str],
    recipients: Recipients | None,
) -> Rendered:
    parts = {
        part: chosen[part]
        if part in chosen
        else render_limited(getattr(builtin, part), ctx, BUILTIN_OUTPUT_CHARS)
        for part in PARTS
    }
    fmt = next(
        (t.format.value for t in templates if t is not None and t.format is not None), "markdown"
    )
    title = _SPACES.sub(" ", parts["title"]).strip()[:MAX_TITLE_CHARS]
    content = _BLANK_LINES.sub("\n\n", parts["content"]).strip()[:MAX_CONTENT_CHARS]
    if not title and not content:
        title = event.type
    labels = dict(list(event.labels.items())[:MAX_LABELS])
    payload: dict[str, Any] = {
        "title": title,
        "content": content,
        "format": fmt,
        "level": event.level,
        "category": category_of(event.type),
        "fields": _fields(builtin.fields(event, facts)),
        "links": _links(builtin.links(facts) + extra_links(event)),
        "mentions": {"all": False, "user_ids": [], "mobiles": [], "emails": []},
        "recipients": recipients.model_dump(mode="json") if recipients is not None else None,
        "labels": labels,
    }
    return Rendered(payload, warnings)


async def check_limits(template: TemplateOverride, event_type: str, field: str) -> None:
    """422 when a template being saved breaks a render limit (time, output, a power or repeat
    too large) on the sample event of ``event_type``, naming the part. Other errors are left to
    the event: a template may rightly need data the sample lacks."""
    sample = sample_event(event_type, now=0)
    _builtin, _facts, ctx = _prepare(sample)
    wanted = {p: getattr(template, p) for p in PARTS if getattr(template, p)}
    results = await template_worker.render(list(wanted.values()), ctx, template_worker.PREVIEW)
    for part, result in zip(wanted, results, strict=True):
        if isinstance(result, TemplateLimitError):
            where = f"{field}.{part}" if field else part
            raise ApiError(422, "invalid", f"{where}: {result}", where)


# -- overrides ------------------------------------------------------------------------------


def best_override(
    event_type: str, overrides: dict[str, TemplateOverride]
) -> TemplateOverride | None:
    """The stored override for a type: its own, else the most specific matching pattern."""
    exact = overrides.get(event_type)
    if exact is not None:
        return exact
    matching = [p for p in overrides if fnmatch.fnmatchcase(event_type, p)]
    if not matching:
        return None
    # the longest literal text wins: alert.* over *, task.fail* over task.*
    best = max(matching, key=lambda p: (len(p.replace("*", "").replace("?", "")), p))
    return overrides[best]


def sample_event(event_type: str, *, now: int) -> EventRecord:
    builtin = builtin_for(event_type)
    sample = builtin.sample
    labels = dict(sample.get("labels", {}))
    concrete = "*" not in event_type and "?" not in event_type
    return EventRecord(
        id="evt_sample",
        type=event_type if concrete else sample.get("type", builtin.event_type),
        source=sample.get("source", ""),
        level=default_level(event_type, labels).value,
        labels=labels,
        data=dict(sample.get("data", {})),
        occurred_at=now,
        created_at=now,
    )


def describe_builtins() -> list[dict[str, Any]]:
    return [
        {
            "event_type": b.event_type,
            "name": b.name,
            "level": b.level.value,
            "category": category_of(b.event_type.replace("*", "x")),
            "title": b.title,
            "content": b.content,
            "sample": b.sample,
        }
        for b in [*BUILTINS, GENERIC]
    ]
