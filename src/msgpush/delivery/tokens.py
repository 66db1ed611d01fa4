"""Vendor access tokens: fetched once, cached in the database (shared by every worker process)
until shortly before they expire, refreshed by one caller while the others wait, and dropped
when the vendor says a token is invalid or expired."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO

from sqlalchemy import delete, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from msgpush.channels.base import FetchedToken, token_key
from msgpush.datadir import open_private
from msgpush.ids import now_ms
from msgpush.metrics import TOKEN_FETCHES
from msgpush.secretbox import SecretBox
from msgpush.storage.db import Database
from msgpush.storage.schema import vendor_tokens

# Refresh this long before the vendor's expiry, so no request carries a token that dies in
# flight (WeCom and DingTalk issue 7200 s tokens; Feishu's official SDK keeps a 600 s margin).
REFRESH_MARGIN_MS = 600_000

__all__ = ["REFRESH_MARGIN_MS", "TokenCache", "token_key"]  # token_key re-exported


def _locked(path: Path) -> IO[bytes]:
    handle = os.fdopen(open_private(path, os.O_WRONLY | os.O_APPEND), "ab")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


class TokenCache:
    def __init__(self, db: Database, box: SecretBox) -> None:
        self._db = db
        self._box = box
        self._memory: dict[str, tuple[str, int]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0

    def _fresh(self, key: str) -> str | None:
        entry = self._memory.get(key)
        if entry is not None and entry[1] - REFRESH_MARGIN_MS > now_ms():
            return entry[0]
        return None

    async def get(self, key: str, fetch: Callable[[], Awaitable[FetchedToken]]) -> str:
        """The cached token for ``key``, or a new one from ``fetch`` (one caller fetches)."""
        token = self._fresh(key)
        if token is not None:
            return token
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            token = self._fresh(key) or await self._from_database(key)
            if token is not None:
                return token
            if self._db.dialect == "postgresql":
                return await self._fetch_across_processes(key, fetch)
            return await self._fetch_under_file_lock(key, fetch)

    async def _from_database(self, key: str) -> str | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(vendor_tokens.c.token, vendor_tokens.c.expires_at).where(
                        vendor_tokens.c.key == key
                    )
                )
            ).first()
        if row is None or row.expires_at - REFRESH_MARGIN_MS <= now_ms():
            return None
        token = str(self._box.open(row.token)["token"])
        self._memory[key] = (token, int(row.expires_at))
        return token

    async def _fetch_across_processes(
        self, key: str, fetch: Callable[[], Awaitable[FetchedToken]]
    ) -> str:
        """On PostgreSQL several processes share the cache: an advisory lock makes one fetch."""
        lock_id = int(key[:15], 16)
        async with self._db.engine.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
            try:
                token = await self._from_database(key)
                return token if token is not None else await self._fetch(key, fetch)
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})

    async def _fetch_under_file_lock(
        self, key: str, fetch: Callable[[], Awaitable[FetchedToken]]
    ) -> str:
        """On SQLite the processes share a host: a lock file makes one of them fetch."""
        path = self._db.settings.data_dir / "token-fetch.lock"
        handle = await asyncio.to_thread(_locked, path)
        try:
            token = await self._from_database(key)
            return token if token is not None else await self._fetch(key, fetch)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    async def _fetch(self, key: str, fetch: Callable[[], Awaitable[FetchedToken]]) -> str:
        fetched = await fetch()
        self.fetches += 1
        TOKEN_FETCHES.inc()
        now = now_ms()
        expires_at = now + int(fetched.expires_in_s * 1000)
        sealed = self._box.seal({"token": fetched.token})

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(delete(vendor_tokens).where(vendor_tokens.c.key == key))
            await conn.execute(
                insert(vendor_tokens).values(
                    key=key, token=sealed, expires_at=expires_at, fetched_at=now
                )
            )

        await self._db.write(op)
        self._memory[key] = (fetched.token, expires_at)
        return fetched.token

    async def invalidate(self, key: str, token: str) -> None:
        """The vendor refused ``token``: forget it (unless another caller already replaced it)."""
        entry = self._memory.get(key)
        if entry is not None and entry[0] != token:
            return  # already refreshed
        self._memory.pop(key, None)

        async def op(conn: AsyncConnection) -> None:
            row = (
                await conn.execute(select(vendor_tokens.c.token).where(vendor_tokens.c.key == key))
            ).first()
            if row is not None and self._box.open(row.token).get("token") == token:
                await conn.execute(delete(vendor_tokens).where(vendor_tokens.c.key == key))

        await self._db.write(op)
