"""The WeCom self-built app channel: rendering, recipients and splitting, the token cache, the
duplicate check, partial success, every error code, Test Push, secrets, bursts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr, ValidationError

from msgpush.channels.base import Outcome, SendContext, VendorRequest, VendorResponse
from msgpush.channels.render import TRUNCATION_MARKER
from msgpush.channels.wecom_app import (
    APP_MARKDOWN_MAX_BYTES,
    CHANNEL_TYPE,
    CHAT_ERRORS,
    SEND_ERRORS,
    TOKEN_ERRORS,
    Part,
    Rejected,
    WeComAppSettings,
    plan,
    read_answer,
    read_token,
)
from msgpush.message import Message
from tests.fakes.wecom import FakeWeComApp, WeComApp
from tests.helpers import send, wait_delivery
from tests.server import ServerProcess


@pytest.fixture(scope="module")
def wecom() -> Iterator[FakeWeComApp]:
    fake = FakeWeComApp().start()
    yield fake
    fake.stop()


# -- rendering, on the channel type directly ----------------------------------------------------


async def _no_exchange(request: VendorRequest, classify: Any) -> Outcome:  # pragma: no cover
    raise AssertionError("rendering tests never send")


def settings(**config: Any) -> WeComAppSettings:
    base = {"corp_id": "ww0123456789abcdef", "agent_id": 1000002, "secret": "s3cr3t-value"}
    if not {"to_user", "to_party", "to_tag", "chat_id"} & set(config):
        base["to_user"] = ["ZhangSan"]
    return WeComAppSettings.model_validate({**base, **config})


def context(**kw: Any) -> SendContext:
    return SendContext(delivery_id="dlv_test", attempt=1, exchange=_no_exchange, **kw)


def parts(message: dict[str, Any], **config: Any) -> list[Part]:
    return plan(Message.model_validate(message), settings(**config), context())


def body(message: dict[str, Any], **config: Any) -> dict[str, Any]:
    [only] = parts(message, **config)
    result: dict[str, Any] = orjson.loads(only.body)
    return result


RICH: dict[str, Any] = {
    "title": "Task daily_sales failed",
    "content": "**daily_sales** failed after 3 retries.\n\nSee the log.",
    "level": "error",
    "fields": {"Task": "daily_sales", "Duration": "3m12s"},
}
LINKED: dict[str, Any] = {
    **RICH,
    "links": [
        {"title": "Open", "url": "https://example.com/tasks/42"},
        {"title": "Run log", "url": "https://example.com/runs/7"},
    ],
}


def test_markdown_carries_title_level_colour_content_and_fields() -> None:
    sent = body(RICH)
    assert sent == {
        "touser": "ZhangSan",
        "msgtype": "markdown",
        "agentid": 1000002,
        "markdown": {
            "content": "### Task daily_sales failed\n\n"
            '<font color="warning">**❌ ERROR**</font>\n\n'
            "**daily_sales** failed after 3 retries.\n\nSee the log.\n\n"
            "> **Task**: daily_sales\n> **Duration**: 3m12s"
        },
        "enable_duplicate_check": 1,
        "duplicate_check_interval": 1800,
    }


def test_a_link_makes_a_text_card_that_opens_it() -> None:
    card = body(LINKED)["textcard"]
    assert card == {
        "title": "Task daily_sales failed",
        "description": '<div class="highlight">❌ ERROR</div>'
        '<div class="normal">daily_sales failed after 3 retries.\n\nSee the log.</div>'
        '<div class="gray">Task: daily_sales</div>'
        '<div class="gray">Duration: 3m12s</div>'
        '<div class="gray">Run log: https://example.com/runs/7</div>',
        "url": "https://example.com/tasks/42",
        "btntxt": "Open",
    }


def test_a_long_link_title_leaves_wecoms_own_button_text() -> None:
    card = body({"title": "t", "links": [{"title": "Open the task", "url": "https://e.com/"}]})
    assert "btntxt" not in card["textcard"]
    assert card["textcard"]["description"] == ""


def test_a_card_without_title_takes_the_first_line() -> None:
    card = body({"content": "disk full\nmore", "links": [{"title": "x", "url": "https://e.com"}]})
    assert card["textcard"]["title"] == "disk full"


def test_peers_D5_card_limits_are_kept_with_cjk_and_many_fields() -> None:
    card = body(
        {
            "title": "数据刷新失败" * 40,
            "content": "磁盘空间不足" * 300,
            "fields": {f"字段{i}": "值" * 200 for i in range(20)},
            "links": [{"title": "打开", "url": "https://example.com/t"}],
        }
    )["textcard"]
    assert len(card["title"]) <= 128 and card["title"].endswith("…")
    assert len(card["description"]) <= 512
    assert TRUNCATION_MARKER in card["description"]
    assert card["description"].endswith('<div class="gray">…</div>')
    assert card["btntxt"] == "打开"


def test_peers_D5_app_markdown_is_cut_to_2048_bytes_not_the_bots_4096() -> None:
    content = "磁盘空间不足" * 682 + "告警警告"
    markdown = body({"title": "告警", "content": content})["markdown"]["content"]
    size = len(markdown.encode("utf-8"))
    assert APP_MARKDOWN_MAX_BYTES - 3 <= size <= APP_MARKDOWN_MAX_BYTES == 2048
    assert markdown.startswith("### 告警\n\n磁盘空间不足") and markdown.endswith(TRUNCATION_MARKER)


def test_text_format_sends_text_within_2048_bytes() -> None:
    sent = body({"title": "Disk *full*", "content": "数据" * 2000, "format": "text"})
    assert sent["msgtype"] == "text"
    assert sent["text"]["content"].startswith("Disk *full*\n\n数据")
    assert len(sent["text"]["content"].encode()) <= 2048


def test_caller_text_cannot_break_markdown_or_the_card() -> None:
    markdown = body(
        {"title": 'Deploy <font color="info">ok</font>\n# x', "fields": {"**k**": "a\n> q"}}
    )["markdown"]["content"]
    assert "<font" not in markdown.split("\n\n", 1)[0] and "\n# x" not in markdown
    assert "> **＊＊k＊＊**: a > q" in markdown
    card = body(
        {
            "title": "<div>t</div>",
            "content": '</div><div class="highlight">fake</div>',
            "fields": {"k": "<b>v</b>"},
            "links": [{"title": "o", "url": "https://e.com"}],
        }
    )["textcard"]
    assert card["title"] == "＜div>t＜/div>"
    assert card["description"] == (
        '<div class="normal">＜/div>＜div class="highlight">fake＜/div></div>'
        '<div class="gray">k: ＜b>v＜/b></div>'
    )


def test_recipients_are_joined_with_bars_and_a_message_may_override_them() -> None:
    sent = body(RICH, to_user="ZhangSan|lisi", to_party=[1, "2"], to_tag=["7"])
    assert (sent["touser"], sent["toparty"], sent["totag"]) == ("ZhangSan|lisi", "1|2", "7")
    chosen = body({**RICH, "recipients": {"users": ["wangwu"], "tags": ["9"]}}, to_party=["1"])
    assert (chosen["touser"], chosen.get("toparty"), chosen["totag"]) == ("wangwu", None, "9")


def test_at_all_reaches_the_whole_visible_range_in_one_request() -> None:
    [only] = parts(RICH, to_user=["@all"], to_party=[str(i) for i in range(300)])
    assert orjson.loads(only.body)["touser"] == "@all"
    assert "toparty" not in orjson.loads(only.body)


def test_long_recipient_lists_are_split_at_wecoms_caps() -> None:
    users = [f"user{i}" for i in range(2500)]
    split = parts(
        RICH,
        to_user=users,
        to_party=[str(i) for i in range(150)],
        to_tag=["1"],
        chat_id="chat01",
    )
    assert [p.api for p in split] == ["message/send"] * 3 + ["appchat/send"]
    bodies = [orjson.loads(p.body) for p in split]
    assert [len(b["touser"].split("|")) for b in bodies[:3]] == [1000, 1000, 500]
    assert [len(b.get("toparty", "").split("|")) for b in bodies[:2]] == [100, 50]
    assert "toparty" not in bodies[2] and "totag" not in bodies[1]
    assert [u for b in bodies[:3] for u in b["touser"].split("|")] == users
    assert bodies[3] == {
        "chatid": "chat01",
        "msgtype": "markdown",
        "markdown": bodies[0]["markdown"],
    }


def test_rendering_is_byte_identical_on_every_attempt_of_a_delivery() -> None:
    """WeCom's duplicate check compares request bodies: a retry must send the same bytes."""
    message = Message.model_validate({**LINKED, "recipients": {"users": ["b", "a", "b"]}})
    first = plan(message, settings(), context())
    again = plan(message, settings(), SendContext("dlv_test", 7, _no_exchange))
    assert [p.body for p in first] == [p.body for p in again]
    assert orjson.loads(first[0].body)["touser"] == "b|a"


