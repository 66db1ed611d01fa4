"""Migrations create exactly the tables the code uses, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from msgpush.settings import Settings
from msgpush.storage.db import ProcessWriteLock, _alembic_config, make_engine, migrate
from msgpush.storage.schema import metadata
from tests.server import create_pg_database, drop_pg_database


def _diff_after_migrating(settings: Settings) -> list[object]:
    async def run() -> list[object]:
        engine = make_engine(settings)
        try:
            await migrate(engine)
            await migrate(engine)  # a second run is a no-op
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
                )
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_migrations_match_schema(backend: str, tmp_path: Path) -> None:
    if backend == "postgresql":
        url = create_pg_database()
        try:
            assert _diff_after_migrating(Settings(data_dir=tmp_path, database_url=url)) == []
        finally:
            drop_pg_database(url)
    else:
        assert _diff_after_migrating(Settings(data_dir=tmp_path)) == []


def _tables_after_downgrading(settings: Settings, revision: str) -> tuple[set[str], set[str]]:
    """The tables after a downgrade to ``revision``, and after upgrading back to the head."""

    def tables(sync: Any) -> set[str]:
        return set(inspect(sync).get_table_names())

    async def run() -> tuple[set[str], set[str]]:
        engine = make_engine(settings)
        try:
            await migrate(engine)
            async with engine.begin() as conn:
                await conn.run_sync(lambda sync: command.downgrade(_alembic_config(sync), revision))
                down = await conn.run_sync(tables)
            await migrate(engine)
            async with engine.connect() as conn:
                return down, await conn.run_sync(tables)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_the_audit_log_migration_downgrades(backend: str, tmp_path: Path) -> None:
    url = create_pg_database() if backend == "postgresql" else None
    try:
        down, up = _tables_after_downgrading(Settings(data_dir=tmp_path, database_url=url), "0003")
    finally:
        if url:
            drop_pg_database(url)
    assert "audit_log" not in down and "rules" in down
    assert "audit_log" in up


async def test_the_write_lock_waits_without_stopping_the_event_loop(tmp_path: Path) -> None:
    """Another process's transaction holds the lock (here: another open file description of
    the same lock file); waiting for it must leave the event loop free to do other work."""
    path = tmp_path / "db-writelock"
    holder, waiter, third = (ProcessWriteLock(path) for _ in range(3))
    try:
        await holder.acquire()
        waiting = asyncio.create_task(waiter.acquire())
        ticks = 0
        for _ in range(20):  # the loop keeps running while the waiter waits
            await asyncio.sleep(0.005)
            ticks += 1
        assert ticks == 20 and not waiting.done()
        holder.release()
        await asyncio.wait_for(waiting, 5)
        waiter.release()
    finally:
        for lock in (holder, waiter, third):
            lock.close()


async def test_a_cancelled_wait_gives_the_lock_back_once_it_gets_it(tmp_path: Path) -> None:
    """Cancelling a waiter (shutdown) cannot stop its thread: when that thread gets the lock
    later, it must be released, or every other process would wait for ever."""
    path = tmp_path / "db-writelock"
    holder, waiter, third = (ProcessWriteLock(path) for _ in range(3))
    try:
        await holder.acquire()
        waiting = asyncio.create_task(waiter.acquire())
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        holder.release()
        await asyncio.wait_for(third.acquire(), 5)  # free again once the thread let go
        third.release()
    finally:
        for lock in (holder, waiter, third):
            lock.close()
