"""The Feishu / Lark self-built app channel: the shared card renderer, content as a JSON string,
recipients and one request each, uuid de-duplication across retries, partial success, the
tenant_access_token cache, every error code, Test Push, secrets, Lark, bursts and processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr, ValidationError

from msgpush.channels.base import Outcome, SendContext, VendorRequest, VendorResponse
from msgpush.channels.feishu_app import (
    CARD_BODY_MAX_BYTES,
    CHANNEL_TYPE,
    MAX_RECIPIENTS,
    SEND_ERRORS,
    TEXT_BODY_MAX_BYTES,
    TOKEN_ERRORS,
    FeishuAppSettings,
    Target,
    dedup_uuid,
    plan,
    read_answer,
    read_token,
    targets,
)
from msgpush.channels.feishu_card import build_card
from msgpush.channels.render import TRUNCATION_MARKER
from msgpush.message import Message
from tests.fakes.feishu import APP_SEND_PATH, APP_TOKEN_PATH, FakeFeishuApp, FeishuTenantApp
from tests.helpers import send, wait_delivery
from tests.server import ServerProcess

DELIVERY = "dlv_01JQ4Z6Y8W9X0V1T2S3R4Q5P6N"
OU = "ou_7d8a6e6df7621556ce0d21922b676706"


@pytest.fixture(scope="module")
def feishu() -> Iterator[FakeFeishuApp]:
    fake = FakeFeishuApp().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def lark() -> Iterator[FakeFeishuApp]:
    fake = FakeFeishuApp(lark=True).start()
    yield fake
    fake.stop()


# -- rendering, on the channel type directly ----------------------------------------------------


async def _no_exchange(request: VendorRequest, classify: Any) -> Outcome:  # pragma: no cover
    raise AssertionError("rendering tests never send")


def settings(**config: Any) -> FeishuAppSettings:
    base: dict[str, Any] = {"app_id": "cli_a1b2c3d4e5f6a7b8", "app_secret": "app-secret-value"}
    if "receive_ids" not in config:
        base["receive_ids"] = [OU]
    return FeishuAppSettings.model_validate({**base, **config})


def context(delivery_id: str = DELIVERY, **kw: Any) -> SendContext:
    return SendContext(delivery_id=delivery_id, attempt=1, exchange=_no_exchange, **kw)


def bodies(message: dict[str, Any], **config: Any) -> list[dict[str, Any]]:
    return [
        orjson.loads(r.body)
        for r in plan(Message.model_validate(message), settings(**config), context())
    ]


RICH: dict[str, Any] = {
    "title": "Task daily_sales failed",
    "content": "**daily_sales** failed after 3 retries.\n\nSee the log.",
    "level": "error",
    "fields": {"Task": "daily_sales", "Duration": "3m12s"},
    "links": [{"title": "Open task", "url": "https://example.com/tasks/42"}],
    "mentions": {"user_ids": [OU], "emails": ["li@example.com"]},
}


def test_the_card_is_the_bots_card_sent_as_a_json_string() -> None:
    [body] = bodies(RICH)
    assert set(body) == {"receive_id", "msg_type", "content", "uuid"}
    assert (body["receive_id"], body["msg_type"]) == (OU, "interactive")
    assert isinstance(body["content"], str), "im/v1 takes content as a JSON string"
    card = orjson.loads(body["content"])
    assert card == build_card(Message.model_validate(RICH))  # one renderer for bot and app
    assert card["header"]["template"] == "red"
    assert f"<at id={OU}></at>" in body["content"]


def test_peers_D13_mentions_ride_in_the_one_message_to_each_recipient() -> None:
    sent = bodies({**RICH, "recipients": {"chats": ["oc_ops", "oc_dev"]}})
    assert [b["receive_id"] for b in sent] == ["oc_ops", "oc_dev"]
    for body in sent:
        assert f"<at id={OU}></at>" in body["content"] and "@li@example.com" in body["content"]


def test_render_previews_the_first_request_with_a_placeholder_token() -> None:
    request = CHANNEL_TYPE.render(Message(title="t"), settings(), context())
    assert request.url == "https://open.feishu.cn/open-apis/im/v1/messages?receive_id_type=open_id"
    assert request.headers["Authorization"] == "Bearer TOKEN"
    nobody = CHANNEL_TYPE.render(
        Message(title="t", recipients={"tags": ["x"]}), settings(receive_ids=[]), context()
    )
    assert orjson.loads(nobody.body)["receive_id"] == "RECEIVE_ID"


def test_text_format_is_text_with_at_tags_in_a_json_string() -> None:
    [body] = bodies({**RICH, "format": "text", "mentions": {"all": True, "user_ids": [OU]}})
    assert body["msg_type"] == "text"
    text = orjson.loads(body["content"])["text"]
    assert text.startswith("[ERROR] Task daily_sales failed\n\n**daily_sales** failed")
    assert "Open task: https://example.com/tasks/42" in text
    assert text.endswith(f'<at user_id="{OU}">{OU}</at> <at user_id="all">所有人</at>')


def test_cjk_cards_and_text_are_cut_in_bytes_to_fit_the_body_limits() -> None:
    huge = {"title": "数据刷新失败", "content": "磁盘空间不足，" * 9000, "level": "warning"}
    email = "a.very.long.mailbox.name." * 8 + "@example.com"
    message = Message.model_validate({**huge, "recipients": {"users": [email, OU]}})
    requests = plan(message, settings(), context())
    assert [r.target.id_type for r in requests] == ["email", "open_id"]
    for request in requests:
        assert len(request.body) <= CARD_BODY_MAX_BYTES
        request.body.decode("utf-8")  # never a broken character
    longest = requests[0].body
    assert len(longest) > CARD_BODY_MAX_BYTES - 200, "the content uses the room it has"
    assert (
        TRUNCATION_MARKER.strip()
        in orjson.loads(orjson.loads(longest)["content"])["body"]["elements"][0]["content"]
    )
    text = plan(
        Message.model_validate({**huge, "content": "磁盘空间不足" * 10000, "format": "text"}),
        settings(),
        context(),
    )[0].body
    assert CARD_BODY_MAX_BYTES < len(text) <= TEXT_BODY_MAX_BYTES
    assert orjson.loads(orjson.loads(text)["content"])["text"].endswith(TRUNCATION_MARKER)


def test_uuid_is_stable_per_delivery_and_recipient_and_within_50_chars() -> None:
    a, b = Target("open_id", OU), Target("chat_id", "oc_1")
    first = dedup_uuid(DELIVERY, a)
    assert first == dedup_uuid(DELIVERY, a) and first.startswith(DELIVERY + "-")
    assert len({first, dedup_uuid(DELIVERY, b), dedup_uuid("dlv_other", a)}) == 3
    long = dedup_uuid("x" * 80, Target("email", "a" * 200 + "@example.com"))
    assert len(first) <= 50 and len(long) <= 50
    assert long != dedup_uuid("x" * 79 + "y", Target("email", "a" * 200 + "@example.com"))


def test_every_attempt_of_a_delivery_sends_the_same_bytes() -> None:
    """A retry must carry the same uuid to each recipient, so Feishu drops what it delivered."""
    message = Message.model_validate({**RICH, "recipients": {"users": [OU, "lisi"]}})
    first = plan(message, settings(), context())
    again = plan(message, settings(), SendContext(DELIVERY, 5, _no_exchange))
    assert [r.body for r in first] == [r.body for r in again]
    assert len({orjson.loads(r.body)["uuid"] for r in first}) == 2


def test_a_messages_recipients_override_and_go_by_the_form_of_each_id() -> None:
    message = Message.model_validate(
        {
            "title": "t",
            "recipients": {
                "users": ["ou_abc", "on_def", "li@example.com", "zhangsan", "oc_grp", "bad id"],
                "chats": ["oc_ops", "oc_ops"],
                "departments": ["od-1"],
                "tags": ["t1"],
            },
        }
    )
    chosen = targets(message, settings())
    assert [(t.id_type, t.receive_id) for t in chosen.chosen] == [
        ("open_id", "ou_abc"),
        ("union_id", "on_def"),
        ("email", "li@example.com"),
        ("user_id", "zhangsan"),
        ("chat_id", "oc_grp"),
        ("chat_id", "oc_ops"),
    ]
    assert chosen.notes == [
        "recipients that are not Feishu ids were left out: 'bad id'",
        "Feishu's im/v1/messages reaches users and group chats only, so these were left out: "
        "department od-1, tag t1",
    ]
    defaults = targets(Message(title="t"), settings(receive_id_type="chat_id", receive_ids="oc_a"))
    assert defaults.chosen == [Target("chat_id", "oc_a")] and defaults.notes == []


def test_a_message_reaches_at_most_50_recipients_and_says_who_was_left_out() -> None:
    users = [f"ou_{i:04d}" for i in range(MAX_RECIPIENTS + 3)]
    chosen = targets(Message(title="t", recipients={"users": users}), settings())
    assert len(chosen.chosen) == MAX_RECIPIENTS == 50
    assert "open_id ou_0050, open_id ou_0051, open_id ou_0052" in chosen.notes[0]


def test_settings_parse_validate_and_take_feishu_lark_and_proxy_bases() -> None:
    parsed = settings(receive_ids=f"{OU}, ou_b|ou_b", app_secret=" s ")
    assert parsed.receive_ids == [OU, "ou_b"] and parsed.app_secret.get_secret_value() == "s"
    assert settings().api_base == "https://open.feishu.cn"
    assert settings(api_base="https://open.larksuite.com/open-apis/").api_base == (
        "https://open.larksuite.com"
    )
    assert settings(api_base="http://127.0.0.1:9/feishu/").api_base == "http://127.0.0.1:9/feishu"
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"receive_ids": ["oc_group"]}, "receive_ids", "looks like a chat_id"),
        ({"receive_id_type": "email", "receive_ids": ["zhangsan"]}, "receive_ids", "user_id"),
        ({"receive_ids": ["ou_a b"]}, "receive_ids", "not a Feishu id"),
        ({"receive_ids": [f"ou_{i}" for i in range(51)]}, "receive_ids", "at most 50"),
        ({"receive_id_type": "department_id"}, "receive_id_type", "open_id"),
        ({"api_base": "http://open.feishu.cn"}, "api_base", "https://open.feishu.cn"),
        ({"api_base": "ftp://x"}, "api_base", "http(s)"),
        ({"app_id": "cli x"}, "app_id", "pattern"),
    ]
    for bad, field, words in cases:
        with pytest.raises(ValidationError) as caught:
            settings(**bad)
        error = caught.value.errors()[0]
        assert error["loc"][0] == field and words in str(caught.value), (bad, caught.value)


def test_a_channel_needs_a_default_recipient() -> None:
    bare = FeishuAppSettings(app_id="cli_1", app_secret=SecretStr("s"))
    with pytest.raises(ValueError, match=r"^receive_ids: "):
        CHANNEL_TYPE.check(bare)
    CHANNEL_TYPE.check(settings())


def test_the_type_describes_its_secret_and_limits() -> None:
    described = CHANNEL_TYPE.describe()
    assert described["secret_fields"] == ["app_secret"]
    assert described["limits"] == {
        "rate": {"per_second": 5},
        "size_bytes": {"interactive": 30_000, "text": 150_000},
    }
    assert CHANNEL_TYPE.secret_values(settings()) == ["app-secret-value"]


# -- reading answers ----------------------------------------------------------------------------


def answer(code: int, msg: str, status: int = 400, **headers: str) -> VendorResponse:
    body = {"code": code, "msg": msg, "error": {"log_id": "2026", "troubleshooter": "https://x"}}
    return VendorResponse(status, headers, orjson.dumps(body))


SEND_KINDS: dict[int, tuple[str, float | None]] = {
    230001: ("failed", None),
    230002: ("failed", None),
    230006: ("failed", None),
    230013: ("failed", None),
    230018: ("failed", None),
    230020: ("retry", 1.0),
    230022: ("failed", None),
    230025: ("failed", None),
    230028: ("failed", None),
    230035: ("failed", None),
    230038: ("failed", None),
    230099: ("failed", None),
    232009: ("failed", None),
    99991661: ("refresh_token", None),
    99991663: ("refresh_token", None),
    99991664: ("refresh_token", None),
    99991668: ("refresh_token", None),
    99991671: ("refresh_token", None),
    99991677: ("refresh_token", None),
    99991672: ("failed", None),
}
TOKEN_KINDS: dict[int, tuple[str, float | None]] = {
    10003: ("failed", None),
    10014: ("failed", None),
}


def test_the_tables_are_exactly_what_is_tested() -> None:
    assert set(SEND_ERRORS) == set(SEND_KINDS)
    assert set(TOKEN_ERRORS) == set(TOKEN_KINDS)


@pytest.mark.parametrize(("code", "expected"), SEND_KINDS.items())
def test_every_send_code_is_classified_on_the_code_with_a_diagnosis(
    code: int, expected: tuple[str, float | None]
) -> None:
    outcome = read_answer(
        answer(code, "the vendor's words"), SEND_ERRORS, settings(), Target("open_id", OU)
    )
    assert (outcome.kind, outcome.retry_after_s) == expected
    assert (outcome.status_code, outcome.vendor_code) == (400, str(code))
    diagnosis = outcome.diagnosis or ""
    assert "the vendor's words" in diagnosis and "{" not in diagnosis
    if outcome.kind == "refresh_token":  # which token code it was
        assert diagnosis.endswith(f"(code {code})")


def test_http_401_without_a_code_refreshes_the_token_once() -> None:
    outcome = read_answer(VendorResponse(401, {}, b"Unauthorized"), SEND_ERRORS, settings())
    assert (outcome.kind, outcome.status_code) == ("refresh_token", 401)
    assert "HTTP 401" in (outcome.diagnosis or "")


@pytest.mark.parametrize(("code", "expected"), TOKEN_KINDS.items())
def test_every_token_code_is_classified(code: int, expected: tuple[str, float | None]) -> None:
    outcome, token = read_token(answer(code, "words"), settings())
    assert token is None and (outcome.kind, outcome.retry_after_s) == expected
    assert "cli_a1b2c3d4e5f6a7b8" in (outcome.diagnosis or "")
    assert "Credentials & Basic Info (凭证与基础信息)" in (outcome.diagnosis or "")


def test_99991400_waits_as_long_as_x_ogw_ratelimit_reset_says() -> None:
    limited = read_answer(
        answer(99991400, "request trigger frequency limit", 429, **{"x-ogw-ratelimit-reset": "7"}),
        SEND_ERRORS,
        settings(),
    )
    assert (limited.kind, limited.retry_after_s, limited.vendor_code) == ("retry", 7.0, "99991400")
    assert "will retry after 7 s" in (limited.diagnosis or "")
    bare = read_answer(
        answer(99991400, "request trigger frequency limit", 429), SEND_ERRORS, settings()
    )
    assert (bare.kind, bare.retry_after_s) == ("retry", None)
    token = read_token(answer(99991400, "limit", 429, **{"x-ogw-ratelimit-reset": "2"}), settings())
    assert (token[0].kind, token[0].retry_after_s) == ("retry", 2.0)


def test_99991672_names_the_scope_and_the_page_that_grants_it() -> None:
    msg = (
        "Access denied. One of the following scopes is required: [im:message:send, im:message, "
        "im:message:send_as_bot].应用尚未开通所需的应用身份权限：[im:message:send, im:message, "
        "im:message:send_as_bot]，点击链接申请并开通任一权限即可：https://open.larksuite.com/app/"
        "cli_1/auth?q=im:message:send,im:message,im:message:send_as_bot&op_from=openapi"
    )
    outcome = read_answer(answer(99991672, msg), SEND_ERRORS, settings())
    diagnosis = outcome.diagnosis or ""
    assert "grant im:message:send_as_bot (以应用的身份发消息, Send messages as an app;" in diagnosis
    assert "(or open https://open.larksuite.com/app/cli_1/auth?q=im:message:send,im:message," in (
        diagnosis
    )
    assert "应用尚未" not in diagnosis and outcome.vendor_message == msg
    without = read_answer(answer(99991672, "app_scope_not_applied"), SEND_ERRORS, settings())
    assert "grant im:message:send_as_bot" in (without.diagnosis or "")


def test_230001_says_which_receive_id_is_wrong() -> None:
    target = Target("open_id", "ou_from_another_app")
    bad_id = read_answer(
        answer(
            230001, "Your request contains an invalid request parameter, ext=invalid receive_id"
        ),
        SEND_ERRORS,
        settings(),
        target,
    )
    assert "'ou_from_another_app' is not a valid open_id for this app" in (bad_id.diagnosis or "")
    other = read_answer(answer(230001, "ext=content is bad"), SEND_ERRORS, settings(), target)
    assert "report it" in (other.diagnosis or "")


def test_peers_D1_expire_is_the_remaining_lifetime_and_read_by_that_name() -> None:
    ok = {"code": 0, "msg": "ok", "tenant_access_token": "t-abc"}
    cases: list[tuple[dict[str, Any], float]] = [
        ({"expire": 3138}, 3138.0),
        ({"expire": "7189"}, 7189.0),
        ({}, 7200.0),
        ({"expires_in": 5}, 7200.0),
        ({"expire": 0}, 7200.0),
    ]
    for extra, lifetime in cases:
        outcome, token = read_token(
            VendorResponse(200, {}, orjson.dumps({**ok, **extra})), settings()
        )
        assert outcome.kind == "delivered" and token is not None
        assert (token.token, token.expires_in_s) == ("t-abc", lifetime)


def test_peers_D12_an_empty_token_is_never_used() -> None:
    for missing in ({}, {"tenant_access_token": ""}, {"tenant_access_token": None}):
        body = orjson.dumps({"code": 0, "msg": "ok", "expire": 7200, **missing})
        outcome, token = read_token(VendorResponse(200, {}, body), settings())
        assert token is None and outcome.kind == "failed"


def test_peers_D2_D14_the_code_decides_not_the_http_status() -> None:
    html = CHANNEL_TYPE.classify(VendorResponse(200, {}, b"<html>login</html>"))
    assert html.kind == "failed" and "api_base" in (html.diagnosis or "")
    assert CHANNEL_TYPE.classify(VendorResponse(200, {}, b'{"code":230013,"msg":"x"}')).kind == (
        "failed"
    )
    assert CHANNEL_TYPE.classify(answer(0, "success", 400)).kind == "delivered"
    assert CHANNEL_TYPE.classify(VendorResponse(502, {}, b"bad gateway")).kind == "retry"
    assert CHANNEL_TYPE.classify(answer(1234, "boom", 500)).kind == "retry"
    unknown = CHANNEL_TYPE.classify(answer(1234, "odd"))
    assert unknown.kind == "failed" and "https://x" in (unknown.diagnosis or "")


# -- end to end through a msgpush server --------------------------------------------------------


def app_config(fake: FakeFeishuApp, app: FeishuTenantApp, **config: Any) -> dict[str, Any]:
    if "receive_ids" not in config:
        config["receive_ids"] = [app.open_id("zhangsan")]
    return {
        "app_id": app.app_id,
        "app_secret": app.app_secret,
        "api_base": fake.api_base,
        **config,
    }


def make_channel(
    api: httpx.Client, fake: FakeFeishuApp, app: FeishuTenantApp, name: str, **config: Any
) -> dict[str, Any]:
    response = api.post(
        "/channels",
        json={"name": name, "type": "feishu_app", "config": app_config(fake, app, **config)},
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def deliver(api: httpx.Client, channel: str, **message: Any) -> dict[str, Any]:
    return wait_delivery(api, send(api, [channel], **message)["deliveries"][0]["id"])


def steps(attempt: dict[str, Any]) -> list[str]:
    names = {APP_TOKEN_PATH: "token", APP_SEND_PATH: "send"}
    return [names.get(httpx.URL(e["url"]).path, e["url"]) for e in attempt["request"]]


def test_delivers_a_card_with_a_bearer_token_and_a_uuid(
    api: httpx.Client, feishu: FakeFeishuApp, unique: str
) -> None:
    app = feishu.new_app()
    make_channel(api, feishu, app, f"fa-card-{unique}")
    final = deliver(api, f"fa-card-{unique}", **{k: v for k, v in RICH.items() if k != "mentions"})
    assert final["status"] == "delivered" and final["warning"] is None, final
    [got] = feishu.received(app, "zhangsan")
    assert (got.receive_id_type, got.msg_type) == ("open_id", "interactive")
    assert got.content["header"]["title"]["content"] == "Task daily_sales failed"
    assert got.uuid == dedup_uuid(final["id"], Target("open_id", app.open_id("zhangsan")))
    assert got.token == feishu.tokens_of(app)[0]
    [attempt] = final["attempt_log"]
    assert steps(attempt) == ["token", "send"]
    assert (attempt["status_code"], attempt["vendor_code"]) == (200, "0")
    assert attempt["request"][1]["url"].endswith(f"{APP_SEND_PATH}?receive_id_type=open_id")


def test_text_format_is_delivered_as_text(
    api: httpx.Client, feishu: FakeFeishuApp, unique: str
) -> None:
    app = feishu.new_app()
    make_channel(api, feishu, app, f"fa-text-{unique}")
    final = deliver(api, f"fa-text-{unique}", title="Disk full", content="99%", format="text")
    assert final["status"] == "delivered"
    [got] = feishu.received(app, "zhangsan")
    assert (got.msg_type, got.content) == ("text", {"text": "Disk full\n\n99%"})


def test_lark_and_feishu_bases_both_work_and_diagnoses_point_at_the_right_console(
    api: httpx.Client, feishu: FakeFeishuApp, lark: FakeFeishuApp, unique: str
) -> None:
    for fake, region in ((feishu, "feishu"), (lark, "lark")):
        app = fake.new_app()
        name = f"fa-{region}-{unique}"
        make_channel(api, fake, app, name)
        assert deliver(api, name)["status"] == "delivered"
        assert len(fake.received(app, "zhangsan")) == 1
        scopeless = fake.new_app(scopes=set())
        make_channel(api, fake, scopeless, f"{name}-scope")
        failed = deliver(api, f"{name}-scope")
        assert failed["status"] == "failed"
        assert f"(or open https://{fake.host}/app/{scopeless.app_id}/auth?q=" in failed["error"]
    assert (feishu.host, lark.host) == ("open.feishu.cn", "open.larksuite.com")


def test_every_id_type_reaches_its_person_and_a_message_overrides_the_defaults(
    api: httpx.Client, feishu: FakeFeishuApp, unique: str
) -> None:
    app = feishu.new_app(users=("zhangsan", "lisi", "wangwu", "zhaoliu"), chats={"ops": "member"})
    name = f"fa-types-{unique}"
    make_channel(
        api,
        feishu,
        app,
        name,
        receive_id_type="user_id",
        receive_ids=[app.user("zhangsan").user_id],
    )
    final = deliver(
        api,
        name,
        recipients={
            "users": [
                app.user("lisi").user_id,
                app.user("wangwu").email,
                app.user("zhaoliu").union_id,
                app.open_id("zhangsan"),
            ],
            "chats": [app.chat_id("ops")],
            "departments": ["od-42"],
        },
    )
    assert final["status"] == "delivered", final
    assert final["warning"] == (
        "Feishu's im/v1/messages reaches users and group chats only, so these were left out: "
        "department od-42"
    )
    got = {(d.to, d.receive_id_type) for d in feishu.delivered(app)}
    assert got == {
        ("lisi", "user_id"),
        ("wangwu", "email"),
        ("zhaoliu", "union_id"),
        ("zhangsan", "open_id"),
        ("ops", "chat_id"),
    }
    assert len({d.uuid for d in feishu.delivered(app)}) == 5
    defaults = deliver(api, name)
    assert defaults["status"] == "delivered"
    assert [d.receive_id_type for d in feishu.received(app, "zhangsan")] == ["open_id", "user_id"]


def test_partial_success_is_delivered_with_a_warning_naming_who_missed_it(
    api: httpx.Client, feishu: FakeFeishuApp, unique: str
) -> None:
    app = feishu.new_app(outside=("guest",), chats={"ops": "member", "quiet": "outside"})
    name = f"fa-part-{unique}"
    make_channel(
        api,
        feishu,
        app,
        name,
        receive_ids=[app.open_id("zhangsan"), app.open_id("guest"), "ou_nobody"],
    )
    final = deliver(
        api,
        name,
        recipients={
            "users": [app.open_id("zhangsan"), app.open_id("guest"), "ou_nobody"],
            "chats": [app.chat_id("quiet"), app.chat_id("ops")],
        },
    )
    assert final["status"] == "delivered", final
    assert final["warning"] == (
        "Feishu did not deliver to 3 of 5 recipients: "
        f"open_id {app.open_id('guest')} (outside the app's availability (可用范围), 230013), "
        "open_id ou_nobody (not a valid id of that type, 230001), "
        f"chat_id {app.chat_id('quiet')} (the bot is not in this group, 230002)"
    )
    assert sorted(d.to for d in feishu.delivered(app)) == ["ops", "zhangsan"]
    [attempt] = final["attempt_log"]
    assert steps(attempt) == ["token"] + ["send"] * 5


def test_when_every_recipient_is_refused_the_delivery_fails_saying_why(
    api: httpx.Client, feishu: FakeFeishuApp, unique: str
) -> None:
    app = feishu.new_app(outside=("guest",), chats={"old": "dissolved"})
    name = f"fa-none-{unique}"
    make_channel(api, feishu, app, name, receive_ids=[app.open_id("guest")])
    one = deliver(api, name)
    assert one["status"] == "failed"
    assert one["error"].startswith(
        f"Sending failed: open_id {app.open_id('guest')} is outside the app's availability "
        "(Bot has NO availability to this user.): in the developer console"
    )
    assert "Availability (可用范围)" in one["error"]
    both = deliver(
        api, name, recipients={"users": [app.open_id("guest")], "chats": [app.chat_id("old")]}
    )
    assert both["status"] == "failed"
    assert both["error"].startswith(f"Sending failed: open_id {app.open_id('guest')}: open_id ")
    assert (
        f"; chat_id {app.chat_id('old')}: chat {app.chat_id('old')} was dissolved"
        in (both["error"])
    )
    assert both["attempt_log"][0]["vendor_code"] == "232009"
    assert feishu.delivered(app) == []


def test_nothing_reachable_fails_at_once_without_a_token(
    api: httpx.Client, feishu: FakeFeishuApp, unique: str
) -> None:
    app = feishu.new_app()
    make_channel(api, feishu, app, f"fa-dept-{unique}")
    final = deliver(api, f"fa-dept-{unique}", recipients={"departments": ["od-1"], "tags": ["x"]})
    assert final["status"] == "failed"
    assert final["error"].startswith("this message names no recipient Feishu can reach (")
    assert feishu.token_fetches(app) == 0


def test_a_retry_notifies_only_who_missed_it(
    api: httpx.Client, feishu: FakeFeishuApp, unique: str
) -> None:
    """lisi's request draws 230020; the retry repeats all three requests with their uuids and
    Feishu answers zhangsan's and wangwu's without delivering them again."""
    app = feishu.new_app(users=("zhangsan", "lisi", "wangwu"))
    name = f"fa-again-{unique}"
    ids = [app.open_id(n) for n in ("zhangsan", "lisi", "wangwu")]
    make_channel(api, feishu, app, name, receive_ids=ids)
    feishu.fail_next(230020, app=app, receive_id=ids[1])
    final = deliver(api, name)
    assert final["status"] == "delivered" and final["warning"] is None
    first, second = final["attempt_log"]
    assert (first["outcome"], first["vendor_code"]) == ("retry", "230020")
    assert first["diagnosis"].startswith(f"Sending failed (open_id {ids[1]}): open_id {ids[1]} hit")
    assert first["diagnosis"].endswith(
        "2 of 3 recipients have it already; a retry repeats each request with its uuid, which "
        "Feishu answers without notifying them again"
    )
    assert steps(second) == ["send"] * 3  # the token is cached by now
    for person in ("zhangsan", "lisi", "wangwu"):
        assert len(feishu.received(app, person)) == 1, person
    assert sorted(r.to for r in feishu.repeats(app)) == ["wangwu", "zhangsan"]


def test_a_lost_answer_does_not_notify_twice(
    api: httpx.Client, feishu: FakeFeishuApp, unique: str
) -> None:
    app = feishu.new_app()
    make_channel(api, feishu, app, f"fa-lost-{unique}")
    feishu.deliver_then_fail(app, 502)
    final = deliver(api, f"fa-lost-{unique}")
    assert final["status"] == "delivered"
    first, second = final["attempt_log"]
    assert (first["outcome"], first["status_code"]) == ("retry", 502)
    assert first["request"][-1]["body"] == second["request"][0]["body"]
    assert len(feishu.received(app, "zhangsan")) == 1
    assert [r.to for r in feishu.repeats(app)] == ["zhangsan"]


def _ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def test_99991400_is_waited_out_for_x_ogw_ratelimit_reset_seconds(
    api: httpx.Client, feishu: FakeFeishuApp, unique: str
) -> None:
    app = feishu.new_app()
    name = f"fa-429-{unique}"
    make_channel(api, feishu, app, name)
    feishu.fail_next(
        99991400, app=app, headers={"x-ogw-ratelimit-limit": "50", "x-ogw-ratelimit-reset": "7"}
    )
    delivery_id = send(api, [name])["deliveries"][0]["id"]
    final = wait_delivery(api, delivery_id, ("retrying",))
    [attempt] = final["attempt_log"]
    assert (attempt["status_code"], attempt["vendor_code"]) == (429, "99991400")
    assert "will retry after 7 s" in attempt["diagnosis"]
    waited = (_ms(attempt["next_attempt_at"]) - _ms(attempt["started_at"])) / 1000
    assert 6.5 <= waited <= 8, waited
    api.delete(f"/channels/{name}")


def test_the_apps_own_50_a_second_draws_429_and_the_retry_completes(
    api: httpx.Client, unique: str
) -> None:
    """A fake app allowed 3 calls a second: the second delivery to 3 recipients meets 429 and
    its retry after x-ogw-ratelimit-reset reaches everyone once."""
    fake = FakeFeishuApp(app_per_second=3).start()
    try:
        app = fake.new_app(users=("a", "b", "c"))
        name = f"fa-app429-{unique}"
        make_channel(api, fake, app, name, receive_ids=[app.open_id(n) for n in "abc"])
        finals = [deliver(api, name, title=f"#{i}") for i in range(2)]
        assert [f["status"] for f in finals] == ["delivered", "delivered"]
        codes = [a["vendor_code"] for f in finals for a in f["attempt_log"]]
        assert "99991400" in codes
        for person in "abc":
            assert sorted(
                d.content["header"]["title"]["content"] for d in fake.received(app, person)
            ) == ["#0", "#1"]
    finally:
        fake.stop()


PERMANENT = [
    (230022, "content filter found sensitive information"),
    (230025, "too long"),
    (230028, "did not pass the tenant's audit"),
    (230035, "the bot is muted there"),
    (230038, "belongs to another tenant"),
    (230099, "an id in mentions.user_ids is not a user of this tenant"),
    (230001, "report it with this message"),
]


@pytest.mark.parametrize(("code", "expected"), PERMANENT)
def test_permanent_send_codes_fail_at_once_with_a_diagnosis(
    api: httpx.Client, feishu: FakeFeishuApp, unique: str, code: int, expected: str
) -> None:
    app = feishu.new_app()
    make_channel(api, feishu, app, f"fa-perm-{code}-{unique}")
    feishu.fail_next(code, app=app)
    final = deliver(api, f"fa-perm-{code}-{unique}")
    assert final["status"] == "failed"
    [attempt] = final["attempt_log"]
    assert (attempt["status_code"], attempt["vendor_code"]) == (400, str(code))
    assert attempt["diagnosis"].startswith("Sending failed: ")
    assert expected in attempt["diagnosis"], attempt["diagnosis"]
    assert feishu.delivered(app) == []


@pytest.mark.parametrize(
    ("setup", "code", "expected"),
    [
        ({"bot_enabled": False}, "230006", "Add Features (添加应用能力) add Bot (机器人)"),
        ({"scopes": set()}, "99991672", "grant im:message:send_as_bot (以应用的身份发消息"),
        ({"chats": {"quiet": "outside"}}, "230002", "Group Bots 群机器人 > Add Bot 添加机器人"),
        ({"chats": {"muted": "muted"}}, "230018", "仅群主和群管理员可发言"),
        ({"chats": {"old": "dissolved"}}, "232009", "was dissolved"),
    ],
)
def test_app_and_chat_states_are_diagnosed(
    api: httpx.Client,
    feishu: FakeFeishuApp,
    unique: str,
    setup: dict[str, Any],
    code: str,
    expected: str,
) -> None:
    app = feishu.new_app(**setup)
    config: dict[str, Any] = {}
    if app.chats:
        [chat] = app.chats.values()
        config = {"receive_id_type": "chat_id", "receive_ids": [chat.chat_id]}
    make_channel(api, feishu, app, f"fa-state-{code}-{unique}", **config)
    final = deliver(api, f"fa-state-{code}-{unique}")
    assert final["status"] == "failed"
    assert final["attempt_log"][0]["vendor_code"] == code
    assert expected in final["error"], final["error"]


def test_a_server_error_is_retried(api: httpx.Client, feishu: FakeFeishuApp, unique: str) -> None:
    app = feishu.new_app()
    make_channel(api, feishu, app, f"fa-5xx-{unique}")
    feishu.fail_next(1500, "internal error", app=app, status=500)
    final = deliver(api, f"fa-5xx-{unique}")
    assert final["status"] == "delivered"
    assert [a["outcome"] for a in final["attempt_log"]] == ["retry", "delivered"]


# -- tokens -------------------------------------------------------------------------------------


def test_the_fake_rotates_tokens_with_30_minutes_left() -> None:
    fake = FakeFeishuApp().start()
    try:
        app = fake.new_app()
        creds = {"app_id": app.app_id, "app_secret": app.app_secret}
        first = httpx.post(fake.url(APP_TOKEN_PATH), json=creds).json()
        assert (first["code"], first["expire"]) == (0, 7200)
        fake.advance(3000)
        same = httpx.post(fake.url(APP_TOKEN_PATH), json=creds).json()
        assert same["tenant_access_token"] == first["tenant_access_token"]
        assert 4195 <= same["expire"] <= 4200
        fake.advance(2500)
        new = httpx.post(fake.url(APP_TOKEN_PATH), json=creds).json()
        assert new["tenant_access_token"] != first["tenant_access_token"] and new["expire"] == 7200
        for token in (first, new):  # the old one still works until it expires
            sent = httpx.post(
                fake.url(APP_SEND_PATH) + "?receive_id_type=open_id",
                headers={"Authorization": f"Bearer {token['tenant_access_token']}"},
                json={
                    "receive_id": app.open_id("lisi"),
                    "msg_type": "text",
                    "content": '{"text":"x"}',
                },
            )
            assert sent.json()["code"] == 0
        fake.advance(1800)
        stale = httpx.post(
            fake.url(APP_SEND_PATH) + "?receive_id_type=open_id",
            headers={"Authorization": f"Bearer {first['tenant_access_token']}"},
            json={"receive_id": app.open_id("lisi"), "msg_type": "text", "content": '{"text":"x"}'},
        )
        assert (stale.status_code, stale.json()["code"]) == (400, 99991663)
        obj = httpx.post(
            fake.url(APP_SEND_PATH) + "?receive_id_type=open_id",
            headers={"Authorization": f"Bearer {new['tenant_access_token']}"},
            json={"receive_id": app.open_id("lisi"), "msg_type": "text", "content": {"text": "x"}},
        ).json()
        assert (obj["code"], obj["msg"]) == (
            230001,
            "Your request contains an invalid request parameter, ext=content must be a string "
            "of JSON, not an object",
        )
        assert fake.token_fetches(app) == 3
    finally:
        fake.stop()


def test_a_token_is_cached_for_its_remaining_lifetime(api: httpx.Client, unique: str) -> None:
    """Feishu hands out the token it already has with only ``expire`` seconds left: msgpush
    keeps it that long less its 600 s margin (here 2 s), not the 2 h a fresh one lives."""
    fake = FakeFeishuApp(rotate_below_s=0).start()
    try:
        app = fake.new_app()
        creds = {"app_id": app.app_id, "app_secret": app.app_secret}
        httpx.post(fake.url(APP_TOKEN_PATH), json=creds)
        fake.advance(7200 - 602.6)
        name = f"fa-left-{unique}"
        make_channel(api, fake, app, name)
        assert deliver(api, name)["status"] == "delivered"
        assert deliver(api, name)["status"] == "delivered"
        assert fake.token_fetches(app) == 2  # the test's own, and msgpush's one
        time.sleep(2.2)
        assert deliver(api, name)["status"] == "delivered"
        assert fake.token_fetches(app) == 3
    finally:
        fake.stop()


def test_a_token_revoked_mid_burst_is_refreshed_once(
    api: httpx.Client, feishu: FakeFeishuApp, unique: str
) -> None:
    users = ("u1", "u2", "u3", "u4")
    app = feishu.new_app(users=users)
    for user in users:
        make_channel(api, feishu, app, f"fa-rev-{user}-{unique}", receive_ids=[app.open_id(user)])

    def burst(start: int) -> list[str]:
        messages = [
            {"channels": [f"fa-rev-{users[i % 4]}-{unique}"], "title": f"#{i}"}
            for i in range(start, start + 16)
        ]
        answer_ = api.post("/messages/batch", json={"messages": messages}).json()
        return [item["deliveries"][0]["id"] for item in answer_["items"]]

    ids = burst(0)
    feishu.wait_delivered(app, 6)
    feishu.revoke(app)
    ids += burst(16)
    finals = [wait_delivery(api, delivery_id) for delivery_id in ids]
    assert {f["status"] for f in finals} == {"delivered"}
    assert feishu.token_fetches(app) == 2
    assert len(feishu.delivered(app)) == 32
    refreshed = [f for f in finals if steps(f["attempt_log"][0])[:3] == ["send", "token", "send"]]
    assert refreshed, "some sends met the revoked token"


@pytest.mark.parametrize(
    ("how", "status"),
    [("revoke", 400), ("revoke", 401), ("99991668", 400), ("99991677", 400), ("99991661", 400)],
)
def test_peers_D12_a_refused_token_is_refreshed_and_the_send_repeated_at_once(
    api: httpx.Client, feishu: FakeFeishuApp, unique: str, how: str, status: int
) -> None:
    app = feishu.new_app()
    name = f"fa-stale-{how}-{status}-{unique}"
    make_channel(api, feishu, app, name)
    assert deliver(api, name)["status"] == "delivered"
    feishu.token_error_status = status
    try:
        if how == "revoke":
            feishu.revoke(app)
        else:
            feishu.fail_next(int(how), app=app)
        final = deliver(api, name)
    finally:
        feishu.token_error_status = 400
    assert final["status"] == "delivered"
    [attempt] = final["attempt_log"]
    assert steps(attempt) == ["send", "token", "send"]
    code = "99991663" if how == "revoke" else how
    assert attempt["request"][0]["status"] == status
    assert f'"code":{code}' in attempt["request"][0]["response"]
    assert feishu.token_fetches(app) == 2
    assert len(feishu.received(app, "zhangsan")) == 2


def test_a_token_refused_twice_becomes_a_retry(
    api: httpx.Client, feishu: FakeFeishuApp, unique: str
) -> None:
    app = feishu.new_app()
    make_channel(api, feishu, app, f"fa-twice-{unique}")
    feishu.fail_next(99991663, app=app, times=2)
    final = deliver(api, f"fa-twice-{unique}")
    assert final["status"] == "delivered"
    first, second = final["attempt_log"]
    assert first["outcome"] == "retry"
    assert first["diagnosis"].startswith("Sending failed: Feishu refused the tenant_access_token")
    assert second["outcome"] == "delivered"


@pytest.mark.parametrize(
    ("breakage", "code", "expected"),
    [
        ("app_id", "10003", "Feishu does not know app_id"),
        ("secret", "10014", "app_secret is wrong"),
    ],
)
def test_bad_credentials_fail_at_the_token_step_and_nothing_is_sent(
    api: httpx.Client, feishu: FakeFeishuApp, unique: str, breakage: str, code: str, expected: str
) -> None:
    app = feishu.new_app()
    config = {"app_id": {"app_id": "cli_unknown" + unique}, "secret": {"app_secret": "nope"}}
    make_channel(api, feishu, app, f"fa-cred-{breakage}-{unique}", **config[breakage])
    final = deliver(api, f"fa-cred-{breakage}-{unique}")
    assert final["status"] == "failed"
    [attempt] = final["attempt_log"]
    assert (attempt["status_code"], attempt["vendor_code"]) == (400, code)
    assert attempt["diagnosis"].startswith(
        f"Credentials check failed (tenant_access_token): {expected}"
    )
    assert steps(attempt) == ["token"]
    assert feishu.delivered(app) == []


@pytest.mark.parametrize(
    ("code", "status", "headers", "expected"),
    [
        (99991400, 429, {"x-ogw-ratelimit-reset": "1"}, "rate-limited the app"),
        (1500, 503, {}, "vendor error 1500"),
    ],
)
def test_a_busy_token_endpoint_is_retried(
    api: httpx.Client,
    feishu: FakeFeishuApp,
    unique: str,
    code: int,
    status: int,
    headers: dict[str, str],
    expected: str,
) -> None:
    app = feishu.new_app()
    make_channel(api, feishu, app, f"fa-tokbusy-{code}-{unique}")
    feishu.fail_next(code, "busy", app=app, api="token", status=status, headers=headers)
    final = deliver(api, f"fa-tokbusy-{code}-{unique}")
    assert final["status"] == "delivered"
    first = final["attempt_log"][0]
    assert first["outcome"] == "retry"
    assert first["diagnosis"].startswith("Credentials check failed (tenant_access_token): ")
    assert expected in first["diagnosis"]


# -- Test Push ----------------------------------------------------------------------------------


def test_test_push_with_unsaved_settings(api: httpx.Client, feishu: FakeFeishuApp) -> None:
    app = feishu.new_app(outside=("guest",))
    config = app_config(feishu, app)
    good = api.post("/channels/test", json={"type": "feishu_app", "config": config})
    assert good.status_code == 200, good.text
    assert (good.json()["ok"], good.json()["vendor_code"]) == (True, "0")
    [got] = feishu.received(app, "zhangsan")
    assert got.content["header"]["title"]["content"] == "msgpush Test Push"

    wrong = api.post(
        "/channels/test",
        json={"type": "feishu_app", "config": {**config, "app_secret": "wrong-secret"}},
    ).json()
    assert (wrong["ok"], wrong["status_code"], wrong["vendor_code"]) == (False, 400, "10014")
    assert wrong["diagnosis"].startswith(
        "Credentials check failed (tenant_access_token): app_secret is wrong"
    )

    outside = api.post(
        "/channels/test",
        json={"type": "feishu_app", "config": {**config, "receive_ids": [app.open_id("guest")]}},
    ).json()
    assert (outside["ok"], outside["vendor_code"]) == (False, "230013")
    assert outside["diagnosis"].startswith(
        f"Sending failed: open_id {app.open_id('guest')} is outside the app's availability"
    )
    assert app.app_secret not in good.text + str(wrong) + str(outside)


def test_test_push_on_a_saved_channel(
    api: httpx.Client, feishu: FakeFeishuApp, unique: str
) -> None:
    app = feishu.new_app(outside=("guest",))
    name = f"fa-test-{unique}"
    make_channel(
        api, feishu, app, name, receive_ids=[app.open_id("zhangsan"), app.open_id("guest")]
    )
    ok = api.post(f"/channels/{name}/test").json()
    assert ok["ok"] is True
    assert ok["diagnosis"].startswith("Feishu did not deliver to 1 of 2 recipients: open_id ")
    feishu.fail_next(99991672, app=app)
    failed = api.post(f"/channels/{name}/test").json()
    assert (failed["ok"], failed["status_code"], failed["vendor_code"]) == (False, 400, "99991672")
    assert failed["diagnosis"].startswith(
        f"Sending failed (open_id {app.open_id('zhangsan')}): the app may not send messages"
    )
    assert api.get(f"/channels/{name}").json()["last_test"]["vendor_code"] == "99991672"


# -- secrets ------------------------------------------------------------------------------------


def test_peers_D9_D10_the_app_secret_never_leaves_the_server(
    api: httpx.Client, server: ServerProcess, feishu: FakeFeishuApp, unique: str
) -> None:
    app = feishu.new_app()
    name = f"fa-secret-{unique}"
    created = make_channel(api, feishu, app, name)
    assert created["config"]["app_secret"].startswith("••••")
    patched = api.patch(
        f"/channels/{name}",
        json={"config": {**created["config"], "receive_ids": [app.open_id("lisi")]}},
    )
    assert patched.status_code == 200, patched.text
    ok = deliver(api, name)
    assert ok["status"] == "delivered"  # the masked secret sent back kept the stored one
    feishu.fail_next(230099, f"echo {app.app_secret}", app=app)
    failed = deliver(api, name)
    assert failed["status"] == "failed"
    seen = [
        api.get(f"/channels/{name}").text,
        api.get("/channels", params={"type": "feishu_app"}).text,
        api.get(f"/deliveries/{ok['id']}").text,
        api.get(f"/deliveries/{failed['id']}").text,
        api.post(f"/channels/{name}/test").text,
        server.log(),
    ]
    for text in seen:
        assert app.app_secret not in text
    token_step, send_step = ok["attempt_log"][0]["request"]
    assert orjson.loads(token_step["body"]) == {"app_id": app.app_id, "app_secret": "••••"}
    assert send_step["headers"]["Authorization"] == "••••"


def test_peers_D9_D10_the_access_token_never_leaves_the_server(
    api: httpx.Client, server: ServerProcess, feishu: FakeFeishuApp, unique: str
) -> None:
    """The token travels in the Authorization header and comes back in the token endpoint's
    answer: both are masked in the transcript, and it is never logged."""
    app = feishu.new_app()
    name = f"fa-token-{unique}"
    make_channel(api, feishu, app, name)
    final = deliver(api, name)
    tested = api.post(f"/channels/{name}/test").text
    unsaved = api.post(
        "/channels/test", json={"type": "feishu_app", "config": app_config(feishu, app)}
    ).text
    [token] = feishu.tokens_of(app)
    for text in (server.log(), tested, unsaved, api.get(f"/deliveries/{final['id']}").text):
        assert token not in text
    token_step = final["attempt_log"][0]["request"][0]
    assert '"tenant_access_token":"••••"' in token_step["response"]


# -- API surface --------------------------------------------------------------------------------


def test_channel_type_is_listed(api: httpx.Client) -> None:
    types = {t["type"]: t for t in api.get("/channel-types").json()["items"]}
    feishu_app = types["feishu_app"]
    assert feishu_app["secret_fields"] == ["app_secret"]
    assert feishu_app["limits"]["rate"] == {"per_second": 5}
    assert set(feishu_app["schema"]["required"]) == {"app_id", "app_secret"}


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({}, "config.receive_ids"),
        ({"receive_ids": ["oc_group"]}, "config.receive_ids"),
        ({"receive_ids": [OU], "receive_id_type": "phone"}, "config.receive_id_type"),
    ],
)
def test_bad_settings_are_422_naming_the_field(
    api: httpx.Client, unique: str, config: dict[str, Any], field: str
) -> None:
    response = api.post(
        "/channels",
        json={
            "name": f"fa-bad-{unique}",
            "type": "feishu_app",
            "config": {"app_id": "cli_1", "app_secret": "s", **config},
        },
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


# -- bursts and processes -----------------------------------------------------------------------


def test_peers_D1_a_burst_of_100_fetches_one_token_and_draws_no_rate_limit(
    make_server: Callable[..., ServerProcess], unique: str
) -> None:
    """101 messages, 25 to each of four users after a first one, windows shrunk 10x on both sides (1 s -> 100 ms,
    arrivals allowed 10 ms of scheduling jitter): far beyond Feishu's 5 a second to one user,
    yet no 230020 or 99991400, and one token for them all."""
    fake = FakeFeishuApp(window_scale=0.1, jitter_s=0.01).start()
    try:
        server = make_server(MSGPUSH_RATE_WINDOW_SCALE="0.1")
        users = ("u1", "u2", "u3", "u4")
        with server.client() as client:
            app = fake.new_app(users=users)
            for user in users:
                make_channel(
                    client, fake, app, f"fa-burst-{user}-{unique}", receive_ids=[app.open_id(user)]
                )
            # The rate slot of a send is taken before its token is fetched: sends that queue up
            # behind the first fetch leave together once it lands, which a 100 ms window cannot
            # absorb (a 1 s one can). A first message fetches the token; the burst then shares it.
            warm = deliver(client, f"fa-burst-u1-{unique}", title="warm-up")
            assert warm["status"] == "delivered"
            messages = [
                {"channels": [f"fa-burst-{users[i % 4]}-{unique}"], "title": f"#{i}"}
                for i in range(100)
            ]
            accepted = client.post("/messages/batch", json={"messages": messages})
            assert accepted.status_code == 202, accepted.text
            for item in accepted.json()["items"]:
                assert wait_delivery(client, item["deliveries"][0]["id"])["status"] == "delivered"
        assert fake.refused(app) == []
        assert fake.token_fetches(app) == 1
        for user in users:
            arrivals = sorted(
                d.at
                for d in fake.received(app, user)
                if d.content["header"]["title"]["content"] != "warm-up"
            )
            assert len(arrivals) == 25
            assert min(b - a for a, b in zip(arrivals, arrivals[5:], strict=False)) > 0.09
    finally:
        fake.stop()


def test_two_processes_on_one_database_share_one_token(
    server: ServerProcess, feishu: FakeFeishuApp, unique: str
) -> None:
    """A second process on the session server's database (its data directory on SQLite)."""
    first = server
    second = ServerProcess(
        first.data_dir, database_url=first.database_url, admin_token=first.admin_token
    )
    try:
        second.start()
        users = ("u1", "u2", "u3", "u4")
        app = feishu.new_app(users=users)
        with first.client() as api_one, second.client() as api_two:
            for user in users:
                make_channel(
                    api_one,
                    feishu,
                    app,
                    f"fa-proc-{user}-{unique}",
                    receive_ids=[app.open_id(user)],
                )
            ids = []
            for i in range(16):
                client = api_one if i % 2 else api_two
                reply = send(client, [f"fa-proc-{users[i % 4]}-{unique}"], title=f"#{i}")
                ids.append(reply["deliveries"][0]["id"])
            finals = [wait_delivery(api_one, delivery_id) for delivery_id in ids]
        assert {f["status"] for f in finals} == {"delivered"}
        assert len({f["attempt_log"][0]["worker"] for f in finals}) == 2, "both processes sent"
        assert feishu.token_fetches(app) == 1
    finally:
        second.stop()