def test_test_push_and_a_zero_interval_skip_the_duplicate_check() -> None:
    message = Message(title="t")
    for sent in (
        plan(message, settings(), context(is_test=True))[0],
        plan(message, settings(duplicate_check_interval=0), context())[0],
    ):
        assert "enable_duplicate_check" not in orjson.loads(sent.body)
    custom = orjson.loads(plan(message, settings(duplicate_check_interval=600), context())[0].body)
    assert custom["duplicate_check_interval"] == 600


def test_settings_parse_and_validate() -> None:
    parsed = settings(agent_id="1000005", to_user="a|b, c", to_party="3|4", secret=" s ")
    assert (parsed.agent_id, parsed.to_user, parsed.to_party) == (
        1000005,
        ["a", "b", "c"],
        ["3", "4"],
    )
    assert parsed.secret.get_secret_value() == "s"
    assert settings(api_base="http://127.0.0.1:8080/wecom/").api_base == (
        "http://127.0.0.1:8080/wecom"
    )
    for bad, field in [
        ({"to_party": ["ops"]}, "to_party"),
        ({"to_tag": ["1|2x"]}, "to_tag"),
        ({"to_user": ["zhang san"]}, "to_user"),
        ({"chat_id": "not-a-chat!"}, "chat_id"),
        ({"api_base": "http://qyapi.weixin.qq.com"}, "api_base"),
        ({"api_base": "ftp://x"}, "api_base"),
        ({"duplicate_check_interval": 14_401}, "duplicate_check_interval"),
        ({"agent_id": 0}, "agent_id"),
    ]:
        with pytest.raises(ValidationError) as caught:
            settings(**bad)
        assert caught.value.errors()[0]["loc"][0] == field


def test_a_channel_needs_a_default_recipient() -> None:
    with pytest.raises(ValueError, match="to_user"):
        CHANNEL_TYPE.check(WeComAppSettings(corp_id="ww1", agent_id=1, secret=SecretStr("s")))
    CHANNEL_TYPE.check(settings(chat_id="abc"))


def test_the_type_describes_its_secret_and_limits() -> None:
    description = CHANNEL_TYPE.describe()
    assert description["secret_fields"] == ["secret"]
    assert description["limits"]["rate"] == {"per_minute": 30, "per_hour": 1000}
    assert description["limits"]["size_bytes"]["markdown"] == 2048
    assert CHANNEL_TYPE.secret_values(settings()) == ["s3cr3t-value"]


# -- reading answers ----------------------------------------------------------------------------

HINT = ", hint: [1708397705432012366598976], from ip: 218.72.126.124, more info at https://open.work.weixin.qq.com/devtool/query?e="


def answer(code: int | str, errmsg: str, status: int = 200, **extra: Any) -> VendorResponse:
    data = orjson.dumps({"errcode": code, "errmsg": errmsg, **extra})
    return VendorResponse(status, {"content-type": "application/json"}, data)


