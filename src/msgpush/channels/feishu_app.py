"""Feishu / Lark self-built app (企业自建应用): interactive cards or text to users and group chats
through im/v1/messages, one request per recipient, with the app's cached tenant_access_token."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import Field, SecretStr, ValidationInfo, field_validator

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
from msgpush.channels.feishu_bot import text_mentions
from msgpush.channels.feishu_card import fit_card, unpingable
from msgpush.channels.render import cut_bytes, text_body, utf8_len
from msgpush.message import Format, Message

# Feishu (China) and Lark (international) serve identical paths (docs/vendors/feishu.md#hosts).
FEISHU_API_BASE = "https://open.feishu.cn"
LARK_API_BASE = "https://open.larksuite.com"
OFFICIAL_HOSTS = ("open.feishu.cn", "open.larksuite.com")
API_PREFIX = "/open-apis"
# docs/vendors/feishu.md#access-token and #send-message
TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
SEND_PATH = "/open-apis/im/v1/messages"
# docs/vendors/feishu.md#rate-limits: 50 calls a second and 1000 a minute per app; 5 a second to one
# user, and 5 a second to one group shared by every bot in it.
APP_PER_SECOND = 50
APP_PER_MINUTE = 1000
PER_RECIPIENT_PER_SECOND = 5
# docs/vendors/feishu.md#size-limits: text bodies ≤150 KB, card and post bodies ≤30 KB; read as
# 1000s of bytes, the stricter reading, and applied to the whole request body.
CARD_BODY_MAX_BYTES = 30_000
TEXT_BODY_MAX_BYTES = 150_000
# docs/vendors/feishu.md#send-message: uuid ≤50 characters; one uuid succeeds at most once an hour.
UUID_MAX_CHARS = 50
UUID_HASH_CHARS = 16
# One request per recipient: a delivery to more ids than the app's per-second allowance would
# draw 99991400 on every attempt; msgpush's own cap keeps a delivery within one second of it.
MAX_RECIPIENTS = APP_PER_SECOND
# 230020 is the 5-a-second limit of one user or group: a second is enough.
FREQUENCY_RETRY_S = 1.0
# x-ogw-ratelimit-reset names seconds within the minute window; more is a broken header.
RESET_MAX_S = 60.0
REQUEST_TIMEOUT_S = 10.0
TOKEN_STEP = "Credentials check failed (tenant_access_token): "
SEND_STEP = "Sending failed: "
# docs/vendors/feishu.md#error-codes: 230001's msg carries the detail after "ext=".
EXT_DETAIL = re.compile(r"ext=(.*)$", re.DOTALL)
# 99991672's msg lists the scopes and links to the console page that grants them (peers' logs:
# "Access denied. One of the following scopes is required: [im:message:send, im:message, …]").
SCOPES = re.compile(r"\[([a-z0-9_:.\-, ]+)\]")
SCOPE_LINK = re.compile(r"https://[^\s，。]+?/auth\?[^\s，。]+")
# Feishu's msg is often English followed by a Chinese rendering of the same.
CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")
SEND_SCOPE = "im:message:send_as_bot"

ReceiveIdType = Literal["open_id", "user_id", "union_id", "email", "chat_id"]
# docs/vendors/feishu.md#send-message: ou_… open_id, on_… union_id, oc_… chat_id; a user_id is
# whatever the tenant's admin assigned, so it is what is left.
ID_PREFIXES: dict[str, ReceiveIdType] = {"ou_": "open_id", "on_": "union_id", "oc_": "chat_id"}
BAD_ID = re.compile(r"[\s\"<>]")

CONSOLE = "the developer console (开发者后台: open.feishu.cn/app, Lark: open.larksuite.com/app)"
PUBLISH = (
    "then create and publish a new version (Version Management & Release 版本管理与发布) for it to "
    "take effect"
)
AVAILABILITY_FIX = (
    f"in {CONSOLE} > the app > Version Management & Release (版本管理与发布), publish a version "
    "whose Availability (可用范围) includes them, and have the tenant admin approve it"
)

# tenant_access_token/internal (docs/vendors/feishu.md#error-codes)
TOKEN_ERRORS: dict[int | str, VendorCode] = {
    10003: VendorCode(
        "failed",
        "Feishu does not know app_id {app_id} ({message}): copy the App ID (cli_…) from "
        f"{CONSOLE} > the app > Credentials & Basic Info (凭证与基础信息); a Lark app needs api_base "
        f"{LARK_API_BASE}",
    ),
    10014: VendorCode(
        "failed",
        "app_secret is wrong ({message}): copy the App Secret of app {app_id} from "
        f"{CONSOLE} > the app > Credentials & Basic Info (凭证与基础信息); a secret that was reset "
        "stops working",
    ),
}
# im/v1/messages (docs/vendors/feishu.md#error-codes)
SEND_ERRORS: dict[int | str, VendorCode] = {
    230001: VendorCode(
        "failed",
        "Feishu refused a parameter for {target} ({message}): {param_hint}",
    ),
    230002: VendorCode(
        "failed",
        "the app's bot is not in chat {receive_id} ({message}): add it in the group's settings "
        "(Settings 设置 > Group Bots 群机器人 > Add Bot 添加机器人), or remove the chat",
    ),
    230006: VendorCode(
        "failed",
        f"the app's bot ability (机器人能力) is off ({{message}}): in {CONSOLE} > the app > Add "
        f"Features (添加应用能力) add Bot (机器人), {PUBLISH}",
    ),
    230013: VendorCode(
        "failed",
        "{target} is outside the app's availability ({message}): " + AVAILABILITY_FIX,
    ),
    230018: VendorCode(
        "failed",
        "the settings of chat {receive_id} do not let the bot post ({message}), e.g. only the "
        "owner and admins may speak (仅群主和群管理员可发言): allow the bot, or change the setting",
    ),
    230020: VendorCode(
        "retry",
        "{target} hit Feishu's frequency limit ({message}; 5 a second to one user, and to one "
        "group shared by every bot in it): another sender is busy there too; will retry",
        retry_after_s=FREQUENCY_RETRY_S,
    ),
    230022: VendorCode(
        "failed",
        "Feishu's content filter found sensitive information in the message ({message}); "
        "change its title or content",
    ),
    230025: VendorCode(
        "failed",
        "Feishu found the message too long ({message}). msgpush keeps cards under 30 KB and text "
        "under 150 KB, so the server behind api_base ({api_base}) allows less or alters the "
        "request; otherwise report this attempt's request as a msgpush bug",
    ),
    230028: VendorCode(
        "failed",
        "the message did not pass the tenant's audit (DLP 数据防泄漏, {message}): ask the Feishu "
        "admin which policy blocked it, and change the message",
    ),
    230035: VendorCode(
        "failed",
        "Feishu denied sending to {target} ({message}): the bot is muted there, or the tenant's "
        "communication controls forbid it; ask the Feishu admin",
    ),
    230038: VendorCode(
        "failed",
        "{target} belongs to another tenant, and an app may not message people of other tenants "
        "one to one ({message}): remove them, or reach them through a shared group (chat_id)",
    ),
    230099: VendorCode(
        "failed",
        "Feishu could not build the card ({message}). If it names an invalid user resource "
        "(at/person), an id in mentions.user_ids is not a user of this tenant: use open_ids "
        "(ou_…) of this app or user_ids; otherwise report this attempt's request as a msgpush bug",
    ),
    232009: VendorCode(
        "failed",
        "chat {receive_id} was dissolved ({message}): remove it from receive_ids",
    ),
    99991661: VendorCode(
        "refresh_token",
        "Feishu received no access token ({message}); msgpush always sends one and repeated "
        "the attempt with a new one; if this repeats, the server behind api_base ({api_base}) "
        "drops the Authorization header",
    ),
    99991663: VendorCode(
        "refresh_token",
        "Feishu refused the tenant_access_token ({message}); msgpush fetched a new one and "
        "repeated the attempt",
    ),
    99991664: VendorCode(
        "refresh_token",
        "Feishu refused the app access token ({message}); msgpush fetched a new one and "
        "repeated the attempt",
    ),
    99991671: VendorCode(
        "refresh_token",
        "Feishu could not read the access token ({message}); msgpush fetched a new one and "
        "repeated the attempt",
    ),
    99991677: VendorCode(
        "refresh_token",
        "the tenant_access_token expired ({message}); msgpush fetched a new one and repeated "
        "the attempt",
    ),
    99991668: VendorCode(
        "refresh_token",
        "Feishu says the access token is invalid ({message}); msgpush fetched a new one and "
        "repeated the attempt",
    ),
    99991672: VendorCode(
        "failed",
        f"the app may not send messages ({{message}}): in {CONSOLE} > the app > Permissions & "
        "Scopes (权限管理) {scope_fix}, " + PUBLISH,
    ),
}
# Answers that concern one recipient only: the other recipients still get the message.
RECIPIENT_CODES = {230002, 230013, 230018, 230035, 230038, 232009}
RECIPIENT_REASONS: dict[int, str] = {
    230001: "not a valid id of that type",
    230002: "the bot is not in this group",
    230013: "outside the app's availability (可用范围)",
    230018: "the group's settings do not let the bot post",
    230035: "sending there is denied (muted, or communication controls)",
    230038: "another tenant",
    232009: "the group was dissolved",
}


# -- settings ------------------------------------------------------------------------------------


def id_type_of(receive_id: str) -> ReceiveIdType:
    """The id type an id's form reveals: ou_/on_/oc_ prefixes, an email, else a user_id."""
    for prefix, kind in ID_PREFIXES.items():
        if receive_id.startswith(prefix):
            return kind
    return "email" if "@" in receive_id else "user_id"


