"""The DingTalk robot channel: rendering, signing, keywords, mentions, sizes, every vendor code,
Test Push, the 20-a-minute window and secrets, against a strict fake of the webhook."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
from pydantic import ValidationError

from msgpush.channels.base import VendorResponse
from msgpush.channels.dingtalk_bot import (
    BODY_LIMIT_BYTES,
    THROTTLE_S,
    DingTalkBotSettings,
    classify_answer,
    compose,
    signed_url,
)
from msgpush.channels.render import TRUNCATION_MARKER
from msgpush.message import Message
from tests.fakes.dingtalk import FakeDingTalk, Robot
from tests.helpers import send, wait_delivery
from tests.server import ServerProcess

OFFICIAL = "https://oapi.dingtalk.com/robot/send?access_token=" + "ab12" * 16
SECRET = "SEC" + "f00d" * 16
SETTLED = ("retrying", "delivered", "failed")


@pytest.fixture(scope="module")
def dingtalk() -> Iterator[FakeDingTalk]:
    fake = FakeDingTalk().start()
    yield fake
    fake.stop()


def settings(**config: Any) -> DingTalkBotSettings:
    return DingTalkBotSettings.model_validate({"webhook_url": OFFICIAL, **config})


def message(**fields: Any) -> Message:
    return Message.model_validate({"title": "Task daily_sales failed", **fields})


def payload(msg: Message, **config: Any) -> dict[str, Any]:
    return compose(msg, settings(**config), "dlv_test").payload


def answer(body: Any, status: int = 200) -> VendorResponse:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return VendorResponse(status, {}, raw)


def make_channel(
    api: httpx.Client, fake: FakeDingTalk, robot: Robot, name: str, **config: Any
) -> dict[str, Any]:
    body = {"webhook_url": fake.webhook_url(robot), **config}
    response = api.post("/channels", json={"name": name, "type": "dingtalk_bot", "config": body})
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def deliver(
    api: httpx.Client, channel: str, statuses: tuple[str, ...] = SETTLED, **msg: Any
) -> dict[str, Any]:
    delivery_id = send(api, [channel], **msg)["deliveries"][0]["id"]
    return wait_delivery(api, delivery_id, statuses)


# -- rendering (unit) ------------------------------------------------------------------------


def test_markdown_with_one_link_and_no_mentions_is_an_action_card_with_one_button() -> None:
    msg = message(
        content="**daily_sales** failed after 3 retries.\nSee the log.",
        level="error",
        fields={"Task": "daily_sales", "Duration": "3m12s"},
        links=[{"title": "Open task", "url": "https://example.com/tasks/42"}],
    )
    body = payload(msg)
    assert body["msgtype"] == "actionCard"
    assert body["msgUuid"] == "dlv_test"
    card = body["actionCard"]
    assert card["title"] == "Task daily_sales failed"  # the list title is plain text
    assert card["singleTitle"] == "Open task"
    assert card["singleURL"] == "https://example.com/tasks/42"
    assert "btns" not in card and "at" not in body
    text = card["text"]
    assert text.startswith("### Task daily\\_sales failed")
    assert "**❌ ERROR**" in text
    # the caller's single line break is kept visible (two trailing spaces)
    assert "**daily_sales** failed after 3 retries.  \nSee the log." in text
    assert "- **Task**: daily\\_sales  \n- **Duration**: 3m12s" in text
    assert "example.com" not in text  # the link is the button, not repeated in the text


def test_several_links_become_buttons() -> None:
    links = [{"title": f"Run {i}", "url": f"https://example.com/r/{i}"} for i in range(3)]
    card = payload(message(content="c", links=links))["actionCard"]
    assert card["btns"] == [
        {"title": f"Run {i}", "actionURL": f"https://example.com/r/{i}"} for i in range(3)
    ]
    assert "singleURL" not in card


def test_peer_d6_mentions_go_into_at_and_into_the_markdown_text() -> None:
    msg = message(
        content="disk full",
        links=[{"title": "Open", "url": "https://example.com/x"}],
        mentions={"mobiles": ["13800000000"], "user_ids": ["zhangsan"], "all": True},
    )
    body = payload(msg)
    # someone is @'d, so markdown (an ActionCard has no `at`), and the link becomes a line
    assert body["msgtype"] == "markdown"
    assert body["at"] == {"atMobiles": ["13800000000"], "atUserIds": ["zhangsan"], "isAtAll": True}
    text = body["markdown"]["text"]
    assert "- [Open](https://example.com/x)" in text
    assert text.endswith("@13800000000 @zhangsan")


def test_text_format_is_msgtype_text_with_links_as_lines_and_mentions() -> None:
    msg = message(
        content="plain *not markdown*",
        format="text",
        level="warning",
        fields={"Task": "daily_sales"},
        links=[{"title": "Open", "url": "https://example.com/x"}],
        mentions={"user_ids": ["lisi"]},
    )
    body = payload(msg)
    assert body["msgtype"] == "text"
    assert body["at"] == {"atMobiles": [], "atUserIds": ["lisi"], "isAtAll": False}
    assert body["text"]["content"] == (
        "[WARNING] Task daily_sales failed\n\nplain *not markdown*\n\nTask: daily_sales"
        "\n\nOpen: https://example.com/x\n\n@lisi"
    )


def test_at_most_50_mentions_and_emails_cannot_be_mentioned() -> None:
    mobiles = [f"1380000{i:04d}" for i in range(40)]
    user_ids = [f"user{i}" for i in range(20)]
    rendered = compose(
        message(mentions={"mobiles": mobiles, "user_ids": user_ids, "emails": ["a@example.com"]}),
        settings(),
        "dlv_x",
    )
    at = rendered.payload["at"]
    assert at["atMobiles"] == mobiles and at["atUserIds"] == user_ids[:10]
    text = rendered.payload["markdown"]["text"]
    assert all(f"@{who}" in text for who in mobiles + user_ids[:10])
    assert "@user10" not in text
    assert any("10 more were not mentioned" in w for w in rendered.warnings)
    assert any("mentions.emails" in w for w in rendered.warnings)


def test_peer_d5_long_cjk_content_is_cut_in_bytes_keeping_everything_else() -> None:
    content = "数据刷新失败，请检查。" * 3000  # 30 chars... 90,000 bytes
    msg = message(
        content=content,
        fields={"任务": "daily_sales"},
        mentions={"mobiles": ["13800000000"]},
    )
    rendered = compose(msg, settings(keywords=["监控报警"]), "dlv_x")
    assert len(rendered.body) <= BODY_LIMIT_BYTES
    assert len(rendered.body) > BODY_LIMIT_BYTES - 200  # cut, not emptied
    rendered.body.decode("utf-8")  # never a broken character
    text = rendered.payload["markdown"]["text"]
    assert TRUNCATION_MARKER.strip() in text
    assert text.startswith("[监控报警]")
    assert "- **任务**: daily\\_sales" in text
    assert text.endswith("@13800000000")


def test_huge_fields_are_cut_too() -> None:
    fields = {f"字段{i}": "值" * 1000 for i in range(40)}  # 120 kB of fields
    links = [{"title": "Open", "url": "https://example.com/x"}]
    rendered = compose(message(content="c", fields=fields, links=links), settings(), "d")
    assert len(rendered.body) <= BODY_LIMIT_BYTES
    assert rendered.payload["actionCard"]["singleURL"] == "https://example.com/x"


def test_a_cut_code_block_is_closed_and_the_body_stays_nearly_full() -> None:
    content = "failed:\n```\n" + "x = 1\n" * 6000  # line breaks grow when encoded
    rendered = compose(message(content=content, fields={"Task": "t"}), settings(), "d")
    assert BODY_LIMIT_BYTES - 300 < len(rendered.body) <= BODY_LIMIT_BYTES
    assert rendered.payload["markdown"]["text"].endswith("\n```\n\n- **Task**: t")


def test_plain_text_parts_are_escaped() -> None:
    msg = message(
        title="a_b *c* [d]",
        content="**kept** _markdown_",
        fields={"k_1": "v*2"},
        links=[{"title": "x [y]", "url": "https://example.com/z"}],
        mentions={"user_ids": ["u1"]},
    )
    body = payload(msg)
    text = body["markdown"]["text"]
    assert text.startswith("### a\\_b \\*c\\* \\[d\\]")
    assert "**kept** _markdown_" in text  # the caller's markdown is left as markdown
    assert "- **k\\_1**: v\\*2" in text
    assert "- [x \\[y\\]](https://example.com/z)" in text
    assert body["markdown"]["title"] == "a_b *c* [d]"


def test_a_keyword_is_added_only_when_missing() -> None:
    missing = payload(message(content="disk full"), keywords=["监控报警", "alert"])
    assert missing["markdown"]["text"].startswith("[监控报警]\n\n### Task")
    assert missing["markdown"]["title"] == "[监控报警] Task daily_sales failed"
    present = payload(message(content="an alert: disk full"), keywords=["监控报警", "alert"])
    assert present["markdown"]["text"].startswith("### Task")
    text = payload(message(content="x", format="text"), keywords=["监控报警"])
    assert text["text"]["content"].startswith("[监控报警] Task daily_sales failed")


def test_the_list_title_falls_back_to_the_first_line_of_content() -> None:
    msg = Message(content="## Backup done\nall good")
    assert compose(msg, settings(), "d").payload["markdown"]["title"] == "Backup done"


def test_signature_is_dingtalks_formula_in_the_query() -> None:
    url = signed_url(settings(secret=SECRET), 1_700_000_000_123)
    query = parse_qs(urlsplit(url).query)
    assert query["access_token"] == ["ab12" * 16]
    assert query["timestamp"] == ["1700000000123"]  # milliseconds
    expected = hmac.new(
        SECRET.encode(), f"1700000000123\n{SECRET}".encode(), hashlib.sha256
    ).digest()
    assert base64.b64decode(query["sign"][0]) == expected
    assert "+" not in url.split("sign=", 1)[1]  # URL-encoded, so "+" survives the query
    assert signed_url(settings(), 1) == OFFICIAL  # no secret, no signature


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (OFFICIAL, None),
        ("http://10.1.2.3:8080/dingtalk/robot/send?access_token=t0k3n", None),
        ("https://proxy.example.com/any/path?x=1&access_token=t0k3n", None),
        ("https://oapi.dingtalk.com/robot/send", "has no access_token"),
        ("https://oapi.dingtalk.com/robot/send?access_token=", "has no access_token"),
        ("http://oapi.dingtalk.com/robot/send?access_token=abc", "has the form"),
        ("https://oapi.dingtalk.com/robot/sendx?access_token=abc", "has the form"),
        (OFFICIAL + "&timestamp=1&sign=x", "timestamp/sign"),
        ("ab12" * 16, "access_token alone"),
        ("ftp://example.com/?access_token=abc", "http(s) URL"),
    ],
)
def test_webhook_url_validation(url: str, problem: str | None) -> None:
    if problem is None:
        assert settings(webhook_url=url).webhook_url.get_secret_value() == url
        return
    with pytest.raises(ValidationError) as caught:
        settings(webhook_url=url)
    said = caught.value.errors()[0]["msg"]  # what the API answers
    assert problem in said
    assert "ab12ab12" not in said and "abc" not in said  # the token is never echoed


def test_secret_and_keywords_validation() -> None:
    assert settings(secret="  " + SECRET + "\n").secret.get_secret_value() == SECRET  # type: ignore[union-attr]
    assert settings(secret="").secret is None
    assert settings(keywords=[" a ", "b", "a"]).keywords == ["a", "b"]
    for bad in ({"secret": "SEC a"}, {"keywords": [""]}, {"keywords": [str(i) for i in range(11)]}):
        with pytest.raises(ValidationError):
            settings(**bad)


# -- reading DingTalk's answers (unit) -------------------------------------------------------

CODES: list[tuple[int, str, str, str]] = [
    # code, errmsg, outcome, a words of the diagnosis
    (300005, "token is not exist", "failed", "copy the Webhook again"),
    (400101, "access_token不存在", "failed", "copy the Webhook again"),
    (40035, "缺少参数 access_token", "failed", "?access_token="),
    (400102, "机器人已停用", "failed", "enable it again"),
    (400106, "机器人不存在", "failed", "Add a custom robot again"),
    (400013, "群已被解散", "failed", "group was dissolved"),
    (400105, "不支持的消息类型", "failed", "format text"),
    (410100, "发送速度太快而限流", "retry", "blocked for 10 minutes"),
    (130101, "send too fast, exceed 20 times per minute", "retry", "blocked for 10 minutes"),
    (660026, "sending too many messages per minute", "retry", "blocked for 10 minutes"),
    (460101, "message too long, exceed 20000 bytes", "failed", "too large"),
    (430101, "含有不安全的外链", "failed", "unsafe"),
    (430102, "含有不合适的文本", "failed", "reword"),
    (430103, "含有不合适的图片", "failed", "image"),
    (430104, "含有不合适的内容", "failed", "change its content"),
    (43004, "无效的HTTP HEADER Content-Type", "failed", "Content-Type"),
    (43002, "需要POST请求", "failed", "GET instead of a POST"),
    (-1, "系统繁忙", "retry", "busy"),
    (310000, "keywords not in content", "failed", "security keyword"),
    (310000, "sign not match", "failed", "secret"),
    (310000, "invalid timestamp", "failed", "clock"),
    (310000, "ip 1.2.3.4 not in whitelist", "failed", "Add 1.2.3.4"),
]


@pytest.mark.parametrize(("code", "errmsg", "kind", "words"), CODES)
def test_every_vendor_code_is_classified(code: int, errmsg: str, kind: str, words: str) -> None:
    outcome = classify_answer(
        answer({"errcode": code, "errmsg": errmsg}), settings(secret=SECRET, keywords=["k"])
    )
    assert (outcome.kind, outcome.vendor_code, outcome.vendor_message) == (kind, str(code), errmsg)
    assert outcome.diagnosis is not None and words in outcome.diagnosis, outcome.diagnosis
    assert errmsg in outcome.diagnosis
    if code in (410100, 130101, 660026):
        assert outcome.retry_after_s == THROTTLE_S  # DingTalk's 10-minute throttle
    elif code == -1:
        assert outcome.retry_after_s is None  # the engine's backoff


def test_security_diagnoses_name_what_to_fix() -> None:
    def diagnosis(errmsg: str, **config: Any) -> str:
        outcome = classify_answer(answer({"errcode": 310000, "errmsg": errmsg}), settings(**config))
        assert outcome.kind == "failed"
        return outcome.diagnosis or ""

    named = diagnosis("keywords not in content", keywords=["监控报警", "deploy"])
    assert "'监控报警', 'deploy'" in named and "自定义关键词" in named
    assert "keywords setting is empty" in diagnosis("keywords not in content")
    assert "no secret" in diagnosis("sign not match")
    older = "sign not match, more: [https://ding-doc.dingtalk.com/doc#/serverapi2/qf2nxq]"
    assert "more than an hour off" in diagnosis(older, secret=SECRET)
    assert "clock differs" in diagnosis("invalid timestamp", secret=SECRET)
    assert "IP Address (Range)" in diagnosis("ip 203.0.113.9 not in whitelist")
    assert "Security Settings" in diagnosis("something new")


def test_peer_d2_d3_d14_the_errcode_decides_not_the_http_status() -> None:
    refused = classify_answer(answer({"errcode": 300005, "errmsg": "token is not exist"}), None)
    assert refused.kind == "failed" and refused.status_code == 200
    assert classify_answer(answer({"errcode": "0", "errmsg": "ok"}), None).kind == "delivered"
    assert classify_answer(answer(b"<html>bad gateway</html>", 502), None).kind == "retry"
    assert classify_answer(answer(b"ok", 200), None).kind == "failed"  # not DingTalk at all
    assert classify_answer(answer(b"", 404), None).kind == "failed"
    blocked = classify_answer(answer({"status": 1111, "wait": 5, "punish": "deny"}, 403), None)
    assert blocked.kind == "retry" and blocked.retry_after_s == 300


def test_peer_d7_rate_limits_retry_and_security_errors_fail_at_once() -> None:
    throttled = classify_answer(answer({"errcode": 130101, "errmsg": "send too fast"}), None)
    assert throttled.kind == "retry"
    keyword = classify_answer(
        answer({"errcode": 310000, "errmsg": "keywords not in content"}), None
    )
    assert keyword.kind == "failed"


# -- end to end, through a msgpush server and the fake ---------------------------------------


def test_channel_type_is_described(api: httpx.Client) -> None:
    items = {item["type"]: item for item in api.get("/channel-types").json()["items"]}
    described = items["dingtalk_bot"]
    assert described["secret_fields"] == ["webhook_url", "secret"]
    assert described["limits"] == {"rate": {"per_minute": 20}, "size_bytes": {"body": 20000}}
    assert described["schema"]["required"] == ["webhook_url"]
    too_fast = api.post(
        "/channels",
        json={
            "name": "too-fast",
            "type": "dingtalk_bot",
            "config": {"webhook_url": OFFICIAL},
            "rate_limit": {"per_minute": 30},
        },
    )
    assert too_fast.status_code == 422


def test_delivers_a_signed_action_card_with_keyword_and_msg_uuid(
    api: httpx.Client, dingtalk: FakeDingTalk, unique: str
) -> None:
    robot = dingtalk.add_robot(secret=SECRET, keywords=["监控报警"])
    make_channel(api, dingtalk, robot, f"ding-{unique}", secret=SECRET, keywords=["监控报警"])
    final = deliver(
        api,
        f"ding-{unique}",
        title="Task daily_sales failed",
        content="**daily_sales** failed",
        level="error",
        links=[{"title": "Open task", "url": "https://example.com/tasks/42"}],
    )
    assert final["status"] == "delivered", final
    [posted] = robot.posted
    assert posted.msgtype == "actionCard"
    assert posted.body["msgUuid"] == final["id"]
    assert posted.body["actionCard"]["singleURL"] == "https://example.com/tasks/42"
    assert posted.query["timestamp"].isdigit() and len(posted.query["timestamp"]) == 13
    attempt = final["attempt_log"][0]
    assert (attempt["vendor_code"], attempt["vendor_message"]) == ("0", "ok")


def test_peer_d6_d13_mentions_ping_in_the_same_message(
    api: httpx.Client, dingtalk: FakeDingTalk, unique: str
) -> None:
    robot = dingtalk.add_robot()
    make_channel(api, dingtalk, robot, f"ding-at-{unique}")
    final = deliver(
        api,
        f"ding-at-{unique}",
        content="disk full",
        links=[{"title": "Open", "url": "https://example.com/x"}],
        mentions={"mobiles": ["13800000000"], "user_ids": ["zhangsan"], "emails": ["a@x.io"]},
    )
    assert final["status"] == "delivered"
    assert "mentions.emails" in (final["warning"] or "")
    [posted] = robot.posted  # one message, not a second one for the @
    assert posted.msgtype == "markdown"
    assert posted.pinged == ["13800000000", "zhangsan"] and posted.not_pinged == []


def test_peer_d4_the_fake_rejects_markdown_sent_as_text(dingtalk: FakeDingTalk) -> None:
    robot = dingtalk.add_robot()
    apprise_style = {"msgtype": "text", "markdown": {"title": "t", "text": "**hi**"}}
    reply = httpx.post(dingtalk.webhook_url(robot), json=apprise_style).json()
    assert reply["errcode"] == 40035 and robot.posted == []
    unknown = httpx.post(dingtalk.webhook_url(robot), json={"msgtype": "html"}).json()
    assert unknown["errcode"] == 400105
    ok = {"msgtype": "markdown", "markdown": {"title": "t", "text": "**hi**"}}
    assert httpx.post(dingtalk.webhook_url(robot), json=ok).json() == {"errcode": 0, "errmsg": "ok"}


# (code, errmsg or None for the fake's own, expected status, words of the diagnosis)
INJECTED: list[tuple[int, str | None, str, str]] = [
    (400101, None, "failed", "copy the Webhook again"),
    (40035, None, "failed", "?access_token="),
    (400105, None, "failed", "format text"),
    (410100, None, "retrying", "blocked for 10 minutes"),
    (130101, None, "retrying", "blocked for 10 minutes"),
    (660026, None, "retrying", "blocked for 10 minutes"),
    (460101, None, "failed", "too large"),
    (430101, None, "failed", "unsafe"),
    (430102, None, "failed", "reword"),
    (430103, None, "failed", "image"),
    (430104, None, "failed", "change its content"),
    (43004, None, "failed", "Content-Type"),
    (43002, None, "failed", "GET instead of a POST"),
    (-1, None, "retrying", "busy"),
    (310000, "invalid timestamp", "failed", "clock differs"),
    (310000, "sign not match", "failed", "more than an hour off"),
]


@pytest.mark.parametrize(("code", "errmsg", "status", "words"), INJECTED)
def test_each_error_code_end_to_end(
    api: httpx.Client,
    dingtalk: FakeDingTalk,
    unique: str,
    code: int,
    errmsg: str | None,
    status: str,
    words: str,
) -> None:
    robot = dingtalk.add_robot(secret=SECRET)
    make_channel(api, dingtalk, robot, f"ding-e-{unique}", secret=SECRET)
    dingtalk.fail_next(robot, code, errmsg)
    final = deliver(api, f"ding-e-{unique}")
    attempt = final["attempt_log"][0]
    assert attempt["vendor_code"] == str(code) and attempt["status_code"] == 200
    assert words in attempt["diagnosis"], attempt
    if status == "failed":
        assert final["status"] == "failed" and words in final["error"]
    else:  # retried: the next attempt (the fake answers ok now) delivers
        assert attempt["outcome"] == "retry"
        assert final["status"] in ("retrying", "delivered")


@pytest.mark.parametrize(
    ("robot_config", "channel_config", "code", "words"),
    [
        ({"keywords": ["监控报警"]}, {}, "310000", "keywords setting is empty"),
        ({"keywords": ["监控报警"]}, {"keywords": ["deploy"]}, "310000", "'deploy'"),
        ({"secret": SECRET}, {}, "310000", "has no secret"),
        ({"secret": SECRET}, {"secret": "SECwrong"}, "310000", "more than an hour off"),
        ({"ip_allowlist": ["10.0.0.0/8"]}, {}, "310000", "Add 127.0.0.1"),
        ({"state": "disabled"}, {}, "400102", "enable it again"),
        ({"state": "deleted"}, {}, "400106", "Add a custom robot again"),
        ({"state": "dissolved"}, {}, "400013", "group was dissolved"),
    ],
)
def test_robot_configuration_errors_end_to_end(
    api: httpx.Client,
    dingtalk: FakeDingTalk,
    unique: str,
    robot_config: dict[str, Any],
    channel_config: dict[str, Any],
    code: str,
    words: str,
) -> None:
    robot = dingtalk.add_robot(**robot_config)
    make_channel(api, dingtalk, robot, f"ding-c-{unique}", **channel_config)
    final = deliver(api, f"ding-c-{unique}")
    assert final["status"] == "failed"
    assert final["attempt_log"][0]["vendor_code"] == code
    assert words in final["error"], final["error"]
    assert robot.posted == []


def test_an_unknown_token_fails_with_300005(
    api: httpx.Client, dingtalk: FakeDingTalk, unique: str
) -> None:
    gone = Robot(token="deadbeef" * 8)  # never registered at the fake
    make_channel(api, dingtalk, gone, f"ding-gone-{unique}")
    final = deliver(api, f"ding-gone-{unique}")
    assert final["status"] == "failed"
    assert final["attempt_log"][0]["vendor_code"] == "300005"
    assert "copy the Webhook again" in final["error"]


def test_a_retry_after_a_lost_answer_is_not_posted_twice(
    api: httpx.Client, dingtalk: FakeDingTalk, unique: str
) -> None:
    robot = dingtalk.add_robot()
    make_channel(api, dingtalk, robot, f"ding-lost-{unique}")
    dingtalk.drop_next_answer(robot)
    final = deliver(api, f"ding-lost-{unique}", statuses=("delivered", "failed"))
    assert final["status"] == "delivered"
    assert final["attempts"] == 2 and final["attempt_log"][0]["outcome"] == "retry"
    assert len(robot.posted) == 1 and robot.duplicates == 1  # msgUuid kept it to one


def test_test_push_shows_success_and_diagnoses(
    api: httpx.Client, dingtalk: FakeDingTalk, unique: str
) -> None:
    robot = dingtalk.add_robot(secret=SECRET, keywords=["监控报警"])
    config: dict[str, Any] = {"webhook_url": dingtalk.webhook_url(robot), "secret": SECRET}
    unsaved = api.post("/channels/test", json={"type": "dingtalk_bot", "config": config}).json()
    assert unsaved["ok"] is False and unsaved["vendor_code"] == "310000"
    assert unsaved["vendor_message"] == "keywords not in content"
    assert "keywords setting is empty" in unsaved["diagnosis"]

    config["keywords"] = ["监控报警"]
    fixed = api.post("/channels/test", json={"type": "dingtalk_bot", "config": config}).json()
    assert fixed["ok"] is True and fixed["status_code"] == 200, fixed
    assert robot.posted[-1].body["markdown"]["title"].startswith("[监控报警]")

    name = f"ding-test-{unique}"
    make_channel(api, dingtalk, robot, name, secret="SECwrong", keywords=["监控报警"])
    saved = api.post(f"/channels/{name}/test").json()
    assert saved["ok"] is False and saved["vendor_code"] == "310000"
    assert "Additional Signature (加签)" in saved["diagnosis"]
    api.patch(f"/channels/{name}", json={"config": {"secret": SECRET}})
    assert api.post(f"/channels/{name}/test").json()["ok"] is True
    assert api.get(f"/channels/{name}").json()["last_test"]["ok"] is True


def test_peer_d8_d9_d10_secrets_never_appear(
    api: httpx.Client, server: ServerProcess, dingtalk: FakeDingTalk, unique: str
) -> None:
    robot = dingtalk.add_robot(secret=SECRET, keywords=["监控报警"])
    name = f"ding-secret-{unique}"
    created = make_channel(api, dingtalk, robot, name, secret=SECRET)  # no keywords: will fail
    assert created["config"]["webhook_url"].endswith("access_token=••••")
    assert created["config"]["secret"].startswith("••••")
    failed = deliver(api, name)
    api.patch(f"/channels/{name}", json={"config": {"keywords": ["监控报警"]}})
    delivered = deliver(api, name)
    assert (failed["status"], delivered["status"]) == ("failed", "delivered")
    tested = api.post(
        "/channels/test",
        json={"type": "dingtalk_bot", "config": {"webhook_url": dingtalk.webhook_url(robot)}},
    )
    url = delivered["attempt_log"][0]["request"][0]["url"]
    assert "access_token=••••" in url and "sign=••••" in url
    signs = [p.query["sign"] for p in robot.posted]
    seen = [
        str(created),
        api.get(f"/channels/{name}").text,
        api.get("/channels").text,
        api.get(f"/deliveries/{failed['id']}").text,
        api.get(f"/deliveries/{delivered['id']}").text,
        api.get("/deliveries", params={"channel": name}).text,
        tested.text,
        server.log(),
    ]
    for text in seen:
        assert robot.token not in text and SECRET not in text
        assert not any(s in text for s in signs)


def test_peer_d11_a_burst_waits_for_the_window_and_every_message_arrives(
    make_server: Callable[..., ServerProcess], dingtalk: FakeDingTalk, unique: str
) -> None:
    scale = 0.05  # 60 s -> 3 s, at msgpush and at the fake alike
    own = make_server(MSGPUSH_RATE_WINDOW_SCALE=str(scale))
    robot = dingtalk.add_robot(window_s=60 * scale, lock_s=600 * scale)
    with own.client() as api:
        make_channel(api, dingtalk, robot, f"ding-burst-{unique}")
        started = time.monotonic()
        ids = [
            send(api, [f"ding-burst-{unique}"], content=f"#{i}")["deliveries"][0]["id"]
            for i in range(25)
        ]
        finals = [wait_delivery(api, i, timeout=30) for i in ids]
    assert [f["status"] for f in finals] == ["delivered"] * 25
    assert robot.rate_rejections() == [] and len(robot.posted) == 25
    assert time.monotonic() - started >= 60 * scale  # the 21st waited for the window
