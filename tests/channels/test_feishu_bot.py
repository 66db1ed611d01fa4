"""The Feishu / Lark bot channel: card rendering, signature, keywords, sizes, every vendor code,
Test Push, secrets and the per-bot rate windows, end to end against a strict fake Feishu."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest

from msgpush.channels.base import VendorResponse
from msgpush.channels.feishu_bot import (
    BODY_LIMIT_BYTES,
    CHANNEL_TYPE,
    FeishuBotSettings,
    classify_answer,
    payload_for,
    sign,
)
from msgpush.channels.feishu_card import build_card, escape_markdown
from msgpush.message import Message
from tests.fakes.feishu import (
    LEGACY_BAD_REQUEST,
    SUCCESS,
    SUCCESS_OLD,
    FeishuFake,
    dingtalk_style_sign,
    feishu_sign,
)
from tests.helpers import send, wait_delivery
from tests.server import ServerProcess

SECRET = "fs-signing-" + uuid.uuid4().hex
HOOK = "https://open.feishu.cn/open-apis/bot/v2/hook/"


def settings(**config: Any) -> FeishuBotSettings:
    return FeishuBotSettings.model_validate({"webhook_url": HOOK + str(uuid.uuid4()), **config})


def body_bytes(payload: dict[str, Any]) -> int:
    return len(orjson.dumps(payload))


def card_texts(payload: dict[str, Any]) -> list[str]:
    card = payload["card"]
    texts = [card["header"]["title"]["content"]]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("tag") == "markdown":
                texts.append(node["content"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(card["body"])
    return texts


# -- rendering, directly on the channel type ---------------------------------------------------


@pytest.mark.parametrize(
    ("level", "template"),
    [
        ("info", "blue"),
        ("success", "green"),
        ("warning", "orange"),
        ("error", "red"),
        ("critical", "carmine"),
    ],
)
def test_card_header_is_coloured_by_level(level: str, template: str) -> None:
    card = build_card(Message(title="Nightly load", content="done", level=level))
    assert card["schema"] == "2.0"
    assert card["header"]["title"] == {"tag": "plain_text", "content": "Nightly load"}
    assert card["header"]["template"] == template
    tags = card["header"].get("text_tag_list", [])
    assert [t["text"]["content"] for t in tags] == ([] if level == "info" else [level.upper()])


def test_card_carries_content_fields_buttons_and_mentions() -> None:
    message = Message(
        title="Task daily_sales failed",
        content="**daily_sales** failed after 3 retries.\n\nSee the log.",
        level="error",
        fields={"Task": "daily_sales", "Duration": "3m12s", "Owner": "data-team"},
        links=[
            {"title": "Open task", "url": "https://example.com/tasks/42"},
            {"title": "Logs", "url": "https://example.com/logs/42"},
        ],
        mentions={
            "all": True,
            "user_ids": ["ou_7d8a6e6df7621556ce0d21922b676706", "zhangsan"],
            "mobiles": ["13800000000"],
            "emails": ["li@example.com"],
        },
    )
    payload = payload_for(message, settings())
    assert payload["msg_type"] == "interactive"
    assert "content" not in payload and "timestamp" not in payload  # no secret: unsigned
    content, row1, row2, mentions, buttons = payload["card"]["body"]["elements"]
    assert content == {"tag": "markdown", "content": message.content}
    # fields: two columns a row
    assert [len(r["columns"]) for r in (row1, row2)] == [2, 1]
    assert row1["columns"][0]["elements"][0]["content"] == "**Task**\ndaily&#95;sales"
    assert row1["columns"][1]["elements"][0]["content"] == "**Duration**\n3m12s"
    # mentions: ids and @all ping; mobiles and emails are named as plain text
    assert mentions["content"] == (
        "<at id=ou_7d8a6e6df7621556ce0d21922b676706></at> <at id=zhangsan></at> "
        "<at id=all></at>\n@13800000000 @li@example.com"
    )
    [first, second] = [c["elements"][0] for c in buttons["columns"]]
    assert first["text"]["content"] == "Open task"
    assert first["behaviors"] == [
        {"type": "open_url", "default_url": "https://example.com/tasks/42"}
    ]
    assert (first["type"], second["type"]) == ("primary", "default")


def test_text_format_is_sent_as_text_with_at_user_id_tags() -> None:
    message = Message(
        title="Disk full",
        content="/data is at 99% <b>",
        format="text",
        level="warning",
        links=[{"title": "Dashboard", "url": "https://example.com/d"}],
        mentions={"all": True, "user_ids": ["ou_abc123"], "mobiles": ["13800000000"]},
    )
    payload = payload_for(message, settings())
    assert payload["msg_type"] == "text"
    text = payload["content"]["text"]
    assert text.startswith("[WARNING] Disk full\n\n/data is at 99% <b>")
    assert "Dashboard: https://example.com/d" in text
    assert text.endswith(
        '<at user_id="ou_abc123">ou_abc123</at> <at user_id="all">所有人</at> @13800000000'
    )


def test_plain_text_parts_are_escaped_in_card_markdown() -> None:
    hostile = "a*b_c~d `e` [x](https://evil) <at id=all></at> # | \\ &lt;"
    message = Message(
        title="t", content=hostile, format="text", fields={"k*": hostile}, level="error"
    )
    card = build_card(message)
    content = card["body"]["elements"][0]["content"]
    field = card["body"]["elements"][1]["columns"][0]["elements"][0]["content"]
    for rendered in (content, field):
        for raw in ("*b", "_c", "~d", "`e`", "[x]", "(https", "<at", "# ", "| ", "\\", " &lt;;"):
            assert raw not in rendered, (raw, rendered)
    assert content == escape_markdown(hostile)
    assert "&lt;at id=all&gt;" in content and content.endswith("&amp;lt;")
    assert escape_markdown("- item\n+ more\n  - nested") == "&#45; item\n&#43; more\n  &#45; nested"
    # markdown content is the caller's markdown and passes through
    assert build_card(Message(content="**bold**"))["body"]["elements"][0]["content"] == "**bold**"


@pytest.mark.parametrize("fmt", ["markdown", "text"])
def test_cjk_content_is_cut_in_bytes_to_fit_the_20kb_body(fmt: str) -> None:
    content = "数据同步失败，请检查上游。" * 5000  # 195,000 bytes of UTF-8
    message = Message(title="同步失败", content=content, format=fmt, level="critical")
    payload = payload_for(message, settings(secret=SECRET, keywords=["告警"]))
    raw = orjson.dumps(payload)
    assert len(raw) <= BODY_LIMIT_BYTES
    assert len(raw) > BODY_LIMIT_BYTES - 200  # cut just enough, not far more
    raw.decode("utf-8")  # whole characters only
    shown = payload["card"]["body"]["elements"][0]["content"] if fmt == "markdown" else ""
    shown = shown or payload["content"]["text"]
    assert shown.endswith("…(truncated by msgpush)")
    assert "\ufffd" not in shown


def test_oversized_fields_links_and_mentions_still_fit() -> None:
    message = Message(
        title="大" * 512,
        content="内容" * 20000,
        fields={f"字段{i}": "值" * 1000 for i in range(50)},
        links=[{"title": "链" * 128, "url": "https://example.com/" + "a" * 1900}] * 10,
        mentions={"user_ids": [f"ou_{i:032x}" for i in range(100)], "mobiles": ["1" * 1000]},
    )
    payload = payload_for(message, settings(secret=SECRET))
    assert body_bytes(payload) <= BODY_LIMIT_BYTES
    texts = card_texts(payload)
    assert any(t.startswith("内容") for t in texts), "content keeps its share"
    assert any("more fields truncated" in t for t in texts)
    assert all(f"<at id=ou_{i:032x}></at>" in "".join(texts) for i in range(100))


def test_a_missing_keyword_is_added_to_the_title_and_a_present_one_is_not() -> None:
    plain = payload_for(Message(title="Load done", content="ok"), settings(keywords=["告警"]))
    assert plain["card"]["header"]["title"]["content"] == "[告警] Load done"

    present = payload_for(
        Message(title="Load done", content="ok 告警"), settings(keywords=["x", "告警"])
    )
    assert present["card"]["header"]["title"]["content"] == "Load done"

    # the keyword was only in the part of the content the size limit cut off
    tail = Message(title="Load", content="数" * 10000 + "告警")
    cut = payload_for(tail, settings(keywords=["告警"]))
    assert cut["card"]["header"]["title"]["content"] == "[告警] Load"

    text = payload_for(Message(content="ok", format="text"), settings(keywords=["monitor"]))
    assert text["content"]["text"].startswith("[monitor] ")


def test_peer_sign_algorithm_is_feishus_not_dingtalks() -> None:
    """Some clients sign for Feishu with DingTalk's HMAC (key = secret, data = ts\\nsecret); not us."""
    timestamp = 1599360473
    ours = sign("demo-secret", timestamp)
    assert ours == feishu_sign("demo-secret", str(timestamp))
    assert ours != dingtalk_style_sign("demo-secret", str(timestamp))
    payload = payload_for(Message(content="x"), settings(secret="demo-secret"), now=timestamp)
    assert payload["timestamp"] == "1599360473"  # seconds, as a string, in the body
    assert payload["sign"] == ours


