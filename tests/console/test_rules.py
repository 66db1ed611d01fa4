"""The console's Rules page in headless Chromium: the empty list, creating a rule with a template
and a live preview, errors next to their fields, the list with its toggle, editing, deleting.

Leaves docs/screenshots/rules.png (the list) and rules-edit.png (the form with its preview).
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.console.browser import IN_CI, LAPTOP, missing, shoot
from tests.fakes.receiver import Receiver
from tests.helpers import make_webhook
from tests.server import ServerProcess

if (reason := missing()) and not IN_CI:
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import Page, expect

from tests.console.test_console import sign_in


def fill_map(page: Page, name: str, values: dict[str, str]) -> None:
    field = page.locator(f'[data-field="rule.{name}"]')
    for key, value in values.items():
        field.locator(".kv > button").click()
        field.locator(".kv-row input").nth(-2).fill(key)
        field.locator(".kv-row input").nth(-1).fill(value)


def fill_tags(page: Page, name: str, values: list[str]) -> None:
    control = page.locator(f'[name="rule.{name}"]')
    for value in values:
        control.fill(value)
        control.press("Enter")


def rule_row(page: Page, name: str) -> Any:
    return page.locator(f'tr[data-rule="{name}"]')


def test_create_preview_edit_and_delete_a_rule(
    page: Page, server: ServerProcess, api: httpx.Client, receiver: Receiver
) -> None:
    make_webhook(api, "ops-dingtalk", receiver.url("/console-rules/ops"))
    make_webhook(api, "data-feishu", receiver.url("/console-rules/data"))
    sign_in(page, server, "/#/rules")
    expect(page.get_by_role("heading", level=1)).to_have_text("Rules")
    expect(page.locator("main .empty")).to_contain_text("No rules yet")
    expect(page.locator(".intake")).to_contain_text("/api/v1/integrations/alertmanager")

    page.locator("main .empty").get_by_role("link", name="New rule").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("New rule")
    # the preview shows what a sample alert becomes with the built-in template
    preview = page.locator(".preview-section .preview-card")
    expect(preview.locator(".message-title")).to_have_text("HighCPU on db-1 is firing")

    page.locator('[name="rule.name"]').fill("prod alerts to ops")
    page.locator('[name="rule.description"]').fill(
        "Every production alert, one digest per alert name"
    )
    page.locator('[name="rule.min_level"]').select_option(label="warning")
    fill_map(page, "labels", {"env": "prod"})
    page.get_by_label("ops-dingtalk").check()
    fill_tags(page, "group_by", ["alertname"])
    page.locator('[name="rule.group_window_s"]').fill("60")

    # a template mistake is shown next to its field, with the line
    content = page.locator('[name="rule.template_content"]')
    page.locator('[name="rule.template_title"]').fill(
        "[{{ level | upper }}] {{ f.alertname }} on {{ f.instance }}"
    )
    content.fill("{{ f.summary }}\n{% if f.value %}Now {{ f.value }}")
    page.get_by_role("button", name="Preview", exact=True).click()
    error = page.locator('[data-field="rule.template_content"] .field-error')
    expect(error).to_contain_text("line 2")
    expect(content).to_be_focused()

    content.fill("{{ f.summary }}\n\nNow **{{ f.value }}**, threshold {{ f.threshold }}.")
    page.get_by_role("button", name="Preview", exact=True).click()
    expect(error).to_be_hidden()
    expect(preview.locator(".message-title")).to_have_text("[WARNING] HighCPU on db-1")
    expect(preview.locator(".message-content")).to_contain_text("Now **93.5**, threshold 90.")
    expect(preview.locator(".fact").first).to_contain_text("Alert")
    page.locator('[name="preview_type"]').select_option("alert.resolved")
    expect(preview.locator(".pill")).to_have_text("success")
    page.locator('[name="preview_type"]').select_option("alert.firing")
    expect(preview.locator(".pill")).to_have_text("warning")
    # the form down to its template, beside the preview
    page.set_viewport_size({"width": LAPTOP["width"], "height": 1960})
    page.evaluate("window.scrollTo(0, 0)")
    shoot(page, "rules-edit")
    page.set_viewport_size(LAPTOP)

    page.get_by_role("button", name="Save").click()
    row = rule_row(page, "prod alerts to ops")
    expect(row).to_be_visible()
    expect(row).to_contain_text("env = prod")
    expect(row).to_contain_text("digest by alertname every 60 s")
    stored = api.get("/rules/prod alerts to ops").json()
    assert stored["event_types"] == ["alert.*"] and stored["min_level"] == "warning"
    assert stored["labels"] == {"env": "prod"} and stored["channels"] == ["ops-dingtalk"]
    assert stored["group_by"] == ["alertname"] and stored["group_window_s"] == 60
    assert stored["template"]["title"].startswith("[{{ level | upper }}]")

    # the rule routes: an alert of prod arrives with the rule's title
    sent = api.post(
        "/events",
        json={
            "type": "alert.firing",
            "labels": {"alertname": "DiskFull", "env": "prod", "instance": "nas-1"},
        },
    )
    assert sent.status_code == 202, sent.text
    [arrived] = receiver.wait_for("/console-rules/ops", 1)
    assert arrived.json()["title"] == "[WARNING] DiskFull on nas-1"

    # a second rule, then the list as documented
    api.post(
        "/rules",
        json={
            "name": "failed tasks to data",
            "description": "Scheduler failures and retries for the data team",
            "event_types": ["task.failed", "task.retrying"],
            "labels": {"team": "=~data|ml"},
            "channels": ["data-feishu", "ops-dingtalk"],
        },
    )
    page.reload()
    expect(rule_row(page, "failed tasks to data")).to_be_visible()
    shoot(page, "rules")

    # disable from the list
    toggle = page.get_by_role("switch", name="Enabled: failed tasks to data")
    toggle.click()
    expect(toggle).to_have_attribute("aria-checked", "false")
    assert api.get("/rules/failed tasks to data").json()["enabled"] is False

    # edit: the stored values are in the form; a change is saved
    row.get_by_role("link", name="Edit prod alerts to ops").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(re.compile("Edit rule"))
    expect(page.locator('[name="rule.name"]')).to_have_value("prod alerts to ops")
    expect(page.get_by_label("ops-dingtalk")).to_be_checked()
    expect(page.locator('[name="rule.group_window_s"]')).to_have_value("60")
    page.locator('[name="rule.min_level"]').select_option(label="error")
    page.get_by_role("button", name="Save").click()
    expect(row).to_contain_text("level error or higher")
    assert api.get("/rules/prod alerts to ops").json()["min_level"] == "error"

    # a name in use is shown next to the name
    page.get_by_role("link", name="New rule").click()
    page.locator('[name="rule.name"]').fill("prod alerts to ops")
    page.get_by_label("ops-dingtalk").check()
    page.get_by_role("button", name="Save").click()
    expect(page.locator('[data-field="rule.name"] .field-error')).to_contain_text("exists")
    page.get_by_role("link", name="Cancel").click()

    # delete asks first
    rule_row(page, "failed tasks to data").get_by_role(
        "button", name="Delete failed tasks to data"
    ).click()
    dialog = page.get_by_role("dialog", name="Delete rule?")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(rule_row(page, "failed tasks to data")).to_have_count(0)
    assert api.get("/rules/failed tasks to data").status_code == 404

    # in Chinese
    page.get_by_role("button", name=re.compile("Switch to Chinese")).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("规则")
    expect(page.locator("thead")).to_contain_text("告警风暴")
    expect(rule_row(page, "prod alerts to ops")).to_contain_text("按 alertname 每 60 秒汇总")
