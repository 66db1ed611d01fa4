"""Summarise a ``perf record -g`` profile of msgpush by thread, native library and syscall.

    .venv/bin/python bench/perf_summary.py /tmp/prof/msgpush-single.perf.data [--top 20]

The profiles come from ``bench/throughput.py --profile DIR --perf``. perf samples every
thread of msgpush on CPU, Python or not, so it shows what py-spy cannot: the cyclic garbage
collector, SQLite's C code and fsync in the aiosqlite threads, the kernel's socket work and
thread hand-offs. What it cannot show is which Python function runs: everything the
interpreter does is "Python interpreter"; ``bench/profile_summary.py`` splits that up.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

FRAME = re.compile(r"^\s*[0-9a-f]+ (?P<sym>.*) \((?P<dso>[^()]*)\)$")

GC_SYMBOLS = ("gc_collect_main", "gc_collect_with_callback", "gc_collect_generations")
# the collector's own helpers: without frame pointers in libpython, perf often loses the
# gc_collect_main parent of these leaves, so they are recognised by name
GC_LEAVES = ("visit_decref", "visit_reachable", "move_unreachable", "_traverse", "subtract_refs")
SYSCALLS = (
    ("fsync / fdatasync", ("fdatasync", "fsync")),
    ("file read/write (pread/pwrite)", ("pwrite", "pread")),
    ("socket write", ("write", "send", "writev")),
    ("socket read", ("read", "recv")),
    ("epoll", ("epoll",)),
    ("futex / thread hand-off", ("futex", "sem_post", "sem_wait", "pthread_cond", "lll_lock")),
    ("mmap / munmap (allocator)", ("mmap", "munmap", "brk")),
)
LIBRARIES = (
    ("pydantic_core", "pydantic"),
    ("libsqlite3", "SQLite (C)"),
    ("_sqlite3", "sqlite3 module (C)"),
    ("loop.cpython", "uvloop"),
    ("httptools", "HTTP parsing (httptools)"),
    ("parser.cpython", "HTTP parsing (httptools)"),
    ("_http_parser", "aiohttp C parser/writer"),
    ("_http_writer", "aiohttp C parser/writer"),
    ("orjson", "orjson"),
    ("libcrypto", "OpenSSL libcrypto (hashlib, cryptography)"),
    ("_rust.abi3", "cryptography (Rust)"),
    ("_cy.cpython", "SQLAlchemy Cython extensions"),
    ("_multidict", "multidict/yarl (aiohttp)"),
    ("_quoting_c", "multidict/yarl (aiohttp)"),
    ("_greenlet", "greenlet (SQLAlchemy asyncio bridge)"),
    ("_asyncio", "asyncio C (futures, tasks)"),
    ("_queue", "queue (aiosqlite hand-off)"),
    ("libpython", "Python interpreter"),
    ("libc.so", "libc (malloc, memcpy, ...)"),
)


def samples(path: Path) -> Iterator[tuple[int, int, list[tuple[str, str]]]]:
    perf = shutil.which("perf")
    if perf is None:
        raise SystemExit("perf is not installed")
    script = subprocess.run(
        [perf, "script", "-i", str(path), "-F", "pid,tid,ip,sym,dso"],
        capture_output=True,
        text=True,
        errors="replace",
        check=True,
        timeout=600,
    ).stdout
    for block in script.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if len(lines) < 2:
            continue
        head = lines[0].split()
        pid, _, tid = head[0].partition("/")
        frames = []
        for line in lines[1:]:
            match = FRAME.match(line)
            if match:
                frames.append((match.group("sym"), match.group("dso").rsplit("/", 1)[-1]))
        if frames:
            yield int(pid), int(tid or pid), frames


def classify(frames: list[tuple[str, str]]) -> str:
    if any(sym in GC_SYMBOLS for sym, _ in frames) or any(
        leaf in frames[0][0] for leaf in GC_LEAVES
    ):
        return "Python cyclic GC"
    sym, dso = frames[0]
    if dso == "[kernel.kallsyms]":
        user = next(((s, d) for s, d in frames if d != "[kernel.kallsyms]"), None)
        if user is None:
            return "kernel (other)"
        for label, needles in SYSCALLS:
            if any(needle in user[0] for needle in needles):
                return f"kernel: {label}"
        return f"kernel: via {user[0]}"
    for fragment, label in LIBRARIES:
        if fragment in dso:
            return label
    return dso or sym


def table(title: str, counter: Counter[str], total: int, top: int) -> None:
    print(f"\n{title}")
    for label, count in counter.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {label}")


def summarise(path: Path, top: int) -> None:
    threads: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    symbols: Counter[str] = Counter()
    total = 0
    for pid, tid, frames in samples(path):
        total += 1
        thread = "main thread (event loop)" if tid == pid else "other threads (aiosqlite)"
        threads[thread] += 1
        kinds[f"{thread}: {classify(frames)}"] += 1
        symbols[f"{frames[0][0]} ({frames[0][1]})"] += 1
    if not total:
        print(f"{path}: no samples")
        return
    print(f"{path}: {total} samples (threads on CPU)")
    table("threads:", threads, total, top)
    table("what (innermost native frame; GC counted inclusively):", kinds, total, top)
    table("hottest native symbols:", symbols, total, top)


def main() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends quietly
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profiles", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    for path in args.profiles:
        summarise(path, args.top)
        print()


if __name__ == "__main__":
    main()
