"""Storage faults: a full disk, a read-only database or data directory never kill msgpush, never
lose what it accepted, and never make it send a delivery twice because it could not write down
that it was sent.

- injected at the storage layer (deterministic, both backends): the writer's transaction raises
  what SQLite or asyncpg raise on a full disk;
- a real full disk: a small tmpfs holding the data directory, filled up mid-burst (root only;
  with CI=true it must run);
- a real read-only PostgreSQL database (``default_transaction_read_only``);
- a read-only data directory at the start of the CLI commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy.exc

from msgpush import datadir
from msgpush.api.app import create_app
from msgpush.api.ingest import IngestRoutes
from msgpush.delivery import engine as engine_module
from msgpush.runtime import Runtime
from msgpush.settings import Settings
from msgpush.storage import db as db_module
from msgpush.storage.db import StorageUnavailable, storage_fault
from tests.conftest import IN_CI
from tests.fakes.receiver import Receiver, Reply
from tests.server import PG_ADMIN_URL, ServerProcess, create_pg_database, drop_pg_database

# -- what counts as a storage fault ---------------------------------------------------------


def _sqlite_error(message: str, code: int | None = None) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    if code is not None:
        error.sqlite_errorcode = code  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (_sqlite_error("database or disk is full", 13), "full"),
        (_sqlite_error("database or disk is full"), "full"),
        (_sqlite_error("disk I/O error", 778), "io"),  # SQLITE_IOERR_WRITE
        (_sqlite_error("attempt to write a readonly database", 8), "read_only"),
        (sqlalchemy.exc.OperationalError("COMMIT", {}, _sqlite_error("disk I/O error")), "io"),
        (asyncpg.exceptions.DiskFullError("could not extend file"), "full"),
        (asyncpg.exceptions.ReadOnlySQLTransactionError("read-only transaction"), "read_only"),
        (asyncpg.exceptions.AdminShutdownError("terminating connection"), "unreachable"),
        (OSError(errno.ENOSPC, "No space left on device"), "full"),
        (OSError(errno.EROFS, "Read-only file system"), "read_only"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "unreachable"),
    ],
)
def test_storage_faults_are_recognised(error: BaseException, kind: str) -> None:
    fault = storage_fault(error)
    assert fault is not None and fault.kind == kind


@pytest.mark.parametrize(
    "error",
    [
        _sqlite_error("database is locked", 5),
        sqlite3.IntegrityError("UNIQUE constraint failed: messages.id"),
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        ValueError("a bug"),
        OSError(errno.ENOENT, "No such file or directory"),
    ],
)
def test_other_errors_are_not_storage_faults(error: BaseException) -> None:
    assert storage_fault(error) is None


# -- an injected fault, in process --------------------------------------------------------


class Fault:
    """Makes every transaction of the writer fail as the backend's driver fails on a full disk."""

    def __init__(self, backend: str) -> None:
        self.on = False
        self.backend = backend

    def error(self) -> Exception:
        orig: Exception = (
            _sqlite_error("database or disk is full")
            if self.backend == "sqlite"
            else asyncpg.exceptions.DiskFullError("could not extend file: No space left on device")
        )
        return sqlalchemy.exc.OperationalError("INSERT …", {}, orig)


@contextlib.asynccontextmanager
async def _in_process(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient, httpx.AsyncClient, Fault]]:
    """A runtime with its engine; a client of the lean ingest path and one of the FastAPI app
    alone; the fault switch (off)."""
    fault = Fault(backend)
    real_run_groups = db_module._run_groups

    async def run_groups(conn: Any, groups: Any) -> Any:
        if fault.on:
            raise fault.error()
        return await real_run_groups(conn, groups)

    monkeypatch.setattr(db_module, "_run_groups", run_groups)
    url = create_pg_database() if backend == "postgresql" else None
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=url,
        egress_allow="127.0.0.0/8",
        lease_s=1.0,  # far shorter than the fault: the lease must not bring a resend
        poll_s=0.1,
        delivery_processes=0,
    )
    rt = Runtime(settings, worker=True)
    await rt.start()
    app = create_app(settings)
    app.state.runtime = rt
    token = await rt.ensure_admin_token()
    headers = {"Authorization": f"Bearer {token}"}
    lean = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=IngestRoutes(app, lambda: rt)),
        base_url="http://msgpush",
        headers=headers,
    )
    plain = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://msgpush", headers=headers
    )
    try:
        yield rt, lean, plain, fault
    finally:
        fault.on = False
        await lean.aclose()
        await plain.aclose()
        await rt.stop()
        if url:
            drop_pg_database(url)


