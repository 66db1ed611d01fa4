"""DingTalk self-built app (企业内部应用): work notifications to users and departments, and robot
messages to users and groups, sent with the app's cached access token."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode, urlsplit

import orjson
from pydantic import Field, SecretStr, field_validator

from msgpush.channels.base import (
    ChannelSettings,
    ChannelType,
    FetchedToken,
    Outcome,
    RateLimit,
    SendContext,
    TokenFetchFailed,
    VendorCode,
    VendorRequest,
    VendorResponse,
    fetched_or_cached,
    secret_field,
    token_lifetime_s,
    unauthorized,
    vendor_outcome,
)
from msgpush.channels.dingtalk_common import (
    fit,
    gateway_block,
    keep_line_breaks,
    list_title,
    markdown_text,
)
from msgpush.channels.render import text_body
from msgpush.delivery.tokens import token_key
from msgpush.message import Format, Message

TYPE_ID = "dingtalk_app"
# docs/vendors/dingtalk.md#two-apis: the new API (v1.0, camelCase, HTTP 4xx errors) and the old API
# (errcode) live on two hosts; a proxy or test double may stand in for both at one address
OFFICIAL_API_BASE = "https://api.dingtalk.com"
OFFICIAL_OAPI_BASE = "https://oapi.dingtalk.com"
# docs/vendors/dingtalk.md#access-token: the new token endpoint, and the old one kept as a fallback
TOKEN_PATH = "/v1.0/oauth2/accessToken"
GETTOKEN_PATH = "/gettoken"
# docs/vendors/dingtalk.md#work-notification
NOTICE_PATH = "/topapi/message/corpconversation/asyncsend_v2"
# docs/vendors/dingtalk.md#robot-messages
BATCH_SEND_PATH = "/v1.0/robot/oToMessages/batchSend"
GROUP_SEND_PATH = "/v1.0/robot/groupMessages/send"
TOKEN_HEADER = "x-acs-dingtalk-access-token"
# docs/vendors/dingtalk.md#work-notification: userid_list ≤ 100, dept_id_list ≤ 20 per call
NOTICE_MAX_USERS = 100
NOTICE_MAX_DEPTS = 20
# docs/vendors/dingtalk.md#robot-messages: 20 userIds per call (the page's error text says 100; 20
# is safe)
ROBOT_MAX_USERS = 20
# docs/vendors/dingtalk.md#work-notification: msg ≤ 2048 bytes (another page allows 5000 characters
# of markdown; the byte cap is the one that cannot be exceeded by following the other)
NOTICE_MSG_BYTES = 2048
# docs/vendors/dingtalk.md#robot-messages: msgParam ≤ 15000 bytes (stated for groups, applied to
# batchSend too)
ROBOT_PARAM_BYTES = 15_000
# docs/vendors/dingtalk.md#robot-messages msgKeys: one button, or 2 to 5 numbered buttons
ROBOT_MAX_BUTTONS = 5
# DingTalk doc "how to process API throttling": 20 calls a second per app and API. A delivery may
# make several calls to one API (split lists), so msgpush keeps each channel at half of that.
PER_SECOND = 10
# docs/vendors/dingtalk.md#work-notification: at most 5000 recipients a minute get work
# notifications; one call names up to 100 users, so 50 calls a minute can reach it
PER_MINUTE = 50
# DingTalk doc "how to process API throttling": QPS throttles last one second
QPS_WAIT_S = 1.0
# ours: the robot's send.too.fast family and per-minute throttles state no cooldown
ROBOT_THROTTLE_S = 60.0
# ours: users DingTalk flow-controlled get one more try, this much later, before msgpush gives up
FLOW_CONTROL_RETRY_S = 60.0
FLOW_CONTROL_RETRIES = 1
# ours: deliveries whose partial progress this process remembers (see _Progress)
PROGRESS_ENTRIES = 10_000

# where each fix is made, for the diagnoses (the console at open-dev.dingtalk.com)
CONSOLE = "the DingTalk Developer Console (open-dev.dingtalk.com) > the app"
CREDENTIALS_PAGE = f"{CONSOLE} > Credentials and Basic Info (凭证与基础信息)"
PERMISSIONS_PAGE = f"{CONSOLE} > Development Config > Permission Management (开发配置 > 权限管理)"
IP_PAGE = f"{CONSOLE} > Development Config > Security Settings (开发配置 > 安全设置) > Server egress IP (服务器出口IP)"
ROBOT_PAGE = f"{CONSOLE} > App Capabilities > Robot (应用能力 > 机器人)"
RELEASE_PAGE = f"{CONSOLE} > Version Management and Release (版本管理与发布)"
# the permission each API requires (docs/vendors/dingtalk.md#robot-messages, each page's "权限要求")
ROBOT_PERMISSION = "qyapi_robot_sendmsg"
NOTICE_PERMISSION = "qyapi_base"
PERMISSION_NAMES = {
    ROBOT_PERMISSION: "企业内机器人发送消息权限 (Internal robot message sending, qyapi_robot_sendmsg)",
    NOTICE_PERMISSION: "调用企业API时需要具备的基本权限 (basic enterprise API permission, qyapi_base)",
}
_IPV4 = re.compile(r"\b(\d{1,3}(?:\.\d{1,3}){3})\b")

Api = Literal["token", "gettoken", "notice", "robot"]


# -- settings --------------------------------------------------------------------------------


def _id_list(values: list[Any], what: str) -> list[str]:
    cleaned = [str(value).strip() for value in values]
    for value in cleaned:
        if not value:
            raise ValueError(f"an empty {what} matches nobody; remove it")
        if "," in value or any(c.isspace() for c in value):
            raise ValueError(f"{value!r} is not a DingTalk {what} (no commas or spaces)")
    return list(dict.fromkeys(cleaned))


def _base_url(value: str, name: str) -> str:
    url = value.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http(s) URL like {OFFICIAL_API_BASE}")
    if parts.query or parts.fragment:
        raise ValueError(f"{name} is a base address: remove the query string")
    return url


class DingTalkAppSettings(ChannelSettings):
    app_key: str = Field(
        json_schema_extra={
            "x-title-zh": "AppKey (Client ID)",
            "x-description-zh": (
                "应用的 Client ID（原 AppKey），在钉钉开发者后台该应用的 凭证与基础信息 页面。"
            ),
        },
        min_length=1,
        max_length=128,
        title="AppKey (Client ID)",
        description=(
            "The app's Client ID (原 AppKey), on the app's Credentials and Basic Info "
            "(凭证与基础信息) page in the DingTalk Developer Console."
        ),
    )
    app_secret: SecretStr = secret_field(
        json_schema_extra={
            "x-title-zh": "AppSecret (Client Secret)",
            "x-description-zh": "应用的 Client Secret（原 AppSecret），在 Client ID 旁边。加密保存，不再显示。",
        },
        title="AppSecret (Client Secret)",
        description=(
            "The app's Client Secret (原 AppSecret), next to the Client ID. Stored encrypted; "
            "never shown again."
        ),
    )
    agent_id: int | None = Field(
        json_schema_extra={
            "x-title-zh": "应用AgentId",
            "x-description-zh": (
                "用于工作通知：应用的 AgentId，在同一页面。发给部门或全员时必填；未设置 RobotCode 时，"
                "发给用户也需要。"
            ),
        },
        default=None,
        ge=1,
        title="AgentId",
        description=(
            "For work notifications (工作通知): the app's AgentId, on the same page. Needed to "
            "reach departments or everyone, and users when robot_code is not set."
        ),
    )
    robot_code: str | None = Field(
        json_schema_extra={
            "x-title-zh": "RobotCode",
            "x-description-zh": (
                "用于机器人消息：应用机器人的 RobotCode（应用能力 > 机器人）。设置后，用户收到机器人"
                "单聊消息而非工作通知，并可发到群（open_conversation_id、recipients.chats）。"
            ),
        },
        default=None,
        max_length=128,
        title="RobotCode",
        description=(
            "For robot messages: the app robot's RobotCode (App Capabilities > Robot). When "
            "set, users get the robot's one-to-one message instead of a work notification, and "
            "groups (open_conversation_id, recipients.chats) can be reached."
        ),
    )
    user_ids: list[str] = Field(
        json_schema_extra={
            "x-title-zh": "接收人 userId",
            "x-description-zh": "默认接收人：钉钉 userId（不是手机号）。消息的 recipients.users 会替换它们。",
        },
        default_factory=list,
        max_length=5000,
        title="User IDs",
        description="Default recipients: DingTalk userIds (not mobiles). A message's recipients.users replace them.",
    )
    dept_ids: list[str] = Field(
        json_schema_extra={
            "x-title-zh": "部门 ID",
            "x-description-zh": (
                "默认接收部门（工作通知，含子部门）。消息的 recipients.departments 会替换它们。"
            ),
        },
        default_factory=list,
        max_length=1000,
        title="Department IDs",
        description=(
            "Default recipient departments (work notifications; sub-departments included). A "
            "message's recipients.departments replace them."
        ),
    )
    to_all_user: bool = Field(
        json_schema_extra={
            "x-title-zh": "发送给全员",
            "x-description-zh": (
                "工作通知发给组织内所有成员（to_all_user）。非必要请勿开启；指定了接收人的消息不会"
                "发给全员。"
            ),
        },
        default=False,
        title="Send to everyone",
        description=(
            "Work notifications to every member of the organisation (to_all_user). Off unless "
            "you mean it; a message that names its own recipients does not go to everyone."
        ),
    )
    open_conversation_id: str | None = Field(
        json_schema_extra={
            "x-title-zh": "群 openConversationId",
            "x-description-zh": (
                "机器人消息的默认群：其 openConversationId（cid…），且机器人须已在该群中。"
                "消息的 recipients.chats 会替换它。"
            ),
        },
        default=None,
        max_length=256,
        title="Group openConversationId",
        description=(
            "Default group for robot messages: its openConversationId (cid…), and the robot must "
            "be in that group. A message's recipients.chats replace it."
        ),
    )
    api_base: str = Field(
        json_schema_extra={
            "x-title-zh": "API 地址（新版 API）",
            "x-description-zh": (
                "调用新版 API（/v1.0/…：access token、机器人消息）的地址。此处填写的代理或私有化部署"
                "也用于旧版 API，除非设置了 oapi_base。"
            ),
        },
        default=OFFICIAL_API_BASE,
        title="API base (new API)",
        description=(
            "Where the new API (/v1.0/…: access token, robot messages) is called. A proxy or "
            "private deployment here serves the old API too unless oapi_base is set."
        ),
    )
    oapi_base: str | None = Field(
        json_schema_extra={
            "x-title-zh": "旧版 API 地址",
            "x-description-zh": (
                "调用旧版 API（/gettoken、工作通知）的地址。留空：api_base 为钉钉官方地址时用 "
                f"{OFFICIAL_OAPI_BASE}，否则用 api_base。"
            ),
        },
        default=None,
        title="Old API base",
        description=(
            "Where the old API (/gettoken, work notifications) is called. Empty: "
            f"{OFFICIAL_OAPI_BASE} when api_base is DingTalk's own, else api_base."
        ),
    )

    @field_validator("app_key", "robot_code", "open_conversation_id")
    @classmethod
    def _stripped(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if any(c.isspace() for c in value):
            raise ValueError("contains spaces; copy it again, whole")
        return value or None

    @field_validator("app_secret")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value().strip()
        if not secret:
            raise ValueError("the Client Secret is empty")
        if any(c.isspace() for c in secret):
            raise ValueError("contains spaces; copy the Client Secret again, whole")
        return SecretStr(secret)

    @field_validator("user_ids", mode="before")
    @classmethod
    def _users(cls, value: Any) -> Any:
        return _id_list(value, "userId") if isinstance(value, list) else value

    @field_validator("dept_ids", mode="before")
    @classmethod
    def _depts(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        ids = _id_list(value, "department id")
        for dept in ids:
            if not dept.isdigit():
                raise ValueError(f"{dept!r} is not a department id (a number, 1 is the root)")
        return ids

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, value: str) -> str:
        return _base_url(value, "api_base")

    @field_validator("oapi_base")
    @classmethod
    def _oapi_base(cls, value: str | None) -> str | None:
        return _base_url(value, "oapi_base") if value and value.strip() else None

    def old_api_base(self) -> str:
        if self.oapi_base:
            return self.oapi_base
        return OFFICIAL_OAPI_BASE if self.api_base == OFFICIAL_API_BASE else self.api_base


# -- recipients and parts --------------------------------------------------------------------


@dataclass(frozen=True)
class Targets:
    users: tuple[str, ...]
    depts: tuple[str, ...]
    chats: tuple[str, ...]
    to_all: bool
    warnings: tuple[str, ...] = ()


def resolve_targets(message: Message, settings: DingTalkAppSettings) -> Targets | str:
    """Who gets this message (the message's recipients replace the channel's), or why nobody."""
    given = message.recipients
    warnings: list[str] = []
    if given is not None and (given.users or given.departments or given.chats or given.tags):
        if given.tags:
            warnings.append(
                "DingTalk has no tags: recipients.tags were left out; name users or departments"
            )
        try:
            users = _id_list(given.users, "userId")
            depts = _id_list(given.departments, "department id")
            chats = _id_list(given.chats, "openConversationId")
        except ValueError as exc:
            return f"the message's recipients are not valid: {exc}"
        bad = [dept for dept in depts if not dept.isdigit()]
        if bad:
            return (
                f"recipients.departments must be DingTalk department ids (numbers); got {bad[0]!r}"
            )
        targets = Targets(tuple(users), tuple(depts), tuple(chats), False, tuple(warnings))
        source = "the message's recipients"
    else:
        group = settings.open_conversation_id
        targets = Targets(
            tuple(settings.user_ids),
            tuple(settings.dept_ids),
            (group,) if group else (),
            settings.to_all_user,
        )
        source = "the channel's default recipients"
    if not (targets.users or targets.depts or targets.chats or targets.to_all):
        return (
            f"nobody to send to: {source} are empty. Set user_ids, dept_ids, "
            "open_conversation_id or to_all_user on the channel, or give the message recipients"
        )
    robot = settings.robot_code is not None
    if (targets.depts or targets.to_all) and settings.agent_id is None:
        return (
            "departments and everyone are reached by work notifications, which need the app's "
            "agent_id: set agent_id on the channel"
        )
    if targets.users and not robot and settings.agent_id is None:
        return "users are reached by work notifications (set agent_id) or robot messages (set robot_code)"
    if targets.chats and not robot:
        return "groups are reached by robot messages only: set the app robot's robot_code"
    if targets.chats and message.mentions.any():
        note = (
            "an app robot's group message cannot @ people (DingTalk's API has no @ field), so "
            "mentions were left out; use a dingtalk_bot channel for @mentions"
        )
        targets = replace(targets, warnings=(*targets.warnings, note))
    return targets


@dataclass(frozen=True)
class Part:
    """One vendor request: a work notification, a robot one-to-one batch, or a group message."""

    kind: Literal["notice", "oto", "group"]
    users: tuple[str, ...] = ()
    depts: tuple[str, ...] = ()
    chat: str = ""
    to_all: bool = False
    label: str = ""

    def keys(self) -> list[str]:
        """What this part settles, for not sending it twice (see _Progress)."""
        if self.kind == "group":
            return [f"chat:{self.chat}"]
        if self.to_all:
            return ["all"]
        prefix = "notice" if self.kind == "notice" else "oto"
        return [f"{prefix}:user:{u}" for u in self.users] + [f"notice:dept:{d}" for d in self.depts]


def plan(targets: Targets, settings: DingTalkAppSettings, settled: set[str]) -> list[Part]:
    """The requests still to make, each within DingTalk's per-call caps."""
    robot = settings.robot_code is not None
    parts: list[Part] = []
    if targets.to_all:
        if "all" not in settled:
            parts.append(Part("notice", to_all=True, label="work notification to everyone"))
    else:
        users = [] if robot else [u for u in targets.users if f"notice:user:{u}" not in settled]
        depts = [d for d in targets.depts if f"notice:dept:{d}" not in settled]
        user_chunks = _chunks(users, NOTICE_MAX_USERS)
        dept_chunks = _chunks(depts, NOTICE_MAX_DEPTS)
        count = max(len(user_chunks), len(dept_chunks))
        for index in range(count):
            chunk_users = user_chunks[index] if index < len(user_chunks) else ()
            chunk_depts = dept_chunks[index] if index < len(dept_chunks) else ()
            label = "work notification to " + _who(chunk_users, chunk_depts)
            if count > 1:
                label += f" (part {index + 1} of {count})"
            parts.append(Part("notice", chunk_users, chunk_depts, label=label))
    if robot:
        pending = [u for u in targets.users if f"oto:user:{u}" not in settled]
        chunks = _chunks(pending, ROBOT_MAX_USERS)
        for index, chunk in enumerate(chunks):
            label = f"robot message to {_who(chunk, ())}"
            if len(chunks) > 1:
                label += f" (batch {index + 1} of {len(chunks)})"
            parts.append(Part("oto", chunk, label=label))
        for chat in targets.chats:
            if f"chat:{chat}" not in settled:
                parts.append(Part("group", chat=chat, label=f"robot message to group {chat}"))
    return parts


