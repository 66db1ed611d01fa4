"""A strict fake of DingTalk's custom robot webhook (docs/vendors/dingtalk.md#custom-robot): tokens,
加签, keywords, IP allowlist, payload shape per msgtype, the 20,000-byte cap, the 20-a-minute
throttle, msgUuid.

Like DingTalk, it answers HTTP 200 with ``errcode``/``errmsg`` for every outcome.

FakeDingTalkApp (below) fakes the self-built app's open API (docs/vendors/dingtalk.md#two-apis).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson
from aiohttp import web

from tests.fakes.receiver import ThreadedServer

PATH = "/robot/send"
MAX_BODY_BYTES = 20_000
SIGN_WINDOW_MS = 3_600_000
# the errmsg DingTalk sends with each code (docs/vendors/dingtalk.md#robot-error-codes), used by
# fail_next
MESSAGES = {
    -1: "系统繁忙",
    40035: "缺少参数 access_token",
    43002: "需要POST请求",
    43004: "无效的HTTP HEADER Content-Type",
    130101: "send too fast, exceed 20 times per minute",
    300005: "token is not exist",
    310000: "keywords not in content",
    400013: "群已被解散",
    400101: "access_token不存在",
    400102: "机器人已停用",
    400105: "不支持的消息类型",
    400106: "机器人不存在",
    410100: "发送速度太快而限流",
    430101: "含有不安全的外链",
    430102: "含有不合适的文本",
    430103: "含有不合适的图片",
    430104: "含有不合适的内容",
    460101: "message too long, exceed 20000 bytes",
    660026: "sending too many messages per minute",
}
# which object each msgtype needs, and its required string fields ([unverified] beyond the doc)
SHAPES = {
    "text": ("text", ("content",)),
    "markdown": ("markdown", ("title", "text")),
    "actionCard": ("actionCard", ("title", "text")),
    "link": ("link", ("title", "text", "messageUrl")),
    "feedCard": ("feedCard", ()),
}


class Rejected(Exception):
    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.message = message if message is not None else MESSAGES.get(code, "error")


@dataclass
class Posted:
    """A message the group saw, and which of its @ targets really pinged."""

    body: dict[str, Any]
    query: dict[str, str]
    at: float
    pinged: list[str]
    not_pinged: list[str]

    @property
    def msgtype(self) -> str:
        return str(self.body["msgtype"])


@dataclass
class Robot:
    token: str
    keywords: list[str] = field(default_factory=list)
    secret: str | None = None
    ip_allowlist: list[str] = field(default_factory=list)
    per_minute: int = 20
    window_s: float = 60.0
    lock_s: float = 600.0
    rate_code: int = 410100
    state: str = "active"  # or disabled, deleted, dissolved
    posted: list[Posted] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    duplicates: int = 0
    sends: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    uuids: set[str] = field(default_factory=set)
    faults: deque[tuple[int, str | None]] = field(default_factory=deque)
    drop_answers: int = 0

    def rate_rejections(self) -> list[tuple[int, str]]:
        return [r for r in self.rejected if r[0] in (410100, 130101, 660026)]


def sign(secret: str, timestamp: str) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


class FakeDingTalk(ThreadedServer):
    def __init__(self, *, unknown_token_code: int = 300005) -> None:
        super().__init__()
        self.robots: dict[str, Robot] = {}
        self.unknown_token_code = unknown_token_code  # the doc's 400101, or the live 300005
        self._state_lock = threading.Lock()

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", PATH, self._handle)

    # -- test controls --------------------------------------------------------------------

    def add_robot(self, **settings: Any) -> Robot:
        robot = Robot(token=secrets.token_hex(32), **settings)
        with self._state_lock:
            self.robots[robot.token] = robot
        return robot

    def webhook_url(self, robot: Robot) -> str:
        return self.url(f"{PATH}?access_token={robot.token}")

    def fail_next(
        self, robot: Robot, code: int, message: str | None = None, times: int = 1
    ) -> None:
        """The next ``times`` requests to ``robot`` get this error (after the token check)."""
        with self._state_lock:
            robot.faults.extend([(code, message)] * times)

    def drop_next_answer(self, robot: Robot) -> None:
        """Post the next message, then close the connection instead of answering (a timeout)."""
        with self._state_lock:
            robot.drop_answers += 1

    # -- the endpoint ---------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = await self.record(request)
        query = {k: v[0] for k, v in parse_qs(request.query_string, keep_blank_values=True).items()}
        robot = self.robots.get(query.get("access_token", ""))
        try:
            posted = self._check(request, received.body, query, robot)
        except Rejected as rejected:
            if robot is not None:
                with self._state_lock:
                    robot.rejected.append((rejected.code, rejected.message))
            return web.json_response({"errcode": rejected.code, "errmsg": rejected.message})
        if robot is not None and posted and robot.drop_answers:
            with self._state_lock:
                robot.drop_answers -= 1
            assert request.transport is not None
            request.transport.close()  # posted, but the sender never learns it
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    def _check(
        self, request: web.Request, raw: bytes, query: dict[str, str], robot: Robot | None
    ) -> bool:
        """Raise Rejected as DingTalk would; True when a new message was posted."""
        if request.method != "POST":
            raise Rejected(43002)
        if not query.get("access_token"):
            raise Rejected(40035)
        if robot is None:
            raise Rejected(self.unknown_token_code)
        with self._state_lock:
            fault = robot.faults.popleft() if robot.faults else None
        if fault is not None:
            raise Rejected(*fault)
        states = {"disabled": 400102, "deleted": 400106, "dissolved": 400013}
        if robot.state in states:
            raise Rejected(states[robot.state])
        if request.content_type != "application/json":
            raise Rejected(43004)
        self._security(request, query, robot)
        if len(raw) > MAX_BODY_BYTES:
            raise Rejected(460101)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Rejected(40035, "缺少参数 json") from None
        if not isinstance(body, dict):
            raise Rejected(40035, "缺少参数 json")
        text = self._shape(body)
        if robot.keywords and not any(k in text for k in robot.keywords):
            raise Rejected(310000, "keywords not in content")
        return self._post(robot, body, query)

    def _security(self, request: web.Request, query: dict[str, str], robot: Robot) -> None:
        if robot.ip_allowlist:
            remote = ipaddress.ip_address(request.remote or "0.0.0.0")
            networks = [ipaddress.ip_network(n, strict=False) for n in robot.ip_allowlist]
            if not any(remote in network for network in networks):
                raise Rejected(310000, f"ip {remote} not in whitelist")
        if robot.secret is None:
            return
        timestamp = query.get("timestamp", "")
        if not timestamp.isdigit() or abs(time.time() * 1000 - int(timestamp)) > SIGN_WINDOW_MS:
            raise Rejected(310000, "invalid timestamp")
        # parse_qs decoded the query once, as DingTalk does: an un-encoded "+" arrives as " "
        if not hmac.compare_digest(query.get("sign", ""), sign(robot.secret, timestamp)):
            raise Rejected(310000, "sign not match")

    def _shape(self, body: dict[str, Any]) -> str:
        """Check the payload matches its msgtype (peers D4); the text the keyword check sees."""
        msgtype = body.get("msgtype")
        if msgtype not in SHAPES:
            raise Rejected(400105)
        key, required = SHAPES[msgtype]
        part = body.get(key)
        if not isinstance(part, dict):
            raise Rejected(40035, f"缺少参数 {key}")
        for name in required:
            if not isinstance(part.get(name), str) or not part[name]:
                raise Rejected(40035, f"缺少参数 {key}.{name}")
        if msgtype == "actionCard" and not (part.get("singleURL") or part.get("btns")):
            raise Rejected(40035, "缺少参数 actionCard.btns")
        if msgtype == "feedCard":
            return " ".join(str(link.get("title", "")) for link in part.get("links", []))
        return " ".join(str(part.get(name, "")) for name in ("title", "text", "content"))

    def _post(self, robot: Robot, body: dict[str, Any], query: dict[str, str]) -> bool:
        now = time.monotonic()
        with self._state_lock:
            if now < robot.locked_until:
                raise Rejected(robot.rate_code)
            while robot.sends and robot.sends[0] <= now - robot.window_s:
                robot.sends.popleft()
            if len(robot.sends) >= robot.per_minute:
                robot.locked_until = now + robot.lock_s
                raise Rejected(robot.rate_code)
            uuid = body.get("msgUuid")
            if isinstance(uuid, str) and uuid in robot.uuids:
                robot.duplicates += 1
                return False
            if isinstance(uuid, str):
                robot.uuids.add(uuid)
            robot.sends.append(now)
            robot.posted.append(_posted(body, query))
        return True


def _posted(body: dict[str, Any], query: dict[str, str]) -> Posted:
    raw_at = body.get("at")
    at: dict[str, Any] = raw_at if isinstance(raw_at, dict) else {}
    part = body.get(body["msgtype"], {})
    text = str(part.get("content") or part.get("text") or "")
    targets = [*at.get("atMobiles", []), *at.get("atUserIds", [])]
    pinged = [t for t in targets if f"@{t}" in text]
    not_pinged = [t for t in targets if t not in pinged]
    return Posted(body, query, time.time(), pinged, not_pinged)


# -- the self-built app (docs/vendors/dingtalk.md): tokens, work notifications, robot messages -

APP_TOKEN_PATH = "/v1.0/oauth2/accessToken"
APP_GETTOKEN_PATH = "/gettoken"
APP_NOTICE_PATH = "/topapi/message/corpconversation/asyncsend_v2"
APP_BATCH_PATH = "/v1.0/robot/oToMessages/batchSend"
APP_GROUP_PATH = "/v1.0/robot/groupMessages/send"
APP_APIS = ("token", "gettoken", "notice", "batch", "group")
NOTICE_MSG_MAX_BYTES = 2048
ROBOT_PARAM_MAX_BYTES = 15_000
ROBOT_PERMISSION = "qyapi_robot_sendmsg"
NOTICE_PERMISSION = "qyapi_base"
PERMISSION_TEXT = (
    "没有调用该接口的权限，接口权限申请参考：https://open.dingtalk.com/document/orgapp-server/"
    "add-api-permission"
)
# the old API's errmsg per errcode (docs/vendors/dingtalk.md#error-codes; assumed where no source
# gives one)
APP_OAPI_MESSAGES = {
    -1: "系统繁忙",
    22: "无效的API路径",
    40014: "不合法的access_token",
    40035: "缺少参数",
    40096: "不合法的appKey或appSecret",
    41001: "缺少access_token参数",
    42001: "access_token超时",
    60011: PERMISSION_TEXT,
    60020: "访问ip不在白名单之中",
    90002: "服务器繁忙，请稍后再试",
    90018: "调用频率超过限制",
    90020: "调用量超过限制",
}
# the new API's HTTP status and message per code (docs/vendors/dingtalk.md#error-codes)
APP_API_MESSAGES: dict[str, tuple[int, str]] = {
    "invalidClientIdOrSecret": (400, "无效的clientId或者clientSecret"),
    "InvalidAuthentication": (400, "不合法的access_token"),
    "AuthenticationFailed.MissingParameter": (400, "缺少参数：x-acs-dingtalk-access-token"),
    "Forbidden.AccessDenied.IpNotInWhiteList": (403, "访问ip不在白名单之中"),
    "Forbidden.AccessDenied.AccessTokenPermissionDenied": (403, PERMISSION_TEXT),
    "Forbidden.AccessDenied.QpsLimitForApi": (403, "api qps limit"),
    "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi": (403, "appkey and api qps limit"),
    "Forbidden.AccessDenied.QpmLimitForAppkeyAndApi": (403, "appkey and api qpm limit"),
    "system.error": (500, "未知的系统错误"),
    "server.error": (500, "server error"),
    "unknownError": (500, "unknownError"),
}
# msgKey -> the msgParam fields it needs (docs/vendors/dingtalk.md#robot-messages)
ROBOT_PARAMS: dict[str, tuple[str, ...]] = {
    "sampleText": ("content",),
    "sampleMarkdown": ("title", "text"),
    "sampleImageMsg": ("photoURL",),
    "sampleLink": ("text", "title", "picUrl", "messageUrl"),
    "sampleActionCard": ("title", "text", "singleTitle", "singleURL"),
    **{
        f"sampleActionCard{n}": (
            "title",
            "text",
            *[f"action{kind}{i}" for i in range(1, n + 1) for kind in ("Title", "URL")],
        )
        for n in range(2, 6)
    },
    "sampleActionCard6": ("title", "text", "buttonTitle1", "buttonUrl1"),
    "sampleFile": ("mediaId", "fileName", "fileType"),
}
# msgtype -> the fields of msg[msgtype] it needs (docs/vendors/dingtalk.md#work-notification;
# snake_case for action_card)
NOTICE_SHAPES: dict[str, tuple[str, ...]] = {
    "text": ("content",),
    "image": ("media_id",),
    "voice": ("media_id", "duration"),
    "file": ("media_id",),
    "link": ("messageUrl", "picUrl", "title", "text"),
    "oa": ("head", "body"),
    "markdown": ("title", "text"),
    "action_card": ("title", "markdown"),
}


class OapiError(Exception):
    """An old-API answer: HTTP 200 with errcode (88 wraps auth errors in a string sub_code)."""

    def __init__(self, code: int, message: str | None = None, sub_code: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.message = message if message is not None else APP_OAPI_MESSAGES.get(code, "error")
        self.sub_code = sub_code

    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "errcode": self.code,
            "errmsg": self.message,
            "request_id": secrets.token_hex(6),
        }
        if self.sub_code is not None:
            data["sub_code"] = self.sub_code
            data["sub_msg"] = APP_OAPI_MESSAGES.get(int(self.sub_code), "error")
        return data


class ApiError(Exception):
    """A new-API answer: HTTP 4xx/5xx with {code, message, requestid}."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        status: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(code)
        known = APP_API_MESSAGES.get(code, (400, code))
        self.code = code
        self.message = message if message is not None else known[1]
        self.status = status or known[0]
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {
            "requestid": secrets.token_hex(8).upper(),
            "code": self.code,
            "message": self.message,
            **self.extra,
        }


