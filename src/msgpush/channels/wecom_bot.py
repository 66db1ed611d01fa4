"""WeCom (企业微信) group bot webhook: markdown with level colours, or text when @mentions need it."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, field_validator

from msgpush.channels.base import (
    ChannelSettings,
    ChannelType,
    Outcome,
    RateLimit,
    SendContext,
    VendorCode,
    VendorRequest,
    VendorResponse,
    http_status_outcome,
    secret_field,
    vendor_outcome,
)
from msgpush.channels.render import utf8_len
from msgpush.channels.wecom_common import (
    ERROR_LOOKUP_URL,
    TEXT_MAX_BYTES,
    WECOM_RATE_WINDOW_S,
    MarkdownVersion,
    clean_errmsg,
    markdown_content,
    mention_line,
    text_content,
)
from msgpush.channels.wecom_common import errcode as _errcode
from msgpush.message import Message

# The official endpoint; the key in its query string is the bot's only credential
# (docs/vendors/wecom.md#group-bot).
WECOM_HOST = "qyapi.weixin.qq.com"
WECOM_BOT_PATH = "/cgi-bin/webhook/send"
WECOM_BOT_URL = f"https://{WECOM_HOST}{WECOM_BOT_PATH}"
# A bare key as the bot page shows it inside the URL: UUID-like (docs/vendors/wecom.md#group-bot),
# so a stray word is not mistaken for one.
BARE_KEY = re.compile(r"(?=.{16,128}$)[A-Za-z0-9]+(?:-[A-Za-z0-9]+){3,}")

# 20 messages a minute per bot; over it WeCom answers 45009 (docs/vendors/wecom.md#rate-limits).
WECOM_BOT_PER_MINUTE = 20
# markdown.content and markdown_v2.content <= 4096 bytes (docs/vendors/wecom.md#size-limits).
MARKDOWN_MAX_BYTES = 4096
# A user id that can sit inside <@...> without ending the tag early.
MENTIONABLE_ID = re.compile(r"[^\s<>]+")
# Beyond this, <@id> tags would crowd out the message: such mentions go in a text message.
MENTION_LINE_MAX_BYTES = 1024

# docs/vendors/wecom.md#error-codes: the bot's codes, plus the app's a bot can also draw (45002,
# -1).
ERRORS: dict[int | str, VendorCode] = {
    93000: VendorCode(
        "failed",
        "WeCom does not know this bot's key ({message}): the bot was removed from its group or "
        "its webhook address changed. In the group, open Group Bots (群机器人), pick the bot, "
        "copy its Webhook URL (Webhook地址) and save it as the channel's webhook_url",
    ),
    45009: VendorCode(
        "retry",
        "WeCom rate-limited this bot ({message}: over 20 messages a minute); will retry after "
        "its 60 s window. msgpush keeps each channel under the limit, so something else sends "
        "with the same key (another system, or a second channel with this webhook_url): give "
        "each sender a bot of its own",
        retry_after_s=WECOM_RATE_WINDOW_S,
    ),
    45033: VendorCode(
        "retry",
        "WeCom refused this bot too many concurrent requests ({message}); will retry shortly",
    ),
    -1: VendorCode("retry", "WeCom is busy ({message}); will retry"),
    40008: VendorCode(
        "failed",
        "WeCom does not accept the {msgtype} message type ({message}). If markdown_version is "
        "markdown_v2, this WeCom server (a private deployment or an older version) may not "
        "know it: set markdown_version to markdown. Otherwise check that webhook_url is a "
        "WeCom group bot's address",
    ),
    40058: VendorCode(
        "failed",
        "WeCom rejected a field of the {msgtype} message: {message}. If it names a length: "
        f"msgpush keeps text within {TEXT_MAX_BYTES} bytes and markdown within "
        f"{MARKDOWN_MAX_BYTES}, so the server behind webhook_url (a proxy or a private "
        "deployment) allows less than WeCom documents. Otherwise this server does not accept "
        "what msgpush sends; please report it with this message",
    ),
    45002: VendorCode(
        "failed",
        "WeCom says the {msgtype} message is too large ({message}); the server behind "
        "webhook_url enforces a lower limit than WeCom documents; please report it",
    ),
    44004: VendorCode(
        "failed",
        "WeCom says the {msgtype} message is empty ({message}); send a title or content",
    ),
}


def webhook_key(url: str) -> str:
    """The ``key`` query value of a bot webhook URL ('' when there is none)."""
    values = parse_qs(urlsplit(url).query).get("key", [])
    return values[0] if values else ""


def normalize_webhook_url(value: str) -> str:
    """The bot's webhook URL: a bare key becomes the official URL; a URL must carry a key.

    Error texts never repeat the value: it is a credential.
    """
    value = value.strip()
    if BARE_KEY.fullmatch(value):
        return f"{WECOM_BOT_URL}?key={value}"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"webhook_url must be the bot's Webhook URL ({WECOM_BOT_URL}?key=…) or just its key"
        )
    if not webhook_key(value):
        raise ValueError(
            "webhook_url has no key: copy the whole Webhook URL, including ?key=…, from the bot"
        )
    if parts.hostname == WECOM_HOST:
        if parts.scheme != "https":
            raise ValueError(f"webhook_url: use https://{WECOM_HOST} (http would expose the key)")
        if parts.path != WECOM_BOT_PATH:
            raise ValueError(f"webhook_url: a WeCom group bot's path is {WECOM_BOT_PATH}")
    return value


class WeComBotSettings(ChannelSettings):
    webhook_url: SecretStr = secret_field(
        json_schema_extra={
            "x-title-zh": "Webhook 地址",
            "x-description-zh": (
                f"群机器人的 Webhook 地址（{WECOM_BOT_URL}?key=…），或仅填其 key。代理或私有化部署"
                "可用任意带 key 的 http(s) 地址。key 是机器人唯一的凭证：加密保存，读回时打码。"
            ),
        },
        title="Webhook URL",
        description=(
            f"The bot's Webhook URL ({WECOM_BOT_URL}?key=…), or just its key. Any http(s) URL "
            "with a key works for a proxy or a private deployment. The key is the bot's only "
            "credential: stored encrypted, read back masked."
        ),
    )
    markdown_version: MarkdownVersion = Field(
        json_schema_extra={
            "x-title-zh": "Markdown 版本",
            "x-description-zh": (
                "markdown：按级别着色，支持 <@userid> 提醒。markdown_v2：支持列表和标准 markdown，"
                "不着色；需要 @ 人的消息改以文本发送。"
            ),
        },
        default="markdown",
        title="Markdown version",
        description=(
            "markdown: level colours and <@userid> mentions. markdown_v2: lists and standard "
            "markdown content, no colours; messages that @ someone then go as text."
        ),
    )

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _webhook_url(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return normalize_webhook_url(value) if isinstance(value, str) else value


# -- rendering ---------------------------------------------------------------------------------


def plan(message: Message, version: MarkdownVersion) -> tuple[str, dict[str, Any]]:
    """(msgtype, its body object) for one message.

    @all and mobiles only ping in a text message, and markdown_v2 cannot @ anyone, so a
    message that @s those goes as text, carrying everything, in the same single request.
    """
    mentions = message.mentions
    user_ids = list(dict.fromkeys(mentions.user_ids))
    mobiles = list(dict.fromkeys(mentions.mobiles))
    markdown_can_mention = (
        version == "markdown"
        and all(MENTIONABLE_ID.fullmatch(user_id) for user_id in user_ids)
        and utf8_len(mention_line(user_ids)) <= MENTION_LINE_MAX_BYTES
    )
    needs_text = (
        message.format == "text"
        or mentions.all
        or bool(mobiles)
        or (bool(user_ids) and not markdown_can_mention)
    )
    if not needs_text:
        return version, {
            "content": markdown_content(message, version, user_ids, MARKDOWN_MAX_BYTES)
        }
    body: dict[str, Any] = {"content": text_content(message)}
    mentioned = [*user_ids, "@all"] if mentions.all else user_ids
    if mentioned:
        body["mentioned_list"] = mentioned
    if mobiles:
        body["mentioned_mobile_list"] = mobiles
    return "text", body


# -- the answer --------------------------------------------------------------------------------


def not_wecom_outcome(response: VendorResponse) -> Outcome:
    """An answer without errcode: the URL does not lead to WeCom, or something in between broke."""
    status = response.status
    if status in (408, 425, 429) or status >= 500 or 300 <= status < 400:
        return http_status_outcome(response)
    excerpt = response.text(200).strip()
    detail = f": {excerpt}" if excerpt else ""
    return Outcome.failed(
        f"the answer (HTTP {status}) is not WeCom's errcode/errmsg JSON{detail}; delivery is "
        f"not confirmed. Check that webhook_url is the bot's address (…{WECOM_BOT_PATH}?key=…) "
        "or a proxy that passes WeCom's answer through",
        status_code=status,
    )


class WeComBotChannel(ChannelType):
    type_id = "wecom_bot"
    name = "WeCom Bot"
    description = (
        "A WeCom (企业微信) group bot: markdown with level colours, fields and links; "
        "@mentions by user id, mobile or @all."
    )
    description_zh = (
        "企业微信群机器人：按级别着色的 markdown，含字段和链接；可按成员账号"
        "、手机号或 @所有人 提醒。"
    )
    settings_model = WeComBotSettings
    formats = ("markdown", "text")
    default_limits = RateLimit(per_minute=WECOM_BOT_PER_MINUTE)
    size_limits: ClassVar[dict[str, int]] = {
        "text": TEXT_MAX_BYTES,
        "markdown": MARKDOWN_MAX_BYTES,
        "markdown_v2": MARKDOWN_MAX_BYTES,
    }

    @classmethod
    def secret_values(cls, settings: ChannelSettings) -> list[str]:
        """The whole URL and the key alone, so text quoting only the key is scrubbed too."""
        values = super().secret_values(settings)
        if isinstance(settings, WeComBotSettings):
            url = settings.webhook_url.get_secret_value()
            values += [v for v in (webhook_key(url), _raw_key(url)) if len(v) >= 4]
        return list(dict.fromkeys(values))

    def render(
        self, message: Message, settings: WeComBotSettings, ctx: SendContext
    ) -> VendorRequest:
        return _request(message, settings)[1]

    def classify(self, response: VendorResponse, msgtype: str = "bot") -> Outcome:
        body = response.json()
        code = _errcode(body)
        if code is None:
            return not_wecom_outcome(response)
        raw = str(body.get("errmsg", ""))
        if code == 0:
            return Outcome.delivered(
                status_code=response.status, vendor_code="0", vendor_message=raw
            )
        message = clean_errmsg(raw)
        if code in ERRORS or response.status >= 500:
            outcome = vendor_outcome(
                code, message, ERRORS, status_code=response.status, msgtype=msgtype
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

    async def send(self, message: Message, settings: Any, ctx: SendContext) -> Outcome:
        msgtype, request = _request(message, settings)
        warning = _mention_warning(message)

        def classify(response: VendorResponse) -> Outcome:
            outcome = self.classify(response, msgtype)
            if warning and outcome.kind == "delivered":
                outcome = replace(outcome, warning=warning)
            return outcome

        return await ctx.exchange(request, classify)


def _request(message: Message, settings: WeComBotSettings) -> tuple[str, VendorRequest]:
    msgtype, body = plan(message, settings.markdown_version)
    url = settings.webhook_url.get_secret_value()
    return msgtype, VendorRequest.json(url, {"msgtype": msgtype, msgtype: body})


def _raw_key(url: str) -> str:
    """The key as written in the URL (still percent-encoded, if it was)."""
    for piece in urlsplit(url).query.split("&"):
        name, _, value = piece.partition("=")
        if name == "key":
            return value
    return ""


def _mention_warning(message: Message) -> str | None:
    if message.mentions.emails:
        return (
            "a WeCom bot cannot @ people by email; these were not mentioned: "
            + ", ".join(message.mentions.emails)
            + ". Use mentions.user_ids (WeCom user ids) or mentions.mobiles"
        )
    return None


CHANNEL_TYPE = WeComBotChannel()