def _chunks(values: Sequence[str], size: int) -> list[tuple[str, ...]]:
    return [tuple(values[i : i + size]) for i in range(0, len(values), size)]


def _who(users: Sequence[str], depts: Sequence[str]) -> str:
    named = []
    if users:
        named.append(f"{len(users)} user{'s' if len(users) != 1 else ''}")
    if depts:
        named.append(f"{len(depts)} department{'s' if len(depts) != 1 else ''}")
    return " and ".join(named)


# -- rendering -------------------------------------------------------------------------------


def sent_line(created_at_ms: int) -> str:
    """The last line of a work notification. DingTalk silently drops the same content sent to
    the same user twice in a day (docs/vendors/dingtalk.md#work-notification), so each
    message's own time keeps two equal messages apart, while a retry of one message stays equal
    and is not shown twice."""
    moment = datetime.fromtimestamp(created_at_ms / 1000, UTC)
    return f"msgpush · {moment:%Y-%m-%d %H:%M:%S} UTC"


def _kind(message: Message) -> Literal["text", "markdown", "card"]:
    if message.format is Format.text:
        return "text"
    return "card" if message.links else "markdown"


def notice_msg(message: Message, created_at_ms: int) -> dict[str, Any]:
    """The ``msg`` of a work notification: markdown, or an action_card when there are links,
    within DingTalk's 2048 bytes."""
    kind = _kind(message)
    title = list_title(message)
    footer = sent_line(created_at_ms)
    links = message.links

    def text_of(content: str) -> str:
        if kind == "text":
            body = text_body(message.model_copy(update={"content": content}))
            return f"{body}\n\n{footer}" if body else footer
        body = markdown_text(message, content, with_links=False)
        return keep_line_breaks(f"{body}\n\n{footer}" if body else footer)

    def msg_of(text: str) -> dict[str, Any]:
        if kind == "text":
            return {"msgtype": "text", "text": {"content": text}}
        if kind == "markdown":
            return {"msgtype": "markdown", "markdown": {"title": title, "text": text}}
        card: dict[str, Any] = {"title": title, "markdown": text}
        if len(links) == 1:
            card["single_title"] = links[0].title
            card["single_url"] = str(links[0].url)
        else:
            card["btn_orientation"] = "0"
            card["btn_json_list"] = [
                {"title": link.title, "action_url": str(link.url)} for link in links
            ]
        return {"msgtype": "action_card", "action_card": card}

    return _fitted(message.content, text_of, msg_of, NOTICE_MSG_BYTES)


