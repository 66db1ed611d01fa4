"""Per-channel rate windows, kept in the database so every worker process shares them.

A send takes a slot in each of its channel's windows (a sliding log of send times); when a
window is full the delivery waits, durably, until the oldest send in it leaves the window. No
delivery is dropped and no vendor rate-limit error is drawn.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque

from sqlalchemy import delete, func, insert, select
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


class RateLimiter:
    def __init__(self, db: Database, window_scale: float = 1.0) -> None:
        self._db = db
        self._scale = window_scale

    async def acquire(self, channel_id: str, limit: RateLimit) -> int:
        """Take a send slot now; returns 0, or the milliseconds to wait before trying again."""
        windows = limit.windows()
        if not windows:
            return 0

        async def op(conn: AsyncConnection) -> int:
            now = now_ms()
            if self._db.dialect == "postgresql":  # serialise slot-taking per channel
                await conn.execute(
                    select(channels.c.id).where(channels.c.id == channel_id).with_for_update()
                )
            wait = 0
            for full_window_ms, most in windows:
                vendor_window_ms = int(full_window_ms * self._scale)
                window_ms = vendor_window_ms + safety_margin_ms(vendor_window_ms)
                since = now - window_ms
                in_window = (rate_events.c.channel_id == channel_id) & (rate_events.c.at_ms > since)
                count = (
                    await conn.execute(
                        select(func.count()).select_from(rate_events).where(in_window)
                    )
                ).scalar_one()
                if count >= most:
                    # the send that must leave the window before one more fits
                    oldest = (
                        await conn.execute(
                            select(rate_events.c.at_ms)
                            .where(in_window)
                            .order_by(rate_events.c.at_ms)
                            .offset(count - most)
                            .limit(1)
                        )
                    ).scalar_one()
                    wait = max(wait, oldest + window_ms - now + 1)
            if wait == 0:
                await conn.execute(insert(rate_events).values(channel_id=channel_id, at_ms=now))
            return wait

        waited: int = await self._db.write(op, durable=False)
        return waited

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
