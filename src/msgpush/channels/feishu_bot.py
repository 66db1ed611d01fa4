"""Feishu / Lark custom group bot (自定义机器人): a signed webhook carrying an interactive card."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

import orjson
from pydantic import Field, SecretStr, StringConstraints, field_validator

from msgpush.channels.base import (
    ChannelSettings,
    ChannelType,
    Outcome,
    RateLimit,
    SendContext,
    VendorCode,
    VendorRequest,
    VendorResponse,
    secret_field,
    vendor_outcome,
)
from msgpush.channels.feishu_card import UNPINGABLE_MAX_BYTES, at_id_ok, fit_card, unpingable
from msgpush.channels.render import cut_bytes, ensure_keyword, text_body, utf8_len
from msgpush.channels.signing import hmac_sha256_b64
from msgpush.message import Format, Mentions, Message

# docs/vendors/feishu.md#custom-bot: Feishu and Lark hosts and the webhook path; other hosts are
# proxies or private deployments and may use any path.
FEISHU_HOSTS = ("open.feishu.cn", "open.larksuite.com")
HOOK_PATH = "/open-apis/bot/v2/hook/"
# docs/vendors/feishu.md#rate-limits: 5 requests a second and 100 a minute per bot.
FEISHU_BOT_PER_SECOND = 5
FEISHU_BOT_PER_MINUTE = 100
# docs/vendors/feishu.md#size-limits: body ≤20 KB (apprise keeps 19985); read as 20,000 bytes, the
# stricter of 20,000 and 20,480.
BODY_LIMIT_BYTES = 20_000
# docs/vendors/feishu.md#custom-bot: up to 10 keywords.
MAX_KEYWORDS = 10
MAX_KEYWORD_CHARS = 100  # msgpush's own bound: Feishu documents none
# docs/vendors/feishu.md#bot-error-codes: 11232 is the per-bot frequency limit, whose longest window
# is a minute.
RATE_LIMITED_RETRY_S = 60.0
REQUEST_TIMEOUT_S = 10.0

# docs/vendors/feishu.md#bot-error-codes: every code Feishu's bot webhook is known to answer with.
ERRORS: dict[int | str, VendorCode] = {
    9499: VendorCode(
        "failed",
        "Feishu could not read the request ({message}): the body was malformed or over 20 KB. "
        "msgpush keeps bodies under 20 KB, so a proxy in webhook_url may be altering it; "
        "otherwise report this attempt's request as a msgpush bug",
    ),
    19001: VendorCode(
        "failed",
        "the webhook token is invalid ({message}): the bot was removed or its webhook URL was "
        "reset. Copy the current webhook URL from the bot's settings (群设置 > 群机器人) into "
        "webhook_url",
    ),
    19002: VendorCode(
        "failed",
        "Feishu found no msg_type in the request ({message}): a proxy in webhook_url may be "
        "rewriting the body; otherwise report this attempt's request as a msgpush bug",
    ),
    19021: VendorCode("failed", "the signature check failed ({message}): {secret_hint}"),
    19022: VendorCode(
        "failed",
        "Feishu refused this server's IP address ({message}): add msgpush's egress IP to the "
        "bot's IP allowlist (安全设置 > IP 白名单), or remove that option",
    ),
    19024: VendorCode(
        "failed", "the bot rejected the message for its keywords ({message}): {keyword_hint}"
    ),
    19036: VendorCode(
        "failed",
        "Feishu found the message too large ({message}); report this attempt's request as a "
        "msgpush bug, since msgpush cuts messages to fit",
    ),
    11232: VendorCode(
        "retry",
        "Feishu rate-limited this bot ({message}; 5 a second, 100 a minute per bot): another "
        "sender shares the bot, or its channel's rate_limit was raised; will retry after the "
        "minute window",
        retry_after_s=RATE_LIMITED_RETRY_S,
    ),
    11246: VendorCode(
        "failed",
        "Feishu refused a mention ({message}): a user id in mentions.user_ids is not a member "
        "of this tenant; use open_ids (ou_…) or user_ids of people in the group",
    ),
}
# ccfos/nightingale#1437: Feishu's gateway also throttles with code 9499 and this message.
THROTTLED_9499 = VendorCode(
    "retry",
    "Feishu throttled this bot ({message}); will retry after the minute window",
    retry_after_s=RATE_LIMITED_RETRY_S,
)

Keyword = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_KEYWORD_CHARS)
]


class FeishuBotSettings(ChannelSettings):
    webhook_url: SecretStr = secret_field(
        json_schema_extra={
            "x-title-zh": "Webhook 地址",
            "x-description-zh": (
                "机器人的 Webhook 地址：https://open.feishu.cn/open-apis/bot/v2/hook/<token>"
                "（Lark：https://open.larksuite.com/...），或代理的任意 http(s) 地址。其中的 token "
                "是机器人的凭证：加密保存，不再显示。"
            ),
        },
        title="Webhook URL",
        description=(
            "The bot's webhook address: https://open.feishu.cn/open-apis/bot/v2/hook/<token> "
            "(Lark: https://open.larksuite.com/...), or any http(s) URL of a proxy. The token in "
            "it is the bot's credential: stored encrypted, never shown."
        ),
    )
    secret: SecretStr | None = secret_field(
        json_schema_extra={
            "x-title-zh": "签名校验密钥",
            "x-description-zh": "机器人开启了签名校验时填写：每个请求都用它签名。加密保存，不再显示。",
        },
        default=None,
        title="Signing secret",
        description=(
            "Set when the bot has signature verification (签名校验) on: each request is signed "
            "with it. Stored encrypted, never shown."
        ),
    )
    keywords: list[Keyword] = Field(
        json_schema_extra={
            "x-title-zh": "自定义关键词",
            "x-description-zh": (
                "机器人设置了自定义关键词时填写。消息不含任何关键词时，会在标题中加上第一个关键词。"
            ),
        },
        default_factory=list,
        max_length=MAX_KEYWORDS,
        title="Security keywords",
        description=(
            "The bot's custom keywords (自定义关键词), when set. A message containing none of them "
            "gets the first one added to its title."
        ),
    )

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value().strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be the bot's full webhook URL, like "
                f"https://open.feishu.cn{HOOK_PATH}<token>, not the token alone"
            )
        if parts.hostname in FEISHU_HOSTS:
            token = parts.path.removeprefix(HOOK_PATH)
            if not parts.path.startswith(HOOK_PATH) or not token or "/" in token:
                raise ValueError(
                    f"a Feishu/Lark bot URL has the form https://{parts.hostname}{HOOK_PATH}"
                    "<token>; copy it whole from the bot's settings"
                )
        return SecretStr(url)


def sign(secret: str, timestamp: int) -> str:
    """Feishu's signature: HMAC-SHA256 keyed with "timestamp\\nsecret" over nothing, in base64
    (docs/vendors/feishu.md#bot-signature; DingTalk keys with the secret and signs the string
    instead)."""
    return hmac_sha256_b64(f"{timestamp}\n{secret}".encode(), b"")


def signature_fields(settings: FeishuBotSettings, now: float | None = None) -> dict[str, str]:
    secret = settings.secret.get_secret_value() if settings.secret else ""
    if not secret:
        return {}
    timestamp = int(time.time() if now is None else now)
    return {"timestamp": str(timestamp), "sign": sign(secret, timestamp)}


def _size(payload: dict[str, Any]) -> int:
    return len(orjson.dumps(payload))


def text_mentions(mentions: Mentions) -> str:
    """Mentions in a text message: <at user_id> tags that ping, others named as plain text."""
    tags = [
        f'<at user_id="{uid}">{uid}</at>'
        for uid in dict.fromkeys(mentions.user_ids)
        if at_id_ok(uid)
    ]
    if mentions.all:
        tags.append('<at user_id="all">所有人</at>')
    names = cut_bytes(
        " ".join(f"@{n}" for n in unpingable(mentions)), UNPINGABLE_MAX_BYTES, marker="…"
    )
    return " ".join(part for part in (" ".join(tags), names) if part)


def text_payload(
    message: Message, keywords: Sequence[str], signed: dict[str, str]
) -> dict[str, Any]:
    """A text message (``format: text``) cut to fit the body limit, mentions kept whole."""
    full = text_body(message)
    mentions = text_mentions(message.mentions)
    budget = utf8_len(full)
    payload: dict[str, Any] = {}
    for _ in range(50):
        text = "\n\n".join(part for part in (cut_bytes(full, budget), mentions) if part)
        text = ensure_keyword(text, list(keywords))
        payload = {**signed, "msg_type": "text", "content": {"text": text}}
        over = _size(payload) - BODY_LIMIT_BYTES
        if over <= 0:
            break
        budget = max(0, budget - over)
    return payload


def payload_for(
    message: Message, settings: FeishuBotSettings, now: float | None = None
) -> dict[str, Any]:
    """The JSON body for one message: an interactive card, or text for ``format: text``."""
    signed = signature_fields(settings, now)
    if message.format == Format.text:
        return text_payload(message, settings.keywords, signed)

    def request_size(card: dict[str, Any]) -> int:
        return _size({**signed, "msg_type": "interactive", "card": card})

    card = fit_card(
        message, limit=BODY_LIMIT_BYTES, size_of=request_size, keywords=settings.keywords
    )
    return {**signed, "msg_type": "interactive", "card": card}


def classify_answer(
    response: VendorResponse, settings: FeishuBotSettings | None = None, warning: str | None = None
) -> Outcome:
    """Read Feishu's answer by its code (HTTP 200 carries errors too), current or legacy shape."""
    data = response.json()
    status = response.status
    code: Any = None
    message = ""
    if isinstance(data, dict):
        code = data.get("code", data.get("StatusCode"))
        message = str(data.get("msg", data.get("StatusMessage", "")) or "")
    if isinstance(code, str) and code.lstrip("-").isdigit():
        code = int(code)
    if not isinstance(code, int) or isinstance(code, bool):
        excerpt = response.text(200).strip()
        if status >= 500 or status == 429:
            return Outcome.retry(
                f"the bot's address answered HTTP {status} without a Feishu code; will retry",
                status_code=status,
            )
        return Outcome.failed(
            f"the answer (HTTP {status}: {excerpt!r}) is not Feishu's: check that webhook_url is "
            "the bot's webhook URL, or that the proxy there passes Feishu's answer through",
            status_code=status,
        )
    if code == 0:
        return Outcome.delivered(
            status_code=status, vendor_code="0", vendor_message=message, warning=warning
        )
    table = ERRORS
    if code == 9499 and "too many" in message.lower():
        table = {9499: THROTTLED_9499}
    return vendor_outcome(
        code,
        message,
        table,
        status_code=status,
        secret_hint=_secret_hint(settings),
        keyword_hint=_keyword_hint(settings),
    )


