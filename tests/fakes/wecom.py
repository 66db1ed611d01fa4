"""Fake WeCom (企业微信) endpoints for tests, as strict as the real ones (docs/vendors/wecom.md)."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.receiver import ThreadedServer

WECOM_LOOKUP = "https://open.work.weixin.qq.com/devtool/query?e={code}"


def wecom_errmsg(code: int, message: str, *, hint: bool) -> str:
    """WeCom's errmsg, with the trace suffix live servers add to every error
    (docs/vendors/wecom.md#answers)."""
    if not hint or code == 0:
        return message
    trace = f"{int(time.time() * 1000)}{secrets.randbelow(10**7):07d}"
    return f"{message}, hint: [{trace}], from ip: 127.0.0.1, more info at " + WECOM_LOOKUP.format(
        code=code
    )


def wecom_answer(code: int, message: str, *, hint: bool) -> web.Response:
    """Every WeCom answer is HTTP 200; the outcome is in errcode (docs/vendors/wecom.md#answers)."""
    body = {"errcode": code, "errmsg": wecom_errmsg(code, message, hint=hint)}
    return web.Response(status=200, body=orjson.dumps(body), content_type="application/json")


@dataclass
class BotMessage:
    """A message the fake bot accepted, with who it would really ping."""

    key: str
    msgtype: str
    body: dict[str, Any]
    pinged: list[str]
    ignored: list[str]
    at: float

    @property
    def content(self) -> str:
        return str(self.body.get("content", ""))


@dataclass
class Rejection:
    key: str
    errcode: int
    errmsg: str


@dataclass
class _Fault:
    code: int
    message: str
    key: str | None


BOT_MSGTYPES = {
    "text",
    "markdown",
    "markdown_v2",
    "image",
    "news",
    "file",
    "voice",
    "template_card",
}
# a <@userid> in text or markdown pings; markdown_v2 has no mention syntax
# (docs/vendors/wecom.md#group-bot)
MENTION = re.compile(r"<@([^>\s]+)>")


class FakeWeComBot(ThreadedServer):
    """The group bot webhook ``POST /cgi-bin/webhook/send?key=KEY``
    (docs/vendors/wecom.md#group-bot).

    Keys must be registered (else 93000); sizes are checked in UTF-8 bytes per msgtype; each
    key allows ``per_minute`` requests in a sliding ``window_s`` (else 45009); ``fail_next``
    injects any errcode.
    """

    SEND_PATH = "/cgi-bin/webhook/send"

    def __init__(
        self,
        *,
        per_minute: int = 20,
        window_s: float = 60.0,
        # documented; a live server once enforced 5120 (docs/vendors/wecom.md#size-limits)
        text_limit: int = 2048,
        markdown_limit: int = 4096,
        hint: bool = True,
    ) -> None:
        super().__init__()
        self.per_minute = per_minute
        self.window_s = window_s
        self.text_limit = text_limit
        self.markdown_limit = markdown_limit
        self.hint = hint
        self.messages: list[BotMessage] = []
        self.rejections: list[Rejection] = []
        self._keys: set[str] = set()
        self._sent: dict[str, deque[float]] = defaultdict(deque)
        self._faults: deque[_Fault] = deque()

    # -- test hooks ------------------------------------------------------------------------

    def new_key(self) -> str:
        key = str(uuid.uuid4())
        with self._lock:
            self._keys.add(key)
        return key

    def remove_key(self, key: str) -> None:
        """As when the bot is removed from its group: the key answers 93000 from now on."""
        with self._lock:
            self._keys.discard(key)

    def webhook_url(self, key: str) -> str:
        return self.url(f"{self.SEND_PATH}?key={key}")

    def fail_next(self, code: int, message: str, *, key: str | None = None, times: int = 1) -> None:
        """The next ``times`` requests (for ``key``, or any key) answer this error."""
        with self._lock:
            self._faults.extend(_Fault(code, message, key) for _ in range(times))

    def messages_for(self, key: str) -> list[BotMessage]:
        with self._lock:
            return [m for m in self.messages if m.key == key]

    def rejections_for(self, key: str) -> list[Rejection]:
        with self._lock:
            return [r for r in self.rejections if r.key == key]

    def wait_messages(self, key: str, count: int, timeout: float = 15.0) -> list[BotMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages_for(key)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        got = self.messages_for(key)
        raise AssertionError(f"bot {key[:8]}…: expected {count} messages, got {len(got)}")

    # -- the endpoint ----------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post(self.SEND_PATH, self._send)

    def _reject(self, key: str, code: int, message: str) -> web.Response:
        with self._lock:
            self.rejections.append(Rejection(key, code, message))
        return wecom_answer(code, message, hint=self.hint)

    async def _send(self, request: web.Request) -> web.Response:
        await self.record(request)
        key = request.query.get("key", "")
        with self._lock:
            known = key in self._keys
        if not known:
            return self._reject(key, 93000, "invalid webhook url")
        if not self._take_slot(key):
            return self._reject(key, 45009, "api freq out of limit")
        fault = self._fault(key)
        if fault is not None:
            return self._reject(key, fault.code, fault.message)
        try:
            payload = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            return self._reject(key, 40058, "Warning: wrong json format. invalid Request Parameter")
        msgtype = payload.get("msgtype")
        if msgtype not in BOT_MSGTYPES:
            return self._reject(key, 40008, "invalid message type")
        body = payload.get(msgtype)
        if not isinstance(body, dict):
            return self._reject(
                key, 40058, f"missing field `body.{msgtype}`. invalid Request Parameter"
            )
        problem = self._check(msgtype, body)
        if problem is not None:
            return self._reject(key, *problem)
        with self._lock:
            self.messages.append(
                BotMessage(
                    key, msgtype, body, _pings(msgtype, body), _ignored(msgtype, body), time.time()
                )
            )
        return wecom_answer(0, "ok", hint=False)

    def _take_slot(self, key: str) -> bool:
        """A sliding window of request times per key, as the 20/min rule is counted."""
        now = time.monotonic()
        with self._lock:
            sent = self._sent[key]
            while sent and sent[0] <= now - self.window_s:
                sent.popleft()
            if len(sent) >= self.per_minute:
                return False
            sent.append(now)
            return True

    def _fault(self, key: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.key in (None, key):
                    self._faults.remove(fault)
                    return fault
        return None

    def _check(self, msgtype: str, body: dict[str, Any]) -> tuple[int, str] | None:
        if msgtype in ("text", "markdown", "markdown_v2"):
            content = body.get("content")
            if not isinstance(content, str):
                return 40058, f"missing field `body.{msgtype}.content`. invalid Request Parameter"
            if not content.strip():
                return 44004, "empty content"  # assumed: docs/vendors/wecom.md#unverified
            limit = self.text_limit if msgtype == "text" else self.markdown_limit
            if len(content.encode("utf-8")) > limit:
                return (
                    40058,
                    f"{msgtype}.content exceed max length {limit}. invalid Request Parameter",
                )
        if msgtype == "text":
            for name in ("mentioned_list", "mentioned_mobile_list"):
                value = body.get(name, [])
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    return 40058, f"text.{name} invalid. invalid Request Parameter"
        if msgtype == "news":
            articles = body.get("articles")
            if not isinstance(articles, list) or not 1 <= len(articles) <= 8:
                return 40058, "news.articles invalid. invalid Request Parameter"
        return None


def _pings(msgtype: str, body: dict[str, Any]) -> list[str]:
    if msgtype == "text":
        found = [*body.get("mentioned_list", []), *body.get("mentioned_mobile_list", [])]
        found += MENTION.findall(str(body.get("content", "")))
        return list(dict.fromkeys(found))
    if msgtype == "markdown":
        return list(dict.fromkeys(MENTION.findall(str(body.get("content", "")))))
    return []


def _ignored(msgtype: str, body: dict[str, Any]) -> list[str]:
    """Fields the real server accepts but does nothing with (mention lists outside text)."""
    allowed = (
        {"content", "mentioned_list", "mentioned_mobile_list"} if msgtype == "text" else {"content"}
    )
    if msgtype not in ("text", "markdown", "markdown_v2"):
        return []
    return sorted(set(body) - allowed)


# -- the self-built app API (docs/vendors/wecom.md) ---------------------------------------------

APP_MSGTYPES = {
    "text",
    "image",
    "voice",
    "video",
    "file",
    "textcard",
    "news",
    "mpnews",
    "markdown",
    "miniprogram_notice",
    "template_card",
}
APPCHAT_MSGTYPES = {
    "text",
    "image",
    "voice",
    "video",
    "file",
    "textcard",
    "news",
    "mpnews",
    "markdown",
}
CHATID = re.compile(r"[0-9A-Za-z]{1,32}")


@dataclass
class WeComApp:
    """A self-built app of a fake company: its credentials, visible range and group chats.

    ``parties`` and ``tags`` map an id to its members; users outside ``users`` are outside the
    app's visible range. ``trusted_ips`` (企业可信IP), when set, refuses other callers (60020).
    """

    corp_id: str
    secret: str
    agent_id: int
    users: set[str]
    parties: dict[str, list[str]]
    tags: dict[str, list[str]]
    chats: dict[str, list[str]]
    unlicensed: set[str]
    trusted_ips: set[str] | None = None
    appchat_allowed: bool = True  # appchat/send needs the root department as visible range

    @property
    def key(self) -> tuple[str, str]:
        return (self.corp_id, self.secret)


@dataclass
class AppMessage:
    """A message the fake app API accepted, with whom it reached."""

    corp_id: str
    agent_id: int
    api: str  # "message/send" or "appchat/send"
    msgtype: str
    body: dict[str, Any]
    users: list[str]
    chat: str | None
    raw: bytes
    at: float

    @property
    def content(self) -> str:
        return str(self.body.get("content", ""))


@dataclass
class _AppFault:
    code: int
    message: str
    api: str | None
    corp_id: str | None
    deliver_then_status: int | None = None


@dataclass
class _Token:
    value: str
    key: tuple[str, str]
    expires_at: float


class FakeWeComApp(ThreadedServer):
    """WeCom's app API: ``GET /cgi-bin/gettoken``, ``POST /cgi-bin/message/send`` and
    ``POST /cgi-bin/appchat/send`` (docs/vendors/wecom.md).

    Tokens are kept per (corpid, secret): while one is valid gettoken returns it again with
    the remaining expires_in; a missing token answers 41001, an unknown (or revoked) one 40014,
    an expired one 42001. Recipients are checked against the app's visible range (partial
    success lists them; none valid answers 81013). ``enable_duplicate_check`` bodies are
    remembered for their interval and a repeat is answered ok without delivery. Each member
    gets at most ``member_per_minute`` messages per ``window_s`` (and ``member_per_hour`` per
    ``hour_window_s``) from one app: the rest are dropped silently, as WeCom does. Everything
    answers HTTP 200.
    """

    GETTOKEN_PATH = "/cgi-bin/gettoken"
    SEND_PATH = "/cgi-bin/message/send"
    APPCHAT_PATH = "/cgi-bin/appchat/send"

    def __init__(
        self,
        *,
        token_ttl_s: float = 7200.0,
        member_per_minute: int = 30,
        window_s: float = 60.0,
        member_per_hour: int = 1000,
        hour_window_s: float = 3600.0,
        text_limit: int = 2048,
        markdown_limit: int = 2048,
        hint: bool = True,
    ) -> None:
        super().__init__()
        self.token_ttl_s = token_ttl_s
        self.member_per_minute = member_per_minute
        self.window_s = window_s
        self.member_per_hour = member_per_hour
        self.hour_window_s = hour_window_s
        self.text_limit = text_limit
        self.markdown_limit = markdown_limit
        self.hint = hint
        self.messages: list[AppMessage] = []
        self.suppressed: list[AppMessage] = []  # duplicates the duplicate check kept back
        self.dropped: list[tuple[str, str]] = []  # (corp_id, user) over the member limit
        self.rejections: list[tuple[str, str, int, str]] = []  # (corp_id, api, code, errmsg)
        self._apps: dict[str, WeComApp] = {}
        self._by_secret: dict[str, WeComApp] = {}
        self._tokens: dict[str, _Token] = {}
        self._current: dict[tuple[str, str], str] = {}
        self._gettoken_calls: dict[str, int] = defaultdict(int)
        self._seen_bodies: dict[tuple[str, str], float] = {}
        self._member_sends: dict[tuple[str, int, str], deque[float]] = defaultdict(deque)
        self._faults: deque[_AppFault] = deque()

    # -- test hooks ------------------------------------------------------------------------

    def new_app(
        self,
        *,
        users: list[str] | tuple[str, ...] = ("ZhangSan", "lisi"),
        parties: dict[str, list[str]] | None = None,
        tags: dict[str, list[str]] | None = None,
        chats: dict[str, list[str]] | None = None,
        unlicensed: list[str] | tuple[str, ...] = (),
        trusted_ips: set[str] | None = None,
        appchat_allowed: bool = True,
    ) -> WeComApp:
        app = WeComApp(
            corp_id="ww" + secrets.token_hex(8),
            secret=secrets.token_urlsafe(32),
            agent_id=1_000_000 + secrets.randbelow(900_000),
            users=set(users),
            parties=dict(parties or {}),
            tags=dict(tags or {}),
            chats=dict(chats or {}),
            unlicensed=set(unlicensed),
            trusted_ips=trusted_ips,
            appchat_allowed=appchat_allowed,
        )
        with self._lock:
            self._apps[app.corp_id] = app
            self._by_secret[app.secret] = app
        return app

    @property
    def api_base(self) -> str:
        return self.url("")

    def gettoken_calls(self, app: WeComApp) -> int:
        with self._lock:
            return self._gettoken_calls[app.corp_id]

    def current_token(self, app: WeComApp) -> str | None:
        with self._lock:
            return self._current.get(app.key)

    def revoke(self, app: WeComApp) -> None:
        """WeCom revoked the app's token early: it answers 40014 from now on."""
        with self._lock:
            value = self._current.pop(app.key, None)
            if value is not None:
                self._tokens.pop(value, None)

    def expire(self, app: WeComApp) -> None:
        """The app's token ran out now: it answers 42001 from now on."""
        with self._lock:
            value = self._current.pop(app.key, None)
            if value is not None:
                self._tokens[value].expires_at = time.time() - 1

    def fail_next(
        self,
        code: int,
        message: str,
        *,
        api: str | None = None,
        app: WeComApp | None = None,
        times: int = 1,
    ) -> None:
        """The next ``times`` calls (to ``api``: "gettoken", "message/send", "appchat/send", or
        any; for ``app``, or any) answer this error."""
        corp_id = app.corp_id if app else None
        with self._lock:
            self._faults.extend(_AppFault(code, message, api, corp_id) for _ in range(times))

    def deliver_then_fail(self, app: WeComApp, status: int = 502) -> None:
        """The next message/send for ``app`` is delivered, but its answer is lost: a gateway
        answers ``status`` instead (the case the duplicate check exists for)."""
        with self._lock:
            self._faults.append(_AppFault(0, "", "message/send", app.corp_id, status))

    def messages_for(self, app: WeComApp) -> list[AppMessage]:
        with self._lock:
            return [m for m in self.messages if m.corp_id == app.corp_id]

    def received(self, app: WeComApp, user: str) -> list[AppMessage]:
        """The messages ``user`` got (in person) from ``app``."""
        return [m for m in self.messages_for(app) if user in m.users]

    def rejections_for(self, app: WeComApp) -> list[tuple[str, int, str]]:
        with self._lock:
            return [
                (api, code, msg) for corp, api, code, msg in self.rejections if corp == app.corp_id
            ]

    def wait_messages(self, app: WeComApp, count: int, timeout: float = 15.0) -> list[AppMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages_for(app)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        got = self.messages_for(app)
        raise AssertionError(f"app {app.corp_id}: expected {count} messages, got {len(got)}")

    # -- the endpoints ---------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_get(self.GETTOKEN_PATH, self._gettoken)
        app.router.add_post(self.SEND_PATH, self._message_send)
        app.router.add_post(self.APPCHAT_PATH, self._appchat_send)

    def _answer(self, code: int, errmsg: str, **extra: Any) -> web.Response:
        body = {"errcode": code, "errmsg": errmsg, **extra}
        return web.Response(status=200, body=orjson.dumps(body), content_type="application/json")

    def _reject(
        self, corp_id: str, api: str, code: int, message: str, **extra: Any
    ) -> web.Response:
        errmsg = wecom_errmsg(code, message, hint=self.hint)
        with self._lock:
            self.rejections.append((corp_id, api, code, errmsg))
        return self._answer(code, errmsg, **extra)

    def _fault(self, api: str, corp_id: str | None) -> _AppFault | None:
        with self._lock:
            for fault in self._faults:
                if fault.api in (None, api) and fault.corp_id in (None, corp_id):
                    self._faults.remove(fault)
                    return fault
        return None

    async def _gettoken(self, request: web.Request) -> web.Response:
        await self.record(request)
        corp_id = request.query.get("corpid", "")
        secret = request.query.get("corpsecret", "")
        with self._lock:
            self._gettoken_calls[corp_id] += 1
            app = self._apps.get(corp_id)
            other = self._by_secret.get(secret)
        if not corp_id:
            return self._reject(corp_id, "gettoken", 41002, "corpid missing")
        if not secret:
            return self._reject(corp_id, "gettoken", 41004, "corpsecret missing")
        if app is None:
            return self._reject(corp_id, "gettoken", 40013, "invalid corpid")
        if secret != app.secret:
            if other is not None:
                return self._reject(corp_id, "gettoken", 40091, "secret is invalid")
            return self._reject(corp_id, "gettoken", 40001, "invalid credential")
        fault = self._fault("gettoken", corp_id)
        if fault is not None:
            return self._reject(corp_id, "gettoken", fault.code, fault.message)
        now = time.time()
        with self._lock:
            value = self._current.get(app.key)
            token = self._tokens.get(value) if value else None
            if token is None or token.expires_at <= now:
                token = _Token(secrets.token_urlsafe(96), app.key, now + self.token_ttl_s)
                self._tokens[token.value] = token
                self._current[app.key] = token.value
        return self._answer(
            0, "ok", access_token=token.value, expires_in=int(token.expires_at - now)
        )

    def _caller(
        self, request: web.Request, api: str
    ) -> tuple[WeComApp | None, web.Response | None]:
        """The app whose token this call carries, or the answer refusing the call."""
        value = request.query.get("access_token", "")
        if not value:
            return None, self._reject("", api, 41001, "access_token missing")
        with self._lock:
            token = self._tokens.get(value)
            app = self._apps.get(token.key[0]) if token else None
        if token is None or app is None:
            return None, self._reject("", api, 40014, "invalid access_token")
        if token.expires_at <= time.time():
            return None, self._reject(app.corp_id, api, 42001, "access_token expired")
        if app.trusted_ips is not None and request.remote not in app.trusted_ips:
            return None, self._reject(app.corp_id, api, 60020, "not allow to access from your ip")
        return app, None

    async def _payload(
        self, request: web.Request, app: WeComApp, api: str, msgtypes: set[str]
    ) -> tuple[dict[str, Any] | None, str, web.Response | None]:
        """(payload, msgtype) of a well-formed message, or the answer rejecting it."""
        try:
            payload = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            return (
                None,
                "",
                self._reject(
                    app.corp_id, api, 40058, "Warning: wrong json format. invalid Request Parameter"
                ),
            )
        msgtype = payload.get("msgtype")
        if not isinstance(msgtype, str) or msgtype not in msgtypes:
            return None, "", self._reject(app.corp_id, api, 40008, "invalid message type")
        body = payload.get(msgtype)
        if not isinstance(body, dict):
            return (
                None,
                msgtype,
                self._reject(
                    app.corp_id, api, 40058, f"missing field `{msgtype}`. invalid Request Parameter"
                ),
            )
        problem = self._check(msgtype, body)
        if problem is not None:
            return None, msgtype, self._reject(app.corp_id, api, *problem)
        return payload, msgtype, None

    def _check(self, msgtype: str, body: dict[str, Any]) -> tuple[int, str] | None:
        """Sizes in UTF-8 bytes (characters where WeCom counts characters):
        docs/vendors/wecom.md#size-limits."""
        if msgtype in ("text", "markdown"):
            content = body.get("content")
            if not isinstance(content, str):
                return 40058, f"missing field `{msgtype}.content`. invalid Request Parameter"
            if not content.strip():
                return 44004, "empty content"  # assumed: docs/vendors/wecom.md#unverified
            limit = self.text_limit if msgtype == "text" else self.markdown_limit
            if len(content.encode("utf-8")) > limit:
                return (
                    40058,
                    f"{msgtype}.content exceed max length {limit}. invalid Request Parameter",
                )
        if msgtype == "textcard":
            for name, most in (("title", 128), ("description", 512)):
                value = body.get(name)
                if not isinstance(value, str) or not value.strip():
                    return 40058, f"missing field `textcard.{name}`. invalid Request Parameter"
                if len(value) > most:
                    return (
                        40058,
                        f"textcard.{name} exceed max length {most}. invalid Request Parameter",
                    )
            url = body.get("url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                return 40058, "textcard.url invalid. invalid Request Parameter"
            if len(url.encode("utf-8")) > 2048:
                return 40058, "textcard.url exceed max length 2048. invalid Request Parameter"
            button = body.get("btntxt", "")
            if not isinstance(button, str) or len(button) > 4:
                return 40058, "textcard.btntxt exceed max length 4. invalid Request Parameter"
        return None

    async def _message_send(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()  # the member limits count arrivals, not handling
        received = await self.record(request)
        api = "message/send"
        app, refusal = self._caller(request, api)
        if refusal is not None:
            return refusal
        assert app is not None
        fault = self._fault(api, app.corp_id)
        if fault is not None and fault.deliver_then_status is None:
            return self._reject(app.corp_id, api, fault.code, fault.message)
        payload, msgtype, refusal = await self._payload(request, app, api, APP_MSGTYPES)
        if refusal is not None:
            return refusal
        assert payload is not None
        if payload.get("agentid") != app.agent_id or isinstance(payload.get("agentid"), bool):
            return self._reject(app.corp_id, api, 40056, "invalid agentid")
        lists = {}
        for name, cap in (("touser", 1000), ("toparty", 100), ("totag", 100)):
            value = payload.get(name, "")
            if not isinstance(value, str):
                return self._reject(
                    app.corp_id, api, 40058, f"{name} invalid. invalid Request Parameter"
                )
            ids = [v.strip() for v in value.split("|") if v.strip()]
            if len(ids) > cap:  # the caps are documented; the error for them is assumed
                return self._reject(
                    app.corp_id,
                    api,
                    40058,
                    f"{name} exceed max count {cap}. invalid Request Parameter",
                )
            lists[name] = ids
        if not any(lists.values()):
            return self._reject(
                app.corp_id,
                api,
                40058,
                "touser & toparty & totag all empty. invalid Request Parameter",
            )
        duplicate_key = self._duplicate_key(payload, app, received.body)
        if duplicate_key is False:
            return self._reject(
                app.corp_id,
                api,
                40058,
                "duplicate_check_interval invalid. invalid Request Parameter",
            )
        users, invalid = self._resolve(app, lists)
        extra = {
            "invaliduser": "|".join(invalid["user"]),
            "invalidparty": "|".join(invalid["party"]),
            "invalidtag": "|".join(invalid["tag"]),
        }
        if not users and not invalid["unlicensed"]:
            return self._reject(app.corp_id, api, 81013, "user & party & tag all invalid", **extra)
        if invalid["unlicensed"]:
            extra["unlicenseduser"] = "|".join(invalid["unlicensed"])
        message = AppMessage(
            app.corp_id,
            app.agent_id,
            api,
            msgtype,
            payload[msgtype],
            [],
            None,
            received.body,
            time.time(),
        )
        if duplicate_key and self._seen(duplicate_key, payload):
            with self._lock:
                self.suppressed.append(message)
            return self._answer(0, "ok", **extra, msgid=secrets.token_hex(16))
        message.users = self._admit(app, users, arrived)
        with self._lock:
            self.messages.append(message)
        if fault is not None and fault.deliver_then_status is not None:
            return web.Response(status=fault.deliver_then_status, text="Bad Gateway")
        return self._answer(0, "ok", **extra, msgid=secrets.token_hex(16))

    def _duplicate_key(
        self, payload: dict[str, Any], app: WeComApp, raw: bytes
    ) -> tuple[str, str] | bool | None:
        """The body's key for the duplicate check (None: not asked for; False: bad interval)."""
        if payload.get("enable_duplicate_check") != 1:
            return None
        interval = payload.get("duplicate_check_interval", 1800)
        if (
            not isinstance(interval, int)
            or isinstance(interval, bool)
            or not 0 < interval <= 14_400
        ):
            return False
        return (app.corp_id, hashlib.sha256(raw).hexdigest())

    def _seen(self, key: tuple[str, str], payload: dict[str, Any]) -> bool:
        """A body seen within its interval is a duplicate; otherwise it is remembered now."""
        now = time.time()
        with self._lock:
            seen_at = self._seen_bodies.get(key)
            if seen_at is not None and now - seen_at < payload.get(
                "duplicate_check_interval", 1800
            ):
                return True
            self._seen_bodies[key] = now
            return False

    def _resolve(
        self, app: WeComApp, lists: dict[str, list[str]]
    ) -> tuple[list[str], dict[str, list[str]]]:
        """(licensed users reached, invalid ids by kind); user ids compare case-insensitively
        and come back lower-cased (docs/vendors/wecom.md#app-message)."""
        by_lower = {user.lower(): user for user in app.users}
        invalid: dict[str, list[str]] = {"user": [], "party": [], "tag": [], "unlicensed": []}
        reached: list[str] = []
        if "@all" in lists["touser"]:
            reached = sorted(app.users)
        else:
            for user in lists["touser"]:
                if user.lower() in by_lower:
                    reached.append(by_lower[user.lower()])
                else:
                    invalid["user"].append(user.lower())
            for kind, groups in (("toparty", app.parties), ("totag", app.tags)):
                for group in lists[kind]:
                    if group in groups:
                        reached += [u for u in groups[group] if u in app.users]
                    else:
                        invalid["party" if kind == "toparty" else "tag"].append(group)
        reached = list(dict.fromkeys(reached))
        licensed = [u for u in reached if u not in app.unlicensed]
        invalid["unlicensed"] = [u.lower() for u in reached if u in app.unlicensed]
        return licensed, invalid

    def _admit(self, app: WeComApp, users: list[str], now: float) -> list[str]:
        """The users this message reaches: the member limits drop the rest without a word."""
        admitted: list[str] = []
        with self._lock:
            for user in users:
                log = self._member_sends[(app.corp_id, app.agent_id, user)]
                while log and log[0] <= now - self.hour_window_s:
                    log.popleft()
                in_minute = sum(1 for at in log if at > now - self.window_s)
                if in_minute >= self.member_per_minute or len(log) >= self.member_per_hour:
                    self.dropped.append((app.corp_id, user))
                    continue
                log.append(now)
                admitted.append(user)
        return admitted

    async def _appchat_send(self, request: web.Request) -> web.Response:
        received = await self.record(request)
        api = "appchat/send"
        app, refusal = self._caller(request, api)
        if refusal is not None:
            return refusal
        assert app is not None
        fault = self._fault(api, app.corp_id)
        if fault is not None:
            return self._reject(app.corp_id, api, fault.code, fault.message)
        if not app.appchat_allowed:
            return self._reject(app.corp_id, api, 48002, "api forbidden")
        payload, msgtype, refusal = await self._payload(request, app, api, APPCHAT_MSGTYPES)
        if refusal is not None:
            return refusal
        assert payload is not None
        chat = payload.get("chatid")
        if not isinstance(chat, str) or not CHATID.fullmatch(chat):
            return self._reject(app.corp_id, api, 86001, "invalid chatid")
        if chat not in app.chats:
            return self._reject(app.corp_id, api, 86003, "chatid not exist")
        with self._lock:
            self.messages.append(
                AppMessage(
                    app.corp_id,
                    app.agent_id,
                    api,
                    msgtype,
                    payload[msgtype],
                    list(app.chats[chat]),
                    chat,
                    received.body,
                    time.time(),
                )
            )
        return self._answer(0, "ok")
