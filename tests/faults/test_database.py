"""PostgreSQL restarted under load: msgpush reconnects by itself and loses nothing it accepted.

The machine's shared PostgreSQL cannot be restarted (other tests use it), so this module runs a
private cluster of its own: ``initdb`` into a temporary directory, ``pg_ctl`` on a free port,
as the ``postgres`` user when the suite runs as root (initdb refuses root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from asyncpg.exceptions import CannotConnectNowError
from sqlalchemy import exc as sa_exc

from msgpush.api.common import unexpected_error
from tests.conftest import IN_CI
from tests.fakes.receiver import Receiver
from tests.helpers import make_webhook
from tests.server import ServerProcess, free_port

STREAM_GAP_S = 0.02  # per sender thread: about 100 messages a second with two threads
SENDERS = 2
# How long before a crash a claim may have committed without reaching PostgreSQL's disk: the
# WAL writer flushes asynchronous commits every 200 ms (wal_writer_delay), plus slack for a
# loaded machine.
CLAIM_FLUSH_S = 1.0


def wrapped(driver_error: Exception) -> sa_exc.DBAPIError:
    """``driver_error`` as SQLAlchemy raises it, with the driver's error as its cause."""
    try:
        raise sa_exc.DBAPIError("SELECT 1", None, driver_error) from driver_error
    except sa_exc.DBAPIError as error:
        return error


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        wrapped(CannotConnectNowError("the database system is starting up")),
        sa_exc.OperationalError("COMMIT", None, sqlite3.OperationalError("disk I/O error")),
    ],
    ids=["refused", "starting-up", "sqlite-io"],
)
def test_connection_failures_are_a_503_with_retry_after(error: Exception) -> None:
    answer = unexpected_error(error)
    assert answer.status == 503 and answer.code == "storage_unavailable"
    assert answer.headers == {"Retry-After": "5"}
    assert "send it again later" in answer.message


@pytest.mark.parametrize(
    "error",
    [ValueError("bug"), sa_exc.IntegrityError("INSERT", None, Exception("duplicate key"))],
    ids=["bug", "integrity"],
)
def test_other_errors_stay_msgpush_own(error: Exception) -> None:
    assert unexpected_error(error).status == 500


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 that this test alone may restart or crash."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="msgpush-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        argv = [str(self.bindir / tool), *args]
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{done.stdout}{done.stderr}")

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "postgres.log")
        self._run("pg_ctl", action, "-D", str(self.data), "-w", "-l", log, "-o", options, *extra)

    def start(self) -> PrivatePostgres:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._ctl("start")
        return self

    def restart(self, mode: str) -> None:
        """``fast``: a clean shutdown (sessions cut); ``immediate``: a crash, then recovery."""
        self._ctl("restart", "-m", mode)

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):  # not running
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
        shutil.rmtree(self.root, ignore_errors=True)


def postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    bindir = postgres_bindir()
    reason = None
    if bindir is None:
        reason = "no PostgreSQL server binaries (initdb, pg_ctl) on this machine"
    elif os.geteuid() == 0 and shutil.which("runuser") is None:
        reason = "running as root without runuser, and initdb refuses root"
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    assert bindir is not None
    cluster = PrivatePostgres(bindir)
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


@dataclass
class Stream:
    """Senders posting one message at a time, non-stop, recording every answer."""

    server: ServerProcess
    channel: str
    accepted: list[str] = field(default_factory=list)
    answers: Counter[int | str] = field(default_factory=Counter)
    refusals: list[httpx.Response] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Stream:
        self.threads = [
            threading.Thread(target=self._send, args=(n,), daemon=True) for n in range(SENDERS)
        ]
        for thread in self.threads:
            thread.start()
        return self

    def _send(self, sender: int) -> None:
        number = 0
        with self.server.client() as client:
            while not self.stop.is_set():
                number += 1
                body = {"channels": [self.channel], "title": f"s{sender}-{number}"}
                try:
                    response = client.post("/messages", json=body, timeout=15)
                except httpx.TransportError as exc:  # connection-level: allowed
                    with self.lock:
                        self.answers[type(exc).__name__] += 1
                    continue
                with self.lock:
                    self.answers[response.status_code] += 1
                    if response.status_code == 202:
                        self.accepted.append(response.json()["id"])
                    else:
                        self.refusals.append(response)
                time.sleep(STREAM_GAP_S)

    def accepted_count(self) -> int:
        with self.lock:
            return len(self.accepted)

    def wait_accepting(self, more: int, timeout: float = 30.0) -> float:
        """Wait until ``more`` further messages were accepted; returns how long it took."""
        began = time.monotonic()
        target = self.accepted_count() + more
        while self.accepted_count() < target:
            if time.monotonic() - began > timeout:
                raise AssertionError(f"ingest did not recover in {timeout:g} s: {self.answers}")
            time.sleep(0.02)
        return time.monotonic() - began

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