SEND_KINDS: dict[int, tuple[str, float | None]] = {
    40014: ("refresh_token", None),
    42001: ("refresh_token", None),
    42007: ("refresh_token", None),
    42009: ("refresh_token", None),
    40001: ("refresh_token", None),
    41001: ("failed", None),
    81013: ("failed", None),
    82001: ("failed", None),
    40008: ("failed", None),
    44004: ("failed", None),
    45002: ("failed", None),
    40056: ("failed", None),
    40058: ("failed", None),
    48002: ("failed", None),
    60011: ("failed", None),
    60020: ("failed", None),
    45009: ("retry", 60.0),
    45033: ("retry", None),
    -1: ("retry", None),
    86003: ("failed", None),
    86001: ("failed", None),
    40050: ("failed", None),
}
TOKEN_KINDS: dict[int, tuple[str, float | None]] = {
    40013: ("failed", None),
    40001: ("failed", None),
    40091: ("failed", None),
    41002: ("failed", None),
    41004: ("failed", None),
    60020: ("failed", None),
    -1: ("retry", None),
    45009: ("retry", 60.0),
    45033: ("retry", None),
}


def test_the_tables_are_exactly_what_is_tested() -> None:
    assert set(SEND_ERRORS) | set(CHAT_ERRORS) == set(SEND_KINDS)
    assert set(TOKEN_ERRORS) == set(TOKEN_KINDS)


@pytest.mark.parametrize(("code", "expected"), SEND_KINDS.items())
def test_every_send_code_is_classified_with_a_clean_diagnosis(
    code: int, expected: tuple[str, float | None]
) -> None:
    raw = f"some message{HINT}{code}"
    outcome = read_answer(
        answer(code, raw),
        SEND_ERRORS | CHAT_ERRORS,
        settings(),
        api="message/send",
        msgtype="markdown",
        chat="chat01",
        recipients="users ZhangSan",
    )
    assert (outcome.kind, outcome.retry_after_s) == expected
    assert (outcome.vendor_code, outcome.vendor_message) == (str(code), raw)
    diagnosis = outcome.diagnosis or ""
    assert "some message" in diagnosis and "hint" not in diagnosis and "{" not in diagnosis
    if outcome.kind == "refresh_token":  # which token code it was
        assert diagnosis.endswith(f"(code {code})")


def test_http_401_without_a_code_refreshes_the_token_once() -> None:
    outcome = read_answer(
        VendorResponse(401, {}, b"Unauthorized"), SEND_ERRORS, settings(), api="message/send"
    )
    assert (outcome.kind, outcome.status_code) == ("refresh_token", 401)
    assert "HTTP 401" in (outcome.diagnosis or "")


@pytest.mark.parametrize(("code", "expected"), TOKEN_KINDS.items())
def test_every_gettoken_code_is_classified(code: int, expected: tuple[str, float | None]) -> None:
    outcome, token = read_token(answer(code, f"msg{HINT}{code}"), settings())
    assert token is None
    assert (outcome.kind, outcome.retry_after_s) == expected
    assert "msg" in (outcome.diagnosis or "") and "{" not in (outcome.diagnosis or "")


def test_a_wrong_secret_at_gettoken_says_so_and_where_to_find_the_secret() -> None:
    outcome, _ = read_token(answer(40001, "invalid credential"), settings())
    assert outcome.kind == "failed"
    assert (outcome.diagnosis or "").startswith("wrong secret (invalid credential)")
    assert "App Management (应用管理) > the app > Secret" in (outcome.diagnosis or "")


def test_60020_quotes_the_ip_wecom_saw() -> None:
    outcome = read_answer(
        answer(60020, f"not allow to access from your ip{HINT}60020"), SEND_ERRORS, settings()
    )
    assert "add 218.72.126.124" in (outcome.diagnosis or "")
    assert "Enterprise Trusted IP (企业可信IP)" in (outcome.diagnosis or "")
    bare = read_answer(answer(60020, "not allow to access from your ip"), SEND_ERRORS, settings())
    assert "the egress IP of msgpush's host" in (bare.diagnosis or "")


def test_peers_D1_expires_in_is_read_and_defaults_to_7200() -> None:
    ok = {"errcode": 0, "errmsg": "ok", "access_token": "tok"}
    for extra, lifetime in [
        ({"expires_in": 7000}, 7000.0),
        ({"expires_in": "300"}, 300.0),
        ({}, 7200.0),
        ({"expire_in": 5}, 7200.0),
    ]:
        outcome, token = read_token(
            VendorResponse(200, {}, orjson.dumps({**ok, **extra})), settings()
        )
        assert outcome.kind == "delivered" and token is not None
        assert (token.token, token.expires_in_s) == ("tok", lifetime)


def test_peers_D12_an_empty_token_is_never_used() -> None:
    for missing in ({}, {"access_token": ""}, {"access_token": None}):
        data = orjson.dumps({"errcode": 0, "errmsg": "ok", **missing})
        outcome, token = read_token(VendorResponse(200, {}, data), settings())
        assert token is None and outcome.kind == "failed"


def test_peers_D2_D14_http_200_without_errcode_0_is_not_success() -> None:
    html = CHANNEL_TYPE.classify(VendorResponse(200, {}, b"<html>login</html>"))
    assert html.kind == "failed" and "api_base" in (html.diagnosis or "")
    assert CHANNEL_TYPE.classify(VendorResponse(502, {}, b"bad gateway")).kind == "retry"
    assert CHANNEL_TYPE.classify(answer(81013, "user & party & tag all invalid")).kind == "failed"
    assert CHANNEL_TYPE.classify(answer(0, "ok")).kind == "delivered"


def test_invalid_users_are_named_as_the_caller_wrote_them() -> None:
    """WeCom lower-cases the user ids it lists; the warning names them as sent."""
    part = Part("message/send", b"", "markdown", users=("ZhangSan", "Ghost"), parties=("9",))
    rejected = Rejected()
    rejected.add(
        {
            "invaliduser": "ghost",
            "invalidparty": "9",
            "invalidtag": "",
            "unlicenseduser": "zhangsan",
        },
        part,
    )
    warning = rejected.warning() or ""
    assert "users Ghost; departments 9" in warning
    assert "unlicensed users (no active WeCom account license, 未激活/无许可): ZhangSan" in warning


