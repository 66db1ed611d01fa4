"""Built-in templates: every built-in event type rendered into every channel type's request,
readable and complete; data aliases; overrides, their checks and their fallback."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from msgpush.channels import registry
from msgpush.channels.base import SendContext
from msgpush.errors import ApiError
from msgpush.events.models import TemplateOverride
from msgpush.events.templates import (
    BUILTINS,
    GENERIC,
    EventRecord,
    best_override,
    check_names,
    default_level,
    duration,
    render,
    sample_event,
    severity_level,
)
from msgpush.message import Level, Message

NOW = 1_769_846_400_000  # 2026-01-31T08:00:00Z

# the least settings each channel type needs, pointing nowhere (nothing is sent)
SETTINGS: dict[str, dict[str, Any]] = {
    "webhook": {"url": "https://hooks.example.com/msgpush"},
    "wecom_bot": {
        "webhook_url": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7f31"
    },
    "feishu_bot": {"webhook_url": "https://open.feishu.cn/open-apis/bot/v2/hook/0f1e2d3c-4b5a"},
    "dingtalk_bot": {
        "webhook_url": "https://oapi.dingtalk.com/robot/send?access_token=" + "ab12" * 16
    },
    "wecom_app": {
        "corp_id": "ww0123456789",
        "agent_id": 1000002,
        "secret": "s" * 43,
        "to_user": ["zhangsan"],
    },
    "feishu_app": {
        "app_id": "cli_a1b2c3d4e5f6",
        "app_secret": "x" * 32,
        "receive_id_type": "chat_id",
        "receive_ids": ["oc_0123456789abcdef"],
    },
    "dingtalk_app": {
        "app_key": "dingabcdef123456",
        "app_secret": "y" * 40,
        "agent_id": 2001,
        "user_ids": ["zhangsan"],
    },
}

# what each built-in type's sample must show, whatever the channel
FACTS = {
    "task.failed": [
        "daily_sales",
        "timeout after 180 s",
        "3m12s",
        "scheduler.example.com/tasks/daily_sales/runs/7",
    ],
    "task.retrying": ["daily_sales", "connection reset by warehouse", "5m00s"],
    "task.succeeded": ["daily_sales", "12m34s"],
    "alert.firing": ["HighCPU", "db-1", "93.5", "90"],
    "alert.resolved": ["HighCPU", "db-1", "12m30s"],
    "data.updated": ["dw.sales_daily", "1,284,019", "2026-01-31 07:00:00 UTC"],
    "system.permission_requested": ["zhangsan", "dw.finance_ledger", "read"],
    "system.*": ["Maintenance window starts at 22:00"],
    "*": ["Invoice run finished", "412"],
}
LEFTOVERS = ("{{", "{%", "None", "Undefined", "[object")


def strings(value: Any) -> list[str]:
    """Every string in a vendor body, JSON inside strings opened too (Feishu's content)."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    if isinstance(value, str):
        if value[:1] in "{[":
            try:
                return strings(orjson.loads(value))
            except orjson.JSONDecodeError:
                pass
        return [value]
    return []


async def _never(request: Any, classify: Any) -> Any:  # pragma: no cover
    raise AssertionError("rendering never sends")


def vendor_text(type_id: str, message: Message) -> str:
    channel_type = registry.get(type_id)
    assert channel_type is not None
    settings = channel_type.settings_model.model_validate(SETTINGS[type_id])
    ctx = SendContext(delivery_id="dlv_test", attempt=1, exchange=_never, message_id="msg_test")
    request = channel_type.render(message, settings, ctx)
    return "\n".join(strings(orjson.loads(request.body)))


def test_every_channel_type_has_settings_here() -> None:
    assert set(registry.type_ids()) <= set(SETTINGS), "add the new type to SETTINGS"


@pytest.mark.parametrize("type_id", sorted(SETTINGS))
@pytest.mark.parametrize("builtin", [*BUILTINS, GENERIC], ids=lambda b: b.event_type)
def test_builtin_template_reads_well_in_every_channel_type(builtin: Any, type_id: str) -> None:
    if registry.get(type_id) is None:
        pytest.skip(f"{type_id} is not in this build")
    event = sample_event(builtin.event_type, now=NOW)
    rendered = render(event)
    assert rendered.warnings == []
    message = Message.model_validate(rendered.payload)
    assert message.title and message.content
    shown = vendor_text(type_id, message)
    for fact in FACTS[builtin.event_type]:
        assert fact in shown, (fact, shown)
    for leftover in LEFTOVERS:
        assert leftover not in shown, (leftover, shown)


def record(event_type: str, data: dict[str, Any], **kw: Any) -> EventRecord:
    labels = kw.pop("labels", {})
    return EventRecord(
        id="evt_t",
        type=event_type,
        source=kw.pop("source", "tests"),
        level=kw.pop("level", default_level(event_type, labels).value),
        labels=labels,
        data=data,
        occurred_at=kw.pop("occurred_at", NOW),
        created_at=NOW,
    )


def test_task_data_is_read_under_its_usual_names() -> None:
    payload = render(
        record(
            "task.failed",
            {
                "task_name": "etl.orders",
                "execution_id": "run-42",
                "started_at": "2026-01-31T07:00:00Z",
                "finished_at": "2026-01-31T08:02:03Z",
                "try_number": 2,
                "exception": "KeyError: 'sku'",
                "log_url": "https://airflow.example.com/log?run=42",
            },
        )
    ).payload
    assert payload["title"] == "Task etl.orders failed"
    assert (
        payload["content"]
        == "**etl.orders** failed after 1h02m (attempt 2).\n\nError: KeyError: 'sku'"
    )
    assert payload["fields"]["Run"] == "run-42"
    assert payload["links"] == [
        {"title": "Open log", "url": "https://airflow.example.com/log?run=42"}
    ]
    assert payload["level"] == "error" and payload["category"] == "task"


def test_a_resolved_alert_says_how_long_it_fired() -> None:
    payload = render(
        record(
            "alert.resolved",
            {"alertname": "DiskFull", "since": "2026-01-31T06:00:00Z"},
            labels={"instance": "nas-2"},
            occurred_at=NOW + 0,
        )
    ).payload
    assert payload["title"] == "Resolved: DiskFull on nas-2"
    assert "after firing for 2h00m" in payload["content"]
    assert payload["fields"]["Fired for"] == "2h00m"
    assert payload["level"] == "success"


def test_firing_alert_level_follows_severity_and_comparison_reads_as_words() -> None:
    event = record(
        "alert.firing",
        {"metric": "p99_latency_ms", "value": 812.44, "comparison": ">=", "threshold": 500},
        labels={"alertname": "SlowAPI", "severity": "critical", "job": "api"},
    )
    assert event.level == "critical"
    payload = render(event).payload
    assert "p99_latency_ms is 812.44, at or above the threshold of 500." in payload["content"]
    assert payload["fields"]["Threshold"] == ">= 500"
    assert payload["fields"]["job"] == "api"  # the alert's other labels are shown


def test_unknown_types_show_everything() -> None:
    payload = render(
        record(
            "deploy.finished",
            {
                "service": "checkout",
                "version": "2.4.1",
                "nested": {"a": 1, "b": [1, 2]},
                "ok": True,
            },
            labels={"env": "prod"},
            source="ci",
        )
    ).payload
    assert payload["title"] == "deploy.finished from ci"
    assert payload["fields"] == {
        "service": "checkout",
        "version": "2.4.1",
        "nested.a": "1",
        "nested.b": "[1,2]",
        "ok": "yes",
        "Source": "ci",
    }
    assert "Labels: env=prod" in payload["content"]
    assert payload["category"] == "other"


def test_limits_are_kept_whatever_the_data() -> None:
    data = {f"key{i}": "v" * 5000 for i in range(80)}
    data["title"] = "t" * 2000
    payload = render(record("huge.event", data)).payload
    message = Message.model_validate(payload)  # within every limit of a message
    assert len(message.fields) == 50 and len(message.title) <= 512
    assert all(len(v) <= 1024 for v in message.fields.values())


def test_links_that_are_not_absolute_urls_are_left_out() -> None:
    payload = render(
        record(
            "alert.firing", {"generator_url": "/graph?g0.expr=up", "runbook_url": "https://wiki/x"}
        )
    ).payload
    assert payload["links"] == [{"title": "Runbook", "url": "https://wiki/x"}]


def test_an_override_replaces_the_parts_it_has() -> None:
    override = TemplateOverride(title="[{{ level | upper }}] {{ f.task }} on {{ labels.env }}")
    payload = render(sample_event("task.failed", now=NOW), override).payload
    assert payload["title"] == "[ERROR] daily_sales on prod"
    assert payload["content"].startswith("**daily_sales** failed")  # the built-in content


def test_a_rule_template_comes_before_the_type_override_and_sets_the_format() -> None:
    rule = TemplateOverride(content="{{ data.error }}", format="text")
    stored = TemplateOverride(title="stored {{ type }}", content="stored content")
    payload = render(sample_event("task.failed", now=NOW), rule, stored).payload
    assert payload["title"] == "stored task.failed"
    assert payload["content"] == "timeout after 180 s waiting for warehouse.orders"
    assert payload["format"] == "text"


def test_a_template_that_fails_on_this_event_falls_back_with_a_warning() -> None:
    broken = TemplateOverride(content="{{ data.missing.deeper }}")
    rendered = render(sample_event("task.failed", now=NOW), broken, where=("rule 'r'",))
    assert rendered.payload["content"].startswith("**daily_sales** failed")
    [warning] = rendered.warnings
    assert warning.startswith("rule 'r': the content template failed")


def test_the_sandbox_holds() -> None:
    escape = TemplateOverride(content="{{ ''.__class__.__mro__[1].__subclasses__() }}")
    rendered = render(sample_event("task.failed", now=NOW), escape)
    assert "subclasses" not in rendered.payload["content"] and rendered.warnings


def test_a_syntax_error_names_the_line() -> None:
    with pytest.raises(ValidationError) as info:
        TemplateOverride(content="line one\n{% if f.task %}\nno endif")
    assert "line 3" in str(info.value) or "line 2" in str(info.value)


def test_an_unknown_variable_is_refused_by_name() -> None:
    with pytest.raises(ApiError) as info:
        check_names(TemplateOverride(title="{{ evnt.type }}"), "template")
    assert info.value.field == "template.title" and "'evnt'" in info.value.message
    check_names(TemplateOverride(title="{% set x = 1 %}{{ x }} {{ range(2) | list }}"), "template")


def test_the_most_specific_override_wins() -> None:
    overrides = {
        "*": TemplateOverride(title="any"),
        "alert.*": TemplateOverride(title="alerts"),
        "alert.firing": TemplateOverride(title="firing"),
    }
    assert best_override("alert.firing", overrides).title == "firing"  # type: ignore[union-attr]
    assert best_override("alert.resolved", overrides).title == "alerts"  # type: ignore[union-attr]
    assert best_override("task.failed", overrides).title == "any"  # type: ignore[union-attr]
    assert best_override("task.failed", {}) is None


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.25, "250ms"),
        (45, "45s"),
        (192, "3m12s"),
        (3720, "1h02m"),
        (90000, "1d1h"),
        ("7 min", "7 min"),
    ],
)
def test_durations(seconds: Any, shown: str) -> None:
    assert duration(seconds) == shown


def test_severities() -> None:
    assert severity_level("P1") is Level.critical
    assert severity_level("major") is Level.error
    assert severity_level("warning") is Level.warning
    assert severity_level("whatever") is Level.warning
    assert severity_level(None, Level.info) is Level.info
