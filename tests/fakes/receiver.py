"""Threaded local servers for tests; the webhook receiver records requests and answers as scripted.

It runs its own event loop in a thread, so synchronous tests and the msgpush server under
test (a subprocess) can both talk to it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Self

import orjson
from aiohttp import web


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False  # close the connection after reading the request, answering nothing


class ThreadedServer:
    """An aiohttp application served on 127.0.0.1 from its own thread and event loop.

    Subclasses add routes in ``routes``; ``requests`` records everything received.
    """

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def record(self, request: web.Request) -> Received:
        body = await request.read()
        received = Received(
            request.method, request.path_qs, dict(request.headers), body, time.time()
        )
        with self._lock:
            self.requests.append(received)
        return received

    def at(self, path: str) -> list[Received]:
        """Requests to ``path`` (the query string is ignored)."""
        with self._lock:
            return [r for r in self.requests if r.path.split("?", 1)[0] == path]

    def wait_for(self, path: str, count: int, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.at(path)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"{path}: expected {count} requests, got {len(self.at(path))}")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self.routes(app)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())


class Receiver(ThreadedServer):
    """Answers 200 ok to anything, unless a reply is scripted for the path."""

    def __init__(self) -> None:
        super().__init__()
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._per_delivery: dict[str, tuple[Reply, ...]] = {}
        self._seen: Counter[tuple[str, str]] = Counter()

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._handle)

    def script(self, path: str, *replies: Reply | int) -> None:
        """The next answers for ``path``, in order; after them, 200 ok."""
        with self._lock:
            for reply in replies:
                self._scripts[path].append(Reply(reply) if isinstance(reply, int) else reply)

    def script_each(self, path: str, *replies: Reply | int) -> None:
        """The first answers for every delivery to ``path`` (told apart by its ``webhook-id``
        header), in order; after them, 200 ok. A storm that hits each message alike."""
        with self._lock:
            self._per_delivery[path] = tuple(
                Reply(reply) if isinstance(reply, int) else reply for reply in replies
            )

    def _next_reply(self, request: web.Request) -> Reply:
        with self._lock:
            each = self._per_delivery.get(request.path)
            if each is not None:
                key = (request.path, request.headers.get("webhook-id", ""))
                number = self._seen[key]
                self._seen[key] += 1
                return each[number] if number < len(each) else Reply()
            script = self._scripts.get(request.path)
            return script.popleft() if script else Reply()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        reply = self._next_reply(request)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.reset and request.transport is not None:
            request.transport.abort()  # the client sees the connection drop mid-request
            raise asyncio.CancelledError
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)
