"""Routing rules: matching an event (type patterns, minimum level, labels), planning where it
goes (one message per channel however many rules reach it), and the rules as stored."""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from msgpush.channel_service import ChannelService
from msgpush.errors import ApiError, not_found, validation_error
from msgpush.events.models import Rule, TemplateOverride, at_least, label_regex
from msgpush.events.templates import EventRecord, check_limits, check_names
from msgpush.ids import iso, new_id, now_ms
from msgpush.message import Recipients
from msgpush.storage.audit import (
    SYSTEM,
    Actor,
    Change,
    changed_fields,
    record_change,
    update_action,
)
from msgpush.storage.db import Database
from msgpush.storage.queue import Target
from msgpush.storage.schema import channels, event_groups, rules

CACHE_TTL_S = 1.0
DIRECT = "event"  # the route of an event's own channels


@dataclass(frozen=True)
class LabelMatch:
    """One label condition: ``=`` (equal), ``!=``, ``=~`` and ``!~`` (an RE2 regex on the whole
    value, as Alertmanager matches). A missing label reads as ""."""

    name: str
    operator: str
    value: str
    pattern: Any  # re2's compiled pattern (untyped)

    @classmethod
    def parse(cls, name: str, spec: str) -> LabelMatch:
        for operator in ("=~", "!~", "!="):
            if spec.startswith(operator):
                value = spec[2:]
                regex = label_regex(value) if operator in ("=~", "!~") else None
                return cls(name, operator, value, regex)
        return cls(name, "=", spec.removeprefix("=="), None)

    def __call__(self, labels: dict[str, str]) -> bool:
        value = labels.get(self.name, "")
        if self.operator == "=":
            return value == self.value
        if self.operator == "!=":
            return value != self.value
        assert self.pattern is not None
        found = self.pattern.fullmatch(value) is not None
        return found if self.operator == "=~" else not found


@dataclass(frozen=True)
class CompiledRule:
    id: str
    name: str
    event_types: tuple[str, ...]
    min_level: str
    matchers: tuple[LabelMatch, ...]
    channel_ids: tuple[str, ...]
    recipients: Recipients | None
    template: TemplateOverride | None
    group_by: tuple[str, ...]
    group_window_s: int

    @classmethod
    def build(cls, rule_id: str, rule: Rule) -> CompiledRule:
        return cls(
            id=rule_id,
            name=rule.name,
            event_types=tuple(rule.event_types),
            min_level=rule.min_level.value,
            matchers=tuple(LabelMatch.parse(k, v) for k, v in rule.labels.items()),
            channel_ids=tuple(rule.channels),
            recipients=rule.recipients,
            template=rule.template,
            group_by=tuple(rule.group_by),
            group_window_s=rule.group_window_s or 0,
        )

    def matches(self, event: EventRecord) -> bool:
        return (
            any(fnmatch.fnmatchcase(event.type, p) for p in self.event_types)
            and at_least(event.level, self.min_level)
            and all(match(event.labels) for match in self.matchers)
        )


@dataclass
class Route:
    """Where one event goes by one way: its own ``channels`` or one rule."""

    key: str  # the rule's id, or DIRECT
    name: str | None  # the rule's name
    targets: list[Target]
    template: TemplateOverride | None = None
    recipients: Recipients | None = None
    group_by: tuple[str, ...] = ()
    group_window_s: int = 0


def plan(
    event: EventRecord,
    own: list[Target],
    own_group: tuple[tuple[str, ...], int],
    matched: list[CompiledRule],
    targets: dict[str, Target],
) -> list[Route]:
    """The routes of an event. A channel reached several ways gets one message, from the first
    way: the event's own channels, then the matching rules in the order they were created."""
    claimed: set[str] = set()

    def claim(candidates: list[Target]) -> list[Target]:
        mine = [t for t in candidates if t.channel_id not in claimed]
        claimed.update(t.channel_id for t in mine)
        return mine

    routes = [Route(DIRECT, None, claim(own), group_by=own_group[0], group_window_s=own_group[1])]
    for rule in matched:
        reachable = [targets[c] for c in rule.channel_ids if c in targets]
        routes.append(
            Route(
                rule.id,
                rule.name,
                claim(reachable),
                template=rule.template,
                recipients=rule.recipients,
                group_by=rule.group_by,
                group_window_s=rule.group_window_s,
            )
        )
    return [r for r in routes if r.targets]


# -- stored rules ---------------------------------------------------------------------------