def _assert_storage_refusal(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    error = response.json()["error"]
    assert error["code"] == "storage_unavailable"
    assert "disk holding the database is full" in error["message"]


async def _wait(condition: Any, within_s: float, what: str) -> None:
    try:
        async with asyncio.timeout(within_s):
            while not await condition():  # noqa: ASYNC110 - polling another thread's state
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_results_refused_by_storage_are_held_and_written_later_never_resent(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    # The janitor comes round often and held results are tried again seldom: were the janitor
    # to release this process's own expired leases first, the deliveries would go out twice.
    monkeypatch.setattr(engine_module, "JANITOR_EVERY_S", 0.05)
    monkeypatch.setattr(engine_module, "UNRECORDED_RETRY_S", 1.0)
    count = 12
    path = f"/faults/held/{backend}"
    receiver.script(path, *[Reply(200, delay_s=0.5) for _ in range(count)])
    async with _in_process(backend, tmp_path, monkeypatch) as (rt, lean, plain, fault):
        assert rt.engine is not None
        created = await plain.post(
            "/api/v1/channels",
            json={"name": "held", "type": "webhook", "config": {"url": receiver.url(path)}},
        )
        assert created.status_code == 201, created.text
        ids = []
        for i in range(count):
            answer = await lean.post(
                "/api/v1/messages", json={"channels": ["held"], "title": f"{i}"}
            )
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["deliveries"][0]["id"])

        async def all_arrived() -> bool:
            return len(receiver.at(path)) >= count

        await _wait(all_arrived, 10, "the sends to start")  # recorded on arrival, answered later
        fault.on = True  # the disk fills while every send is in flight

        _assert_storage_refusal(
            await lean.post("/api/v1/messages", json={"channels": ["held"], "title": "lost"})
        )
        _assert_storage_refusal(
            await lean.post(
                "/api/v1/messages/batch", json={"messages": [{"channels": ["held"], "title": "x"}]}
            )
        )
        _assert_storage_refusal(
            await plain.post("/api/v1/messages", json={"channels": ["held"], "title": "lost"})
        )
        _assert_storage_refusal(
            await plain.post("/api/v1/events", json={"type": "task.failed", "channels": ["held"]})
        )
        ready = await plain.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "5"
        assert ready.json()["status"] == "unavailable"
        assert "full" in ready.json()["reason"]
        assert (await plain.get("/healthz")).status_code == 200, "liveness is not readiness"

        async def all_held() -> bool:
            return rt.engine is not None and rt.engine.unrecorded == count

        await _wait(all_held, 10, "every result to be held in memory")
        await asyncio.sleep(2.0)  # twice the lease, forty janitor rounds
        assert (await plain.get("/readyz")).json()["unrecorded_results"] == count

        fault.on = False

        async def ready_again() -> bool:
            return (await plain.get("/readyz")).status_code == 200

        await _wait(ready_again, 5, "/readyz to say ready")

        async def all_delivered() -> bool:
            for delivery_id in ids:
                got = (await plain.get(f"/api/v1/deliveries/{delivery_id}")).json()
                if got["status"] != "delivered":
                    return False
            return True

        await _wait(all_delivered, 10, "the held results to be written")
        assert rt.engine.unrecorded == 0
        await asyncio.sleep(1.5)  # a lease and many janitor rounds more: nothing goes out again
        assert len(receiver.at(path)) == count, "a delivery was sent twice"
        for delivery_id in ids:
            got = (await plain.get(f"/api/v1/deliveries/{delivery_id}")).json()
            assert got["attempts"] == 1, got
        after = await lean.post("/api/v1/messages", json={"channels": ["held"], "title": "again"})
        assert after.status_code == 202, after.text


async def test_readyz_probes_while_nothing_else_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "PROBE_EVERY_S", 0.0)
    async with _in_process("sqlite", tmp_path, monkeypatch) as (rt, _lean, plain, fault):
        assert (await plain.get("/readyz")).json()["status"] == "ready"
        fault.on = True
        answer = await plain.get("/readyz")
        assert answer.status_code == 503
        assert answer.json()["since"] is not None
        fault.on = False
        assert (await plain.get("/readyz")).status_code == 200
        assert rt.db.writer.fault is None


