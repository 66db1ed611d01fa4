"""The storm window as a state machine (no database): who leads, what folds, when a digest
starts, how a storm goes on and ends, and what a digest says."""

from __future__ import annotations

from typing import Any

from msgpush.events.grouping import GroupState, Member, Part, empty_summary, group_id, group_key
from msgpush.events.templates import EventRecord
from msgpush.storage.queue import Target

WINDOW_MS = 60_000
TARGET = Target("ch_ops", "ops", "dingtalk_bot")


def state() -> GroupState:
    return GroupState("g1", {"alertname": "HighCPU"}, None, None, None, empty_summary(), {}, False)


def part(
    n: int, event_type: str = "alert.firing", level: str = "warning", fingerprint: str | None = None
) -> Part:
    member = Member(f"evt_{n}", event_type, level, 1_000 + n, f"db-{n}", fingerprint or f"fp{n}")
    payload: dict[str, Any] = {"title": f"event {n}"}
    return Part(
        "g1", "rule_1", "storms", TARGET, {"alertname": "HighCPU"}, WINDOW_MS, payload, None, member
    )


def test_the_first_event_leads_and_the_rest_of_the_window_folds_into_one_digest() -> None:
    group = state()
    assert group.admit(part(0), now=0) is True
    assert group.window_end == WINDOW_MS and group.digest_message_id is None
    assert group.admit(part(1), now=1_000) is False
    digest = group.digest_message_id
    assert digest and group.open is not None and group.open.new
    assert group.open.due_at == WINDOW_MS  # held until the window's end
    for n in range(2, 500):
        assert group.admit(part(n), now=1_000 + n) is False
    assert group.digest_message_id == digest  # one digest for the whole window
    assert group.summary["count"] == 499
    assert len(group.summary["instances"]) == 499
    assert group.summary["first_at"] == 1_001 and group.summary["last_at"] == 1_499


def test_a_digest_the_engine_took_is_never_changed_the_next_event_starts_another() -> None:
    group = state()
    group.admit(part(0), now=0)
    group.admit(part(1), now=1_000)
    first = group.digest_message_id
    group.open = None  # as lock() finds it when the delivery is sending, or sent
    assert group.admit(part(2), now=2_000) is False
    assert group.digest_message_id != first and group.summary["count"] == 1


def test_a_storm_that_goes_on_gets_one_digest_per_window() -> None:
    group = state()
    group.admit(part(0), now=0)
    group.admit(part(1), now=1_000)
    group.open = None  # sent at the window's end
    # just after the window: still storming, folded into the next window's digest
    assert group.admit(part(2), now=WINDOW_MS + 5) is False
    assert group.window_end == 2 * WINDOW_MS + 5


def test_a_quiet_group_starts_over_and_its_next_event_leads() -> None:
    group = state()
    group.admit(part(0), now=0)
    assert group.admit(part(1), now=WINDOW_MS) is True  # no digest in the window: quiet
    group.admit(part(2), now=WINDOW_MS + 1)
    group.open = None
    # a storm's digest went out; a whole window later without events, the group is quiet again
    assert group.admit(part(3), now=3 * WINDOW_MS + 2) is True


def test_a_resolved_alert_closes_it_and_the_last_one_closes_the_group() -> None:
    group = state()
    assert group.admit(part(0, fingerprint="a"), now=0)
    assert not group.admit(part(1, fingerprint="b"), now=10)
    assert set(group.firing) == {"a", "b"}
    assert not group.admit(part(2, "alert.resolved", "success", fingerprint="a"), now=20)
    assert not group.closed and set(group.firing) == {"b"}
    assert not group.admit(part(3, "alert.resolved", "success", fingerprint="b"), now=30)
    assert group.closed and group.open is not None and group.open.flush  # it goes now
    assert group.admit(part(4, fingerprint="c"), now=40) is True  # and the next alert leads


def test_a_digest_closed_and_a_new_lead_in_one_transaction_are_both_kept() -> None:
    """Alertmanager posts many alerts at once: the group may close and start over in one
    transaction; the digest it closed must still be saved and sent."""
    group = state()
    group.admit(part(0, fingerprint="a"), now=0)
    group.admit(part(1, fingerprint="b"), now=1)  # a new digest starts
    group.admit(part(2, "alert.resolved", "success", fingerprint="a"), now=2)
    group.admit(part(3, "alert.resolved", "success", fingerprint="b"), now=3)  # closes: flush
    closed = group.open
    assert group.admit(part(4, fingerprint="c"), now=4) is True  # leads the next window
    assert group.done == [closed] and closed is not None and closed.flush
    assert closed.summary["count"] == 3
    assert group.to_save() == [closed]


def test_resolving_the_only_alert_of_a_quiet_window_is_sent_at_once() -> None:
    group = state()
    group.admit(part(0, fingerprint="a"), now=0)
    assert group.admit(part(1, "alert.resolved", "success", fingerprint="a"), now=5) is True
    assert group.closed


def test_a_digest_says_count_instances_times_and_what_still_fires() -> None:
    group = state()
    group.admit(part(0), now=0)
    for n in range(1, 31):
        group.admit(part(n), now=n)
    group.admit(part(31, "alert.resolved", "success", fingerprint="fp5"), now=40)
    assert group.open is not None
    payload = group.open.payload(group.labels, len(group.firing))
    assert payload["title"] == "31 more alerts: alertname=HighCPU"
    assert "**31** more alerts in this group" in payload["content"]
    assert "- alert.firing: 30\n- alert.resolved: 1" in payload["content"]
    assert (
        "Instances (31): db-1, db-2," in payload["content"] and "and 11 more" in payload["content"]
    )
    assert payload["fields"]["Still firing"] == "30"
    assert payload["fields"]["Rule"] == "storms"
    assert payload["level"] == "warning"
    event = group.open.event(group.labels, len(group.firing), now=50)
    assert event["type"] == "msgpush.digest" and event["data"]["count"] == 31
    assert len(event["data"]["event_ids"]) == 31


def test_a_digest_of_one_event_is_that_events_own_message() -> None:
    group = state()
    group.admit(part(0), now=0)
    group.admit(part(1), now=1)
    assert group.open is not None
    assert group.open.payload(group.labels, 1) == {"title": "event 1"}


def test_group_keys_and_ids() -> None:
    record = EventRecord("e", "task.failed", "s", "error", {"env": "prod"}, {"task": "t1"}, 0, 0)
    assert group_key(record, ("env", "data.task", "missing")) == {
        "env": "prod",
        "data.task": "t1",
        "missing": "",
    }
    a = group_id("rule_1", "ch_a", ("env",), {"env": "prod"})
    assert a == group_id("rule_1", "ch_a", ("env",), {"env": "prod"})
    assert a != group_id("rule_1", "ch_b", ("env",), {"env": "prod"})
    assert a != group_id("rule_2", "ch_a", ("env",), {"env": "prod"})
    assert a != group_id("rule_1", "ch_a", ("env",), {"env": "dev"})