def robot_message(message: Message) -> tuple[str, dict[str, Any]]:
    """(msgKey, msgParam) of a robot message: sampleMarkdown, or an ActionCard with up to five
    buttons (more links become lines of the text), within DingTalk's 15,000 bytes."""
    kind = _kind(message)
    title = list_title(message)
    buttons = message.links[:ROBOT_MAX_BUTTONS]
    extra = message.links[ROBOT_MAX_BUTTONS:]

    def text_of(content: str) -> str:
        if kind == "text":
            return text_body(message.model_copy(update={"content": content}))
        copy = message.model_copy(update={"links": extra})
        return keep_line_breaks(markdown_text(copy, content, with_links=bool(extra)))

    def param_of(text: str) -> dict[str, Any]:
        if kind == "text":
            return {"content": text}
        if kind == "markdown":
            return {"title": title, "text": text}
        param: dict[str, Any] = {"title": title, "text": text}
        if len(buttons) == 1:
            param["singleTitle"] = buttons[0].title
            param["singleURL"] = str(buttons[0].url)
        else:
            for number, link in enumerate(buttons, start=1):
                param[f"actionTitle{number}"] = link.title
                param[f"actionURL{number}"] = str(link.url)
        return param

    param = _fitted(message.content, text_of, param_of, ROBOT_PARAM_BYTES)
    if kind == "text":
        return "sampleText", param
    if kind == "markdown":
        return "sampleMarkdown", param
    return ("sampleActionCard" if len(buttons) == 1 else f"sampleActionCard{len(buttons)}"), param


