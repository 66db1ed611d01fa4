"""Alert storms grouped into digests, durably.

A rule with ``group_window_s`` (or an event with its own) groups events per channel by the
values of ``group_by``. Per group, one ``event_groups`` row holds the window and the digest in
the making; it is locked, read and written in the same transaction as the event, so every event
is counted exactly once, and a restart loses nothing:

- The first event of a quiet group goes at once, and opens a window of ``group_window_s``.
- Events inside the window are folded into a digest: a message whose one delivery is stored at
  once, *queued until the window's end*. Each further event rewrites the digest's payload (count,
  distinct instances, first and last time) while that delivery is untouched (still queued, never
  attempted); the engine claims it at the window's end like any due delivery, so closing a
  window needs no timer and survives a restart.
- If the engine has already taken the digest (or a clock elsewhere says the window ended), the
  event starts the next digest instead of changing one that may be on its way.
- While a storm goes on, each following window collects one digest; a group quiet for a whole
  window starts over, its next event going at once.
- Alerts are tracked by fingerprint: a resolved event for a firing alert closes it, and when the
  last firing alert of a group resolves, the group closes: a pending digest goes at once, and
  the next alert is sent at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from msgpush.events.models import category_of
from msgpush.events.templates import EventRecord, pick, text, when
from msgpush.ids import iso, new_id
from msgpush.message import LEVEL_ORDER, Level
from msgpush.storage.queue import Target
from msgpush.storage.schema import deliveries, event_groups, events, messages

DIGEST_TYPE = "msgpush.digest"
MAX_INSTANCES = 500  # distinct instances remembered per digest
INSTANCES_SHOWN = 20
MAX_EVENT_IDS = 1000
MAX_FIRING = 5000


def group_key(record: EventRecord, group_by: tuple[str, ...]) -> dict[str, str]:
    """The values an event is grouped by: labels, or ``data.x`` for a data field."""
    values: dict[str, str] = {}
    for name in group_by:
        value = pick(record, name[5:]) if name.startswith("data.") else record.labels.get(name)
        values[name] = text(value) or ""
    return values


def group_id(route: str, channel_id: str, group_by: tuple[str, ...], values: dict[str, str]) -> str:
    key = orjson.dumps([route, channel_id, list(group_by), values], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(key).hexdigest()[:40]


def instance_of(record: EventRecord) -> str | None:
    return text(
        pick(
            record,
            "labels.instance",
            "instance",
            "labels.host",
            "host",
            "labels.pod",
            "task",
            "dataset",
            "resource",
        )
    )


@dataclass(frozen=True)
class Member:
    """What a digest keeps of one event."""

    event_id: str
    type: str
    level: str
    occurred_at: int
    instance: str | None
    fingerprint: str | None


@dataclass(frozen=True)
class Part:
    """One event, to one channel, by one grouped route: what the writer folds."""

    group_id: str
    route: str
    rule_name: str | None
    target: Target
    labels: dict[str, str]
    window_ms: int
    payload: dict[str, Any]  # the event's own message by this route (sent if it leads)
    recipients: dict[str, Any] | None
    member: Member


def empty_summary() -> dict[str, Any]:
    return {
        "count": 0,
        "types": {},
        "levels": {},
        "instances": [],
        "instances_more": False,
        "first_at": None,
        "last_at": None,
        "event_ids": [],
        "single": None,
    }


@dataclass
class Digest:
    """One digest message in the making: what it counts, and what this transaction did to it."""

    message_id: str
    event_id: str
    summary: dict[str, Any]
    new: bool = False  # started in this transaction: to be inserted
    due_at: int = 0  # when a new one goes (its window's end)
    flush: bool = False  # its group closed: it goes now
    changed: bool = False
    last_part: Part | None = None
    created_at: int = 0

    def fold(self, part: Part) -> None:
        summary = self.summary
        member = part.member
        self.changed = True
        self.last_part = part
        summary["count"] += 1
        summary["types"][member.type] = summary["types"].get(member.type, 0) + 1
        summary["levels"][member.level] = summary["levels"].get(member.level, 0) + 1
        instance = member.instance
        if instance is not None and instance not in summary["instances"]:
            if len(summary["instances"]) < MAX_INSTANCES:
                summary["instances"].append(instance)
            else:
                summary["instances_more"] = True
        first, last = summary["first_at"], summary["last_at"]
        summary["first_at"] = (
            member.occurred_at if first is None else min(first, member.occurred_at)
        )
        summary["last_at"] = member.occurred_at if last is None else max(last, member.occurred_at)
        if len(summary["event_ids"]) < MAX_EVENT_IDS:
            summary["event_ids"].append(member.event_id)
        summary["single"] = part.payload if summary["count"] == 1 else None

    def level(self) -> str:
        levels = [Level(name) for name in self.summary["levels"]]
        if levels and all(level is Level.success for level in levels):
            return Level.success.value
        return max(levels, key=lambda level: LEVEL_ORDER[level], default=Level.info).value

    def event(self, labels: dict[str, str], firing: int, now: int) -> dict[str, Any]:
        """The digest's own event: what a webhook envelope carries for it."""
        part = self.last_part
        assert part is not None
        summary = self.summary
        data: dict[str, Any] = {
            "rule": part.rule_name,
            "channel": part.target.channel_name,
            "group": labels,
            "count": summary["count"],
            "types": summary["types"],
            "instances": summary["instances"],
            "instances_more": summary["instances_more"],
            "first_at": iso(summary["first_at"]),
            "last_at": iso(summary["last_at"]),
            "event_ids": summary["event_ids"],
        }
        if all(t.startswith("alert.") for t in summary["types"]):
            data["still_firing"] = firing
        return {
            "id": self.event_id,
            "type": DIGEST_TYPE,
            "source": "msgpush",
            "level": self.level(),
            "labels": labels,
            "data": data,
            "channels": [part.target.channel_name],
            "occurred_at": iso(summary["first_at"]),
            "created_at": iso(self.created_at or now),
        }

    def payload(self, labels: dict[str, str], firing: int) -> dict[str, Any]:
        """The digest message: the event's own when it is alone, else counts and instances."""
        part = self.last_part
        assert part is not None
        summary = self.summary
        if summary["count"] == 1 and summary["single"] is not None:
            single: dict[str, Any] = summary["single"]
            return single
        count = summary["count"]
        types = summary["types"]
        categories = {category_of(t) for t in types}
        category = categories.pop() if len(categories) == 1 else "other"
        noun = {"alert": "alerts", "task": "task events"}.get(category, "events")
        group = ", ".join(f"{k}={v}" for k, v in labels.items() if v)
        about = group or part.rule_name or part.target.channel_name
        first, last = when(summary["first_at"]), when(summary["last_at"])
        span = f"at {first}" if first == last else f"between {first} and {last}"
        lines = [
            f"**{count}** more {noun} in this group {span}, sent together to keep the chat "
            "readable.",
            "\n".join(f"- {name}: {n}" for name, n in sorted(types.items())),
        ]
        instances = summary["instances"]
        fields: dict[str, str] = {
            "Group": about,
            "Events": str(count),
            "First": first or "",
            "Last": last or "",
        }
        if instances:
            shown = ", ".join(instances[:INSTANCES_SHOWN])
            more = len(instances) - INSTANCES_SHOWN
            total = f"{len(instances)}+" if summary["instances_more"] else str(len(instances))
            if summary["instances_more"]:
                shown += ", … and more"
            elif more > 0:
                shown += f", … and {more} more"
            lines.append(f"Instances ({total}): {shown}")
            fields["Instances"] = total
        if any(t.startswith("alert.") for t in types):
            lines.append(f"Still firing: {firing}")
            fields["Still firing"] = str(firing)
        if part.rule_name:
            fields["Rule"] = part.rule_name
        return {
            "title": f"{count} more {noun}: {about}"[:512],
            "content": "\n\n".join(lines),
            "format": "markdown",
            "level": self.level(),
            "category": category,
            "fields": {k[:1024]: v[:1024] for k, v in fields.items()},
            "links": [],
            "mentions": {"all": False, "user_ids": [], "mobiles": [], "emails": []},
            "recipients": part.recipients,
            "labels": {k[:1024]: v[:1024] for k, v in list(labels.items())[:50]},
        }


