"""The web console in headless Chromium: sign in, create a channel of every type, Test Push,
edit without losing a secret, enable/disable, delivery history with resend, delete, languages.

Each test leaves screenshots in docs/screenshots/ (docs/console.md shows them). Tests run in file
order against one fresh server (see conftest.py); the last one photographs the full lists.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.console.browser import IN_CI, LAPTOP, NARROW, missing, shoot
from tests.console.vendors import FakeMissing, Fakes
from tests.fakes.receiver import Receiver, Reply
from tests.helpers import make_webhook, send, wait_delivery
from tests.server import ServerProcess

if (reason := missing()) and not IN_CI:
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import Locator, Page, expect

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
MASK = "••••"


# -- what to fill in per channel type: required settings pointing at local fakes ------------------


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    settings: Callable[[Fakes], dict[str, Any]]


def _wecom(fakes: Fakes) -> dict[str, Any]:
    fake = fakes.get("wecom")
    return {"webhook_url": fake.webhook_url(fake.new_key())}


def _feishu(fakes: Fakes) -> dict[str, Any]:
    return {"webhook_url": fakes.get("feishu").add_bot(fakes.token())}


def _dingtalk(fakes: Fakes) -> dict[str, Any]:
    fake = fakes.get("dingtalk")
    return {"webhook_url": fake.webhook_url(fake.add_robot())}


def _wecom_app(fakes: Fakes) -> dict[str, Any]:
    fake = fakes.get("wecom_app")
    app = fake.new_app(users=["zhangsan"])
    return {
        "corp_id": app.corp_id,
        "agent_id": app.agent_id,
        "secret": app.secret,
        "to_user": ["zhangsan"],
        "api_base": fake.api_base,
    }


def _feishu_app(fakes: Fakes) -> dict[str, Any]:
    fake = fakes.get("feishu_app")
    app = fake.new_app(users=["zhangsan"])
    return {
        "app_id": app.app_id,
        "app_secret": app.app_secret,
        "receive_ids": [app.open_id("zhangsan")],
        "api_base": fake.url(""),
    }


def _dingtalk_app(fakes: Fakes) -> dict[str, Any]:
    fake = fakes.get("dingtalk_app")
    app = fake.add_app(agent_id=4242)
    app.users.add("zhangsan")
    return {
        "app_key": app.app_key,
        "app_secret": app.app_secret,
        "agent_id": 4242,
        "user_ids": ["zhangsan"],
        "api_base": fake.url(""),
    }


CASES: dict[str, Case] = {
    "wecom_app": Case("hr-wecom-app", "人事系统：审批待办", _wecom_app),
    "feishu_app": Case("bi-feishu-app", "BI 平台：数据刷新通知", _feishu_app),
    "dingtalk_app": Case("ops-dingtalk-app", "运维工作通知", _dingtalk_app),
    "webhook": Case(
        "orders-webhook",
        "Order system: failed payouts",
        lambda fakes: {"url": fakes.receiver.url("/console/orders")},
    ),
    "wecom_bot": Case("ops-wecom", "运维值班群：任务失败与告警", _wecom),
    "feishu_bot": Case("data-feishu", "数据平台群：数据更新通知", _feishu),
    "dingtalk_bot": Case("sales-dingtalk", "销售日报群", _dingtalk),
}


# -- helpers --------------------------------------------------------------------------------------


def sign_in(page: Page, server: ServerProcess, path: str = "/") -> None:
    page.goto(server.url + path)
    page.locator('input[name="token"]').fill(server.admin_token)
    page.locator(".login-form button[type=submit]").click()
    expect(page.locator(".topbar")).to_be_visible()
    expect(page.locator("main .loading")).to_have_count(0)


def open_create_form(page: Page, server: ServerProcess, type_id: str) -> None:
    page.goto(f"{server.url}/#/channels/new")
    page.locator(f'a.type-card[data-type="{type_id}"]').click()
    expect(page.locator("form.channel-form")).to_be_visible()


def fill_setting(page: Page, name: str, value: Any) -> None:
    """Fill one schema-built field whatever its kind: input, select, switch, tags, key/value."""
    field = page.locator(f'[data-field="config.{name}"]')
    if isinstance(value, dict):
        for key, item in value.items():
            field.locator(".kv > button").click()
            field.locator(".kv-row input").nth(-2).fill(str(key))
            field.locator(".kv-row input").nth(-1).fill(str(item))
        return
    control = page.locator(f'[name="config.{name}"]').first
    kind = control.evaluate("el => `${el.tagName}:${el.type}:${el.className}`").lower()
    if kind.startswith("select"):
        control.select_option(label=str(value))
    elif ":checkbox:" in kind:
        control.set_checked(bool(value))
    elif "chip-input" in kind:
        for item in value:
            control.fill(str(item))
            control.press("Enter")
    else:
        control.fill(str(value))


def run_test_push(page: Page) -> Locator:
    page.get_by_role("button", name="Send test push").click()
    result = page.locator(".result-host .result")
    expect(result).to_be_visible()
    return result


def channel_row(page: Page, name: str) -> Locator:
    return page.locator(f'tr[data-channel="{name}"]')


def masked(value: Any) -> bool:
    return MASK in json.dumps(value, ensure_ascii=False)


# -- the tests ------------------------------------------------------------------------------------


def test_sign_in_with_an_admin_token_and_sign_out(
    page: Page, server: ServerProcess, api: httpx.Client
) -> None:
    page.goto(server.url + "/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in to msgpush")
    expect(page.get_by_label("API token")).to_be_focused()
    shoot(page, "login")

    token = page.get_by_label("API token")
    token.fill("mpk_not_a_token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    expect(token).to_have_attribute("aria-invalid", "true")

    sender = api.post("/tokens", json={"name": "console test sender", "role": "sender"})
    token.fill(sender.json()["token"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("needs an admin token")

    token.fill(server.admin_token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Push channels")
    expect(page.get_by_role("navigation", name="Breadcrumb")).to_contain_text("System Management")
    assert page.evaluate("sessionStorage.getItem('msgpush.token')") == server.admin_token
    page.reload()
    expect(page.get_by_role("heading", level=1)).to_have_text("Push channels")

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in to msgpush")
    assert page.evaluate("sessionStorage.getItem('msgpush.token')") is None


def test_create_a_channel_of_every_type(
    page: Page,
    server: ServerProcess,
    api: httpx.Client,
    fakes: Fakes,
    subtests: Any,
) -> None:
    types = api.get("/channel-types").json()["items"]
    assert types, "the server lists no channel types"
    sign_in(page, server)
    for channel_type in types:
        type_id = channel_type["type"]
        with subtests.test(type=type_id):
            case = CASES.get(type_id)
            if case is None:
                pytest.skip(f"{type_id}: no local fake yet; add it to CASES in {__name__}")
            try:
                settings = case.settings(fakes)
            except FakeMissing as exc:
                pytest.skip(f"{type_id}: {exc}")
            required = channel_type["schema"].get("required", [])
            assert set(required) <= set(settings), f"CASES[{type_id!r}] lacks {required}"

            open_create_form(page, server, type_id)
            page.locator('[name="name"]').fill(case.name)
            page.locator('[name="description"]').fill(case.description)
            for name, value in settings.items():
                fill_setting(page, name, value)
            for name in required:
                expect(page.locator(f'[name="config.{name}"]').first).to_have_attribute(
                    "aria-required", "true"
                )
            result = run_test_push(page)
            expect(result).to_have_attribute("data-ok", "true")
            page.get_by_role("button", name="Save").click()
            expect(channel_row(page, case.name)).to_be_visible()

            channel = api.get(f"/channels/{case.name}").json()
            assert channel["type"] == type_id
            assert channel["description"] == case.description
            for name in channel_type.get("secret_fields", []):
                if name in settings:
                    assert masked(channel["config"][name]), (name, channel["config"][name])


def test_create_with_test_push_then_edit_keeps_the_secret(
    page: Page, server: ServerProcess, api: httpx.Client, receiver: Receiver
) -> None:
    path = "/console/alerts"
    sign_in(page, server)
    page.get_by_role("link", name="New push channel").click()
    expect(page.locator('a.type-card[data-type="webhook"]')).to_be_visible()
    shoot(page, "create-type")
    page.locator('a.type-card[data-type="webhook"]').click()

    page.locator('[name="name"]').fill("alerts-webhook")
    page.locator('[name="description"]').fill("On-call system: alerts and task failures")
    url = page.locator('[name="config.url"]')

    # what the API refuses is shown next to the field, which gets the focus
    url.fill("not a url")
    page.get_by_role("button", name="Send test push").click()
    url_error = page.locator('[data-field="config.url"] .field-error')
    expect(url_error).to_be_visible()
    expect(url).to_have_attribute("aria-invalid", "true")
    expect(url).to_be_focused()

    # a Test Push that fails says why
    url.fill("http://127.0.0.1:9/")
    result = run_test_push(page)
    expect(result).to_have_attribute("data-ok", "false")
    expect(result.locator(".diagnosis")).to_contain_text("127.0.0.1:9")
    expect(url_error).to_be_hidden()
    result.locator("summary").click()
    expect(result.locator(".exchange pre").first).to_contain_text("POST http://127.0.0.1:9/")
    shoot(page, "create-form-test")

    # one that reaches the local receiver, signed, with a header and success codes
    url.fill(receiver.url(path))
    fill_setting(page, "signing_secret", SECRET)
    fill_setting(page, "headers", {"X-Team": "ops"})
    fill_setting(page, "success_codes", [200, 202])
    expect(page.get_by_role("button", name="Remove 202")).to_be_visible()
    result = run_test_push(page)
    expect(result).to_have_attribute("data-ok", "true")
    [tested] = receiver.wait_for(path, 1)
    Webhook(SECRET).verify(tested.body, tested.headers)
    assert tested.headers["X-Team"] == "ops"

    page.get_by_role("button", name="Save").click()
    expect(channel_row(page, "alerts-webhook")).to_be_visible()
    channel = api.get("/channels/alerts-webhook").json()
    assert channel["config"]["signing_secret"].startswith(MASK)
    assert channel["config"]["headers"] == {"X-Team": MASK}
    assert channel["config"]["success_codes"] == [200, 202]

    # editing never shows the stored secret; changing another field keeps it
    channel_row(page, "alerts-webhook").get_by_role("link", name="Edit alerts-webhook").click()
    secret = page.locator('[name="config.signing_secret"]')
    expect(secret).to_have_value("")
    expect(secret).to_have_attribute("type", "password")
    expect(page.locator('[data-field="config.signing_secret"] .hint')).to_contain_text(
        "leave empty to keep"
    )
    expect(page.locator('[data-field="config.headers"] .kv-row input').first).to_have_value(
        "X-Team"
    )
    assert SECRET not in page.content()
    page.locator('[name="description"]').fill("On-call system: alerts, task failures, digests")
    page.locator('[data-field="config.body_template"]').evaluate(
        "el => el.scrollIntoView({block: 'center'})"
    )
    shoot(page, "edit")
    page.get_by_role("button", name="Save").click()
    expect(channel_row(page, "alerts-webhook")).to_contain_text("digests")

    channel = api.get("/channels/alerts-webhook").json()
    assert channel["description"].endswith("digests")
    assert channel["config"]["signing_secret"].startswith(MASK)
    assert channel["config"]["headers"] == {"X-Team": MASK}
    send(api, ["alerts-webhook"], title="Disk usage 91% on db-1", level="warning")
    latest = receiver.wait_for(path, 2)[-1]
    Webhook(SECRET).verify(latest.body, latest.headers)
    assert latest.headers["X-Team"] == "ops"


def test_test_push_on_saved_channels_is_kept_as_their_last_test(
    page: Page, server: ServerProcess, api: httpx.Client, receiver: Receiver
) -> None:
    make_webhook(api, "crm-webhook", receiver.url("/console/crm"))
    make_webhook(api, "legacy-erp", "http://127.0.0.1:9/erp")
    send(api, ["legacy-erp"], title="Nightly export failed", level="error")
    sign_in(page, server)

    crm = channel_row(page, "crm-webhook")
    expect(crm).to_contain_text("Never tested")
    crm.get_by_role("button", name="Test push: crm-webhook").click()
    expect(page.locator('tr[data-result-for="crm-webhook"] .result')).to_have_attribute(
        "data-ok", "true"
    )
    expect(crm.locator(".pill-ok")).to_contain_text("Passed")

    erp = channel_row(page, "legacy-erp")
    erp.get_by_role("button", name="Test push: legacy-erp").click()
    failed = page.locator('tr[data-result-for="legacy-erp"] .result')
    expect(failed).to_have_attribute("data-ok", "false")
    expect(failed.locator(".diagnosis")).to_contain_text("127.0.0.1:9")
    expect(erp.locator("span.pill-fail")).to_contain_text("Failed")  # not the "1 failed" link
    expect(erp.get_by_role("button", name="Test push: legacy-erp")).to_be_focused()

    assert api.get("/channels/crm-webhook").json()["last_test"]["ok"] is True
    last = api.get("/channels/legacy-erp").json()
    assert last["last_test"]["ok"] is False
    assert last["last_test_at"]


def test_disable_and_enable_a_channel(
    page: Page, server: ServerProcess, api: httpx.Client, receiver: Receiver
) -> None:
    make_webhook(api, "marketing-webhook", receiver.url("/console/marketing"))
    sign_in(page, server)
    toggle = page.get_by_role("switch", name="Enabled: marketing-webhook")
    expect(toggle).to_have_attribute("aria-checked", "true")

    toggle.click()
    expect(toggle).to_have_attribute("aria-checked", "false")
    expect(channel_row(page, "marketing-webhook")).to_contain_text("Disabled")
    assert api.get("/channels/marketing-webhook").json()["enabled"] is False
    refused = api.post(
        "/messages", json={"channels": ["marketing-webhook"], "title": "t", "content": "c"}
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "channel_disabled"

    toggle.click()
    expect(toggle).to_have_attribute("aria-checked", "true")
    assert api.get("/channels/marketing-webhook").json()["enabled"] is True


def test_delivery_history_shows_attempts_and_resends_a_failed_delivery(
    page: Page, server: ServerProcess, api: httpx.Client, receiver: Receiver
) -> None:
    path = "/console/billing"
    make_webhook(api, "billing-webhook", receiver.url(path))
    receiver.script(path, Reply(422, b'{"error": "amount must be positive"}'))
    answer = send(
        api,
        ["billing-webhook"],
        title="Invoice 2026-0042 could not be posted",
        content="The ledger refused **invoice 2026-0042**.",
        level="error",
        category="task",
        fields={"Invoice": "2026-0042", "Amount": "-12.00"},
    )
    delivery_id = answer["deliveries"][0]["id"]
    assert wait_delivery(api, delivery_id)["status"] == "failed"

    sign_in(page, server)
    page.get_by_role("link", name="Delivery history").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Delivery history")
    page.get_by_label("Channel").select_option(label="billing-webhook")
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"status=failed"))
    row = page.locator(f'tr[data-delivery="{delivery_id}"]')
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(row.locator(".status")).to_have_text("Failed")
    expect(row.get_by_role("button", name=f"Resend delivery {delivery_id}")).to_be_visible()

    details = row.get_by_role("button", name=f"Details of delivery {delivery_id}")
    details.click()
    dialog = page.get_by_role("dialog")
    expect(dialog.locator(".attempt")).to_have_count(1)
    attempt = dialog.locator(".attempt")
    expect(attempt).to_contain_text("422")
    expect(attempt.locator(".diagnosis")).to_contain_text("HTTP 422")
    expect(dialog.locator(".message-card")).to_contain_text("Invoice 2026-0042")
    attempt.locator("summary").click()
    expect(attempt.locator(".exchange pre").first).to_contain_text("could not be posted")
    expect(attempt.locator(".exchange pre").nth(1)).to_contain_text("amount must be positive")
    shoot(page, "delivery-detail")

    # Tab stays in the dialog; Esc closes it and gives the focus back
    for _ in range(10):
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.closest('dialog') !== null")
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(details).to_be_focused()

    details.click()
    page.get_by_role("dialog").get_by_role("button", name="Resend").click()
    expect(page.get_by_role("dialog").locator(".delivery-status .status")).to_have_text(
        "Delivered", timeout=15_000
    )
    expect(page.get_by_role("dialog").locator(".attempt")).to_have_count(2)
    page.get_by_role("dialog").get_by_role("button", name="Close").last.click()
    page.get_by_label("Status").select_option("")
    page.get_by_role("button", name="Apply").click()
    expect(row.locator(".status")).to_have_text("Delivered")

    delivered = api.get(f"/deliveries/{delivery_id}").json()
    assert delivered["status"] == "delivered"
    assert len(receiver.at(path)) == 2

    # time filters: nothing was created in 2099
    page.get_by_label("From").fill("2099-01-01T00:00")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("main .empty")).to_contain_text("No deliveries match these filters")
    page.get_by_role("button", name="Reset").click()
    expect(row).to_be_visible()


def test_search_and_filter_channels_and_page_through_deliveries(
    page: Page, server: ServerProcess, api: httpx.Client
) -> None:
    sign_in(page, server)
    page.get_by_label("Search channels").fill("crm")
    expect(page.locator("tbody > tr[data-channel]")).to_have_count(1)
    expect(channel_row(page, "crm-webhook")).to_be_visible()
    expect(page).to_have_url(re.compile(r"q=crm"))
    page.get_by_label("Search channels").fill("")
    page.get_by_label("Type", exact=True).select_option("webhook")
    rows = page.locator("tbody > tr[data-channel]")
    expect(rows.first).to_be_visible()
    webhooks = [c["name"] for c in api.get("/channels", params={"type": "webhook"}).json()["items"]]
    expect(rows).to_have_count(len(webhooks))
    expect(page.locator("tbody .type-id")).to_have_text(["webhook"] * len(webhooks))

    # paging: two deliveries a page
    for n in (1, 2):
        send(api, ["crm-webhook"], title=f"Customer import {n} finished", level="success")
    everything = [d["id"] for d in api.get("/deliveries").json()["items"]]
    assert len(everything) >= 4
    page.goto(f"{server.url}/#/deliveries?limit=2")
    ids = page.locator("tbody tr[data-delivery]")
    expect(ids).to_have_count(2)
    first = [ids.nth(i).get_attribute("data-delivery") for i in range(2)]
    assert first == everything[:2]
    page.get_by_role("button", name="Older").click()
    expect(page.get_by_role("navigation", name="Page")).to_contain_text("Page 2")
    expect(ids.first).to_have_attribute("data-delivery", everything[2])
    page.get_by_role("button", name="Newer").click()
    expect(ids.first).to_have_attribute("data-delivery", everything[0])


def test_delete_asks_first(
    page: Page, server: ServerProcess, api: httpx.Client, receiver: Receiver
) -> None:
    make_webhook(api, "old-webhook", receiver.url("/console/old"))
    sign_in(page, server)
    delete = page.get_by_role("button", name="Delete old-webhook")
    delete.click()
    dialog = page.get_by_role("dialog", name="Delete push channel?")
    expect(dialog).to_contain_text("old-webhook")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(delete).to_be_focused()
    assert api.get("/channels/old-webhook").status_code == 200

    delete.click()
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(channel_row(page, "old-webhook")).to_have_count(0)
    assert api.get("/channels/old-webhook").status_code == 404


def test_rules_are_in_the_navigation(page: Page, server: ServerProcess) -> None:
    sign_in(page, server)
    page.get_by_role("link", name="Rules").click()
    heading = page.get_by_role("heading", level=1)
    expect(heading).to_have_text("Rules")
    expect(heading).to_be_focused()
    expect(page.get_by_role("link", name="Rules")).to_have_attribute("aria-current", "page")


def test_chinese_and_english_lists_and_a_narrow_window(
    browser: Any, server: ServerProcess, api: httpx.Client, receiver: Receiver
) -> None:
    # give the lists something in every state: tested channels, sent and failed messages
    names = [c["name"] for c in api.get("/channels").json()["items"]]
    made = [case.name for case in CASES.values() if case.name in names]
    for name in [*made, "alerts-webhook"]:
        api.post(f"/channels/{name}/test")
    send(api, made, title="Daily sales report is ready", level="success", category="data")
    send(api, ["crm-webhook"], title="Customer import finished", level="success")
    for failing in api.get("/deliveries", params={"channel": "legacy-erp"}).json()["items"]:
        wait_delivery(api, failing["id"])
    context = browser.new_context(viewport=LAPTOP, locale="zh-CN")
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(server.url + "/")
        expect(page.get_by_role("heading", level=1)).to_have_text("登录 msgpush")
        sign_in(page, server)
        expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        expect(page.get_by_role("heading", level=1)).to_have_text("推送渠道")
        nav = page.get_by_role("navigation", name="主导航")
        for label in ("系统管理", "消息推送", "推送渠道", "投递记录", "规则"):
            expect(nav).to_contain_text(label)
        expect(page.get_by_text("crm-webhook").first).to_be_visible()  # the list has loaded
        shoot(page, "channels-zh")

        page.set_viewport_size(NARROW)
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        shoot(page, "narrow")
        page.set_viewport_size(LAPTOP)

        # the channel form in Chinese: field labels and help come from the schema's zh text
        page.goto(server.url + "/#/channels/new")
        webhook_card = page.locator('a.type-card[data-type="webhook"]')
        expect(webhook_card.locator(".type-card-desc")).to_contain_text("标准 JSON 信封")
        webhook_card.click()
        url_field = page.locator('[data-field="config.url"]')
        expect(url_field.locator("label .label-text")).to_have_text("Webhook 地址")
        expect(url_field.locator(".help")).to_contain_text("不跟随重定向")
        expect(page.locator('[data-field="config.timeout_s"] .label-text')).to_have_text(
            "超时（秒）"
        )
        url_field.evaluate("el => (el.closest('section') || el).scrollIntoView()")
        shoot(page, "create-form-zh")
        page.goto(server.url + "/#/channels")
        expect(page.get_by_role("heading", level=1)).to_have_text("推送渠道")

        page.get_by_role("button", name=re.compile("Switch to English")).click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Push channels")
        expect(page.locator("#lang-toggle")).to_be_focused()
        page.reload()  # the choice is remembered over the browser's Chinese
        expect(page.get_by_role("heading", level=1)).to_have_text("Push channels")
        expect(page.locator("main .loading")).to_have_count(0)
        shoot(page, "channels")

        page.get_by_role("link", name="Delivery history").click()
        expect(page.locator("tbody tr").first).to_be_visible()
        shoot(page, "deliveries")
    finally:
        context.close()
    assert not errors, errors
