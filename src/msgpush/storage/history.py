"""Reading what happened: messages with their deliveries, deliveries with their attempts."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from msgpush.errors import ApiError, not_found
from msgpush.ids import iso, now_ms
from msgpush.storage.db import Database
from msgpush.storage.schema import deliveries, delivery_attempts, messages

STATUSES = ("queued", "sending", "retrying", "delivered", "failed", "cancelled")


def delivery_view(row: Any) -> dict[str, Any]:
    view = {
        "id": row.id,
        "message_id": row.message_id,
        "channel_id": row.channel_id,
        "channel": row.channel_name,
        "channel_type": row.channel_type,
        "status": row.status,
        "attempts": row.attempts,
        "next_attempt_at": iso(row.next_attempt_at)
        if row.status in ("queued", "retrying")
        else None,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "delivered_at": iso(row.delivered_at),
        "error": row.last_error,
        "warning": row.warning,
    }
    payload = getattr(row, "payload", None)
    if payload is not None:  # listings carry what the message was about
        message = orjson.loads(payload)
        view["title"] = message.get("title", "")
        view["level"] = message.get("level", "info")
    return view


def attempt_view(row: Any) -> dict[str, Any]:
    return {
        "number": row.number,
        "started_at": iso(row.started_at),
        "duration_ms": row.duration_ms,
        "outcome": row.outcome,
        "status_code": row.status_code,
        "vendor_code": row.vendor_code,
        "vendor_message": row.vendor_message,
        "diagnosis": row.diagnosis,
        "next_attempt_at": iso(row.next_attempt_at),
        "request": orjson.loads(row.request) if row.request else None,
        "worker": row.worker,
    }


class History:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def deliveries(
        self,
        *,
        channel: str | None = None,
        status: str | None = None,
        since: int | None = None,
        until: int | None = None,
        message_id: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> dict[str, Any]:
        statement = (
            select(deliveries, messages.c.payload)
            .outerjoin(messages, messages.c.id == deliveries.c.message_id)
            .order_by(deliveries.c.id.desc())
            .limit(limit + 1)
        )
        if channel:
            statement = statement.where(
                or_(deliveries.c.channel_id == channel, deliveries.c.channel_name == channel)
            )
        if status:
            wanted = [s.strip() for s in status.split(",") if s.strip()]
            for value in wanted:
                if value not in STATUSES:
                    raise ApiError(
                        422,
                        "invalid",
                        f"status {value!r} is not one of {', '.join(STATUSES)}",
                        "status",
                    )
            statement = statement.where(deliveries.c.status.in_(wanted))
        if since is not None:
            statement = statement.where(deliveries.c.created_at >= since)
        if until is not None:
            statement = statement.where(deliveries.c.created_at < until)
        if message_id:
            statement = statement.where(deliveries.c.message_id == message_id)
        if cursor:
            statement = statement.where(deliveries.c.id < cursor)
        async with self._db.read() as conn:
            rows = list(await conn.execute(statement))
        page = rows[:limit]
        return {
            "items": [delivery_view(row) for row in page],
            "next_cursor": page[-1].id if len(rows) > limit else None,
        }

    async def delivery(self, delivery_id: str) -> dict[str, Any]:
        async with self._db.read() as conn:
            row = (
                await conn.execute(select(deliveries).where(deliveries.c.id == delivery_id))
            ).first()
            if row is None:
                raise not_found("delivery", delivery_id)
            attempts = await conn.execute(
                select(delivery_attempts)
                .where(delivery_attempts.c.delivery_id == delivery_id)
                .order_by(delivery_attempts.c.number, delivery_attempts.c.id)
            )
            message = (
                await conn.execute(
                    select(messages.c.payload).where(messages.c.id == row.message_id)
                )
            ).scalar_one_or_none()
        view = delivery_view(row)
        view["attempt_log"] = [attempt_view(a) for a in attempts]
        view["message"] = orjson.loads(message) if message else None
        return view

    async def message(self, message_id: str) -> dict[str, Any]:
        async with self._db.read() as conn:
            row = (await conn.execute(select(messages).where(messages.c.id == message_id))).first()
            if row is None:
                raise not_found("message", message_id)
            rows = await conn.execute(
                select(deliveries)
                .where(deliveries.c.message_id == message_id)
                .order_by(deliveries.c.id)
            )
            listed = [delivery_view(d) for d in rows]
        return {
            "id": row.id,
            "created_at": iso(row.created_at),
            "idempotency_key": row.idempotency_key,
            "event_id": row.event_id,
            **orjson.loads(row.payload),
            "deliveries": listed,
        }

    async def retry(self, delivery_id: str) -> dict[str, Any]:
        """Send a failed (or cancelled) delivery again, with a fresh retry budget."""
        now = now_ms()

        async def op(conn: AsyncConnection) -> str | None:
            row = (
                await conn.execute(
                    select(deliveries.c.status, deliveries.c.attempts).where(
                        deliveries.c.id == delivery_id
                    )
                )
            ).first()
            if row is None:
                return None
            if row.status not in ("failed", "cancelled"):
                return str(row.status)
            await conn.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery_id)
                .values(
                    status="queued",
                    next_attempt_at=now,
                    budget_attempts=row.attempts,
                    budget_since=now,
                    last_error=None,
                    updated_at=now,
                )
            )
            return "requeued"

        result = await self._db.write(op)
        if result is None:
            raise not_found("delivery", delivery_id)
        if result != "requeued":
            raise ApiError(
                409,
                "conflict",
                f"delivery {delivery_id} is {result}; only failed or cancelled deliveries can be resent",
            )
        return await self.delivery(delivery_id)