def _fitted(
    content: str,
    text_of: Callable[[str], str],
    shape: Callable[[str], dict[str, Any]],
    budget: int,
) -> dict[str, Any]:
    def encode(text: str) -> bytes:
        return orjson.dumps(shape(text))

    # cut the content first, so title, fields and buttons survive a long message
    cut, body = fit(lambda c: encode(text_of(c)), content, budget)
    if len(body) > budget:
        _, body = fit(encode, text_of(cut), budget)
    result: dict[str, Any] = orjson.loads(body)
    return result


# -- reading answers -------------------------------------------------------------------------

FIX_CREDENTIALS = (
    f"copy the Client ID and Client Secret again from {CREDENTIALS_PAGE} into app_key and "
    "app_secret (resetting the secret in DingTalk changes it)"
)
FIX_IP = (
    "add {ip} (this server's public egress address) under " + IP_PAGE + ", or send through a "
    "proxy with an allowed address (api_base / oapi_base)"
)
FIX_PERMISSION = (
    "grant the app the permission {permission} under " + PERMISSIONS_PAGE + ", then publish a "
    f"new version ({RELEASE_PAGE}) if DingTalk asks"
)
FIX_ROBOT_CODE = (
    f"copy the RobotCode from {ROBOT_PAGE} into robot_code (for an app's own robot it usually "
    "equals the Client ID), and make sure the robot is published"
)


def _throttle(what: str, wait_s: float) -> VendorCode:
    return VendorCode(
        "retry",
        f"DingTalk throttled the app ({{message}}): {what}. msgpush keeps each channel under "
        f"{PER_SECOND} calls a second, so other channels or systems probably share this app; "
        f"retrying in {wait_s:g} s",
        retry_after_s=wait_s,
    )


TOKEN_INVALID = VendorCode(
    "refresh_token",
    "DingTalk refused the access token ({message}); fetching a new one and sending again",
)
BUSY = VendorCode("retry", "DingTalk is busy ({message}); retrying with backoff")
QPS = _throttle(
    f"more than 20 calls a second to one API (per app); throttles last {QPS_WAIT_S:g} s", QPS_WAIT_S
)
GLOBAL_QPS = _throttle("the API's platform-wide rate was exceeded by all apps together", QPS_WAIT_S)
MONTHLY = VendorCode(
    "failed",
    "the organisation used up its monthly API call quota ({message}; the standard edition has "
    "10,000 calls a month). Messages fail until the quota resets next month or the "
    "organisation upgrades its DingTalk edition",
)
IP_NOT_ALLOWED = VendorCode(
    "failed",
    "DingTalk refused the call from IP {ip} ({message}): the app's trusted IPs do not include "
    "it; " + FIX_IP,
)
NO_PERMISSION = VendorCode(
    "failed",
    "the app lacks a permission for this API ({message}): " + FIX_PERMISSION,
)
BAD_CREDENTIALS = VendorCode(
    "failed",
    "DingTalk does not accept app_key {app_key} with this app_secret ({message}): "
    + FIX_CREDENTIALS,
)
ROBOT_THROTTLED = VendorCode(
    "retry",
    "DingTalk is throttling the robot's messages ({message}); retrying in "
    f"{ROBOT_THROTTLE_S:g} s",
    retry_after_s=ROBOT_THROTTLE_S,
)
BAD_ROBOT_CODE = VendorCode(
    "failed",
    "DingTalk does not know robot_code {robot_code} ({message}): " + FIX_ROBOT_CODE,
)
BAD_REQUEST = VendorCode(
    "failed",
    "DingTalk rejected the request's form ({message}). msgpush sends DingTalk's documented "
    "payloads, so a proxy or private deployment behind api_base changes them or supports fewer "
    "message types: send with format text, or point api_base at {api_base}",
)
UNKNOWN_USER = VendorCode(
    "failed",
    "DingTalk does not know a recipient ({message}): check user_ids / recipients.users (DingTalk "
    "userIds, not mobiles) and that the users are inside the app's visible range (可见范围, "
    f"{RELEASE_PAGE})",
)
UNKNOWN_DEPT = VendorCode(
    "failed",
    "DingTalk does not know a department ({message}): check dept_ids / recipients.departments "
    "(numeric department ids)",
)
BAD_GROUP = VendorCode(
    "failed",
    "DingTalk does not know the group ({message}): check open_conversation_id / "
    "recipients.chats (the cid… openConversationId) and that the robot was added to that group",
)
CONTENT_BLOCKED = VendorCode(
    "failed",
    "DingTalk's content check blocked the message ({message}): change its text or links and resend",
)