async def test_a_storage_fault_fails_the_whole_commit_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other errors are isolated by running each write alone; a storage fault would only fail
    again for each: every write of the commit gets it at once."""
    async with _in_process("sqlite", tmp_path, monkeypatch) as (rt, _lean, _plain, fault):
        commits = rt.db.writer.commits
        calls = 0
        real = db_module._run_groups

        async def counting(conn: Any, groups: Any) -> Any:
            nonlocal calls
            calls += 1
            return await real(conn, groups)

        monkeypatch.setattr(db_module, "_run_groups", counting)
        fault.on = True

        async def noop(_conn: Any) -> None:
            if fault.on:
                raise fault.error()

        results = await asyncio.gather(
            *(rt.db.write(noop) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, StorageUnavailable) for r in results), results
        assert calls == 1
        assert rt.db.writer.commits == commits


# -- a real full disk ----------------------------------------------------------------------


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs ({done.stderr.strip() or done.returncode}); needs root"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=24m,mode=0700")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Take every free byte of ``disk``; the file to delete to give them back."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (65536, 512):  # then what no whole chunk fitted into
            try:
                while out.write(b"\0" * size):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


@pytest.mark.slow
def test_a_full_disk_mid_burst(small_disk: Path, tmp_path: Path, receiver: Receiver) -> None:
    data = small_disk / "data"
    # few send slots, so that a backlog starts worker processes: their metrics files (memory
    # mapped) were what killed serve with SIGBUS when they lived in the data directory
    server = ServerProcess(
        data, args=("--delivery-processes", "2"), extra_env={"MSGPUSH_WORKERS": "8"}
    )
    server.log_path = tmp_path / "serve.log"  # not on the disk that fills up
    path = f"/faults/full-disk/{server.port}"
    receiver.script(path, *[Reply(200, delay_s=0.2) for _ in range(5000)])
    server.start()
    try:
        _full_disk_burst(server, small_disk, path, receiver)
    finally:
        server.stop()
    assert not (data / "metrics").exists(), "runtime files must not live in the data directory"


def _full_disk_burst(server: ServerProcess, disk: Path, path: str, receiver: Receiver) -> None:
    with server.client() as api:
        made = api.post(
            "/channels",
            json={"name": "disk", "type": "webhook", "config": {"url": receiver.url(path)}},
        )
        assert made.status_code == 201, made.text
    accepted: list[str] = []
    refused: Counter[int] = Counter()
    stop = threading.Event()
    lock = threading.Lock()

    def burst(worker: int) -> None:
        with server.client() as client:
            i = 0
            while not stop.is_set():
                i += 1
                title = f"w{worker}-{i}"
                try:
                    answer = client.post("/messages", json={"channels": ["disk"], "title": title})
                except httpx.HTTPError:
                    refused[-1] += 1
                    continue
                with lock:
                    if answer.status_code == 202:
                        accepted.append(title)
                    else:
                        refused[answer.status_code] += 1
                        assert answer.status_code == 503, answer.text
                        assert answer.headers.get("retry-after") == "5"
                        assert answer.json()["error"]["code"] == "storage_unavailable"
                        time.sleep(0.05)

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)  # deliveries in flight on every process
        filler = _fill(disk)
        deadline = time.monotonic() + 30
        while not refused[503] and time.monotonic() < deadline:
            assert server.proc is not None and server.proc.poll() is None, server.log()
            time.sleep(0.1)
        assert refused[503], "the full disk never showed"
        # a small write may still fit now and then (SQLite reuses its log's space), so
        # readiness may flicker while the disk is full: it must say so within a few probes
        deadline = time.monotonic() + 10
        while (ready := httpx.get(f"{server.url}/readyz", timeout=5)).status_code != 503:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.3)
        assert "full" in ready.json()["reason"]
        health = httpx.get(f"{server.url}/healthz", timeout=5)
        assert health.status_code == 200
        assert health.json()["worker_processes"]["started_total"] >= 1, health.text
        time.sleep(3.0)  # a while full, sends in flight finishing
        assert server.proc is not None and server.proc.poll() is None, server.log()

        filler.unlink()  # space again
        deadline = time.monotonic() + 15
        while httpx.get(f"{server.url}/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "not ready again after space was freed"
            time.sleep(0.2)
        time.sleep(1.0)  # accepting again
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert server.proc is not None and server.proc.poll() is None, server.log()

    deadline = time.monotonic() + 60
    while len(receiver.at(path)) < len(accepted) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)  # anything sent twice would arrive by now
    titles = Counter(r.json()["title"] for r in receiver.at(path))
    missing = set(accepted) - set(titles)
    assert not missing, f"{len(missing)} accepted messages never arrived"
    twice = {title: n for title, n in titles.items() if n > 1}
    assert not twice, f"sent more than once: {twice}"
    assert set(titles) <= set(accepted), "a message answered 503 was sent"
    log = server.log()
    assert "Task exception was never retrieved" not in log, log
    assert "storage unavailable" in log and "storage works again" in log, log


# -- a read-only PostgreSQL database, for real ---------------------------------------------


def _pg_admin(sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    from tests.server import run_async

    run_async(run())


@pytest.mark.slow
def test_a_read_only_postgresql_database_is_503_then_recovers(
    backend: str, tmp_path: Path, receiver: Receiver
) -> None:
    if backend != "postgresql":
        pytest.skip("PostgreSQL's own read-only mode")
    url = create_pg_database()
    name = url.rsplit("/", 1)[1]
    server = ServerProcess(tmp_path / "pg", database_url=url)
    path = f"/faults/read-only/{server.port}"
    try:
        server.start()
        with server.client() as api:
            made = api.post(
                "/channels",
                json={"name": "ro", "type": "webhook", "config": {"url": receiver.url(path)}},
            )
            assert made.status_code == 201, made.text
            _pg_admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
            _pg_admin(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            )
            deadline = time.monotonic() + 15
            while True:
                answer = api.post("/messages", json={"channels": ["ro"], "title": "ro"})
                if answer.status_code == 503:
                    break
                assert answer.status_code in (202, 503), answer.text
                assert time.monotonic() < deadline, "never refused"
                time.sleep(0.2)
            assert answer.json()["error"]["code"] == "storage_unavailable"
            assert "read-only" in answer.json()["error"]["message"]
            assert answer.headers["retry-after"] == "5"
            assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 503

            _pg_admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = off')
            _pg_admin(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            )
            deadline = time.monotonic() + 15
            while httpx.get(f"{server.url}/readyz", timeout=5).status_code != 200:
                assert time.monotonic() < deadline, "not ready again"
                time.sleep(0.3)
            sent = api.post("/messages", json={"channels": ["ro"], "title": "after"})
            assert sent.status_code == 202, sent.text
            receiver.wait_for(path, 1)
        assert server.proc is not None and server.proc.poll() is None
    finally:
        server.stop()
        drop_pg_database(url)


# -- an unwritable data directory at start -------------------------------------------------


def _cli(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSGPUSH_")}
    return subprocess.run(
        [sys.executable, "-m", "msgpush", *args, "--data-dir", str(data)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "command", [("token", "create"), ("worker",), ("serve", "--port", "0")], ids=" ".join
)
def test_a_read_only_data_directory_is_one_clear_line(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    disk = tmp_path / "ro"
    _mount_tmpfs(disk, "size=1m,ro")
    try:
        done = _cli(*command, data=disk / "data")
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: msgpush cannot write ")
    assert str(disk / "data") in line or str(disk) in line
    assert "read-only file system" in line and "MSGPUSH_DATA_DIR" in line


def test_an_unwritable_database_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a mount: the check itself, given what the kernel would answer."""
    settings = Settings(data_dir=tmp_path)
    assert datadir.unwritable(settings) is None
    settings.sqlite_path().touch()
    monkeypatch.setattr(datadir.os, "access", lambda _path, _mode: False)
    problem = datadir.unwritable(settings)
    assert problem is not None
    assert str(settings.sqlite_path().resolve()) in problem and "write access" in problem

    def read_only(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(datadir.tempfile, "mkstemp", read_only)
    problem = datadir.unwritable(settings)
    assert problem is not None and "read-only file system: mount it read-write" in problem


def test_the_runtime_directory_is_private_and_not_the_data_directory(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    chosen = datadir.runtime_dir(settings)
    assert chosen.is_dir() and not chosen.is_relative_to(tmp_path)
    assert oct(chosen.stat().st_mode & 0o777) == oct(0o700)
    assert datadir.runtime_dir(settings) == chosen, "the same for the same data directory"
    assert datadir.runtime_dir(Settings(data_dir=tmp_path / "other")) != chosen
    chosen.rmdir()
    own = Settings(data_dir=tmp_path / "data", runtime_dir=tmp_path / "run")
    assert datadir.runtime_dir(own) == tmp_path / "run"
