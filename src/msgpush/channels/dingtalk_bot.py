"""DingTalk custom robot (自定义机器人) webhook: markdown, ActionCard or text; 加签, keywords, @mentions."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
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
    secret_field,
    vendor_outcome,
)
from msgpush.channels.dingtalk_common import (
    fit,
    gateway_block,
    keep_line_breaks,
    list_title,
    markdown_text,
)
from msgpush.channels.render import ensure_keyword, text_body
from msgpush.channels.signing import hmac_sha256_b64
from msgpush.ids import now_ms
from msgpush.message import Format, Link, Mentions, Message

# docs/vendors/dingtalk.md#custom-robot: the webhook every robot is given; other hosts are
# deployments or proxies
OFFICIAL_HOST = "oapi.dingtalk.com"
SEND_PATH = "/robot/send"
# docs/vendors/dingtalk.md#rate-limits: 20 messages a minute per robot, then the robot is throttled
# 10 minutes
PER_MINUTE = 20
THROTTLE_S = 600.0
# docs/vendors/dingtalk.md#custom-robot: 460101 "message too long, exceed 20000 bytes"
BODY_LIMIT_BYTES = 20_000
# ours: the cap rests on one observed log, so bodies stay a little under it
BODY_MARGIN_BYTES = 100
# docs/vendors/dingtalk.md#custom-robot: at most 50 @ targets per message
MAX_MENTIONS = 50
# docs/vendors/dingtalk.md#custom-robot: at most 10 keywords per robot
MAX_KEYWORDS = 10
# docs/vendors/dingtalk.md#robot-error-codes: all security failures share this code; errmsg says
# which failed
SECURITY_CODE = 310000
JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}

WHERE_ROBOT = "the group's Group Settings (群设置) > Bots (机器人) > the robot"

# docs/vendors/dingtalk.md#robot-error-codes: 410100 (doc), 130101 and 660026 (observed): the robot
# is throttled
THROTTLED = VendorCode(
    "retry",
    "DingTalk throttled the robot ({message}): more than 20 messages reached it within a minute, "
    "so it is blocked for 10 minutes. msgpush keeps this channel under 20 a minute, so another "
    "system probably posts through the same robot (give msgpush a robot of its own). Retrying "
    "after the 10 minutes",
    retry_after_s=THROTTLE_S,
)
# docs/vendors/dingtalk.md#robot-error-codes: 300005 (live) and 400101 (doc) both mean an unknown
# access_token
UNKNOWN_TOKEN = VendorCode(
    "failed",
    "DingTalk does not know the access_token in webhook_url ({message}): the robot was removed "
    f"or the URL was copied incompletely; copy the Webhook again from {WHERE_ROBOT} and update "
    "webhook_url",
)
# docs/vendors/dingtalk.md#robot-error-codes (every code but 0 and 310000, which are read
# separately)
ERRORS: dict[int | str, VendorCode] = {
    300005: UNKNOWN_TOKEN,
    400101: UNKNOWN_TOKEN,
    40035: VendorCode(
        "failed",
        "DingTalk says a required parameter is missing ({message}): webhook_url must end in "
        "?access_token=… exactly as DingTalk shows it; if it points at a proxy, make the proxy "
        "pass the query string and the JSON body through unchanged",
    ),
    400102: VendorCode(
        "failed",
        f"the robot is disabled ({{message}}): a group admin must enable it again in {WHERE_ROBOT}; "
        "then resend",
    ),
    400106: VendorCode(
        "failed",
        "the robot no longer exists ({message}): it was removed from the group. Add a custom "
        "robot again and put its Webhook in webhook_url",
    ),
    400013: VendorCode(
        "failed",
        "the robot's group was dissolved ({message}): point webhook_url at a robot in a group "
        "that exists",
    ),
    400105: VendorCode(
        "failed",
        "DingTalk does not accept this message type ({message}); a private deployment or proxy "
        "behind webhook_url may support fewer types: try sending with format text",
    ),
    460101: VendorCode(
        "failed",
        "DingTalk rejected the body as too large ({message}). msgpush keeps bodies under "
        f"{BODY_LIMIT_BYTES:,} bytes, so a proxy behind webhook_url may add to the body or "
        "DingTalk's cap has changed; shorten the message and resend",
    ),
    430101: VendorCode(
        "failed",
        "DingTalk's content check found a link it considers unsafe ({message}): remove or "
        "replace the message's external links and resend",
    ),
    430102: VendorCode(
        "failed",
        "DingTalk's content check blocked the text ({message}): reword the message and resend",
    ),
    430103: VendorCode(
        "failed",
        "DingTalk's content check blocked an image ({message}): remove the image and resend",
    ),
    430104: VendorCode(
        "failed",
        "DingTalk's content check blocked the message ({message}): change its content and resend",
    ),
    43004: VendorCode(
        "failed",
        "DingTalk did not accept the Content-Type ({message}): msgpush sends application/json, "
        "so a proxy behind webhook_url changes it; make the proxy pass headers through",
    ),
    43002: VendorCode(
        "failed",
        "DingTalk received a GET instead of a POST ({message}): a redirect or proxy behind "
        "webhook_url turned the POST into a GET; point webhook_url at …/robot/send directly",
    ),
    410100: THROTTLED,
    130101: THROTTLED,
    660026: THROTTLED,
    -1: VendorCode("retry", "DingTalk is busy ({message}); retrying with backoff"),
}

SECURITY = "Security Settings (安全设置)"
# 310000, by which security check failed (docs/vendors/dingtalk.md#robot-error-codes, and errmsg
# variants users saw)
SECURITY_ERRORS = {
    "keywords": VendorCode(
        "failed",
        "DingTalk rejected the message for lacking a security keyword ({message}). Every message "
        "from this channel contains one of its keywords ({keywords}), so the robot's Custom "
        "Keywords (自定义关键词) differ: set keywords to exactly the robot's, as listed under "
        f"{WHERE_ROBOT} > {SECURITY}",
    ),
    "no_keywords": VendorCode(
        "failed",
        "DingTalk rejected the message for lacking a security keyword ({message}): the robot "
        "has Custom Keywords (自定义关键词) and this channel's keywords setting is empty. Add the "
        f"robot's keywords ({WHERE_ROBOT} > {SECURITY}) to keywords; msgpush then makes sure "
        "every message contains one",
    ),
    "sign": VendorCode(
        "failed",
        "DingTalk says the signature does not match ({message}): the channel's secret is not the "
        "robot's current Additional Signature (加签) secret (resetting it in DingTalk changes "
        "it), or this server's clock is more than an hour off. Copy the SEC… string again from "
        f"{WHERE_ROBOT} > {SECURITY} into secret, and check the clock (NTP)",
    ),
    "no_secret": VendorCode(
        "failed",
        "DingTalk requires a signature ({message}): the robot has Additional Signature (加签) on "
        "and this channel has no secret. Copy the SEC… string from "
        f"{WHERE_ROBOT} > {SECURITY} into secret",
    ),
    "timestamp": VendorCode(
        "failed",
        "DingTalk rejected the signing timestamp ({message}): this server's clock differs from "
        "DingTalk's by more than an hour. Synchronise it (NTP) and resend",
    ),
    "ip": VendorCode(
        "failed",
        "DingTalk refused the request from IP {ip} ({message}): the robot's IP Address (Range) "
        "(IP地址（段）) allowlist does not include msgpush's public address. Add {ip} (or its "
        f"range) under {WHERE_ROBOT} > {SECURITY}, or send through an allowed address",
    ),
    "other": VendorCode(
        "failed",
        "DingTalk's security check failed ({message}): compare the robot's "
        f"{SECURITY} (keywords, 加签, IP range) with the channel's keywords and secret",
    ),
}
_IP_IN_MESSAGE = re.compile(r"ip\s+([0-9A-Fa-f.:]+)\s+not in whitelist", re.IGNORECASE)


class DingTalkBotSettings(ChannelSettings):
    webhook_url: SecretStr = secret_field(
        json_schema_extra={
            "x-title-zh": "Webhook 地址",
            "x-description-zh": (
                "钉钉显示的机器人 Webhook：https://oapi.dingtalk.com/robot/send?access_token=…"
                "（群设置 > 机器人 > 该机器人）。私有化部署或代理可用带 access_token 的其他 "
                "http(s) 地址。加密保存，不再显示。"
            ),
        },
        title="Webhook URL",
        description=(
            "The robot's Webhook as DingTalk shows it: "
            "https://oapi.dingtalk.com/robot/send?access_token=… (Group Settings > Bots > the "
            "robot). A private deployment or proxy may use another http(s) address with an "
            "access_token. Stored encrypted; never shown again."
        ),
    )
    secret: SecretStr | None = secret_field(
        json_schema_extra={
            "x-title-zh": "加签密钥",
            "x-description-zh": (
                "机器人安全设置 > 加签 中显示的 SEC… 字符串（开启加签时填写）。msgpush 会用它为每个"
                "请求签名。"
            ),
        },
        default=None,
        title="Signing secret (加签)",
        description=(
            "The SEC… string shown under the robot's Security Settings > Additional Signature "
            "(加签), when that option is on. msgpush signs every request with it."
        ),
    )
    keywords: list[str] = Field(
        json_schema_extra={
            "x-title-zh": "自定义关键词",
            "x-description-zh": (
                "机器人安全设置中的自定义关键词（开启时填写）。消息不含任何关键词时会自动加上第一个，"
                "以免被钉钉拒收。"
            ),
        },
        default_factory=list,
        max_length=MAX_KEYWORDS,
        title="Keywords",
        description=(
            "The robot's Custom Keywords (自定义关键词), when that option is on. A message lacking "
            "all of them gets the first one added, so DingTalk does not reject it."
        ),
    )

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value().strip()
        problem = webhook_url_problem(url)
        if problem:
            raise ValueError(problem)
        return SecretStr(url)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        secret = value.get_secret_value().strip()
        if any(c.isspace() for c in secret):
            raise ValueError("the secret contains spaces; copy the SEC… string again, whole")
        return SecretStr(secret)

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: list[str]) -> list[str]:
        keywords = [keyword.strip() for keyword in value]
        if any(not keyword for keyword in keywords):
            raise ValueError("an empty keyword matches nothing; remove it")
        return list(dict.fromkeys(keywords))


def webhook_url_problem(url: str) -> str | None:
    """What is wrong with a webhook URL, in words that say how to fix it (never echoing it)."""
    example = f"https://{OFFICIAL_HOST}{SEND_PATH}?access_token=…"
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return f"not a URL; paste the robot's whole Webhook, like {example}"
    if parts.scheme not in ("http", "https") or not host:
        if re.fullmatch(r"[0-9A-Za-z_-]{16,}", url):
            return f"this looks like the access_token alone; paste the whole Webhook: {example}"
        return f"must be an http(s) URL like {example}"
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if not query.get("access_token"):
        return f"has no access_token; copy the whole Webhook, like {example}"
    if "timestamp" in query or "sign" in query:
        return (
            "carries timestamp/sign from an earlier signed request, which expire within an hour: "
            "remove them and put the SEC… string in secret; msgpush signs every request"
        )
    if host == OFFICIAL_HOST and (parts.scheme != "https" or parts.path != SEND_PATH):
        return f"a DingTalk robot Webhook has the form {example}"
    return None


def access_token(url: str) -> str:
    try:
        return dict(parse_qsl(urlsplit(url).query)).get("access_token", "")
    except ValueError:
        return ""


def signed_url(settings: DingTalkBotSettings, now_ms: int) -> str:
    """The webhook URL, with ``timestamp`` (ms) and ``sign`` in the query when a secret is set."""
    url = settings.webhook_url.get_secret_value()
    if settings.secret is None:
        return url
    secret = settings.secret.get_secret_value()
    timestamp = str(now_ms)
    sign = hmac_sha256_b64(secret.encode(), f"{timestamp}\n{secret}".encode())
    parts = urlsplit(url)
    extra = urlencode({"timestamp": timestamp, "sign": sign})  # the sign URL-encoded once
    return urlunsplit(parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra))


# -- rendering -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    payload: dict[str, Any]
    body: bytes
    warnings: tuple[str, ...] = ()


def mention_targets(mentions: Mentions) -> tuple[list[str], list[str], list[str]]:
    """(mobiles, user ids, warnings): the people DingTalk can @, at most 50 of them."""
    mobiles = _unique(mentions.mobiles)
    user_ids = _unique(mentions.user_ids)
    warnings = []
    extra = len(mobiles) + len(user_ids) - MAX_MENTIONS
    if extra > 0:
        mobiles = mobiles[:MAX_MENTIONS]
        user_ids = user_ids[: MAX_MENTIONS - len(mobiles)]
        warnings.append(
            f"DingTalk @s at most {MAX_MENTIONS} people in one message; {extra} more were "
            "not mentioned"
        )
    if mentions.emails:
        warnings.append(
            "DingTalk robots cannot @ by email, so mentions.emails were left out; "
            "use mobiles or user_ids"
        )
    return mobiles, user_ids, warnings


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v.strip() for v in values if v.strip()))


def compose(message: Message, settings: DingTalkBotSettings, msg_uuid: str) -> Rendered:
    """The request body for one message, within DingTalk's size cap and keyword rule."""
    mobiles, user_ids, warnings = mention_targets(message.mentions)
    at_all = message.mentions.all
    pings = bool(mobiles or user_ids or at_all)
    if message.format is Format.text:
        kind = "text"
    elif message.links and not pings:
        kind = "actionCard"
    else:
        kind = "markdown"
    keywords = settings.keywords
    # an @ highlights only when the text carries it too (docs/vendors/dingtalk.md#custom-robot)
    mention_line = " ".join(f"@{target}" for target in [*mobiles, *user_ids])
    at = {"atMobiles": mobiles, "atUserIds": user_ids, "isAtAll": at_all} if pings else None
    title = ensure_keyword(list_title(message), keywords)

    def body_text(content: str) -> str:
        if kind == "text":
            copy = message.model_copy(update={"content": content})
            return text_body(copy)
        return markdown_text(message, content, with_links=kind == "markdown")

    def finish(text: str) -> str:
        if mention_line:
            text = f"{text}\n\n{mention_line}" if text else mention_line
        if kind == "text":
            return ensure_keyword(text, keywords)
        if ensure_keyword(text, keywords) != text:
            text = f"[{keywords[0]}]\n\n{text}"  # a line of its own keeps a heading below it
        return keep_line_breaks(text)

    def encode(text: str) -> bytes:
        return orjson.dumps(_payload(kind, title, finish(text), message.links, at, msg_uuid))

    budget = BODY_LIMIT_BYTES - BODY_MARGIN_BYTES
    # cut the content first, so title, fields, buttons and mentions survive a long message
    content, body = fit(lambda c: encode(body_text(c)), message.content, budget)
    if len(body) > budget:
        _, body = fit(encode, body_text(content), budget)
    return Rendered(orjson.loads(body), body, tuple(warnings))


