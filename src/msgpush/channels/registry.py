"""Type id -> channel type. Every module in this package with a ``CHANNEL_TYPE`` is a type."""

from __future__ import annotations

import pkgutil
from importlib import import_module

from msgpush.channels.base import ChannelType

# How the types are listed (the console's order); a type not named here comes last.
ORDER = (
    "wecom_app",
    "wecom_bot",
    "feishu_app",
    "feishu_bot",
    "dingtalk_app",
    "dingtalk_bot",
    "webhook",
)

_types: dict[str, ChannelType] = {}


def _load() -> dict[str, ChannelType]:
    if not _types:
        package = import_module("msgpush.channels")
        found: list[ChannelType] = []
        for info in pkgutil.iter_modules(package.__path__):
            module = import_module(f"msgpush.channels.{info.name}")
            channel_type = getattr(module, "CHANNEL_TYPE", None)
            if isinstance(channel_type, ChannelType):
                found.append(channel_type)

        def rank(t: ChannelType) -> int:
            return ORDER.index(t.type_id) if t.type_id in ORDER else len(ORDER)

        for channel_type in sorted(found, key=lambda t: (rank(t), t.type_id)):
            _types[channel_type.type_id] = channel_type
    return _types


def get(type_id: str) -> ChannelType | None:
    return _load().get(type_id)


def all_types() -> list[ChannelType]:
    return list(_load().values())


def type_ids() -> list[str]:
    return list(_load())
