"""Retention: finished messages, their deliveries and attempts, and events older than
``MSGPUSH_RETENTION`` are removed, a small batch per transaction.

A message is finished when every delivery of it is ``delivered``, ``failed`` or ``cancelled``
and none changed since the cut-off (a resend counts as a change), and no open alert group still
builds its digest. Ids sort by creation time (``ids.new_id``), so "older than the cut-off" is a
range on the primary key, oldest first, and a sweep reads only the rows it may remove.

Each batch is one short write through the group-commit writer, so a sweep never holds SQLite's
single write lock for long; ingest and delivery commits take turns with it. On SQLite the freed
pages are returned to the file system a few at a time (``incremental_vacuum``) where the
database was created with ``auto_vacuum=INCREMENTAL``, and reused for new rows otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass

from sqlalchemy import and_, delete, exists, not_, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.selectable import Exists

from msgpush.ids import id_floor, now_ms
from msgpush.storage.db import Database
from msgpush.storage.schema import (
    deliveries,
    delivery_attempts,
    event_groups,
    events,
    messages,
)

log = logging.getLogger(__name__)

FINISHED = ("delivered", "failed", "cancelled")
BATCH = 200  # messages (with their deliveries and attempts) or events per transaction
VACUUM_PAGES = 256  # pages handed back to the file system per batch on SQLite


@dataclass
class Swept:
    """What one sweep removed."""

    messages: int = 0
    deliveries: int = 0
    attempts: int = 0
    events: int = 0
    groups: int = 0

    def __bool__(self) -> bool:
        return any((self.messages, self.events, self.groups))


class Retention:
    def __init__(self, db: Database, retention_s: float) -> None:
        self._db = db
        self.retention_ms = int(retention_s * 1000)

    @property
    def every_s(self) -> float:
        """How often to sweep: every minute, or more often for a retention under four minutes."""
        return min(60.0, max(self.retention_ms / 4000, 0.5))

    async def sweep(self, *, batch: int = BATCH) -> Swept:
        """Remove everything finished before the cut-off, batch by batch."""
        cutoff = now_ms() - self.retention_ms
        swept = Swept()
        after = ""  # messages that may not go yet are stepped over, not read again
        while True:
            found, after = await self._db.write(
                functools.partial(
                    _remove_messages, cutoff=cutoff, after=after, batch=batch, swept=swept
                )
            )
            if found < batch:
                break
        while await self._db.write(lambda conn: _remove_events(conn, cutoff, batch, swept)):
            pass
        await self._db.write(lambda conn: _remove_groups(conn, cutoff, swept))
        if swept and self._db.dialect == "sqlite":
            await self._db.write(_vacuum_some, durable=False)
        return swept

    async def run(self, stopping: asyncio.Event) -> None:
        """Sweep now and then until ``stopping`` is set; a failed sweep is logged and retried."""
        while not stopping.is_set():
            try:
                swept = await self.sweep()
                if swept:
                    log.info(
                        "retention: removed %d messages, %d deliveries, %d attempts, %d events",
                        swept.messages,
                        swept.deliveries,
                        swept.attempts,
                        swept.events,
                    )
            except Exception:
                log.exception("retention sweep failed; trying again later")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=self.every_s)


def _unfinished_delivery(cutoff: int) -> Exists:
    return exists().where(
        deliveries.c.message_id == messages.c.id,
        or_(deliveries.c.status.not_in(FINISHED), deliveries.c.updated_at >= cutoff),
    )


async def _remove_messages(
    conn: AsyncConnection, *, cutoff: int, after: str, batch: int, swept: Swept
) -> tuple[int, str]:
    rows = (
        await conn.execute(
            select(messages.c.id, _unfinished_delivery(cutoff).label("busy"))
            .where(messages.c.id > after, messages.c.id < id_floor("msg", cutoff))
            .order_by(messages.c.id)
            .limit(batch)
        )
    ).all()
    if not rows:
        return 0, after
    open_digests = {
        row.digest_message_id
        for row in await conn.execute(
            select(event_groups.c.digest_message_id).where(
                event_groups.c.digest_message_id.in_([r.id for r in rows]),
                not_(event_groups.c.closed),
            )
        )
    }
    ids = [row.id for row in rows if not row.busy and row.id not in open_digests]
    if ids:
        doomed = select(deliveries.c.id).where(deliveries.c.message_id.in_(ids))
        result = await conn.execute(
            delete(delivery_attempts).where(delivery_attempts.c.delivery_id.in_(doomed))
        )
        swept.attempts += result.rowcount or 0
        result = await conn.execute(delete(deliveries).where(deliveries.c.message_id.in_(ids)))
        swept.deliveries += result.rowcount or 0
        result = await conn.execute(delete(messages).where(messages.c.id.in_(ids)))
        swept.messages += result.rowcount or 0
    # Kept messages are stepped over; removed ones are gone, so the next batch starts after
    # the last kept one (or where this one ended, when all of it was kept).
    return len(rows), rows[-1].id


async def _remove_events(conn: AsyncConnection, cutoff: int, batch: int, swept: Swept) -> int:
    """Events older than the cut-off none of whose messages is left."""
    doomed = (
        select(events.c.id)
        .where(
            events.c.id < id_floor("evt", cutoff),
            not_(exists().where(messages.c.event_id == events.c.id)),
        )
        .order_by(events.c.id)
        .limit(batch)
    )
    ids = [row.id for row in await conn.execute(doomed)]
    if ids:
        await conn.execute(delete(events).where(events.c.id.in_(ids)))
        swept.events += len(ids)
    return len(ids)


async def _remove_groups(conn: AsyncConnection, cutoff: int, swept: Swept) -> None:
    """Alert groups quiet since the cut-off: closed, or open with nothing left to send."""
    result = await conn.execute(
        delete(event_groups).where(
            event_groups.c.updated_at < cutoff,
            or_(
                event_groups.c.closed,
                and_(
                    or_(event_groups.c.window_end.is_(None), event_groups.c.window_end < cutoff),
                    event_groups.c.digest_message_id.is_(None),
                ),
            ),
        )
    )
    swept.groups += result.rowcount or 0


async def _vacuum_some(conn: AsyncConnection) -> None:
    """Hand freed pages back (no-op unless the file was made with auto_vacuum=INCREMENTAL)."""
    await conn.execute(text(f"PRAGMA incremental_vacuum({VACUUM_PAGES})"))