# -- reading Feishu's answers ------------------------------------------------------------------


def classify(body: Any, status: int = 200, **config: Any) -> Any:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return classify_answer(VendorResponse(status, {}, raw), settings(**config))


@pytest.mark.parametrize("body", [SUCCESS, SUCCESS_OLD])
def test_success_in_the_current_and_the_old_shape(body: dict[str, Any]) -> None:
    outcome = classify(body)
    assert (outcome.kind, outcome.vendor_code) == ("delivered", "0")


@pytest.mark.parametrize(
    ("body", "kind", "hint"),
    [
        ({"code": 9499, "msg": "Bad Request", "data": {}}, "failed", "over 20 KB"),
        (LEGACY_BAD_REQUEST, "failed", "over 20 KB"),
        ({"code": 9499, "msg": "Bad Request: fail to parse content"}, "failed", "malformed"),
        (
            {"code": 19001, "msg": "param invalid: incoming webhook access token invalid"},
            "failed",
            "current webhook URL",
        ),
        ({"code": 19002, "msg": "params error, msg_type need"}, "failed", "msg_type"),
        ({"code": 19022, "msg": "Ip Not Allowed"}, "failed", "IP allowlist"),
        ({"code": 11232, "msg": "frequency limited psm[x]appID[1500]"}, "retry", "will retry"),
        ({"code": 9499, "msg": "too many request"}, "retry", "throttled"),
        ({"code": 11246, "msg": "invalid user resource (at/person)"}, "failed", "user_ids"),
        ({"code": 19036, "msg": "exceeds the size limit of 30KB"}, "failed", "too large"),
        ({"code": 12345, "msg": "new"}, "failed", "does not know this code"),
    ],
)
def test_every_vendor_code_is_classified(body: dict[str, Any], kind: str, hint: str) -> None:
    outcome = classify(body)
    assert outcome.kind == kind, outcome
    assert outcome.vendor_code == str(body.get("code", body.get("StatusCode")))
    assert hint in (outcome.diagnosis or ""), outcome.diagnosis
    if kind == "retry":
        assert outcome.retry_after_s == 60