class RuleStore:
    """``/rules``: CRUD, channels kept by id (renaming a channel keeps its rules), and the
    enabled rules compiled and cached for the event hot path."""

    def __init__(self, db: Database, channel_service: ChannelService) -> None:
        self._db = db
        self._channels = channel_service
        self._cache: tuple[float, list[CompiledRule]] | None = None

    def forget(self) -> None:
        self._cache = None

    async def active(self) -> list[CompiledRule]:
        if self._cache is not None and time.monotonic() - self._cache[0] <= CACHE_TTL_S:
            return self._cache[1]
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(rules.c.id, rules.c.body).where(rules.c.enabled).order_by(rules.c.id)
            )
            compiled = [CompiledRule.build(r.id, Rule.model_validate_json(r.body)) for r in rows]
        self._cache = (time.monotonic(), compiled)
        return compiled

    # -- views

    async def _names(self, conn: AsyncConnection, ids: set[str]) -> dict[str, str]:
        if not ids:
            return {}
        rows = await conn.execute(
            select(channels.c.id, channels.c.name).where(channels.c.id.in_(ids))
        )
        return {row.id: row.name for row in rows}

    def _view(self, row: Any, names: dict[str, str]) -> dict[str, Any]:
        body = orjson.loads(row.body)
        ids = body.pop("channels")
        return {
            "id": row.id,
            **body,
            "channels": [names.get(c, c) for c in ids],
            "channel_ids": ids,
            "missing_channels": [c for c in ids if c not in names],
            "enabled": row.enabled,
            "created_at": iso(row.created_at),
            "updated_at": iso(row.updated_at),
        }

    async def _row(self, conn: AsyncConnection, ref: str) -> Any:
        row = (
            await conn.execute(select(rules).where(or_(rules.c.id == ref, rules.c.name == ref)))
        ).first()
        if row is None:
            raise not_found("rule", ref)
        return row

    async def list(self) -> dict[str, Any]:
        async with self._db.read() as conn:
            rows = list(await conn.execute(select(rules).order_by(rules.c.id)))
            ids = {c for row in rows for c in orjson.loads(row.body)["channels"]}
            names = await self._names(conn, ids)
        return {"items": [self._view(row, names) for row in rows], "next_cursor": None}

    async def get(self, ref: str) -> dict[str, Any]:
        async with self._db.read() as conn:
            row = await self._row(conn, ref)
            names = await self._names(conn, set(orjson.loads(row.body)["channels"]))
        return self._view(row, names)

    # -- writes

    async def _validated(self, body: Any) -> Rule:
        if not isinstance(body, dict):
            raise ApiError(422, "invalid", "the body must be a JSON object (a rule)")
        try:
            rule = Rule.model_validate(body)
        except ValidationError as exc:
            raise validation_error(exc.errors()) from None
        if rule.template is not None:
            check_names(rule.template, "template")
            await check_limits(rule.template, rule.event_types[0], "template")
        targets = await self._channels.resolve(rule.channels)
        return rule.model_copy(update={"channels": [t.channel_id for t in targets]})

    @staticmethod
    def _stored(rule: Rule) -> str:
        return orjson.dumps(rule.model_dump(mode="json", exclude={"enabled"})).decode()

    async def create(self, body: Any, *, actor: Actor = SYSTEM) -> dict[str, Any]:
        rule = await self._validated(body)
        now = now_ms()
        rule_id = new_id("rule")
        row = {
            "id": rule_id,
            "name": rule.name,
            "enabled": rule.enabled,
            "body": self._stored(rule),
            "created_at": now,
            "updated_at": now,
        }
        change = Change("create", "rule", rule_id, rule.name, tuple(sorted(body)))

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(rules.insert().values(**row))
            await record_change(conn, actor, change)

        await self._write(op, rule.name)
        return await self.get(rule_id)

    async def update(self, ref: str, body: Any, *, actor: Actor = SYSTEM) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(422, "invalid", "the body must be a JSON object with the changes")
        async with self._db.read() as conn:
            row = await self._row(conn, ref)
        stored = orjson.loads(row.body) | {"enabled": row.enabled}
        rule = await self._validated(stored | body)
        body_text = self._stored(rule)
        values = {
            "name": rule.name,
            "enabled": rule.enabled,
            "body": body_text,
            "updated_at": now_ms(),
        }
        fields = changed_fields(stored, orjson.loads(body_text) | {"enabled": rule.enabled})
        action = update_action(fields, rule.enabled)
        change = Change(action, "rule", row.id, rule.name, fields)

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(update(rules).where(rules.c.id == row.id).values(**values))
            await record_change(conn, actor, change)

        await self._write(op, rule.name)
        return await self.get(row.id)

    async def delete(self, ref: str, *, actor: Actor = SYSTEM) -> None:
        async with self._db.read() as conn:
            row = await self._row(conn, ref)
        change = Change("delete", "rule", row.id, row.name)

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(delete(rules).where(rules.c.id == row.id))
            await record_change(conn, actor, change)
            # its storm windows go too; a digest already queued is still sent
            await conn.execute(delete(event_groups).where(event_groups.c.route == row.id))

        await self._db.write(op)
        self.forget()

    async def _write(self, op: Any, name: str) -> None:
        try:
            await self._db.write(op)
        except IntegrityError:
            raise ApiError(
                409, "conflict", f"a rule named {name!r} exists; choose another name", "name"
            ) from None
        self.forget()