def _payload(
    kind: str,
    title: str,
    text: str,
    links: list[Link],
    at: dict[str, Any] | None,
    msg_uuid: str,
) -> dict[str, Any]:
    data: dict[str, Any]
    if kind == "text":
        data = {"msgtype": "text", "text": {"content": text}}
    elif kind == "markdown":
        data = {"msgtype": "markdown", "markdown": {"title": title, "text": text}}
    else:
        card: dict[str, Any] = {"title": title, "text": text, "btnOrientation": "0"}
        if len(links) == 1:
            card["singleTitle"] = links[0].title
            card["singleURL"] = str(links[0].url)
        else:
            card["btns"] = [{"title": link.title, "actionURL": str(link.url)} for link in links]
        data = {"msgtype": "actionCard", "actionCard": card}
    if at is not None:
        data["at"] = at
    # DingTalk's idempotency key: a retry after a lost answer is not posted twice
    data["msgUuid"] = msg_uuid
    return data


# -- reading the answer ----------------------------------------------------------------------


def classify_answer(response: VendorResponse, settings: DingTalkBotSettings | None) -> Outcome:
    """Classify on DingTalk's errcode (it answers HTTP 200 for errors too), never on the status."""
    data = response.json()
    raw = data.get("errcode") if isinstance(data, dict) else None
    if raw is None:
        return _without_errcode(response, data)
    code: int | str
    try:
        code = int(raw)  # the doc shows "0" as a string; live answers use numbers
    except (TypeError, ValueError):
        code = str(raw)
    message = str(data.get("errmsg", ""))
    if code == 0:
        return Outcome.delivered(
            status_code=response.status, vendor_code="0", vendor_message=message
        )
    if code == SECURITY_CODE:
        entry, names = _security_entry(message, settings)
        return vendor_outcome(code, message, {code: entry}, status_code=response.status, **names)
    return vendor_outcome(code, message, ERRORS, status_code=response.status)