def test_signature_and_keyword_diagnoses_say_what_to_fix() -> None:
    bad_sign = {"code": 19021, "msg": "sign match fail or timestamp is not within one hour"}
    with_secret = classify(bad_sign, secret=SECRET).diagnosis or ""
    assert "secret differs" in with_secret and "clock" in with_secret
    assert "has no secret" in (classify(bad_sign).diagnosis or "")

    keywords = {"code": 19024, "msg": "Key Words Not Found"}
    named = classify(keywords, keywords=["告警", "monitor"]).diagnosis or ""
    assert "'告警', 'monitor'" in named
    assert "channel has none" in (classify(keywords).diagnosis or "")


def test_peer_http_200_with_an_error_code_is_not_success() -> None:
    """Grafana, Nightingale and Apprise count any HTTP 200 as delivered; msgpush does not."""
    outcome = classify({"code": 19024, "msg": "Key Words Not Found"}, status=200)
    assert outcome.kind == "failed" and outcome.status_code == 200
    assert classify(b"ok", status=200).kind == "failed"  # not Feishu's answer at all
    assert classify(b"<html>bad gateway</html>", status=502).kind == "retry"


def test_settings_take_feishu_lark_and_proxy_urls_and_refuse_the_rest() -> None:
    for url in (
        HOOK + "0c1f8a4e-0000-4a5b-9e0f-123456789abc",
        "https://open.larksuite.com/open-apis/bot/v2/hook/0c1f8a4e-0000-4a5b-9e0f-12345678",
        "http://feishu-proxy.internal:8080/anything/here",
    ):
        FeishuBotSettings.model_validate({"webhook_url": url})
    for url, words in (
        ("0c1f8a4e-0000-4a5b-9e0f-123456789abc", "not the token alone"),
        ("https://open.feishu.cn/open-apis/bot/v2/hook/", "has the form"),
        ("https://open.feishu.cn/open-apis/im/v1/messages", "has the form"),
        ("ftp://example.com/x", "full webhook URL"),
    ):
        with pytest.raises(ValueError, match=words):
            FeishuBotSettings.model_validate({"webhook_url": url})
    with pytest.raises(ValueError):
        FeishuBotSettings.model_validate({"webhook_url": HOOK + "x", "keywords": ["k"] * 11})
    described = CHANNEL_TYPE.describe()
    assert set(described["secret_fields"]) == {"webhook_url", "secret"}
    assert described["limits"]["rate"] == {"per_second": 5, "per_minute": 100}
    assert described["limits"]["size_bytes"] == {"body": BODY_LIMIT_BYTES}


