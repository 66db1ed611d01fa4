"""WeCom (企业微信) self-built app: markdown, text or text cards to members, departments and tags
(message/send) and to the app's group chats (appchat/send)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlsplit

import orjson
from pydantic import Field, SecretStr, field_validator

from msgpush.channels.base import (
    ChannelSettings,
    ChannelType,
    FetchedToken,
    Outcome,
    RateLimit,
    SendContext,
    VendorCode,
    VendorRequest,
    VendorResponse,
    cached_token,
    http_status_outcome,
    secret_field,
    token_in_answer,
    token_key,
    unauthorized,
    vendor_outcome,
    with_step,
)
from msgpush.channels.render import LEVEL_LABELS, TRUNCATION_MARKER, cut_chars, utf8_len
from msgpush.channels.wecom_common import (
    ERROR_LOOKUP_URL,
    LINE_BREAKS,
    TAG_START,
    TEXT_MAX_BYTES,
    WECOM_RATE_WINDOW_S,
    clean_errmsg,
    errcode,
    markdown_as_text,
    markdown_content,
    text_content,
)
from msgpush.message import Level, Message

# The official API host; every path below hangs off it (docs/vendors/wecom.md).
WECOM_API_BASE = "https://qyapi.weixin.qq.com"
WECOM_HOST = "qyapi.weixin.qq.com"
GETTOKEN_PATH = "/cgi-bin/gettoken"
SEND_PATH = "/cgi-bin/message/send"
APPCHAT_PATH = "/cgi-bin/appchat/send"
# One message/send reaches at most 1000 users, 100 departments and 100 tags
# (docs/vendors/wecom.md#app-message).
MAX_USERS = 1000
MAX_PARTIES = 100
MAX_TAGS = 100
# touser "@all" is everyone in the app's visible range; toparty/totag are then ignored.
ALL = "@all"
# markdown.content <= 2048 bytes for an app, not the bot's 4096 (docs/vendors/wecom.md#size-limits).
APP_MARKDOWN_MAX_BYTES = 2048
# textcard: title <= 128 chars, description <= 512 chars, url <= 2048 bytes and required,
# btntxt <= 4 chars (docs/vendors/wecom.md#size-limits).
TEXTCARD_TITLE_MAX_CHARS = 128
TEXTCARD_DESCRIPTION_MAX_CHARS = 512
TEXTCARD_URL_MAX_BYTES = 2048
TEXTCARD_BUTTON_MAX_CHARS = 4
# A field or link line in a card stays short, so that the content keeps most of the 512 chars.
CARD_LINE_MAX_CHARS = 120
CARD_CONTENT_MIN_CHARS = 80
# enable_duplicate_check: an identical request body within the interval is not delivered again;
# default 1800 s, at most 4 h (docs/vendors/wecom.md#app-message).
DUPLICATE_CHECK_DEFAULT_S = 1800
DUPLICATE_CHECK_MAX_S = 14_400
# Per app and member: 30 messages a minute and 1000 an hour; beyond them WeCom drops messages
# silently (the call still succeeds), so the channel must stay under both
# (docs/vendors/wecom.md#rate-limits).
WECOM_APP_PER_MEMBER_PER_MINUTE = 30
WECOM_APP_PER_MEMBER_PER_HOUR = 1000
# appchat chatid: up to 32 letters and digits (docs/vendors/wecom.md#size-limits).
CHAT_ID = re.compile(r"[0-9A-Za-z]{1,32}")
PARTY_OR_TAG_ID = re.compile(r"[0-9]{1,20}")
# What breaks the "a|b|c" recipient lists on the wire.
BAD_ID_CHARS = re.compile(r"[\s|]")
# "…, from ip: 218.72.126.124, more info at …" (docs/vendors/wecom.md#answers)
FROM_IP = re.compile(r"from ip:\s*([0-9A-Fa-f.:]+[0-9A-Fa-f])")

Api = Literal["message/send", "appchat/send"]

TOKEN_STEP = "Credentials check failed (gettoken): "
SEND_STEP = "Sending failed: "

TRUSTED_IP_FIX = (
    "WeCom refused the call from {ip} ({message}, 60020): a self-built app only accepts API "
    "calls from its trusted IPs. In the WeCom admin console open App Management (应用管理) > "
    "the app > Enterprise Trusted IP (企业可信IP) > Configure (配置) and add {ip_short}, the "
    "address WeCom sees msgpush's requests come from. If that address changes, send through a "
    "proxy with a fixed egress IP and point api_base at it"
)
RETRYABLE: dict[int | str, VendorCode] = {
    -1: VendorCode("retry", "WeCom is busy ({message}); will retry"),
    45009: VendorCode(
        "retry",
        "WeCom rate-limited this app ({message}); will retry after its 60 s window. msgpush "
        "keeps each channel under WeCom's per-member limits, so something else calls this API "
        "heavily for the same company (another system, or many channels on one app)",
        retry_after_s=WECOM_RATE_WINDOW_S,
    ),
    45033: VendorCode(
        "retry", "WeCom refused too many concurrent calls to this API ({message}); will retry"
    ),
}
# gettoken (docs/vendors/wecom.md#error-codes)
TOKEN_ERRORS: dict[int | str, VendorCode] = {
    40013: VendorCode(
        "failed",
        "WeCom does not know corp_id {corp_id} ({message}): copy the CorpID (企业ID) from the "
        "admin console, My Company (我的企业) > Company Information (企业信息), at the bottom",
    ),
    40001: VendorCode(
        "failed",
        "wrong secret ({message}): set secret to the Secret of the app whose AgentId is "
        "{agent_id}: App Management (应用管理) > the app > Secret > View (查看); WeCom sends it to "
        "the admin's WeCom client. A Secret that was reset stops working",
    ),
    40091: VendorCode(
        "failed",
        "the secret belongs to another company than corp_id {corp_id} ({message}): take the "
        "CorpID and the app's Secret from the same WeCom admin console",
    ),
    41002: VendorCode(
        "failed",
        "WeCom received no corpid ({message}); msgpush always sends it, so the server behind "
        "api_base ({api_base}) drops the query string",
    ),
    41004: VendorCode(
        "failed",
        "WeCom received no corpsecret ({message}); msgpush always sends it, so the server behind "
        "api_base ({api_base}) drops the query string",
    ),
    60020: VendorCode("failed", TRUSTED_IP_FIX),
    **RETRYABLE,
}
# message/send and appchat/send (docs/vendors/wecom.md#error-codes)
SEND_ERRORS: dict[int | str, VendorCode] = {
    40014: VendorCode(
        "refresh_token",
        "WeCom refused the access token ({message}); msgpush fetched a new one and repeated "
        "the attempt",
    ),
    42001: VendorCode(
        "refresh_token",
        "the access token expired early ({message}); msgpush fetched a new one and repeated "
        "the attempt",
    ),
    # wechatpy refreshes on 40001 too: on a send it means the token is not the latest
    # (message-pusher#52 "access_token is invalid or not latest"); a wrong secret then shows
    # at gettoken as a permanent 40001.
    40001: VendorCode(
        "refresh_token",
        "WeCom says the access token is invalid or not the latest ({message}); msgpush "
        "fetched a new one and repeated the attempt",
    ),
    42007: VendorCode(
        "refresh_token",
        "WeCom revoked the access token ({message}); msgpush fetched a new one and repeated "
        "the attempt",
    ),
    42009: VendorCode(
        "refresh_token",
        "the access token expired ({message}); msgpush fetched a new one and repeated the attempt",
    ),
    41001: VendorCode(
        "failed",
        "WeCom received no access_token ({message}); msgpush always sends one, so the server "
        "behind api_base ({api_base}) drops the query string: fix the proxy, or set api_base "
        f"to {WECOM_API_BASE}",
    ),
    81013: VendorCode(
        "failed",
        "none of the recipients ({recipients}) can get messages from this app ({message}): "
        "each must exist and be inside the app's visible range (可见范围), under App Management "
        "(应用管理) > the app > Visible Range. Users are account ids (账号) from Contacts "
        "(通讯录), not names; departments and tags are numeric ids",
    ),
    82001: VendorCode(
        "failed",
        "none of the recipients ({recipients}) can get messages from this app ({message}): "
        "each must exist and be inside the app's visible range (可见范围), under App Management "
        "(应用管理) > the app > Visible Range",
    ),
    40008: VendorCode(
        "failed",
        "WeCom does not accept the {msgtype} message type ({message}); the server behind "
        "api_base ({api_base}) may be an old private deployment. Please report it",
    ),
    44004: VendorCode(
        "failed", "WeCom says the {msgtype} message is empty ({message}); send a title or content"
    ),
    45002: VendorCode(
        "failed",
        "WeCom says the {msgtype} message is too large ({message}). msgpush keeps text and "
        f"markdown within {TEXT_MAX_BYTES} bytes, so the server behind api_base ({{api_base}}) "
        "allows less than WeCom documents; please report it",
    ),
    40056: VendorCode(
        "failed",
        "WeCom says agent_id {agent_id} is not valid for this Secret ({message}): set agent_id "
        "to the AgentId on the app's page (App Management 应用管理 > the app) and secret to "
        "that same app's Secret",
    ),
    40058: VendorCode(
        "failed",
        "WeCom rejected a field of the {msgtype} message: {message}. msgpush keeps every field "
        "within WeCom's documented limits, so the server behind api_base ({api_base}) allows "
        "less, or does not accept what msgpush sends; please report it with this message",
    ),
    48002: VendorCode(
        "failed",
        "WeCom does not let this app call {api} ({message}): secret must be the Secret of a "
        "self-built app (自建应用), not the Contacts sync (通讯录同步) secret or another tool's; "
        "group chats (chat_id) also need the app's visible range (可见范围) to be the whole "
        "company (the root department)",
    ),
    60011: VendorCode(
        "failed",
        "the app has no privilege for this ({message}): the recipients (for a group chat, its "
        "members) must be inside the app's visible range (可见范围): App Management (应用管理) > "
        "the app > Visible Range",
    ),
    60020: VendorCode("failed", TRUSTED_IP_FIX),
    **RETRYABLE,
}
CHAT_FIX = (
    "WeCom does not know chat {chat} ({message}): appchat/send only reaches group chats this "
    "app created itself with appchat/create (a chatid of up to 32 letters and digits), not "
    "ordinary groups; for those, use a group bot (wecom_bot)"
)
# appchat/send (docs/vendors/wecom.md#group-chat)
CHAT_ERRORS: dict[int | str, VendorCode] = {
    86003: VendorCode("failed", CHAT_FIX),
    86001: VendorCode("failed", CHAT_FIX),
    40050: VendorCode("failed", CHAT_FIX),
}
# Answers that concern only the recipients of one request: other parts still go out.
RECIPIENT_CODES = {str(code) for code in (81013, 82001, *CHAT_ERRORS)}


# -- settings ------------------------------------------------------------------------------------


def _id_list(value: Any) -> Any:
    """A list from a list, or from "a|b|c" / "a, b" as WeCom and people write them."""
    if isinstance(value, str):
        value = re.split(r"[|,\s]+", value)
    if isinstance(value, list):
        return [str(item).strip() for item in value if str(item).strip()]
    return value


def _check_ids(value: list[str], pattern: re.Pattern[str] | None, what: str) -> list[str]:
    for item in value:
        if item == ALL:
            continue
        if BAD_ID_CHARS.search(item) or len(item) > 64:
            raise ValueError(f"{item!r} is not a WeCom {what} (no spaces or '|')")
        if pattern is not None and not pattern.fullmatch(item):
            raise ValueError(f"{item!r} is not a WeCom {what}: use its numeric id")
    return list(dict.fromkeys(value))


class WeComAppSettings(ChannelSettings):
    corp_id: str = Field(
        json_schema_extra={
            "x-title-zh": "企业ID (CorpID)",
            "x-description-zh": "我的企业 > 企业信息 > 企业ID，如 ww8a…",
        },
        title="CorpID (企业ID)",
        description="My Company (我的企业) > Company Information (企业信息) > CorpID, e.g. ww8a…",
        min_length=1,
        max_length=64,
        pattern=r"^[^\s&#?/]+$",
    )
    agent_id: int = Field(
        json_schema_extra={
            "x-title-zh": "应用AgentId",
            "x-description-zh": "应用的 AgentId：应用管理 > 该应用，如 1000002。",
        },
        title="AgentId",
        description="The app's AgentId: App Management (应用管理) > the app, e.g. 1000002.",
        ge=1,
        le=2**31 - 1,
    )
    secret: SecretStr = secret_field(
        json_schema_extra={
            "x-title-zh": "应用Secret",
            "x-description-zh": "应用的 Secret：应用管理 > 该应用 > Secret > 查看。加密保存，读回时打码。",
        },
        title="Secret",
        description=(
            "The app's Secret: App Management (应用管理) > the app > Secret > View (查看). "
            "Stored encrypted, read back masked."
        ),
        min_length=1,
    )
    to_user: list[str] = Field(
        json_schema_extra={
            "x-title-zh": "接收人",
            "x-description-zh": "默认接收人：成员账号（UserID），或 @all 表示应用可见范围内的所有人。",
        },
        default_factory=list,
        title="Users",
        description="Default recipients: user account ids (账号), or @all for everyone in the "
        "app's visible range.",
        max_length=5000,
    )
    to_party: list[str] = Field(
        json_schema_extra={
            "x-title-zh": "部门",
            "x-description-zh": "默认接收部门：部门 ID（数字）。",
        },
        default_factory=list,
        title="Departments",
        description="Default recipients: department ids (numbers).",
        max_length=1000,
    )
    to_tag: list[str] = Field(
        json_schema_extra={
            "x-title-zh": "标签",
            "x-description-zh": "默认接收标签：标签 ID（数字）。",
        },
        default_factory=list,
        title="Tags",
        description="Default recipients: tag ids (numbers).",
        max_length=1000,
    )
    chat_id: str | None = Field(
        json_schema_extra={
            "x-title-zh": "群聊ID",
            "x-description-zh": "本应用创建的群聊（appchat/create）的 chatid：消息也会发到该群。",
        },
        default=None,
        title="Group chat id",
        description="A group chat this app created (appchat/create): messages go there too.",
        pattern=r"^[0-9A-Za-z]{1,32}$",
    )
    api_base: str = Field(
        json_schema_extra={
            "x-title-zh": "API 地址",
            "x-description-zh": (
                "企业微信 API 的其他地址：私有化部署，或出口 IP 固定且已加入应用企业可信 IP 的代理。"
            ),
        },
        default=WECOM_API_BASE,
        title="API base",
        description="Another address for WeCom's API: a private deployment, or a proxy with a "
        "fixed egress IP listed in the app's trusted IPs.",
        max_length=500,
    )
    duplicate_check_interval: int = Field(
        json_schema_extra={
            "x-title-zh": "重复消息检查（秒）",
            "x-description-zh": (
                "在此秒数内再次发送相同消息时企业微信会丢弃，因此重试不会重复通知。0 表示关闭检查；"
                "最多 14400（4 小时）。"
            ),
        },
        default=DUPLICATE_CHECK_DEFAULT_S,
        title="Duplicate check (s)",
        description=(
            "WeCom drops an identical message sent again within this many seconds, so a retry "
            "never notifies twice. 0 turns the check off; at most 14400 (4 h)."
        ),
        ge=0,
        le=DUPLICATE_CHECK_MAX_S,
    )

    @field_validator("corp_id", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator("secret", mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return value.strip() if isinstance(value, str) else value

    @field_validator("to_user", "to_party", "to_tag", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _id_list(value)

    @field_validator("to_user")
    @classmethod
    def _users(cls, value: list[str]) -> list[str]:
        return _check_ids(value, None, "user id")

    @field_validator("to_party")
    @classmethod
    def _parties(cls, value: list[str]) -> list[str]:
        return _check_ids(value, PARTY_OR_TAG_ID, "department id")

    @field_validator("to_tag")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        return _check_ids(value, PARTY_OR_TAG_ID, "tag id")

    @field_validator("chat_id", mode="before")
    @classmethod
    def _chat(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"api_base must be an http(s) address like {WECOM_API_BASE}")
        if parts.query or parts.fragment:
            raise ValueError("api_base takes no query string or fragment")
        if parts.hostname == WECOM_HOST and parts.scheme != "https":
            raise ValueError(f"use {WECOM_API_BASE}: http would expose the secret and tokens")
        return value


# -- recipients and requests --------------------------------------------------------------------


@dataclass(frozen=True)
class Targets:
    users: list[str] = field(default_factory=list)
    parties: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    chats: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def _usable(values: Iterable[str], what: str, dropped: list[str]) -> list[str]:
    """Ids that can travel in an "a|b" list; the rest are named in the warning."""
    kept: list[str] = []
    for value in values:
        value = value.strip()
        if not value or BAD_ID_CHARS.search(value):
            dropped.append(f"{what} {value!r}")
        else:
            kept.append(value)
    return list(dict.fromkeys(kept))


def targets(message: Message, settings: WeComAppSettings) -> Targets:
    """Who gets this message: its own recipients if it names any, else the channel's."""
    chosen = message.recipients
    if chosen is None or not (chosen.users or chosen.departments or chosen.tags or chosen.chats):
        chats = [settings.chat_id] if settings.chat_id else []
        return Targets(
            list(settings.to_user), list(settings.to_party), list(settings.to_tag), chats
        )
    dropped: list[str] = []
    return Targets(
        _usable(chosen.users, "user", dropped),
        _usable(chosen.departments, "department", dropped),
        _usable(chosen.tags, "tag", dropped),
        _usable(chosen.chats, "chat", dropped),
        dropped,
    )


