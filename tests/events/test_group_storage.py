"""The storm windows in the database (in-process, SQLite): a digest is rewritten only while its
delivery is untouched, a taken one is never changed, long-quiet groups are forgotten."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select, update

from msgpush.events import grouping
from msgpush.events.grouping import Member, Part
from msgpush.events.service import QUIET_GROUP_MS, EventService
from msgpush.ids import now_ms
from msgpush.settings import Settings
from msgpush.storage.db import Database
from msgpush.storage.queue import NewMessage, Queue, Target
from msgpush.storage.schema import deliveries, event_groups, messages

TARGET = Target("ch_ops", "ops", "webhook")


@pytest.fixture
async def db(tmp_path: Path) -> Any:
    database = Database(Settings(data_dir=tmp_path))
    await database.start()
    yield database
    await database.close()


def part(n: int) -> Part:
    member = Member(f"evt_{n}", "alert.firing", "warning", n, f"db-{n}", f"fp{n}")
    payload = {"title": f"event {n}", "content": "", "level": "warning"}
    return Part("g1", "rule_1", "storms", TARGET, {"alertname": "X"}, 60_000, payload, None, member)


async def admit(db: Database, queue: Queue, *parts: Part) -> dict[str, grouping.GroupState]:
    """One writer transaction: lock, admit, save, store the new digests (as the service does)."""

    async def op(conn: Any) -> dict[str, grouping.GroupState]:
        now = now_ms()
        groups = await grouping.lock(conn, db.dialect, list(parts), now)
        for p in parts:
            groups[p.group_id].admit(p, now)
        started = await grouping.save(conn, groups, now)
        await queue.enqueue_within(
            conn,
            [
                NewMessage(payload, [TARGET], id=digest.message_id, due_at=digest.due_at)
                for digest, payload in started.messages
            ],
        )
        return groups

    result: dict[str, grouping.GroupState] = await db.write(op)
    return result


async def digest_payload(db: Database, message_id: str) -> dict[str, Any]:
    async with db.read() as conn:
        raw = (
            await conn.execute(select(messages.c.payload).where(messages.c.id == message_id))
        ).scalar_one()
    loaded: dict[str, Any] = orjson.loads(raw)
    return loaded


async def test_a_digest_is_rewritten_while_untouched_and_never_once_taken(db: Database) -> None:
    queue = Queue(db, 86_400_000)
    await admit(db, queue, part(0))  # leads
    groups = await admit(db, queue, part(1), part(2))
    digest = groups["g1"].digest_message_id
    assert digest is not None
    async with db.read() as conn:
        due = (
            await conn.execute(
                select(deliveries.c.next_attempt_at).where(deliveries.c.message_id == digest)
            )
        ).scalar_one()
    assert due > now_ms() + 50_000  # held until the window's end
    assert (await digest_payload(db, digest))["title"] == "2 more alerts: alertname=X"

    groups = await admit(db, queue, part(3))
    assert groups["g1"].digest_message_id == digest
    assert (await digest_payload(db, digest))["title"] == "3 more alerts: alertname=X"

    async def take(conn: Any) -> None:  # the engine claims it
        await conn.execute(
            update(deliveries).where(deliveries.c.message_id == digest).values(status="sending")
        )

    await db.write(take)
    groups = await admit(db, queue, part(4))
    assert groups["g1"].digest_message_id != digest
    assert (await digest_payload(db, digest))["title"] == "3 more alerts: alertname=X"  # unchanged


async def test_long_quiet_groups_are_forgotten(db: Database) -> None:
    queue = Queue(db, 86_400_000)
    await admit(db, queue, part(0))
    old = now_ms() - QUIET_GROUP_MS - 1

    async def age(conn: Any) -> None:
        await conn.execute(update(event_groups).values(updated_at=old, window_end=old))

    await db.write(age)
    fresh = Part("g2", "rule_1", "storms", TARGET, {}, 60_000, {}, None, part(9).member)
    await admit(db, queue, fresh)
    service = EventService(db, queue, None, None, None, 0)  # type: ignore[arg-type]
    await service.forget_quiet_groups(now_ms())
    async with db.read() as conn:
        left = [row.id for row in await conn.execute(select(event_groups.c.id))]
    assert left == ["g2"]