# -- end to end: msgpush server against the fake Feishu ------------------------------------------


@pytest.fixture(scope="module")
def feishu() -> Iterator[FeishuFake]:
    fake = FeishuFake().start()
    yield fake
    fake.stop()


@pytest.fixture
def bot(feishu: FeishuFake) -> Callable[..., tuple[str, str]]:
    """Register a bot at the fake: returns (token, webhook URL)."""

    def make(**options: Any) -> tuple[str, str]:
        token = str(uuid.uuid4())
        return token, feishu.add_bot(token, **options)

    return make


def make_channel(api: httpx.Client, name: str, url: str, **config: Any) -> dict[str, Any]:
    response = api.post(
        "/channels",
        json={"name": name, "type": "feishu_bot", "config": {"webhook_url": url, **config}},
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def send_one(api: httpx.Client, channel: str, **message: Any) -> str:
    return str(send(api, [channel], **message)["deliveries"][0]["id"])


def test_rich_message_is_delivered_as_a_signed_card(
    api: httpx.Client, feishu: FeishuFake, bot: Any, unique: str
) -> None:
    token, url = bot(secret=SECRET, keywords=("告警",))
    make_channel(api, f"fs-{unique}", url, secret=SECRET, keywords=["告警"])
    delivery_id = send_one(
        api,
        f"fs-{unique}",
        title="Task daily_sales failed",
        content="**daily_sales** failed",
        level="error",
        fields={"Task": "daily_sales"},
        links=[{"title": "Open task", "url": "https://example.com/tasks/42"}],
        mentions={"user_ids": ["ou_abc123"], "mobiles": ["13800000000"]},
    )
    final = wait_delivery(api, delivery_id)
    assert final["status"] == "delivered", final
    [payload] = feishu.delivered(token)
    assert payload["msg_type"] == "interactive"
    assert abs(int(payload["timestamp"]) - time.time()) < 60
    card = payload["card"]
    assert card["header"]["title"]["content"] == "[告警] Task daily_sales failed"
    assert card["header"]["template"] == "red"
    assert "<at id=ou_abc123></at>" in orjson.dumps(card).decode()
    [attempt] = final["attempt_log"]
    assert (attempt["vendor_code"], attempt["status_code"]) == ("0", 200)
    assert "13800000000" in final["warning"], "a mobile cannot be @'d: the sender is told"


def test_text_format_is_delivered_as_text(
    api: httpx.Client, feishu: FeishuFake, bot: Any, unique: str
) -> None:
    token, url = bot(keywords=("monitor",))
    make_channel(api, f"fs-text-{unique}", url, keywords=["monitor"])
    delivery_id = send_one(
        api, f"fs-text-{unique}", content="plain", format="text", mentions={"all": True}
    )
    assert wait_delivery(api, delivery_id)["status"] == "delivered"
    [payload] = feishu.delivered(token)
    assert payload == {
        "msg_type": "text",
        "content": {"text": '[monitor] t\n\nplain\n\n<at user_id="all">所有人</at>'},
    }


@pytest.mark.parametrize(
    ("answer", "code", "hint"),
    [
        ({"code": 9499, "msg": "Bad Request", "data": {}}, "9499", "over 20 KB"),
        (LEGACY_BAD_REQUEST, "9499", "over 20 KB"),
        ({"code": 19002, "data": {}, "msg": "params error, msg_type need"}, "19002", "msg_type"),
        ({"code": 11246, "msg": "invalid user resource (at/person)"}, "11246", "user_ids"),
    ],
)
def test_injected_permanent_errors_fail_at_once_with_a_diagnosis(
    api: httpx.Client,
    feishu: FeishuFake,
    bot: Any,
    unique: str,
    answer: dict[str, Any],
    code: str,
    hint: str,
) -> None:
    token, url = bot()
    feishu.answer_next(token, answer)
    make_channel(api, f"fs-inj-{unique}", url)
    final = wait_delivery(api, send_one(api, f"fs-inj-{unique}"))
    assert final["status"] == "failed"
    [attempt] = final["attempt_log"]
    assert (attempt["vendor_code"], attempt["status_code"]) == (code, 200)
    assert hint in final["error"], final["error"]


def _fail_once(api: httpx.Client, name: str, url: str, code: str, **config: Any) -> dict[str, Any]:
    make_channel(api, name, url, **config)
    final = wait_delivery(api, send_one(api, name))
    assert final["status"] == "failed", final
    assert [a["vendor_code"] for a in final["attempt_log"]] == [code]
    return final


def test_unknown_token_is_19001(api: httpx.Client, feishu: FeishuFake, unique: str) -> None:
    final = _fail_once(api, f"fs-19001-{unique}", feishu.hook_url(str(uuid.uuid4())), "19001")
    assert "current webhook URL" in final["error"]


def test_wrong_or_missing_secret_is_19021(api: httpx.Client, bot: Any, unique: str) -> None:
    _, url = bot(secret=SECRET)
    wrong = _fail_once(api, f"fs-19021-{unique}", url, "19021", secret="not-the-secret")
    assert "secret differs" in wrong["error"]
    missing = _fail_once(api, f"fs-19021n-{unique}", url, "19021")
    assert "has no secret" in missing["error"]


def test_clock_skew_over_an_hour_is_19021(
    api: httpx.Client, feishu: FeishuFake, bot: Any, unique: str
) -> None:
    _, url = bot(secret=SECRET)
    feishu.clock_offset_s = 3_700
    try:
        final = _fail_once(api, f"fs-skew-{unique}", url, "19021", secret=SECRET)
    finally:
        feishu.clock_offset_s = 0
    assert "clock is off by more than 1 hour" in final["error"]


def test_ip_outside_the_allowlist_is_19022(api: httpx.Client, bot: Any, unique: str) -> None:
    _, url = bot(ip_allowlist=("10.1.2.*", "192.168.0.0/16"))
    final = _fail_once(api, f"fs-19022-{unique}", url, "19022")
    assert "IP allowlist" in final["error"]


def test_keywords_that_differ_from_the_bots_are_19024_naming_them(
    api: httpx.Client, bot: Any, unique: str
) -> None:
    _, url = bot(keywords=("告警",))
    final = _fail_once(api, f"fs-19024-{unique}", url, "19024", keywords=["alarm", "监控"])
    assert "'alarm', '监控'" in final["error"]


def _throttled(api: httpx.Client, name: str, url: str, code: str) -> dict[str, Any]:
    """A throttled delivery waits out Feishu's minute window: it is retrying, not delivered."""
    make_channel(api, name, url)
    final = wait_delivery(api, send_one(api, name), ("retrying", "delivered", "failed"))
    assert final["status"] == "retrying", final
    [attempt] = final["attempt_log"]
    assert (attempt["outcome"], attempt["vendor_code"]) == ("retry", code)
    wait_s = (_ms(attempt["next_attempt_at"]) - _ms(attempt["started_at"])) / 1000
    assert 59 <= wait_s <= 61, wait_s
    return final


def _ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def test_rate_limit_answer_is_retried_after_the_window(
    api: httpx.Client, feishu: FeishuFake, bot: Any, unique: str
) -> None:
    token, url = bot()
    feishu.fail_next(token, 11232, "frequency limited psm[lark.oapi.app_platform_runtime]")
    final = _throttled(api, f"fs-11232-{unique}", url, "11232")
    assert "rate-limited" in final["error"]
    assert feishu.delivered(token) == []


def test_peer_9499_too_many_request_is_not_logged_as_success(
    api: httpx.Client, feishu: FeishuFake, bot: Any, unique: str
) -> None:
    """ccfos/nightingale#1437: `{"code":9499,"msg":"too many request"}` recorded as result=succ."""
    token, url = bot()
    feishu.fail_next(token, 9499, "too many request")
    final = _throttled(api, f"fs-9499tm-{unique}", url, "9499")
    assert "throttled" in final["error"]
    assert feishu.delivered(token) == []


def test_peer_http_200_error_is_recorded_as_failed_not_delivered(
    api: httpx.Client, feishu: FeishuFake, bot: Any, unique: str
) -> None:
    """A bot answering HTTP 200 with code != 0 delivered nothing."""
    token, url = bot()
    feishu.fail_next(token, 19024, "Key Words Not Found")
    final = _fail_once(api, f"fs-200-{unique}", url, "19024")
    assert final["attempt_log"][0]["status_code"] == 200
    assert feishu.delivered(token) == []


def test_peer_dingtalk_style_signature_is_refused_and_ours_accepted(
    api: httpx.Client, feishu: FeishuFake, bot: Any, unique: str
) -> None:
    """dsh-notifier#8, dynamic-tp#412 signed Feishu the DingTalk way -> 19021."""
    token, url = bot(secret=SECRET)
    timestamp = str(int(time.time()))
    body = {"msg_type": "text", "content": {"text": "x"}, "timestamp": timestamp}
    wrong = httpx.post(url, json={**body, "sign": dingtalk_style_sign(SECRET, timestamp)})
    assert (wrong.status_code, wrong.json()["code"]) == (200, 19021)
    right = httpx.post(url, json={**body, "sign": feishu_sign(SECRET, timestamp)})
    assert right.json()["code"] == 0
    make_channel(api, f"fs-sign-{unique}", url, secret=SECRET)
    assert wait_delivery(api, send_one(api, f"fs-sign-{unique}"))["status"] == "delivered"
    assert len(feishu.delivered(token)) == 2


def test_old_success_shape_counts_as_delivered(
    api: httpx.Client, feishu: FeishuFake, bot: Any, unique: str
) -> None:
    token, url = bot()
    feishu.answer_next(token, SUCCESS_OLD)
    make_channel(api, f"fs-old-{unique}", url)
    assert wait_delivery(api, send_one(api, f"fs-old-{unique}"))["status"] == "delivered"


def test_push_with_unsaved_and_saved_settings(
    api: httpx.Client, feishu: FeishuFake, bot: Any, unique: str
) -> None:
    token, url = bot(secret=SECRET, keywords=("msgpush",))
    ok = api.post(
        "/channels/test",
        json={"type": "feishu_bot", "config": {"webhook_url": url, "secret": SECRET}},
    ).json()
    assert ok["ok"] is True and ok["vendor_code"] == "0", ok
    assert feishu.delivered(token)[-1]["card"]["header"]["title"]["content"] == (
        "msgpush Test Push"
    )

    bad = api.post("/channels/test", json={"type": "feishu_bot", "config": {"webhook_url": url}})
    result = bad.json()
    assert result["ok"] is False
    assert (result["status_code"], result["vendor_code"]) == (200, "19021")
    assert "has no secret" in result["diagnosis"]

    channel = make_channel(api, f"fs-test-{unique}", url, secret=SECRET)
    saved = api.post(f"/channels/{channel['id']}/test").json()
    assert saved["ok"] is True, saved
    feishu.fail_next(token, 19022, "Ip Not Allowed")
    refused = api.post(f"/channels/{channel['id']}/test").json()
    assert (refused["ok"], refused["vendor_code"]) == (False, "19022")
    assert "IP allowlist" in refused["diagnosis"]


def test_token_and_secret_never_show(
    api: httpx.Client, server: ServerProcess, feishu: FeishuFake, bot: Any, unique: str
) -> None:
    token, url = bot(secret=SECRET)
    feishu.fail_next(token, 19001, "param invalid: incoming webhook access token invalid")
    channel = make_channel(api, f"fs-secret-{unique}", url, secret=SECRET)
    failed = wait_delivery(api, send_one(api, f"fs-secret-{unique}"))
    delivered = wait_delivery(api, send_one(api, f"fs-secret-{unique}"))
    assert delivered["status"] == "delivered"
    tested = api.post(f"/channels/{channel['id']}/test")
    unsaved = api.post(
        "/channels/test", json={"type": "feishu_bot", "config": {"webhook_url": url}}
    )
    shown = [
        orjson.dumps(channel).decode(),
        api.get(f"/channels/{channel['id']}").text,
        api.get("/channels", params={"type": "feishu_bot"}).text,
        orjson.dumps(failed).decode(),
        orjson.dumps(delivered).decode(),
        tested.text,
        unsaved.text,
        server.log(),
    ]
    for text in shown:
        assert token not in text
        assert SECRET not in text
    config = channel["config"]
    assert config["webhook_url"].startswith("http://127.0.0.1:")
    assert "••••" in config["webhook_url"] and "••••" in config["secret"]
    assert delivered["attempt_log"][0]["request"][0]["url"]  # the transcript is kept, redacted


def test_burst_beyond_the_vendor_windows_draws_no_rate_limit(
    make_server: Callable[..., ServerProcess], feishu: FeishuFake, bot: Any, unique: str
) -> None:
    # Windows shrink 20x on both sides: 1 s -> 50 ms, 60 s -> 3 s.
    token, url = bot(window_scale=0.05)
    fast = make_server(MSGPUSH_RATE_WINDOW_SCALE="0.05")
    count = 110  # more than the 100 a (shrunk) minute, and far more than 5 a (shrunk) second
    name = f"fs-burst-{unique}"
    with fast.client() as client:
        make_channel(client, name, url)
        messages = [{"channels": [name], "title": f"burst {i}"} for i in range(count)]
        response = client.post("/messages/batch", json={"messages": messages})
        assert response.status_code == 202, response.text
        deadline = time.monotonic() + 25
        statuses: list[str] = []
        while time.monotonic() < deadline:
            page = client.get("/deliveries", params={"channel": name, "limit": 500}).json()
            statuses = [d["status"] for d in page["items"]]
            if statuses.count("delivered") == count:
                break
            time.sleep(0.2)
    assert statuses.count("delivered") == count, statuses
    refused = [a for a in feishu.answers(token) if a.get("code") != 0]
    assert refused == [], f"{len(refused)} answers were Feishu rate-limit errors"
    assert len(feishu.delivered(token)) == count
    arrivals = sorted(r.at for r in feishu.at(f"/open-apis/bot/v2/hook/{token}"))
    assert arrivals[-1] - arrivals[0] >= 3.0 * 0.95, "the minute window paced the burst"
    assert min(b - a for a, b in zip(arrivals, arrivals[5:], strict=False)) > 0.02
