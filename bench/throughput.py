"""msgpush throughput, latency and memory benchmark: one command, loopback only.

    .venv/bin/python bench/throughput.py            # default N (about 1-2 minutes), SQLite
    .venv/bin/python bench/throughput.py --n 20000  # more messages per phase
    .venv/bin/python bench/throughput.py --db postgresql   # PostgreSQL, one node then two
    .venv/bin/python bench/throughput.py --profile /tmp/prof   # plus py-spy of msgpush

It starts everything it needs, on 127.0.0.1 only, and stops it all at the end:

- a webhook receiver (``bench/receiver.py``: aiohttp, answers 200, records arrival times),
- the web ceiling (``bench/webceiling.py``: FastAPI + uvicorn validating ``SendRequest``),
- ``msgpush serve`` with SQLite in a temporary data directory.

and measures, with one aiohttp client session (keep-alive, uvloop) as the load generator:

1. ceiling: N webhook-sized POSTs straight to the receiver;
2. web ceiling: N ``POST /api/v1/messages`` bodies to the validate-only app;
3. msgpush, one message per POST: accepted/s, delivered/s (until the receiver saw all N,
   from the first POST), and enqueue-to-delivered p50/p99 at a steady, open-loop rate;
4. msgpush, ``POST /messages/batch`` of 1000: accepted/s and delivered/s;

plus the idle (VmRSS after start) and peak (VmHWM) resident memory of the msgpush process,
and the CPU each process used per phase. It prints every figure and the targets as PASS/FAIL.

With ``--db postgresql`` msgpush runs on a fresh database made on ``MSGPUSH_TEST_PG_URL``
(default: the local test server; loopback only) and dropped at the end; after (3) and (4) on
one node, a second ``serve`` joins on the same database and secret key and (3) and (4) run
again with the load split between the two, reporting the CPU per message of both nodes
together next to that of one, so the cost of scaling out is visible. PostgreSQL's own CPU is
not msgpush's: it shows as "other".

Exit status: 0 all targets pass, 1 some target fails, 2 the benchmark could not run.
Everything shares the machine's cores: the load generator and the receiver are part of the
measurement, which is why each phase also prints the CPU each process used, what else was
running ("other"), and msgpush's CPU milliseconds per message, the figure least disturbed by
other work on the machine.

More options (``--help``): ``--phases`` (a subset), ``--src DIR`` (measure a source snapshot
instead of the working tree), ``--server-cmd`` (a wrapper such as ``bench/server_variants.py``
to try a change from outside), ``--server-env``, ``--split-worker`` (``serve --no-worker`` plus
``msgpush worker``), ``--profile DIR [--perf] [--native]`` (read the output with
``bench/profile_summary.py`` and ``bench/perf_summary.py``), ``--json FILE``. Every child
process gets SIGTERM if the benchmark itself dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import ctypes.util
import datetime
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

HOST = "127.0.0.1"  # the only address this benchmark ever talks to
LOOPBACK = {"127.0.0.1", "localhost", "::1"}  # where --db postgresql may find PostgreSQL
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
BENCH_DIR = Path(__file__).resolve().parent
BIN_DIR = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
PR_SET_PDEATHSIG = 1
STALL_S = 20.0  # waiting for deliveries stops when none arrived for this long
CONTENT = (
    "**Nightly job finished.** 1,204 records imported, 3 skipped; see the run log for the "
    "skipped rows. Next run at 02:00 UTC. This line pads the content to a typical alert size."
)

# targets: (label, figure, comparison, reference figure or constant, factor). The old target
# "(3) accepted/s >= 0.6 x (2) web ceiling" is retired: on two cores shared with the load
# generator and the receiver it asks for more CPU than there is (docs/performance.md); CPU per
# message is the figure that other work on the machine disturbs least.
TARGETS = (
    (
        "(3) msgpush CPU per single-POST message <= 0.40 ms",
        "single_cpu_ms_per_msg",
        "<=",
        0.40,
        1.0,
    ),
    ("(4) msgpush CPU per batched message <= 0.20 ms", "batch_cpu_ms_per_msg", "<=", 0.20, 1.0),
    ("(4) batch delivered/s >= 0.4 x (1) ceiling", "batch_delivered_ps", ">=", "ceiling_ps", 0.4),
    ("enqueue-to-delivered p50 <= 10 ms", "latency_p50_ms", "<=", 10.0, 1.0),
    ("enqueue-to-delivered p99 <= 50 ms", "latency_p99_ms", "<=", 50.0, 1.0),
    ("idle RSS <= 120 MB", "idle_rss_mb", "<=", 120.0, 1.0),
)


class BenchError(RuntimeError):
    pass


# -- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def url(port: int, path: str) -> str:
    return f"http://{HOST}:{port}{path}"


def descendants(pid: int) -> list[int]:
    """The live children of a process, their children, and so on (msgpush's worker processes)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


def proc_cpu_s(pid: int, tree: bool = False) -> float:
    """User + system CPU seconds of a process (all its threads), with ``tree`` plus its live
    descendants (msgpush's delivery worker processes), from /proc."""
    total = 0.0
    for each in (pid, *(descendants(pid) if tree else ())):
        try:
            stat = Path(f"/proc/{each}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def proc_status_kb(pid: int, key: str) -> int | None:  # always msgpush's tree
    """A /proc status figure (VmRSS, VmHWM) of a process, summed over it and its live
    descendants: msgpush's memory is that of all its processes."""
    total: int | None = None
    for each in (pid, *descendants(pid)):
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total = (total or 0) + int(line.split()[1])
        except OSError:
            continue
    return total


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from the first line of /proc/stat."""
    # user nice system idle iowait irq softirq steal (guest time is already in user/nice)
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the benchmark dies, however it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Service:
    """A subprocess this benchmark started (and alone stops, by its own pid)."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=BENCH_DIR.parent,
                preexec_fn=die_with_parent,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


TREES = {"msgpush", "msgpush2", "worker"}  # counted with their child processes


class CpuMeter:
    """CPU seconds used by each process (and the whole machine) between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._cpu: dict[str, float] = {}
        self._machine = (0, 0)
        self._wall = 0.0
        self.cores: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self._cpu = {name: proc_cpu_s(pid, name in TREES) for name, pid in self.pids.items()}
        self._machine = machine_busy()
        self._wall = time.monotonic()
        return self

    def stop(self) -> dict[str, float]:
        wall = max(time.monotonic() - self._wall, 1e-9)
        self.seconds = {
            name: proc_cpu_s(pid, name in TREES) - self._cpu[name]
            for name, pid in self.pids.items()
        }
        self.cores = {name: used / wall for name, used in self.seconds.items()}
        busy, total = machine_busy()
        cores = os.cpu_count() or 1
        machine = (busy - self._machine[0]) / max(total - self._machine[1], 1) * cores
        # "other": everything else on the machine (kernel, other users' processes): noise
        self.cores["other"] = max(0.0, machine - sum(self.cores.values()))
        self.cores["machine"] = machine
        return self.cores

    def line(self) -> str:
        parts = [f"{name} {value:.2f}" for name, value in self.cores.items()]
        return "CPU (cores busy): " + ", ".join(parts)


def msgpush_cpu_ms(meter: CpuMeter) -> float:
    """CPU milliseconds msgpush used in a phase (serve, plus the worker when split, plus the
    second node in the two-node run)."""
    return sum(meter.seconds.get(name, 0.0) for name in TREES) * 1000


# -- load generation -------------------------------------------------------------------------


@dataclass
class Load:
    started: float
    finished: float
    statuses: Counter[int | str] = field(default_factory=Counter)
    errors: dict[int | str, str] = field(default_factory=dict)  # the first answer of each kind
    accepted_ids: int = 0  # messages accepted (a batch answer lists several)

    def record(self, status: int, data: bytes) -> None:
        self.statuses[status] += 1
        if status in (200, 202):
            if data.startswith(b'{"items"'):
                self.accepted_ids += len(orjson.loads(data)["items"])
            else:
                self.accepted_ids += 1
        elif status not in self.errors:
            self.errors[status] = data[:300].decode("utf-8", "replace")

    @property
    def ok(self) -> int:
        return sum(count for status, count in self.statuses.items() if status in (200, 202))

    @property
    def seconds(self) -> float:
        return max(self.finished - self.started, 1e-9)


async def closed_loop(
    session: aiohttp.ClientSession,
    target: str | tuple[str, ...],
    bodies: list[bytes],
    concurrency: int,
    headers: dict[str, str],
    timeout_s: float,
) -> Load:
    """``concurrency`` clients, each sending the next body as soon as its last one is answered;
    with several targets (nodes), client k sends to target k modulo their number."""
    targets = (target,) if isinstance(target, str) else target
    assert all(each.startswith(f"http://{HOST}:") for each in targets)
    total = len(bodies)
    cursor = 0
    load = Load(started=time.monotonic(), finished=0.0)
    deadline = load.started + timeout_s

    async def client(number: int) -> None:
        nonlocal cursor
        target = targets[number % len(targets)]
        while cursor < total and time.monotonic() < deadline:
            body = bodies[cursor]
            cursor += 1
            try:
                async with session.post(target, data=body, headers=headers) as response:
                    load.record(response.status, await response.read())
            except (aiohttp.ClientError, TimeoutError) as exc:
                load.statuses[type(exc).__name__] += 1

    tasks = [asyncio.create_task(client(k)) for k in range(min(concurrency, total))]
    _done, pending = await asyncio.wait(tasks, timeout=timeout_s + 30)
    for task in pending:
        task.cancel()
    load.finished = time.monotonic()
    return load


async def open_loop(
    session: aiohttp.ClientSession,
    target: str,
    bodies: list[bytes],
    rate: float,
    headers: dict[str, str],
    timeout_s: float,
) -> tuple[dict[str, float], Load, float]:
    """Send at a fixed rate whatever the answers do; message id -> time its POST was sent.

    Also returns how late, at most, a send left against its schedule (ms).
    """
    assert target.startswith(f"http://{HOST}:")
    sent: dict[str, float] = {}
    load = Load(started=time.monotonic(), finished=0.0)
    worst_lag = 0.0

    async def one(body: bytes) -> None:
        at = time.monotonic()
        try:
            async with session.post(target, data=body, headers=headers) as response:
                data = await response.read()
                load.record(response.status, data)
                if response.status == 202:
                    sent[orjson.loads(data)["id"]] = at
        except (aiohttp.ClientError, TimeoutError) as exc:
            load.statuses[type(exc).__name__] += 1

    tasks = []
    begin = time.monotonic() + 0.05
    for index, body in enumerate(bodies):
        due = begin + index / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        worst_lag = max(worst_lag, time.monotonic() - due)
        tasks.append(asyncio.create_task(one(body)))
    _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    load.finished = time.monotonic()
    return sent, load, worst_lag * 1000


async def get_json(session: aiohttp.ClientSession, target: str, **kwargs: Any) -> Any:
    assert target.startswith(f"http://{HOST}:")
    async with session.get(target, **kwargs) as response:
        if response.status != 200:
            raise BenchError(f"GET {target}: HTTP {response.status}: {await response.text()}")
        return await response.json(loads=orjson.loads)


async def post_json(
    session: aiohttp.ClientSession, target: str, payload: Any, headers: dict[str, str]
) -> Any:
    assert target.startswith(f"http://{HOST}:")
    async with session.post(target, data=orjson.dumps(payload), headers=headers) as response:
        if response.status not in (200, 201, 202):
            raise BenchError(f"POST {target}: HTTP {response.status}: {await response.text()}")
        return await response.json(loads=orjson.loads)


async def wait_log(service: Service, text: str) -> None:
    """Wait until a service's log shows ``text`` (for processes without an HTTP port)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not service.alive():
            raise BenchError(f"{service.name} exited on start:\n{service.log_tail()}")
        if text in service.log_tail(200):
            return
        await asyncio.sleep(0.1)
    raise BenchError(f"{service.name} did not log {text!r} in {START_TIMEOUT_S:g} s")


async def wait_ready(session: aiohttp.ClientSession, service: Service, target: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not service.alive():
            raise BenchError(f"{service.name} exited on start:\n{service.log_tail()}")
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.get(target, timeout=aiohttp.ClientTimeout(total=2)) as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise BenchError(f"{service.name} did not answer {target} in {START_TIMEOUT_S:g} s")


# -- bodies ----------------------------------------------------------------------------------


def send_request(channel: str, index: int) -> dict[str, Any]:
    return {
        "channels": [channel],
        "title": f"bench {channel} #{index}",
        "content": CONTENT,
        "level": "info",
        "labels": {"bench": "throughput", "seq": str(index)},
    }


def send_bodies(channel: str, count: int) -> list[bytes]:
    return [orjson.dumps(send_request(channel, i)) for i in range(count)]


def batch_bodies(channel: str, count: int, size: int) -> list[bytes]:
    return [
        orjson.dumps(
            {"messages": [send_request(channel, i) for i in range(s, min(s + size, count))]}
        )
        for s in range(0, count, size)
    ]


def webhook_bodies(count: int) -> list[bytes]:
    """What msgpush's webhook channel posts (the JSON envelope), for the ceiling run."""
    return [
        orjson.dumps(
            {
                "id": f"dlv_ceiling_{i}",
                "message_id": f"msg_ceiling_{i}",
                "title": f"bench ceiling #{i}",
                "content": CONTENT,
                "format": "markdown",
                "level": "info",
                "category": "other",
                "fields": {},
                "links": [],
                "labels": {"bench": "throughput", "seq": str(i)},
                "created_at": "2026-01-01T00:00:00.000Z",
                "event": None,
            }
        )
        for i in range(count)
    ]


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# -- profiling -------------------------------------------------------------------------------


class Profiler:
    """Record the msgpush process during one phase: py-spy (Python stacks), optionally perf.

    py-spy writes raw collapsed stacks (``bench/profile_summary.py`` reads them); perf, with
    ``--perf``, records native stacks of all threads (``bench/perf_summary.py`` reads them),
    which shows what py-spy cannot: the garbage collector, SQLite's C code, the kernel.
    """

    def __init__(self, directory: Path | None, pid: int, native: bool, perf: bool) -> None:
        self.directory = directory
        self.pid = pid
        self.native = native
        self.use_perf = perf
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        search = f"{BIN_DIR}:{os.environ.get('PATH', '')}"
        self.py_spy = shutil.which("py-spy", path=search)
        self.perf = shutil.which("perf", path=search)
        if directory is not None and self.py_spy is None:
            raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
        if directory is not None and perf and self.perf is None:
            raise BenchError("--perf needs the perf tool (linux-perf / linux-tools)")

    def start(self, phase: str) -> None:
        if self.directory is None or self.py_spy is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        output = self.directory / f"msgpush-{phase}.txt"
        # --gil: only the thread holding the GIL, i.e. where msgpush's Python time goes (the
        # process runs Python on one core at a time; C code that releases the GIL, such as
        # SQLite in the aiosqlite threads, is what --perf shows)
        argv = [
            self.py_spy,
            "record",
            "--pid",
            str(self.pid),
            "--rate",
            "200",
            "--gil",
            "--subprocesses",
        ]
        argv += ["--threads", "--format", "raw", "--full-filenames", "--output", str(output)]
        if self.native:
            argv.append("--native")
        self._spawn(output, argv, phase, "py-spy")
        if self.use_perf and self.perf is not None:
            output = self.directory / f"msgpush-{phase}.perf.data"
            argv = [self.perf, "record", "-g", "-F", "499", "-p", str(self.pid), "-o", str(output)]
            self._spawn(output, argv, phase, "perf")
        time.sleep(1.0)  # let them attach before the load starts

    def _spawn(self, output: Path, argv: list[str], phase: str, tool: str) -> None:
        assert self.directory is not None
        with (self.directory / f"{tool}-{phase}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )
        self.procs.append((str(output), proc))

    def stop(self) -> None:
        for output, proc in self.procs:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            print(f"    profile: {output}")
        self.procs = []


# -- the run ---------------------------------------------------------------------------------

PHASES = ("ceiling", "web", "single", "latency", "batch")
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    figures: dict[str, Any] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    session: aiohttp.ClientSession | None = None
    receiver: Service | None = None
    rport: int = 0
    database_url: str | None = None  # --db postgresql: the fresh database of this run

    # -- helpers

    def python(self, script: str, *extra: str) -> list[str]:
        return [sys.executable, str(BENCH_DIR / script), *extra]

    def launch(self, service: Service) -> Service:
        self.services.append(service.start())
        return service

    def stop_all(self) -> None:
        for service in reversed(self.services):
            service.stop()

    @staticmethod
    def timeout(count: int) -> float:
        """The longest a phase of ``count`` messages may take (at 50 per second, plus 60 s)."""
        return 60.0 + count / 50.0

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None
        return self.session

    def wants(self, phase: str) -> bool:
        return phase in self.args.phases

    async def delivered(self, path: str, count: int) -> dict[str, Any]:
        """Wait until the receiver saw ``count`` distinct messages on ``path``.

        Gives up after ``timeout(count)`` or when nothing new arrived for STALL_S seconds.
        """
        deadline = time.monotonic() + self.timeout(count)
        progress, progress_at = -1, time.monotonic()
        while True:
            chunk = max(0.1, min(5.0, deadline - time.monotonic()))
            stats: dict[str, Any] = await get_json(
                self.http,
                url(self.rport, "/_wait"),
                params={"path": path, "count": str(count), "timeout": str(chunk)},
                timeout=aiohttp.ClientTimeout(total=chunk + 30),
            )
            now = time.monotonic()
            if stats["count"] >= count or now >= deadline:
                return stats
            if stats["count"] > progress:
                progress, progress_at = stats["count"], now
            elif now - progress_at > STALL_S:
                print(f"    WARNING: no new delivery on {path} for {STALL_S:g} s")
                return stats

    def delivered_rate(self, seen: dict[str, Any], started: float, expected: int) -> float:
        if not seen["count"] or seen["last"] is None:
            return 0.0
        if seen["count"] < expected:
            print(f"    WARNING: only {seen['count']} of {expected} deliveries arrived in time")
        return float(seen["count"] / max(seen["last"] - started, 1e-9))

    @staticmethod
    def check(load: Load, expected: int, what: str) -> None:
        bad = {k: v for k, v in load.statuses.items() if k not in (200, 202)}
        if bad or load.ok != expected:
            print(f"    WARNING: {what}: {load.ok}/{expected} accepted; other answers: {bad}")
            for status, text in load.errors.items():
                print(f"      first {status}: {text}")

    # -- the run

    async def create_database(self) -> None:
        """A fresh PostgreSQL database for this run (dropped by ``drop_database``)."""
        import asyncpg

        name = f"msgpush_bench_{secrets.token_hex(4)}"
        try:
            conn = await asyncpg.connect(self.args.pg_url, timeout=5)
        except (OSError, asyncpg.PostgresError) as exc:
            raise BenchError(f"cannot connect to {self.args.pg_url}: {exc}") from exc
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self.database_url = f"{self.args.pg_url.rsplit('/', 1)[0]}/{name}"
        print(f"PostgreSQL: created database {name}")

    async def drop_database(self) -> None:
        if self.database_url is None:
            return
        import asyncpg

        name = self.database_url.rsplit("/", 1)[1]
        conn = await asyncpg.connect(self.args.pg_url, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        self.database_url = None

    async def run(self) -> None:
        before = machine_busy()
        await asyncio.sleep(2.0)
        after = machine_busy()
        busy = (after[0] - before[0]) / max(after[1] - before[1], 1) * (os.cpu_count() or 1)
        self.figures["busy_before_start"] = busy
        print(f"machine busy before start: {busy:.2f} of {os.cpu_count()} cores")
        if busy > 0.3:
            print("    WARNING: something else is using the CPU; the figures will be noisy")
        conc = self.args.concurrency
        # idle keep-alive connections are dropped by the client before uvicorn's 5 s timeout
        # closes them from its side, so a request never lands on a connection being closed
        connector = aiohttp.TCPConnector(limit=max(conc, 8), keepalive_timeout=2.0)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self.session = session
            self.rport = free_port()
            self.receiver = self.launch(
                Service(
                    "receiver",
                    self.python("receiver.py", "--port", str(self.rport)),
                    self.workdir / "receiver.log",
                )
            )
            await wait_ready(session, self.receiver, url(self.rport, "/_stats?path=/ready"))
            if self.wants("ceiling"):
                await self.ceiling()
            if self.wants("web"):
                await self.web_ceiling()
            if {"single", "latency", "batch"} & set(self.args.phases):
                if self.args.db == "postgresql":
                    await self.create_database()
                await self.msgpush()

    async def ceiling(self) -> None:
        """(1) the same N requests straight to the receiver."""
        assert self.receiver is not None
        n, conc = self.args.n, self.args.concurrency
        print(f"(1) ceiling: {n} POSTs straight to the receiver, concurrency {conc}")
        target = url(self.rport, "/ceiling")
        warm = webhook_bodies(min(500, n))
        await closed_loop(self.http, url(self.rport, "/warm"), warm, conc, JSON_HEADERS, 60)
        bodies = webhook_bodies(n)
        meter = CpuMeter({"client": os.getpid(), "receiver": self.receiver.pid}).start()
        load = await closed_loop(self.http, target, bodies, conc, JSON_HEADERS, self.timeout(n))
        self.cpu["ceiling"] = meter.stop()
        self.check(load, n, "ceiling")
        self.figures["ceiling_ps"] = load.ok / load.seconds
        self.figures["ceiling_receiver_cpu_ms"] = meter.seconds["receiver"] * 1000 / max(load.ok, 1)
        print(
            f"    {self.figures['ceiling_ps']:,.0f} requests/s, receiver CPU "
            f"{self.figures['ceiling_receiver_cpu_ms']:.3f} ms/request\n    {meter.line()}"
        )

    async def web_ceiling(self) -> None:
        """(2) the same N send requests to the validate-only FastAPI app."""
        n, conc = self.args.n, self.args.concurrency
        print(f"(2) web ceiling: {n} POST /api/v1/messages to validate-only FastAPI+uvicorn")
        port = free_port()
        env = None
        if self.args.src:
            env = {**os.environ, "PYTHONPATH": str(self.args.src)}
        web = self.launch(
            Service(
                "webceiling",
                self.python("webceiling.py", "--port", str(port)),
                self.workdir / "webceiling.log",
                env=env,
            )
        )
        try:
            await wait_ready(self.http, web, url(port, "/healthz"))
            target = url(port, "/api/v1/messages")
            await closed_loop(self.http, target, send_bodies("warm", 500), conc, JSON_HEADERS, 60)
            bodies = send_bodies("tput", n)
            meter = CpuMeter({"client": os.getpid(), "webceiling": web.pid}).start()
            load = await closed_loop(self.http, target, bodies, conc, JSON_HEADERS, self.timeout(n))
            self.cpu["web_ceiling"] = meter.stop()
        finally:
            web.stop()
        self.check(load, n, "web ceiling")
        self.figures["web_ceiling_ps"] = load.ok / load.seconds
        self.figures["web_ceiling_cpu_ms"] = meter.seconds["webceiling"] * 1000 / max(load.ok, 1)
        print(
            f"    {self.figures['web_ceiling_ps']:,.0f} requests/s, app CPU "
            f"{self.figures['web_ceiling_cpu_ms']:.3f} ms/request\n    {meter.line()}"
        )

    async def msgpush(self) -> None:
        """Start msgpush serve on SQLite, then (3), the latency run and (4)."""
        assert self.receiver is not None
        args = self.args
        port = free_port()
        token = "mpk_bench_" + secrets.token_hex(16)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSGPUSH_")}
        env["MSGPUSH_DATA_DIR"] = str(self.workdir / "data")
        env["MSGPUSH_ADMIN_TOKEN"] = token
        env["MSGPUSH_EGRESS_ALLOW"] = HOST  # the receiver is local; the policy refuses loopback
        if self.database_url:  # every node shares the database and the key to its secrets
            env["MSGPUSH_DATABASE_URL"] = self.database_url
            env["MSGPUSH_SECRET_KEY"] = base64.urlsafe_b64encode(os.urandom(32)).decode()
        if args.src:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(args.src), os.environ.get("PYTHONPATH", "")) if p
            )
        for setting in args.server_env:
            key, _, value = setting.partition("=")
            env[key] = value
        command = args.server_cmd.split() if args.server_cmd else [str(BIN_DIR / "msgpush")]
        serve = [*command, "serve", "--host", HOST, "--port", str(port)]
        if args.split_worker:
            serve.append("--no-worker")
        server = self.launch(Service("msgpush", serve, self.workdir / "msgpush.log", env=env))
        await wait_ready(self.http, server, url(port, "/healthz"))
        pids = {"client": os.getpid(), "receiver": self.receiver.pid, "msgpush": server.pid}
        if args.split_worker:
            worker = self.launch(
                Service("worker", [*command, "worker"], self.workdir / "worker.log", env=env)
            )
            await wait_log(worker, "worker running")
            pids["worker"] = worker.pid
        await asyncio.sleep(1.0)
        idle_kb = proc_status_kb(server.pid, "VmRSS") or 0
        self.figures["idle_rss_mb"] = idle_kb / 1024
        print(f"msgpush started (pid {server.pid}); idle RSS {idle_kb / 1024:.1f} MB")
        if args.split_worker:
            worker_kb = proc_status_kb(pids["worker"], "VmRSS") or 0
            self.figures["worker_idle_rss_mb"] = worker_kb / 1024
            print(
                f"msgpush worker started (pid {pids['worker']}); idle RSS {worker_kb / 1024:.1f} MB"
            )

        auth = {**JSON_HEADERS, "Authorization": f"Bearer {token}"}
        api = url(port, "/api/v1")
        two_nodes = ("tput2", "batch2") if args.db == "postgresql" else ()
        for name in ("warm", "tput", "lat", "batch", *two_nodes):
            config = {"url": url(self.rport, f"/{name}")}
            channel = {"name": name, "type": "webhook", "config": config}
            await post_json(self.http, f"{api}/channels", channel, auth)
        warm_n = min(500, args.n)
        bodies = send_bodies("warm", warm_n)
        warm = await closed_loop(self.http, f"{api}/messages", bodies, args.concurrency, auth, 120)
        self.check(warm, warm_n, "msgpush warm-up")
        await self.delivered("/warm", warm.accepted_ids)
        await asyncio.sleep(1.0)

        profiler = Profiler(args.profile, server.pid, args.native, args.perf)
        if self.wants("single"):
            await self.single((api,), auth, pids, profiler)
            await asyncio.sleep(1.0)
        if self.wants("latency"):
            await self.latency(api, auth)
            await asyncio.sleep(1.0)
        if self.wants("batch"):
            await self.batch((api,), auth, pids, profiler)
            await asyncio.sleep(1.0)
        if args.db == "postgresql" and {"single", "batch"} & set(args.phases):
            await self.second_node(serve, env, api, auth, pids)

        self.figures["peak_rss_mb"] = (proc_status_kb(server.pid, "VmHWM") or 0) / 1024
        self.figures["end_rss_mb"] = (proc_status_kb(server.pid, "VmRSS") or 0) / 1024
        if "worker" in pids:
            self.figures["worker_peak_rss_mb"] = (
                proc_status_kb(pids["worker"], "VmHWM") or 0
            ) / 1024
        unfinished = await get_json(
            self.http,
            f"{api}/deliveries",
            params={"status": "failed,retrying", "limit": "500"},
            headers=auth,
        )
        self.figures["failed_or_retrying"] = len(unfinished["items"])

    async def single(
        self,
        apis: tuple[str, ...],
        auth: dict[str, str],
        pids: dict[str, int],
        profiler: Profiler,
        phase: str = "single",
        channel: str = "tput",
    ) -> None:
        """(3) N messages, one per POST (split between ``apis``): accepted/s and delivered/s."""
        n, conc = self.args.n, self.args.concurrency
        nodes = f", {len(apis)} nodes" if len(apis) > 1 else ""
        print(f"(3) msgpush: {n} x POST /api/v1/messages, concurrency {conc}{nodes}")
        bodies = send_bodies(channel, n)
        profiler.start(phase)
        meter = CpuMeter(pids).start()
        targets = tuple(f"{api}/messages" for api in apis)
        load = await closed_loop(self.http, targets, bodies, conc, auth, self.timeout(n))
        seen = await self.delivered(f"/{channel}", load.accepted_ids)
        self.cpu[phase] = meter.stop()
        profiler.stop()
        self.check(load, n, f"msgpush {phase}")
        f = self.figures
        f[f"{phase}_accepted_ps"] = load.ok / load.seconds
        f[f"{phase}_delivered_ps"] = self.delivered_rate(seen, load.started, load.accepted_ids)
        # CPU per message: how much work msgpush does, whatever else shares the machine
        f[f"{phase}_cpu_ms_per_msg"] = msgpush_cpu_ms(meter) / max(seen["count"], 1)
        # How far delivery trailed acceptance: the last arrival after the last answer. Both
        # rates start at the first POST, so delivered/s is below accepted/s by this tail even
        # when delivery keeps pace throughout.
        if seen["last"] is not None:
            f[f"{phase}_delivery_tail_ms"] = (seen["last"] - (load.started + load.seconds)) * 1000
        print(
            f"    accepted {f[f'{phase}_accepted_ps']:,.0f}/s, delivered "
            f"{f[f'{phase}_delivered_ps']:,.0f}/s ({seen['count']}/{n} arrived, "
            f"{seen['duplicates']} duplicates, the last "
            f"{f.get(f'{phase}_delivery_tail_ms', float('nan')):,.0f} ms after the last "
            f"answer), msgpush CPU "
            f"{f[f'{phase}_cpu_ms_per_msg']:.2f} ms/message\n    {meter.line()}"
        )

    async def second_node(
        self,
        serve: list[str],
        env: dict[str, str],
        api: str,
        auth: dict[str, str],
        pids: dict[str, int],
    ) -> None:
        """The PostgreSQL scaling run: a second ``serve`` on the same database and secret key,
        then (3) and (4) again with the load split between the two nodes. CPU per message is
        that of both nodes (and their worker processes) together."""
        port = free_port()
        second = [
            *serve[: serve.index("--port") + 1],
            str(port),
            *serve[serve.index("--port") + 2 :],
        ]
        node_env = {**env, "MSGPUSH_DATA_DIR": str(self.workdir / "data2")}
        node = self.launch(Service("msgpush2", second, self.workdir / "msgpush2.log", env=node_env))
        await wait_ready(self.http, node, url(port, "/healthz"))
        print(f"second msgpush node started (pid {node.pid}) on the same database")
        apis = (api, url(port, "/api/v1"))
        both = {**pids, "msgpush2": node.pid}
        quiet = Profiler(None, node.pid, native=False, perf=False)
        await asyncio.sleep(1.0)
        if self.wants("single"):
            await self.single(apis, auth, both, quiet, phase="two_single", channel="tput2")
            await asyncio.sleep(1.0)
        if self.wants("batch"):
            await self.batch(apis, auth, both, quiet, phase="two_batch", channel="batch2")
        node.stop()

    async def latency(self, api: str, auth: dict[str, str]) -> None:
        """Enqueue-to-delivered latency at a steady rate: receiver arrival - POST sent."""
        count, rate = self.args.latency_n, self.args.rate
        print(f"    latency: {count} messages at {rate:g}/s (open loop)")
        bodies = send_bodies("lat", count)
        sent, load, lag_ms = await open_loop(
            self.http, f"{api}/messages", bodies, rate, auth, count / rate + 60
        )
        self.check(load, count, "latency")
        await self.delivered("/lat", len(sent))
        arrivals = await get_json(self.http, url(self.rport, "/_arrivals"), params={"path": "/lat"})
        latencies = [(arrivals[i] - t) * 1000 for i, t in sent.items() if i in arrivals]
        if not latencies:
            raise BenchError("no latency sample arrived")
        f = self.figures
        f["latency_samples"] = len(latencies)
        f["latency_p50_ms"] = percentile(latencies, 50)
        f["latency_p90_ms"] = percentile(latencies, 90)
        f["latency_p99_ms"] = percentile(latencies, 99)
        f["latency_max_ms"] = max(latencies)
        f["latency_send_lag_ms"] = lag_ms
        print(
            f"    p50 {f['latency_p50_ms']:.1f} ms, p90 {f['latency_p90_ms']:.1f} ms, "
            f"p99 {f['latency_p99_ms']:.1f} ms, max {f['latency_max_ms']:.1f} ms "
            f"({len(latencies)}/{count} samples; sender at most {lag_ms:.1f} ms late)"
        )

    async def batch(
        self,
        apis: tuple[str, ...],
        auth: dict[str, str],
        pids: dict[str, int],
        profiler: Profiler,
        phase: str = "batch",
        channel: str = "batch",
    ) -> None:
        """(4) N messages as POST /messages/batch of --batch-size (split between ``apis``):
        accepted/s, delivered/s."""
        n, size, conc = self.args.n, self.args.batch_size, self.args.batch_concurrency
        if len(apis) > 1:
            conc = max(conc, len(apis))  # at least one client per node
        nodes = f", {len(apis)} nodes" if len(apis) > 1 else ""
        print(
            f"(4) msgpush: {n} messages as POST /messages/batch of {size}, "
            f"concurrency {conc}{nodes}"
        )
        bodies = batch_bodies(channel, n, size)
        profiler.start(phase)
        meter = CpuMeter(pids).start()
        targets = tuple(f"{api}/messages/batch" for api in apis)
        load = await closed_loop(self.http, targets, bodies, conc, auth, self.timeout(n))
        seen = await self.delivered(f"/{channel}", load.accepted_ids)
        self.cpu[phase] = meter.stop()
        profiler.stop()
        self.check(load, len(bodies), f"msgpush {phase}")
        f = self.figures
        f[f"{phase}_accepted_ps"] = load.accepted_ids / load.seconds
        f[f"{phase}_delivered_ps"] = self.delivered_rate(seen, load.started, load.accepted_ids)
        f[f"{phase}_cpu_ms_per_msg"] = msgpush_cpu_ms(meter) / max(seen["count"], 1)
        print(
            f"    accepted {f[f'{phase}_accepted_ps']:,.0f}/s, delivered "
            f"{f[f'{phase}_delivered_ps']:,.0f}/s ({seen['count']}/{n} arrived, "
            f"{seen['duplicates']} duplicates), msgpush CPU "
            f"{f[f'{phase}_cpu_ms_per_msg']:.2f} ms/message\n    {meter.line()}"
        )


# -- the report ------------------------------------------------------------------------------


def source_revision(src: Path | None = None) -> str:
    """The git commit of the measured source, and whether src/ had uncommitted changes."""
    if src is not None:
        stamp = src.parent / "REVISION"
        lines = stamp.read_text().split("\n") if stamp.exists() else ["unknown revision"]
        revision = ", ".join(line.strip() for line in lines if line.strip())
        return f"snapshot {src} ({revision})"
    root = BENCH_DIR.parent

    def git(*argv: str) -> str:
        done = subprocess.run(
            ["git", *argv], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "src")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    if dirty:
        return f"{commit} + uncommitted changes in {len(dirty.splitlines())} file(s) under src/"
    return f"{commit} (clean)"


def fmt(figures: dict[str, Any], key: str, spec: str, unit: str) -> str:
    value = figures.get(key)
    return "n/a" if value is None else f"{value:{spec}} {unit}".rstrip()


def report(
    figures: dict[str, Any], cpu: dict[str, dict[str, float]], args: argparse.Namespace
) -> int:
    f = figures
    print()
    print(
        f"msgpush benchmark, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{'PostgreSQL' if args.db == 'postgresql' else 'SQLite'}, N={args.n}"
    )
    print(f"  msgpush source: {source_revision(args.src)}")
    variant = [
        *(["serve --no-worker + msgpush worker"] if args.split_worker else []),
        *([f"server command: {args.server_cmd}"] if args.server_cmd else []),
        *args.server_env,
    ]
    if variant:
        print(f"  variant: {'; '.join(variant)}")
    if "busy_before_start" in f:
        print(f"  machine busy before start: {f['busy_before_start']:.2f} cores")
    latency = "n/a"
    if "latency_p50_ms" in f:
        latency = f"{f['latency_p50_ms']:.1f} / {f['latency_p99_ms']:.1f} ms"
    rss = "n/a"
    if "idle_rss_mb" in f and "peak_rss_mb" in f:
        rss = f"{f['idle_rss_mb']:.1f} / {f['peak_rss_mb']:.1f} MB"
    rows = [
        ("(1) ceiling: client -> receiver", fmt(f, "ceiling_ps", ",.0f", "req/s")),
        ("(2) web ceiling: validate-only FastAPI", fmt(f, "web_ceiling_ps", ",.0f", "req/s")),
        ("(3) msgpush single POST accepted", fmt(f, "single_accepted_ps", ",.0f", "msg/s")),
        ("(3) msgpush single POST delivered", fmt(f, "single_delivered_ps", ",.0f", "msg/s")),
        (
            "(3) last delivery after the last answer",
            fmt(f, "single_delivery_tail_ms", ",.0f", "ms"),
        ),
        (f"(3) enqueue->delivered at {args.rate:g}/s p50 / p99", latency),
        ("(4) msgpush batch accepted", fmt(f, "batch_accepted_ps", ",.0f", "msg/s")),
        ("(4) msgpush batch delivered", fmt(f, "batch_delivered_ps", ",.0f", "msg/s")),
        ("(2) web ceiling app CPU per request", fmt(f, "web_ceiling_cpu_ms", ".3f", "ms")),
        ("(3) msgpush CPU per message, single POST", fmt(f, "single_cpu_ms_per_msg", ".2f", "ms")),
        ("(4) msgpush CPU per message, batch", fmt(f, "batch_cpu_ms_per_msg", ".2f", "ms")),
        ("msgpush idle RSS / peak RSS (VmHWM)", rss),
        ("deliveries failed or retrying", fmt(f, "failed_or_retrying", "d", "")),
        *(
            [
                (
                    "worker idle RSS / peak RSS",
                    f"{f['worker_idle_rss_mb']:.1f} / {f['worker_peak_rss_mb']:.1f} MB",
                )
            ]
            if "worker_peak_rss_mb" in f
            else []
        ),
    ]
    if args.db == "postgresql":
        rows += [
            ("two nodes: single POST accepted", fmt(f, "two_single_accepted_ps", ",.0f", "msg/s")),
            (
                "two nodes: single POST delivered",
                fmt(f, "two_single_delivered_ps", ",.0f", "msg/s"),
            ),
            ("two nodes: batch accepted", fmt(f, "two_batch_accepted_ps", ",.0f", "msg/s")),
            ("two nodes: batch delivered", fmt(f, "two_batch_delivered_ps", ",.0f", "msg/s")),
            (
                "two nodes: CPU per message, single POST",
                fmt(f, "two_single_cpu_ms_per_msg", ".2f", "ms"),
            ),
            ("two nodes: CPU per message, batch", fmt(f, "two_batch_cpu_ms_per_msg", ".2f", "ms")),
        ]
    for label, value in rows:
        print(f"  {label:<44} {value:>20}")
    print("  ratios:")
    for label, top, bottom in (
        ("(3) accepted / (2) web ceiling", "single_accepted_ps", "web_ceiling_ps"),
        ("(3) delivered / (3) accepted", "single_delivered_ps", "single_accepted_ps"),
        ("(4) delivered / (1) ceiling", "batch_delivered_ps", "ceiling_ps"),
        ("(3) accepted / (1) ceiling", "single_accepted_ps", "ceiling_ps"),
        *(
            [
                (
                    "two / one node: accepted, single",
                    "two_single_accepted_ps",
                    "single_accepted_ps",
                ),
                (
                    "two / one node: CPU/msg, single",
                    "two_single_cpu_ms_per_msg",
                    "single_cpu_ms_per_msg",
                ),
                (
                    "two / one node: CPU/msg, batch",
                    "two_batch_cpu_ms_per_msg",
                    "batch_cpu_ms_per_msg",
                ),
            ]
            if args.db == "postgresql"
            else []
        ),
    ):
        value = f"{f[top] / f[bottom]:.2f}" if top in f and f.get(bottom) else "n/a"
        print(f"    {label:<34} {value}")
    print(f"  CPU (cores busy, of {os.cpu_count() or 1}; 'other' = everything else running):")
    for phase, usage in cpu.items():
        print(f"    {phase:<12} " + ", ".join(f"{k} {v:.2f}" for k, v in usage.items()))
    print("  targets:")
    failures = 0
    for label, key, op, ref, factor in TARGETS:
        if key not in f or (isinstance(ref, str) and ref not in f):
            print(f"    n/a   {label}")
            continue
        value = float(f[key])
        bound = float(f[ref] if isinstance(ref, str) else ref) * factor
        ok = value >= bound if op == ">=" else value <= bound
        failures += not ok
        print(f"    {'PASS' if ok else 'FAIL'}  {label:<44} {value:,.1f} {op} {bound:,.1f}")
    return 1 if failures else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="msgpush throughput/latency/memory benchmark (loopback, SQLite).",
    )
    parser.add_argument("--n", type=int, default=10_000, help="messages per phase (default 10000)")
    parser.add_argument("--concurrency", type=int, default=64, help="clients for (1)-(3)")
    parser.add_argument("--latency-n", type=int, default=500, help="messages in the latency run")
    parser.add_argument("--rate", type=float, default=100.0, help="latency run: messages/s")
    parser.add_argument("--batch-size", type=int, default=1000, help="messages per batch POST")
    parser.add_argument("--batch-concurrency", type=int, default=2, help="batch POSTs in flight")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (default: all)",
    )
    parser.add_argument(
        "--server-cmd",
        help="command that stands for `.venv/bin/msgpush` (e.g. a wrapper script); "
        "`serve --host 127.0.0.1 --port P` is appended",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for msgpush, e.g. MSGPUSH_WORKERS=128 (repeatable)",
    )
    parser.add_argument(
        "--split-worker",
        action="store_true",
        help="run `serve --no-worker` plus a separate `msgpush worker` process",
    )
    parser.add_argument(
        "--src",
        type=Path,
        help="run msgpush from this source directory (a snapshot: `git archive HEAD src | "
        "tar -x -C DIR`, then --src DIR/src) instead of the working tree",
    )
    parser.add_argument("--profile", type=Path, help="py-spy record msgpush in (3), (4) into DIR")
    parser.add_argument("--native", action="store_true", help="with --profile: native frames too")
    parser.add_argument("--perf", action="store_true", help="with --profile: perf record too")
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="msgpush's database; postgresql runs (3)-(4) with one node, then again with two "
        "nodes sharing the database (a fresh one on MSGPUSH_TEST_PG_URL, default "
        f"{DEFAULT_PG_URL}, dropped at the end)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, database)")
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if args.src is not None:
        args.src = args.src.resolve()
        if not (args.src / "msgpush" / "__init__.py").exists():
            parser.error(f"--src {args.src}: no msgpush package there")
    args.pg_url = os.environ.get("MSGPUSH_TEST_PG_URL", DEFAULT_PG_URL)
    if args.db == "postgresql" and urlsplit(args.pg_url).hostname not in LOOPBACK:
        parser.error(f"MSGPUSH_TEST_PG_URL must name a loopback host, not {args.pg_url!r}")
    if bad := [s for s in args.server_env if "=" not in s or s.startswith("=")]:
        parser.error(f"--server-env wants KEY=VALUE, not {bad[0]!r}")
    if unknown := set(args.phases) - set(PHASES):
        parser.error(f"unknown phase(s) {', '.join(sorted(unknown))}; use {', '.join(PHASES)}")
    if not 1 <= args.n <= 1_000_000 or not 1 <= args.latency_n <= 100_000:
        parser.error("--n must be 1..1000000 and --latency-n 1..100000")
    if not 0 < args.rate <= 10_000 or not 1 <= args.batch_size <= 1000:
        parser.error("--rate must be in (0, 10000] and --batch-size 1..1000")
    if not 1 <= args.concurrency <= 1024 or not 1 <= args.batch_concurrency <= 64:
        parser.error("--concurrency must be 1..1024 and --batch-concurrency 1..64")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="msgpush-bench-"))
    bench = Bench(args, workdir)
    runner: Callable[..., Any] = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    try:
        runner(bench.run())
    except (BenchError, KeyboardInterrupt) as exc:
        print(f"benchmark stopped: {type(exc).__name__}: {exc}", file=sys.stderr)
        for service in bench.services:
            if service.name == "msgpush":
                print(f"--- msgpush log (tail)\n{service.log_tail()}", file=sys.stderr)
        return 2
    finally:
        bench.stop_all()
        if bench.database_url:
            try:
                asyncio.run(bench.drop_database())
            except Exception as exc:  # the figures still count; say what was left behind
                print(f"could not drop {bench.database_url}: {exc}", file=sys.stderr)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    status = report(bench.figures, bench.cpu, args)
    if args.json:
        payload = {
            "figures": bench.figures,
            "cpu": bench.cpu,
            "args": vars(args),
            "source": source_revision(args.src),
        }
        args.json.write_bytes(orjson.dumps(payload, default=str, option=orjson.OPT_INDENT_2))
    return status


if __name__ == "__main__":
    sys.exit(main())