@dataclass
class GroupState:
    """A group's window as stored, and the decisions one transaction makes on it."""

    id: str
    labels: dict[str, str]
    window_end: int | None
    digest_message_id: str | None  # the current (or the last window's) digest
    digest_event_id: str | None
    summary: dict[str, Any]  # the current digest's, stored to go on folding later
    firing: dict[str, Any]
    closed: bool
    open: Digest | None = None  # the digest that may still change: its delivery is untouched
    done: list[Digest] = field(default_factory=list)  # closed in this transaction, to be saved
    changed: bool = False

    @classmethod
    def from_row(cls, row: Any, untouched: set[str]) -> GroupState:
        summary = orjson.loads(row.summary)
        state = cls(
            id=row.id,
            labels=orjson.loads(row.labels),
            window_end=row.window_end,
            digest_message_id=row.digest_message_id,
            digest_event_id=row.digest_event_id,
            summary=summary,
            firing=orjson.loads(row.firing),
            closed=bool(row.closed),
        )
        if row.digest_message_id in untouched and row.digest_event_id:
            state.open = Digest(row.digest_message_id, row.digest_event_id, summary)
        return state

    def admit(self, part: Part, now: int) -> bool:
        """Take one event: True when it goes at once (it leads its window), False when it is
        folded into the digest."""
        self.changed = True
        closes = self._track(part.member)
        storming = self.digest_message_id is not None  # the last window needed a digest
        quiet_since = (self.window_end or 0) + (part.window_ms if storming else 0)
        if (
            self.window_end is None
            or self.closed
            or now >= quiet_since
            or (closes and self.open is None)
        ):
            self._finish()
            self.window_end = now + part.window_ms
            self.digest_message_id = None
            self.digest_event_id = None
            self.summary = empty_summary()
            self.closed = closes
            return True
        if self.open is None:
            if now >= self.window_end:  # a storm going on: its next window
                self.window_end = now + part.window_ms
            self.open = Digest(
                new_id("msg"),
                new_id("evt"),
                empty_summary(),
                new=True,
                due_at=self.window_end,
                created_at=now,
            )
            self.digest_message_id = self.open.message_id
            self.digest_event_id = self.open.event_id
            self.summary = self.open.summary
        self.open.fold(part)
        if closes:
            self.closed = True
            self.open.flush = True
        return False

    def _finish(self) -> None:
        """The open digest is complete: it is saved as it stands (and goes when due)."""
        if self.open is not None and (self.open.new or self.open.changed):
            self.done.append(self.open)
        self.open = None

    def _track(self, member: Member) -> bool:
        """Follow firing alerts; True when this event resolves the group's last one."""
        fingerprint = member.fingerprint
        if not fingerprint or not member.type.startswith("alert."):
            return False
        if member.type == "alert.resolved":
            if self.firing.pop(fingerprint, None) is not None:
                return not self.firing
            return False
        if member.type == "alert.firing" and (
            fingerprint in self.firing or len(self.firing) < MAX_FIRING
        ):
            self.firing[fingerprint] = {"instance": member.instance, "since": member.occurred_at}
        return False

    def to_save(self) -> list[Digest]:
        """The digests this transaction changed: the finished ones and the open one."""
        current = (
            [self.open] if self.open is not None and (self.open.new or self.open.changed) else []
        )
        return [*self.done, *current]


