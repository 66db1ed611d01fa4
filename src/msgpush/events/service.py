"""Accepting events: validate, route by the rules, render, and store the event with its messages
(and its place in any alert-storm digest) in one commit before the API answers 202."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from msgpush import template_worker
from msgpush.channel_service import ChannelService
from msgpush.errors import ApiError, not_found
from msgpush.events import grouping
from msgpush.events.grouping import Member, Part
from msgpush.events.models import MAX_GROUP_WINDOW_S, Event, TemplateOverride
from msgpush.events.rules import CompiledRule, RuleStore, plan
from msgpush.events.templates import (
    EventRecord,
    best_override,
    default_level,
    render_bounded,
    to_ms,
)
from msgpush.ids import iso, new_id, now_ms
from msgpush.storage.audit import SYSTEM, Actor, Change, changed_fields, record_change
from msgpush.storage.db import Database
from msgpush.storage.queue import NewMessage, Queue, Target
from msgpush.storage.schema import event_groups, event_templates, events

# a group whose window ended this long ago is quiet whatever its window (at most a day)
QUIET_GROUP_MS = 2 * MAX_GROUP_WINDOW_S * 1000
SWEEP_EVERY_S = 600.0


@dataclass
class Intake:
    """One event ready for the writer: its row, the messages to send now, the grouped parts."""

    record: EventRecord
    idempotency_key: str | None
    immediate: list[NewMessage]
    parts: list[Part]
    rules: list[str]
    warnings: list[str]


@dataclass
class Accepted:
    answer: dict[str, Any]
    replayed: bool = False
    fresh_messages: int = 0


def fingerprint(event_type: str, data: dict[str, Any], labels: dict[str, str]) -> str | None:
    """What pairs a resolved alert with its firing one: Alertmanager's fingerprint, else a hash
    of the labels."""
    given = data.get("fingerprint")
    if isinstance(given, str) and given:
        return given[:64]
    if not event_type.startswith("alert."):
        return None
    return hashlib.sha256(orjson.dumps(labels, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


class TemplateStore:
    """Per-type template overrides (``/templates``), cached for the hot path."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: tuple[float, dict[str, TemplateOverride]] | None = None

    async def overrides(self) -> dict[str, TemplateOverride]:
        if self._cache is not None and time.monotonic() - self._cache[0] <= 1.0:
            return self._cache[1]
        async with self._db.read() as conn:
            rows = await conn.execute(select(event_templates.c.event_type, event_templates.c.body))
            found = {r.event_type: TemplateOverride.model_validate_json(r.body) for r in rows}
        self._cache = (time.monotonic(), found)
        return found

    async def put(
        self, event_type: str, template: TemplateOverride, *, actor: Actor = SYSTEM
    ) -> None:
        body = template.model_dump_json(exclude_none=True)
        now = now_ms()

        async def op(conn: AsyncConnection) -> None:
            before = (
                await conn.execute(
                    select(event_templates.c.body).where(event_templates.c.event_type == event_type)
                )
            ).scalar_one_or_none()
            if before is not None:
                await conn.execute(
                    update(event_templates)
                    .where(event_templates.c.event_type == event_type)
                    .values(body=body, updated_at=now)
                )
            else:
                await conn.execute(
                    event_templates.insert().values(
                        event_type=event_type, body=body, updated_at=now
                    )
                )
            fields = changed_fields(orjson.loads(before or "{}"), orjson.loads(body))
            action = "create" if before is None else "update"
            await record_change(
                conn, actor, Change(action, "template", event_type, event_type, fields)
            )

        await self._db.write(op)
        self._cache = None

    async def delete(self, event_type: str, *, actor: Actor = SYSTEM) -> bool:
        async def op(conn: AsyncConnection) -> int:
            result = await conn.execute(
                event_templates.delete().where(event_templates.c.event_type == event_type)
            )
            deleted = int(result.rowcount or 0)
            if deleted:
                await record_change(
                    conn, actor, Change("delete", "template", event_type, event_type)
                )
            return deleted

        deleted: int = await self._db.write(op)
        self._cache = None
        return bool(deleted)


