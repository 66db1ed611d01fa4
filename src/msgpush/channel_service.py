"""Channels as stored: validation against the type's schema, secrets sealed, reads masked.

Also resolves the channel names/ids a sender gives into delivery targets, and loads a
channel's decrypted settings for the delivery engine (both cached for a moment, since they are
on the hot path).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from yarl import URL

from msgpush.channels import registry
from msgpush.channels.base import ChannelSettings, ChannelType, RateLimit
from msgpush.egress import EgressPolicy, EgressRefused
from msgpush.errors import ApiError, not_found, validation_error
from msgpush.ids import iso, new_id, now_ms
from msgpush.redact import MASK, SecretSet, mask_url_credentials, unmask_url
from msgpush.secretbox import SecretBox, is_masked, mask
from msgpush.storage.audit import (
    SYSTEM,
    Actor,
    Change,
    changed_fields,
    record_change,
    update_action,
)
from msgpush.storage.db import Database
from msgpush.storage.queue import Target
from msgpush.storage.schema import channels, deliveries

log = logging.getLogger(__name__)

CACHE_TTL_S = 1.0


@dataclass
class LoadedChannel:
    id: str
    name: str
    type: ChannelType
    settings: ChannelSettings
    enabled: bool
    limit: RateLimit
    secrets: SecretSet  # redacts their every form; copied per attempt

    limited: bool = field(init=False)  # sends take a slot in a rate window (webhooks: no)

    def __post_init__(self) -> None:
        self.limited = bool(self.limit.windows())


def channel_type_or_error(type_id: Any, field: str = "type") -> ChannelType:
    channel_type = registry.get(type_id) if isinstance(type_id, str) else None
    if channel_type is None:
        known = ", ".join(registry.type_ids())
        raise ApiError(
            422, "invalid", f"unknown channel type {type_id!r}; use one of: {known}", field
        )
    return channel_type


def validate_settings(
    channel_type: ChannelType, config: Any, field_prefix: str = "config"
) -> ChannelSettings:
    """Check settings against the type's schema and its own rules; 422 naming the field."""
    if not isinstance(config, dict):
        raise ApiError(422, "invalid", f"{field_prefix} must be an object", field_prefix)
    try:
        settings = channel_type.settings_model.model_validate(config)
    except ValidationError as exc:
        raise validation_error(exc.errors(), field_prefix) from None
    try:
        channel_type.check(settings)
    except ValueError as exc:
        raise _settings_error(channel_type, exc, field_prefix) from None
    return settings


async def verify_settings(
    channel_type: ChannelType, settings: ChannelSettings, field_prefix: str = "config"
) -> ChannelSettings:
    """The type's checks that run outside the event loop (a body template's sample render)."""
    try:
        await channel_type.verify(settings)
    except ValueError as exc:
        raise _settings_error(channel_type, exc, field_prefix) from None
    return settings


def _settings_error(channel_type: ChannelType, exc: ValueError, field_prefix: str) -> ApiError:
    """422 naming the setting a check's message starts with (``body_template: …``)."""
    text = str(exc)
    name = text.split(":", 1)[0] if ":" in text else None
    field = f"{field_prefix}.{name}" if name in channel_type.settings_model.model_fields else None
    return ApiError(422, "invalid", text, field or field_prefix)


def validate_rate_limit(channel_type: ChannelType, value: Any) -> RateLimit | None:
    if value is None:
        return None
    try:
        limit = RateLimit.model_validate(value)
    except ValidationError as exc:
        raise validation_error(exc.errors(), "rate_limit") from None
    vendor = channel_type.default_limits
    for name in ("per_second", "per_minute", "per_hour"):
        mine, cap = getattr(limit, name), getattr(vendor, name)
        if mine is not None and cap is not None and mine > cap:
            raise ApiError(
                422,
                "invalid",
                f"rate_limit.{name} = {mine} is above the vendor's limit of {cap}; "
                "a channel can only lower it",
                f"rate_limit.{name}",
            )
    return limit