# the old API (oapi): HTTP 200 with errcode (docs/vendors/dingtalk.md#error-codes; 33012/60003/60121
# as the SDKs map them)
OAPI_ERRORS: dict[int | str, VendorCode] = {
    -1: BUSY,
    40014: TOKEN_INVALID,
    42001: TOKEN_INVALID,
    41001: VendorCode(
        "failed",
        "DingTalk received no access_token ({message}): a proxy at oapi_base drops the query "
        "string; make it pass ?access_token=… through unchanged",
    ),
    40035: VendorCode(
        "failed",
        "DingTalk says a required parameter is missing ({message}): a proxy at oapi_base may "
        "drop the query string or the JSON body; make it pass both through",
    ),
    40096: BAD_CREDENTIALS,
    60011: NO_PERMISSION,
    60020: IP_NOT_ALLOWED,
    90002: GLOBAL_QPS,
    90018: QPS,
    90020: MONTHLY,
    22: VendorCode(
        "failed",
        "DingTalk does not know this API path ({message}): oapi_base must be DingTalk's old API "
        f"({OFFICIAL_OAPI_BASE}) or a proxy that passes paths through",
    ),
    33012: UNKNOWN_USER,
    60121: UNKNOWN_USER,
    60003: UNKNOWN_DEPT,
    # docs/vendors/dingtalk.md#work-notification: flow-control codes of getsendresult, should a
    # deployment answer them
    143105: VendorCode(
        "failed",
        "the recipient reached the app's daily work-notification cap of 500 ({message}); "
        "DingTalk delivers no more today. Send fewer messages to the same users (lower "
        "rate_limit.per_hour) or use a dingtalk_bot group",
    ),
    143106: VendorCode(
        "delivered",
        "DingTalk already delivered the same content to this user today ({message})",
    ),
}

# the new API (api.dingtalk.com/v1.0): HTTP 4xx/5xx with {code, message, requestid}
# (docs/vendors/dingtalk.md#error-codes)
API_ERRORS: dict[int | str, VendorCode] = {
    "invalidClientIdOrSecret": BAD_CREDENTIALS,
    "invalid.client": BAD_CREDENTIALS,
    "unauthorized.client": BAD_CREDENTIALS,
    "unsupported.grant.type": BAD_REQUEST,
    "server.error": BUSY,
    "unknownError": BUSY,
    "system.error": BUSY,
    "InvalidAuthentication": TOKEN_INVALID,
    "invalidParameter.token.invalid": TOKEN_INVALID,
    "token.notExisted": TOKEN_INVALID,
    "AuthenticationFailed.MissingParameter": VendorCode(
        "failed",
        "DingTalk received no x-acs-dingtalk-access-token header ({message}): a proxy at "
        "api_base drops it; make it pass the header through unchanged",
    ),
    "Forbidden.AccessDenied.IpNotInWhiteList": IP_NOT_ALLOWED,
    "Forbidden.AccessDenied.AccessTokenPermissionDenied": NO_PERMISSION,
    "Forbidden.AccessDenied.QpsLimitForApi": GLOBAL_QPS,
    "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi": QPS,
    "Forbidden.AccessDenied.QpmLimitForAppkeyAndApi": _throttle(
        "too many calls a minute to one API", 60.0
    ),
    "Forbidden.AccessDenied.ApiCountLimitForOrg": MONTHLY,
    "invalidParameter.robotCode.empty": BAD_ROBOT_CODE,
    "invalidParameter.robotCode.missing": BAD_ROBOT_CODE,
    "invalidParameter.robotCode.invalid": BAD_ROBOT_CODE,
    "invalidParameter.robotCode.notExsit": BAD_ROBOT_CODE,
    "invalidParameter.robotCode.auth": VendorCode(
        "failed",
        "robot_code {robot_code} belongs to another app than app_key {app_key} ({message}): use "
        "the Client ID and Client Secret of the app the robot belongs to, or that app's "
        "RobotCode",
    ),
    "invalidParameter.userIds.empty": VendorCode(
        "failed", "DingTalk received no userIds ({message}); a proxy at api_base changes the body"
    ),
    "invalidParameter.userIds.overMax": VendorCode(
        "failed",
        f"DingTalk refused {ROBOT_MAX_USERS} userIds in one call ({{message}}): its cap is lower "
        "than documented; report this to msgpush",
    ),
    "invalidParameter.msgKey.empty": BAD_REQUEST,
    "invalidParameter.msgKey.invalid": BAD_REQUEST,
    "invalidParameter.msgParam.invalid": BAD_REQUEST,
    "invalidParameter.msg.unsupport": BAD_REQUEST,
    "invalidParameter.msgBody.invalid": BAD_REQUEST,
    "invalidParameter.param.invalid": BAD_REQUEST,
    "sendMessage.model.notMatch": BAD_REQUEST,
    "invalidParameter.msgParam.tooLong": VendorCode(
        "failed",
        f"DingTalk says the message is too long ({{message}}); msgpush keeps it under "
        f"{ROBOT_PARAM_BYTES:,} bytes, so DingTalk's cap is lower here: shorten the message",
    ),
    "invalid.openConversationId": BAD_GROUP,
    "miss.openConversationId": BAD_GROUP,
    "conversation.org.notMatch": VendorCode(
        "failed",
        "the group belongs to another organisation than the app ({message}): use a group of the "
        "app's own organisation in open_conversation_id / recipients.chats",
    ),
    "group.disbanded": VendorCode(
        "failed",
        "the group was disbanded ({message}): remove it from open_conversation_id / "
        "recipients.chats",
    ),
    "bot.stopped": VendorCode(
        "failed",
        "the robot is disabled in this group ({message}): a group admin must enable it again "
        "(Group Settings > Bots, 群设置 > 机器人), or add the robot to the group again",
    ),
    "template.not.existed": BAD_ROBOT_CODE,
    "template.stopped": VendorCode(
        "failed",
        f"the app's robot is stopped ({{message}}): enable and publish it ({ROBOT_PAGE})",
    ),
    "resource.not.found": BAD_ROBOT_CODE,
    "resource.unavailable": VendorCode(
        "failed",
        "the robot is unavailable here ({message}): it is disabled, or not installed in the "
        f"group; check {ROBOT_PAGE} and the group's bots",
    ),
    "chatbotId.notAllow.sendOTO": VendorCode(
        "failed",
        "the robot may not send one-to-one messages ({message}): enable and publish the app's "
        f"robot ({ROBOT_PAGE})",
    ),
    "robot.oto.notExist": VendorCode(
        "failed",
        "the users have no one-to-one chat with the robot ({message}): publish the robot to "
        "them (visible range) so DingTalk can open the chat",
    ),
    "staffId.notExisted": UNKNOWN_USER,
    "illegal.receivers": UNKNOWN_USER,
    "send.forbidden": VendorCode(
        "failed", "DingTalk forbids this robot to send ({message}); check the robot's state"
    ),
    "bot.forbidden.sendMessage": VendorCode(
        "failed",
        "the robot is muted in this group ({message}): a group admin must lift the mute",
    ),
    "contain.unsafe.url": CONTENT_BLOCKED,
    "contain.notAllowed.text": CONTENT_BLOCKED,
    "contain.notAllowed.picture": CONTENT_BLOCKED,
    "contain.notAllowed.content": CONTENT_BLOCKED,
    "send.too.fast": ROBOT_THROTTLED,
    "send.byToken.tooFast": ROBOT_THROTTLED,
    "too.many.people": ROBOT_THROTTLED,
    "too.many.group": ROBOT_THROTTLED,
    "toomuch.msg": ROBOT_THROTTLED,
    "unknown.send.result": VendorCode(
        "retry",
        "DingTalk could not tell whether the message was sent ({message}); retrying, which may "
        "show it twice",
    ),
}
# miss.param.* (a field of msgParam missing) — one entry for the whole family
MISSING_FIELD = BAD_REQUEST


