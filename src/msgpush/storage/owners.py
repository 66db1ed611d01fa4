"""Who holds claims, and whether they still live: heartbeats and owner locks.

Every process that claims deliveries (``serve``, the worker processes it starts, ``msgpush
worker``) claims them under its owner id (``deliveries.lease_owner``), and while it lives:

- keeps a row in ``process_owners`` whose ``heartbeat_at`` it renews every
  ``HEARTBEAT_EVERY_S`` (one tiny, non-durable write through the group-commit writer);
- holds an exclusive lock on a file named after it in the owner-lock directory. The kernel
  drops the lock when the process ends, ``kill -9`` included.

On start and at each heartbeat a process also releases the claims of owners that are gone, as
attempts with outcome ``interrupted`` (``storage/queue.py``), and removes their rows:

- an owner whose lock file it can lock is dead for certain (a process on this host using this
  directory): at once, so a restarted ``serve`` on SQLite resends what the killed one left
  mid-send before it claims anything else;
- an owner whose heartbeat is older than ``DEAD_AFTER_S`` is taken for dead: the rule across
  hosts (several PostgreSQL nodes). On PostgreSQL heartbeats are stamped and compared with
  the database's clock, so clocks that differ between nodes do not matter. An owner whose
  lock file is held here lives, whatever its heartbeat says; and a process judges others'
  heartbeats only once its own have been written without a break for ``DEAD_AFTER_S``, so
  that after a spell when nobody could write (database down, disk full) nobody is taken for
  dead before it had the time to beat again.

The lease (``MSGPUSH_LEASE_S``) stays as the last resort, for claims of an owner that keeps no
row (a process of an older version). A live process taken for dead (its loop stalled longer
than ``DEAD_AFTER_S``) finds its row gone at its next heartbeat, says so in the log and
registers again; what it was sending may then be sent twice, as after a lease expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import BigInteger, cast, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from msgpush.datadir import open_private, private_dir
from msgpush.ids import now_ms
from msgpush.settings import Settings
from msgpush.storage.db import Database
from msgpush.storage.queue import release_interrupted
from msgpush.storage.schema import deliveries, process_owners

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 2.0
# Three missed heartbeats: released at most DEAD_AFTER_S + HEARTBEAT_EVERY_S after a death.
DEAD_AFTER_S = 6.0
LOCK_SUFFIX = ".lock"


def owner_lock_dir(settings: Settings) -> Path:
    """Where each process keeps its owner lock file (runtime state, not data: the one place to
    change if runtime files move out of the data directory)."""
    return settings.data_dir / "owners"


@dataclass
class _DeadOwner:
    """An owner whose lock file this process could lock: it is gone."""

    owner: str
    path: Path
    fd: int

    def forget(self) -> None:
        """Its claims are released: remove the file (this process still holds its lock)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)


@dataclass(frozen=True)
class Sweep:
    """What one heartbeat found: the owners taken for gone and how many claims they held."""

    gone: frozenset[str]
    released: int