class EventService:
    def __init__(
        self,
        db: Database,
        queue: Queue,
        channel_service: ChannelService,
        rules: RuleStore,
        templates: TemplateStore,
        idempotency_ttl_ms: int,
    ) -> None:
        self._db = db
        self._queue = queue
        self._channels = channel_service
        self.rules = rules
        self.templates = templates
        self._ttl_ms = idempotency_ttl_ms
        self._swept = time.monotonic()

    # -- intake -------------------------------------------------------------------------------

    async def accept(self, batch: list[Event]) -> list[Accepted]:
        """Route, render and store ``batch``; returns once committed (durable)."""
        now = now_ms()
        if time.monotonic() - self._swept > SWEEP_EVERY_S:
            self._swept = time.monotonic()
            await self.forget_quiet_groups(now)
        rules = await self.rules.active()
        overrides = await self.templates.overrides()
        records: list[EventRecord] = []
        own: list[list[Target]] = []
        for event in batch:
            # an adapter's events share the channels of its query: an error names "channels.N"
            targets = await self._channels.resolve(event.channels) if event.channels else []
            own.append(targets)
            records.append(self._record(event, targets, now))
        await self._remember_firing(records)
        matched = [[rule for rule in rules if rule.matches(record)] for record in records]
        reachable, gone = await self._rule_targets(
            {c for m in matched for r in m for c in r.channel_ids}
        )
        intakes = []
        for event, record, targets, rules_hit in zip(batch, records, own, matched, strict=True):
            intakes.append(
                await self._intake(event, record, targets, rules_hit, reachable, gone, overrides)
            )
        stored: list[Accepted] = await self._db.submit(self._store_many, intakes)
        return stored

    def _record(self, event: Event, targets: list[Target], now: int) -> EventRecord:
        level = event.level or default_level(event.type, event.labels)
        return EventRecord(
            id=new_id("evt"),
            type=event.type,
            source=event.source,
            level=level.value,
            labels=dict(event.labels),
            data=dict(event.data),
            occurred_at=event.occurred_ms(now),
            created_at=now,
            channels=[t.channel_name for t in targets],
            fingerprint=fingerprint(event.type, event.data, event.labels),
        )

    async def _remember_firing(self, records: list[EventRecord]) -> None:
        """A resolved alert that does not say since when it fired: take the time from its firing
        event, so that its message can say how long it fired."""
        wanted = {
            r.fingerprint: r
            for r in records
            if r.type == "alert.resolved"
            and r.fingerprint
            and to_ms(r.data.get("since") or r.data.get("starts_at")) is None
        }
        if not wanted:
            return
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(events.c.fingerprint, events.c.occurred_at)
                .where(and_(events.c.fingerprint.in_(wanted), events.c.type == "alert.firing"))
                .order_by(events.c.created_at)
            )
            since = {fp: at for fp, at in rows}  # the latest firing wins
        for fp, record in wanted.items():
            if fp in since:
                record.data = {**record.data, "since": iso(since[fp])}

    async def _rule_targets(self, ids: set[str]) -> tuple[dict[str, Target], set[str]]:
        """Rules' channels by id; the ones deleted or disabled since are left out (and named)."""
        if not ids:
            return {}, set()
        try:
            return {t.channel_id: t for t in await self._channels.resolve(sorted(ids))}, set()
        except ApiError:
            pass
        found: dict[str, Target] = {}
        for channel_id in sorted(ids):
            try:
                [target] = await self._channels.resolve([channel_id])
            except ApiError:
                continue
            found[channel_id] = target
        return found, ids - set(found)

    async def _intake(
        self,
        event: Event,
        record: EventRecord,
        own: list[Target],
        matched: list[CompiledRule],
        reachable: dict[str, Target],
        gone: set[str],
        overrides: dict[str, TemplateOverride],
    ) -> Intake:
        warnings: list[str] = []
        for rule in matched:
            missing = [c for c in rule.channel_ids if c in gone]
            if missing:
                warnings.append(
                    f"rule {rule.name!r}: channel {', '.join(missing)} is deleted or disabled; "
                    "left out"
                )
        own_group = (tuple(event.group_by or ()), event.group_window_s or 0)
        routes = plan(record, own, own_group, matched, reachable)
        if not routes:
            warnings.append(
                "no rule matched and the event names no channels: it is stored, nothing is sent"
            )
        type_template = best_override(record.type, overrides)
        immediate: list[NewMessage] = []
        parts: list[Part] = []
        for route in routes:
            rendered = await render_bounded(
                record,
                route.template,
                type_template,
                budget=template_worker.INGEST,
                recipients=route.recipients,
                where=(f"rule {route.name!r}", f"template for {record.type}"),
            )
            warnings.extend(rendered.warnings)
            if not route.group_window_s:
                immediate.append(
                    NewMessage(payload=rendered.payload, targets=route.targets, event_id=record.id)
                )
                continue
            values = grouping.group_key(record, route.group_by)
            member = Member(
                record.id,
                record.type,
                record.level,
                record.occurred_at,
                grouping.instance_of(record),
                record.fingerprint,
            )
            recipients = route.recipients.model_dump(mode="json") if route.recipients else None
            for target in route.targets:
                parts.append(
                    Part(
                        grouping.group_id(route.key, target.channel_id, route.group_by, values),
                        route.key,
                        route.name,
                        target,
                        values,
                        route.group_window_s * 1000,
                        rendered.payload,
                        recipients,
                        member,
                    )
                )
        return Intake(
            record,
            event.idempotency_key,
            immediate,
            parts,
            [r.name for r in matched],
            warnings,
        )

    # -- the transaction ----------------------------------------------------------------------

    async def _store_many(
        self, conn: AsyncConnection, batches: list[list[Intake]]
    ) -> list[list[Accepted]]:
        """Every batch waiting for this commit, in order (the writer's handler)."""
        answers = await self._store(conn, [intake for batch in batches for intake in batch])
        result, start = [], 0
        for batch in batches:
            result.append(answers[start : start + len(batch)])
            start += len(batch)
        return result

    async def _store(self, conn: AsyncConnection, intakes: list[Intake]) -> list[Accepted]:
        """Everything events write, in the writer's one transaction: the events, the messages
        sent now, the group windows and digests. Safe to run again after a rollback (it writes
        nothing outside the transaction and mutates none of its inputs)."""
        now = now_ms()
        known = await self._replays(conn, intakes, now)
        firsts: dict[str, Accepted] = {}
        groups = await grouping.lock(
            conn,
            self._db.dialect,
            [p for i in intakes if i.idempotency_key not in known for p in i.parts],
            now,
        )
        results: list[Accepted | str] = []
        rows: list[dict[str, Any]] = []
        sends: list[NewMessage] = []
        answers: list[tuple[Intake, dict[str, Any], list[NewMessage]]] = []
        for intake in intakes:
            key = intake.idempotency_key
            if key and (key in known or key in firsts):  # seen before, or earlier in this batch
                results.append(key)
                continue
            mine = list(intake.immediate)
            grouped: list[dict[str, Any]] = []
            leads: dict[str, list[Target]] = {}
            lead_payloads: dict[str, dict[str, Any]] = {}
            for part in intake.parts:
                state = groups[part.group_id]
                if state.admit(part, now):
                    leads.setdefault(part.route, []).append(part.target)
                    lead_payloads[part.route] = part.payload
                else:
                    digest = state.open
                    assert digest is not None
                    grouped.append(
                        {
                            "channel": part.target.channel_name,
                            "rule": part.rule_name,
                            "digest": digest.message_id,
                            "digest_event": digest.event_id,
                            "due_at": iso(now if digest.flush else state.window_end),
                        }
                    )
            for route, targets in leads.items():
                mine.append(
                    NewMessage(
                        payload=lead_payloads[route], targets=targets, event_id=intake.record.id
                    )
                )
            sends.extend(mine)
            answer = {
                "id": intake.record.id,
                "type": intake.record.type,
                "level": intake.record.level,
                "rules": intake.rules,
                "messages": [],
                "grouped": grouped,
                "warnings": intake.warnings,
            }
            answers.append((intake, answer, mine))
            accepted = Accepted(answer, fresh_messages=len(mine))
            results.append(accepted)
            if key:
                firsts[key] = accepted
        digests = await grouping.save(conn, groups, now)
        for digest, payload in digests.messages:
            assert digest.last_part is not None
            sends.append(
                NewMessage(
                    payload=payload,
                    targets=[digest.last_part.target],
                    event_id=digest.event_id,
                    id=digest.message_id,
                    due_at=digest.due_at,
                )
            )
        stored = {a.message_id: a for a in await self._queue.enqueue_within(conn, sends)}
        for intake, answer, mine in answers:
            answer["messages"] = [stored[m.id].as_json() for m in mine]
            rows.append(self._row(intake, answer))
        if rows or digests.events:
            await conn.execute(events.insert(), rows + digests.events)
        for index, result in enumerate(results):
            if isinstance(result, str):
                results[index] = known.get(result) or Accepted(firsts[result].answer, True)
        return [r for r in results if isinstance(r, Accepted)]

    async def _replays(
        self, conn: AsyncConnection, intakes: list[Intake], now: int
    ) -> dict[str, Accepted]:
        keys = {i.idempotency_key for i in intakes if i.idempotency_key}
        if not keys:
            return {}
        rows = await conn.execute(
            select(
                events.c.id, events.c.idempotency_key, events.c.created_at, events.c.routing
            ).where(events.c.idempotency_key.in_(keys))
        )
        known: dict[str, Accepted] = {}
        expired = []
        for event_id, key, created_at, routing in rows:
            if created_at < now - self._ttl_ms:
                expired.append(event_id)
            else:
                known[key] = Accepted(orjson.loads(routing or "{}"), replayed=True)
        if expired:  # a key is only remembered for the TTL; free it for reuse
            await conn.execute(
                update(events).where(events.c.id.in_(expired)).values(idempotency_key=None)
            )
        return known

    @staticmethod
    def _row(intake: Intake, answer: dict[str, Any]) -> dict[str, Any]:
        record = intake.record
        return {
            "id": record.id,
            "type": record.type,
            "source": record.source,
            "level": record.level,
            "occurred_at": record.occurred_at,
            "created_at": record.created_at,
            "idempotency_key": intake.idempotency_key,
            "fingerprint": record.fingerprint,
            "body": orjson.dumps(record.view()).decode(),
            "routing": orjson.dumps(answer).decode(),
        }

    async def forget_quiet_groups(self, now: int) -> None:
        """Drop the state of long-quiet groups: their next event leads a new window either way,
        so forgetting them changes nothing but the table's size (a queued digest is a delivery
        of its own and is not touched)."""
        horizon = now - QUIET_GROUP_MS

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(
                delete(event_groups).where(
                    event_groups.c.updated_at < horizon,
                    or_(event_groups.c.window_end.is_(None), event_groups.c.window_end < horizon),
                )
            )

        await self._db.write(op)

    # -- reading ------------------------------------------------------------------------------

    async def get(self, event_id: str) -> dict[str, Any]:
        async with self._db.read() as conn:
            row = (await conn.execute(select(events).where(events.c.id == event_id))).first()
        if row is None:
            raise not_found("event", event_id)
        return self._view(row)

    @staticmethod
    def _view(row: Any) -> dict[str, Any]:
        view: dict[str, Any] = orjson.loads(row.body)
        view["idempotency_key"] = row.idempotency_key
        view["fingerprint"] = row.fingerprint
        view["routing"] = orjson.loads(row.routing) if row.routing else None
        return view

    async def list(
        self,
        *,
        type_: str | None = None,
        source: str | None = None,
        since: int | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> dict[str, Any]:
        query = select(events).order_by(events.c.id.desc()).limit(limit + 1)
        if type_:
            query = query.where(events.c.type == type_)
        if source:
            query = query.where(events.c.source == source)
        if since is not None:
            query = query.where(events.c.created_at >= since)
        if cursor:
            query = query.where(events.c.id < cursor)
        async with self._db.read() as conn:
            rows = list(await conn.execute(query))
        page = rows[:limit]
        return {
            "items": [self._view(row) for row in page],
            "next_cursor": page[-1].id if len(rows) > limit else None,
        }