@dataclass(frozen=True)
class Call:
    """What the classifier needs to diagnose one request."""

    api: Api
    app_key: str = "(not set)"
    robot_code: str | None = None

    @classmethod
    def of(cls, api: Api, settings: DingTalkAppSettings) -> Call:
        return cls(api, settings.app_key, settings.robot_code)

    def names(self, message: str, data: dict[str, Any]) -> dict[str, str]:
        found = _IPV4.search(message)
        return {
            "ip": found.group(1) if found else "(DingTalk did not say which)",
            "permission": self.permission(data),
            "app_key": self.app_key,
            "robot_code": self.robot_code or "(not set)",
            "api_base": OFFICIAL_API_BASE,
        }

    def permission(self, data: dict[str, Any]) -> str:
        detail = data.get("accessdenieddetail")
        scopes = detail.get("requiredScopes") if isinstance(detail, dict) else None
        if isinstance(scopes, list) and scopes:
            return ", ".join(PERMISSION_NAMES.get(str(s), str(s)) for s in scopes)
        default = ROBOT_PERMISSION if self.api == "robot" else NOTICE_PERMISSION
        return PERMISSION_NAMES[default]


def classify_oapi(response: VendorResponse, call: Call) -> Outcome:
    """The old API answers HTTP 200 with errcode for errors too: classify on the code, and on
    sub_code when errcode is 88 (docs/vendors/dingtalk.md#two-apis)."""
    data = response.json()
    raw = data.get("errcode") if isinstance(data, dict) else None
    if raw is None or not isinstance(data, dict):
        return _without_code(response, data, "oapi_base", "errcode")
    code = _code(raw)
    message = str(data.get("errmsg", ""))
    if code == 0:
        return Outcome.delivered(
            status_code=response.status, vendor_code="0", vendor_message=message or "ok"
        )
    if code == 88:  # auth errors wrapped: the real code is the string sub_code
        sub = _code(data.get("sub_code"))
        message = f"{data.get('sub_msg') or message} (errcode 88, sub_code {sub})"
        code = sub
    return vendor_outcome(
        code, message, OAPI_ERRORS, status_code=response.status, **call.names(message, data)
    )


def classify_api(response: VendorResponse, call: Call) -> Outcome:
    """The new API answers errors with HTTP 4xx/5xx and a string code; success is HTTP 200 with
    bare fields, which the caller reads."""
    data = response.json()
    code = data.get("code") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(code, str) or not code:
        return _without_code(response, data, "api_base", "code")
    message = str(data.get("message", ""))
    table = API_ERRORS
    if code not in table and code.startswith(("miss.param.", "invalid.param.")):
        table = {code: MISSING_FIELD}
    return vendor_outcome(
        code, message, table, status_code=response.status, **call.names(message, data)
    )


def _code(raw: Any) -> int | str:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return str(raw)


def _without_code(response: VendorResponse, data: Any, setting: str, field_name: str) -> Outcome:
    status = response.status
    blocked = gateway_block(data, status)
    if blocked is not None:
        return blocked
    if status in (408, 429) or status >= 500:
        return Outcome.retry(
            f"{setting} answered HTTP {status} without a DingTalk {field_name}; will retry",
            status_code=status,
        )
    refused = unauthorized(response, "DingTalk")
    if refused is not None:
        return refused
    excerpt = response.text(200).strip()
    return Outcome.failed(
        f"{setting} answered HTTP {status} without a DingTalk {field_name} "
        f"({excerpt or 'empty'}): check that {setting} is DingTalk's address or a proxy that "
        "passes DingTalk's answers through",
        status_code=status,
    )


# -- remembering what a delivery already reached ---------------------------------------------


@dataclass
class _Progress:
    """What DingTalk already accepted for one delivery, so that a retry (or a repeat after a
    token refresh) sends only the rest. The robot APIs have no idempotency key; this memory is
    per process, so a retry taken over by another process may repeat parts (at least once)."""

    settled: set[str] = field(default_factory=set)
    refused: dict[str, Outcome] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    flow_retries: int = 0
    flow_pending: set[str] = field(default_factory=set)


_PROGRESS: OrderedDict[str, _Progress] = OrderedDict()


def _progress(ctx: SendContext) -> _Progress:
    entry = _PROGRESS.pop(ctx.delivery_id, None) or _Progress()
    _PROGRESS[ctx.delivery_id] = entry
    while len(_PROGRESS) > PROGRESS_ENTRIES:
        _PROGRESS.popitem(last=False)
    return entry


# -- the channel type ------------------------------------------------------------------------