# -- storage ----------------------------------------------------------------------------------


def _insert(dialect: str) -> Any:
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(event_groups)


async def lock(
    conn: AsyncConnection, dialect: str, parts: list[Part], now: int
) -> dict[str, GroupState]:
    """Create the groups of ``parts`` that do not exist yet, lock them all (in id order, so two
    writers never wait for each other crosswise) and read them, with whether each one's digest is
    still untouched."""
    wanted = {p.group_id: p for p in parts}
    ids = sorted(wanted)
    if not ids:
        return {}
    fresh = [
        {
            "id": gid,
            "route": wanted[gid].route,
            "channel_id": wanted[gid].target.channel_id,
            "labels": orjson.dumps(wanted[gid].labels).decode(),
            "window_end": None,
            "digest_message_id": None,
            "digest_event_id": None,
            "summary": orjson.dumps(empty_summary()).decode(),
            "firing": "{}",
            "closed": False,
            "updated_at": now,
        }
        for gid in ids
    ]
    await conn.execute(_insert(dialect).on_conflict_do_nothing(index_elements=["id"]), fresh)
    query = select(event_groups).where(event_groups.c.id.in_(ids)).order_by(event_groups.c.id)
    if dialect == "postgresql":
        query = query.with_for_update()
    rows = list(await conn.execute(query))
    digests = [row.digest_message_id for row in rows if row.digest_message_id]
    untouched: set[str] = set()
    if digests:
        check = select(deliveries.c.message_id, deliveries.c.status, deliveries.c.attempts).where(
            deliveries.c.message_id.in_(digests)
        )
        if dialect == "postgresql":  # a claim in flight is waited for; later claims skip these
            check = check.with_for_update()
        taken: set[str] = set()
        for message_id, status, attempts in await conn.execute(check):
            if status == "queued" and attempts == 0:
                untouched.add(message_id)
            else:
                taken.add(message_id)
        untouched -= taken
    return {row.id: GroupState.from_row(row, untouched) for row in rows}


