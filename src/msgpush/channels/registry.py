"""Type id -> channel type. Adding a vendor means adding its module to ``_MODULES``."""

from __future__ import annotations

from importlib import import_module

from msgpush.channels.base import ChannelType

_MODULES = ("webhook",)

_types: dict[str, ChannelType] = {}


def _load() -> dict[str, ChannelType]:
    if not _types:
        for module_name in _MODULES:
            module = import_module(f"msgpush.channels.{module_name}")
            channel_type: ChannelType = module.CHANNEL_TYPE
            _types[channel_type.type_id] = channel_type
    return _types


def get(type_id: str) -> ChannelType | None:
    return _load().get(type_id)


def all_types() -> list[ChannelType]:
    return list(_load().values())


def type_ids() -> list[str]:
    return list(_load())