def _secret_hint(settings: FeishuBotSettings | None) -> str:
    if settings is None:
        return "check the channel's secret against the bot's, and this server's clock"
    if settings.secret and settings.secret.get_secret_value():
        return (
            "the channel's secret differs from the bot's (群机器人 > 安全设置 > 签名校验): copy it "
            "again; or this server's clock is off by more than 1 hour: check its time sync"
        )
    return (
        "the bot has signature verification (签名校验) on but the channel has no secret: copy "
        "the bot's secret into the channel's secret setting"
    )


def _keyword_hint(settings: FeishuBotSettings | None) -> str:
    if settings is not None and settings.keywords:
        named = ", ".join(repr(k) for k in settings.keywords)
        return (
            f"msgpush put one of the channel's keywords ({named}) in the card, so the bot's "
            "custom keywords (安全设置 > 自定义关键词) differ: set the channel's keywords to them"
        )
    return (
        "the bot has custom keywords (安全设置 > 自定义关键词) and the channel has none: set the "
        "channel's keywords to the bot's, and msgpush adds one to every message lacking them"
    )


def _mention_warning(message: Message) -> str | None:
    names = unpingable(message.mentions)
    if not names:
        return None
    return (
        "delivered, but a Feishu bot can only @ open_ids or user_ids; these were named as plain "
        f"text without a ping: {', '.join(names[:10])}" + (" …" if len(names) > 10 else "")
    )


