"""Fake WeCom (企业微信) endpoints for tests, as strict as the real ones (vendors.md §0, §2)."""

from __future__ import annotations

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
    """WeCom's errmsg, with the trace suffix live servers add to every error (vendors.md §0)."""
    if not hint or code == 0:
        return message
    trace = f"{int(time.time() * 1000)}{secrets.randbelow(10**7):07d}"
    return f"{message}, hint: [{trace}], from ip: 127.0.0.1, more info at " + WECOM_LOOKUP.format(
        code=code
    )


def wecom_answer(code: int, message: str, *, hint: bool) -> web.Response:
    """Every WeCom answer is HTTP 200; the outcome is in errcode (vendors.md §0)."""
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
# a <@userid> in text or markdown pings; markdown_v2 has no mention syntax (vendors.md §2)
MENTION = re.compile(r"<@([^>\s]+)>")


class FakeWeComBot(ThreadedServer):
    """The group bot webhook ``POST /cgi-bin/webhook/send?key=KEY`` (vendors.md §2).

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
        text_limit: int = 2048,  # documented; a live server once enforced 5120 (vendors.md §2)
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
                return 44004, "empty content"  # the code is assumed (vendors.md §8.2)
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
