"""API tokens: created once and shown once, stored as SHA-256 hashes, roles admin and sender.

Every request is authenticated, so a token's row is cached in each process, for at most
``CACHE_TTL_S``: a token deleted through any process stops working in every other one within
that time (its own process forgets it at once). Cost per request: a dictionary look-up; one
indexed read by hash per token per process every half second under load.

``last_used_at`` is written at most once per ``TOUCH_INTERVAL_S`` per token per process, as a
non-durable write riding along the next group commit, so that requests add no writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal, get_args

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from msgpush.errors import ApiError, not_found
from msgpush.ids import iso, new_id, now_ms
from msgpush.storage.audit import SYSTEM, Actor, Change, record_change
from msgpush.storage.db import Database, DriverStatement
from msgpush.storage.schema import api_tokens

log = logging.getLogger(__name__)

Role = Literal["admin", "sender"]
ROLES: tuple[str, ...] = get_args(Role)
TOKEN_PREFIX = "mpk_"
CACHE_TTL_S = 0.5
TOUCH_INTERVAL_S = 60.0


@dataclass(frozen=True)
class TokenIdentity:
    """The token a request came with (never its value)."""

    id: str
    name: str
    role: str


_TOUCH = DriverStatement(
    update(api_tokens)
    .where(api_tokens.c.id == bindparam("token_id"))
    .values(last_used_at=bindparam("at"))
)


async def _touch_many(conn: AsyncConnection, uses: list[dict[str, Any]]) -> list[None]:
    """One statement for every token use waiting in this group commit."""
    await _TOUCH.run_many(conn, uses)
    return [None] * len(uses)


def hash_token(token: str) -> str:
    # Tokens are 256 random bits, so a plain fast hash is enough to make a stolen table useless.
    return hashlib.sha256(token.encode()).hexdigest()


def _view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "role": row.role,
        "prefix": row.prefix,
        "created_at": iso(row.created_at),
        "last_used_at": iso(row.last_used_at),
    }


class TokenStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: dict[str, tuple[float, TokenIdentity | None]] = {}
        self._touched: dict[str, float] = {}  # token id -> when this process last wrote its use
        self._touching: set[asyncio.Task[Any]] = set()

    async def create(
        self, name: str, role: str, token: str | None = None, *, actor: Actor = SYSTEM
    ) -> tuple[str, dict[str, Any]]:
        if role not in ROLES:
            raise ApiError(422, "invalid", f"role must be one of {', '.join(ROLES)}", "role")
        if not isinstance(name, str) or not name.strip() or len(name) > 128:
            raise ApiError(422, "invalid", "name is required (at most 128 characters)", "name")
        token = token or TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = {
            "id": new_id("tok"),
            "name": name.strip(),
            "role": role,
            "token_hash": hash_token(token),
            "prefix": token[:8],
            "created_at": now_ms(),
        }

        change = Change("create", "token", str(row["id"]), str(row["name"]), ("name", "role"))

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(api_tokens.insert().values(**row))
            await record_change(conn, actor, change)

        await self._db.write(op)
        async with self._db.read() as conn:
            stored = (
                await conn.execute(select(api_tokens).where(api_tokens.c.id == row["id"]))
            ).one()
        return token, _view(stored)

    async def identify(self, token: str) -> TokenIdentity | None:
        """The token's identity, or None for an unknown (or deleted) token."""
        digest = hash_token(token)
        entry = self._cache.get(digest)
        now = time.monotonic()
        if entry is None or now - entry[0] >= CACHE_TTL_S:
            async with self._db.read_now() as conn:
                row = (
                    await conn.execute(
                        select(api_tokens.c.id, api_tokens.c.name, api_tokens.c.role).where(
                            api_tokens.c.token_hash == digest
                        )
                    )
                ).first()
            if len(self._cache) > 10_000:
                self._cache.clear()
            now = time.monotonic()
            entry = (now, TokenIdentity(row.id, row.name, row.role) if row is not None else None)
            self._cache[digest] = entry
        identity = entry[1]
        if identity is not None and now - self._touched.get(identity.id, -TOUCH_INTERVAL_S) >= (
            TOUCH_INTERVAL_S
        ):
            self._touched[identity.id] = now
            task = asyncio.create_task(self._touch(identity.id, now_ms()))
            self._touching.add(task)
            task.add_done_callback(self._touching.discard)
        return identity

    async def role_of(self, token: str) -> str | None:
        identity = await self.identify(token)
        return identity.role if identity is not None else None

    async def _touch(self, token_id: str, at: int) -> None:
        try:
            await self._db.submit(_touch_many, {"token_id": token_id, "at": at}, durable=False)
        except Exception as exc:  # only bookkeeping: the request it came with stands
            log.warning("could not record the use of token %s: %s", token_id, exc)

    async def list(self) -> dict[str, Any]:
        async with self._db.read() as conn:
            rows = await conn.execute(select(api_tokens).order_by(api_tokens.c.created_at))
            return {"items": [_view(row) for row in rows], "next_cursor": None}

    async def delete(self, token_id: str, *, actor: Actor = SYSTEM) -> None:
        async def op(conn: AsyncConnection) -> str:
            found = (
                await conn.execute(
                    select(api_tokens.c.name, api_tokens.c.role).where(api_tokens.c.id == token_id)
                )
            ).first()
            if found is None:
                return "missing"
            if found.role == "admin":
                admins = (
                    await conn.execute(
                        select(func.count())
                        .select_from(api_tokens)
                        .where(api_tokens.c.role == "admin")
                    )
                ).scalar_one()
                if admins <= 1:
                    return "last_admin"
            await conn.execute(delete(api_tokens).where(api_tokens.c.id == token_id))
            await record_change(conn, actor, Change("delete", "token", token_id, found.name))
            return "deleted"

        result = await self._db.write(op)
        if result == "missing":
            raise not_found("token", token_id)
        if result == "last_admin":
            raise ApiError(
                409,
                "conflict",
                "this is the last admin token; create another admin token before deleting it",
            )
        self._cache.clear()

    async def count(self) -> int:
        async with self._db.read() as conn:
            return int(
                (await conn.execute(select(func.count()).select_from(api_tokens))).scalar_one()
            )

    async def flush(self) -> None:
        """Let the pending writes of ``last_used_at`` finish (before the writer stops)."""
        if self._touching:
            await asyncio.wait(set(self._touching), timeout=5)
