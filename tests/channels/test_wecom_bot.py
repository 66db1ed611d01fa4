"""The WeCom group bot channel: rendering, mentions, byte limits, error codes, secrets, bursts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from msgpush.channels.base import Outcome, SendContext, VendorRequest, VendorResponse
from msgpush.channels.render import TRUNCATION_MARKER
from msgpush.channels.wecom_bot import (
    CHANNEL_TYPE,
    ERRORS,
    MARKDOWN_MAX_BYTES,
    TEXT_MAX_BYTES,
    WeComBotSettings,
)
from msgpush.message import Message
from tests.fakes.wecom import FakeWeComBot
from tests.helpers import send, wait_delivery
from tests.server import ServerProcess

KEY = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"
URL = f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={KEY}"


@pytest.fixture(scope="module")
def bot() -> Iterator[FakeWeComBot]:
    fake = FakeWeComBot().start()
    yield fake
    fake.stop()


# -- rendering, on the channel type directly ----------------------------------------------------


async def _no_exchange(request: VendorRequest, classify: Any) -> Outcome:  # pragma: no cover
    raise AssertionError("rendering tests never send")


def payload(markdown_version: str = "markdown", **message: Any) -> dict[str, Any]:
    settings = WeComBotSettings.model_validate(
        {"webhook_url": URL, "markdown_version": markdown_version}
    )
    ctx = SendContext(delivery_id="dlv_test", attempt=1, exchange=_no_exchange)
    request = CHANNEL_TYPE.render(Message.model_validate(message), settings, ctx)
    assert request.url == URL
    assert request.headers["Content-Type"].startswith("application/json")
    result: dict[str, Any] = orjson.loads(request.body)
    return result


RICH: dict[str, Any] = {
    "title": "Task daily_sales failed",
    "content": "**daily_sales** failed after 3 retries.\n\nSee the log.",
    "level": "error",
    "fields": {"Task": "daily_sales", "Duration": "3m12s"},
    "links": [{"title": "Open task", "url": "https://example.com/tasks/42"}],
}


def test_markdown_carries_title_level_colour_content_fields_and_links() -> None:
    body = payload(**RICH)
    assert body["msgtype"] == "markdown"
    assert set(body) == {"msgtype", "markdown"}
    assert body["markdown"]["content"] == (
        "### Task daily_sales failed\n\n"
        '<font color="warning">**❌ ERROR**</font>\n\n'
        "**daily_sales** failed after 3 retries.\n\nSee the log.\n\n"
        "> **Task**: daily_sales\n> **Duration**: 3m12s\n\n"
        "[Open task](https://example.com/tasks/42)"
    )


@pytest.mark.parametrize(
    ("level", "colour"), [("success", "info"), ("warning", "warning"), ("critical", "warning")]
)
def test_levels_use_wecom_colours(level: str, colour: str) -> None:
    content = payload(title="t", level=level)["markdown"]["content"]
    assert f'<font color="{colour}">' in content


def test_info_level_is_not_labelled() -> None:
    assert payload(title="t", content="c")["markdown"]["content"] == "### t\n\nc"


def test_markdown_v2_has_no_colours_and_uses_lists() -> None:
    body = payload("markdown_v2", **RICH)
    assert body["msgtype"] == "markdown_v2"
    content = body["markdown_v2"]["content"]
    assert "<font" not in content
    assert "**❌ ERROR**" in content
    assert "- **Task**: daily_sales\n- **Duration**: 3m12s" in content
    assert "- [Open task](https://example.com/tasks/42)" in content


def test_user_ids_are_mentioned_inside_markdown() -> None:
    body = payload(**RICH, mentions={"user_ids": ["zhangsan", "lisi"]})
    assert body["msgtype"] == "markdown"
    assert body["markdown"]["content"].endswith("\n\n<@zhangsan> <@lisi>")


@pytest.mark.parametrize(
    "mentions",
    [
        {"all": True},
        {"mobiles": ["13800000000"]},
        {"user_ids": ["zhangsan"], "mobiles": ["13800000000"], "all": True},
    ],
)
def test_peers_6F_mobiles_and_all_go_as_text_with_mention_lists(mentions: dict[str, Any]) -> None:
    """mentioned_mobile_list and @all only ping in a text message: send text, not markdown."""
    body = payload(**RICH, mentions=mentions)
    assert body["msgtype"] == "text"
    text = body["text"]
    expected = list(mentions.get("user_ids", [])) + (["@all"] if mentions.get("all") else [])
    assert text.get("mentioned_list", []) == expected
    assert text.get("mentioned_mobile_list", []) == mentions.get("mobiles", [])
    # the whole message, readably, with no markdown syntax left
    assert text["content"] == (
        "[ERROR] Task daily_sales failed\n\n"
        "daily_sales failed after 3 retries.\n\nSee the log.\n\n"
        "Task: daily_sales\nDuration: 3m12s\n\n"
        "Open task: https://example.com/tasks/42"
    )


def test_markdown_v2_cannot_mention_so_user_ids_go_as_text() -> None:
    body = payload("markdown_v2", title="t", content="c", mentions={"user_ids": ["zhangsan"]})
    assert body["msgtype"] == "text"
    assert body["text"] == {"content": "t\n\nc", "mentioned_list": ["zhangsan"]}


def test_text_format_sends_a_text_message() -> None:
    body = payload(title="Disk *full*", content="a **b** [c](https://x.y)", format="text")
    assert body == {
        "msgtype": "text",
        "text": {"content": "Disk *full*\n\na **b** [c](https://x.y)"},
    }


def test_markdown_links_read_as_text_when_sent_as_text() -> None:
    content = "## Report\n**bold** <font color='info'>ok</font> [Open](https://e.com/a) <@wang>"
    body = payload(content=content, mentions={"all": True})
    assert body["text"]["content"] == "Report\nbold ok Open (https://e.com/a) <@wang>"


def test_caller_text_cannot_break_or_inject_markdown() -> None:
    body = payload(
        title='Deploy <@all> <font color="info">done</font>\n# not a heading',
        content="ok",
        fields={"**key**": "a\n> quote [x](https://evil.example) `code`"},
        links=[{"title": "see ] [this", "url": "https://example.com/a(b)"}],
    )
    content = body["markdown"]["content"]
    title, rest = content.split("\n\n", 1)
    assert title.startswith("### Deploy ")
    assert "<@" not in content and "<font" not in content
    assert "\n# not" not in content and "\n> quote" not in content
    assert "[x](https://evil.example)" not in content
    assert "**＊＊key＊＊**: a > quote ［x］(https://evil.example) ｀code｀" in rest
    assert "[see ］ ［this](https://example.com/a%28b%29)" in rest


def test_titles_and_fields_cannot_ping_in_text_messages() -> None:
    body = payload(title="<@all> hi", fields={"who": "<@boss>"}, mentions={"mobiles": ["138"]})
    assert "<@" not in body["text"]["content"]
    assert body["text"]["mentioned_mobile_list"] == ["138"]


def test_peers_D5_cjk_markdown_is_cut_in_bytes_not_characters() -> None:
    """4096 characters of Chinese are 12288 bytes: cut to 4096 bytes at a character boundary."""
    content = "磁盘空间不足" * 682 + "告警警告"
    assert len(content) == 4096 and len(content.encode()) == 12288
    markdown = payload(title="告警", content=content)["markdown"]["content"]
    size = len(markdown.encode("utf-8"))
    assert MARKDOWN_MAX_BYTES - 3 <= size <= MARKDOWN_MAX_BYTES
    assert markdown.startswith("### 告警\n\n磁盘空间不足")
    assert markdown.endswith(TRUNCATION_MARKER)


def test_peers_D5_cjk_text_is_cut_to_2048_bytes_and_keeps_fields_and_links() -> None:
    body = payload(
        content="数据刷新失败" * 700,
        fields={"表": "销售日报"},
        links=[{"title": "打开", "url": "https://example.com/t"}],
        mentions={"all": True},
    )
    content = body["text"]["content"]
    assert len(content.encode("utf-8")) <= TEXT_MAX_BYTES
    assert TRUNCATION_MARKER in content
    assert content.endswith("表: 销售日报\n\n打开: https://example.com/t")


def test_markdown_mentions_survive_the_cut() -> None:
    content = payload(content="长" * 5000, mentions={"user_ids": ["zhangsan"]})["markdown"][
        "content"
    ]
    assert len(content.encode()) <= MARKDOWN_MAX_BYTES
    assert content.endswith(f"{TRUNCATION_MARKER}\n\n<@zhangsan>")


def test_too_many_fields_are_cut_too() -> None:
    fields = {f"字段{i}": "值" * 300 for i in range(30)}
    content = payload(title="t", content="c", fields=fields)["markdown"]["content"]
    assert len(content.encode()) <= MARKDOWN_MAX_BYTES
    assert content.endswith(TRUNCATION_MARKER)


def test_settings_accept_a_bare_key_or_a_url_with_a_key() -> None:
    bare = WeComBotSettings.model_validate({"webhook_url": f"  {KEY} "})
    assert bare.webhook_url.get_secret_value() == URL
    assert bare.markdown_version == "markdown"
    proxy = "http://wecom-proxy.internal:8080/cgi-bin/webhook/send?key=abc123def"
    assert (
        WeComBotSettings.model_validate({"webhook_url": proxy}).webhook_url.get_secret_value()
        == proxy
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("not a url at all", "Webhook URL"),
        ("nonsense", "Webhook URL"),
        ("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?other=1", "has no key"),
        (f"http://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={KEY}", "https"),
        (f"https://qyapi.weixin.qq.com/cgi-bin/webhook/upload_media?key={KEY}", "path"),
        (f"ftp://example.com/send?key={KEY}", "Webhook URL"),
    ],
)
def test_settings_reject_bad_webhook_urls_without_echoing_them(value: str, expected: str) -> None:
    with pytest.raises(ValidationError) as caught:
        WeComBotSettings.model_validate({"webhook_url": value})
    message = caught.value.errors()[0]["msg"]
    assert expected in message
    assert KEY not in message


def test_the_key_alone_is_a_secret_to_scrub() -> None:
    settings = WeComBotSettings.model_validate({"webhook_url": URL})
    assert set(CHANNEL_TYPE.secret_values(settings)) == {URL, KEY}
    description = CHANNEL_TYPE.describe()
    assert description["secret_fields"] == ["webhook_url"]
    assert description["limits"] == {
        "rate": {"per_minute": 20},
        "size_bytes": {"text": 2048, "markdown": 4096, "markdown_v2": 4096},
    }


# -- reading answers ----------------------------------------------------------------------------

HINT = ", hint: [1708397705432012366598976], from ip: 218.72.126.124, more info at https://open.work.weixin.qq.com/devtool/query?e="


def answer(code: int | str, errmsg: str, status: int = 200) -> VendorResponse:
    body = orjson.dumps({"errcode": code, "errmsg": errmsg})
    return VendorResponse(status, {"content-type": "application/json"}, body)


@pytest.mark.parametrize(
    ("code", "kind", "retry_after_s"),
    [
        (93000, "failed", None),
        (45009, "retry", 60.0),
        (45033, "retry", None),
        (-1, "retry", None),
        (40008, "failed", None),
        (40058, "failed", None),
        (45002, "failed", None),
        (44004, "failed", None),
    ],
)
def test_every_code_is_classified_on_errcode_with_a_clean_diagnosis(
    code: int, kind: str, retry_after_s: float | None
) -> None:
    raw = f"some message{HINT}{code}"
    outcome = CHANNEL_TYPE.classify(answer(code, raw), "markdown")
    assert (outcome.kind, outcome.retry_after_s) == (kind, retry_after_s)
    assert outcome.vendor_code == str(code)
    assert outcome.vendor_message == raw  # the hint stays on record for WeCom support
    assert outcome.diagnosis is not None
    assert "some message" in outcome.diagnosis
    assert "hint" not in outcome.diagnosis and "from ip" not in outcome.diagnosis
    assert "{" not in outcome.diagnosis


def test_the_table_is_exactly_what_is_tested() -> None:
    assert set(ERRORS) == {93000, 45009, 45033, -1, 40008, 40058, 45002, 44004}


def test_ok_is_delivered_and_unknown_codes_point_to_the_lookup() -> None:
    assert CHANNEL_TYPE.classify(answer(0, "ok")).kind == "delivered"
    assert CHANNEL_TYPE.classify(answer("0", "ok")).kind == "delivered"
    unknown = CHANNEL_TYPE.classify(answer(12345, f"strange{HINT}12345"))
    assert unknown.kind == "failed"
    assert unknown.diagnosis == (
        "WeCom error 12345: strange. msgpush does not know this code; look it up at "
        "https://open.work.weixin.qq.com/devtool/query?e=12345"
    )
    assert CHANNEL_TYPE.classify(answer(12345, "strange", status=502)).kind == "retry"


def test_peers_D2_D14_http_200_is_not_success_without_errcode_0() -> None:
    """HTTP 200 alone proves nothing: an answer that is not WeCom's JSON is not delivered."""
    html = VendorResponse(200, {}, b"<html>proxy login</html>")
    outcome = CHANNEL_TYPE.classify(html)
    assert outcome.kind == "failed"
    assert "not WeCom's errcode/errmsg JSON" in (outcome.diagnosis or "")
    assert CHANNEL_TYPE.classify(VendorResponse(503, {}, b"busy")).kind == "retry"
    assert CHANNEL_TYPE.classify(VendorResponse(404, {}, b"nope")).kind == "failed"


