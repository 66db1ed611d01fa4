"""The database connection: engine set-up, migrations on start, and the group-commit writer.

SQLite allows one writer at a time, so every write in a process goes through one
``GroupCommitWriter``: concurrent requests queue their writes and share a transaction and its
commit (and its fsync). The same writer serves PostgreSQL, where sharing commits also pays.

On SQLite the writer runs each transaction in one go on a plain ``sqlite3`` connection in the
event loop's own thread, under a file lock shared by every process using the database file.
Going through the async driver instead costs a thread hand-off per statement, and each
hand-off waits for the busy event loop to come round while the transaction holds SQLite's
write lock: with an API process and delivery workers sharing a file, those waits, not the
work, set the pace. A group commit blocks the loop for its own length (rows plus one fsync,
typically well under a millisecond).

Storage faults (a full disk, I/O errors, a read-only database, a database that cannot be
reached) fail every write of a commit at once with ``StorageUnavailable``, which the API
answers with 503 and ``Retry-After``; the writer remembers the fault until a commit succeeds
again (``GroupCommitWriter.fault``, shown by ``/readyz``). Nothing else changes: a write that
failed was not stored, and its caller knows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Table, bindparam, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from msgpush.datadir import create_private, open_private, private_dir, tighten
from msgpush.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
WriteOp = Callable[[AsyncConnection], Awaitable[Any]]

MAX_OPS_PER_COMMIT = 512

# SQLite primary result codes (the low byte of an extended code): https://sqlite.org/rescode.html
_SQLITE_FAULTS = {13: "full", 10: "io", 8: "read_only", 14: "io"}  # FULL, IOERR, READONLY, CANTOPEN
_SQLITE_MESSAGES = (
    ("database or disk is full", "full"),
    ("disk i/o error", "io"),
    ("readonly database", "read_only"),
    ("unable to open database file", "io"),
)
_ERRNO_FAULTS = {
    errno.ENOSPC: "full",
    errno.EDQUOT: "full",
    errno.EIO: "io",
    errno.EROFS: "read_only",
}
# PostgreSQL SQLSTATEs: https://www.postgresql.org/docs/current/errcodes-appendix.html
_SQLSTATE_FAULTS = {"53100": "full", "25006": "read_only", "58030": "io", "57P03": "unreachable"}
_SQLSTATE_CLASS_FAULTS = {"08": "unreachable", "57": "unreachable"}  # connection, shutdown
_FAULT_REASONS = {
    "full": "the disk holding the database is full: free space; writes resume by themselves",
    "io": "the disk holding the database reports I/O errors: check the disk",
    "read_only": "the database is read-only: make it (and the data directory) writable",
    "unreachable": "the database cannot be reached: check that it is running",
}


class StorageUnavailable(Exception):
    """A write could not be stored for a reason outside the write itself (disk full, I/O error,
    read-only database, database unreachable): nothing of it was committed; trying again
    later may work. ``kind`` is one of full, io, read_only, unreachable."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.reason = f"{_FAULT_REASONS[kind]} ({detail})"
        super().__init__(self.reason)


