"""Every channel type speaks Chinese: the console labels each setting from the schema's
x-title-zh / x-description-zh and each type card from description_zh, so a type (or a new
setting) without Chinese text fails here rather than showing English to a Chinese admin."""

from __future__ import annotations

import pytest

from msgpush.channels import registry
from msgpush.channels.base import ChannelType

TYPES = registry.all_types()


def test_the_seven_types_are_checked() -> None:
    assert len(TYPES) >= 7


@pytest.mark.parametrize("channel_type", TYPES, ids=lambda t: t.type_id)
def test_every_setting_has_a_chinese_title_and_description(channel_type: ChannelType) -> None:
    properties = channel_type.describe()["schema"]["properties"]
    assert properties
    for name, prop in properties.items():
        for key in ("x-title-zh", "x-description-zh"):
            value = prop.get(key)
            assert isinstance(value, str) and value.strip(), f"{channel_type.type_id}.{name}: {key}"


@pytest.mark.parametrize("channel_type", TYPES, ids=lambda t: t.type_id)
def test_every_type_has_a_chinese_description(channel_type: ChannelType) -> None:
    described = channel_type.describe()
    assert isinstance(described["description_zh"], str) and described["description_zh"].strip()
    assert described["description"]  # the English text stays alongside