class Owners:
    """This process's heartbeat and owner lock, and the release of claims of owners gone.

    ``on_released`` is called with the number of claims released, so the engines that send
    them look at once rather than at their next poll."""

    def __init__(
        self,
        db: Database,
        owner: str,
        lock_dir: Path | None,
        on_released: Callable[[int], None] | None = None,
    ) -> None:
        self._db = db
        self.owner = owner
        self._lock_dir = lock_dir
        self._on_released = on_released or (lambda _count: None)
        self._lock_fd: int | None = None
        self._lock_path: Path | None = None
        self._registered = False
        self._beating_since: float | None = None  # monotonic; None: the last beat failed
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Sweep:
        """Take this owner's lock, register its heartbeat and release what owners that are
        gone left claimed (before this process claims anything)."""
        self._take_own_lock()
        try:
            sweep = await self.beat()
        except Exception:  # the database cannot be written now: the heartbeat loop retries
            log.exception("first heartbeat failed; trying again in %g s", HEARTBEAT_EVERY_S)
            sweep = Sweep(frozenset(), 0)
        self._task = asyncio.create_task(self._run(), name="msgpush-heartbeat")
        return sweep

    async def stop(self) -> None:
        """After the engine gave back its claims: this owner leaves without a trace."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self._db.write(self._unregister, durable=False)
        except Exception:  # its row is removed by another process's heartbeat instead
            log.warning("could not remove this process's heartbeat row on shutdown")
        if self._lock_fd is not None:
            if self._lock_path is not None:
                with contextlib.suppress(OSError):
                    self._lock_path.unlink()
            os.close(self._lock_fd)
            self._lock_fd = self._lock_path = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY_S)
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("heartbeat failed; trying again in %g s", HEARTBEAT_EVERY_S)

    async def beat(self) -> Sweep:
        """Renew this owner's heartbeat; release the claims of owners that are gone."""
        dead_here, alive_here = self._look_at_locks()
        since = self._beating_since
        judge = since is not None and time.monotonic() - since >= DEAD_AFTER_S
        try:
            sweep: Sweep = await self._db.write(
                functools.partial(
                    self._beat, {d.owner for d in dead_here}, alive_here if judge else None
                ),
                durable=False,
            )
        except BaseException:
            self._beating_since = None
            for dead in dead_here:  # let go: the next heartbeat (here or elsewhere) tries again
                os.close(dead.fd)
            raise
        if self._beating_since is None:
            self._beating_since = time.monotonic()
        for dead in dead_here:
            dead.forget()
        if sweep.released:
            log.warning(
                "%d deliveries were left mid-send by %s, which stopped; resending them",
                sweep.released,
                ", ".join(sorted(sweep.gone)),
            )
            self._on_released(sweep.released)
        return sweep

    # -- the transaction ---------------------------------------------------------------------

    async def _beat(
        self, dead_here: set[str], alive_here: set[str] | None, conn: AsyncConnection
    ) -> Sweep:
        """Renew; release the owners found dead by their lock and, when ``alive_here`` is
        given (this process may judge heartbeats), those with a stale heartbeat but no lock
        held on this host."""
        now = await _database_now(conn)
        renewed = await conn.execute(
            update(process_owners)
            .where(process_owners.c.owner == self.owner)
            .values(heartbeat_at=now)
        )
        if renewed.rowcount == 0:
            if self._registered:
                log.warning(
                    "this process (%s) was taken for stopped: no heartbeat for %g s (was it "
                    "stalled?); its claims were released and may be sent twice",
                    self.owner,
                    DEAD_AFTER_S,
                )
            await conn.execute(
                insert(process_owners).values(
                    owner=self.owner,
                    host=socket.gethostname()[:255],
                    pid=os.getpid(),
                    started_at=now,
                    heartbeat_at=now,
                )
            )
        self._registered = True
        stale: set[str] = set()
        if alive_here is not None:
            stale = set(
                (
                    await conn.execute(
                        select(process_owners.c.owner)
                        .where(
                            process_owners.c.heartbeat_at < now - int(DEAD_AFTER_S * 1000),
                            process_owners.c.owner != self.owner,
                        )
                        .with_for_update(skip_locked=True)
                    )
                ).scalars()
            )
            stale -= alive_here
        gone = frozenset({*dead_here, *stale} - {self.owner})
        if not gone:
            return Sweep(gone, 0)
        released = await release_interrupted(conn, deliveries.c.lease_owner.in_(gone), now_ms())
        await conn.execute(delete(process_owners).where(process_owners.c.owner.in_(gone)))
        return Sweep(gone, released)

    async def _unregister(self, conn: AsyncConnection) -> None:
        await conn.execute(delete(process_owners).where(process_owners.c.owner == self.owner))

    # -- owner lock files --------------------------------------------------------------------

    def _take_own_lock(self) -> None:
        """Lock a new file, then give it its name: another process never finds it unlocked."""
        if self._lock_dir is None:
            return
        try:
            directory = private_dir(self._lock_dir)
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", self.owner)
            pending = directory / f".{name}.new"
            fd = open_private(pending)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.write(fd, self.owner.encode())
                final = directory / f"{name}{LOCK_SUFFIX}"
                os.rename(pending, final)
            except BaseException:
                os.close(fd)
                raise
        except OSError as error:  # the heartbeat still tells when this process is gone
            log.warning(
                "no owner lock file in %s (%s): a crash here is found by its heartbeat alone",
                self._lock_dir,
                error.strerror or error,
            )
            return
        self._lock_fd, self._lock_path = fd, final

    def _look_at_locks(self) -> tuple[list[_DeadOwner], set[str]]:
        """Owners whose lock file nobody holds (their process has ended), and the names of
        those whose lock is held (they live)."""
        dead: list[_DeadOwner] = []
        alive: set[str] = set()
        if self._lock_dir is None:
            return dead, alive
        try:
            paths = [p for p in self._lock_dir.iterdir() if p.name.endswith(LOCK_SUFFIX)]
        except OSError:
            return dead, alive
        for path in paths:
            if path == self._lock_path:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:  # removed meanwhile by the process that found it
                continue
            try:
                owner = os.read(fd, 256).decode(errors="replace").strip()
            except OSError:
                os.close(fd)
                continue
            owner = owner or path.name.removesuffix(LOCK_SUFFIX)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: that process lives
                os.close(fd)
                alive.add(owner)
                continue
            dead.append(_DeadOwner(owner, path, fd))
        return dead, alive


async def _database_now(conn: AsyncConnection) -> int:
    """Milliseconds since the epoch by the database's clock on PostgreSQL (one clock for every
    node); by this host's on SQLite, which only processes of one host share."""
    if conn.dialect.name != "postgresql":
        return now_ms()
    epoch_ms = cast(func.extract("epoch", func.clock_timestamp()) * 1000, BigInteger)
    value = (await conn.execute(select(epoch_ms))).scalar_one()
    return int(value)
