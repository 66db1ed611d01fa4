"""``/rules`` and ``/templates`` end to end: CRUD and its checks, several rules on one event
with one message per channel, labels and levels, templates per rule and per type, preview."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.events.conftest import Hook, post_event


def test_create_read_change_and_delete_a_rule(api: httpx.Client, hook: Hook, unique: str) -> None:
    body = {
        "name": f"prod alerts {unique}",
        "event_types": ["alert.*"],
        "min_level": "warning",
        "labels": {"env": "prod", "run": unique},
        "channels": [hook.name],
        "recipients": None,
        "template": None,
        "group_by": ["alertname"],
        "group_window_s": 60,
        "enabled": True,
    }
    created = api.post("/rules", json=body)
    assert created.status_code == 201, created.text
    rule = created.json()
    assert rule["id"].startswith("rule_")
    assert {k: rule[k] for k in body} == body  # the contract's fields as sent
    channel_id = api.get(f"/channels/{hook.name}").json()["id"]
    assert rule["channel_ids"] == [channel_id]

    assert api.get(f"/rules/{rule['id']}").json() == rule
    assert api.get(f"/rules/{body['name']}").json()["id"] == rule["id"]
    assert rule["id"] in [r["id"] for r in api.get("/rules").json()["items"]]

    changed = api.patch(f"/rules/{rule['id']}", json={"enabled": False, "min_level": "error"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["enabled"] is False and changed.json()["min_level"] == "error"
    assert changed.json()["group_by"] == ["alertname"]  # untouched fields stay

    # a channel renamed keeps its rules (they hold its id)
    assert api.patch(f"/channels/{hook.name}", json={"name": f"{hook.name}-2"}).status_code == 200
    assert api.get(f"/rules/{rule['id']}").json()["channels"] == [f"{hook.name}-2"]
    api.patch(f"/channels/{hook.name}-2", json={"name": hook.name})

    assert api.post("/rules", json=body).status_code == 409
    assert api.delete(f"/rules/{rule['id']}").status_code == 204
    assert api.get(f"/rules/{rule['id']}").status_code == 404
    assert api.delete(f"/rules/{rule['id']}").status_code == 404


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"name": ""}, "name", ""),
        ({"name": "rule_x"}, "name", "ids do"),
        ({"channels": []}, "channels", ""),
        ({"channels": ["no-such-channel"]}, "channels.0", "no channel"),
        ({"event_types": ["alert firing"]}, "event_types.0", "pattern"),
        ({"min_level": "loud"}, "min_level", ""),
        ({"labels": {"env": "=~(open"}}, "labels.env", "regular expression"),
        ({"labels": {"env": "=~(prod)-\\1"}}, "labels.env", "RE2 syntax"),
        ({"labels": {"env": "!~(?!prod).*"}}, "labels.env", "lookaround"),
        ({"group_window_s": 100_000}, "group_window_s", ""),
        ({"template": {"content": "line 1\n{{ f.task "}}, "template.content", "line 2"),
        ({"template": {"title": "{% for x in y %}"}}, "template.title", "line 1"),
        ({"template": {"title": "{{ evnt.type }}"}}, "template.title", "'evnt'"),
        ({"template": {}}, "template", "title or a content"),
        ({"recipients": {"users": "zhangsan"}}, "recipients.users", ""),
        ({"colour": "red"}, "colour", "unknown field"),
    ],
)
def test_a_bad_rule_is_a_422_naming_the_field(
    api: httpx.Client, hook: Hook, change: dict[str, Any], field: str, says: str
) -> None:
    body = {"name": "bad rule", "event_types": ["task.*"], "channels": [hook.name], **change}
    response = api.post("/rules", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert says in error["message"], error


def test_several_rules_match_one_event_and_each_channel_gets_one_message(
    api: httpx.Client, make_hook: Callable[[str], Hook], rules: Callable[..., Any], unique: str
) -> None:
    ops, data, oncall = make_hook("-ops"), make_hook("-data"), make_hook("-oncall")
    label = {"run": unique}
    rules(name=f"all {unique}", event_types=["*"], labels=label, channels=[ops.name, data.name])
    rules(
        name=f"failures {unique}",
        event_types=["task.failed", "alert.*"],
        min_level="error",
        labels=label,
        channels=[ops.name, oncall.name],
        template={"title": "[oncall] {{ f.task }}"},
    )
    rules(name=f"disabled {unique}", labels=label, channels=[oncall.name], enabled=False)

    answer = post_event(
        api,
        type="task.failed",
        data={"task": "billing"},
        labels=label,
        channels=[data.name],
    )
    assert sorted(answer["rules"]) == [f"all {unique}", f"failures {unique}"]
    deliveries = [d["channel"] for m in answer["messages"] for d in m["deliveries"]]
    assert sorted(deliveries) == sorted([ops.name, data.name, oncall.name])
    # the first way to a channel decides its message: the event's own, then rules by age
    [oncall_body] = oncall.bodies(1)
    assert oncall_body["title"] == "[oncall] billing"
    assert ops.bodies(1)[0]["title"] == "Task billing failed"
    assert data.bodies(1)[0]["title"] == "Task billing failed"

    # a success only reaches the catch-all rule's channels
    answer = post_event(api, type="task.succeeded", data={"task": "billing"}, labels=label)
    assert answer["rules"] == [f"all {unique}"]
    assert len(ops.bodies(2)) == 2 and len(data.bodies(2)) == 2
    assert len(oncall.settle()) == 1


def test_labels_decide(
    api: httpx.Client, hook: Hook, rules: Callable[..., Any], unique: str
) -> None:
    rules(
        name=f"labels {unique}",
        event_types=["alert.firing"],
        labels={"run": unique, "env": "!=dev", "team": "=~data|ml", "host": "!~test-.*"},
        channels=[hook.name],
    )
    cases = [
        ({"env": "prod", "team": "data", "host": "db-1"}, True),
        ({"team": "ml"}, True),
        ({"env": "dev", "team": "data"}, False),
        ({"env": "prod", "team": "web"}, False),
        ({"env": "prod", "team": "ml", "host": "test-3"}, False),
    ]
    for labels, routed in cases:
        answer = post_event(api, type="alert.firing", labels={"run": unique, **labels})
        assert bool(answer["messages"]) is routed, (labels, answer)


def test_templates_per_type_apply_until_removed(
    api: httpx.Client, hook: Hook, rules: Callable[..., Any], unique: str
) -> None:
    kind = f"deploy{unique}.finished"
    put = api.put(
        f"/templates/{kind}",
        json={"title": "Deployed {{ data.service }} {{ data.version }}", "format": "text"},
    )
    assert put.status_code == 200, put.text
    assert put.json()["override"]["title"].startswith("Deployed")
    try:
        post_event(
            api, type=kind, data={"service": "checkout", "version": "2.4"}, channels=[hook.name]
        )
        [body] = hook.bodies(1)
        assert body["title"] == "Deployed checkout 2.4" and body["format"] == "text"
        # the generic content still shows everything
        assert body["fields"]["service"] == "checkout"
        listed = {t["event_type"]: t for t in api.get("/templates").json()["items"]}
        assert listed[kind]["override"]["title"].startswith("Deployed")
    finally:
        assert api.delete(f"/templates/{kind}").status_code == 204
    assert api.delete(f"/templates/{kind}").status_code == 404
    post_event(api, type=kind, data={"service": "checkout"}, channels=[hook.name])
    assert hook.bodies(2)[1]["title"] == kind


def test_a_template_that_breaks_on_an_event_falls_back_and_says_so(
    api: httpx.Client, hook: Hook, rules: Callable[..., Any], unique: str
) -> None:
    rules(
        name=f"fragile {unique}",
        event_types=["task.failed"],
        labels={"run": unique},
        channels=[hook.name],
        template={"content": "{{ data.details.code }}"},
    )
    answer = post_event(api, type="task.failed", data={"task": "x"}, labels={"run": unique})
    assert "the content template failed" in answer["warnings"][0]
    assert hook.bodies(1)[0]["content"].startswith("**x** failed")


def test_a_rule_whose_channel_was_deleted_warns(
    api: httpx.Client, make_hook: Callable[[str], Hook], rules: Callable[..., Any], unique: str
) -> None:
    kept, gone = make_hook("-kept"), make_hook("-gone")
    rules(name=f"two {unique}", labels={"run": unique}, channels=[kept.name, gone.name])
    assert api.delete(f"/channels/{gone.name}").status_code == 204
    answer = post_event(api, type="task.failed", labels={"run": unique})
    assert [d["channel"] for m in answer["messages"] for d in m["deliveries"]] == [kept.name]
    assert "deleted or disabled" in answer["warnings"][0]
    assert api.get(f"/rules/two {unique}").json()["missing_channels"]


def test_recipients_of_a_rule_reach_the_message(
    api: httpx.Client, hook: Hook, rules: Callable[..., Any], unique: str
) -> None:
    rules(
        name=f"to people {unique}",
        labels={"run": unique},
        channels=[hook.name],
        recipients={"users": ["zhangsan"], "departments": [], "tags": [], "chats": []},
    )
    answer = post_event(api, type="system.permission_requested", labels={"run": unique})
    message = api.get(f"/messages/{answer['messages'][0]['id']}").json()
    assert message["recipients"]["users"] == ["zhangsan"]


def test_preview_renders_a_sample_or_an_event_with_the_template_being_edited(
    api: httpx.Client,
) -> None:
    sample = api.post("/templates/preview", json={"event_type": "alert.resolved"})
    assert sample.status_code == 200, sample.text
    assert sample.json()["message"]["title"] == "Resolved: HighCPU on db-1"
    assert "12m30s" in sample.json()["message"]["content"]

    mine = api.post(
        "/templates/preview",
        json={
            "event": {"type": "task.failed", "data": {"task": "etl", "error": "boom"}},
            "template": {"title": "{{ f.task | upper }} ✗", "content": "{{ f.error }}"},
        },
    )
    assert mine.status_code == 200, mine.text
    message = mine.json()["message"]
    assert (message["title"], message["content"]) == ("ETL ✗", "boom")
    assert message["fields"]["Task"] == "etl"

    broken = api.post(
        "/templates/preview",
        json={"event_type": "task.failed", "template": {"content": "{{ data.nope.deeper }}"}},
    )
    assert broken.status_code == 422 and broken.json()["error"]["field"] == "template.content"
    syntax = api.post("/templates/preview", json={"template": {"content": "ok\n\n{% if %}"}})
    assert syntax.status_code == 422
    assert "line 3" in syntax.json()["error"]["message"]
    assert syntax.json()["error"]["field"] == "template.content"


def test_template_checks(api: httpx.Client) -> None:
    assert api.put("/templates/bad type!", json={"title": "x"}).status_code == 422
    bad = api.put("/templates/task.failed", json={"title": "{{ x"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "title"
    assert api.put("/templates/task.failed", json={}).status_code == 422
    got = api.get("/templates/task.failed").json()
    assert got["builtin"]["event_type"] == "task.failed" and got["override"] is None
    assert api.get("/templates/custom.thing").json()["builtin"]["event_type"] == "*"