@dataclass
class Group:
    cid: str
    state: str = "active"  # or disbanded, stopped
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@dataclass
class App:
    app_key: str
    app_secret: str
    agent_id: int | None = None
    robot_code: str | None = None
    users: set[str] = field(default_factory=set)  # inside the app's visible range
    depts: dict[str, list[str]] = field(default_factory=dict)  # dept id -> members
    groups: dict[str, Group] = field(default_factory=dict)
    permissions: set[str] = field(default_factory=lambda: {NOTICE_PERMISSION, ROBOT_PERMISSION})
    ip_allowlist: list[str] = field(default_factory=list)
    token_lifetime_s: float = 7200.0
    qps: int = 20
    qps_window_s: float = 1.0
    robot_max_users: int = 20
    notice_daily_cap: int = 500
    flow_control: dict[str, int] = field(default_factory=dict)  # user -> times still throttled
    token_endpoint: bool = True  # False: the new endpoint answers 404 (only the old API served)
    issued_tokens: list[str] = field(default_factory=list)  # every token this app was given
    # what happened
    token_fetches: int = 0
    gettoken_fetches: int = 0
    notices: list[dict[str, Any]] = field(default_factory=list)  # accepted asyncsend_v2 bodies
    oto: list[dict[str, Any]] = field(default_factory=list)  # accepted batchSend bodies
    inbox: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # what each user saw
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (user, why) silently lost
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (api, code)
    faults: dict[str, deque[Exception]] = field(default_factory=dict)
    calls: dict[str, deque[float]] = field(default_factory=dict)

    @property
    def fetches(self) -> int:
        return self.token_fetches + self.gettoken_fetches

    def throttled(self) -> list[tuple[str, str]]:
        return [r for r in self.rejected if "Qp" in r[1] or r[1] in ("90018", "90002")]

    def group(self, cid: str) -> Group:
        return self.groups[cid]


