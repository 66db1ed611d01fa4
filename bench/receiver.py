"""The benchmark's webhook receiver: aiohttp on 127.0.0.1, answers 200 at once, records arrivals.

Run by ``bench/throughput.py`` as its own process (so the load generator's event loop never
delays an answer). Every POST to a path other than ``/_…`` is parsed as JSON; its
``message_id`` (the msgpush webhook envelope's field) is recorded with the arrival time on
``time.monotonic()``, which on Linux is one system-wide clock (CLOCK_MONOTONIC), so the
parent can subtract its own send times from it.

Control routes (GET): ``/_stats?path=``, ``/_wait?path=&count=&timeout=`` (waits until that
many distinct ids arrived, or the timeout) and ``/_arrivals?path=`` (id -> arrival time).
The port is printed on stdout as ``PORT <n>`` once the socket listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

MAX_WAIT_S = 600.0


@dataclass
class PathLog:
    arrivals: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    first: float | None = None
    last: float | None = None  # arrival of the newest distinct id
    waiters: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        return {
            "count": len(self.arrivals),
            "requests": self.requests,
            "duplicates": self.requests - len(self.arrivals),
            "first": self.first,
            "last": self.last,
        }


class Receiver:
    def __init__(self) -> None:
        self.paths: dict[str, PathLog] = {}

    def log(self, path: str) -> PathLog:
        entry = self.paths.get(path)
        if entry is None:
            entry = self.paths[path] = PathLog()
        return entry

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.monotonic()
        entry = self.log(request.path)
        entry.requests += 1
        try:
            data = orjson.loads(body)
            key = str(data.get("message_id") or data.get("id") or entry.requests)
        except (orjson.JSONDecodeError, AttributeError):
            key = f"#{entry.requests}"
        if key not in entry.arrivals:
            entry.arrivals[key] = now
            entry.first = entry.first if entry.first is not None else now
            entry.last = now
            if entry.waiters:
                count = len(entry.arrivals)
                for target, future in entry.waiters:
                    if count >= target and not future.done():
                        future.set_result(None)
        return web.Response(body=b"ok")

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.log(request.query["path"]).stats(), dumps=_dumps)

    async def wait(self, request: web.Request) -> web.Response:
        entry = self.log(request.query["path"])
        count = int(request.query["count"])
        timeout = min(float(request.query.get("timeout", "60")), MAX_WAIT_S)
        if len(entry.arrivals) < count:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiter = (count, future)
            entry.waiters.append(waiter)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(future, timeout)
            finally:
                entry.waiters.remove(waiter)
        return web.json_response(entry.stats(), dumps=_dumps)

    async def arrivals(self, request: web.Request) -> web.Response:
        entry = self.log(request.query["path"])
        return web.json_response(entry.arrivals, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def serve(port: int, lifetime_s: float) -> None:
    receiver = Receiver()
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/_stats", receiver.stats)
    app.router.add_get("/_wait", receiver.wait)
    app.router.add_get("/_arrivals", receiver.arrivals)
    app.router.add_route("*", "/{tail:[^_].*}", receiver.hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    server = site._server
    bound = server.sockets[0].getsockname()[1] if server is not None else port
    print(f"PORT {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), lifetime_s)
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=3600.0, help="exit after this long")
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        runner = asyncio.run
    runner(serve(args.port, args.lifetime))


if __name__ == "__main__":
    main()
