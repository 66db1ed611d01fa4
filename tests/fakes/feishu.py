"""A strict stand-in for the Feishu / Lark custom bot webhook, on 127.0.0.1
(docs/vendors/feishu.md#custom-bot).

Like the real one it answers HTTP 200 to everything and carries the outcome in ``code``: an
unknown token, a missing ``msg_type``, a bad signature or a timestamp outside ±1 hour, an IP
outside the allowlist, a message without a keyword, too many sends (5 a second, 100 a minute
per bot, sliding windows) and bodies over 20 KB are refused with Feishu's own answers.

``FakeFeishuApp`` stands in for the open API a self-built app calls (docs/vendors/feishu.md):
tokens and im/v1/messages, with HTTP 400/429 errors as Feishu answers them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.receiver import ThreadedServer

HOOK_PATH = "/open-apis/bot/v2/hook/"
BODY_LIMIT_BYTES = 20_000
SIGN_WINDOW_S = 3_600
PER_SECOND = 5
PER_MINUTE = 100

SUCCESS = {"StatusCode": 0, "StatusMessage": "success", "code": 0, "data": {}, "msg": "success"}
SUCCESS_OLD = {"Extra": None, "StatusCode": 0, "StatusMessage": "success"}
BAD_REQUEST = {"code": 9499, "msg": "Bad Request", "data": {}}
UNPARSABLE = {"code": 9499, "msg": "Bad Request: fail to parse content", "data": {}}
LEGACY_BAD_REQUEST = {"StatusCode": 9499, "StatusMessage": "Bad Request"}
TOKEN_INVALID = {
    "code": 19001,
    "data": {},
    "msg": "param invalid: incoming webhook access token invalid",
}
MSG_TYPE_MISSING = {"code": 19002, "data": {}, "msg": "params error, msg_type need"}
SIGN_FAILED = {
    "code": 19021,
    "msg": "sign match fail or timestamp is not within one hour from current time",
}
IP_NOT_ALLOWED = {"code": 19022, "msg": "Ip Not Allowed"}
KEYWORDS_NOT_FOUND = {"code": 19024, "msg": "Key Words Not Found"}
RATE_LIMITED = {
    "code": 11232,
    "data": {},
    "msg": "frequency limited psm[lark.oapi.app_platform_runtime]appID[1500]",
}

# Card JSON 2.0 components the fake understands; the 1.0 "action" container is gone in 2.0.
CARD_TAGS = {"markdown", "column_set", "button", "hr", "div", "img", "note"}


def feishu_sign(secret: str, timestamp: str) -> str:
    """The real algorithm: HMAC-SHA256 keyed with "timestamp\\nsecret" over empty data."""
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def dingtalk_style_sign(secret: str, timestamp: str) -> str:
    """The algorithm peers wrongly reuse: keyed with the secret over "timestamp\\nsecret"."""
    data = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(secret.encode(), data, hashlib.sha256).digest()).decode()


@dataclass
class Bot:
    token: str
    secret: str | None = None
    keywords: tuple[str, ...] = ()
    ip_allowlist: tuple[str, ...] = ()
    window_scale: float = 1.0
    jitter_s: float = 0.0
    sent_at: deque[float] = field(default_factory=deque)
    scripted: deque[dict[str, Any]] = field(default_factory=deque)
    delivered: list[dict[str, Any]] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)


class FeishuFake(ThreadedServer):
    def __init__(self, *, body_limit: int = BODY_LIMIT_BYTES) -> None:
        super().__init__()
        self.body_limit = body_limit
        self.clock_offset_s = 0.0  # how far this "Feishu" clock runs ahead of the real one
        self._bots: dict[str, Bot] = {}
        self.unknown_answers: defaultdict[str, int] = defaultdict(int)

    # -- set-up and fault injection (called from tests) --------------------------------------

    def add_bot(
        self,
        token: str,
        *,
        secret: str | None = None,
        keywords: tuple[str, ...] = (),
        ip_allowlist: tuple[str, ...] = (),
        window_scale: float = 1.0,
        jitter_s: float = 0.0,
    ) -> str:
        """Register a bot and return its webhook URL.

        ``window_scale`` shrinks its rate windows the way MSGPUSH_RATE_WINDOW_SCALE shrinks
        msgpush's. Scheduling jitter on a loaded machine does not shrink with them, so
        ``jitter_s`` lets a request arriving that much early still count as in time.
        """
        with self._lock:
            self._bots[token] = Bot(token, secret, keywords, ip_allowlist, window_scale, jitter_s)
        return self.hook_url(token)

    def hook_url(self, token: str) -> str:
        return self.url(HOOK_PATH + token)

    def fail_next(self, token: str, code: int, msg: str, *, legacy: bool = False) -> None:
        """The next request to this bot gets this error, in the current or the legacy shape."""
        body = {"StatusCode": code, "StatusMessage": msg} if legacy else {"code": code, "msg": msg}
        self.answer_next(token, body)

    def answer_next(self, token: str, body: dict[str, Any]) -> None:
        with self._lock:
            self._bots[token].scripted.append(body)

    def delivered(self, token: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._bots[token].delivered)

    def answers(self, token: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._bots[token].answers)

    # -- the endpoint -------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post(HOOK_PATH + "{token}", self._hook)

    async def _hook(self, request: web.Request) -> web.Response:
        received = await self.record(request)
        token = request.match_info["token"]
        with self._lock:
            bot = self._bots.get(token)
            if bot is None:
                self.unknown_answers[token] += 1
                return _answer(TOKEN_INVALID)
            answer = self._judge(bot, received.body, request)
            bot.answers.append(answer)
        return _answer(answer)

    def _judge(self, bot: Bot, body: bytes, request: web.Request) -> dict[str, Any]:
        if bot.scripted:
            return bot.scripted.popleft()
        if bot.ip_allowlist and not _ip_allowed(request.remote or "", bot.ip_allowlist):
            return IP_NOT_ALLOWED
        if not self._take_slot(bot):
            return RATE_LIMITED
        if len(body) > self.body_limit:
            return BAD_REQUEST
        if not request.content_type.startswith("application/json"):
            return UNPARSABLE
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return UNPARSABLE
        if not isinstance(payload, dict):
            return UNPARSABLE
        if not payload.get("msg_type"):
            return MSG_TYPE_MISSING
        if bot.secret and not self._signed(payload, bot.secret):
            return SIGN_FAILED
        texts = _texts(payload)
        if texts is None:
            return UNPARSABLE
        if bot.keywords and not any(k in t for t in texts for k in bot.keywords):
            return KEYWORDS_NOT_FOUND
        bot.delivered.append(payload)
        return SUCCESS

    def _take_slot(self, bot: Bot) -> bool:
        now = time.monotonic()
        second = 1.0 * bot.window_scale - bot.jitter_s
        minute = 60.0 * bot.window_scale - bot.jitter_s
        while bot.sent_at and bot.sent_at[0] <= now - minute:
            bot.sent_at.popleft()
        in_second = sum(1 for at in bot.sent_at if at > now - second)
        if in_second >= PER_SECOND or len(bot.sent_at) >= PER_MINUTE:
            return False
        bot.sent_at.append(now)
        return True

    def _signed(self, payload: dict[str, Any], secret: str) -> bool:
        timestamp, signature = payload.get("timestamp"), payload.get("sign")
        if not isinstance(timestamp, str) or not timestamp.isdigit():
            return False
        if abs(time.time() + self.clock_offset_s - int(timestamp)) > SIGN_WINDOW_S:
            return False
        return isinstance(signature, str) and hmac.compare_digest(
            signature, feishu_sign(secret, timestamp)
        )


def _answer(body: dict[str, Any]) -> web.Response:
    return web.Response(status=200, body=orjson.dumps(body), content_type="application/json")


def _ip_allowed(remote: str, allowlist: tuple[str, ...]) -> bool:
    address = ipaddress.ip_address(remote)
    for entry in allowlist:
        pattern = entry.replace("*", "0/24") if entry.endswith(".*") else entry
        if address in ipaddress.ip_network(pattern, strict=False):
            return True
    return False


def _texts(payload: dict[str, Any]) -> list[str] | None:
    """The text-like values Feishu checks for keywords, or None when the payload's shape does
    not match its msg_type (e.g. a card sent as text)."""
    kind = payload["msg_type"]
    content = payload.get("content")
    if kind == "text":
        text = content.get("text") if isinstance(content, dict) else None
        return [text] if isinstance(text, str) and text else None
    if kind == "post":
        post = content.get("post") if isinstance(content, dict) else None
        if not isinstance(post, dict) or not post:
            return None
        texts: list[str] = []
        for body in post.values():
            texts.append(str(body.get("title", "")))
            texts.extend(
                str(item.get("text", "")) for line in body.get("content", []) for item in line
            )
        return texts
    if kind == "interactive":
        card = payload.get("card")
        if content is not None or not isinstance(card, dict) or not _card_ok(card):
            return None
        return list(_card_texts(card))
    return None


def _card_ok(card: dict[str, Any]) -> bool:
    header = card.get("header")
    if header is not None:
        title = header.get("title") if isinstance(header, dict) else None
        if not isinstance(title, dict) or not isinstance(title.get("content"), str):
            return False
    if card.get("schema") == "2.0":
        body = card.get("body")
        elements = body.get("elements") if isinstance(body, dict) else None
    else:
        elements = card.get("elements")
    return isinstance(elements, list) and all(_element_ok(e) for e in elements)


def _element_ok(element: Any) -> bool:
    if not isinstance(element, dict) or element.get("tag") not in CARD_TAGS:
        return False
    tag = element["tag"]
    if tag == "markdown":
        return isinstance(element.get("content"), str)
    if tag == "column_set":
        columns = element.get("columns")
        return isinstance(columns, list) and all(
            isinstance(c, dict)
            and c.get("tag") == "column"
            and isinstance(c.get("elements"), list)
            and all(_element_ok(e) for e in c["elements"])
            for c in columns
        )
    if tag == "button":
        text = element.get("text")
        behaviors = element.get("behaviors") or []
        return (
            isinstance(text, dict)
            and isinstance(text.get("content"), str)
            and all(
                b.get("type") != "open_url"
                or str(b.get("default_url", "")).startswith(("http://", "https://"))
                for b in behaviors
            )
        )
    return True


def _card_texts(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if node.get("tag") in ("plain_text", "lark_md", "markdown") and isinstance(
            node.get("content"), str
        ):
            yield node["content"]
        for value in node.values():
            yield from _card_texts(value)
    elif isinstance(node, list):
        for item in node:
            yield from _card_texts(item)


# -- the self-built app's open API (docs/vendors/feishu.md) ---------------------------------------

APP_TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
APP_SEND_PATH = "/open-apis/im/v1/messages"
RECEIVE_ID_TYPES = ("open_id", "user_id", "union_id", "email", "chat_id")
MSG_TYPES = {"text", "post", "interactive"}  # of Feishu's msg_types
SEND_SCOPES = ("im:message:send", "im:message", "im:message:send_as_bot")
# docs/vendors/feishu.md#error-codes: the msg each code answers with
APP_MESSAGES = {
    230001: "Your request contains an invalid request parameter.",
    230002: "The bot can not be outside the group.",
    230006: "Bot ability is not activated.",
    230013: "Bot has NO availability to this user.",
    230018: "These operations are NOT allowed at current group settings.",
    230020: "This operation triggers the frequency limit.",
    230022: "The content of the message contains sensitive information.",
    230025: "The length of the message content reaches its limit.",
    230028: "The messages do NOT pass the audit.",
    230035: "Send message permission deny.",
    230038: "Cross tenant p2p chat operate forbid.",
    230099: "Failed to create card content, ext=ErrCode: 100290; ErrMsg: There is an invalid "
    "user resource(at/person) in your card",
    232009: "Your request specifies a chat which has already been dissolved.",
    99991400: "request trigger frequency limit",
    99991661: "Missing access token for authorization. Please make a request with token attached.",
    99991663: "Invalid access token for authorization. Please make a request with token attached.",
    99991668: "Invalid access token for authorization. Please make a request with token attached.",
    99991672: "Access denied. One of the following scopes is required: [{scopes}].应用尚未开通所需"
    "的应用身份权限：[{scopes}]，点击链接申请并开通任一权限即可：https://{host}/app/{app_id}/auth?"
    "q={scope_list}&op_from=openapi&token_type=tenant",
    10003: "invalid param",
    10014: "app secret invalid",
}


def _invalid(detail: str) -> tuple[int, str]:
    """230001 with the ext= detail live answers carry (docs/vendors/feishu.md#error-codes)."""
    return 230001, f"Your request contains an invalid request parameter, ext={detail}"


@dataclass
class FeishuUser:
    """A person of the fake tenant under each of the ids Feishu knows them by."""

    name: str
    user_id: str
    open_id: str
    union_id: str
    email: str

    def id_of(self, kind: str) -> str:
        return str(getattr(self, kind))


@dataclass
class FeishuChat:
    name: str
    chat_id: str
    bot_member: bool = True
    dissolved: bool = False
    bot_muted: bool = False  # group settings let only the owner and admins speak (230018)


@dataclass
class FeishuTenantApp:
    """A self-built app: credentials, its bot, its scopes, who is in its availability (可用范围)
    and the group chats of the tenant (the bot in them or not)."""

    app_id: str
    app_secret: str
    people: dict[str, FeishuUser]
    available: set[str]
    chats: dict[str, FeishuChat]
    bot_enabled: bool = True
    scopes: set[str] = field(default_factory=lambda: {"im:message:send_as_bot"})

    def user(self, name: str) -> FeishuUser:
        return self.people[name]

    def open_id(self, name: str) -> str:
        return self.people[name].open_id

    def chat_id(self, name: str) -> str:
        return self.chats[name].chat_id


@dataclass
class AppDelivery:
    """A message the fake app API accepted: to whom (a person's name or a chat's) and what."""

    app_id: str
    receive_id_type: str
    receive_id: str
    to: str
    msg_type: str
    content: dict[str, Any]
    uuid: str | None
    message_id: str
    token: str
    raw: bytes
    at: float


@dataclass
class _IssuedToken:
    value: str
    app_id: str
    expires_at: float  # on the fake's clock
    revoked: bool = False


@dataclass
class _AppFault:
    api: str  # "token" or "send"
    app_id: str | None
    receive_id: str | None
    code: int
    msg: str
    status: int
    headers: dict[str, str]
    deliver_then_status: int | None = None


class FakeFeishuApp(ThreadedServer):
    """Feishu's (or, with ``lark=True``, Lark's) open API for a self-built app
    (docs/vendors/feishu.md).

    ``tenant_access_token/internal`` issues a token and answers ``expire`` as its REMAINING
    lifetime, handing out the same token until fewer than ``rotate_below_s`` remain; then a new
    one, while the old stays valid until it expires. ``im/v1/messages`` checks the Bearer token
    (99991661 / 99991663, HTTP ``token_error_status``), the bot and the send scope, that
    ``content`` is a JSON string matching ``msg_type`` (else 230001 with an ``ext=`` detail), the
    body's size by msg_type (230025), the recipient (unknown: 230001 ext=invalid receive_id;
    outside availability: 230013; bot not in the chat: 230002; dissolved: 232009), ``uuid``
    de-duplication for ``dedup_window_s`` (answered with the first message_id, not delivered
    again), 5 sends a second per user or chat (230020) and, with ``app_limits``, 50 a second and
    1000 a minute per app (HTTP 429, 99991400, ``x-ogw-ratelimit-*`` headers). Business errors are
    HTTP 400 with ``code``, ``msg`` and ``error.log_id``/``troubleshooter``.
    """

    def __init__(
        self,
        *,
        lark: bool = False,
        token_lifetime_s: float = 7200.0,
        rotate_below_s: float = 1800.0,
        token_error_status: int = 400,
        credential_error_status: int = 400,
        window_scale: float = 1.0,
        jitter_s: float = 0.0,
        app_limits: bool = True,
        per_recipient_per_second: int = 5,
        app_per_second: int = 50,
        app_per_minute: int = 1000,
        card_limit: int = 30_000,
        text_limit: int = 150_000,
        dedup_window_s: float = 3600.0,
    ) -> None:
        super().__init__()
        self.host = "open.larksuite.com" if lark else "open.feishu.cn"
        self.token_lifetime_s = token_lifetime_s
        self.rotate_below_s = rotate_below_s
        self.token_error_status = token_error_status
        self.credential_error_status = credential_error_status
        self.window_scale = window_scale
        self.jitter_s = jitter_s
        self.app_limits = app_limits
        self.per_recipient_per_second = per_recipient_per_second
        self.app_per_second = app_per_second
        self.app_per_minute = app_per_minute
        self.card_limit = card_limit
        self.text_limit = text_limit
        self.dedup_window_s = dedup_window_s
        self.clock_offset_s = 0.0
        self.deliveries: list[AppDelivery] = []
        self.deduplicated: list[AppDelivery] = []  # repeats of a uuid, answered but not sent
        self.rejections: list[tuple[str, str, int]] = []  # (app_id, receive_id, code)
        self._apps: dict[str, FeishuTenantApp] = {}
        self._directory: dict[tuple[str, str], FeishuUser] = {}
        self._chat_directory: dict[str, FeishuChat] = {}
        self._tokens: dict[str, _IssuedToken] = {}
        self._token_fetches: defaultdict[str, int] = defaultdict(int)
        self._uuids: dict[tuple[str, str], tuple[float, AppDelivery]] = {}
        self._recipient_sends: defaultdict[str, deque[float]] = defaultdict(deque)
        self._app_sends: defaultdict[str, deque[float]] = defaultdict(deque)
        self._faults: deque[_AppFault] = deque()

    # -- set-up and test hooks -----------------------------------------------------------------

    @property
    def api_base(self) -> str:
        return self.url("")

    def now(self) -> float:
        """The fake's clock: real time plus ``clock_offset_s`` (see ``advance``)."""
        return time.time() + self.clock_offset_s

    def advance(self, seconds: float) -> None:
        """Move the fake's clock on: tokens age and may rotate, uuids leave the window."""
        with self._lock:
            self.clock_offset_s += seconds

    def new_app(
        self,
        *,
        users: tuple[str, ...] | list[str] = ("zhangsan", "lisi"),
        outside: tuple[str, ...] | list[str] = (),
        chats: dict[str, str] | None = None,
        bot_enabled: bool = True,
        scopes: set[str] | None = None,
    ) -> FeishuTenantApp:
        """An app whose availability holds ``users``; ``outside`` are people of the tenant it
        does not reach. ``chats`` maps a name to "member" (the bot is in it), "outside",
        "dissolved" or "muted". Names get ids of their own per app, so no two tests share a
        recipient's rate window."""
        tag = secrets.token_hex(4)
        app = FeishuTenantApp(
            app_id=f"cli_{secrets.token_hex(8)}",
            app_secret=secrets.token_urlsafe(24),
            people={},
            available=set(),
            chats={},
            bot_enabled=bot_enabled,
            scopes={"im:message:send_as_bot"} if scopes is None else set(scopes),
        )
        for name in (*users, *outside):
            person = FeishuUser(
                name=name,
                user_id=f"{name}{tag}",
                open_id=f"ou_{secrets.token_hex(16)}",
                union_id=f"on_{secrets.token_hex(16)}",
                email=f"{name}.{tag}@example.com",
            )
            app.people[name] = person
            if name in users:
                app.available.add(name)
        for name, state in (chats or {}).items():
            app.chats[name] = FeishuChat(
                name=name,
                chat_id=f"oc_{secrets.token_hex(16)}",
                bot_member=state != "outside",
                dissolved=state == "dissolved",
                bot_muted=state == "muted",
            )
        with self._lock:
            self._apps[app.app_id] = app
            for person in app.people.values():
                for kind in ("open_id", "user_id", "union_id", "email"):
                    self._directory[(kind, person.id_of(kind))] = person
            for chat in app.chats.values():
                self._chat_directory[chat.chat_id] = chat
        return app

    def token_fetches(self, app: FeishuTenantApp) -> int:
        with self._lock:
            return self._token_fetches[app.app_id]

    def tokens_of(self, app: FeishuTenantApp) -> list[str]:
        """Every token issued to the app, oldest first."""
        with self._lock:
            return [t.value for t in self._tokens.values() if t.app_id == app.app_id]

    def revoke(self, app: FeishuTenantApp) -> None:
        """Every token of the app stops working now (99991663)."""
        with self._lock:
            for token in self._tokens.values():
                if token.app_id == app.app_id:
                    token.revoked = True

    def fail_next(
        self,
        code: int,
        msg: str | None = None,
        *,
        app: FeishuTenantApp | None = None,
        api: str = "send",
        receive_id: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """The next ``times`` calls to ``api`` ("token" or "send"; for ``app`` and
        ``receive_id``, or any) answer this error; ``msg`` defaults to Feishu's own text."""
        text = msg if msg is not None else self._message(code, app.app_id if app else "cli_")
        fault = _AppFault(
            api,
            app.app_id if app else None,
            receive_id,
            code,
            text,
            status if status is not None else (429 if code == 99991400 else 400),
            dict(headers or {}),
        )
        with self._lock:
            self._faults.extend(replace(fault) for _ in range(times))

    def deliver_then_fail(
        self, app: FeishuTenantApp, status: int = 502, *, receive_id: str | None = None
    ) -> None:
        """The next send is delivered, but its answer is lost: a gateway answers ``status``."""
        with self._lock:
            self._faults.append(
                _AppFault(
                    "send", app.app_id, receive_id, 0, "", 200, {}, deliver_then_status=status
                )
            )

    def delivered(self, app: FeishuTenantApp) -> list[AppDelivery]:
        with self._lock:
            return [d for d in self.deliveries if d.app_id == app.app_id]

    def received(self, app: FeishuTenantApp, name: str) -> list[AppDelivery]:
        """What the person or chat called ``name`` got from ``app``."""
        return [d for d in self.delivered(app) if d.to == name]

    def repeats(self, app: FeishuTenantApp) -> list[AppDelivery]:
        """Sends the uuid check answered without delivering."""
        with self._lock:
            return [d for d in self.deduplicated if d.app_id == app.app_id]

    def refused(self, app: FeishuTenantApp) -> list[tuple[str, int]]:
        with self._lock:
            return [(rid, code) for aid, rid, code in self.rejections if aid == app.app_id]

    def wait_delivered(
        self, app: FeishuTenantApp, count: int, timeout: float = 15.0
    ) -> list[AppDelivery]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.delivered(app)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"{app.app_id}: expected {count} deliveries, got {len(got)}")

    # -- the endpoints -------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post(APP_TOKEN_PATH, self._token)
        app.router.add_post(APP_SEND_PATH, self._send)

    def _message(self, code: int, app_id: str) -> str:
        scopes = ", ".join(SEND_SCOPES)
        return APP_MESSAGES.get(code, "unknown error").format(
            scopes=scopes, scope_list=",".join(SEND_SCOPES), host=self.host, app_id=app_id
        )

    def _error(
        self,
        code: int,
        msg: str,
        status: int = 400,
        headers: dict[str, str] | None = None,
        *,
        app_id: str = "",
        receive_id: str = "",
    ) -> web.Response:
        log_id = time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(8).upper()
        body = {
            "code": code,
            "msg": msg,
            "error": {
                "log_id": log_id,
                "troubleshooter": f"https://{self.host}/search?from=openapi&log_id={log_id}"
                f"&code={code}&method_id=7345358935301701633",
            },
        }
        with self._lock:
            self.rejections.append((app_id, receive_id, code))
        return web.Response(
            status=status,
            body=orjson.dumps(body),
            content_type="application/json",
            headers={"X-Tt-Logid": log_id, **(headers or {})},
        )

    def _fault(self, api: str, app_id: str, receive_id: str | None) -> _AppFault | None:
        with self._lock:
            for fault in self._faults:
                if (
                    fault.api == api
                    and fault.app_id in (None, app_id)
                    and fault.receive_id in (None, receive_id)
                ):
                    self._faults.remove(fault)
                    return fault
        return None

    async def _token(self, request: web.Request) -> web.Response:
        received = await self.record(request)
        try:
            body = orjson.loads(received.body)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return self._error(*_invalid("body is not JSON"), self.credential_error_status)
        app_id, secret = str(body.get("app_id") or ""), str(body.get("app_secret") or "")
        with self._lock:
            self._token_fetches[app_id] += 1
            app = self._apps.get(app_id)
        if app is None:
            return self._error(
                10003, self._message(10003, app_id), self.credential_error_status, app_id=app_id
            )
        if secret != app.app_secret:
            return self._error(
                10014, self._message(10014, app_id), self.credential_error_status, app_id=app_id
            )
        fault = self._fault("token", app_id, None)
        if fault is not None:
            return self._error(fault.code, fault.msg, fault.status, fault.headers, app_id=app_id)
        now = self.now()
        with self._lock:
            live = [
                t
                for t in self._tokens.values()
                if t.app_id == app_id and not t.revoked and t.expires_at > now
            ]
            token = max(live, key=lambda t: t.expires_at) if live else None
            if token is None or token.expires_at - now < self.rotate_below_s:
                token = _IssuedToken(
                    f"t-{secrets.token_hex(20)}", app_id, now + self.token_lifetime_s
                )
                self._tokens[token.value] = token
        answer = {
            "code": 0,
            "msg": "ok",
            "tenant_access_token": token.value,
            "expire": int(token.expires_at - now),
        }
        return web.Response(status=200, body=orjson.dumps(answer), content_type="application/json")

    async def _send(self, request: web.Request) -> web.Response:
        received = await self.record(request)
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not value:
            return self._error(99991661, self._message(99991661, ""), self.token_error_status)
        now = self.now()
        with self._lock:
            token = self._tokens.get(value)
            valid = token is not None and not token.revoked and token.expires_at > now
            app = self._apps.get(token.app_id) if token is not None else None
        if not valid or app is None:
            return self._error(99991663, self._message(99991663, ""), self.token_error_status)
        try:
            body = orjson.loads(received.body)
        except orjson.JSONDecodeError:
            body = None
        receive_id = body.get("receive_id") if isinstance(body, dict) else None
        rid = receive_id if isinstance(receive_id, str) else ""
        fault = self._fault("send", app.app_id, rid)
        if fault is not None and fault.deliver_then_status is None:
            return self._error(
                fault.code,
                fault.msg,
                fault.status,
                fault.headers,
                app_id=app.app_id,
                receive_id=rid,
            )
        if self.app_limits:
            reset = self._app_slot(app.app_id)
            if reset is not None:
                return self._error(
                    99991400,
                    self._message(99991400, app.app_id),
                    429,
                    {
                        "x-ogw-ratelimit-limit": str(self.app_per_second),
                        "x-ogw-ratelimit-reset": str(max(1, round(reset))),
                    },
                    app_id=app.app_id,
                    receive_id=rid,
                )
        if not app.bot_enabled:
            return self._error(230006, self._message(230006, app.app_id), app_id=app.app_id)
        if not app.scopes & set(SEND_SCOPES):
            return self._error(99991672, self._message(99991672, app.app_id), app_id=app.app_id)
        refused = self._check(request.query.get("receive_id_type", ""), body, received.body)
        if refused is not None:
            return self._error(*refused, app_id=app.app_id, receive_id=rid)
        assert isinstance(body, dict)
        kind = request.query["receive_id_type"]
        to, problem = self._resolve(app, kind, rid)
        if problem is not None:
            code, msg = (
                _invalid("invalid receive_id")
                if problem == 230001
                else (problem, self._message(problem, app.app_id))
            )
            return self._error(code, msg, app_id=app.app_id, receive_id=rid)
        uuid_ = body.get("uuid")
        delivery = AppDelivery(
            app_id=app.app_id,
            receive_id_type=kind,
            receive_id=rid,
            to=to,
            msg_type=body["msg_type"],
            content=orjson.loads(body["content"]),
            uuid=uuid_,
            message_id=f"om_{secrets.token_hex(16)}",
            token=value,
            raw=received.body,
            at=time.time(),
        )
        with self._lock:
            seen = self._uuids.get((app.app_id, uuid_)) if uuid_ else None
            if seen is not None and seen[0] > now - self.dedup_window_s:
                self.deduplicated.append(delivery)
                return self._success(seen[1], kind)
        if not self._recipient_slot(kind, rid):
            return self._error(
                230020, self._message(230020, app.app_id), app_id=app.app_id, receive_id=rid
            )
        with self._lock:
            self.deliveries.append(delivery)
            if uuid_:
                self._uuids[(app.app_id, uuid_)] = (now, delivery)
        if fault is not None and fault.deliver_then_status is not None:
            return web.Response(status=fault.deliver_then_status, text="Bad Gateway")
        return self._success(delivery, kind)

    def _success(self, delivery: AppDelivery, kind: str) -> web.Response:
        millis = str(int(delivery.at * 1000))
        data = {
            "message_id": delivery.message_id,
            "root_id": "",
            "parent_id": "",
            "msg_type": delivery.msg_type,
            "create_time": millis,
            "update_time": millis,
            "deleted": False,
            "updated": False,
            "chat_id": delivery.receive_id if kind == "chat_id" else f"oc_{secrets.token_hex(8)}",
            "sender": {
                "id": delivery.app_id,
                "id_type": "app_id",
                "sender_type": "app",
                "tenant_key": "736588c9260f175e",
            },
            "body": {"content": orjson.dumps(delivery.content).decode()},
            "mentions": [],
        }
        answer = {"code": 0, "msg": "success", "data": data}
        return web.Response(status=200, body=orjson.dumps(answer), content_type="application/json")

    def _check(self, kind: str, body: Any, raw: bytes) -> tuple[int, str] | None:
        """The request's own faults: parameters, content string and shape, size."""
        if kind not in RECEIVE_ID_TYPES:
            return _invalid("invalid receive_id_type")
        if not isinstance(body, dict):
            return _invalid("request body is not a JSON object")
        receive_id, msg_type = body.get("receive_id"), body.get("msg_type")
        if not isinstance(receive_id, str) or not receive_id:
            return _invalid("receive_id is required")
        if msg_type not in MSG_TYPES:
            return _invalid(f"invalid msg_type {msg_type!r}")
        uuid_ = body.get("uuid")
        if uuid_ is not None and (not isinstance(uuid_, str) or len(uuid_) > 50):
            return _invalid("uuid must be a string of at most 50 characters")
        content = body.get("content")
        if not isinstance(content, str):
            return _invalid("content must be a string of JSON, not an object")
        try:
            parsed = orjson.loads(content)
        except orjson.JSONDecodeError:
            return _invalid("content is not valid JSON")
        limit = self.text_limit if msg_type == "text" else self.card_limit
        if len(raw) > limit:
            return 230025, APP_MESSAGES[230025]
        if not _app_content_ok(msg_type, parsed):
            return _invalid(f"content does not match msg_type {msg_type}")
        return None

    def _resolve(self, app: FeishuTenantApp, kind: str, rid: str) -> tuple[str, int | None]:
        """(whom the id names, or the code refusing it)."""
        with self._lock:
            if kind == "chat_id":
                chat = self._chat_directory.get(rid)
                if chat is None or chat not in app.chats.values():
                    return "", 230001
                if chat.dissolved:
                    return chat.name, 232009
                if not chat.bot_member:
                    return chat.name, 230002
                if chat.bot_muted:
                    return chat.name, 230018
                return chat.name, None
            person = self._directory.get((kind, rid))
            if person is None or person not in app.people.values():
                return "", 230001
            if person.name not in app.available:
                return person.name, 230013
            return person.name, None

    def _window(self, seconds: float) -> float:
        return seconds * self.window_scale - self.jitter_s

    def _recipient_slot(self, kind: str, rid: str) -> bool:
        """5 a second to one user or one chat (docs/vendors/feishu.md#rate-limits)."""
        now = time.monotonic()
        with self._lock:
            sent = self._recipient_sends[f"{kind}:{rid}"]
            while sent and sent[0] <= now - self._window(1.0):
                sent.popleft()
            if len(sent) >= self.per_recipient_per_second:
                return False
            sent.append(now)
            return True

    def _app_slot(self, app_id: str) -> float | None:
        """None when the app may call now, else the seconds until its windows have room."""
        now = time.monotonic()
        second, minute = self._window(1.0), self._window(60.0)
        with self._lock:
            sent = self._app_sends[app_id]
            while sent and sent[0] <= now - minute:
                sent.popleft()
            in_second = [at for at in sent if at > now - second]
            if len(in_second) >= self.app_per_second:
                return in_second[0] + second - now
            if len(sent) >= self.app_per_minute:
                return sent[0] + minute - now
            sent.append(now)
            return None


def _app_content_ok(msg_type: str, content: Any) -> bool:
    """The content string's JSON matches msg_type (docs/vendors/feishu.md#send-message)."""
    if not isinstance(content, dict):
        return False
    if msg_type == "text":
        return isinstance(content.get("text"), str) and bool(content["text"])
    if msg_type == "post":
        # im/v1 takes the languages at the top: a webhook-style "post" wrapper is refused
        return (
            bool(content)
            and "post" not in content
            and all(
                isinstance(body, dict) and isinstance(body.get("content"), list)
                for body in content.values()
            )
        )
    return _card_ok(content)