@dataclass
class IssuedToken:
    app_key: str
    expires_at: float
    revoked: bool = False


class FakeDingTalkApp(ThreadedServer):
    """DingTalk's open API for self-built apps, as strict as DingTalk: both token endpoints,
    asyncsend_v2 (old API, HTTP 200 + errcode) and the robot's batchSend and groupMessages/send
    (new API, HTTP 4xx + code), with tokens, recipients, payload shapes, sizes and QPS."""

    def __init__(self, *, wrap_auth_errors: bool = True) -> None:
        super().__init__()
        self.apps: dict[str, App] = {}
        self.tokens: dict[str, IssuedToken] = {}
        self.wrap_auth_errors = wrap_auth_errors  # errcode 88 + sub_code, as observed live
        self._state_lock = threading.Lock()

    def routes(self, app: web.Application) -> None:
        app.router.add_post(APP_TOKEN_PATH, self._token)
        app.router.add_get(APP_GETTOKEN_PATH, self._gettoken)
        app.router.add_post(APP_NOTICE_PATH, self._notice)
        app.router.add_post(APP_BATCH_PATH, self._batch)
        app.router.add_post(APP_GROUP_PATH, self._group)

    # -- test controls --------------------------------------------------------------------

    def add_app(self, **settings: Any) -> App:
        key = "ding" + secrets.token_hex(8)
        settings.setdefault("robot_code", key)
        app = App(app_key=key, app_secret=secrets.token_urlsafe(24), **settings)
        with self._state_lock:
            self.apps[key] = app
        return app

    def add_group(self, app: App, state: str = "active") -> Group:
        group = Group("cid" + secrets.token_urlsafe(12) + "==", state)
        with self._state_lock:
            app.groups[group.cid] = group
        return group

    def fail_next(
        self,
        app: App,
        api: str,
        code: int | str,
        message: str | None = None,
        *,
        times: int = 1,
        sub_code: str | None = None,
        status: int | None = None,
    ) -> None:
        """The next ``times`` calls of ``api`` by ``app`` get this error, in the API's own form
        (an int code for the old API, a string code for the new)."""
        assert api in APP_APIS, api
        error: Exception
        if isinstance(code, int):
            error = OapiError(code, message, sub_code)
        else:
            error = ApiError(code, message, status)
        with self._state_lock:
            app.faults.setdefault(api, deque()).extend([error] * times)

    def revoke_tokens(self, app: App) -> None:
        """Every token issued to ``app`` becomes unknown (as after a secret reset)."""
        with self._state_lock:
            for issued in self.tokens.values():
                if issued.app_key == app.app_key:
                    issued.revoked = True

    def expire_tokens(self, app: App) -> None:
        with self._state_lock:
            for issued in self.tokens.values():
                if issued.app_key == app.app_key:
                    issued.expires_at = 0.0

    def _owner(self, token: str | None) -> App | None:
        """The app a token was issued to (revoked or expired too), to record its rejections."""
        with self._state_lock:
            issued = self.tokens.get(token or "")
        return self.apps.get(issued.app_key) if issued is not None else None

    def _valid(self, token: str) -> IssuedToken | bool | None:
        """The live token; None when unknown or revoked; False when expired."""
        with self._state_lock:
            issued = self.tokens.get(token)
        if issued is None or issued.revoked:
            return None
        return issued if issued.expires_at > time.monotonic() else False

    # -- token endpoints ------------------------------------------------------------------

    def _issue(self, app: App) -> tuple[str, int]:
        """Within its lifetime the same token comes back, extended; afterwards a new one
        (docs/vendors/dingtalk.md#access-token)."""
        now = time.monotonic()
        with self._state_lock:
            for token, issued in self.tokens.items():
                if issued.app_key == app.app_key and not issued.revoked and issued.expires_at > now:
                    issued.expires_at = now + app.token_lifetime_s
                    return token, int(app.token_lifetime_s)
            token = secrets.token_hex(16)
            self.tokens[token] = IssuedToken(app.app_key, now + app.token_lifetime_s)
            app.issued_tokens.append(token)
        return token, int(app.token_lifetime_s)

    async def _token(self, request: web.Request) -> web.StreamResponse:
        received = await self.record(request)
        try:
            body = orjson.loads(received.body)
        except orjson.JSONDecodeError:
            body = None
        key = body.get("appKey") if isinstance(body, dict) else None
        app = self.apps.get(str(key))
        if app is not None and not app.token_endpoint:
            return web.Response(status=404, text="Not Found")
        try:
            if app is not None:
                self._fault(app, "token")
            if app is None or not isinstance(body, dict) or body.get("appSecret") != app.app_secret:
                raise ApiError("invalidClientIdOrSecret")
        except ApiError as error:
            return self._api_error(app, "token", error)
        with self._state_lock:
            app.token_fetches += 1
        token, lifetime = self._issue(app)
        return web.json_response({"accessToken": token, "expireIn": lifetime})

    async def _gettoken(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        key, secret = request.query.get("appkey"), request.query.get("appsecret")
        app = self.apps.get(str(key))
        try:
            if not key or not secret:
                raise OapiError(40035, "缺少参数 corpid or appkey")
            if app is not None:
                self._fault(app, "gettoken")
            if app is None or secret != app.app_secret:
                raise OapiError(40096)
        except OapiError as error:
            return self._oapi_error(app, "gettoken", error)
        with self._state_lock:
            app.gettoken_fetches += 1
        token, lifetime = self._issue(app)
        return web.json_response(
            {"errcode": 0, "access_token": token, "errmsg": "ok", "expires_in": lifetime}
        )

    # -- the old API: work notifications --------------------------------------------------

    def _oapi_app(self, request: web.Request) -> App:
        token = request.query.get("access_token")
        if not token:
            raise OapiError(41001)
        issued = self._valid(token)
        if not isinstance(issued, IssuedToken):
            sub = "40014" if issued is None else "42001"
            if self.wrap_auth_errors:
                raise OapiError(88, "不合法的access_token", sub_code=sub)
            raise OapiError(int(sub))
        return self.apps[issued.app_key]

    async def _notice(self, request: web.Request) -> web.StreamResponse:
        received = await self.record(request)
        app: App | None = None
        try:
            app = self._oapi_app(request)
            self._fault(app, "notice")
            if not self._ip_allowed(app, request):
                raise OapiError(60020, f"访问ip不在白名单之中,request ip={request.remote}")
            if NOTICE_PERMISSION not in app.permissions:
                raise OapiError(60011)
            if not self._within_qps(app, "notice"):
                raise OapiError(90018)
            task_id = self._accept_notice(app, received.body)
        except OapiError as error:
            owner = app or self._owner(request.query.get("access_token"))
            return self._oapi_error(owner, "notice", error)
        return web.json_response(
            {"errcode": 0, "errmsg": "ok", "task_id": task_id, "request_id": secrets.token_hex(6)}
        )

    def _accept_notice(self, app: App, raw: bytes) -> int:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise OapiError(40035, "缺少参数 json") from None
        if not isinstance(body, dict):
            raise OapiError(40035, "缺少参数 json")
        if not isinstance(body.get("agent_id"), int):
            raise OapiError(40035, "缺少参数 agent_id")
        msg = body.get("msg")
        if not isinstance(msg, dict):
            raise OapiError(40035, "缺少参数 msg")
        msgtype = msg.get("msgtype")
        if msgtype not in NOTICE_SHAPES:
            raise OapiError(40035, f"不支持的消息类型 {msgtype}")
        part = msg.get(msgtype)
        if not isinstance(part, dict):  # e.g. markdown content sent as msgtype text (peers D4)
            raise OapiError(40035, f"缺少参数 msg.{msgtype}")
        for name in NOTICE_SHAPES[msgtype]:
            if part.get(name) in (None, ""):
                raise OapiError(40035, f"缺少参数 msg.{msgtype}.{name}")
        if msgtype == "action_card" and not (
            (part.get("single_title") and part.get("single_url")) or part.get("btn_json_list")
        ):
            raise OapiError(40035, "缺少参数 msg.action_card.btn_json_list")
        if len(orjson.dumps(msg)) > NOTICE_MSG_MAX_BYTES:  # [unverified] how DingTalk answers
            raise OapiError(40035, f"msg 超过 {NOTICE_MSG_MAX_BYTES} 字节")
        users = _split_list(body.get("userid_list"))
        depts = _split_list(body.get("dept_id_list"))
        to_all = body.get("to_all_user") is True
        if not to_all and not users and not depts:
            raise OapiError(40035, "缺少参数 userid_list/dept_id_list")
        if len(users) > 100 or len(depts) > 20:  # [unverified] how DingTalk answers
            raise OapiError(40035, "userid_list 超过 100 或 dept_id_list 超过 20")
        with self._state_lock:
            app.notices.append(body)
            reached = list(app.users) if to_all else list(users)
            for dept in depts:
                reached.extend(app.depts.get(dept, []))
            for user in dict.fromkeys(reached):
                self._notify(app, user, msg)
            return len(app.notices)

    def _notify(self, app: App, user: str, msg: dict[str, Any]) -> None:
        """Deliver like DingTalk does, silently dropping what it would
        (docs/vendors/dingtalk.md#work-notification)."""
        seen = app.inbox.get(user, [])
        if user not in app.users:
            app.dropped.append((user, "unknown or outside the visible range"))
        elif any(m.get("notice") == msg for m in seen):
            app.dropped.append((user, "same content twice in a day"))
        elif sum(1 for m in seen if "notice" in m) >= app.notice_daily_cap:
            app.dropped.append((user, "daily cap"))
        else:
            app.inbox.setdefault(user, []).append({"notice": msg})

    # -- the new API: robot messages ------------------------------------------------------

    def _api_app(self, request: web.Request) -> App:
        token = request.headers.get("x-acs-dingtalk-access-token")
        if not token:  # a query access_token or an Authorization header does not count
            raise ApiError("AuthenticationFailed.MissingParameter")
        issued = self._valid(token)
        if not isinstance(issued, IssuedToken):
            raise ApiError("InvalidAuthentication")
        return self.apps[issued.app_key]

    def _robot_checks(self, request: web.Request, app: App, api: str, raw: bytes) -> dict[str, Any]:
        self._fault(app, api)
        if not self._ip_allowed(app, request):
            raise ApiError(
                "Forbidden.AccessDenied.IpNotInWhiteList",
                f"访问ip不在白名单之中, request ip={request.remote}",
            )
        if ROBOT_PERMISSION not in app.permissions:
            raise ApiError(
                "Forbidden.AccessDenied.AccessTokenPermissionDenied",
                extra={"accessdenieddetail": {"requiredScopes": [ROBOT_PERMISSION]}},
            )
        if not self._within_qps(app, api):
            raise ApiError("Forbidden.AccessDenied.QpsLimitForAppkeyAndApi")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError("invalidParameter.msgBody.invalid", "body必须是JSON") from None
        if not isinstance(body, dict):
            raise ApiError("invalidParameter.msgBody.invalid", "body必须是JSON")
        code = body.get("robotCode")
        if not code:
            raise ApiError("invalidParameter.robotCode.empty", "机器人robotCode为空")
        if code != app.robot_code:
            raise ApiError("invalidParameter.robotCode.notExsit", "机器人不存在")
        key = body.get("msgKey")
        if not key:
            raise ApiError("invalidParameter.msgKey.empty", "缺少msgKey")
        if key not in ROBOT_PARAMS:
            raise ApiError("invalidParameter.msgKey.invalid", "msgKey无效")
        raw_param = body.get("msgParam")
        if not isinstance(raw_param, str):  # an object instead of a JSON string
            raise ApiError("invalidParameter.msgParam.invalid", "msgParam必须是json格式")
        if len(raw_param.encode()) > ROBOT_PARAM_MAX_BYTES:
            raise ApiError("invalidParameter.msgParam.tooLong", "消息内容太长")
        try:
            param = orjson.loads(raw_param)
        except orjson.JSONDecodeError:
            raise ApiError("invalidParameter.msgParam.invalid", "msgParam必须是json格式") from None
        if not isinstance(param, dict):
            raise ApiError("invalidParameter.msgParam.invalid", "msgParam必须是json格式")
        for name in ROBOT_PARAMS[key]:
            if not isinstance(param.get(name), str) or not param[name]:
                raise ApiError(f"miss.param.{_miss_param(key, name)}", f"需要{name}属性")
        body["msgParam"] = param
        return body

    async def _batch(self, request: web.Request) -> web.StreamResponse:
        received = await self.record(request)
        app: App | None = None
        try:
            app = self._api_app(request)
            body = self._robot_checks(request, app, "batch", received.body)
            users = body.get("userIds")
            if not isinstance(users, list) or not users:
                raise ApiError("invalidParameter.userIds.empty", "用户userId列表为空")
            if len(users) > app.robot_max_users:
                raise ApiError("invalidParameter.userIds.overMax", "用户userId列表超过最大限制")
        except ApiError as error:
            owner = app or self._owner(request.headers.get("x-acs-dingtalk-access-token"))
            return self._api_error(owner, "batch", error)
        invalid, throttled = [], []
        with self._state_lock:
            app.oto.append(body)
            for user in users:
                if user not in app.users:
                    invalid.append(user)
                elif app.flow_control.get(user, 0) > 0:
                    app.flow_control[user] -= 1
                    throttled.append(user)
                else:
                    app.inbox.setdefault(user, []).append(
                        {"robot": body["msgKey"], "param": body["msgParam"]}
                    )
        return web.json_response(
            {
                "processQueryKey": secrets.token_urlsafe(16),
                "invalidStaffIdList": invalid,
                "flowControlledStaffIdList": throttled,
            }
        )

    async def _group(self, request: web.Request) -> web.StreamResponse:
        received = await self.record(request)
        app: App | None = None
        try:
            app = self._api_app(request)
            body = self._robot_checks(request, app, "group", received.body)
            cid = body.get("openConversationId")
            if not cid:
                raise ApiError("miss.openConversationId", "缺少openConversationId")
            group = app.groups.get(str(cid))
            if group is None:
                raise ApiError("invalid.openConversationId", "无效的openConversationId")
            if group.state == "disbanded":
                raise ApiError("group.disbanded", "群已经解散")
            if group.state == "stopped":
                raise ApiError("bot.stopped", "群机器人已经停用")
        except ApiError as error:
            owner = app or self._owner(request.headers.get("x-acs-dingtalk-access-token"))
            return self._api_error(owner, "group", error)
        with self._state_lock:
            group.messages.append((body["msgKey"], body["msgParam"]))
        return web.json_response({"processQueryKey": secrets.token_urlsafe(16)})

    # -- shared ---------------------------------------------------------------------------

    def _fault(self, app: App, api: str) -> None:
        with self._state_lock:
            queue = app.faults.get(api)
            fault = queue.popleft() if queue else None
        if fault is not None:
            raise fault

    def _ip_allowed(self, app: App, request: web.Request) -> bool:
        if not app.ip_allowlist:
            return True
        remote = ipaddress.ip_address(request.remote or "0.0.0.0")
        return any(remote in ipaddress.ip_network(n, strict=False) for n in app.ip_allowlist)

    def _within_qps(self, app: App, api: str) -> bool:
        now = time.monotonic()
        with self._state_lock:
            calls = app.calls.setdefault(api, deque())
            while calls and calls[0] <= now - app.qps_window_s:
                calls.popleft()
            if len(calls) >= app.qps:
                return False
            calls.append(now)
        return True

    def _oapi_error(self, app: App | None, api: str, error: OapiError) -> web.Response:
        if app is not None:
            with self._state_lock:
                app.rejected.append((api, str(error.sub_code or error.code)))
        return web.json_response(error.body())  # the old API answers errors with HTTP 200

    def _api_error(self, app: App | None, api: str, error: ApiError) -> web.Response:
        if app is not None:
            with self._state_lock:
                app.rejected.append((api, error.code))
        return web.json_response(error.body(), status=error.status)


def _split_list(value: Any) -> list[str]:
    if not isinstance(value, str):
        return []
    return [item for item in value.split(",") if item]


def _miss_param(msg_key: str, name: str) -> str:
    """DingTalk's miss.param.* names: contentOfText, markdownTotext, actionCardTosingleTitle…"""
    if msg_key == "sampleText":
        return "contentOfText"
    if msg_key == "sampleMarkdown":
        return f"markdownTo{name}"
    if msg_key.startswith("sampleActionCard"):
        return f"actionCardTo{name}"
    return name
