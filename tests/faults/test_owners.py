"""Owners and heartbeats (storage/owners.py), in one process: who is gone, and what they held."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from msgpush.settings import Settings
from msgpush.storage.db import Database
from msgpush.storage.owners import DEAD_AFTER_S, Owners
from msgpush.storage.queue import NewMessage, Queue, Target
from msgpush.storage.schema import deliveries, delivery_attempts, process_owners
from tests.server import create_pg_database, drop_pg_database


@pytest.fixture
async def db(backend: str, tmp_path: Path) -> AsyncIterator[Database]:
    url = create_pg_database() if backend == "postgresql" else None
    database = Database(Settings(data_dir=tmp_path, database_url=url))
    await database.start()
    yield database
    await database.close()
    if url:
        drop_pg_database(url)


async def _claimed_by(db: Database, owner: str, count: int) -> list[str]:
    queue = Queue(db, 60_000)
    target = Target("ch_x", "x", "webhook")
    await queue.enqueue([NewMessage({"title": f"m{n}"}, [target]) for n in range(count)])
    claimed = await queue.claim(owner, count, lease_ms=3_600_000)  # the lease never helps here
    assert len(claimed) == count
    return [c.id for c in claimed]


async def _state(db: Database) -> tuple[dict[str, tuple[str, str | None]], set[str]]:
    async with db.read() as conn:
        rows = (
            await conn.execute(
                select(deliveries.c.id, deliveries.c.status, deliveries.c.lease_owner)
            )
        ).all()
        owners = set((await conn.execute(select(process_owners.c.owner))).scalars())
    return {r.id: (r.status, r.lease_owner) for r in rows}, owners


async def _interrupted(db: Database) -> list[tuple[str, str | None]]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(delivery_attempts.c.delivery_id, delivery_attempts.c.worker).where(
                delivery_attempts.c.outcome == "interrupted"
            )
        )
        return [(r.delivery_id, r.worker) for r in rows]


async def _age_heartbeat(db: Database, owner: str) -> None:
    """As if ``owner`` had not beaten for longer than DEAD_AFTER_S."""

    async def age(conn: Any) -> None:
        await conn.execute(
            update(process_owners)
            .where(process_owners.c.owner == owner)
            .values(heartbeat_at=process_owners.c.heartbeat_at - int(DEAD_AFTER_S * 1000) - 1000)
        )

    await db.write(age)


def _die(owners: Owners) -> None:
    """As kill -9 would: the lock goes with the process, the row and the lock file stay."""
    assert owners._task is not None and owners._lock_fd is not None
    owners._task.cancel()
    os.close(owners._lock_fd)
    owners._lock_fd = None


async def test_a_process_finds_a_dead_neighbour_by_its_lock_at_once(
    db: Database, tmp_path: Path
) -> None:
    lock_dir = tmp_path / "owners"
    released: list[int] = []
    dead = Owners(db, "host-1-aaaaaa", lock_dir)
    await dead.start()
    held = await _claimed_by(db, dead.owner, 3)
    survivor = Owners(db, "host-2-bbbbbb", lock_dir, released.append)
    assert (await survivor.start()).released == 0, "a live neighbour's claims are left alone"
    assert sorted(p.name for p in lock_dir.iterdir()) == [
        "host-1-aaaaaa.lock",
        "host-2-bbbbbb.lock",
    ]

    _die(dead)
    sweep = await survivor.beat()  # no heartbeat has gone stale yet: the lock told

    assert sweep.gone == {dead.owner} and sweep.released == 3 and released == [3]
    statuses, owners = await _state(db)
    assert all(statuses[d] == ("retrying", None) for d in held)
    assert owners == {survivor.owner}, "the dead owner's heartbeat row is removed"
    assert sorted(await _interrupted(db)) == sorted((d, dead.owner) for d in held)
    assert [p.name for p in lock_dir.iterdir()] == ["host-2-bbbbbb.lock"]
    assert (await survivor.beat()).released == 0, "released once, not at every heartbeat"
    await survivor.stop()
    assert list(lock_dir.iterdir()) == [] and (await _state(db))[1] == set()


async def test_a_stale_heartbeat_releases_the_claims_of_another_host(db: Database) -> None:
    # no lock directory: as for a process on another host, only the heartbeat tells
    elsewhere = Owners(db, "other-7-cccccc", None)
    await elsewhere.start()
    held = await _claimed_by(db, elsewhere.owner, 2)
    here = Owners(db, "here-8-dddddd", None)
    await here.start()
    assert (await here.beat()).released == 0

    assert elsewhere._task is not None
    elsewhere._task.cancel()  # its heartbeat stops

    await _age_heartbeat(db, elsewhere.owner)
    assert (await here.beat()).released == 0, "judged only after DEAD_AFTER_S of own beats"
    here._beating_since = time.monotonic() - DEAD_AFTER_S  # as if beating that long
    sweep = await here.beat()

    assert sweep.gone == {elsewhere.owner} and sweep.released == 2
    statuses, owners = await _state(db)
    assert [statuses[d] for d in held] == [("retrying", None)] * 2
    assert owners == {here.owner}
    await here.stop()


async def test_a_held_owner_lock_outweighs_a_stale_heartbeat(db: Database, tmp_path: Path) -> None:
    """A process on this host whose loop stalled (its heartbeat is late) still holds its lock:
    it lives, and what it is sending is left to it."""
    lock_dir = tmp_path / "owners"
    stalled = Owners(db, "host-3-gggggg", lock_dir)
    await stalled.start()
    held = await _claimed_by(db, stalled.owner, 2)
    assert stalled._task is not None
    stalled._task.cancel()
    judge = Owners(db, "host-4-hhhhhh", lock_dir)
    await judge.start()
    judge._beating_since = time.monotonic() - DEAD_AFTER_S
    await _age_heartbeat(db, stalled.owner)

    assert (await judge.beat()).released == 0
    statuses, owners = await _state(db)
    assert [statuses[d] for d in held] == [("sending", stalled.owner)] * 2
    assert owners == {stalled.owner, judge.owner}
    await judge.stop()
    await stalled.stop()


async def test_a_live_process_taken_for_dead_registers_again(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    owners = Owners(db, "slow-9-eeeeee", None)
    await owners.start()

    async def forget(conn: Any) -> None:
        await conn.execute(process_owners.delete())

    await db.write(forget)
    await owners.beat()
    assert (await _state(db))[1] == {owners.owner}
    assert "was taken for stopped" in caplog.text
    await owners.stop()


async def test_no_lock_directory_still_runs_on_heartbeats(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    owners = Owners(db, "ro-1-ffffff", blocked / "owners")
    await owners.start()
    assert "no owner lock file" in caplog.text
    assert (await _state(db))[1] == {owners.owner}
    await owners.stop()
