"""Renders user-written templates in a separate process, with a time budget and a memory limit.

A template is a program: the sandbox (:mod:`msgpush.templating`) refuses the single operations
that are too large, but nested loops can still run for minutes, and in the server's process
that would block the event loop (every request) and hold the GIL. So the server hands
user-written templates (previews, save checks, rule templates and overrides at ingest, webhook
``body_template`` at send) to a small pool of worker processes:

- started lazily (``python -m msgpush.template_worker``), at most :data:`POOL_SIZE` per server
  process, each serving one render at a time over its stdin/stdout (length-prefixed frames);
- a render that overruns its budget gets its worker killed (SIGKILL) and replaced on the next
  render; the caller gets :class:`~msgpush.templating.TemplateLimitError` ("time limit 2 s");
- each worker caps its address space (``RLIMIT_AS``) at what it holds after start-up plus
  :data:`MEMORY_HEADROOM_BYTES`, so ``{% set ns.s = ns.s ~ ns.s %}`` in a loop ends in a
  MemoryError there, not in the server;
- a worker exits when its stdin closes, so it never outlives the server, even after ``kill -9``.

The server pickles the request (its own data); the worker answers in JSON, so a template that
escaped the sandbox still could not hand the server a pickle to run.

A worker's start-up (~0.3 s: Python and Jinja2) is not counted in the budget. A render costs
one round trip on top of the template itself: about 0.2 ms for a small event (measured in
``tests/test_template_bounds.py``). Built-in templates are msgpush's own, loop over nothing
larger than an event's 50 labels and render in the server's process; only a custom template
makes the trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pickle
import struct
import sys
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from msgpush.templating import (
    BODY_OUTPUT_CHARS,
    MESSAGE_OUTPUT_CHARS,
    TemplateError,
    TemplateLimitError,
    render_limited,
)

POOL_SIZE = 2
MEMORY_HEADROOM_BYTES = 256 * 1024 * 1024
START_TIMEOUT_S = 30.0
# a rule template or override that overran its time at ingest is skipped (the built-in part is
# used at once) for this long, so that a burst of events does not cost the budget per event
OVERRUN_MEMORY_S = 60.0
_FRAME = struct.Struct(">I")
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)  # what the worker imports from


@dataclass(frozen=True)
class Budget:
    """What one render may take: seconds of wall time and characters of output per template."""

    seconds: float
    max_chars: int
    remember_overruns: bool = False


PREVIEW = Budget(1.0, MESSAGE_OUTPUT_CHARS)  # previews and the checks when a template is saved
INGEST = Budget(2.0, MESSAGE_OUTPUT_CHARS, remember_overruns=True)  # rule templates, overrides
WEBHOOK_CHECK = Budget(1.0, BODY_OUTPUT_CHARS)
# not remembered: skipping would fail every message of the channel, not fall back
WEBHOOK_SEND = Budget(2.0, BODY_OUTPUT_CHARS)

Result = str | TemplateError


# -- the worker's side ----------------------------------------------------------------------


def _limit_memory() -> None:
    try:
        import resource

        pages = int(Path("/proc/self/statm").read_text().split()[0])
        limit = pages * os.sysconf("SC_PAGE_SIZE") + MEMORY_HEADROOM_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, OSError, ValueError):  # not Linux: the time budget still holds
        pass


def _answer(sources: Sequence[str], context: dict[str, Any], max_chars: int) -> list[list[str]]:
    answers = []
    for source in sources:
        try:
            answers.append(["ok", render_limited(source, context, max_chars)])
        except TemplateLimitError as exc:
            answers.append(["limit", str(exc)])
        except TemplateError as exc:
            answers.append(["error", str(exc)])
    return answers


def serve() -> None:
    """The worker: read a request, render, answer; until stdin closes."""
    import msgpush.events.templates  # noqa: F401 - what contexts refer to (duration, when)

    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames goes to the server
    _limit_memory()
    answers.write(_FRAME.pack(0))  # ready
    answers.flush()
    while header := requests.read(_FRAME.size):
        (size,) = _FRAME.unpack(header)
        sources, context, max_chars = pickle.loads(requests.read(size))
        try:
            body = orjson.dumps(_answer(sources, context, max_chars))
        except MemoryError:
            body = orjson.dumps([["limit", "the template ran out of memory"]] * len(sources))
        answers.write(_FRAME.pack(len(body)) + body)
        answers.flush()


# -- the server's side ----------------------------------------------------------------------


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        assert process.stdin is not None and process.stdout is not None
        self.requests = process.stdin
        self.answers = process.stdout

    @classmethod
    async def start(cls) -> _Worker:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "msgpush.template_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        worker = cls(process)
        try:
            await asyncio.wait_for(worker.answers.readexactly(_FRAME.size), START_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError):
            await worker.kill()
            raise TemplateError("the template renderer did not start") from None
        return worker

    async def exchange(self, request: bytes, seconds: float) -> list[list[str]]:
        self.requests.write(_FRAME.pack(len(request)) + request)

        async def answer() -> bytes:
            await self.requests.drain()
            (size,) = _FRAME.unpack(await self.answers.readexactly(_FRAME.size))
            return await self.answers.readexactly(size)

        answers: list[list[str]] = orjson.loads(await asyncio.wait_for(answer(), seconds))
        return answers

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()


class RenderPool:
    """Up to :data:`POOL_SIZE` workers for one event loop; a render waits for a free one (the
    wait is not counted in its budget)."""

    def __init__(self, size: int = POOL_SIZE) -> None:
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Worker] = []
        self._overran: dict[str, float] = {}

    async def render(
        self, sources: Sequence[str], context: dict[str, Any], budget: Budget
    ) -> list[Result]:
        """Each of ``sources`` rendered with ``context``: its text, or the TemplateError (a
        TemplateLimitError for a limit) it ended with."""
        if not sources:
            return []
        key = hashlib.sha256(orjson.dumps(list(sources))).hexdigest()
        overran = self._overran.get(key)
        if budget.remember_overruns and overran is not None:
            if time.monotonic() - overran < OVERRUN_MEMORY_S:
                ago = round(time.monotonic() - overran)
                error = TemplateLimitError(
                    f"skipped: it overran the time limit of {budget.seconds:g} s {ago} s ago"
                )
                return [error for _ in sources]
            del self._overran[key]
        request = pickle.dumps((list(sources), context, budget.max_chars))
        async with self._slots:
            worker = self._idle.pop() if self._idle else await _Worker.start()
            try:
                answers = await worker.exchange(request, budget.seconds)
            except TimeoutError:
                await worker.kill()
                if budget.remember_overruns:
                    self._overran[key] = time.monotonic()
                error = TemplateLimitError(f"time limit of {budget.seconds:g} s exceeded")
                return [error for _ in sources]
            except (asyncio.IncompleteReadError, ConnectionError, orjson.JSONDecodeError):
                await worker.kill()
                limit = MEMORY_HEADROOM_BYTES // (1024 * 1024)
                error = TemplateLimitError(f"the render process died (memory limit {limit} MiB)")
                return [error for _ in sources]
            except BaseException:  # cancelled mid-exchange: the worker's state is unknown
                await asyncio.shield(worker.kill())
                raise
            self._idle.append(worker)
        return [
            text
            if kind == "ok"
            else (TemplateLimitError if kind == "limit" else TemplateError)(text)
            for kind, text in answers
        ]

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for worker in idle:
            worker.requests.close()
            await worker.kill()


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RenderPool] = (
    weakref.WeakKeyDictionary()
)


def pool() -> RenderPool:
    """This event loop's pool (asyncio objects and subprocesses belong to one loop)."""
    loop = asyncio.get_running_loop()
    found = _pools.get(loop)
    if found is None:
        found = _pools[loop] = RenderPool()
    return found


async def render(sources: Sequence[str], context: dict[str, Any], budget: Budget) -> list[Result]:
    return await pool().render(sources, context, budget)


async def close() -> None:
    """Stop this loop's workers (server shutdown); they would also exit when the server does."""
    found = _pools.pop(asyncio.get_running_loop(), None)
    if found is not None:
        await found.close()


if __name__ == "__main__":
    serve()