class FeishuBotChannel(ChannelType):
    type_id = "feishu_bot"
    name = "Feishu / Lark Bot"
    description = (
        "A Feishu or Lark group's custom bot (自定义机器人): cards coloured by level, with "
        "fields, buttons and @mentions; signature and keywords supported."
    )
    description_zh = (
        "飞书或 Lark 群的自定义机器人：按级别着色的卡片，含字段、按钮和 @提醒"
        "；支持签名校验和自定义关键词。"
    )
    settings_model = FeishuBotSettings
    formats = ("markdown", "text")
    default_limits = RateLimit(per_second=FEISHU_BOT_PER_SECOND, per_minute=FEISHU_BOT_PER_MINUTE)
    size_limits: ClassVar[dict[str, int]] = {"body": BODY_LIMIT_BYTES}

    def render(
        self, message: Message, settings: FeishuBotSettings, ctx: SendContext
    ) -> VendorRequest:
        payload = payload_for(message, settings)
        ctx.secrets.add_one_off(payload.get("sign"))
        return VendorRequest.json(
            settings.webhook_url.get_secret_value(), payload, timeout_s=REQUEST_TIMEOUT_S
        )

    def classify(self, response: VendorResponse) -> Outcome:  # pragma: no cover - see send
        return classify_answer(response)

    async def send(self, message: Message, settings: Any, ctx: SendContext) -> Outcome:
        warning = _mention_warning(message)
        return await ctx.exchange(
            self.render(message, settings, ctx),
            lambda response: classify_answer(response, settings, warning),
        )


CHANNEL_TYPE = FeishuBotChannel()