async def check_egress(
    policy: EgressPolicy, channel_type: ChannelType, settings: ChannelSettings
) -> None:
    """422 naming the setting when a target the settings name is refused by the egress policy
    (an address in any spelling, or a name as it resolves now; the host alone is shown, since
    a URL may carry a key)."""
    for name, url in channel_type.target_urls(settings).items():
        try:
            await policy.check(URL(url))
        except EgressRefused as refused:
            raise ApiError(
                422, "egress_refused", f"config.{name}: {refused}", f"config.{name}"
            ) from None
        except ValueError:
            continue  # not a URL: the type's own validation speaks for it


class ChannelService:
    def __init__(self, db: Database, box: SecretBox, egress: EgressPolicy | None = None) -> None:
        self._db = db
        self._box = box
        self._egress = egress or EgressPolicy()
        self._loaded: dict[str, tuple[float, LoadedChannel | None]] = {}
        self._refs: dict[str, tuple[float, Any]] = {}

    def _forget(self) -> None:
        self._loaded.clear()
        self._refs.clear()

    # -- views -------------------------------------------------------------------------------

    def _view(self, row: Any, stats: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
        channel_type = registry.get(row.type)
        config = orjson.loads(row.config)
        secret = self._box.open(row.secrets)
        secret_names = channel_type.secret_fields() if channel_type else []
        for name, value in secret.items():
            # a secret field reads back masked; a URL setting sealed for its credentials reads
            # back with just those masked
            config[name] = mask(value) if name in secret_names else mask_url_credentials(value)
        view: dict[str, Any] = {
            "id": row.id,
            "name": row.name,
            "type": row.type,
            "type_name": channel_type.name if channel_type else row.type,
            "description": row.description,
            "enabled": row.enabled,
            "config": config,
            "rate_limit": orjson.loads(row.rate_limit) if row.rate_limit else None,
            "last_test": orjson.loads(row.last_test) if row.last_test else None,
            "last_test_at": iso(row.last_test_at),
            "created_at": iso(row.created_at),
            "updated_at": iso(row.updated_at),
        }
        if stats is not None:
            total, failed = stats.get(row.id, (0, 0))
            view["stats_24h"] = {"deliveries": total, "failed": failed}
        return view

    async def _row(self, conn: AsyncConnection, ref: str) -> Any:
        row = (
            await conn.execute(
                select(channels).where(or_(channels.c.id == ref, channels.c.name == ref))
            )
        ).first()
        if row is None:
            raise not_found("channel", ref)
        return row

    async def get(self, ref: str) -> dict[str, Any]:
        async with self._db.read() as conn:
            row = await self._row(conn, ref)
            stats = await self._stats(conn, [row.id])
        return self._view(row, stats)

    async def _stats(self, conn: AsyncConnection, ids: list[str]) -> dict[str, tuple[int, int]]:
        if not ids:
            return {}
        since = now_ms() - 86_400_000
        failed = func.sum(
            func.cast(deliveries.c.status == "failed", type_=deliveries.c.attempts.type)
        )
        rows = await conn.execute(
            select(deliveries.c.channel_id, func.count(), failed)
            .where(deliveries.c.channel_id.in_(ids), deliveries.c.created_at >= since)
            .group_by(deliveries.c.channel_id)
        )
        return {row[0]: (int(row[1]), int(row[2] or 0)) for row in rows}

    async def list_channels(
        self,
        *,
        type_id: str | None = None,
        q: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        statement = select(channels).order_by(channels.c.name).limit(limit + 1)
        if type_id:
            statement = statement.where(channels.c.type == type_id)
        if q:
            literal = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            pattern = f"%{literal}%"
            statement = statement.where(
                or_(
                    func.lower(channels.c.name).like(pattern, escape="\\"),
                    func.lower(channels.c.description).like(pattern, escape="\\"),
                )
            )
        if cursor:
            statement = statement.where(channels.c.name > cursor)
        async with self._db.read() as conn:
            rows = list(await conn.execute(statement))
            page = rows[:limit]
            stats = await self._stats(conn, [row.id for row in page])
        return {
            "items": [self._view(row, stats) for row in page],
            "next_cursor": page[-1].name if len(rows) > limit else None,
        }

    # -- writes ------------------------------------------------------------------------------

    async def create(self, body: dict[str, Any], *, actor: Actor = SYSTEM) -> dict[str, Any]:
        name = _name(body.get("name"))
        channel_type = channel_type_or_error(body.get("type"))
        settings = validate_settings(channel_type, body.get("config", {}))
        await verify_settings(channel_type, settings)
        limit = validate_rate_limit(channel_type, body.get("rate_limit"))
        await check_egress(self._egress, channel_type, settings)
        public, secret = channel_type.split(settings)
        now = now_ms()
        row = {
            "id": new_id("ch"),
            "name": name,
            "type": channel_type.type_id,
            "description": _description(body.get("description", "")),
            "enabled": _bool(body.get("enabled", True), "enabled"),
            "config": orjson.dumps(public).decode(),
            "secrets": self._box.seal(secret),
            "rate_limit": orjson.dumps(limit.model_dump(exclude_none=True)).decode()
            if limit
            else None,
            "created_at": now,
            "updated_at": now,
        }
        given = [key for key in body if key != "config"] + [
            f"config.{name}" for name in settings.model_fields_set
        ]
        change = Change("create", "channel", str(row["id"]), name, tuple(sorted(given)))

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(channels.insert().values(**row))
            await record_change(conn, actor, change)

        try:
            await self._db.write(op)
        except IntegrityError:
            raise ApiError(
                409, "conflict", f"a channel named {name!r} exists; choose another name", "name"
            ) from None
        self._forget()
        return await self.get(str(row["id"]))

    async def update(
        self, ref: str, body: dict[str, Any], *, actor: Actor = SYSTEM
    ) -> dict[str, Any]:
        unknown = set(body) - {"name", "config", "enabled", "description", "rate_limit"}
        if unknown:
            field = sorted(unknown)[0]
            raise ApiError(422, "invalid", f"{field}: unknown or read-only field; remove it", field)
        async with self._db.read() as conn:
            row = await self._row(conn, ref)
        channel_type = channel_type_or_error(row.type)
        values: dict[str, Any] = {"updated_at": now_ms()}
        if "name" in body:
            values["name"] = _name(body["name"])
        if "description" in body:
            values["description"] = _description(body["description"])
        if "enabled" in body:
            values["enabled"] = _bool(body["enabled"], "enabled")
        if "rate_limit" in body:
            limit = validate_rate_limit(channel_type, body["rate_limit"])
            values["rate_limit"] = (
                orjson.dumps(limit.model_dump(exclude_none=True)).decode() if limit else None
            )
        before = {name: getattr(row, name) for name in ("name", "description", "enabled")}
        before["rate_limit"] = row.rate_limit
        fields = changed_fields(before, before | values)
        fields = tuple(name for name in fields if name != "updated_at")
        if "config" in body:
            incoming = body["config"]
            if not isinstance(incoming, dict):
                raise ApiError(422, "invalid", "config must be an object", "config")
            settings = self._merged_settings(channel_type, row, incoming)
            await check_egress(self._egress, channel_type, settings)
            await verify_settings(channel_type, settings)
            public, secret = channel_type.split(settings)
            values["config"] = orjson.dumps(public).decode()
            values["secrets"] = self._box.seal(secret)
            fields += changed_fields(
                {**orjson.loads(row.config), **self._box.open(row.secrets)},
                {**public, **secret},
                "config.",
            )
        action = update_action(fields, values.get("enabled"))
        change = Change(action, "channel", row.id, values.get("name", row.name), fields)

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(update(channels).where(channels.c.id == row.id).values(**values))
            await record_change(conn, actor, change)

        try:
            await self._db.write(op)
        except IntegrityError:
            raise ApiError(
                409, "conflict", f"a channel named {values.get('name')!r} exists", "name"
            ) from None
        self._forget()
        return await self.get(row.id)

    def _merged_settings(
        self, channel_type: ChannelType, row: Any, incoming: dict[str, Any]
    ) -> ChannelSettings:
        """Stored settings overlaid with ``incoming``, secrets write-only: a secret sent empty or
        masked keeps its stored value, ``null`` clears it; a secret object (headers) merges
        key by key the same way."""
        merged = {**orjson.loads(row.config), **self._box.open(row.secrets)}
        secret_names = set(channel_type.secret_fields())
        for key, value in incoming.items():
            if key not in secret_names:
                merged[key] = _kept_url_credentials(key, value, merged.get(key))
            elif value is None:
                merged.pop(key, None)
            elif isinstance(value, dict) and isinstance(merged.get(key), dict):
                stored = merged[key]
                merged[key] = {
                    name: stored[name]
                    if (item == "" or is_masked(item)) and name in stored
                    else item
                    for name, item in value.items()
                }
            elif value != "" and not is_masked(value):
                merged[key] = value
        return validate_settings(channel_type, merged)

    async def preview(self, ref: str, config: dict[str, Any]) -> LoadedChannel:
        """The saved channel with unsaved changes to its settings (for Test Push while editing)."""
        async with self._db.read() as conn:
            row = await self._row(conn, ref)
        channel_type = channel_type_or_error(row.type)
        loaded = self.build(row)
        settings = await verify_settings(
            channel_type, self._merged_settings(channel_type, row, config)
        )
        loaded.settings = settings
        loaded.secrets = channel_type.secret_set(settings)
        return loaded

    async def delete(self, ref: str, *, actor: Actor = SYSTEM) -> None:
        async with self._db.read() as conn:
            row = await self._row(conn, ref)
        now = now_ms()
        change = Change("delete", "channel", row.id, row.name)

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(delete(channels).where(channels.c.id == row.id))
            await record_change(conn, actor, change)
            await conn.execute(
                update(deliveries)
                .where(
                    and_(
                        deliveries.c.channel_id == row.id,
                        deliveries.c.status.in_(("queued", "retrying")),
                    )
                )
                .values(status="cancelled", last_error="the channel was deleted", updated_at=now)
            )

        await self._db.write(op)
        self._forget()

    async def record_test(
        self, tested: LoadedChannel, result: dict[str, Any] | None, *, actor: Actor = SYSTEM
    ) -> None:
        """Audit a Test Push of a saved channel, naming the unsaved settings it tried; with a
        ``result`` (saved settings tested) it also becomes the channel's last test."""
        now = now_ms()
        stored = await self.load(tested.id)
        fields = (
            changed_fields(_plain(stored), _plain(tested), "config.") if stored is not None else ()
        )
        change = Change("test", "channel", tested.id, tested.name, fields)

        async def op(conn: AsyncConnection) -> None:
            if result is not None:
                await conn.execute(
                    update(channels)
                    .where(channels.c.id == tested.id)
                    .values(last_test=orjson.dumps(result).decode(), last_test_at=now)
                )
            await record_change(conn, actor, change)

        await self._db.write(op)

    # -- hot path ----------------------------------------------------------------------------

    async def resolve(self, refs: list[str], field: str = "channels") -> list[Target]:
        """Channel names or ids -> delivery targets; 422 naming an unknown or disabled one."""
        targets: list[Target] = []
        # resolved from the cache or from the rows fetched now, never by a second look at the
        # cache: under load, giving the connection back can outlast the cache's TTL
        found = {ref: row for ref in refs if (row := self._cached_ref(ref)) is not None}
        missing = [ref for ref in refs if ref not in found]
        if missing:
            async with self._db.read_now() as conn:
                rows = await conn.execute(
                    select(
                        channels.c.id, channels.c.name, channels.c.type, channels.c.enabled
                    ).where(or_(channels.c.id.in_(missing), channels.c.name.in_(missing)))
                )
                stamp = time.monotonic()
                for row in rows:
                    self._refs[row.id] = (stamp, row)
                    self._refs[row.name] = (stamp, row)
                    found.setdefault(row.id, row)
                    found.setdefault(row.name, row)
        for index, ref in enumerate(refs):
            row = found.get(ref)
            if row is None:
                raise ApiError(
                    422,
                    "unknown_channel",
                    f"no channel named or with id {ref!r}; list them with GET /api/v1/channels",
                    f"{field}.{index}",
                )
            if not row.enabled:
                raise ApiError(
                    422,
                    "channel_disabled",
                    f"channel {row.name!r} is disabled; enable it or leave it out",
                    f"{field}.{index}",
                )
            targets.append(Target(row.id, row.name, row.type))
        return list(dict.fromkeys(targets))

    def _cached_ref(self, ref: str) -> Any:
        entry = self._refs.get(ref)
        if entry is None or time.monotonic() - entry[0] > CACHE_TTL_S:
            return None
        return entry[1]

    async def load(self, channel_id: str) -> LoadedChannel | None:
        """The channel with decrypted settings, for sending; None when it no longer exists."""
        entry = self._loaded.get(channel_id)
        if entry is not None and time.monotonic() - entry[0] <= CACHE_TTL_S:
            return entry[1]
        async with self._db.read_now() as conn:
            row = (await conn.execute(select(channels).where(channels.c.id == channel_id))).first()
        loaded = self.build(row) if row is not None else None
        self._loaded[channel_id] = (time.monotonic(), loaded)
        return loaded

    async def seal_plain_credentials(self) -> int:
        """Seal what a channel saved by an older version keeps in clear (credentials inside a
        URL setting became secrets). Returns how many channels were sealed again."""
        async with self._db.read() as conn:
            rows = (await conn.execute(select(channels))).all()
        stale = []
        for row in rows:
            try:
                loaded = self.build(row)
            except Exception:  # a channel that no longer loads is left for an admin to fix
                log.warning("channel %s could not be loaded to check its stored settings", row.id)
                continue
            public, secret = loaded.type.split(loaded.settings)
            if public != orjson.loads(row.config):
                stale.append((row.id, orjson.dumps(public).decode(), self._box.seal(secret)))
        if not stale:
            return 0

        async def op(conn: AsyncConnection) -> None:
            for channel_id, config, sealed in stale:
                await conn.execute(
                    update(channels)
                    .where(channels.c.id == channel_id)
                    .values(config=config, secrets=sealed)
                )

        await self._db.write(op)
        return len(stale)

    def build(self, row: Any) -> LoadedChannel:
        channel_type = channel_type_or_error(row.type)
        merged = {**orjson.loads(row.config), **self._box.open(row.secrets)}
        settings = channel_type.settings_model.model_validate(merged)
        override = (
            RateLimit.model_validate(orjson.loads(row.rate_limit)) if row.rate_limit else None
        )
        return LoadedChannel(
            id=row.id,
            name=row.name,
            type=channel_type,
            settings=settings,
            enabled=row.enabled,
            limit=channel_type.default_limits.lowered_by(override),
            secrets=channel_type.secret_set(settings),
        )


def _plain(channel: LoadedChannel) -> dict[str, Any]:
    """A channel's settings, secrets included, as plain values to compare."""
    public, secret = channel.type.split(channel.settings)
    return {**public, **secret}


def _kept_url_credentials(name: str, value: Any, stored: Any) -> Any:
    """A URL setting sent back with masked credentials keeps the stored ones; 422 when there
    are none to keep or the URL now points elsewhere."""
    if not isinstance(value, str) or MASK not in value or "://" not in value:
        return value
    kept = unmask_url(value, stored) if isinstance(stored, str) else None
    if kept is None:
        raise ApiError(
            422,
            "invalid",
            f"{name} has masked credentials ({MASK}) that can only be kept on the same address; "
            "enter the credentials again",
            f"config.{name}",
        )
    return kept


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ApiError(
            422, "invalid", "name is required: a short unique name like ops-dingtalk", "name"
        )
    value = value.strip()
    if len(value) > 128:
        raise ApiError(422, "invalid", "name is longer than 128 characters", "name")
    if value.startswith("ch_"):
        raise ApiError(422, "invalid", "name must not start with ch_ (ids do)", "name")
    return str(value)


def _description(value: Any) -> str:
    if not isinstance(value, str):
        raise ApiError(422, "invalid", "description must be a string", "description")
    if len(value) > 2000:
        raise ApiError(422, "invalid", "description is longer than 2000 characters", "description")
    return value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ApiError(422, "invalid", f"{field} must be true or false", field)
    return value
