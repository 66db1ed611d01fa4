"""A strict fake of DingTalk's custom robot webhook (vendors.md §6): tokens, 加签, keywords, IP
allowlist, payload shape per msgtype, the 20,000-byte cap, the 20-a-minute throttle, msgUuid.

Like DingTalk, it answers HTTP 200 with ``errcode``/``errmsg`` for every outcome.
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
# the errmsg DingTalk sends with each code (vendors.md §6 table), used by fail_next
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