_rewrite_payload = (
    update(messages).where(messages.c.id == bindparam("b_id")).values(payload=bindparam("b_body"))
)
_rewrite_event = (
    update(events)
    .where(events.c.id == bindparam("b_id"))
    .values(body=bindparam("b_body"), level=bindparam("b_level"))
)
_save_group = (
    update(event_groups)
    .where(event_groups.c.id == bindparam("b_id"))
    .values(
        window_end=bindparam("b_window_end"),
        digest_message_id=bindparam("b_digest"),
        digest_event_id=bindparam("b_digest_event"),
        summary=bindparam("b_summary"),
        firing=bindparam("b_firing"),
        closed=bindparam("b_closed"),
        updated_at=bindparam("b_now"),
    )
)


@dataclass
class Started:
    """What the writer must store for the digests this transaction started."""

    events: list[dict[str, Any]] = field(default_factory=list)
    messages: list[tuple[Digest, dict[str, Any]]] = field(default_factory=list)


async def save(conn: AsyncConnection, groups: dict[str, GroupState], now: int) -> Started:
    """Write back every changed group: rewrite the digests it changed, flush closed ones; new
    digests are returned for the caller to insert with the event's messages."""
    started = Started()
    payloads, bodies, rows, flushed = [], [], [], []
    for state in groups.values():
        if not state.changed:
            continue
        rows.append(
            {
                "b_id": state.id,
                "b_window_end": state.window_end,
                "b_digest": state.digest_message_id,
                "b_digest_event": state.digest_event_id,
                "b_summary": orjson.dumps(state.summary).decode(),
                "b_firing": orjson.dumps(state.firing).decode(),
                "b_closed": state.closed,
                "b_now": now,
            }
        )
        for digest in state.to_save():
            if digest.summary["count"] == 0 or digest.last_part is None:
                continue
            payload = digest.payload(state.labels, len(state.firing))
            body = digest.event(state.labels, len(state.firing), now)
            if digest.new:
                if digest.flush:
                    digest.due_at = now
                started.messages.append((digest, payload))
                started.events.append(
                    {
                        "id": digest.event_id,
                        "type": DIGEST_TYPE,
                        "source": "msgpush",
                        "level": body["level"],
                        "occurred_at": digest.summary["first_at"],
                        "created_at": now,
                        "idempotency_key": None,
                        "fingerprint": None,
                        "body": orjson.dumps(body).decode(),
                        "routing": orjson.dumps({"messages": [{"id": digest.message_id}]}).decode(),
                    }
                )
                continue
            payloads.append({"b_id": digest.message_id, "b_body": orjson.dumps(payload).decode()})
            bodies.append(
                {
                    "b_id": digest.event_id,
                    "b_body": orjson.dumps(body).decode(),
                    "b_level": body["level"],
                }
            )
            if digest.flush:
                flushed.append(digest.message_id)
    if rows:
        await conn.execute(_save_group, rows)
    if payloads:
        await conn.execute(_rewrite_payload, payloads)
        await conn.execute(_rewrite_event, bodies)
    if flushed:
        await conn.execute(
            update(deliveries)
            .where(deliveries.c.message_id.in_(flushed), deliveries.c.status == "queued")
            .values(next_attempt_at=now, updated_at=now)
        )
    return started
