"""Local stand-ins for the vendors, for creating a channel of each type in the console tests."""

from __future__ import annotations

import importlib
import secrets
from typing import Any

from tests.fakes.receiver import Receiver

# vendor -> (module, class) of its fake; each answers like the vendor's webhook
FAKE_CLASSES = {
    "wecom": ("tests.fakes.wecom", "FakeWeComBot"),
    "feishu": ("tests.fakes.feishu", "FeishuFake"),
    "dingtalk": ("tests.fakes.dingtalk", "FakeDingTalk"),
    "wecom_app": ("tests.fakes.wecom", "FakeWeComApp"),
    "feishu_app": ("tests.fakes.feishu", "FakeFeishuApp"),
    "dingtalk_app": ("tests.fakes.dingtalk", "FakeDingTalkApp"),
}


class FakeMissing(Exception):
    """No local fake for a vendor (yet): the type is skipped."""


class Fakes:
    """Local stand-ins for the vendors, started on first use (all on 127.0.0.1)."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self._started: dict[str, Any] = {}

    def get(self, vendor: str) -> Any:
        if vendor not in self._started:
            module_name, class_name = FAKE_CLASSES[vendor]
            try:
                fake_class = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError) as exc:
                raise FakeMissing(f"no fake {module_name}.{class_name} ({exc})") from exc
            self._started[vendor] = fake_class().start()
        return self._started[vendor]

    def token(self) -> str:
        return secrets.token_hex(16)

    def stop(self) -> None:
        for fake in self._started.values():
            fake.stop()
