"""A strict stand-in for the Feishu / Lark custom bot webhook (vendors.md §4), on 127.0.0.1.

Like the real one it answers HTTP 200 to everything and carries the outcome in ``code``: an
unknown token, a missing ``msg_type``, a bad signature or a timestamp outside ±1 hour, an IP
outside the allowlist, a message without a keyword, too many sends (5 a second, 100 a minute
per bot, sliding windows) and bodies over 20 KB are refused with Feishu's own answers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
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