def cache_key(settings: DingTalkAppSettings) -> str:
    """The token cache key: one per app and pair of hosts (a hash: it reveals neither)."""
    return token_key(
        TYPE_ID,
        settings.api_base,
        settings.old_api_base(),
        settings.app_key,
        settings.app_secret.get_secret_value(),
    )


def _prefixed(outcome: Outcome, prefix: str) -> Outcome:
    return replace(outcome, diagnosis=f"{prefix}: {outcome.diagnosis or outcome.kind}")


class DingTalkAppChannel(ChannelType):
    type_id = TYPE_ID
    name = "DingTalk App"
    description = (
        "A DingTalk self-built app (企业内部应用): work notifications (工作通知) to users, "
        "departments or everyone, and robot messages to users and groups; markdown or an "
        "ActionCard with buttons."
    )
    description_zh = (
        "钉钉企业内部应用：向用户、部门或全员发工作通知，向用户和群发机器人消息；ma"
        "rkdown 或带按钮的 ActionCard。"
    )
    settings_model = DingTalkAppSettings
    formats = ("markdown", "text")
    default_limits = RateLimit(per_second=PER_SECOND, per_minute=PER_MINUTE)
    size_limits: ClassVar[dict[str, int]] = {
        "work_notification_msg": NOTICE_MSG_BYTES,
        "robot_msg_param": ROBOT_PARAM_BYTES,
    }

    def check(self, settings: ChannelSettings) -> None:
        assert isinstance(settings, DingTalkAppSettings)
        if settings.agent_id is None and settings.robot_code is None:
            raise ValueError(
                "agent_id: set agent_id (work notifications) or robot_code (robot messages), "
                "or both"
            )
        if (settings.dept_ids or settings.to_all_user) and settings.agent_id is None:
            raise ValueError(
                "agent_id: departments and to_all_user are reached by work notifications, "
                "which need agent_id"
            )
        if settings.open_conversation_id and settings.robot_code is None:
            raise ValueError(
                "robot_code: a group (open_conversation_id) needs the robot's robot_code"
            )

    # -- the single-request interface: the first request, for display -------------------------

    def render(self, message: Message, settings: Any, ctx: SendContext) -> VendorRequest:
        targets = resolve_targets(message, settings)
        if isinstance(targets, str):
            raise ValueError(targets)
        first = plan(targets, settings, set())[0]
        return self._request(first, message, settings, ctx, "{access_token}")

    def classify(self, response: VendorResponse) -> Outcome:
        data = response.json()
        if isinstance(data, dict) and "errcode" in data:
            return classify_oapi(response, Call("notice"))
        if 200 <= response.status < 300:
            return Outcome.delivered(status_code=response.status)
        return classify_api(response, Call("robot"))

    # -- sending -----------------------------------------------------------------------------

    async def send(self, message: Message, settings: Any, ctx: SendContext) -> Outcome:
        targets = resolve_targets(message, settings)
        if isinstance(targets, str):
            return Outcome.failed(f"Sending failed: {targets}")
        progress = _progress(ctx)
        parts = plan(targets, settings, progress.settled | set(progress.refused))
        last: Outcome | None = None
        if parts:
            key = cache_key(settings)
            token = await self._token(settings, ctx, key)
        for part in parts:
            outcome = await self._send_part(part, message, settings, ctx, token, progress)
            if outcome.kind == "refresh_token":
                if ctx.tokens is not None:
                    await ctx.tokens.invalidate(key, token)
                return _prefixed(outcome, f"Sending failed ({part.label})")
            if outcome.kind == "retry":
                return self._retry(outcome, part, progress)
            if outcome.kind == "failed":
                refused = _prefixed(outcome, f"Sending failed ({part.label})")
                progress.refused.update(dict.fromkeys(part.keys(), refused))
            last = outcome
        return self._conclude(ctx, targets, progress, last)

    def _retry(self, outcome: Outcome, part: Part, progress: _Progress) -> Outcome:
        done = len(progress.settled)
        warning = (
            f"{done} recipient(s) already got the message and will not get it again"
            if done
            else None
        )
        return replace(
            _prefixed(outcome, f"Sending failed ({part.label})"),
            warning="; ".join(filter(None, [*progress.notes, warning])) or None,
        )

    def _conclude(
        self, ctx: SendContext, targets: Targets, progress: _Progress, last: Outcome | None
    ) -> Outcome:
        notes = [*targets.warnings, *progress.notes]
        if progress.flow_pending and progress.flow_retries < FLOW_CONTROL_RETRIES:
            progress.flow_retries += 1
            users = sorted(key.split(":", 2)[2] for key in progress.flow_pending)
            return Outcome.retry(
                f"DingTalk flow-controlled {len(users)} user(s) ({_sample(users)}): it throttles "
                "how many robot messages one person gets. The others got the message; "
                f"retrying just these in {FLOW_CONTROL_RETRY_S:g} s",
                retry_after_s=FLOW_CONTROL_RETRY_S,
                warning="; ".join(notes) or None,
            )
        if progress.flow_pending:
            users = sorted(key.split(":", 2)[2] for key in progress.flow_pending)
            notes.append(
                f"DingTalk flow-controlled {len(users)} user(s) twice, so they did not get the "
                f"message: {_sample(users)} (it limits how many robot messages one person gets)"
            )
            progress.settled |= progress.flow_pending
            progress.flow_pending.clear()
        if progress.refused:
            first = next(iter(progress.refused.values()))
            reached = len(progress.settled)
            if reached:
                notes.append(f"{reached} other recipient(s) got the message")
            progress.refused.clear()  # a resend after the channel is fixed tries them again
            return replace(first, warning="; ".join(notes) or None)
        _PROGRESS.pop(ctx.delivery_id, None)
        base = last or Outcome.delivered(vendor_message="already delivered by an earlier attempt")
        return replace(base, warning="; ".join(notes) or None)

    async def _send_part(
        self,
        part: Part,
        message: Message,
        settings: DingTalkAppSettings,
        ctx: SendContext,
        token: str,
        progress: _Progress,
    ) -> Outcome:
        request = self._request(part, message, settings, ctx, token)
        if part.kind == "notice":
            call = Call.of("notice", settings)
            outcome = await ctx.exchange(request, lambda answer: classify_oapi(answer, call))
            if outcome.kind == "delivered":
                progress.settled.update(part.keys())
            return outcome
        call = Call.of("robot", settings)
        found: dict[str, list[str]] = {}

        def read(answer: VendorResponse) -> Outcome:
            data = answer.json()
            if not 200 <= answer.status < 300:
                return classify_api(answer, call)
            if not isinstance(data, dict) or not data.get("processQueryKey"):
                return Outcome.failed(
                    f"api_base answered HTTP {answer.status} without DingTalk's processQueryKey "
                    f"({answer.text(200).strip() or 'empty'}): check that api_base is DingTalk's "
                    "address or a proxy that passes DingTalk's answers through",
                    status_code=answer.status,
                )
            for name in ("invalidStaffIdList", "flowControlledStaffIdList"):
                value = data.get(name)
                found[name] = [str(v) for v in value] if isinstance(value, list) else []
            return Outcome.delivered(
                status_code=answer.status,
                vendor_code="0",
                vendor_message=f"processQueryKey {data['processQueryKey']}",
            )

        outcome = await ctx.exchange(request, read)
        if outcome.kind != "delivered":
            return outcome
        invalid = found.get("invalidStaffIdList", [])
        throttled = set(found.get("flowControlledStaffIdList", []))
        keys = part.keys()
        flow_keys = {k for k in keys if k.split(":", 2)[-1] in throttled}
        progress.settled.update(k for k in keys if k not in flow_keys)
        progress.flow_pending.difference_update(keys)
        progress.flow_pending.update(flow_keys)
        if invalid:
            progress.notes.append(
                f"DingTalk did not deliver to {len(invalid)} unknown user(s): {_sample(invalid)} "
                "(not DingTalk userIds of this organisation, or outside the app's visible range "
                "可见范围)"
            )
        return outcome

    def _request(
        self,
        part: Part,
        message: Message,
        settings: DingTalkAppSettings,
        ctx: SendContext,
        token: str,
    ) -> VendorRequest:
        if part.kind == "notice":
            body: dict[str, Any] = {
                "agent_id": settings.agent_id,
                "msg": notice_msg(message, ctx.created_at_ms),
                "to_all_user": part.to_all,
            }
            if part.users:
                body["userid_list"] = ",".join(part.users)
            if part.depts:
                body["dept_id_list"] = ",".join(part.depts)
            query = urlencode({"access_token": token})
            return VendorRequest.json(f"{settings.old_api_base()}{NOTICE_PATH}?{query}", body)
        msg_key, param = robot_message(message)
        robot: dict[str, Any] = {
            "robotCode": settings.robot_code,
            "msgKey": msg_key,
            # DingTalk wants msgParam as a JSON string inside the JSON body
            # (docs/vendors/dingtalk.md#robot-messages)
            "msgParam": orjson.dumps(param).decode(),
        }
        if part.kind == "oto":
            robot["userIds"] = list(part.users)
            path = BATCH_SEND_PATH
        else:
            robot["openConversationId"] = part.chat
            path = GROUP_SEND_PATH
        headers = {TOKEN_HEADER: token}
        return VendorRequest.json(f"{settings.api_base}{path}", robot, headers=headers)

    # -- the access token ----------------------------------------------------------------------

    async def _token(self, settings: DingTalkAppSettings, ctx: SendContext, key: str) -> str:
        async def fetch() -> FetchedToken:
            return await fetch_token(settings, ctx)

        return await fetched_or_cached(ctx, key, fetch)


