"""Summarise a ``py-spy record --format raw --threads --full-filenames`` profile of msgpush.

    .venv/bin/python bench/profile_summary.py /tmp/prof/msgpush-single.txt [--top 25]

The profiles come from ``bench/throughput.py --profile DIR``, which records with ``--gil``:
each sample is the stack of the thread holding the GIL, i.e. of msgpush's Python work, which
runs one thread at a time. Samples are taken on a wall clock, so a GIL holder that the OS has
descheduled still counts (``--exclude FILE:LINE`` leaves such lines out; ``perf_summary.py``
shows real CPU). Printed:

- where: which part of msgpush the sample belongs to (API request, delivery engine, the
  group-commit writer, the aiosqlite threads that run SQLite, the event loop itself);
- what: the library the time is spent in, attributed from the innermost frame outwards (a
  Python line that calls into C, e.g. ``model_validate_json`` or ``orjson.dumps``, is
  attributed by its source text);
- the hottest innermost lines (self time) and the functions most often on the stack
  (inclusive time).
"""

from __future__ import annotations

import argparse
import linecache
import re
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# (where, markers): the first marker found anywhere in the stack decides
WHERE = (
    ("API request (HTTP in)", ("RequestResponseCycle.run_asgi", "HttpToolsProtocol.")),
    ("group-commit writer", ("GroupCommitWriter.",)),
    (
        "delivery engine (claim, send)",
        ("Engine._", "ClientRequest.", "ResponseHandler.", "HttpClient.", "send_once"),
    ),
    ("SQLAlchemy pool / connection close", ("AsyncConnection.close", "_ConnectionFairy")),
)

# (what, path fragments): innermost frame first
LIBRARIES = (
    ("HTTP server (uvicorn/httptools)", ("/uvicorn/",)),
    ("Starlette/FastAPI", ("/starlette/", "/fastapi/")),
    ("pydantic", ("/pydantic/", "/pydantic_core/")),
    ("SQLAlchemy statement build/compile", ("/sqlalchemy/sql/",)),
    (
        "SQLAlchemy execute/result/pool",
        ("/sqlalchemy/engine/", "/sqlalchemy/dialects/", "/sqlalchemy/pool/", "/sqlalchemy/"),
    ),
    ("aiosqlite (Python side)", ("/aiosqlite/",)),
    ("aiohttp client", ("/aiohttp/", "/multidict/", "/yarl/")),
    ("alembic", ("/alembic/",)),
    ("prometheus_client", ("/prometheus_client/",)),
    ("asyncio / event loop", ("/asyncio/", "uvloop")),
    ("threading / queue", ("/threading.py", "/queue.py")),
    ("msgpush own code", ("/msgpush/",)),
)

# C calls made from a Python line: attributed by the line's text
C_CALLS = (
    ("pydantic", ("model_validate", "model_dump", "TypeAdapter", "validate_python")),
    ("JSON (orjson)", ("orjson.",)),
    ("hashing / ids", ("sha256", "urandom", "hmac.")),
)

NATIVE_SQLITE = (
    ("SQLite commit + fsync", ("fsync", "fdatasync", "sqlite3PagerCommit", "sqlite3WalFrames")),
    ("SQLite commit + fsync", ("Commit", "commit")),
    ("SQLite prepare", ("sqlite3_prepare", "sqlite3Prepare", "sqlite3Parser", "sqlite3RunParser")),
    ("SQLite open/close", ("sqlite3_open", "openDatabase", "sqlite3_close", "connection_close")),
    ("SQLite step (execute)", ("sqlite3_step", "sqlite3VdbeExec", "Vdbe")),
)


@dataclass
class Frame:
    func: str
    file: str
    line: int | None

    @classmethod
    def parse(cls, text: str) -> Frame:
        match = FRAME.match(text)
        if match is None:
            return cls(text, "", None)
        line = match.group("line")
        return cls(match.group("func"), match.group("file"), int(line) if line else None)

    @property
    def is_python(self) -> bool:
        return self.file.endswith(".py") or "/bin/" in self.file

    def source(self) -> str:
        if not self.is_python or self.line is None:
            return ""
        return linecache.getline(self.file, self.line).strip()

    def short(self) -> str:
        file = self.file
        for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
            if marker in file:
                file = file.split(marker, 1)[1]
                break
        return f"{self.func} ({file}:{self.line})" if self.line else f"{self.func} ({file})"


EXCLUDED: list[str] = []  # innermost "file:line" fragments whose samples are left out