def storage_fault(exc: BaseException) -> StorageUnavailable | None:
    """``exc`` (or what it wraps) as a ``StorageUnavailable``, or None for any other error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageUnavailable):
            return current
        found = _fault_of(current)
        if found is not None:
            return found
        wrapped = getattr(current, "orig", None)  # SQLAlchemy's DBAPIError
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__
    # nothing more precise: a lost or refused connection as SQLAlchemy reports it
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return StorageUnavailable("unreachable", "connection lost")
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return StorageUnavailable("unreachable", type(exc).__name__)
    return None


def _fault_of(exc: BaseException) -> StorageUnavailable | None:
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int):
            kind = _SQLITE_FAULTS.get(code & 0xFF)
        else:  # raised without a code (by a wrapper, or a test): SQLite's fixed messages
            kind = next((k for text, k in _SQLITE_MESSAGES if text in str(exc).lower()), None)
        return StorageUnavailable(kind, f"SQLite: {exc}") if kind else None
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):  # asyncpg's server errors
        kind = _SQLSTATE_FAULTS.get(sqlstate) or _SQLSTATE_CLASS_FAULTS.get(sqlstate[:2])
        return StorageUnavailable(kind, f"PostgreSQL {sqlstate}") if kind else None
    if isinstance(exc, OSError):
        kind = _ERRNO_FAULTS.get(exc.errno or 0)
        if kind is None and isinstance(exc, ConnectionError | TimeoutError):
            kind = "unreachable"
        return StorageUnavailable(kind, exc.strerror or type(exc).__name__) if kind else None
    return None


@dataclass
class Fault:
    """The storage fault the last commit failed with, and since when (``time.time()``)."""

    error: StorageUnavailable
    since: float


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # Takes effect only in a new, empty file: retention then hands freed pages back.
    cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before the API answers 202, power loss included.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(settings: Settings) -> AsyncEngine:
    url = settings.resolved_database_url()
    if url.startswith("sqlite"):
        private_dir(settings.data_dir)
        engine = create_async_engine(url, pool_size=4, max_overflow=4)
        database = engine.url.database
        if database and database != ":memory:":
            # created here, 0600, rather than by SQLite with the umask's mode: SQLite gives
            # the -wal and -shm files the mode of the database file
            create_private(private_dir(Path(database).parent) / Path(database).name)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def make_sqlite_blocking_engine(async_engine: AsyncEngine, *, writer: bool) -> Engine:
    """A blocking ``sqlite3`` engine on the same file, used from the event loop's thread.

    The writer's transactions begin with ``BEGIN IMMEDIATE``: the write lock is taken at the
    start, so a transaction that reads first never has to give up half-way for another
    writer. The reader's statements run in autocommit (WAL readers never wait for writers).
    """
    url = async_engine.url.set(drivername="sqlite+pysqlite")
    engine = create_engine(
        url,
        pool_size=1,
        max_overflow=0 if writer else 4,
        connect_args={"isolation_level": None},
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    if writer:

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


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


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Take the schema back to ``revision`` (``base`` removes every table msgpush made)."""

    def run(connection: Connection) -> None:
        command.downgrade(_alembic_config(connection), revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


def backup_sqlite(source: Path, target: Path) -> int:
    """An online, consistent copy of a SQLite database through SQLite's backup API (writers
    may go on meanwhile); the copy is readable by its owner only. Returns its size in bytes."""
    import sqlite3

    target.touch(mode=0o600, exist_ok=False)
    os.chmod(target, 0o600)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst, pages=1024)
    finally:
        dst.close()
        src.close()
    return target.stat().st_size


Handler = Callable[[AsyncConnection, list[Any]], Awaitable[list[Any]]]


async def _run_each(conn: AsyncConnection, ops: list[WriteOp]) -> list[Any]:
    return [await op(conn) for op in ops]


@dataclass
class _Pending:
    handler: Handler
    item: Any
    durable: bool
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class ProcessWriteLock:
    """An exclusive lock on a file beside the SQLite database, held by a writer for the length
    of one transaction: a kernel lock wakes the next process's writer the moment it is free,
    where SQLite's own busy handler would poll with growing sleeps."""

    def __init__(self, path: Path) -> None:
        self._fd = open_private(path)

    async def acquire(self) -> None:
        """Take the lock; while another process holds it, wait in a thread so that this
        process's event loop goes on sending meanwhile."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        waiting = asyncio.get_running_loop().run_in_executor(
            None, fcntl.flock, self._fd, fcntl.LOCK_EX
        )
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:  # the thread still gets the lock: give it back then
            waiting.add_done_callback(self._release_if_taken)
            raise

    def _release_if_taken(self, waiting: asyncio.Future[None]) -> None:
        if not waiting.cancelled() and waiting.exception() is None:
            self.release()

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


class _BlockingConnection:
    """The writer's handlers are written against ``AsyncConnection.execute``; on SQLite they
    get this instead, whose ``execute`` completes without ever suspending, so a whole group
    commit runs as one uninterrupted step of the event loop."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.dialect = connection.dialect

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self._connection.execute(statement, parameters)

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> Any:
        return self._connection.exec_driver_sql(statement, parameters)


