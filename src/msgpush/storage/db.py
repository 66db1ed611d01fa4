"""The database connection: engine set-up, migrations on start, and the group-commit writer.

SQLite allows one writer at a time, so every write in a process goes through one
``GroupCommitWriter``: concurrent requests queue their writes and share a transaction and its
commit (and its fsync). The same writer serves PostgreSQL, where sharing commits also pays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from msgpush.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
WriteOp = Callable[[AsyncConnection], Awaitable[Any]]

MAX_OPS_PER_COMMIT = 512


def make_engine(settings: Settings) -> AsyncEngine:
    url = settings.resolved_database_url()
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, pool_size=4, max_overflow=4)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the API answers 202, power loss included.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("msgpush.storage") / "migrations"))
    config.attributes["connection"] = connection
    return config


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (idempotent; safe from several processes)."""

    def upgrade(connection: Connection) -> None:
        command.upgrade(_alembic_config(connection), "head")

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)


Handler = Callable[[AsyncConnection, list[Any]], Awaitable[list[Any]]]


async def _run_each(conn: AsyncConnection, ops: list[WriteOp]) -> list[Any]:
    return [await op(conn) for op in ops]


@dataclass
class _Pending:
    handler: Handler
    item: Any
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommitWriter:
    """Runs queued writes, as many as are waiting, in one transaction per commit.

    Writes of the same kind (same handler) that wait together are handed to their handler as
    one list, so a burst of single-message requests becomes one multi-row insert. If a shared
    transaction fails, each write is re-run alone so that only the failing one sees the error;
    a write must therefore be safe to run again after a rollback.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.writes = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="msgpush-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def submit(self, handler: Handler, item: Any) -> Any:
        """Queue ``item`` for ``handler``; returns its result once the commit is done."""
        if self._task is None:
            raise RuntimeError("the database writer is not running")
        pending = _Pending(handler, item)
        self._queue.put_nowait(pending)
        return await pending.future

    async def write(self, op: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``op`` inside a (possibly shared) transaction; returns once it is committed."""
        result: T = await self.submit(_run_each, op)
        return result

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_OPS_PER_COMMIT and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            except asyncio.CancelledError:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(RuntimeError("the writer is shutting down"))
                raise
            except Exception:  # pragma: no cover - _commit settles every future itself
                log.exception("group commit failed")

    async def _commit(self, batch: list[_Pending]) -> None:
        groups: dict[Handler, list[_Pending]] = {}
        for pending in batch:
            groups.setdefault(pending.handler, []).append(pending)
        try:
            async with self._engine.begin() as conn:
                outcomes = [
                    (group, await handler(conn, [p.item for p in group]))
                    for handler, group in groups.items()
                ]
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            for pending in batch:  # isolate the failing write
                await self._commit([pending])
            return
        self.commits += 1
        self.writes += len(batch)
        for group, results in outcomes:
            for pending, result in zip(group, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)


class Database:
    """The engine plus the writer: reads use pooled connections, writes go through the writer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings)
        self.dialect = self.engine.dialect.name
        self.writer = GroupCommitWriter(self.engine)

    async def start(self, *, run_migrations: bool = True) -> None:
        if run_migrations:
            await migrate(self.engine)
        self.writer.start()

    async def close(self) -> None:
        await self.writer.stop()
        await self.engine.dispose()

    async def write(self, op: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        return await self.writer.write(op)

    async def submit(self, handler: Handler, item: Any) -> Any:
        return await self.writer.submit(handler, item)

    def read(self) -> Any:
        """``async with db.read() as conn``: a pooled connection for queries."""
        return self.engine.connect()