# -- end to end through a msgpush server --------------------------------------------------------


def make_channel(api: httpx.Client, name: str, webhook_url: str, **config: Any) -> dict[str, Any]:
    response = api.post(
        "/channels",
        json={"name": name, "type": "wecom_bot", "config": {"webhook_url": webhook_url, **config}},
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def channel_for(api: httpx.Client, bot: FakeWeComBot, name: str, **config: Any) -> str:
    """A fresh key and a channel on it; returns the key."""
    key = bot.new_key()
    make_channel(api, name, bot.webhook_url(key), **config)
    return key


def test_delivers_rich_markdown(api: httpx.Client, bot: FakeWeComBot, unique: str) -> None:
    key = channel_for(api, bot, f"wb-rich-{unique}")
    delivery_id = send(api, [f"wb-rich-{unique}"], **RICH)["deliveries"][0]["id"]
    [message] = bot.wait_messages(key, 1)
    assert message.msgtype == "markdown"
    assert message.content.startswith('### Task daily_sales failed\n\n<font color="warning">')
    final = wait_delivery(api, delivery_id)
    assert final["status"] == "delivered"
    [attempt] = final["attempt_log"]
    assert (attempt["status_code"], attempt["vendor_code"]) == (200, "0")


def test_peers_D13_mentions_travel_in_the_same_single_message(
    api: httpx.Client, bot: FakeWeComBot, unique: str
) -> None:
    key = channel_for(api, bot, f"wb-at-{unique}")
    mentions = {"user_ids": ["zhangsan"], "mobiles": ["13800000000"], "all": True}
    delivery_id = send(api, [f"wb-at-{unique}"], **RICH, mentions=mentions)["deliveries"][0]["id"]
    assert wait_delivery(api, delivery_id)["status"] == "delivered"
    [message] = bot.messages_for(key)
    assert message.msgtype == "text"
    assert message.pinged == ["zhangsan", "@all", "13800000000"]
    assert message.ignored == []
    assert "daily_sales failed after 3 retries" in message.content
    assert len([r for r in bot.requests if key in r.path]) == 1


def test_user_id_mentions_really_ping_in_markdown(
    api: httpx.Client, bot: FakeWeComBot, unique: str
) -> None:
    key = channel_for(api, bot, f"wb-md-at-{unique}")
    send(api, [f"wb-md-at-{unique}"], title="t", mentions={"user_ids": ["lisi"]})
    [message] = bot.wait_messages(key, 1)
    assert (message.msgtype, message.pinged) == ("markdown", ["lisi"])


def test_markdown_v2_channel(api: httpx.Client, bot: FakeWeComBot, unique: str) -> None:
    key = channel_for(api, bot, f"wb-v2-{unique}", markdown_version="markdown_v2")
    send(api, [f"wb-v2-{unique}"], **RICH)
    [message] = bot.wait_messages(key, 1)
    assert message.msgtype == "markdown_v2"
    assert "- **Task**: daily_sales" in message.content


def test_peers_D5_cjk_content_is_accepted_by_a_byte_strict_bot(
    api: httpx.Client, bot: FakeWeComBot, unique: str
) -> None:
    key = channel_for(api, bot, f"wb-cjk-{unique}")
    long_cjk = "磁盘空间不足" * 700
    first = send(api, [f"wb-cjk-{unique}"], title="告警", content=long_cjk)
    second = send(api, [f"wb-cjk-{unique}"], content=long_cjk, mentions={"mobiles": ["138"]})
    for answer_ in (first, second):
        assert wait_delivery(api, answer_["deliveries"][0]["id"])["status"] == "delivered"
    markdown, text = bot.wait_messages(key, 2)
    assert len(markdown.content.encode()) <= MARKDOWN_MAX_BYTES
    assert len(text.content.encode()) <= TEXT_MAX_BYTES
    assert bot.rejections_for(key) == []


def test_emails_cannot_be_mentioned_and_the_delivery_says_so(
    api: httpx.Client, bot: FakeWeComBot, unique: str
) -> None:
    channel_for(api, bot, f"wb-mail-{unique}")
    answer_ = send(api, [f"wb-mail-{unique}"], mentions={"emails": ["a@example.com"]})
    final = wait_delivery(api, answer_["deliveries"][0]["id"])
    assert final["status"] == "delivered"
    assert "a@example.com" in final["warning"]


PERMANENT = [
    (40008, "invalid message type", "message type"),
    (40058, "markdown.content exceed max length 1024. invalid Request Parameter", "proxy"),
    (45002, "content size out of limit", "too large"),
    (44004, "empty content", "empty"),
]
RETRYABLE = [
    (45033, "api concurrent out of limit", "concurrent"),
    (-1, "system busy", "busy"),
]


@pytest.mark.parametrize(("code", "errmsg", "expected"), PERMANENT)
def test_permanent_codes_fail_at_once_with_a_diagnosis(
    api: httpx.Client, bot: FakeWeComBot, unique: str, code: int, errmsg: str, expected: str
) -> None:
    key = channel_for(api, bot, f"wb-perm-{unique}")
    bot.fail_next(code, errmsg, key=key)
    final = wait_delivery(api, send(api, [f"wb-perm-{unique}"])["deliveries"][0]["id"])
    assert final["status"] == "failed"
    [attempt] = final["attempt_log"]
    assert attempt["vendor_code"] == str(code)
    assert attempt["vendor_message"].startswith(f"{errmsg}, hint: [")
    assert expected in attempt["diagnosis"] and errmsg in attempt["diagnosis"]
    assert "hint" not in attempt["diagnosis"] and "from ip" not in attempt["diagnosis"]
    assert final["error"] == attempt["diagnosis"]
    assert bot.messages_for(key) == []


@pytest.mark.parametrize(("code", "errmsg", "expected"), RETRYABLE)
def test_retryable_codes_retry_then_deliver(
    api: httpx.Client, bot: FakeWeComBot, unique: str, code: int, errmsg: str, expected: str
) -> None:
    key = channel_for(api, bot, f"wb-retry-{unique}")
    bot.fail_next(code, errmsg, key=key)
    final = wait_delivery(api, send(api, [f"wb-retry-{unique}"])["deliveries"][0]["id"])
    assert final["status"] == "delivered"
    first, second = final["attempt_log"]
    assert (first["outcome"], first["vendor_code"]) == ("retry", str(code))
    assert expected in first["diagnosis"] and "hint" not in first["diagnosis"]
    assert second["outcome"] == "delivered"
    assert len(bot.messages_for(key)) == 1


def test_rate_limit_answer_waits_out_the_vendor_window(
    api: httpx.Client, bot: FakeWeComBot, unique: str
) -> None:
    """45009: retrying sooner only draws the same refusal, so the next try is a window later."""
    key = channel_for(api, bot, f"wb-45009-{unique}")
    bot.fail_next(45009, "api freq out of limit", key=key)
    delivery_id = send(api, [f"wb-45009-{unique}"])["deliveries"][0]["id"]
    final = wait_delivery(api, delivery_id, statuses=("retrying",))
    [attempt] = final["attempt_log"]
    assert (attempt["outcome"], attempt["vendor_code"]) == ("retry", "45009")
    assert "rate-limited" in attempt["diagnosis"] and "hint" not in attempt["diagnosis"]
    started = datetime.fromisoformat(attempt["started_at"].replace("Z", "+00:00"))
    retry_at = datetime.fromisoformat(final["next_attempt_at"].replace("Z", "+00:00"))
    assert 59 <= (retry_at - started).total_seconds() <= 62


def test_peers_D2_deleted_bot_is_failed_not_delivered(
    api: httpx.Client, bot: FakeWeComBot, unique: str
) -> None:
    """WeCom answers HTTP 200 with errcode 93000 for a removed bot: that is a failure."""
    key = channel_for(api, bot, f"wb-gone-{unique}")
    bot.remove_key(key)
    final = wait_delivery(api, send(api, [f"wb-gone-{unique}"])["deliveries"][0]["id"])
    assert final["status"] == "failed"
    [attempt] = final["attempt_log"]
    assert (attempt["status_code"], attempt["vendor_code"]) == (200, "93000")
    assert "webhook_url" in attempt["diagnosis"] and "invalid webhook url" in attempt["diagnosis"]


def test_test_push_with_unsaved_settings(api: httpx.Client, bot: FakeWeComBot) -> None:
    key = bot.new_key()
    good = api.post(
        "/channels/test",
        json={"type": "wecom_bot", "config": {"webhook_url": bot.webhook_url(key)}},
    )
    assert good.status_code == 200, good.text
    assert good.json()["ok"] is True
    [message] = bot.wait_messages(key, 1)
    assert message.content.startswith("### msgpush Test Push")

    wrong = bot.webhook_url("0000aaaa-1111-2222-3333-444455556666")
    bad = api.post("/channels/test", json={"type": "wecom_bot", "config": {"webhook_url": wrong}})
    result = bad.json()
    assert result["ok"] is False
    assert (result["status_code"], result["vendor_code"]) == (200, "93000")
    assert "webhook_url" in result["diagnosis"]
    assert key not in good.text and "0000aaaa-1111" not in bad.text


def test_test_push_on_a_saved_channel(api: httpx.Client, bot: FakeWeComBot, unique: str) -> None:
    key = channel_for(api, bot, f"wb-test-{unique}")
    ok = api.post(f"/channels/wb-test-{unique}/test").json()
    assert ok["ok"] is True and ok["vendor_code"] == "0"
    bot.fail_next(
        40058, "markdown.content exceed max length 1024. invalid Request Parameter", key=key
    )
    failed = api.post(f"/channels/wb-test-{unique}/test").json()
    assert failed["ok"] is False
    assert failed["vendor_code"] == "40058"
    assert failed["diagnosis"].startswith(
        "WeCom rejected a field of the markdown message: markdown.content exceed max length 1024"
    )
    channel = api.get(f"/channels/wb-test-{unique}").json()
    assert channel["last_test"]["vendor_code"] == "40058"


def test_the_key_never_leaves_the_server(
    api: httpx.Client, server: ServerProcess, bot: FakeWeComBot, unique: str
) -> None:
    name = f"wb-secret-{unique}"
    key = channel_for(api, bot, name)
    masked = f"http://127.0.0.1:{bot.port}/cgi-bin/webhook/send?key=••••"
    created = api.get(f"/channels/{name}").json()
    assert created["config"]["webhook_url"] == masked

    # a masked value sent back keeps the stored key
    patched = api.patch(f"/channels/{name}", json={"config": {"webhook_url": masked}})
    assert patched.status_code == 200, patched.text
    ok = send(api, [name])["deliveries"][0]["id"]
    assert wait_delivery(api, ok)["status"] == "delivered"
    bot.fail_next(40058, f"echo of {key}", key=key)
    failed = send(api, [name])["deliveries"][0]["id"]
    assert wait_delivery(api, failed)["status"] == "failed"

    seen = [
        api.get(f"/channels/{name}").text,
        api.get("/channels").text,
        api.get(f"/deliveries/{ok}").text,
        api.get(f"/deliveries/{failed}").text,
        api.get("/deliveries", params={"channel": name}).text,
        api.post(f"/channels/{name}/test").text,
        server.log(),
    ]
    for text in seen:
        assert key not in text
    attempt = api.get(f"/deliveries/{ok}").json()["attempt_log"][0]
    assert attempt["request"][0]["url"].endswith("/cgi-bin/webhook/send?key=••••")


def test_bad_webhook_urls_are_422_naming_the_field(api: httpx.Client, unique: str) -> None:
    for value in ("nonsense url", "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"):
        response = api.post(
            "/channels",
            json={
                "name": f"wb-bad-{unique}",
                "type": "wecom_bot",
                "config": {"webhook_url": value},
            },
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == "config.webhook_url"


def test_a_bare_key_is_saved_as_the_official_url(api: httpx.Client, unique: str) -> None:
    created = make_channel(api, f"wb-bare-{unique}", KEY)
    assert created["config"]["webhook_url"] == (
        "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=••••"
    )
    assert KEY not in orjson.dumps(created).decode()


def test_channel_type_is_listed(api: httpx.Client) -> None:
    types = {t["type"]: t for t in api.get("/channel-types").json()["items"]}
    wecom = types["wecom_bot"]
    assert wecom["secret_fields"] == ["webhook_url"]
    assert wecom["limits"]["rate"] == {"per_minute": 20}
    assert wecom["schema"]["properties"]["markdown_version"]["enum"] == ["markdown", "markdown_v2"]


def test_a_burst_keeps_within_the_bot_limit_and_delivers_everything(
    make_server: Any, unique: str
) -> None:
    """25 messages to one bot: msgpush waits for the window; WeCom never says 45009."""
    fake = FakeWeComBot(window_s=3.0).start()  # 60 s scaled by 0.05, as the server's windows
    try:
        server = make_server(MSGPUSH_RATE_WINDOW_SCALE="0.05")
        with server.client() as api:
            key = channel_for(api, fake, f"wb-burst-{unique}")
            started = time.monotonic()
            ids = [
                send(api, [f"wb-burst-{unique}"], title=f"#{i}")["deliveries"][0]["id"]
                for i in range(25)
            ]
            for delivery_id in ids:
                assert wait_delivery(api, delivery_id)["status"] == "delivered"
            assert time.monotonic() - started >= 3.0
        assert fake.rejections_for(key) == []
        assert len(fake.messages_for(key)) == 25
    finally:
        fake.stop()