@dataclass(frozen=True)
class Part:
    """One request of a delivery: a slice of the recipients, or one group chat."""

    api: Api
    body: bytes
    msgtype: str
    users: tuple[str, ...] = ()
    parties: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    chat: str | None = None

    def request(self, api_base: str, token: str) -> VendorRequest:
        path = SEND_PATH if self.api == "message/send" else APPCHAT_PATH
        url = f"{api_base}{path}?access_token={quote(token, safe='')}"
        return VendorRequest(
            "POST", url, {"Content-Type": "application/json; charset=utf-8"}, self.body
        )

    def who(self) -> str:
        if self.chat is not None:
            return f"chat {self.chat}"
        named = [
            _named(kind, ids)
            for kind, ids in (
                ("users", self.users),
                ("departments", self.parties),
                ("tags", self.tags),
            )
            if ids
        ]
        return "; ".join(named)


def _named(kind: str, ids: Iterable[str], most: int = 10) -> str:
    ids = list(ids)
    shown = ", ".join(ids[:most])
    more = f" and {len(ids) - most} more" if len(ids) > most else ""
    return f"{kind} {shown}{more}"


def _chunks(values: list[str], size: int, count: int) -> list[list[str]]:
    return [values[i * size : (i + 1) * size] for i in range(count)]