async def fetch_token(settings: DingTalkAppSettings, ctx: SendContext) -> FetchedToken:
    """A new access token from the new endpoint, or from the old ``gettoken`` when the new one is
    unreachable or does not answer like DingTalk (a proxy or deployment serving only the old
    API). Wrong credentials, IP and throttle answers are final: the old endpoint would say the
    same. Raises TokenFetchFailed with a diagnosis naming the step."""
    got: list[FetchedToken] = []
    unavailable: list[bool] = []
    secret = settings.app_secret.get_secret_value()
    call = Call.of("token", settings)

    def read_new(answer: VendorResponse) -> Outcome:
        data = answer.json()
        token = data.get("accessToken") if isinstance(data, dict) else None
        if answer.status == 200 and isinstance(token, str) and token:
            assert isinstance(data, dict)
            ctx.secrets.add(token)  # before the transcript records the answer
            got.append(FetchedToken(token, token_lifetime_s(data.get("expireIn"))))
            return Outcome.delivered(status_code=200)
        has_code = isinstance(data, dict) and isinstance(data.get("code"), str)
        if answer.status >= 500 or answer.status in (404, 405) or not has_code:
            unavailable.append(True)
        return classify_api(answer, call)

    body = {"appKey": settings.app_key, "appSecret": secret}
    first = await ctx.exchange(
        VendorRequest.json(f"{settings.api_base}{TOKEN_PATH}", body), read_new
    )
    if got:
        return got[0]
    if first.status_code is not None and not unavailable:
        raise TokenFetchFailed(_token_step(first, "accessToken"))

    def read_old(answer: VendorResponse) -> Outcome:
        outcome = classify_oapi(answer, Call.of("gettoken", settings))
        data = answer.json()
        token = data.get("access_token") if isinstance(data, dict) else None
        if outcome.kind == "delivered" and isinstance(token, str) and token:
            assert isinstance(data, dict)
            ctx.secrets.add(token)
            got.append(FetchedToken(token, token_lifetime_s(data.get("expires_in"))))
        elif outcome.kind == "delivered":
            return Outcome.failed(
                "gettoken answered errcode 0 without an access_token: check oapi_base",
                status_code=answer.status,
            )
        return outcome

    query = urlencode({"appkey": settings.app_key, "appsecret": secret})
    second = await ctx.exchange(
        VendorRequest("GET", f"{settings.old_api_base()}{GETTOKEN_PATH}?{query}"), read_old
    )
    if got:
        return got[0]
    failed = _token_step(second, "gettoken")
    note = f" (tried first: accessToken, which was unavailable: {first.diagnosis})"
    raise TokenFetchFailed(replace(failed, diagnosis=f"{failed.diagnosis}{note}"))


def _token_step(outcome: Outcome, endpoint: str) -> Outcome:
    """A token endpoint's refusal as the attempt's outcome; a token it calls invalid can only
    be a proxy's confusion, so that is retried rather than refreshed."""
    if outcome.kind == "refresh_token":
        outcome = replace(outcome, kind="retry")
    return _prefixed(outcome, f"Credentials check failed ({endpoint})")


def _sample(values: Iterable[str], most: int = 5) -> str:
    items = list(values)
    shown = ", ".join(items[:most])
    return f"{shown} and {len(items) - most} more" if len(items) > most else shown


CHANNEL_TYPE = DingTalkAppChannel()