def samples(path: Path) -> Iterator[tuple[str, list[Frame], int]]:
    dropped = 0
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parts = stack.split(";")
        thread = ""
        if parts and parts[0].startswith("thread ("):
            thread = parts.pop(0).split(": ", 1)[-1]
            thread = re.sub(r"^Thread-\d+ ", "", thread)
        frames = [Frame.parse(p) for p in parts]
        if EXCLUDED:
            python = [f for f in frames if f.is_python]
            where = f"{python[-1].file}:{python[-1].line}" if python else ""
            if any(fragment in where for fragment in EXCLUDED):
                dropped += int(count)
                continue
        yield thread, frames, int(count)
    if dropped:
        print(f"({dropped} samples left out by --exclude {' '.join(EXCLUDED)})")


def where(thread: str, frames: list[Frame]) -> str:
    if thread and thread != "MainThread":
        return f"SQLite worker threads ({thread.strip('()')})"
    for label, markers in WHERE:
        if any(any(m in f.func for m in markers) for f in frames):
            return label
    return "event loop / other"


def what(thread: str, frames: list[Frame]) -> str:
    if thread and thread != "MainThread":
        names = " ".join(f.func for f in frames if not f.is_python)
        for label, markers in NATIVE_SQLITE:
            if any(m in names for m in markers):
                return label
        return "SQLite (C, in aiosqlite thread)" if names else "SQLite call (aiosqlite thread)"
    for frame in reversed(frames):
        if not frame.is_python:
            continue
        text = frame.source()
        for label, needles in C_CALLS:
            if any(n in text for n in needles):
                return label
        for label, fragments in LIBRARIES:
            if any(fragment in frame.file for fragment in fragments):
                return label
    return "event loop (C: uvloop, sockets)"


def table(title: str, counter: Counter[str], total: int, top: int) -> None:
    print(f"\n{title}")
    for label, count in counter.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {label}")


def focus_view(path: Path, name: str, top: int) -> None:
    """Inside the stacks that pass through a function: what its callees spend."""
    callees: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = inside = 0
    for _thread, frames, count in samples(path):
        total += count
        at = next((i for i, f in enumerate(frames) if f.func == name), None)
        if at is None:
            continue
        inside += count
        below = frames[at + 1 :]
        callees[below[0].short() if below else "(self)"] += count
        python = [f for f in frames if f.is_python]
        leaf = python[-1] if python else frames[-1]
        leaves[f"{leaf.short()}  {leaf.source()[:60]}"] += count
    print(f"{path}: {name} is on {inside} of {total} samples ({100 * inside / max(total, 1):.1f}%)")
    table(f"direct callees of {name} (share of all samples):", callees, total, top)
    table(f"innermost lines under {name} (share of all samples):", leaves, total, top)


def summarise(path: Path, top: int) -> None:
    by_where: Counter[str] = Counter()
    by_what: Counter[str] = Counter()
    by_pair: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own_code: Counter[str] = Counter()
    total = 0
    for thread, frames, count in samples(path):
        total += count
        place, kind = where(thread, frames), what(thread, frames)
        by_where[place] += count
        by_what[kind] += count
        by_pair[f"{place}  /  {kind}"] += count
        python = [f for f in frames if f.is_python]
        if python:
            leaf = python[-1]
            self_time[f"{leaf.short()}  {leaf.source()[:60]}"] += count
        seen = set()
        for frame in frames:
            key = f"{frame.func} ({frame.short().split(' (', 1)[1].rsplit(':', 1)[0]})"
            if key not in seen:
                seen.add(key)
                inclusive[key] += count
                if "/msgpush/" in frame.file:
                    own_code[key] += count
    if not total:
        print(f"{path}: no samples")
        return
    print(f"{path}: {total} samples (GIL holder, see --help)")
    table("where (part of msgpush):", by_where, total, top)
    table("what (library, innermost frame first):", by_what, total, top)
    table("where / what:", by_pair, total, top)
    table("self (innermost Python line):", self_time, total, top)
    table("inclusive (function on the stack), msgpush code:", own_code, total, top)
    table("inclusive (function on the stack), all:", inclusive, total, top)


def main() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends quietly
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profiles", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--focus", help="break down one function, e.g. send_message")
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="FILE:LINE",
        help="leave out samples whose innermost Python line matches, e.g. "
        "aiosqlite/core.py:158 (a GIL holder descheduled right after waking the SQLite "
        "thread: wall time, not CPU; perf shows it costs no CPU)",
    )
    args = parser.parse_args()
    EXCLUDED.extend(args.exclude)
    for path in args.profiles:
        if args.focus:
            focus_view(path, args.focus, args.top)
        else:
            summarise(path, args.top)
        print()


if __name__ == "__main__":
    main()