def _id_list(value: Any) -> Any:
    if isinstance(value, str):
        value = re.split(r"[,|\s]+", value)
    if isinstance(value, list):
        return [str(item).strip() for item in value if str(item).strip()]
    return value


class FeishuAppSettings(ChannelSettings):
    app_id: str = Field(
        json_schema_extra={
            "x-title-zh": "App ID",
            "x-description-zh": "应用的 App ID（cli_…）：开发者后台 > 该应用 > 凭证与基础信息。",
        },
        title="App ID",
        description=(
            "The app's App ID (cli_…): developer console > the app > Credentials & Basic Info "
            "(凭证与基础信息)."
        ),
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_\-]+$",
    )
    app_secret: SecretStr = secret_field(
        json_schema_extra={
            "x-title-zh": "App Secret",
            "x-description-zh": "应用的 App Secret，与 App ID 在同一页面。加密保存，读回时打码。",
        },
        title="App Secret",
        description=(
            "The app's App Secret, on the same page as the App ID. Stored encrypted, read back "
            "masked."
        ),
        min_length=1,
    )
    receive_id_type: ReceiveIdType = Field(
        json_schema_extra={
            "x-title-zh": "接收者 ID 类型",
            "x-description-zh": (
                "接收者 ID 的类型：open_id（ou_…，每个应用不同）、user_id、union_id（on_…）、email，"
                "或 chat_id（oc_…，机器人所在的群）。"
            ),
        },
        default="open_id",
        title="Recipient id type",
        description=(
            "What receive_ids are: open_id (ou_…, differs per app), user_id, union_id (on_…), "
            "email, or chat_id (oc_…, a group the bot is in)."
        ),
    )
    receive_ids: list[str] = Field(
        json_schema_extra={
            "x-title-zh": "接收者",
            "x-description-zh": (
                f"默认接收者，类型均为接收者 ID 类型；每个一次请求，最多 {MAX_RECIPIENTS} 个。"
                "消息自带的接收者会覆盖它们。"
            ),
        },
        default_factory=list,
        title="Recipients",
        description=(
            f"Default recipients, all of receive_id_type; one request each, at most "
            f"{MAX_RECIPIENTS}. A message's recipients override them."
        ),
        max_length=MAX_RECIPIENTS,
    )
    api_base: str = Field(
        json_schema_extra={
            "x-title-zh": "API 地址",
            "x-description-zh": (
                f"飞书用 {FEISHU_API_BASE}，Lark 用 {LARK_API_BASE}，或填私有化部署、代理的地址。"
            ),
        },
        default=FEISHU_API_BASE,
        title="API base",
        description=(
            f"{FEISHU_API_BASE} for Feishu, {LARK_API_BASE} for Lark, or a private deployment or "
            "proxy."
        ),
        max_length=500,
    )

    @field_validator("app_id", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator("app_secret", mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return value.strip() if isinstance(value, str) else value

    @field_validator("receive_ids", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _id_list(value)

    @field_validator("receive_ids")
    @classmethod
    def _ids(cls, value: list[str], info: ValidationInfo) -> list[str]:
        kind = info.data.get("receive_id_type")
        for item in value:
            if BAD_ID.search(item) or len(item) > 254:
                raise ValueError(f"{item!r} is not a Feishu id (no spaces, quotes or <>)")
            seen = id_type_of(item)
            if kind is not None and seen != kind:
                raise ValueError(
                    f"{item!r} looks like a {seen} but receive_id_type is {kind}: set "
                    f"receive_id_type to {seen}, or list {kind}s only"
                )
        return list(dict.fromkeys(value))

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, value: str) -> str:
        value = value.strip().rstrip("/").removesuffix(API_PREFIX)
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"api_base must be an http(s) address like {FEISHU_API_BASE}")
        if parts.query or parts.fragment:
            raise ValueError("api_base takes no query string or fragment")
        if parts.hostname in OFFICIAL_HOSTS and parts.scheme != "https":
            raise ValueError(f"use https://{parts.hostname}: http would expose the app secret")
        return value


# -- recipients and requests ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One recipient: one im/v1/messages request."""

    id_type: ReceiveIdType
    receive_id: str

    def label(self) -> str:
        return f"{self.id_type} {self.receive_id}"


@dataclass(frozen=True)
class Targets:
    chosen: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def targets(message: Message, settings: FeishuAppSettings) -> Targets:
    """Who gets this message: its own recipients if it names any, else the channel's.

    A message's users go by the type their form shows (ou_ open_id, on_ union_id, an email,
    else user_id; an oc_ id is a chat), its chats as chat_ids. Feishu's im/v1 reaches no
    departments or tags: they are named in the warning.
    """
    chosen = message.recipients
    if chosen is None or not (chosen.users or chosen.departments or chosen.tags or chosen.chats):
        found = [Target(settings.receive_id_type, rid) for rid in settings.receive_ids]
        return Targets(found)
    notes: list[str] = []
    found = []
    bad: list[str] = []
    for rid in (r.strip() for r in chosen.users):
        if not rid or BAD_ID.search(rid):
            bad.append(repr(rid))
        else:
            found.append(Target(id_type_of(rid), rid))
    for rid in (r.strip() for r in chosen.chats):
        if not rid or BAD_ID.search(rid):
            bad.append(repr(rid))
        else:
            found.append(Target("chat_id", rid))
    if bad:
        notes.append("recipients that are not Feishu ids were left out: " + ", ".join(bad))
    unreachable = [f"department {d}" for d in chosen.departments]
    unreachable += [f"tag {t}" for t in chosen.tags]
    if unreachable:
        notes.append(
            "Feishu's im/v1/messages reaches users and group chats only, so these were left out: "
            + _listed(unreachable)
        )
    found = list(dict.fromkeys(found))
    if len(found) > MAX_RECIPIENTS:
        left = found[MAX_RECIPIENTS:]
        notes.append(
            f"a message reaches at most {MAX_RECIPIENTS} recipients (one request each, within "
            "the app's 50 a second); these were left out: "
            + _listed([t.label() for t in left])
            + ". Send them another message, or reach them through a group chat"
        )
        found = found[:MAX_RECIPIENTS]
    return Targets(found, notes)


def _listed(items: list[str], most: int = 10) -> str:
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + more


def dedup_uuid(delivery_id: str, target: Target) -> str:
    """The same on every attempt of a delivery to one recipient, and different for every other
    pair: Feishu delivers one uuid at most once an hour, so a repeat is answered without a
    second notification."""
    digest = hashlib.sha256(f"{target.id_type}\x00{target.receive_id}".encode()).hexdigest()
    head = delivery_id
    if len(head) > UUID_MAX_CHARS - UUID_HASH_CHARS - 1:
        head = hashlib.sha256(delivery_id.encode()).hexdigest()[: UUID_MAX_CHARS - 18]
    return f"{head}-{digest[:UUID_HASH_CHARS]}"


def _size(receive_id: str, msg_type: str, content: dict[str, Any]) -> int:
    """The body's bytes, with ``content`` encoded as the string Feishu wants."""
    body = {
        "receive_id": receive_id,
        "msg_type": msg_type,
        "content": orjson.dumps(content).decode(),
        "uuid": "u" * UUID_MAX_CHARS,
    }
    return len(orjson.dumps(body))


def render_content(message: Message, longest_id: str = "") -> tuple[str, dict[str, Any]]:
    """(msg_type, content): the card the Feishu bot sends too, or text for ``format: text``;
    within the body limit of msg_type for a request to ``longest_id`` with a full uuid."""
    if message.format == Format.text:
        return "text", {"text": fit_text(message, longest_id)}
    card = fit_card(
        message,
        limit=CARD_BODY_MAX_BYTES,
        size_of=lambda candidate: _size(longest_id, "interactive", candidate),
    )
    return "interactive", card


def fit_text(message: Message, longest_id: str = "") -> str:
    """The message as plain text, mentions kept whole, the rest cut to fit 150 KB."""
    full = text_body(message)
    mentions = text_mentions(message.mentions)
    budget = utf8_len(full)
    text = full
    for _ in range(50):
        text = "\n\n".join(part for part in (cut_bytes(full, budget), mentions) if part)
        over = _size(longest_id, "text", {"text": text}) - TEXT_BODY_MAX_BYTES
        if over <= 0:
            break
        budget = max(0, budget - over)
    return text


@dataclass(frozen=True)
class Request:
    target: Target
    body: bytes

    def vendor_request(self, api_base: str, token: str) -> VendorRequest:
        url = f"{api_base}{SEND_PATH}?receive_id_type={self.target.id_type}"
        return VendorRequest(
            "POST",
            url,
            {
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json; charset=utf-8",
            },
            self.body,
            timeout_s=REQUEST_TIMEOUT_S,
        )


def plan(message: Message, settings: FeishuAppSettings, ctx: SendContext) -> list[Request]:
    """One request per recipient, rendered once: the content is the same for all of them, and
    each carries its own uuid."""
    chosen = targets(message, settings).chosen
    if not chosen:
        return []
    longest = max((t.receive_id for t in chosen), key=utf8_len)
    msg_type, content = render_content(message, longest)
    encoded = orjson.dumps(content).decode()
    return [
        Request(
            target,
            orjson.dumps(
                {
                    "receive_id": target.receive_id,
                    "msg_type": msg_type,
                    "content": encoded,
                    "uuid": dedup_uuid(ctx.delivery_id, target),
                }
            ),
        )
        for target in chosen
    ]


# -- the answers ---------------------------------------------------------------------------------


def _code(body: Any) -> int | None:
    if not isinstance(body, dict):
        return None
    code = body.get("code")
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and re.fullmatch(r"-?\d+", code.strip()):
        return int(code)
    return None


def _reset_s(response: VendorResponse) -> float | None:
    """x-ogw-ratelimit-reset: seconds until the app's window has room
    (docs/vendors/feishu.md#rate-limits)."""
    value = response.headers.get("x-ogw-ratelimit-reset", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    if seconds != seconds:  # NaN is not a wait
        return None
    return min(max(0.0, seconds), RESET_MAX_S)


def _not_feishu(response: VendorResponse, api_base: str) -> Outcome:
    status = response.status
    if status == 429:
        return Outcome.retry(
            "the API answered HTTP 429 without a Feishu code; will retry",
            status_code=status,
            retry_after_s=_reset_s(response),
        )
    if status in (408, 425) or status >= 500 or 300 <= status < 400:
        return http_status_outcome(response)
    refused = unauthorized(response, "Feishu")
    if refused is not None:
        return refused
    excerpt = response.text(200).strip()
    detail = f": {excerpt}" if excerpt else ""
    return Outcome.failed(
        f"the answer (HTTP {status}) is not Feishu's code/msg JSON{detail}; check that api_base "
        f"({api_base}) is {FEISHU_API_BASE}, {LARK_API_BASE} or a proxy that passes Feishu's "
        "answers through",
        status_code=status,
    )


def _scope_fix(message: str) -> str:
    """What to grant for 99991672: the send scope, and the alternatives Feishu listed."""
    listed = SCOPES.search(message)
    scopes = [s.strip() for s in listed[1].split(",") if s.strip()] if listed else []
    link = SCOPE_LINK.search(message)
    where = f" (or open {link[0]})" if link else ""
    if scopes and SEND_SCOPE not in scopes:
        return f"grant one of {', '.join(scopes)}{where}"
    others = [s for s in scopes if s != SEND_SCOPE]
    alternatives = f"; any one of {', '.join(scopes)} will do" if others else ""
    return f"grant {SEND_SCOPE} (以应用的身份发消息, Send messages as an app{alternatives}){where}"


def _names(message: str, settings: FeishuAppSettings, target: Target | None) -> dict[str, Any]:
    ext = EXT_DETAIL.search(message)
    detail = ext[1].strip() if ext else ""
    if "receive_id" in detail and target is not None:
        param_hint = (
            f"{target.receive_id!r} is not a valid {target.id_type} for this app: open_ids "
            "(ou_…) differ per app, chat_ids (oc_…) are groups, and the type must match the id"
        )
    else:
        param_hint = (
            "msgpush sends what Feishu documents, so the server behind api_base "
            f"({settings.api_base}) may expect something else; report it with this message"
        )
    return {
        "app_id": settings.app_id,
        "api_base": settings.api_base,
        "receive_id": target.receive_id if target else "?",
        "target": target.label() if target else "the recipient",
        "scope_fix": _scope_fix(message),
        "param_hint": param_hint,
    }


def read_answer(
    response: VendorResponse,
    table: dict[int | str, VendorCode],
    settings: FeishuAppSettings,
    target: Target | None = None,
) -> Outcome:
    """Classify one Feishu answer on its ``code`` (HTTP 400 carries business errors, 429 the
    app's rate limit), never on the HTTP status alone."""
    body = response.json()
    code = _code(body)
    if code is None:
        return _not_feishu(response, settings.api_base)
    message = str(body.get("msg", "") or "")
    if code == 0:
        return Outcome.delivered(
            status_code=response.status, vendor_code="0", vendor_message=message
        )
    vendor = {"status_code": response.status, "vendor_code": str(code), "vendor_message": message}
    if code == 99991400 or response.status == 429:
        reset = _reset_s(response)
        after = f"after {reset:g} s" if reset is not None else "with backoff"
        return Outcome.retry(
            f"Feishu rate-limited the app ({message}; {APP_PER_SECOND} calls a second and "
            f"{APP_PER_MINUTE} a minute per app, shared by every channel and program using app "
            f"{settings.app_id}); will retry {after}",
            retry_after_s=reset,
            **vendor,
        )
    if code in table or response.status >= 500:
        outcome = vendor_outcome(
            code,
            _english(message),
            table,
            status_code=response.status,
            **_names(message, settings, target),
        )
        return replace(outcome, vendor_message=message)
    return Outcome.failed(
        f"Feishu error {code}: {message}. msgpush does not know this code; "
        + _troubleshooter(body, response),
        **vendor,
    )


def _english(message: str) -> str:
    """The msg up to its Chinese rendering, for the diagnosis (vendor_message keeps it all)."""
    found = CJK.search(message)
    head = message[: found.start()].rstrip(" .。:：") if found else message
    return head or message


def _troubleshooter(body: dict[str, Any], response: VendorResponse) -> str:
    error = body.get("error")
    link = error.get("troubleshooter") if isinstance(error, dict) else None
    if isinstance(link, str) and link.startswith("https://"):
        return f"Feishu explains it at {link}"
    log_id = response.headers.get("x-tt-logid")
    where = f" (log_id {log_id})" if log_id else ""
    return f"look it up in Feishu's server error codes{where}"


def read_token(
    response: VendorResponse, settings: FeishuAppSettings
) -> tuple[Outcome, FetchedToken | None]:
    """A tenant_access_token answer: the token and its remaining lifetime, or why there is none."""
    missing = (
        "tenant_access_token answered code 0 without a token; check that api_base "
        f"({settings.api_base}) leads to Feishu"
    )
    outcome = read_answer(response, TOKEN_ERRORS, settings)
    return token_in_answer(outcome, response, "tenant_access_token", "expire", missing)


def _recipient_level(outcome: Outcome) -> bool:
    """A permanent refusal that concerns only this recipient."""
    if outcome.kind != "failed":
        return False
    code = _int(outcome.vendor_code)
    if code == 230001:
        return "receive_id" in (outcome.vendor_message or "")
    return code in RECIPIENT_CODES


@dataclass
class Tally:
    """What happened to each recipient of one attempt (outcomes as read, without the step)."""

    total: int
    delivered: list[Target] = field(default_factory=list)
    refused: list[tuple[Target, Outcome]] = field(default_factory=list)
    waiting: list[tuple[Target, Outcome]] = field(default_factory=list)
    last_ok: Outcome | None = None

    def step(self, target: Target) -> str:
        return f"{SEND_STEP[:-2]} ({target.label()}): " if self.total > 1 else SEND_STEP

    def progress(self) -> str:
        if not self.delivered:
            return ""
        return (
            f". {len(self.delivered)} of {self.total} recipients have it already; a retry "
            "repeats each request with its uuid, which Feishu answers without notifying them again"
        )

    def each(self, outcomes: list[tuple[Target, Outcome]]) -> Outcome:
        """One outcome for several recipients' answers of the same kind."""
        if len(outcomes) == 1:
            target, outcome = outcomes[0]
            return with_step(outcome, self.step(target))
        reasons = "; ".join(f"{t.label()}: {o.diagnosis}" for t, o in outcomes)
        return replace(outcomes[-1][1], diagnosis=f"{SEND_STEP}{reasons}")

    def refused_warning(self) -> str | None:
        if not self.refused:
            return None
        named = [
            f"{t.label()} ({RECIPIENT_REASONS.get(_int(o.vendor_code) or 0, 'refused')}, "
            f"{o.vendor_code})"
            for t, o in self.refused
        ]
        return (
            f"Feishu did not deliver to {len(self.refused)} of {self.total} recipients: "
            + _listed(named)
        )


def _int(code: str | None) -> int | None:
    return int(code) if code and code.lstrip("-").isdigit() else None


class FeishuAppChannel(ChannelType):
    type_id = "feishu_app"
    name = "Feishu / Lark App"
    description = (
        "A Feishu or Lark self-built app (企业自建应用) with a bot: cards coloured by level, with "
        "fields, buttons and @mentions, to users and group chats; Lark through api_base."
    )
    description_zh = (
        "飞书或 Lark 企业自建应用（含机器人）：按级别着色的卡片，含字段、按钮和"
        " @提醒，发给用户和群聊；Lark 通过 api_base 接入。"
    )
    settings_model = FeishuAppSettings
    formats = ("markdown", "text")
    # A delivery sends one request to each recipient, so 5 deliveries a second keep every user
    # and group within Feishu's 5 a second; for a channel of up to 3 recipients they also stay
    # within the app's 1000 a minute (5 x 60 x 3 = 900). Channels with more, or several channels
    # on one app, lower rate_limit; a 99991400 that still comes is waited out.
    default_limits = RateLimit(per_second=PER_RECIPIENT_PER_SECOND)
    size_limits: ClassVar[dict[str, int]] = {
        "interactive": CARD_BODY_MAX_BYTES,
        "text": TEXT_BODY_MAX_BYTES,
    }

    def check(self, settings: Any) -> None:
        if not settings.receive_ids:
            raise ValueError(
                "receive_ids: name at least one default recipient (a message's recipients "
                "override them; Test Push sends to them)"
            )

    def render(self, message: Message, settings: Any, ctx: SendContext) -> VendorRequest:
        """The first request, with a placeholder token (previews and tests)."""
        requests = plan(message, settings, ctx) or plan(
            message.model_copy(update={"recipients": None}),
            settings.model_copy(update={"receive_ids": ["RECEIVE_ID"]}),
            ctx,
        )
        return requests[0].vendor_request(settings.api_base, "TOKEN")

    def classify(self, response: VendorResponse) -> Outcome:
        placeholder = FeishuAppSettings.model_construct(
            app_id="cli_?", app_secret=SecretStr(""), api_base=FEISHU_API_BASE
        )
        return with_step(read_answer(response, SEND_ERRORS, placeholder), SEND_STEP)

    async def _token(self, settings: FeishuAppSettings, ctx: SendContext) -> tuple[str, str]:
        """(cache key, tenant_access_token): the shared cache's, or a new one."""
        secret = settings.app_secret.get_secret_value()
        key = token_key(self.type_id, settings.api_base, settings.app_id, secret)
        request = VendorRequest.json(
            f"{settings.api_base}{TOKEN_PATH}",
            {"app_id": settings.app_id, "app_secret": secret},
            timeout_s=REQUEST_TIMEOUT_S,
        )

        token = await cached_token(
            ctx, key, request, lambda response: read_token(response, settings), TOKEN_STEP
        )
        return key, token

    async def send(self, message: Message, settings: Any, ctx: SendContext) -> Outcome:
        requests = plan(message, settings, ctx)
        if not requests:
            dropped = targets(message, settings).notes
            return Outcome.failed(
                "this message names no recipient Feishu can reach"
                + (f" ({'; '.join(dropped)})" if dropped else "")
                + ": give recipients.users or recipients.chats, or the channel's receive_ids"
            )
        key, token = await self._token(settings, ctx)
        tally = Tally(len(requests))
        for request in requests:
            outcome = await self._send_one(request, token, settings, ctx)
            if outcome.kind == "delivered":
                tally.delivered.append(request.target)
                tally.last_ok = outcome
            elif outcome.kind == "refresh_token":
                if ctx.tokens is not None:
                    await ctx.tokens.invalidate(key, token)
                return with_step(outcome, tally.step(request.target))
            elif _recipient_level(outcome):
                tally.refused.append((request.target, outcome))
            elif outcome.kind == "retry" and outcome.vendor_code == "230020":
                tally.waiting.append((request.target, outcome))
            else:
                # the app, the content or the connection: the other recipients fare no better
                outcome = with_step(outcome, tally.step(request.target))
                return replace(outcome, diagnosis=(outcome.diagnosis or "") + tally.progress())
        if tally.waiting:
            outcome = tally.each(tally.waiting)
            return replace(outcome, diagnosis=(outcome.diagnosis or "") + tally.progress())
        if tally.last_ok is None:
            return tally.each(tally.refused)
        notes: list[str | None] = [
            tally.refused_warning(),
            *targets(message, settings).notes,
            _mention_note(message),
        ]
        warning = "; ".join(note for note in notes if note)
        return replace(tally.last_ok, warning=warning or None)

    async def _send_one(
        self, request: Request, token: str, settings: FeishuAppSettings, ctx: SendContext
    ) -> Outcome:
        return await ctx.exchange(
            request.vendor_request(settings.api_base, token),
            lambda response: read_answer(response, SEND_ERRORS, settings, request.target),
        )


def _mention_note(message: Message) -> str | None:
    names = unpingable(message.mentions)
    if not names:
        return None
    return (
        "Feishu can @ open_ids and user_ids only; these were named as plain text without a ping: "
        + _listed(names)
    )


CHANNEL_TYPE = FeishuAppChannel()