@pytest.mark.slow
def test_postgres_restarts_under_load_lose_nothing_and_need_no_msgpush_restart(
    private_pg: PrivatePostgres, receiver: Receiver, tmp_path: Path
) -> None:
    server = ServerProcess(tmp_path / "pgfault", database_url=private_pg.url).start()
    try:
        path = f"/pgfault/{server.port}"
        with server.client() as api:
            make_webhook(api, "pgfault", receiver.url(path))
        stream = Stream(server, "pgfault").start()
        recovery_s: dict[str, float] = {}
        crash = (0.0, 0.0)
        try:
            stream.wait_accepting(50)
            for mode in ("fast", "immediate"):
                began = time.time()
                private_pg.restart(mode)
                recovery_s[mode] = stream.wait_accepting(50)
                if mode == "immediate":
                    crash = (began, time.time())
            # the engine, too, came back: messages accepted after the last restart arrive
            stream.wait_accepting(30)
        finally:
            stream.finish()
        assert server.proc is not None and server.proc.poll() is None, server.log()

        accepted = set(stream.accepted)
        assert len(accepted) == len(stream.accepted)
        # never a 500: during the outage ingest answers 503 with Retry-After, or the
        # connection itself fails; nothing else
        allowed = {202, 503, "ReadError", "RemoteProtocolError", "ConnectError", "ReadTimeout"}
        assert set(stream.answers) <= allowed, stream.answers
        for refused in stream.refusals:
            assert refused.headers.get("Retry-After", "").isdigit(), refused.headers
            error = refused.json()["error"]
            assert error["code"] == "storage_unavailable", error
            assert "cannot store anything now" in error["message"], error

        with server.client() as api:
            # a send whose result could not be written is still `sending`: its lease runs out
            assert not wait_settled(api, timeout=60)
            arrivals = wait_for_messages(receiver, path, accepted, timeout=10)
            assert set(arrivals) >= accepted, f"{len(accepted - set(arrivals))} never sent"
            repeated = {message_id for message_id, times in arrivals.items() if len(times) > 1}
            explained = interrupted_messages(api, repeated)
        # A crash of PostgreSQL also loses the engine's last claims, which commit without
        # waiting for the disk (docs/architecture.md): a send in flight at the crash may then
        # be made again with no interrupted attempt to show for it, as after a kill of msgpush.
        in_flight_at_crash = {
            message_id
            for message_id in repeated - explained
            if crash[0] - CLAIM_FLUSH_S <= min(arrivals[message_id]) <= crash[1]
        }
        unexplained = repeated - explained - in_flight_at_crash
        assert not unexplained, {m: arrivals[m] for m in unexplained} | {"crash": crash}
        print(
            f"answers {dict(stream.answers)}; recovery {recovery_s}; {len(accepted)} accepted, "
            f"{len(repeated)} sent more than once ({len(explained)} with an interrupted attempt, "
            f"{len(in_flight_at_crash)} in flight at the crash)"
        )
    finally:
        server.stop()


def wait_for_messages(
    receiver: Receiver, path: str, expected: set[str], timeout: float
) -> dict[str, list[float]]:
    """When the receiver saw each message on ``path``, once all expected came (or timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        arrivals: dict[str, list[float]] = {}
        for request in receiver.at(path):
            arrivals.setdefault(request.json()["message_id"], []).append(request.at)
        if expected <= set(arrivals) or time.monotonic() > deadline:
            return arrivals
        time.sleep(0.2)


def interrupted_messages(api: httpx.Client, message_ids: set[str]) -> set[str]:
    """Those of ``message_ids`` whose delivery shows an ``interrupted`` attempt."""
    explained = set()
    for message_id in message_ids:
        message = api.get(f"/messages/{message_id}").json()
        for delivery in message["deliveries"]:
            detail = api.get(f"/deliveries/{delivery['id']}").json()
            if any(a["outcome"] == "interrupted" for a in detail["attempt_log"]):
                explained.add(message_id)
    return explained


def wait_settled(api: httpx.Client, timeout: float) -> list[dict[str, object]]:
    """Wait until every delivery is delivered; returns those that are not, at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        page = api.get("/deliveries", params={"status": "queued,sending,retrying,failed"}).json()
        items: list[dict[str, object]] = page["items"]
        if not items or time.monotonic() > deadline:
            return items
        time.sleep(0.2)