# -- end to end through a msgpush server --------------------------------------------------------


def make_channel(
    api: httpx.Client, wecom: FakeWeComApp, app: WeComApp, name: str, **config: Any
) -> dict[str, Any]:
    if not {"to_user", "to_party", "to_tag", "chat_id"} & set(config):
        config["to_user"] = ["ZhangSan"]
    response = api.post(
        "/channels",
        json={"name": name, "type": "wecom_app", "config": app_config(wecom, app, **config)},
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def app_config(wecom: FakeWeComApp, app: WeComApp, **config: Any) -> dict[str, Any]:
    return {
        "corp_id": app.corp_id,
        "agent_id": app.agent_id,
        "secret": app.secret,
        "api_base": wecom.api_base,
        **config,
    }


def deliver(api: httpx.Client, channel: str, **message: Any) -> dict[str, Any]:
    return wait_delivery(api, send(api, [channel], **message)["deliveries"][0]["id"])


def test_delivers_a_text_card_to_the_default_user(
    api: httpx.Client, wecom: FakeWeComApp, unique: str
) -> None:
    app = wecom.new_app()
    make_channel(api, wecom, app, f"wa-card-{unique}")
    final = deliver(api, f"wa-card-{unique}", **LINKED)
    assert final["status"] == "delivered" and final["warning"] is None
    [message] = wecom.messages_for(app)
    assert (message.api, message.msgtype, message.users) == (
        "message/send",
        "textcard",
        ["ZhangSan"],
    )
    assert message.body["url"] == "https://example.com/tasks/42"
    [attempt] = final["attempt_log"]
    assert (attempt["status_code"], attempt["vendor_code"]) == (200, "0")
    assert [e["url"].split("?")[0].rsplit("/", 1)[1] for e in attempt["request"]] == [
        "gettoken",
        "send",
    ]


def test_a_message_overrides_the_channels_recipients(
    api: httpx.Client, wecom: FakeWeComApp, unique: str
) -> None:
    app = wecom.new_app(users=["ZhangSan", "lisi", "wangwu"], parties={"5": ["wangwu"]})
    make_channel(api, wecom, app, f"wa-over-{unique}", to_user=["ZhangSan"])
    final = deliver(api, f"wa-over-{unique}", recipients={"users": ["lisi"], "departments": ["5"]})
    assert final["status"] == "delivered"
    [message] = wecom.messages_for(app)
    assert (message.msgtype, sorted(message.users)) == ("markdown", ["lisi", "wangwu"])


def test_partial_success_is_delivered_with_a_warning_naming_who_missed_it(
    api: httpx.Client, wecom: FakeWeComApp, unique: str
) -> None:
    app = wecom.new_app(users=["ZhangSan", "lisi", "Temp01"], unlicensed=["Temp01"])
    name = f"wa-part-{unique}"
    make_channel(
        api, wecom, app, name, to_user=["ZhangSan", "GhostUser", "Temp01"], to_party=["42"]
    )
    final = deliver(api, name)
    assert final["status"] == "delivered"
    assert final["warning"] == (
        "WeCom did not deliver to some recipients, which do not exist or are outside the app's "
        "visible range (可见范围): users GhostUser; departments 42; WeCom did not deliver to "
        "unlicensed users (no active WeCom account license, 未激活/无许可): Temp01"
    )
    [message] = wecom.messages_for(app)
    assert message.users == ["ZhangSan"]
    response = orjson.loads(final["attempt_log"][0]["request"][-1]["response"])
    assert response["invaliduser"] == "ghostuser"  # lower-cased by WeCom, as sent in the warning


def test_all_recipients_invalid_fails_with_81013_and_a_diagnosis(
    api: httpx.Client, wecom: FakeWeComApp, unique: str
) -> None:
    app = wecom.new_app()
    make_channel(api, wecom, app, f"wa-none-{unique}", to_user=["nobody"], to_tag=["3"])
    final = deliver(api, f"wa-none-{unique}")
    assert final["status"] == "failed"
    [attempt] = final["attempt_log"]
    assert attempt["vendor_code"] == "81013"
    assert attempt["diagnosis"].startswith(
        "Sending failed: none of the recipients (users nobody; tags 3) can get messages from "
        "this app (user & party & tag all invalid): each must exist and be inside the app's "
        "visible range (可见范围)"
    )
    assert wecom.messages_for(app) == []


def test_long_recipient_lists_reach_everyone_exactly_once(
    api: httpx.Client, wecom: FakeWeComApp, unique: str
) -> None:
    users = [f"u{i:04d}" for i in range(2100)]
    app = wecom.new_app(users=users)
    make_channel(api, wecom, app, f"wa-split-{unique}", to_user=users)
    final = deliver(api, f"wa-split-{unique}", title="to everyone")
    assert final["status"] == "delivered" and final["warning"] is None
    messages = wecom.messages_for(app)
    assert [len(m.users) for m in messages] == [1000, 1000, 100]
    assert sorted(u for m in messages for u in m.users) == users


def test_a_retry_after_a_lost_answer_does_not_notify_twice(
    api: httpx.Client, wecom: FakeWeComApp, unique: str
) -> None:
    """The first request reached WeCom but its answer was lost: the retry sends the same bytes
    with enable_duplicate_check, and WeCom keeps the repeat back."""
    users = [f"u{i:04d}" for i in range(1500)]
    app = wecom.new_app(users=users)
    make_channel(api, wecom, app, f"wa-dup-{unique}", to_user=users)
    wecom.deliver_then_fail(app, 502)
    final = deliver(api, f"wa-dup-{unique}", **RICH)
    assert final["status"] == "delivered"
    first, second = final["attempt_log"]
    assert (first["outcome"], first["status_code"]) == ("retry", 502)
    assert first["diagnosis"].startswith("Sending failed (users u0000, u0001")
    # the token is cached by now: the retry starts with the repeat, byte for byte
    assert first["request"][1]["body"] == second["request"][0]["body"]
    assert [len(m.users) for m in wecom.messages_for(app)] == [1000, 500]
    assert [
        len(orjson.loads(m.raw)["touser"].split("|"))
        for m in wecom.suppressed
        if m.corp_id == app.corp_id
    ] == [1000]
    for user in ("u0000", "u0999", "u1000", "u1499"):
        assert len(wecom.received(app, user)) == 1


def test_group_chats_get_it_through_appchat_send_after_the_users(
    api: httpx.Client, wecom: FakeWeComApp, unique: str
) -> None:
    app = wecom.new_app(chats={"opschat": ["ZhangSan", "lisi"]})
    make_channel(api, wecom, app, f"wa-chat-{unique}", to_user=["lisi"], chat_id="opschat")
    final = deliver(api, f"wa-chat-{unique}", **LINKED)
    assert final["status"] == "delivered"
    to_users, to_chat = wecom.messages_for(app)
    assert (to_users.api, to_users.users) == ("message/send", ["lisi"])
    assert (to_chat.api, to_chat.chat, to_chat.msgtype) == ("appchat/send", "opschat", "textcard")
    assert "enable_duplicate_check" not in orjson.loads(to_chat.raw)

    only_chat = deliver(api, f"wa-chat-{unique}", recipients={"chats": ["opschat"]})
    assert only_chat["status"] == "delivered"
    assert wecom.messages_for(app)[-1].api == "appchat/send"


def test_an_unknown_chat_fails_alone_and_others_still_get_it(
    api: httpx.Client, wecom: FakeWeComApp, unique: str
) -> None:
    app = wecom.new_app(chats={"opschat": ["lisi"]})
    make_channel(api, wecom, app, f"wa-nochat-{unique}", chat_id="oldgroup")
    failed = deliver(api, f"wa-nochat-{unique}")
    assert failed["status"] == "failed"
    assert failed["error"].startswith(
        "Sending failed: WeCom does not know chat oldgroup (chatid not exist): appchat/send only "
        "reaches group chats this app created itself"
    )
    mixed = deliver(
        api, f"wa-nochat-{unique}", recipients={"users": ["lisi"], "chats": ["gone", "opschat"]}
    )
    assert mixed["status"] == "delivered"
    assert (
        "group chats (appchat/send reaches only chats this app created): gone" in mixed["warning"]
    )
    assert [m.api for m in wecom.messages_for(app)] == ["message/send", "appchat/send"]
    none = deliver(api, f"wa-nochat-{unique}", recipients={"chats": ["gone1", "gone2"]})
    assert none["status"] == "failed"
    assert none["error"].startswith(
        "Sending failed: chat gone1: WeCom does not know chat gone1 (chatid not exist)"
    )
    assert "; chat gone2: WeCom does not know chat gone2" in none["error"]


def test_appchat_needs_the_whole_company_as_visible_range(
    api: httpx.Client, wecom: FakeWeComApp, unique: str
) -> None:
    app = wecom.new_app(chats={"opschat": ["lisi"]}, appchat_allowed=False)
    make_channel(api, wecom, app, f"wa-48002-{unique}", chat_id="opschat")
    final = deliver(api, f"wa-48002-{unique}")
    assert final["status"] == "failed"
    assert final["attempt_log"][0]["vendor_code"] == "48002"
    assert "root department" in final["error"]


def test_mentions_are_not_a_thing_in_app_messages_and_the_delivery_says_so(
    api: httpx.Client, wecom: FakeWeComApp, unique: str
) -> None:
    app = wecom.new_app()
    make_channel(api, wecom, app, f"wa-at-{unique}")
    final = deliver(
        api,
        f"wa-at-{unique}",
        mentions={"user_ids": ["lisi"]},
        recipients={"users": ["a|b", "lisi"]},
    )
    assert final["status"] == "delivered"
    assert "has no @mentions" in final["warning"]
    assert "recipients that are not WeCom ids were left out: user 'a|b'" in final["warning"]


# -- tokens -------------------------------------------------------------------------------------


def test_peers_D1_D9_a_hundred_messages_fetch_one_token(
    api: httpx.Client, wecom: FakeWeComApp, unique: str
) -> None:
    """Four channels on one app (each to its own member, under the per-member limit) share the
    app's token: 100 messages, one gettoken."""
    users = ["u1", "u2", "u3", "u4"]
    app = wecom.new_app(users=users)
    for user in users:
        make_channel(api, wecom, app, f"wa-100-{user}-{unique}", to_user=[user])
    messages = [
        {"channels": [f"wa-100-{users[i % 4]}-{unique}"], "title": f"#{i}"} for i in range(100)
    ]
    accepted = api.post("/messages/batch", json={"messages": messages})
    assert accepted.status_code == 202, accepted.text
    for item in accepted.json()["items"]:
        assert wait_delivery(api, item["deliveries"][0]["id"])["status"] == "delivered"
    assert wecom.gettoken_calls(app) == 1
    assert len(wecom.messages_for(app)) == 100
    assert [d for d in wecom.dropped if d[0] == app.corp_id] == []


def test_a_token_revoked_mid_burst_is_refreshed_once(
    api: httpx.Client, wecom: FakeWeComApp, unique: str
) -> None:
    users = ["u1", "u2"]
    app = wecom.new_app(users=users)
    for user in users:
        make_channel(api, wecom, app, f"wa-rev-{user}-{unique}", to_user=[user])

    def burst(start: int) -> list[str]:
        messages = [
            {"channels": [f"wa-rev-{users[i % 2]}-{unique}"], "title": f"#{i}"}
            for i in range(start, start + 20)
        ]
        answer_ = api.post("/messages/batch", json={"messages": messages}).json()
        return [item["deliveries"][0]["id"] for item in answer_["items"]]

    ids = burst(0)
    wecom.wait_messages(app, 8)
    old = wecom.current_token(app)
    wecom.revoke(app)
    ids += burst(20)
    finals = [wait_delivery(api, delivery_id) for delivery_id in ids]
    assert {f["status"] for f in finals} == {"delivered"}
    assert wecom.gettoken_calls(app) == 2
    assert wecom.current_token(app) != old
    assert len(wecom.messages_for(app)) == 40
    refreshed = [
        f
        for f in finals
        if any('errcode":40014' in e.get("response", "") for e in f["attempt_log"][0]["request"])
    ]
    assert refreshed, "some sends met the revoked token"


@pytest.mark.parametrize(("how", "code"), [("expire", "42001"), ("fault", "40001")])
def test_peers_D12_a_stale_token_is_refreshed_and_the_send_repeated_at_once(
    api: httpx.Client, wecom: FakeWeComApp, unique: str, how: str, code: str
) -> None:
    app = wecom.new_app()
    name = f"wa-stale-{how}-{unique}"
    make_channel(api, wecom, app, name)
    assert deliver(api, name)["status"] == "delivered"
    if how == "expire":
        wecom.expire(app)
    else:
        wecom.fail_next(
            40001,
            "invalid credential, access_token is invalid or not latest",
            api="message/send",
            app=app,
        )
    final = deliver(api, name)
    assert final["status"] == "delivered"
    [attempt] = final["attempt_log"]
    steps = [e["url"].split("?")[0].rsplit("/", 1)[1] for e in attempt["request"]]
    assert steps == ["send", "gettoken", "send"]
    assert f'"errcode":{code}' in attempt["request"][0]["response"]
    assert wecom.gettoken_calls(app) == 2  # on 40001 WeCom may well hand out the same token


def test_a_token_refused_twice_becomes_a_retry(
    api: httpx.Client, wecom: FakeWeComApp, unique: str
) -> None:
    app = wecom.new_app()
    make_channel(api, wecom, app, f"wa-twice-{unique}")
    wecom.fail_next(40014, "invalid access_token", api="message/send", app=app, times=2)
    final = deliver(api, f"wa-twice-{unique}")
    assert final["status"] == "delivered"
    first, second = final["attempt_log"]
    assert first["outcome"] == "retry"
    assert first["diagnosis"].startswith("Sending failed: WeCom refused the access token")
    assert second["outcome"] == "delivered"


@pytest.mark.parametrize(
    ("breakage", "code", "expected"),
    [
        ("corp", "40013", "WeCom does not know corp_id"),
        ("secret", "40001", "wrong secret (invalid credential)"),
        ("other-secret", "40091", "the secret belongs to another company"),
    ],
)
def test_peers_D12_bad_credentials_fail_at_gettoken_and_nothing_is_sent(
    api: httpx.Client, wecom: FakeWeComApp, unique: str, breakage: str, code: str, expected: str
) -> None:
    app = wecom.new_app()
    other = wecom.new_app()
    config = {
        "corp": {"corp_id": "wwunknown" + unique},
        "secret": {"secret": "not-the-secret"},
        "other-secret": {"secret": other.secret},
    }[breakage]
    make_channel(api, wecom, app, f"wa-cred-{breakage}-{unique}", **config)
    final = deliver(api, f"wa-cred-{breakage}-{unique}")
    assert final["status"] == "failed"
    [attempt] = final["attempt_log"]
    assert attempt["vendor_code"] == code
    assert attempt["diagnosis"].startswith(f"Credentials check failed (gettoken): {expected}")
    assert [e["url"].split("?")[0].rsplit("/", 1)[1] for e in attempt["request"]] == ["gettoken"]
    assert wecom.messages_for(app) == []


@pytest.mark.parametrize(
    ("code", "errmsg", "expected"),
    [
        (41002, "corpid missing", "received no corpid"),
        (41004, "corpsecret missing", "received no corpsecret"),
        (60020, "not allow to access from your ip", "add 127.0.0.1"),
    ],
)
def test_gettoken_failures_are_diagnosed(
    api: httpx.Client, wecom: FakeWeComApp, unique: str, code: int, errmsg: str, expected: str
) -> None:
    app = wecom.new_app()
    make_channel(api, wecom, app, f"wa-tok-{code}-{unique}")
    wecom.fail_next(code, errmsg, api="gettoken", app=app)
    final = deliver(api, f"wa-tok-{code}-{unique}")
    assert final["status"] == "failed"
    assert final["attempt_log"][0]["vendor_code"] == str(code)
    assert final["error"].startswith("Credentials check failed (gettoken): ")
    assert expected in final["error"]


def test_a_busy_gettoken_is_retried(api: httpx.Client, wecom: FakeWeComApp, unique: str) -> None:
    app = wecom.new_app()
    make_channel(api, wecom, app, f"wa-tokbusy-{unique}")
    wecom.fail_next(-1, "system busy", api="gettoken", app=app)
    final = deliver(api, f"wa-tokbusy-{unique}")
    assert final["status"] == "delivered"
    assert final["attempt_log"][0]["diagnosis"] == (
        "Credentials check failed (gettoken): WeCom is busy (system busy); will retry"
    )


# -- send errors --------------------------------------------------------------------------------

PERMANENT = [
    (41001, "access_token missing", "drops the query string"),
    (40008, "invalid message type", "does not accept the markdown message type"),
    (44004, "empty content", "is empty"),
    (45002, "content size out of limit", "too large"),
    (40056, "invalid agentid", "is not valid for this Secret"),
    (
        40058,
        "markdown.content exceed max length 1024. invalid Request Parameter",
        "rejected a field",
    ),
    (48002, "api forbidden", "does not let this app call message/send"),
    (60011, "no privilege to access/modify contact/party/agent", "visible range"),
    (82001, "All touser & toparty & totag invalid", "none of the recipients (users ZhangSan)"),
]


@pytest.mark.parametrize(("code", "errmsg", "expected"), PERMANENT)
def test_permanent_send_codes_fail_at_once_with_a_diagnosis(
    api: httpx.Client, wecom: FakeWeComApp, unique: str, code: int, errmsg: str, expected: str
) -> None:
    app = wecom.new_app()
    make_channel(api, wecom, app, f"wa-perm-{code}-{unique}")
    wecom.fail_next(code, errmsg, api="message/send", app=app)
    final = deliver(api, f"wa-perm-{code}-{unique}")
    assert final["status"] == "failed"
    [attempt] = final["attempt_log"]
    assert attempt["vendor_code"] == str(code)
    assert attempt["vendor_message"].startswith(f"{errmsg}, hint: [")
    assert attempt["diagnosis"].startswith("Sending failed: ")
    assert expected in attempt["diagnosis"] and errmsg in attempt["diagnosis"]
    assert "hint" not in attempt["diagnosis"]
    assert wecom.messages_for(app) == []


@pytest.mark.parametrize(
    ("code", "errmsg", "expected"),
    [(-1, "system busy", "busy"), (45033, "api concurrent out of limit", "concurrent")],
)
def test_retryable_send_codes_retry_then_deliver(
    api: httpx.Client, wecom: FakeWeComApp, unique: str, code: int, errmsg: str, expected: str
) -> None:
    app = wecom.new_app()
    make_channel(api, wecom, app, f"wa-retry-{code}-{unique}")
    wecom.fail_next(code, errmsg, api="message/send", app=app)
    final = deliver(api, f"wa-retry-{code}-{unique}")
    assert final["status"] == "delivered"
    first, _ = final["attempt_log"]
    assert (first["outcome"], first["vendor_code"]) == ("retry", str(code))
    assert expected in first["diagnosis"]
    assert len(wecom.messages_for(app)) == 1


def test_a_rate_limited_app_waits_for_wecoms_window(
    api: httpx.Client, wecom: FakeWeComApp, unique: str
) -> None:
    app = wecom.new_app()
    make_channel(api, wecom, app, f"wa-45009-{unique}")
    wecom.fail_next(45009, "api freq out of limit", api="message/send", app=app)
    delivery_id = send(api, [f"wa-45009-{unique}"])["deliveries"][0]["id"]
    final = wait_delivery(api, delivery_id, ("retrying",))
    [attempt] = final["attempt_log"]
    assert attempt["vendor_code"] == "45009" and "60 s window" in attempt["diagnosis"]
    wait_s = time.mktime(
        time.strptime(attempt["next_attempt_at"][:19], "%Y-%m-%dT%H:%M:%S")
    ) - time.mktime(time.strptime(attempt["started_at"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert 58 <= wait_s <= 62
    api.delete(f"/channels/wa-45009-{unique}")


def test_untrusted_ip_names_the_address_to_add(
    api: httpx.Client, wecom: FakeWeComApp, unique: str
) -> None:
    app = wecom.new_app(trusted_ips={"203.0.113.7"})
    make_channel(api, wecom, app, f"wa-ip-{unique}")
    final = deliver(api, f"wa-ip-{unique}")
    assert final["status"] == "failed"
    assert final["attempt_log"][0]["vendor_code"] == "60020"
    assert final["error"] == (
        "Sending failed: WeCom refused the call from IP 127.0.0.1 (not allow to access from "
        "your ip, 60020): a self-built app only accepts API calls from its trusted IPs. In the "
        "WeCom admin console open App Management (应用管理) > the app > Enterprise Trusted IP "
        "(企业可信IP) > Configure (配置) and add 127.0.0.1, the address WeCom sees msgpush's "
        "requests come from. If that address changes, send through a proxy with a fixed egress "
        "IP and point api_base at it"
    )


# -- Test Push ----------------------------------------------------------------------------------


def test_test_push_with_unsaved_settings(api: httpx.Client, wecom: FakeWeComApp) -> None:
    app = wecom.new_app()
    config = app_config(wecom, app, to_user=["lisi"])
    for _ in range(2):  # a test is meant to arrive every time: no duplicate check
        good = api.post("/channels/test", json={"type": "wecom_app", "config": config})
        assert good.status_code == 200, good.text
        assert good.json()["ok"] is True and good.json()["vendor_code"] == "0"
    assert [m.users for m in wecom.received(app, "lisi")] == [["lisi"], ["lisi"]]
    assert wecom.messages_for(app)[0].content.startswith("### msgpush Test Push")

    wrong = api.post(
        "/channels/test",
        json={"type": "wecom_app", "config": {**config, "secret": "wrong-secret"}},
    ).json()
    assert (wrong["ok"], wrong["status_code"], wrong["vendor_code"]) == (False, 200, "40001")
    assert wrong["diagnosis"].startswith("Credentials check failed (gettoken): wrong secret")

    nobody = api.post(
        "/channels/test",
        json={"type": "wecom_app", "config": {**config, "to_user": ["nobody"]}},
    ).json()
    assert (nobody["ok"], nobody["vendor_code"]) == (False, "81013")
    assert nobody["diagnosis"].startswith("Sending failed: none of the recipients (users nobody)")
    assert app.secret not in good.text + str(wrong) + str(nobody)


def test_test_push_on_a_saved_channel(api: httpx.Client, wecom: FakeWeComApp, unique: str) -> None:
    app = wecom.new_app(users=["ZhangSan", "lisi"])
    make_channel(api, wecom, app, f"wa-test-{unique}", to_user=["ZhangSan", "ghost"])
    ok = api.post(f"/channels/wa-test-{unique}/test").json()
    assert ok["ok"] is True
    assert ok["diagnosis"].startswith("WeCom did not deliver to some recipients")
    wecom.fail_next(40056, "invalid agentid", api="message/send", app=app)
    failed = api.post(f"/channels/wa-test-{unique}/test").json()
    assert (failed["ok"], failed["vendor_code"]) == (False, "40056")
    assert failed["diagnosis"].startswith(
        f"Sending failed: WeCom says agent_id {app.agent_id} is not valid for this Secret"
    )
    assert api.get(f"/channels/wa-test-{unique}").json()["last_test"]["vendor_code"] == "40056"


# -- secrets ------------------------------------------------------------------------------------


def test_peers_D9_D10_the_secret_never_leaves_the_server(
    api: httpx.Client, server: ServerProcess, wecom: FakeWeComApp, unique: str
) -> None:
    app = wecom.new_app()
    name = f"wa-secret-{unique}"
    created = make_channel(api, wecom, app, name)
    assert created["config"]["secret"].startswith("••••")
    patched = api.patch(
        f"/channels/{name}", json={"config": {**created["config"], "to_user": ["lisi"]}}
    )
    assert patched.status_code == 200, patched.text
    ok = deliver(api, name)
    assert ok["status"] == "delivered"  # the masked secret sent back kept the stored one
    wecom.fail_next(40058, f"echo {app.secret}", api="message/send", app=app)
    failed = deliver(api, name)
    assert failed["status"] == "failed"
    seen = [
        api.get(f"/channels/{name}").text,
        api.get(f"/deliveries/{ok['id']}").text,
        api.get(f"/deliveries/{failed['id']}").text,
        api.post(f"/channels/{name}/test").text,
        server.log(),
    ]
    for text in seen:
        assert app.secret not in text
    token = wecom.current_token(app)
    assert token is not None and token not in server.log()
    gettoken = ok["attempt_log"][0]["request"][0]
    assert gettoken["url"].endswith(f"/cgi-bin/gettoken?corpid={app.corp_id}&corpsecret=••••")
    send_url = ok["attempt_log"][0]["request"][1]["url"]
    assert send_url.endswith("/cgi-bin/message/send?access_token=••••")


def test_peers_D9_D10_the_access_token_never_leaves_the_server(
    api: httpx.Client, server: ServerProcess, wecom: FakeWeComApp, unique: str
) -> None:
    app = wecom.new_app()
    name = f"wa-token-{unique}"
    make_channel(api, wecom, app, name)
    final = deliver(api, name)
    test = api.post(f"/channels/{name}/test").text
    token = wecom.current_token(app)
    assert token is not None
    assert token not in api.get(f"/deliveries/{final['id']}").text
    assert token not in test


# -- API surface --------------------------------------------------------------------------------


def test_channel_type_is_listed(api: httpx.Client) -> None:
    types = {t["type"]: t for t in api.get("/channel-types").json()["items"]}
    wecom_app = types["wecom_app"]
    assert wecom_app["secret_fields"] == ["secret"]
    assert wecom_app["limits"]["rate"] == {"per_minute": 30, "per_hour": 1000}
    assert set(wecom_app["schema"]["required"]) == {"corp_id", "agent_id", "secret"}


@pytest.mark.parametrize(
    ("config", "field"),
    [({}, "config.to_user"), ({"to_user": ["a"], "chat_id": "bad chat"}, "config.chat_id")],
)
def test_bad_settings_are_422_naming_the_field(
    api: httpx.Client, unique: str, config: dict[str, Any], field: str
) -> None:
    response = api.post(
        "/channels",
        json={
            "name": f"wa-bad-{unique}",
            "type": "wecom_app",
            "config": {"corp_id": "ww1", "agent_id": 1, "secret": "s", **config},
        },
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


# -- bursts and processes -----------------------------------------------------------------------


def test_a_burst_to_one_member_stays_under_wecoms_silent_drop_limit(
    make_server: Callable[..., ServerProcess], unique: str
) -> None:
    """35 messages to one member: WeCom would drop the 31st silently; msgpush waits instead."""
    fake = FakeWeComApp(window_s=3.0, hour_window_s=180.0).start()  # 60 s and 1 h scaled by 0.05
    try:
        server = make_server(MSGPUSH_RATE_WINDOW_SCALE="0.05")
        with server.client() as api:
            app = fake.new_app()
            # the token first (a Test Push to someone else): the engine's pacer stamps a send
            # before the channel fetches its token, so a slow first gettoken would delay the
            # first sends' arrival and bunch them with the next window's (see the report)
            config = app_config(fake, app, to_user=["lisi"])
            assert api.post("/channels/test", json={"type": "wecom_app", "config": config}).json()[
                "ok"
            ]
            make_channel(api, fake, app, f"wa-burst-{unique}")
            started = time.monotonic()
            messages = [{"channels": [f"wa-burst-{unique}"], "title": f"#{i}"} for i in range(35)]
            items = api.post("/messages/batch", json={"messages": messages}).json()["items"]
            for item in items:
                assert wait_delivery(api, item["deliveries"][0]["id"])["status"] == "delivered"
            assert time.monotonic() - started >= 3.0
        assert fake.dropped == []
        assert len(fake.received(app, "ZhangSan")) == 35
        assert fake.gettoken_calls(app) == 1
    finally:
        fake.stop()


def test_two_processes_on_one_database_share_one_token(
    make_server: Callable[..., ServerProcess], wecom: FakeWeComApp, unique: str
) -> None:
    first = make_server()
    second = ServerProcess(
        first.data_dir, database_url=first.database_url, admin_token=first.admin_token
    )
    try:
        second.start()
        users = ["u1", "u2", "u3", "u4"]
        app = wecom.new_app(users=users)
        with first.client() as api_one, second.client() as api_two:
            for user in users:
                make_channel(api_one, wecom, app, f"wa-proc-{user}-{unique}", to_user=[user])
            ids = []
            for i in range(40):
                client = api_one if i % 2 else api_two
                ids.append(
                    send(client, [f"wa-proc-{users[i % 4]}-{unique}"], title=f"#{i}")["deliveries"][
                        0
                    ]["id"]
                )
            finals = [wait_delivery(api_one, delivery_id) for delivery_id in ids]
        assert {f["status"] for f in finals} == {"delivered"}
        workers = {f["attempt_log"][0]["worker"] for f in finals}
        assert len(workers) == 2, "both processes sent"
        assert wecom.gettoken_calls(app) == 1
    finally:
        second.stop()