def _security_entry(
    message: str, settings: DingTalkBotSettings | None
) -> tuple[VendorCode, dict[str, str]]:
    text = message.lower()
    keywords = settings.keywords if settings else []
    has_secret = settings is not None and settings.secret is not None
    if "keyword" in text or "关键词" in text:
        names = {"keywords": ", ".join(repr(k) for k in keywords)}
        return SECURITY_ERRORS["keywords" if keywords else "no_keywords"], names
    if "sign" in text or "签名" in text:
        return SECURITY_ERRORS["sign" if has_secret else "no_secret"], {}
    if "timestamp" in text or "时间戳" in text:
        return SECURITY_ERRORS["timestamp" if has_secret else "no_secret"], {}
    found = _IP_IN_MESSAGE.search(message)
    if found or "whitelist" in text or "白名单" in text:
        return SECURITY_ERRORS["ip"], {"ip": found.group(1) if found else "(not stated)"}
    return SECURITY_ERRORS["other"], {}


def _without_errcode(response: VendorResponse, data: Any) -> Outcome:
    status = response.status
    blocked = gateway_block(data, status)
    if blocked is not None:
        return blocked
    excerpt = response.text(200).strip()
    if status in (408, 429) or status >= 500:
        return Outcome.retry(
            f"webhook_url answered HTTP {status} without a DingTalk errcode; will retry",
            status_code=status,
        )
    return Outcome.failed(
        f"webhook_url answered HTTP {status} without a DingTalk errcode ({excerpt or 'empty'}): "
        f"check that it is the robot's Webhook ({SEND_PATH}?access_token=…) and that a proxy "
        "in between passes DingTalk's answer through",
        status_code=status,
    )


