"""Rule matching and routing, as units: type patterns, minimum level, label conditions, and one
message per channel however many ways reach it."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import ValidationError

from msgpush.events.models import Rule
from msgpush.events.rules import DIRECT, CompiledRule, LabelMatch, plan
from msgpush.events.templates import EventRecord
from msgpush.storage.queue import Target


def event(event_type: str = "alert.firing", level: str = "warning", **labels: str) -> EventRecord:
    return EventRecord("evt_1", event_type, "tests", level, labels, {}, 0, 0)


def rule(rule_id: str = "rule_1", **fields: Any) -> CompiledRule:
    body = {"name": f"name of {rule_id}", "channels": ["ch_a"], **fields}
    return CompiledRule.build(rule_id, Rule.model_validate(body))


@pytest.mark.parametrize(
    ("patterns", "event_type", "matches"),
    [
        (["alert.*"], "alert.firing", True),
        (["alert.*"], "alert.resolved", True),
        (["alert.*"], "alerting.firing", False),
        (["*"], "anything.at.all", True),
        (["task.fail*"], "task.failed", True),
        (["task.failed", "task.retrying"], "task.retrying", True),
        (["task.failed"], "task.succeeded", False),
        (["system.*"], "system.permission_requested", True),
    ],
)
def test_type_patterns(patterns: list[str], event_type: str, matches: bool) -> None:
    assert rule(event_types=patterns).matches(event(event_type)) is matches


@pytest.mark.parametrize(
    ("min_level", "level", "matches"),
    [
        ("warning", "info", False),
        ("warning", "warning", True),
        ("warning", "critical", True),
        ("error", "warning", False),
        ("info", "info", True),
    ],
)
def test_minimum_level(min_level: str, level: str, matches: bool) -> None:
    assert rule(min_level=min_level).matches(event(level=level)) is matches


@pytest.mark.parametrize(
    ("spec", "value", "matches"),
    [
        ("prod", "prod", True),
        ("prod", "production", False),
        ("prod", None, False),
        ("!=dev", "prod", True),
        ("!=dev", "dev", False),
        ("!=dev", None, True),
        ("=~prod|staging", "staging", True),
        ("=~prod|staging", "prod-eu", False),  # the whole value
        ("=~prod.*", "prod-eu", True),
        ("!~test.*", "test-3", False),
        ("!~test.*", "prod", True),
        ("==!=odd", "!=odd", True),  # == writes a value that starts like an operator
    ],
)
def test_label_conditions(spec: str, value: str | None, matches: bool) -> None:
    labels = {"env": value} if value is not None else {}
    assert LabelMatch.parse("env", spec)(labels) is matches


def test_all_label_conditions_must_hold() -> None:
    compiled = rule(labels={"env": "prod", "team": "=~data|ml"})
    assert compiled.matches(event(env="prod", team="ml"))
    assert not compiled.matches(event(env="prod", team="web"))
    assert not compiled.matches(event(team="ml"))


def test_a_bad_regex_is_refused_when_saved() -> None:
    with pytest.raises(ValidationError) as info:
        Rule.model_validate({"name": "r", "channels": ["a"], "labels": {"env": "=~(unclosed"}})
    assert info.value.errors()[0]["loc"] == ("labels", "env")


@pytest.mark.parametrize(
    ("pattern", "says"),
    [(r"(a)\1", "backreferences"), ("(?=prod)prod", "lookaround"), ("(?<!x)y", "RE2")],
)
def test_a_pattern_re2_cannot_run_is_refused_with_a_hint(pattern: str, says: str) -> None:
    with pytest.raises(ValidationError) as info:
        Rule.model_validate({"name": "r", "channels": ["a"], "labels": {"env": f"=~{pattern}"}})
    [error] = info.value.errors()
    assert error["loc"] == ("labels", "env") and says in error["msg"]


def test_a_catastrophic_pattern_matches_in_linear_time() -> None:
    """``(a+)+$`` backtracks exponentially in Python's re (30 a's and a b: minutes); RE2 does
    not backtrack at all."""
    started = time.perf_counter()
    for spec, value, expected in [
        ("=~(a+)+$", "a" * 30_000, True),
        ("=~(a+)+$", "a" * 30_000 + "b", False),
        ("!~(a|aa)+c", "a" * 30_000, True),
    ]:
        assert LabelMatch.parse("env", spec)({"env": value}) is expected
    assert time.perf_counter() - started < 0.5


def test_a_pattern_is_compiled_once_for_every_rule_that_uses_it() -> None:
    first, second = rule(labels={"env": "=~prod|staging"}), rule(labels={"env": "!~prod|staging"})
    assert first.matchers[0].pattern is second.matchers[0].pattern


def targets(*names: str) -> dict[str, Target]:
    return {f"ch_{n}": Target(f"ch_{n}", n, "webhook") for n in names}


def test_a_channel_reached_several_ways_gets_one_message_from_the_first_way() -> None:
    known = targets("a", "b", "c")
    first = rule("rule_1", channels=["ch_a", "ch_b"], template={"title": "one"})
    second = rule("rule_2", channels=["ch_b", "ch_c"], group_by=["alertname"], group_window_s=60)
    third = rule("rule_3", channels=["ch_a"])
    routes = plan(event(), [known["ch_c"]], ((), 0), [first, second, third], known)
    assert [(r.key, [t.channel_name for t in r.targets]) for r in routes] == [
        (DIRECT, ["c"]),
        ("rule_1", ["a", "b"]),
    ]
    assert routes[1].template is not None and routes[1].template.title == "one"


def test_rules_whose_channels_are_gone_route_nothing() -> None:
    routes = plan(event(), [], ((), 0), [rule(channels=["ch_gone"])], targets("a"))
    assert routes == []


def test_the_events_own_channels_may_be_grouped() -> None:
    known = targets("a")
    [route] = plan(event(), [known["ch_a"]], (("alertname",), 30), [], known)
    assert route.key == DIRECT and route.group_by == ("alertname",) and route.group_window_s == 30
