"""Run ``msgpush`` with an experiment applied from outside, to measure a change before making it.

    .venv/bin/python bench/throughput.py --phases single,latency,batch \\
        --server-cmd ".venv/bin/python bench/server_variants.py --gc-freeze --stats /tmp/s.json"

Options (before the msgpush arguments, which ``throughput.py`` appends):

--stats FILE       every second, write counters to FILE (JSON): SQLite connections opened,
                   group commits and writes, garbage-collector runs and CPU seconds per
                   generation, and the process's CPU seconds
--gc-freeze        after the imports, ``gc.collect(); gc.freeze()`` (long-lived objects leave
                   the collector's generations) and again once the app has started
--gc-threshold A,B,C   ``gc.set_threshold(A, B, C)`` (CPython's default is 700,10,10)
--pool N,M         SQLite pool: pool_size N, max_overflow M (msgpush uses 4,4)
--no-telemetry     FastAPI's per-request OpenTelemetry check off (as ``FastAPI(telemetry=
                   {"tracing": False, "metrics": False, "logs": False})`` would do)

Nothing here changes msgpush's source; the patches are applied in this process only: the
worker processes ``serve`` starts in bursts run msgpush unpatched (add ``--server-env
MSGPUSH_DELIVERY_PROCESSES=0`` to keep all the work in the patched process).
"""

from __future__ import annotations

import gc
import importlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

STATS: dict[str, Any] = {
    "connects": 0,
    "gc_runs": [0, 0, 0],
    "gc_seconds": [0.0, 0.0, 0.0],
    "commits": 0,
    "writes": 0,
}
_gc_started = [0.0]


def _gc_callback(phase: str, info: dict[str, int]) -> None:
    # CPU time of the collecting thread: a collection preempted by other work counts only
    # the time it actually ran
    if phase == "start":
        _gc_started[0] = time.thread_time()
    else:
        generation = info["generation"]
        STATS["gc_runs"][generation] += 1
        STATS["gc_seconds"][generation] += time.thread_time() - _gc_started[0]


def _take(args: list[str], flag: str) -> str | None:
    if flag in args:
        at = args.index(flag)
        value = args[at + 1] if at + 1 < len(args) else ""
        del args[at : at + 2]
        return value
    return None


def main() -> None:
    args = sys.argv[1:]
    stats_file = _take(args, "--stats")
    threshold = _take(args, "--gc-threshold")
    pool = _take(args, "--pool")
    flags = {flag for flag in ("--gc-freeze", "--no-telemetry") if flag in args}
    for flag in flags:
        args.remove(flag)
    freeze = "--gc-freeze" in flags

    from sqlalchemy import event

    for module in ("msgpush.api.app", "msgpush.channels.registry", "uvicorn", "aiohttp"):
        importlib.import_module(module)
    import msgpush.cli
    import msgpush.runtime
    import msgpush.storage.db as db

    writers: list[Any] = []
    original_engine = db.make_engine
    original_writer_init = db.GroupCommitWriter.__init__

    def make_engine(settings: Any) -> Any:
        if pool:
            size, overflow = (int(v) for v in pool.split(","))
            original_create = db.create_async_engine

            def create(url: str, **kwargs: Any) -> Any:
                kwargs.update(pool_size=size, max_overflow=overflow)
                return original_create(url, **kwargs)

            db.create_async_engine = create
            try:
                engine = original_engine(settings)
            finally:
                db.create_async_engine = original_create
        else:
            engine = original_engine(settings)

        @event.listens_for(engine.sync_engine, "connect")
        def _count(*_args: Any) -> None:
            STATS["connects"] += 1

        return engine

    def writer_init(self: Any, *a: Any, **k: Any) -> None:
        original_writer_init(self, *a, **k)
        writers.append(self)

    db.make_engine = make_engine
    db.GroupCommitWriter.__init__ = writer_init  # type: ignore[method-assign]

    if "--no-telemetry" in flags:
        from fastapi.telemetry import _asgi

        _asgi.NativeTelemetry.enabled = lambda self: False  # type: ignore[method-assign]

    if threshold:
        gc.set_threshold(*(int(v) for v in threshold.split(",")))
    if freeze:
        gc.collect()
        gc.freeze()
        original_start = msgpush.runtime.Runtime.start

        async def start(self: Any) -> None:
            await original_start(self)
            gc.collect()
            gc.freeze()

        msgpush.runtime.Runtime.start = start  # type: ignore[method-assign]
    gc.callbacks.append(_gc_callback)

    if stats_file:

        def dump() -> None:
            for _ in range(100_000):  # about a day; the thread is a daemon anyway
                STATS["commits"] = sum(w.commits for w in writers)
                STATS["writes"] = sum(w.writes for w in writers)
                STATS["process_cpu_s"] = time.process_time()
                Path(stats_file).write_text(json.dumps(STATS))
                time.sleep(1.0)

        threading.Thread(target=dump, daemon=True, name="bench-stats").start()

    sys.argv = ["msgpush", *args]
    msgpush.cli.app()


if __name__ == "__main__":
    main()