# -- the channel type ------------------------------------------------------------------------


class DingTalkBotChannel(ChannelType):
    type_id = "dingtalk_bot"
    name = "DingTalk Bot"
    description = (
        "A DingTalk group's custom robot (自定义机器人): markdown or an ActionCard with buttons, "
        "@mentions that ping, signing (加签) and security keywords."
    )
    description_zh = (
        "钉钉群的自定义机器人：markdown 或带按钮的 ActionCard，@提醒，支持加签和自定义关键词。"
    )
    settings_model = DingTalkBotSettings
    formats = ("markdown", "text")
    default_limits = RateLimit(per_minute=PER_MINUTE)
    size_limits: ClassVar[dict[str, int]] = {"body": BODY_LIMIT_BYTES}

    @classmethod
    def secret_values(cls, settings: ChannelSettings) -> list[str]:
        values = super().secret_values(settings)
        if isinstance(settings, DingTalkBotSettings):
            token = access_token(settings.webhook_url.get_secret_value())
            if len(token) >= 4:  # scrubbed on its own too, should DingTalk ever echo it
                values.append(token)
        return values

    def render(
        self, message: Message, settings: DingTalkBotSettings, ctx: SendContext
    ) -> VendorRequest:
        return self._prepare(message, settings, ctx)[0]

    def classify(self, response: VendorResponse) -> Outcome:
        return classify_answer(response, None)

    async def send(self, message: Message, settings: Any, ctx: SendContext) -> Outcome:
        request, warnings = self._prepare(message, settings, ctx)
        outcome = await ctx.exchange(request, lambda answer: classify_answer(answer, settings))
        if warnings:
            notes = [outcome.warning, *warnings] if outcome.warning else warnings
            outcome = replace(outcome, warning="; ".join(notes))
        return outcome

    def _prepare(
        self, message: Message, settings: DingTalkBotSettings, ctx: SendContext
    ) -> tuple[VendorRequest, tuple[str, ...]]:
        rendered = compose(message, settings, ctx.delivery_id)
        # signed afresh on every attempt: DingTalk refuses timestamps over an hour old
        url = signed_url(settings, now_ms())
        ctx.secrets.add_one_off(
            *(value for name, value in parse_qsl(urlsplit(url).query) if name == "sign")
        )
        return VendorRequest("POST", url, dict(JSON_HEADERS), rendered.body), rendered.warnings


CHANNEL_TYPE = DingTalkBotChannel()
