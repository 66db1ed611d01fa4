"""Per-channel rate windows, kept in the database so every worker process shares them.

A send books its time in its channel's log (a sliding log of send times, shared by every
process and node): the earliest moment at which each of the channel's windows still has room.
A moment a little ahead is booked and waited for in memory; a later one makes the delivery wait,
durably, and ask again then. No delivery is dropped and no vendor rate-limit error is drawn.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from msgpush.channels.base import RateLimit
from msgpush.ids import now_ms
from msgpush.storage.db import Database
from msgpush.storage.schema import channels, rate_events

LONGEST_WINDOW_MS = 3_600_000


def safety_margin_ms(window_ms: int) -> int:
    """Windows are kept slightly longer than the vendor's, so that jitter in when requests
    arrive there never makes a full window look over-full to the vendor's own counter."""
    return max(100, window_ms // 50)


@dataclass(frozen=True)
class Slot:
    """A place in a channel's rate windows: ``wait_ms`` from now. ``reserved``: the place is
    booked in the database, so send at that moment; else it is only when to ask again."""

    wait_ms: int
    reserved: bool


FREE = Slot(0, True)


class RateLimiter:
    def __init__(self, db: Database, window_scale: float = 1.0) -> None:
        self._db = db
        self._scale = window_scale

    async def acquire(self, channel_id: str, limit: RateLimit, *, hold_ms: int = 0) -> Slot:
        """Book the earliest send time that keeps every window of ``limit`` within its count.

        Every process books in the one log, in time order per channel (the channel's row lock
        on PostgreSQL, the single writer on SQLite), so no stretch of a window's length ever
        holds more booked sends than the limit, across processes and nodes. A time up to
        ``hold_ms`` away is booked and the caller waits for it; a later one is not booked, and
        the caller puts the delivery back until then.
        """
        windows = limit.windows()
        if not windows:
            return FREE

        async def op(conn: AsyncConnection) -> Slot:
            now = now_ms()
            if self._db.dialect == "postgresql":  # serialise slot-taking per channel
                await conn.execute(
                    select(channels.c.id).where(channels.c.id == channel_id).with_for_update()
                )
            longest_ms = max(self._padded(full_ms) for full_ms, _ in windows)
            booked = [
                at
                for (at,) in await conn.execute(
                    select(rate_events.c.at_ms)
                    .where(
                        rate_events.c.channel_id == channel_id,
                        rate_events.c.at_ms > now - longest_ms,
                    )
                    .order_by(rate_events.c.at_ms)
                )
            ]
            at = max(now, booked[-1]) if booked else now
            for full_ms, most in windows:
                window_ms = self._padded(full_ms)
                inside = [b for b in booked if b > now - window_ms]
                if len(inside) >= most:
                    # the booked send that must leave the window before one more fits
                    at = max(at, inside[len(inside) - most] + window_ms + 1)
            if at - now > hold_ms:
                return Slot(at - now, False)
            await conn.execute(insert(rate_events).values(channel_id=channel_id, at_ms=at))
            return Slot(at - now, True)

        slot: Slot = await self._db.write(op, durable=False)
        return slot

    def _padded(self, full_window_ms: int) -> int:
        vendor_window_ms = int(full_window_ms * self._scale)
        return vendor_window_ms + safety_margin_ms(vendor_window_ms)

    async def forget_old(self) -> None:
        cutoff = now_ms() - LONGEST_WINDOW_MS - 60_000

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(delete(rate_events).where(rate_events.c.at_ms < cutoff))

        await self._db.write(op)


class LocalPacer:
    """Spaces this process's sends to a channel by when they actually leave.

    The database log stamps a slot when it is granted, which can be a commit's latency before
    the request goes out; two groups of sends granted a window apart can then leave closer than
    a window apart. The pacer keeps the real departure times and holds a send until its window
    has room, so the vendor, counting arrivals, never sees more than the limit.
    """

    def __init__(self, window_scale: float = 1.0) -> None:
        self._scale = window_scale
        self._sent: dict[str, deque[float]] = defaultdict(deque)
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def wait_turn(self, channel_id: str, limit: RateLimit) -> float | None:
        """Wait until a send fits; returns its stamp, to hand to ``sent`` once it is done."""
        windows = [
            (full_ms * self._scale / 1000 * 1.05 + 0.02, most) for full_ms, most in limit.windows()
        ]
        if not windows:
            return None
        longest = max(length for length, _ in windows)
        async with self._locks[channel_id]:
            sent = self._sent[channel_id]
            while True:
                now = time.monotonic()
                while sent and min(sent) <= now - longest:
                    sent.remove(min(sent))
                wait = 0.0
                for length, most in windows:
                    inside = sorted(at for at in sent if at > now - length)
                    if len(inside) >= most:
                        wait = max(wait, inside[len(inside) - most] + length - now)
                if wait <= 0:
                    sent.append(now)
                    return now
                await asyncio.sleep(wait)

    def sent(self, channel_id: str, stamp: float | None) -> None:
        """The attempt is over: its requests left at the latest now (a token fetch or a slow
        connect may have delayed them), so its place in the window moves to now."""
        if stamp is None:
            return
        log = self._sent.get(channel_id)
        if log is not None:
            try:
                log.remove(stamp)
            except ValueError:
                return
            log.append(time.monotonic())
