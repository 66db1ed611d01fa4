"""The access-token cache: one fetch per lifetime, shared through the database, single flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from msgpush.channels.base import FetchedToken, Outcome, TokenFetchFailed
from msgpush.delivery.tokens import REFRESH_MARGIN_MS, TokenCache, token_key
from msgpush.secretbox import SecretBox
from msgpush.settings import Settings
from msgpush.storage.db import Database
from tests.server import create_pg_database, drop_pg_database


@pytest.fixture
async def database(backend: str, tmp_path: Path) -> AsyncIterator[Database]:
    url = await asyncio.to_thread(create_pg_database) if backend == "postgresql" else None
    db = Database(Settings(data_dir=tmp_path, database_url=url))
    await db.start()
    yield db
    await db.close()
    if url:
        await asyncio.to_thread(drop_pg_database, url)


class Vendor:
    def __init__(self, lifetime_s: float = 7200) -> None:
        self.issued = 0
        self.lifetime_s = lifetime_s

    async def fetch(self) -> FetchedToken:
        await asyncio.sleep(0.05)  # a network round trip, during which others must wait
        self.issued += 1
        return FetchedToken(f"token-{self.issued}", self.lifetime_s)


BOX = SecretBox(Fernet.generate_key())
KEY = token_key("wecom_app", "https://qyapi.weixin.qq.com", "corp", "secret")


async def test_hundred_concurrent_callers_one_fetch(database: Database) -> None:
    cache, vendor = TokenCache(database, BOX), Vendor()
    tokens = await asyncio.gather(*(cache.get(KEY, vendor.fetch) for _ in range(100)))
    assert set(tokens) == {"token-1"} and vendor.issued == 1
    assert await cache.get(KEY, vendor.fetch) == "token-1" and vendor.issued == 1


async def test_other_processes_share_the_database_copy(database: Database) -> None:
    vendor = Vendor()
    first, second = TokenCache(database, BOX), TokenCache(database, BOX)
    results = await asyncio.gather(
        *(cache.get(KEY, vendor.fetch) for cache in (first, second) for _ in range(20))
    )
    # an advisory lock (PostgreSQL) or a lock file (SQLite) makes the processes take turns
    assert set(results) == {"token-1"} and vendor.issued == 1
    assert await TokenCache(database, BOX).get(KEY, vendor.fetch) == "token-1"


async def test_invalidated_token_is_refreshed_exactly_once(database: Database) -> None:
    cache, vendor = TokenCache(database, BOX), Vendor()
    stale = await cache.get(KEY, vendor.fetch)

    async def refused_then_retry() -> str:
        await cache.invalidate(KEY, stale)
        return await cache.get(KEY, vendor.fetch)

    results = await asyncio.gather(*(refused_then_retry() for _ in range(30)))
    assert set(results) == {"token-2"} and vendor.issued == 2


async def test_token_near_expiry_is_renewed_and_stored_encrypted(database: Database) -> None:
    cache = TokenCache(database, BOX)
    vendor = Vendor(lifetime_s=REFRESH_MARGIN_MS / 1000 + 0.3)
    assert await cache.get(KEY, vendor.fetch) == "token-1"
    await asyncio.sleep(0.4)
    assert await cache.get(KEY, vendor.fetch) == "token-2"
    async with database.read() as conn:
        from sqlalchemy import select

        from msgpush.storage.schema import vendor_tokens

        stored = (await conn.execute(select(vendor_tokens.c.token))).scalars().all()
    assert stored and all("token-" not in value for value in stored)


async def test_failed_fetch_is_not_cached(database: Database) -> None:
    cache = TokenCache(database, BOX)

    async def refuse() -> FetchedToken:
        raise TokenFetchFailed(Outcome.failed("invalid corpid"))

    with pytest.raises(TokenFetchFailed):
        await cache.get(KEY, refuse)
    assert await cache.get(KEY, Vendor().fetch) == "token-1"