def plan(message: Message, settings: WeComAppSettings, ctx: SendContext) -> list[Part]:
    """Every request this message needs, rendered once and byte-identical on every attempt of
    the delivery, so that WeCom's duplicate check recognises a repeat.

    message/send parts come first, group chats last: a chat has no duplicate check, so a retry
    after a failure should find as few chats already served as possible.
    """
    to = targets(message, settings)
    msgtype, content = render_content(message)
    common: dict[str, Any] = {"msgtype": msgtype, "agentid": settings.agent_id, msgtype: content}
    if settings.duplicate_check_interval and not ctx.is_test:
        # a Test Push is sent again on purpose: it must arrive every time
        common["enable_duplicate_check"] = 1
        common["duplicate_check_interval"] = settings.duplicate_check_interval
    parts: list[Part] = []
    if ALL in (*to.users, *to.parties, *to.tags):
        body = {"touser": ALL, **common}
        parts.append(Part("message/send", orjson.dumps(body), msgtype, users=(ALL,)))
    elif to.users or to.parties or to.tags:
        count = max(
            -(-len(to.users) // MAX_USERS),
            -(-len(to.parties) // MAX_PARTIES),
            -(-len(to.tags) // MAX_TAGS),
        )
        for users, parties, tags in zip(
            _chunks(to.users, MAX_USERS, count),
            _chunks(to.parties, MAX_PARTIES, count),
            _chunks(to.tags, MAX_TAGS, count),
            strict=True,
        ):
            addressed = {"touser": users, "toparty": parties, "totag": tags}
            body = {key: "|".join(ids) for key, ids in addressed.items() if ids}
            body.update(common)
            parts.append(
                Part(
                    "message/send",
                    orjson.dumps(body),
                    msgtype,
                    tuple(users),
                    tuple(parties),
                    tuple(tags),
                )
            )
    for chat in to.chats:
        body = {"chatid": chat, "msgtype": msgtype, msgtype: content}
        parts.append(Part("appchat/send", orjson.dumps(body), msgtype, chat=chat))
    return parts


# -- rendering -----------------------------------------------------------------------------------


def render_content(message: Message) -> tuple[str, dict[str, Any]]:
    """(msgtype, its object): a text card when there is a link to open, else markdown (or text
    for ``format: text``)."""
    if message.links:
        card = textcard(message)
        if card is not None:
            return "textcard", card
    if message.format == "text":
        return "text", {"content": text_content(message)}
    return "markdown", {
        "content": markdown_content(message, "markdown", [], APP_MARKDOWN_MAX_BYTES)
    }


def card_text(text: str) -> str:
    """Caller text inside the card's description, which WeCom reads as a little HTML."""
    return TAG_START.sub("＜", text)


def _div(css: str, text: str) -> str:
    return f'<div class="{css}">{text}</div>'


def textcard(message: Message) -> dict[str, Any] | None:
    """The card: the title, a description (level, content, fields, further links) and a button
    opening the first link; None when that link is too long for a card."""
    first, *others = message.links
    url = str(first.url)
    if utf8_len(url) > TEXTCARD_URL_MAX_BYTES:
        return None
    content = markdown_as_text(message.content) if message.format == "markdown" else message.content
    content = content.strip()
    title = LINE_BREAKS.sub(" ", message.title.strip())
    if not title:
        first_line = content.split("\n", 1)[0] if content else ""
        title = first_line.strip() or first.title
    card: dict[str, Any] = {
        "title": card_text(cut_chars(title, TEXTCARD_TITLE_MAX_CHARS)),
        "description": card_description(message, content, others),
        "url": url,
    }
    button = first.title.strip()
    if len(button) <= TEXTCARD_BUTTON_MAX_CHARS:
        card["btntxt"] = button
    return card


def card_description(message: Message, content: str, links: list[Any]) -> str:
    """Within 512 characters: the level and the lines of fields and links keep their place,
    the content takes the rest (cut with a marker); should too little be left for it, lines
    are dropped from the end first."""
    head: list[str] = []
    if message.level is not Level.info:
        css = "normal" if message.level is Level.success else "highlight"
        head.append(_div(css, LEVEL_LABELS[message.level]))
    lines = [f"{k}: {v}" for k, v in message.fields.items()]
    lines += [f"{link.title}: {link.url}" for link in links]
    tail = [
        _div("gray", card_text(cut_chars(LINE_BREAKS.sub(" ", line), CARD_LINE_MAX_CHARS)))
        for line in lines
    ]
    more = _div("gray", "…")
    frame = len(_div("normal", "")) if content else 0
    wanted = min(len(content), CARD_CONTENT_MIN_CHARS) + frame
    dropped = False
    while tail and len("".join([*head, *tail])) + wanted > TEXTCARD_DESCRIPTION_MAX_CHARS:
        tail.pop()
        if not dropped:
            dropped = True
            wanted += len(more)
    if dropped:
        tail.append(more)
    body = ""
    if content:
        room = TEXTCARD_DESCRIPTION_MAX_CHARS - len("".join([*head, *tail])) - frame
        body = _div("normal", card_text(cut_chars(content, room, TRUNCATION_MARKER)))
    return "".join([*head, body, *tail])


# -- the answers ---------------------------------------------------------------------------------


@dataclass
class Rejected:
    """Recipients WeCom named as invalid or unlicensed in an answer."""

    users: list[str] = field(default_factory=list)
    parties: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    unlicensed: list[str] = field(default_factory=list)
    chats: list[str] = field(default_factory=list)

    def add(self, body: Any, part: Part) -> None:
        if not isinstance(body, dict):
            return
        # user ids come back lower-cased (docs/vendors/wecom.md#app-message): name them as the
        # caller wrote them
        spelled = {user.lower(): user for user in part.users}
        for name, into, users in (
            ("invaliduser", self.users, True),
            ("invalidparty", self.parties, False),
            ("invalidtag", self.tags, False),
            ("unlicenseduser", self.unlicensed, True),
        ):
            for value in str(body.get(name) or "").split("|"):
                value = value.strip()
                if value:
                    into.append(spelled.get(value.lower(), value) if users else value)

    def refused(self, body: Any, part: Part) -> None:
        """A request WeCom refused for its recipients: those it names, else all of them."""
        if part.chat is not None:
            self.chats.append(part.chat)
            return
        before = len(self.users) + len(self.parties) + len(self.tags)
        self.add(body, part)
        if len(self.users) + len(self.parties) + len(self.tags) == before:
            self.users += part.users
            self.parties += part.parties
            self.tags += part.tags

    def warning(self) -> str | None:
        notes: list[str] = []
        invalid = [
            _named(kind, ids)
            for kind, ids in (
                ("users", self.users),
                ("departments", self.parties),
                ("tags", self.tags),
            )
            if ids
        ]
        if invalid:
            notes.append(
                "WeCom did not deliver to some recipients, which do not exist or are outside the "
                "app's visible range (可见范围): " + "; ".join(invalid)
            )
        if self.unlicensed:
            notes.append(
                "WeCom did not deliver to unlicensed users (no active WeCom account license, "
                "未激活/无许可): " + ", ".join(self.unlicensed)
            )
        if self.chats:
            notes.append(
                "WeCom does not know these group chats (appchat/send reaches only chats this app "
                "created): " + ", ".join(self.chats)
            )
        return "; ".join(notes) if notes else None


def _not_wecom(response: VendorResponse, api_base: str) -> Outcome:
    """An answer without errcode: api_base does not lead to WeCom, or something between broke."""
    status = response.status
    if status in (408, 425, 429) or status >= 500 or 300 <= status < 400:
        return http_status_outcome(response)
    refused = unauthorized(response, "WeCom")
    if refused is not None:
        return refused
    excerpt = response.text(200).strip()
    detail = f": {excerpt}" if excerpt else ""
    return Outcome.failed(
        f"the answer (HTTP {status}) is not WeCom's errcode/errmsg JSON{detail}; check that "
        f"api_base ({api_base}) is {WECOM_API_BASE} or a proxy that passes WeCom's answers "
        "through",
        status_code=status,
    )


def read_answer(
    response: VendorResponse,
    table: dict[int | str, VendorCode],
    settings: WeComAppSettings,
    **names: Any,
) -> Outcome:
    """Classify one WeCom answer on its errcode (always HTTP 200, docs/vendors/wecom.md#answers)."""
    body = response.json()
    code = errcode(body)
    if code is None:
        return _not_wecom(response, settings.api_base)
    raw = str(body.get("errmsg", ""))
    if code == 0:
        return Outcome.delivered(status_code=response.status, vendor_code="0", vendor_message=raw)
    message = clean_errmsg(raw)
    if code in table or response.status >= 500:
        ip = FROM_IP.search(raw)
        outcome = vendor_outcome(
            code,
            message,
            table,
            status_code=response.status,
            corp_id=settings.corp_id,
            agent_id=settings.agent_id,
            api_base=settings.api_base,
            ip=f"IP {ip[1]}" if ip else "msgpush's egress IP",
            ip_short=ip[1] if ip else "the egress IP of msgpush's host",
            **names,
        )
    else:
        outcome = Outcome.failed(
            f"WeCom error {code}: {message}. msgpush does not know this code; look it up at "
            + ERROR_LOOKUP_URL.format(code=code),
            status_code=response.status,
            vendor_code=str(code),
        )
    # the full errmsg stays on record: its hint is what WeCom support asks for
    return replace(outcome, vendor_message=raw)


def read_token(
    response: VendorResponse, settings: WeComAppSettings
) -> tuple[Outcome, FetchedToken | None]:
    """A gettoken answer: the token and its lifetime, or why there is none."""
    missing = (
        "gettoken answered errcode 0 without an access_token; check that api_base "
        f"({settings.api_base}) leads to WeCom"
    )
    outcome = read_answer(response, TOKEN_ERRORS, settings)
    return token_in_answer(outcome, response, "access_token", "expires_in", missing)


class WeComAppChannel(ChannelType):
    type_id = "wecom_app"
    name = "WeCom App"
    description = (
        "A WeCom (企业微信) self-built app: messages to members, departments and tags, or to "
        "the app's group chats; markdown, or a text card when there is a link."
    )
    description_zh = (
        "企业微信自建应用：发给成员、部门、标签或应用群聊；markdown，有链接时用文本卡片。"
    )
    settings_model = WeComAppSettings
    formats = ("markdown", "text")
    # one slot per delivery, and a delivery reaches each member once: the member limits hold
    default_limits = RateLimit(
        per_minute=WECOM_APP_PER_MEMBER_PER_MINUTE, per_hour=WECOM_APP_PER_MEMBER_PER_HOUR
    )
    size_limits: ClassVar[dict[str, int]] = {
        "text": TEXT_MAX_BYTES,
        "markdown": APP_MARKDOWN_MAX_BYTES,
        "textcard.url": TEXTCARD_URL_MAX_BYTES,
    }

    def check(self, settings: Any) -> None:
        if not (settings.to_user or settings.to_party or settings.to_tag or settings.chat_id):
            raise ValueError(
                "to_user: name at least one default recipient in to_user, to_party, to_tag or "
                "chat_id (a message's recipients override them)"
            )

    def render(self, message: Message, settings: Any, ctx: SendContext) -> VendorRequest:
        """The first request, with a placeholder token (previews and tests)."""
        return plan(message, settings, ctx)[0].request(settings.api_base, "ACCESS_TOKEN")

    def classify(self, response: VendorResponse) -> Outcome:
        return with_step(self._read_send(response, None, None), SEND_STEP)

    def _read_send(
        self, response: VendorResponse, part: Part | None, settings: WeComAppSettings | None
    ) -> Outcome:
        # classify() has no channel at hand: its diagnoses name placeholders
        settings = settings or WeComAppSettings.model_construct(
            corp_id="CORPID", agent_id=0, secret=SecretStr(""), api_base=WECOM_API_BASE
        )
        table = SEND_ERRORS | CHAT_ERRORS if part is None or part.chat else SEND_ERRORS
        return read_answer(
            response,
            table,
            settings,
            api=part.api if part else "message/send",
            msgtype=part.msgtype if part else "message",
            chat=part.chat if part else "?",
            recipients=part.who() if part else "?",
        )

    async def _token(self, settings: WeComAppSettings, ctx: SendContext) -> tuple[str, str]:
        """(cache key, access token): the shared cache's, or a new one from gettoken."""
        secret = settings.secret.get_secret_value()
        key = token_key(self.type_id, settings.api_base, settings.corp_id, secret)
        url = (
            f"{settings.api_base}{GETTOKEN_PATH}?corpid={quote(settings.corp_id, safe='')}"
            f"&corpsecret={quote(secret, safe='')}"
        )

        request = VendorRequest("GET", url)
        token = await cached_token(
            ctx, key, request, lambda response: read_token(response, settings), TOKEN_STEP
        )
        return key, token

    async def send(self, message: Message, settings: Any, ctx: SendContext) -> Outcome:
        parts = plan(message, settings, ctx)
        if not parts:
            return Outcome.failed(
                "this message names no usable recipient ("
                + ", ".join(targets(message, settings).dropped or ["none"])
                + "); give recipients.users, departments, tags or chats, or the channel's "
                "to_user, to_party, to_tag or chat_id"
            )
        key, token = await self._token(settings, ctx)
        rejected = Rejected()
        delivered: Outcome | None = None
        refused: list[tuple[Part, Outcome]] = []
        for number, part in enumerate(parts, 1):
            step = f"{SEND_STEP[:-2]} ({part.who()}): " if len(parts) > 1 else SEND_STEP
            outcome, body = await self._send_part(part, token, settings, ctx)
            if outcome.kind == "delivered":
                rejected.add(body, part)
                delivered = outcome
                continue
            if outcome.kind == "refresh_token" and ctx.tokens is not None:
                await ctx.tokens.invalidate(key, token)
            if outcome.kind == "failed" and outcome.vendor_code in RECIPIENT_CODES:
                # only this request's recipients are wrong: the other requests still go out
                rejected.refused(body, part)
                refused.append((part, outcome))
                continue
            if delivered is not None and outcome.kind == "failed":
                outcome = replace(
                    outcome,
                    diagnosis=f"{outcome.diagnosis}. {number - 1} of {len(parts)} requests had "
                    "gone out before this one",
                )
            return with_step(outcome, step)
        if delivered is None:
            if len(parts) == 1:
                return with_step(refused[0][1], SEND_STEP)
            reasons = "; ".join(f"{part.who()}: {outcome.diagnosis}" for part, outcome in refused)
            return replace(refused[-1][1], diagnosis=SEND_STEP + reasons)
        notes = [rejected.warning(), *_notes(message, settings)]
        warning = "; ".join(note for note in notes if note)
        return replace(delivered, warning=warning or None)

    async def _send_part(
        self, part: Part, token: str, settings: WeComAppSettings, ctx: SendContext
    ) -> tuple[Outcome, Any]:
        """One request's outcome, and the answer's JSON body for its recipient lists."""
        answer: list[Any] = []

        def classify(response: VendorResponse) -> Outcome:
            answer.append(response.json())
            return self._read_send(response, part, settings)

        outcome = await ctx.exchange(part.request(settings.api_base, token), classify)
        return outcome, answer[0] if answer else None


def _notes(message: Message, settings: WeComAppSettings) -> list[str]:
    notes: list[str] = []
    dropped = targets(message, settings).dropped
    if dropped:
        notes.append("recipients that are not WeCom ids were left out: " + ", ".join(dropped))
    if message.mentions.any():
        notes.append(
            "a WeCom app message notifies each recipient directly and has no @mentions, so "
            "mentions were not used: add the people to recipients.users instead"
        )
    return notes


CHANNEL_TYPE = WeComAppChannel()