class DriverStatement:
    """A hot-path statement compiled once per dialect to its SQL text and parameter order,
    then run with plain tuples through ``exec_driver_sql``.

    SQLAlchemy's per-call work (building the statement, its cache key, processing each row's
    parameters) cost about as much CPU as SQLite's own work on these small rows; the enqueue,
    claim and record statements run for every message, so they skip it. Values must be what
    the driver takes as they are (str, int, None), which is all these statements carry.
    """

    def __init__(self, statement: Any) -> None:
        self._statement = statement
        self._compiled: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {}

    def _for(self, conn: AsyncConnection) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        dialect = conn.dialect
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self._statement.compile(dialect=dialect)
            order = compiled.positiontup
            if order is None:  # pragma: no cover - both dialects bind by position
                raise RuntimeError(f"{dialect.name} does not bind parameters by position")
            fixed = {  # values written into the statement itself, like status="sending"
                key: value
                for key, value in compiled.params.items()
                if not compiled.binds[key].required
            }
            found = (str(compiled), tuple(order), fixed)
            self._compiled[dialect.name] = found
        return found

    async def run(self, conn: AsyncConnection, params: dict[str, Any]) -> Any:
        sql, order, fixed = self._for(conn)
        return await conn.exec_driver_sql(sql, tuple(_value(params, fixed, k) for k in order))

    async def run_many(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        sql, order, fixed = self._for(conn)
        values = [tuple(_value(row, fixed, k) for k in order) for row in rows]
        await conn.exec_driver_sql(sql, values)


class DriverInsert:
    """A ``DriverStatement`` INSERT of the columns the rows carry (every row of one call
    carries the same ones), compiled once per set of columns."""

    def __init__(self, table: Table) -> None:
        self._table = table
        self._statements: dict[tuple[str, ...], DriverStatement] = {}

    async def run_many(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        columns = tuple(rows[0])
        statement = self._statements.get(columns)
        if statement is None:
            values: dict[str, Any] = {name: bindparam(name) for name in columns}
            statement = self._statements[columns] = DriverStatement(
                self._table.insert().values(values)
            )
        await statement.run_many(conn, rows)


def _value(row: dict[str, Any], fixed: dict[str, Any], key: str) -> Any:
    return row[key] if key in row else fixed[key]


class GroupCommitWriter:
    """Runs queued writes, as many as are waiting, in one transaction per commit.

    Writes of the same kind (same handler) that wait together are handed to their handler as
    one list, so a burst of single-message requests becomes one multi-row insert. If a shared
    transaction fails, each write is re-run alone so that only the failing one sees the error;
    a write must therefore be safe to run again after a rollback.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        blocking: Engine | None = None,
        lock: ProcessWriteLock | None = None,
    ) -> None:
        self._engine = engine
        self._blocking = blocking
        self._lock = lock
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.writes = 0
        self.fault: Fault | None = (
            None  # set by a commit failing for storage, cleared by one working
        )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="msgpush-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def submit(self, handler: Handler, item: Any, *, durable: bool = True) -> Any:
        """Queue ``item`` for ``handler``; returns its result once the commit is done.

        ``durable=False`` lets the commit skip waiting for the disk when nothing else in it
        needs that (see ``Database.write``)."""
        if self._task is None:
            raise RuntimeError("the database writer is not running")
        pending = _Pending(handler, item, durable)
        self._queue.put_nowait(pending)
        return await pending.future

    async def write(
        self, op: Callable[[AsyncConnection], Awaitable[T]], *, durable: bool = True
    ) -> T:
        """Run ``op`` inside a (possibly shared) transaction; returns once it is committed."""
        result: T = await self.submit(_run_each, op, durable=durable)
        return result

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # One turn of the loop lets the callbacks already due add their writes to this
            # commit: under load several times fewer commits (and fsyncs), at no cost idle.
            await asyncio.sleep(0)
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
        durable = any(pending.durable for pending in batch)
        try:
            if self._blocking is not None:
                outcomes = await self._blocking_transaction(groups, durable)
            else:
                async with self._engine.begin() as conn:
                    if not durable:
                        await conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
                    outcomes = await _run_groups(conn, groups)
        except Exception as exc:
            fault = storage_fault(exc)
            if fault is not None:  # not the writes' fault: each alone would fail the same way
                self._failing(fault)
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(fault)
                return
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            for pending in batch:  # isolate the failing write
                await self._commit([pending])
            return
        self.commits += 1
        self.writes += len(batch)
        if self.fault is not None:
            log.warning(
                "storage works again after %.1f s; writes resume", time.time() - self.fault.since
            )
            self.fault = None
        for group, results in outcomes:
            for pending, result in zip(group, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)

    def _failing(self, error: StorageUnavailable) -> None:
        if self.fault is None:
            log.error("storage unavailable, writes are refused until it works again: %s", error)
            self.fault = Fault(error, time.time())
        else:
            self.fault.error = error

    async def _blocking_transaction(
        self, groups: dict[Handler, list[_Pending]], durable: bool
    ) -> _Outcomes:
        assert self._blocking is not None
        if self._lock is not None:
            await self._lock.acquire()
        try:
            with self._blocking.connect() as connection:
                # NORMAL in WAL mode: the commit is safe from a crash of any process, but not
                # written through to the disk until the next FULL commit (or checkpoint) is.
                sqlite = connection.connection.driver_connection  # outside SQLAlchemy's txn
                assert sqlite is not None
                sqlite.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                with connection.begin():
                    conn = cast(AsyncConnection, _BlockingConnection(connection))
                    return await _run_groups(conn, groups)
        finally:
            if self._lock is not None:
                self._lock.release()


_Outcomes = list[tuple[list[_Pending], list[Any]]]


async def _run_groups(conn: AsyncConnection, groups: dict[Handler, list[_Pending]]) -> _Outcomes:
    return [
        (group, await handler(conn, [p.item for p in group])) for handler, group in groups.items()
    ]


PROBE_EVERY_S = 1.0
# alembic's one-row table exists wherever msgpush has run its migrations, on either database
_PROBE = text("UPDATE alembic_version SET version_num = version_num")


async def _probe(conn: AsyncConnection) -> None:
    await conn.execute(_PROBE)


class Database:
    """The engine plus the writer: reads use pooled connections, writes go through the writer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings)
        self.dialect = self.engine.dialect.name
        blocking: Engine | None = None
        self._write_lock: ProcessWriteLock | None = None
        database = self.engine.url.database
        self._reader: Engine | None = None
        on_file = self.dialect == "sqlite" and bool(database) and database != ":memory:"
        tighten(settings.data_dir, Path(database) if on_file and database else None)
        if on_file and database:
            blocking = make_sqlite_blocking_engine(self.engine, writer=True)
            self._reader = make_sqlite_blocking_engine(self.engine, writer=False)
            self._write_lock = ProcessWriteLock(Path(f"{database}-writelock"))
        self._blocking = blocking
        self.writer = GroupCommitWriter(self.engine, blocking, self._write_lock)
        self._probed_at = -PROBE_EVERY_S

    async def start(self, *, run_migrations: bool = True) -> None:
        if run_migrations:
            await migrate(self.engine)
        self.writer.start()

    async def close(self) -> None:
        await self.writer.stop()
        await self.engine.dispose()
        for blocking in (self._blocking, self._reader):
            if blocking is not None:
                blocking.dispose()
        if self._write_lock is not None:
            self._write_lock.close()

    async def write(
        self, op: Callable[[AsyncConnection], Awaitable[T]], *, durable: bool = True
    ) -> T:
        """Run a write in the next group commit; returns once it is committed.

        Writes that only record the engine's own progress (claims, attempts, rate slots) pass
        ``durable=False``: their commit waits for no fsync when it carries nothing else. A
        process crash still loses none of them; a power cut may lose the last few, which
        then only makes a delivery be sent again (at least once, as a lease expiry does).
        Accepted messages and every change made through the API are always durable.
        """
        return await self.writer.write(op, durable=durable)

    async def submit(self, handler: Handler, item: Any, *, durable: bool = True) -> Any:
        return await self.writer.submit(handler, item, durable=durable)

    async def ready(self) -> StorageUnavailable | None:
        """None when writes can be stored now, else the storage fault that stops them.

        Besides the writer's own state, a probe write (one row rewritten as it is, through the
        writer: a real commit, fsync included) runs at most once per ``PROBE_EVERY_S``, so a
        fault shows (and its end) even while nothing else writes. Concurrent callers within
        that time share the last result."""
        now = time.monotonic()
        if now - self._probed_at >= PROBE_EVERY_S:
            self._probed_at = now
            with contextlib.suppress(StorageUnavailable):
                await self.write(_probe)
        fault = self.writer.fault
        return fault.error if fault is not None else None

    def read(self) -> Any:
        """``async with db.read() as conn``: a pooled connection for queries."""
        return self.engine.connect()

    @contextlib.asynccontextmanager
    async def read_now(self) -> AsyncIterator[AsyncConnection]:
        """A connection for the hot path's small reads by key (payloads to send, a channel,
        a token). On SQLite they run at once in this thread: no hand-off to a driver thread,
        and a cache refilled by one request is there for the next. Larger queries (history
        pages) use ``read``, which does not hold up the event loop."""
        if self._reader is None:
            async with self.engine.connect() as conn:
                yield conn
            return
        with self._reader.connect() as connection:
            yield cast(AsyncConnection, _BlockingConnection(connection))
