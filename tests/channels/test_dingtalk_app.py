"""The DingTalk self-built app channel: work notifications and robot messages, rendering within
DingTalk's byte caps, recipient splitting, partial results, every vendor code, the shared token
cache (one fetch, one refresh, across processes), Test Push and secrets, against a strict fake."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from msgpush.channels.base import (
    Outcome,
    SendContext,
    VendorRequest,
    VendorResponse,
    token_lifetime_s,
)
from msgpush.channels.dingtalk_app import (
    API_ERRORS,
    CHANNEL_TYPE,
    NOTICE_MSG_BYTES,
    OAPI_ERRORS,
    ROBOT_PARAM_BYTES,
    Call,
    DingTalkAppSettings,
    Targets,
    classify_api,
    classify_oapi,
    notice_msg,
    plan,
    resolve_targets,
    robot_message,
    sent_line,
)
from msgpush.channels.render import TRUNCATION_MARKER
from msgpush.message import Message
from tests.fakes.dingtalk import (
    APP_BATCH_PATH,
    APP_GETTOKEN_PATH,
    APP_GROUP_PATH,
    APP_NOTICE_PATH,
    APP_TOKEN_PATH,
    App,
    FakeDingTalkApp,
)
from tests.helpers import send, wait_delivery
from tests.server import ServerProcess, create_pg_database, drop_pg_database

SETTLED = ("retrying", "delivered", "failed")
CREATED_AT = 1_700_000_000_000


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeDingTalkApp]:
    server = FakeDingTalkApp().start()
    yield server
    server.stop()


def settings(**config: Any) -> DingTalkAppSettings:
    base = {"app_key": "dingkey", "app_secret": "s3cret-value", "agent_id": 42}
    return DingTalkAppSettings.model_validate({**base, **config})


def message(**fields: Any) -> Message:
    return Message.model_validate({"title": "Task daily_sales failed", **fields})


def answer(body: Any, status: int = 200) -> VendorResponse:
    return VendorResponse(status, {}, body if isinstance(body, bytes) else orjson.dumps(body))


def staffed(fake: FakeDingTalkApp, users: int = 3, **config: Any) -> App:
    """An app at the fake whose visible range holds u0…u{users-1} and department 7 (u0, u1)."""
    config.setdefault("agent_id", 4242)
    app = fake.add_app(**config)
    app.users.update(f"u{i}" for i in range(users))
    app.depts["7"] = ["u0", "u1"]
    return app


def make_channel(
    api: httpx.Client, fake: FakeDingTalkApp, app: App, name: str, **config: Any
) -> dict[str, Any]:
    body = {
        "app_key": app.app_key,
        "app_secret": app.app_secret,
        "api_base": fake.url(""),
        **config,
    }
    response = api.post("/channels", json={"name": name, "type": "dingtalk_app", "config": body})
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def notice_channel(api: httpx.Client, fake: FakeDingTalkApp, app: App, name: str) -> None:
    make_channel(api, fake, app, name, agent_id=app.agent_id, user_ids=["u0", "u1"])


def robot_channel(
    api: httpx.Client, fake: FakeDingTalkApp, app: App, name: str, **config: Any
) -> None:
    config.setdefault("user_ids", ["u0", "u1"])
    make_channel(api, fake, app, name, robot_code=app.robot_code, **config)


def deliver(
    api: httpx.Client, channel: str, statuses: tuple[str, ...] = SETTLED, **msg: Any
) -> dict[str, Any]:
    delivery_id = send(api, [channel], **msg)["deliveries"][0]["id"]
    return wait_delivery(api, delivery_id, statuses)


def local_context(fake: FakeDingTalkApp, delivery_id: str) -> SendContext:
    """A send context without a server: requests go straight to the fake, no token cache."""

    async def exchange(
        request: VendorRequest, classify: Callable[[VendorResponse], Outcome]
    ) -> Outcome:
        async with httpx.AsyncClient() as client:
            reply = await client.request(
                request.method, request.url, headers=request.headers, content=request.body
            )
        return classify(VendorResponse(reply.status_code, dict(reply.headers), reply.content))

    return SendContext(
        delivery_id=delivery_id, attempt=1, exchange=exchange, created_at_ms=CREATED_AT
    )


def exchanges(delivery: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for a in delivery["attempt_log"] for e in a["request"] or []]


# -- rendering (unit) ------------------------------------------------------------------------


def test_a_work_notification_is_markdown_closed_by_its_sent_time() -> None:
    msg = message(
        content="**daily_sales** failed after 3 retries.\nSee the log.",
        level="error",
        fields={"Task": "daily_sales", "Run": "7"},
    )
    body = notice_msg(msg, CREATED_AT)
    assert body["msgtype"] == "markdown"
    markdown = body["markdown"]
    assert markdown["title"] == "Task daily_sales failed"  # the list title is plain text
    text = markdown["text"]
    assert text.startswith("### Task daily\\_sales failed\n\n**❌ ERROR**")
    assert "**daily_sales** failed after 3 retries.  \nSee the log." in text
    assert "- **Task**: daily\\_sales  \n- **Run**: 7" in text
    assert text.endswith(sent_line(CREATED_AT))
    assert sent_line(CREATED_AT) == "msgpush · 2023-11-14 22:13:20 UTC"


def test_the_same_message_renders_the_same_and_two_messages_differ() -> None:
    # DingTalk drops equal content to one user within a day: a retry must stay equal (and so is
    # not shown twice), while two alerts with the same words must not be equal
    msg = message(content="disk full")
    assert notice_msg(msg, CREATED_AT) == notice_msg(msg, CREATED_AT)
    assert notice_msg(msg, CREATED_AT) != notice_msg(msg, CREATED_AT + 1000)


def test_links_make_a_work_notification_an_action_card() -> None:
    one = notice_msg(message(links=[{"title": "Open", "url": "https://e.com/1"}]), CREATED_AT)
    assert one["msgtype"] == "action_card"
    card = one["action_card"]
    assert (card["single_title"], card["single_url"]) == ("Open", "https://e.com/1")
    assert "e.com" not in card["markdown"]  # the link is the button, not repeated
    links = [{"title": f"Run {i}", "url": f"https://e.com/{i}"} for i in range(3)]
    several = notice_msg(message(links=links), CREATED_AT)["action_card"]
    assert several["btn_json_list"] == [
        {"title": f"Run {i}", "action_url": f"https://e.com/{i}"} for i in range(3)
    ]
    assert "single_url" not in several


@pytest.mark.parametrize(
    ("links", "key", "buttons", "lines"),
    [
        (0, "sampleMarkdown", 0, 0),
        (1, "sampleActionCard", 1, 0),
        (3, "sampleActionCard3", 3, 0),
        (7, "sampleActionCard5", 5, 2),
    ],
)
def test_robot_messages_pick_the_msg_key_by_link_count(
    links: int, key: str, buttons: int, lines: int
) -> None:
    urls = [{"title": f"L{i}", "url": f"https://e.com/{i}"} for i in range(links)]
    msg_key, param = robot_message(message(content="c", links=urls))
    assert msg_key == key
    assert sum(1 for name in param if name.startswith("actionURL")) == (
        buttons if buttons > 1 else 0
    )
    if buttons == 1:
        assert param["singleURL"] == "https://e.com/0"
    assert param["text"].count("](https://e.com/") == lines  # the sixth link on, as lines


def test_text_format_is_plain_text_everywhere() -> None:
    msg = message(
        content="a *b* c", format="text", links=[{"title": "Open", "url": "https://e.com"}]
    )
    assert robot_message(msg) == (
        "sampleText",
        {"content": "Task daily_sales failed\n\na *b* c\n\nOpen: https://e.com/"},
    )
    body = notice_msg(msg, CREATED_AT)
    assert body["msgtype"] == "text"
    assert body["text"]["content"].startswith("Task daily_sales failed\n\na *b* c")


def test_plain_text_parts_are_escaped() -> None:
    msg = message(title="a_b *c* [d]", fields={"k_1": "v*2"}, content="**kept**")
    text = robot_message(msg)[1]["text"]
    assert "### a\\_b \\*c\\* \\[d\\]" in text
    assert "- **k\\_1**: v\\*2" in text
    assert "**kept**" in text  # the caller's markdown stays markdown


def test_peer_d5_sizes_are_counted_in_utf8_bytes() -> None:
    msg = message(title="磁盘告警", content="磁盘已满" * 6000, fields={"主机": "db-1"})
    body = notice_msg(msg, CREATED_AT)
    encoded = orjson.dumps(body)
    assert NOTICE_MSG_BYTES - 12 <= len(encoded) <= NOTICE_MSG_BYTES
    text = body["markdown"]["text"]
    assert TRUNCATION_MARKER.strip() in text and "db-1" in text  # fields survive the cut
    assert text.endswith(sent_line(CREATED_AT))
    _, param = robot_message(msg)
    assert ROBOT_PARAM_BYTES - 12 <= len(orjson.dumps(param)) <= ROBOT_PARAM_BYTES
    assert len(param["text"]) < ROBOT_PARAM_BYTES / 2  # characters are 3 bytes each


# -- settings and recipients (unit) ----------------------------------------------------------


def test_settings_are_validated_with_reasons() -> None:
    with pytest.raises(ValidationError, match="not a department id"):
        settings(dept_ids=["ops"])
    with pytest.raises(ValidationError, match="no commas"):
        settings(user_ids=["a,b"])
    with pytest.raises(ValidationError, match="http"):
        settings(api_base="api.dingtalk.com")
    assert settings(dept_ids=[1, "2"]).dept_ids == ["1", "2"]
    for config, words in [
        ({"agent_id": None}, "agent_id: set agent_id"),
        ({"agent_id": None, "robot_code": "r", "dept_ids": ["1"]}, "agent_id: departments"),
        ({"open_conversation_id": "cid1"}, "robot_code: a group"),
    ]:
        with pytest.raises(ValueError, match=words):
            CHANNEL_TYPE.check(settings(**config))


def test_one_proxy_can_stand_in_for_both_hosts() -> None:
    official = settings()
    assert (official.api_base, official.old_api_base()) == (
        "https://api.dingtalk.com",
        "https://oapi.dingtalk.com",
    )
    proxy = settings(api_base="http://10.0.0.5:8080/dingtalk/")
    assert proxy.old_api_base() == "http://10.0.0.5:8080/dingtalk"
    split = settings(api_base="https://a.example", oapi_base="https://o.example")
    assert split.old_api_base() == "https://o.example"


def test_a_messages_recipients_replace_the_channels() -> None:
    config = settings(robot_code="r", user_ids=["a"], dept_ids=["1"], open_conversation_id="c")
    default = resolve_targets(message(), config)
    assert default == Targets(("a",), ("1",), ("c",), False)
    given = message(recipients={"users": ["x"], "tags": ["oncall"]})
    override = resolve_targets(given, config)
    assert isinstance(override, Targets)
    assert (override.users, override.depts, override.chats) == (("x",), (), ())
    assert "tags" in override.warnings[0]
    nobody = resolve_targets(message(), settings())
    assert isinstance(nobody, str) and "nobody to send to" in nobody
    pinged = resolve_targets(message(mentions={"user_ids": ["zhangsan"]}), config)
    assert isinstance(pinged, Targets) and "cannot @ people" in pinged.warnings[0]
    assert "need the app's agent_id" in str(
        resolve_targets(
            message(recipients={"departments": ["1"]}), settings(agent_id=None, robot_code="r")
        )
    )


def test_long_recipient_lists_are_split_to_dingtalks_caps() -> None:
    users = [f"u{i}" for i in range(250)]
    depts = [str(i) for i in range(1, 46)]
    targets = Targets(tuple(users), tuple(depts), (), False)
    notices = plan(targets, settings(), set())
    assert [(len(p.users), len(p.depts)) for p in notices] == [(100, 20), (100, 20), (50, 5)]
    assert notices[2].label == "work notification to 50 users and 5 departments (part 3 of 3)"
    robot = plan(targets, settings(robot_code="r"), set())
    oto = [p for p in robot if p.kind == "oto"]
    assert [len(p.users) for p in oto] == [20] * 12 + [10]
    assert sum(len(p.depts) for p in robot if p.kind == "notice") == 45
    settled = {f"oto:user:u{i}" for i in range(240)}
    assert [
        p.users for p in plan(targets, settings(robot_code="r"), settled) if p.kind == "oto"
    ] == [tuple(users[240:])]


# -- reading answers (unit) ------------------------------------------------------------------


@pytest.mark.parametrize(("code", "entry"), list(OAPI_ERRORS.items()))
def test_every_old_api_code_has_a_class_and_a_fix(code: int, entry: Any) -> None:
    outcome = classify_oapi(answer({"errcode": code, "errmsg": "x"}), Call("notice"))
    assert (outcome.kind, outcome.vendor_code) == (entry.kind, str(code))
    assert outcome.diagnosis and "{" not in outcome.diagnosis


@pytest.mark.parametrize(("code", "entry"), list(API_ERRORS.items()))
def test_every_new_api_code_has_a_class_and_a_fix(code: str, entry: Any) -> None:
    body = {"code": code, "message": "x", "requestid": "R1"}
    outcome = classify_api(answer(body, 400), Call("robot", "dingkey", "dingrobot"))
    assert (outcome.kind, outcome.vendor_code, outcome.status_code) == (entry.kind, code, 400)
    assert outcome.diagnosis and "{" not in outcome.diagnosis


def test_errcode_88_is_read_by_its_sub_code() -> None:
    wrapped = {"errcode": 88, "sub_code": "42001", "sub_msg": "access_token超时", "errmsg": "x"}
    outcome = classify_oapi(answer(wrapped), Call("notice"))
    assert (outcome.kind, outcome.vendor_code) == ("refresh_token", "42001")
    assert "errcode 88" in (outcome.vendor_message or "")
    assert (outcome.diagnosis or "").endswith("(code 42001)")


def test_http_401_without_a_code_refreshes_the_token_once() -> None:
    for classify, call in (
        (classify_api, Call("robot", "k", "r")),
        (classify_oapi, Call("notice")),
    ):
        outcome = classify(VendorResponse(401, {}, b"Unauthorized"), call)
        assert (outcome.kind, outcome.status_code) == ("refresh_token", 401)
        assert "HTTP 401" in (outcome.diagnosis or "")


def test_peer_d2_d3_d14_success_is_read_from_the_body_never_from_http_200() -> None:
    assert (
        classify_oapi(answer({"errcode": 60020, "errmsg": "ip"}), Call("notice")).kind == "failed"
    )
    assert classify_oapi(answer(b"<html>ok</html>"), Call("notice")).kind == "failed"
    assert (
        classify_oapi(answer({"errcode": "0", "errmsg": "ok"}), Call("notice")).kind == "delivered"
    )
    blocked = classify_api(
        answer({"status": 1111, "wait": 5, "punish": "deny"}, 403), Call("robot")
    )
    assert (blocked.kind, blocked.retry_after_s) == ("retry", 300.0)
    unknown = classify_api(answer({"code": "brand.new", "message": "?"}, 400), Call("robot"))
    assert unknown.kind == "failed" and "does not know this code" in (unknown.diagnosis or "")


def test_a_missing_permission_is_named() -> None:
    denied = {
        "code": "Forbidden.AccessDenied.AccessTokenPermissionDenied",
        "message": "没有调用该接口的权限",
        "accessdenieddetail": {"requiredScopes": ["qyapi_robot_sendmsg"]},
    }
    outcome = classify_api(answer(denied, 403), Call("robot"))
    assert "企业内机器人发送消息权限" in (outcome.diagnosis or "")
    assert "Permission Management (开发配置 > 权限管理)" in (outcome.diagnosis or "")
    bare = classify_oapi(answer({"errcode": 60011, "errmsg": "no"}), Call("notice"))
    assert "qyapi_base" in (bare.diagnosis or "")


def test_peer_d1_the_token_lifetime_is_read_and_never_zero() -> None:
    assert token_lifetime_s(7200) == 7200.0
    assert token_lifetime_s("3600") == 3600.0
    for odd in (None, 0, -5, "soon"):
        assert token_lifetime_s(odd) == 7200.0


def test_peer_d4_the_fake_rejects_payloads_of_the_wrong_shape(fake: FakeDingTalkApp) -> None:
    app = staffed(fake)
    token = httpx.post(
        fake.url(APP_TOKEN_PATH), json={"appKey": app.app_key, "appSecret": app.app_secret}
    ).json()["accessToken"]
    notice = fake.url(f"{APP_NOTICE_PATH}?access_token={token}")
    # peers D4: markdown content sent as msgtype text
    wrong = {"agent_id": 1, "userid_list": "u0", "msg": {"msgtype": "text", "markdown": {}}}
    assert httpx.post(notice, json=wrong).json()["errcode"] == 40035
    headers = {"x-acs-dingtalk-access-token": token}
    as_object = {
        "robotCode": app.robot_code,
        "userIds": ["u0"],
        "msgKey": "sampleMarkdown",
        "msgParam": {"title": "t", "text": "x"},  # not a JSON string
    }
    reply = httpx.post(fake.url(APP_BATCH_PATH), json=as_object, headers=headers)
    assert (reply.status_code, reply.json()["code"]) == (400, "invalidParameter.msgParam.invalid")
    no_header = httpx.post(fake.url(f"{APP_BATCH_PATH}?access_token={token}"), json=as_object)
    assert no_header.json()["code"] == "AuthenticationFailed.MissingParameter"
    assert app.inbox == {}


# -- end to end ------------------------------------------------------------------------------


def test_delivers_a_work_notification_to_users_and_departments(
    api: httpx.Client, fake: FakeDingTalkApp, unique: str
) -> None:
    app = staffed(fake)
    name = f"dta-notice-{unique}"
    make_channel(api, fake, app, name, agent_id=app.agent_id, user_ids=["u2"], dept_ids=["7"])
    final = deliver(
        api,
        name,
        content="**daily_sales** failed",
        level="error",
        links=[{"title": "Open task", "url": "https://example.com/tasks/42"}],
    )
    assert final["status"] == "delivered", final
    [body] = app.notices
    assert (body["agent_id"], body["userid_list"], body["dept_id_list"]) == (
        app.agent_id,
        "u2",
        "7",
    )
    assert body["to_all_user"] is False
    assert body["msg"]["action_card"]["single_url"] == "https://example.com/tasks/42"
    assert sorted(app.inbox) == ["u0", "u1", "u2"]  # u0 and u1 through department 7
    call = next(e for e in exchanges(final) if APP_NOTICE_PATH in e["url"])
    assert "access_token=••••" in call["url"]
    attempt = final["attempt_log"][0]
    assert (attempt["vendor_code"], attempt["status_code"]) == ("0", 200)


def test_delivers_robot_messages_to_users_in_batches_and_to_the_group(
    api: httpx.Client, fake: FakeDingTalkApp, unique: str
) -> None:
    app = staffed(fake, users=25, agent_id=None)
    group = fake.add_group(app)
    name = f"dta-robot-{unique}"
    users = [f"u{i}" for i in range(25)]
    robot_channel(api, fake, app, name, user_ids=users, open_conversation_id=group.cid)
    final = deliver(
        api, name, content="disk full", links=[{"title": "Open", "url": "https://e.com/x"}]
    )
    assert final["status"] == "delivered", final
    assert [len(body["userIds"]) for body in app.oto] == [20, 5]
    assert sorted(app.inbox) == sorted(users)
    assert all(m[0]["robot"] == "sampleActionCard" for m in app.inbox.values())
    [(key, param)] = group.messages
    assert key == "sampleActionCard" and param["singleURL"] == "https://e.com/x"
    sent = [e for e in exchanges(final) if APP_BATCH_PATH in e["url"] or APP_GROUP_PATH in e["url"]]
    assert len(sent) == 3
    assert all(e["headers"]["x-acs-dingtalk-access-token"] == "••••" for e in sent)
    assert isinstance(orjson.loads(sent[0]["body"])["msgParam"], str)


def test_a_messages_recipients_override_the_channels_end_to_end(
    api: httpx.Client, fake: FakeDingTalkApp, unique: str
) -> None:
    app = staffed(fake, users=5)
    group = fake.add_group(app)
    name = f"dta-override-{unique}"
    make_channel(
        api, fake, app, name, agent_id=app.agent_id, robot_code=app.robot_code, user_ids=["u0"]
    )
    recipients = {"users": ["u3", "u4"], "departments": ["7"], "chats": [group.cid], "tags": ["x"]}
    final = deliver(api, name, recipients=recipients)
    assert final["status"] == "delivered", final
    assert "recipients.tags" in final["warning"]
    assert [body["userIds"] for body in app.oto] == [["u3", "u4"]]  # robot_code: users by robot
    assert [body.get("dept_id_list") for body in app.notices] == ["7"]
    assert len(group.messages) == 1 and "u0" not in [b["userIds"][0] for b in app.oto]


def test_everyone_gets_one_work_notification(
    api: httpx.Client, fake: FakeDingTalkApp, unique: str
) -> None:
    app = staffed(fake, users=150)
    name = f"dta-all-{unique}"
    make_channel(api, fake, app, name, agent_id=app.agent_id, to_all_user=True)
    assert deliver(api, name)["status"] == "delivered"
    [body] = app.notices
    assert body["to_all_user"] is True and "userid_list" not in body
    assert len(app.inbox) == 150
    only = deliver(api, name, recipients={"users": ["u1"]})  # named recipients: not everyone
    assert only["status"] == "delivered" and app.notices[1]["to_all_user"] is False


def test_long_recipient_lists_are_split_end_to_end(
    api: httpx.Client, fake: FakeDingTalkApp, unique: str
) -> None:
    app = staffed(fake, users=250)
    for dept in range(1, 46):
        app.depts[str(dept)] = []
    name = f"dta-split-{unique}"
    users = [f"u{i}" for i in range(250)]
    depts = [str(d) for d in range(1, 46)]
    make_channel(api, fake, app, name, agent_id=app.agent_id, user_ids=users, dept_ids=depts)
    final = deliver(api, name)
    assert final["status"] == "delivered", final
    sizes = [
        (len(b["userid_list"].split(",")), len(b["dept_id_list"].split(","))) for b in app.notices
    ]
    assert sizes == [(100, 20), (100, 20), (50, 5)]
    assert len(app.inbox) == 250 and app.dropped == []


def test_partial_results_are_delivered_with_a_warning(
    api: httpx.Client, fake: FakeDingTalkApp, unique: str
) -> None:
    app = staffed(fake, users=4, agent_id=None)
    name = f"dta-partial-{unique}"
    robot_channel(api, fake, app, name, user_ids=["u0", "u1", "ghost"])
    final = deliver(api, name)
    assert final["status"] == "delivered", final
    assert "DingTalk did not deliver to 1 unknown user(s): ghost" in final["warning"]
    assert "visible range 可见范围" in final["warning"]
    assert sorted(app.inbox) == ["u0", "u1"]

    app.flow_control["u1"] = 1  # DingTalk throttles u1 once
    throttled = deliver(api, name)
    assert throttled["status"] == "retrying", throttled
    assert "flow-controlled 1 user(s) (u1)" in throttled["error"]
    assert "retrying just these in 60 s" in throttled["error"]
    assert len(app.inbox["u0"]) == 2 and len(app.inbox["u1"]) == 1


def test_flow_controlled_users_are_retried_alone_and_once(fake: FakeDingTalkApp) -> None:
    app = staffed(fake, users=4, agent_id=None)
    app.flow_control.update({"u1": 1, "u2": 5})  # u1 throttled once, u2 every time
    config = settings(
        app_key=app.app_key,
        app_secret=app.app_secret,
        agent_id=None,
        robot_code=app.robot_code,
        user_ids=["u0", "u1", "u2", "ghost"],
        api_base=fake.url(""),
    )
    ctx = local_context(fake, "dlv_flow_" + app.app_key)
    first = asyncio.run(CHANNEL_TYPE.send(message(), config, ctx))
    assert (first.kind, first.retry_after_s) == ("retry", 60.0)
    assert "flow-controlled 2 user(s) (u1, u2)" in (first.diagnosis or "")
    assert "ghost" in (first.warning or "")
    second = asyncio.run(CHANNEL_TYPE.send(message(), config, ctx))
    assert second.kind == "delivered", second
    assert "flow-controlled 1 user(s) twice, so they did not get the message: u2" in (
        second.warning or ""
    )
    assert [body["userIds"] for body in app.oto] == [["u0", "u1", "u2", "ghost"], ["u1", "u2"]]
    assert {user: len(seen) for user, seen in app.inbox.items()} == {"u0": 1, "u1": 1}


def test_a_refused_part_fails_the_delivery_and_says_who_got_it(
    api: httpx.Client, fake: FakeDingTalkApp, unique: str
) -> None:
    app = staffed(fake, agent_id=None)
    alive, gone = fake.add_group(app), fake.add_group(app, state="disbanded")
    name = f"dta-refused-{unique}"
    robot_channel(api, fake, app, name, user_ids=["u0"])
    final = deliver(api, name, recipients={"users": ["u0"], "chats": [gone.cid, alive.cid]})
    assert final["status"] == "failed"
    assert f"Sending failed (robot message to group {gone.cid})" in final["error"]
    assert (
        "disbanded" in final["error"] and "2 other recipient(s) got the message" in final["warning"]
    )
    assert len(alive.messages) == 1 and "u0" in app.inbox


def test_a_retry_sends_only_what_was_not_accepted(
    api: httpx.Client, fake: FakeDingTalkApp, unique: str
) -> None:
    app = staffed(fake, agent_id=None)
    first, second = fake.add_group(app), fake.add_group(app)
    name = f"dta-resume-{unique}"
    robot_channel(api, fake, app, name, user_ids=["u0"])
    fake.fail_next(app, "group", "system.error")  # the first group's send breaks once
    final = deliver(
        api,
        name,
        statuses=("delivered", "failed"),
        recipients={"users": ["u0"], "chats": [first.cid, second.cid]},
    )
    assert final["status"] == "delivered" and final["attempts"] == 2
    assert len(app.inbox["u0"]) == 1  # the users' batch was not sent again
    assert (len(first.messages), len(second.messages)) == (1, 1)


# (api the fault hits, code, sub_code, status expected, words of the diagnosis)
CASES: list[tuple[str, int | str, str | None, str, str]] = [
    # the new token endpoint; credentials answers are final, outages fall back to gettoken
    ("token", "invalidClientIdOrSecret", None, "failed", "Credentials check failed (accessToken)"),
    ("token", "invalid.client", None, "failed", "copy the Client ID and Client Secret"),
    ("token", "unauthorized.client", None, "failed", "copy the Client ID and Client Secret"),
    ("token", "unsupported.grant.type", None, "failed", "proxy"),
    ("token", "server.error", None, "delivered", ""),
    ("token", "unknownError", None, "delivered", ""),
    ("token", "Forbidden.AccessDenied.IpNotInWhiteList", None, "failed", "trusted IPs"),
    # the old token endpoint (the new one answering 404 for this app)
    ("gettoken", 40096, None, "failed", "Credentials check failed (gettoken)"),
    ("gettoken", 40035, None, "failed", "required parameter"),
    ("gettoken", 60020, None, "failed", "trusted IPs"),
    ("gettoken", -1, None, "retrying", "busy"),
    # work notifications (old API: HTTP 200 + errcode)
    ("notice", 88, "40014", "refreshed", ""),
    ("notice", 88, "42001", "refreshed", ""),
    ("notice", 40014, None, "refreshed", ""),
    ("notice", 42001, None, "refreshed", ""),
    ("notice", 41001, None, "failed", "query string"),
    ("notice", 40035, None, "failed", "required parameter"),
    ("notice", 60011, None, "failed", "qyapi_base"),
    ("notice", 60020, None, "failed", "Server egress IP (服务器出口IP)"),
    ("notice", -1, None, "retrying", "busy"),
    ("notice", 90002, None, "retrying", "platform-wide"),
    ("notice", 90018, None, "retrying", "20 calls a second"),
    ("notice", 90020, None, "failed", "monthly API call quota"),
    ("notice", 22, None, "failed", "API path"),
    ("notice", 33012, None, "failed", "visible range"),
    ("notice", 60121, None, "failed", "visible range"),
    ("notice", 60003, None, "failed", "department"),
    ("notice", 143105, None, "failed", "daily work-notification cap"),
    ("notice", 143106, None, "delivered", ""),
    # robot messages (new API: HTTP 4xx + code)
    ("batch", "InvalidAuthentication", None, "refreshed", ""),
    ("batch", "invalidParameter.token.invalid", None, "refreshed", ""),
    ("batch", "token.notExisted", None, "refreshed", ""),
    ("batch", "AuthenticationFailed.MissingParameter", None, "failed", "header"),
    ("batch", "Forbidden.AccessDenied.IpNotInWhiteList", None, "failed", "trusted IPs"),
    (
        "batch",
        "Forbidden.AccessDenied.AccessTokenPermissionDenied",
        None,
        "failed",
        "qyapi_robot_sendmsg",
    ),
    ("batch", "Forbidden.AccessDenied.QpsLimitForApi", None, "retrying", "platform-wide"),
    (
        "batch",
        "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi",
        None,
        "retrying",
        "20 calls a second",
    ),
    ("batch", "Forbidden.AccessDenied.QpmLimitForAppkeyAndApi", None, "retrying", "a minute"),
    ("batch", "Forbidden.AccessDenied.ApiCountLimitForOrg", None, "failed", "monthly"),
    ("batch", "invalidParameter.robotCode.empty", None, "failed", "RobotCode"),
    ("batch", "invalidParameter.robotCode.invalid", None, "failed", "RobotCode"),
    ("batch", "invalidParameter.robotCode.notExsit", None, "failed", "RobotCode"),
    ("batch", "invalidParameter.robotCode.auth", None, "failed", "belongs to another app"),
    ("batch", "invalidParameter.userIds.empty", None, "failed", "no userIds"),
    ("batch", "invalidParameter.userIds.overMax", None, "failed", "cap is lower"),
    ("batch", "invalidParameter.msgKey.empty", None, "failed", "format text"),
    ("batch", "invalidParameter.msgKey.invalid", None, "failed", "format text"),
    ("batch", "invalidParameter.msgParam.invalid", None, "failed", "format text"),
    ("batch", "invalidParameter.msg.unsupport", None, "failed", "format text"),
    ("batch", "invalidParameter.msgParam.tooLong", None, "failed", "too long"),
    ("batch", "miss.param.markdownTotext", None, "failed", "format text"),
    ("batch", "template.not.existed", None, "failed", "RobotCode"),
    ("batch", "template.stopped", None, "failed", "stopped"),
    ("batch", "staffId.notExisted", None, "failed", "visible range"),
    ("batch", "chatbotId.notAllow.sendOTO", None, "failed", "one-to-one"),
    ("batch", "send.too.fast", None, "retrying", "throttling the robot"),
    ("batch", "send.byToken.tooFast", None, "retrying", "throttling the robot"),
    ("batch", "too.many.people", None, "retrying", "throttling the robot"),
    ("batch", "toomuch.msg", None, "retrying", "throttling the robot"),
    ("batch", "system.error", None, "retrying", "busy"),
    ("batch", "unknown.send.result", None, "retrying", "could not tell"),
    ("group", "invalid.openConversationId", None, "failed", "open_conversation_id"),
    ("group", "group.disbanded", None, "failed", "disbanded"),
    ("group", "bot.stopped", None, "failed", "enable it again"),
    ("group", "too.many.group", None, "retrying", "throttling the robot"),
    ("group", "conversation.org.notMatch", None, "failed", "another organisation"),
]


def test_every_error_code_end_to_end(api: httpx.Client, fake: FakeDingTalkApp, unique: str) -> None:
    """Each code injected at the fake for a channel of its own, all sent at once."""
    sent: list[tuple[tuple[str, int | str, str | None, str, str], App, str]] = []
    for index, case in enumerate(CASES):
        where, code, sub_code, _, _ = case
        app = staffed(fake, token_endpoint=where != "gettoken")
        name = f"dta-e{index}-{unique}"
        if where == "batch":
            robot_channel(api, fake, app, name)
        elif where == "group":
            group = fake.add_group(app).cid
            robot_channel(api, fake, app, name, user_ids=[], open_conversation_id=group)
        else:
            notice_channel(api, fake, app, name)
        fake.fail_next(app, where, code, sub_code=sub_code)
        sent.append((case, app, send(api, [name])["deliveries"][0]["id"]))
    wrong = []
    for (where, code, sub_code, status, words), app, delivery_id in sent:
        final = wait_delivery(api, delivery_id, SETTLED)
        attempt = final["attempt_log"][0]
        if status == "refreshed":  # the token was renewed and the attempt repeated at once
            ok = final["status"] == "delivered" and final["attempts"] == 1 and app.fetches == 2
        elif status == "delivered":
            ok = final["status"] == "delivered"
        elif status == "failed":
            ok = (
                final["status"] == "failed"
                and attempt["vendor_code"] == str(sub_code or code)
                and words in final["error"]
                and not app.inbox
            )
        else:
            ok = attempt["outcome"] == "retry" and words in attempt["diagnosis"]
            ok = ok and final["status"] in ("retrying", "delivered")
        if not ok:
            wrong.append((where, code, sub_code, status, final["status"], attempt["diagnosis"]))
    assert wrong == []


@pytest.mark.parametrize(
    ("app_config", "channel_config", "code", "words"),
    [
        ({"ip_allowlist": ["10.0.0.0/8"]}, {}, "60020", "add 127.0.0.1"),
        ({"permissions": set()}, {}, "60011", "qyapi_base"),
        (
            {"ip_allowlist": ["10.0.0.0/8"]},
            {"robot": True},
            "Forbidden.AccessDenied.IpNotInWhiteList",
            "add 127.0.0.1",
        ),
        (
            {"permissions": {"qyapi_base"}},
            {"robot": True},
            "Forbidden.AccessDenied.AccessTokenPermissionDenied",
            "企业内机器人发送消息权限",
        ),
        (
            {},
            {"robot": True, "robot_code": "dingnobody"},
            "invalidParameter.robotCode.notExsit",
            "dingnobody",
        ),
        (
            {},
            {"robot": True, "open_conversation_id": "cidnope==", "user_ids": []},
            "invalid.openConversationId",
            "open_conversation_id",
        ),
        ({}, {"app_secret": "wrong-secret"}, "invalidClientIdOrSecret", "app_key ding"),
    ],
)
def test_app_configuration_errors_end_to_end(
    api: httpx.Client,
    fake: FakeDingTalkApp,
    unique: str,
    app_config: dict[str, Any],
    channel_config: dict[str, Any],
    code: str,
    words: str,
) -> None:
    app = staffed(fake, **app_config)
    name = f"dta-c-{unique}"
    channel_config = dict(channel_config)  # the parameters are shared by both backends
    if channel_config.pop("robot", False):
        channel_config.setdefault("robot_code", app.robot_code)
        channel_config.setdefault("user_ids", ["u0"])
        make_channel(api, fake, app, name, **channel_config)
    else:
        make_channel(api, fake, app, name, agent_id=app.agent_id, user_ids=["u0"], **channel_config)
    final = deliver(api, name)
    assert final["status"] == "failed", final
    assert final["attempt_log"][0]["vendor_code"] == code
    assert words in final["error"], final["error"]
    assert app.inbox == {}


def test_peer_d12_a_refused_token_is_refreshed_once_then_reused(
    api: httpx.Client, fake: FakeDingTalkApp, unique: str
) -> None:
    app = staffed(fake)
    group = fake.add_group(app)
    name = f"dta-refresh-{unique}"
    make_channel(
        api,
        fake,
        app,
        name,
        agent_id=app.agent_id,
        robot_code=app.robot_code,
        dept_ids=["7"],
        open_conversation_id=group.cid,
    )
    assert deliver(api, name)["status"] == "delivered"
    fake.revoke_tokens(app)  # both APIs now refuse the cached token
    final = deliver(api, name)
    assert final["status"] == "delivered" and final["attempts"] == 1, final
    assert app.fetches == 2
    fake.expire_tokens(app)
    assert deliver(api, name)["status"] == "delivered"
    assert app.fetches == 3
    for _ in range(3):
        assert deliver(api, name)["status"] == "delivered"
    assert app.fetches == 3  # the new token is cached, not refetched
    assert [r for r in app.rejected if r[0] == "notice"] == [
        ("notice", "40014"),
        ("notice", "42001"),
    ]
    assert ("group", "InvalidAuthentication") not in app.rejected  # refreshed before reaching it


def test_the_old_token_endpoint_stands_in_when_the_new_one_is_missing(
    api: httpx.Client, fake: FakeDingTalkApp, unique: str
) -> None:
    app = staffed(fake, token_endpoint=False)
    name = f"dta-fallback-{unique}"
    notice_channel(api, fake, app, name)
    final = deliver(api, name)
    assert final["status"] == "delivered", final
    assert (app.token_fetches, app.gettoken_fetches) == (0, 1)
    urls = [e["url"] for e in exchanges(final)]
    assert APP_TOKEN_PATH in urls[0] and APP_GETTOKEN_PATH in urls[1]
    assert "appsecret=••••" in urls[1] and app.app_secret not in urls[1]


def test_test_push_says_which_step_failed(
    api: httpx.Client, fake: FakeDingTalkApp, unique: str
) -> None:
    app = staffed(fake, ip_allowlist=["10.0.0.0/8"], agent_id=None)
    config: dict[str, Any] = {
        "app_key": app.app_key,
        "app_secret": "wrong",
        "robot_code": app.robot_code,
        "user_ids": ["u0"],
        "api_base": fake.url(""),
    }
    creds = api.post("/channels/test", json={"type": "dingtalk_app", "config": config}).json()
    assert creds["ok"] is False and creds["vendor_code"] == "invalidClientIdOrSecret"
    assert creds["status_code"] == 400
    assert creds["diagnosis"].startswith("Credentials check failed (accessToken): ")

    config["app_secret"] = app.app_secret
    ip = api.post("/channels/test", json={"type": "dingtalk_app", "config": config}).json()
    assert ip["ok"] is False and ip["vendor_code"] == "Forbidden.AccessDenied.IpNotInWhiteList"
    assert ip["diagnosis"].startswith("Sending failed (robot message to 1 user): ")
    assert "add 127.0.0.1" in ip["diagnosis"]

    app.ip_allowlist.clear()
    fine = api.post("/channels/test", json={"type": "dingtalk_app", "config": config}).json()
    assert fine["ok"] is True, fine
    assert app.inbox["u0"][0]["param"]["title"] == "msgpush Test Push"

    name = f"dta-test-{unique}"
    robot_channel(api, fake, app, name, user_ids=["nobody"])
    saved = api.post(f"/channels/{name}/test").json()
    assert saved["ok"] is True and "1 unknown user(s): nobody" in saved["diagnosis"]
    api.patch(f"/channels/{name}", json={"config": {"user_ids": ["u1"]}})
    assert api.post(f"/channels/{name}/test").json()["ok"] is True
    assert api.get(f"/channels/{name}").json()["last_test"]["ok"] is True


def test_peer_d8_d9_d10_the_secret_and_access_tokens_never_appear(
    api: httpx.Client, server: ServerProcess, fake: FakeDingTalkApp, unique: str
) -> None:
    app = staffed(fake)
    group = fake.add_group(app)
    name = f"dta-secret-{unique}"
    created = make_channel(
        api,
        fake,
        app,
        name,
        agent_id=app.agent_id,
        robot_code=app.robot_code,
        dept_ids=["7"],
        open_conversation_id=group.cid,
    )
    assert created["config"]["app_secret"].startswith("••••")
    first = deliver(api, name)
    fake.revoke_tokens(app)  # a refresh: the second token is fetched and used too
    second = deliver(api, name)
    fake.fail_next(app, "group", "group.disbanded")
    failed = deliver(api, name)
    tested = api.post(
        "/channels/test",
        json={
            "type": "dingtalk_app",
            "config": {
                "app_key": app.app_key,
                "app_secret": app.app_secret,
                "agent_id": app.agent_id,
                "user_ids": ["u0"],
                "api_base": fake.url(""),
            },
        },
    )
    assert [d["status"] for d in (first, second, failed)] == ["delivered", "delivered", "failed"]
    assert tested.json()["ok"] is True
    assert len(app.issued_tokens) == 2
    views = [api.get(f"/deliveries/{d['id']}").json() for d in (first, second, failed)]
    calls = [*(e for view in views for e in exchanges(view)), *tested.json()["request"]]
    for call in calls:  # the secret and the tokens are masked in every request
        assert "•" in call["url"] or "•" in str(call["headers"]) or "•" in call["body"]
        for token in app.issued_tokens:
            assert token not in call["url"] + str(call["headers"]) + call["body"]
        if not call["url"].split("?")[0].endswith((APP_TOKEN_PATH, APP_GETTOKEN_PATH)):
            assert not any(token in call.get("response", "") for token in app.issued_tokens)
    seen = [
        str(created),
        api.get(f"/channels/{name}").text,
        api.get("/channels").text,
        api.get("/deliveries", params={"channel": name}).text,
        *(str(view["attempt_log"][-1]["diagnosis"]) for view in views),
        server.log(),
    ]
    for text in [*seen, *(orjson.dumps(view).decode() for view in views), tested.text]:
        assert app.app_secret not in text
    for text in seen:
        assert not any(token in text for token in app.issued_tokens)


def test_peer_d9_token_answers_are_masked_in_attempt_records(
    api: httpx.Client, fake: FakeDingTalkApp, unique: str
) -> None:
    app = staffed(fake)
    name = f"dta-token-answer-{unique}"
    notice_channel(api, fake, app, name)
    final = deliver(api, name)
    assert final["status"] == "delivered"
    assert app.issued_tokens[0] not in api.get(f"/deliveries/{final['id']}").text


def test_peer_d1_d11_d12_a_burst_fetches_one_token_and_one_more_after_a_revoke(
    make_server: Callable[..., ServerProcess], fake: FakeDingTalkApp, unique: str
) -> None:
    scale = 0.01  # every window 100x shorter, at msgpush and at the fake alike
    own = make_server(MSGPUSH_RATE_WINDOW_SCALE=str(scale))
    app = staffed(fake, agent_id=None, qps_window_s=1.0 * scale)
    group = fake.add_group(app)
    name = f"dta-burst-{unique}"
    with own.client() as api:
        robot_channel(api, fake, app, name, user_ids=["u0"], open_conversation_id=group.cid)
        batch = [{"channels": [name], "title": f"#{i}"} for i in range(100)]
        answered = api.post("/messages/batch", json={"messages": batch})
        ids = [item["deliveries"][0]["id"] for item in answered.json()["items"]]
        finals = [wait_delivery(api, i, timeout=30) for i in ids]
        assert [f["status"] for f in finals] == ["delivered"] * 100
        assert app.fetches == 1  # one token for 100 messages (peers D1)
        assert app.throttled() == [] and len(group.messages) == 100  # kept, not discovered (D11)

        fake.revoke_tokens(app)
        more = [{"channels": [name], "title": f"after #{i}"} for i in range(20)]
        answered = api.post("/messages/batch", json={"messages": more})
        ids = [item["deliveries"][0]["id"] for item in answered.json()["items"]]
        assert all(wait_delivery(api, i, timeout=30)["status"] == "delivered" for i in ids)
    assert app.fetches == 2  # in-flight sends that saw the revoked token share one refresh
    assert app.throttled() == [] and len(group.messages) == 120
    assert len(app.inbox["u0"]) == 120


def test_the_token_is_shared_by_worker_processes(
    backend: str, tmp_path: Path, fake: FakeDingTalkApp, unique: str
) -> None:
    database_url = create_pg_database() if backend == "postgresql" else None
    api_server = ServerProcess(tmp_path / "api", database_url=database_url, args=("--no-worker",))
    workers: list[subprocess.Popen[bytes]] = []

    def start_worker(index: int) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker{index}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "msgpush", "worker"],
            env=api_server.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        workers.append(proc)
        return proc

    try:
        api_server.start()
        app = staffed(fake)
        name = f"dta-workers-{unique}"
        with api_server.client() as api:
            notice_channel(api, fake, app, name)
            started = [start_worker(1), start_worker(2)]
            one = deliver(api, name, statuses=("delivered", "failed"))
            # stop the process that fetched the token; the other one must find it cached
            [busy] = [p for p in started if f"-{p.pid}-" in one["attempt_log"][0]["worker"]]
            busy.terminate()
            busy.wait(15)
            two = deliver(api, name, statuses=("delivered", "failed"))
        assert (one["status"], two["status"]) == ("delivered", "delivered")
        assert one["attempt_log"][0]["worker"] != two["attempt_log"][0]["worker"]
        assert app.fetches == 1  # the second process read the first one's token
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(15)
        api_server.stop()
        if database_url:
            drop_pg_database(database_url)
    logs = "".join((tmp_path / f"worker{i}.log").read_text() for i in (1, 2))
    assert app.app_secret not in logs and all(t not in logs for t in app.issued_tokens)


def test_the_channel_type_is_described(api: httpx.Client) -> None:
    [described] = [
        t for t in api.get("/channel-types").json()["items"] if t["type"] == "dingtalk_app"
    ]
    assert described["secret_fields"] == ["app_secret"]
    assert described["limits"]["rate"] == {"per_second": 10, "per_minute": 50}
    assert set(described["schema"]["required"]) == {"app_key", "app_secret"}
