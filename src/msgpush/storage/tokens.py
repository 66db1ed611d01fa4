"""API tokens: created once and shown once, stored as SHA-256 hashes, roles admin and sender."""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any, Literal, get_args

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from msgpush.errors import ApiError, not_found
from msgpush.ids import iso, new_id, now_ms
from msgpush.storage.db import Database
from msgpush.storage.schema import api_tokens

Role = Literal["admin", "sender"]
ROLES: tuple[str, ...] = get_args(Role)
TOKEN_PREFIX = "mpk_"
CACHE_TTL_S = 2.0


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
        self._cache: dict[str, tuple[float, str | None]] = {}

    async def create(
        self, name: str, role: str, token: str | None = None
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

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(api_tokens.insert().values(**row))

        await self._db.write(op)
        async with self._db.read() as conn:
            stored = (
                await conn.execute(select(api_tokens).where(api_tokens.c.id == row["id"]))
            ).one()
        return token, _view(stored)

    async def role_of(self, token: str) -> str | None:
        digest = hash_token(token)
        entry = self._cache.get(digest)
        if entry is not None and time.monotonic() - entry[0] < CACHE_TTL_S:
            return entry[1]
        async with self._db.read_now() as conn:
            role = (
                await conn.execute(
                    select(api_tokens.c.role).where(api_tokens.c.token_hash == digest)
                )
            ).scalar_one_or_none()
        if len(self._cache) > 10_000:
            self._cache.clear()
        found = str(role) if role is not None else None
        self._cache[digest] = (time.monotonic(), found)
        return found

    async def list(self) -> dict[str, Any]:
        async with self._db.read() as conn:
            rows = await conn.execute(select(api_tokens).order_by(api_tokens.c.created_at))
            return {"items": [_view(row) for row in rows], "next_cursor": None}

    async def delete(self, token_id: str) -> None:
        async def op(conn: AsyncConnection) -> str:
            role = (
                await conn.execute(select(api_tokens.c.role).where(api_tokens.c.id == token_id))
            ).scalar_one_or_none()
            if role is None:
                return "missing"
            if role == "admin":
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
