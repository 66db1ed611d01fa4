"""The audit log of admin changes: who (which API token, from which address) did what to which
channel, rule, template or token, when, and which fields it changed.

An entry names fields, never their values: a channel's secret setting appears as
``config.secret`` and nothing more. Services write the entry with ``record_change`` inside the very
transaction that makes the change, so a change is never stored without its entry (nor the
other way round).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from msgpush.errors import ApiError
from msgpush.ids import iso, new_id, now_ms
from msgpush.storage.db import Database
from msgpush.storage.schema import audit_log

KINDS = ("channel", "rule", "template", "token")


@dataclass(frozen=True)
class Actor:
    """Who made a change: the API token (id and name) and the client's address. All ``None``
    when msgpush itself did it (the first admin token at first start, ``msgpush token create``)."""

    token_id: str | None = None
    token_name: str | None = None
    address: str | None = None


SYSTEM = Actor()


@dataclass(frozen=True)
class Change:
    action: str  # create | update | delete | enable | disable | test
    kind: str  # one of KINDS
    object_id: str
    object_name: str | None
    fields: tuple[str, ...] = ()


def changed_fields(
    before: Mapping[str, Any], after: Mapping[str, Any], prefix: str = ""
) -> tuple[str, ...]:
    """The names (``prefix`` + key) whose values differ between two mappings, sorted; a key
    present on one side only counts as changed. Values are compared, never returned."""
    keys = set(before) | set(after)
    missing = object()
    return tuple(
        sorted(
            f"{prefix}{key}" for key in keys if before.get(key, missing) != after.get(key, missing)
        )
    )


def update_action(fields: Iterable[str], enabled: bool | None) -> str:
    """``enable``/``disable`` when switching ``enabled`` was the whole change, else ``update``."""
    if tuple(fields) == ("enabled",) and enabled is not None:
        return "enable" if enabled else "disable"
    return "update"


async def record_change(conn: AsyncConnection, actor: Actor, change: Change) -> None:
    """Add the entry inside the caller's transaction (a group-commit write op)."""
    await conn.execute(
        audit_log.insert().values(
            id=new_id("aud"),
            at=now_ms(),
            token_id=actor.token_id,
            token_name=actor.token_name,
            address=actor.address,
            action=change.action,
            kind=change.kind,
            object_id=change.object_id,
            object_name=change.object_name,
            fields=orjson.dumps(list(change.fields)).decode(),
        )
    )


def _view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": iso(row.at),
        "token": {"id": row.token_id, "name": row.token_name} if row.token_id else None,
        "address": row.address,
        "action": row.action,
        "kind": row.kind,
        "object_id": row.object_id,
        "object_name": row.object_name,
        "fields": orjson.loads(row.fields),
    }


class AuditLog:
    """Reads of the audit log (``GET /api/v1/audit``): newest first, paged by id."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(
        self,
        *,
        kind: str | None = None,
        object_id: str | None = None,
        token_id: str | None = None,
        since: int | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> dict[str, Any]:
        statement = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit + 1)
        if kind:
            if kind not in KINDS:
                raise ApiError(
                    422, "invalid", f"kind {kind!r} is not one of {', '.join(KINDS)}", "kind"
                )
            statement = statement.where(audit_log.c.kind == kind)
        if object_id:
            statement = statement.where(audit_log.c.object_id == object_id)
        if token_id:
            statement = statement.where(audit_log.c.token_id == token_id)
        if since is not None:
            statement = statement.where(audit_log.c.at >= since)
        if cursor:
            statement = statement.where(audit_log.c.id < cursor)
        async with self._db.read() as conn:
            rows = list(await conn.execute(statement))
        page = rows[:limit]
        return {
            "items": [_view(row) for row in page],
            "next_cursor": page[-1].id if len(rows) > limit else None,
        }
