"""kill -9 mid-burst: nothing accepted is lost, and what was mid-send is sent again in seconds.

The lease is set to 60 s in every test here, so it is the heartbeat and the owner locks
(storage/owners.py), not the lease, that bring the dead process's claims back.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from msgpush.settings import Settings
from msgpush.storage.db import Database
from msgpush.storage.schema import deliveries, delivery_attempts
from tests.conftest import require_postgres
from tests.delivery.test_worker_processes import (
    BACKLOG_ENV,
    burst_until_two_workers,
    children,
    send_burst,
)
from tests.fakes.receiver import Receiver, Reply
from tests.helpers import make_webhook
from tests.server import ServerProcess, create_pg_database, drop_pg_database, run_async

pytestmark = pytest.mark.slow

NO_LEASE_HELP = {"MSGPUSH_LEASE_S": "60"}
ONE_PROCESS = {**NO_LEASE_HELP, "MSGPUSH_DELIVERY_PROCESSES": "0"}
SECRET_KEY = "VGhpcy1pcy1hLXRlc3Qta2V5LW9mLTMyLWJ5dGVzISE="


def interrupted_attempts(server: ServerProcess) -> list[tuple[str, str, int]]:
    """(message id, owner whose send was interrupted, when it was released) for each
    ``interrupted`` attempt, read from the server's database."""

    async def read() -> list[tuple[str, str, int]]:
        db = Database(Settings(data_dir=server.data_dir, database_url=server.database_url))
        try:
            async with db.read() as conn:
                rows = await conn.execute(
                    select(
                        deliveries.c.message_id,
                        delivery_attempts.c.worker,
                        delivery_attempts.c.started_at,
                    )
                    .select_from(
                        delivery_attempts.join(
                            deliveries, deliveries.c.id == delivery_attempts.c.delivery_id
                        )
                    )
                    .where(delivery_attempts.c.outcome == "interrupted")
                )
                return [(r.message_id, r.worker, r.started_at) for r in rows]
        finally:
            await db.close()

    return run_async(read())


def pid_of(owner: str) -> int:
    return int(owner.rsplit("-", 2)[1])  # host-pid-suffix


def arrivals(receiver: Receiver, path: str) -> dict[str, list[float]]:
    """message id -> the times the receiver got it."""
    found: dict[str, list[float]] = {}
    for request in receiver.at(path):
        found.setdefault(request.json()["message_id"], []).append(request.at)
    return found


def wait_all_delivered(
    server: ServerProcess, receiver: Receiver, path: str, ids: list[str], timeout: float
) -> dict[str, list[float]]:
    """Wait until every accepted message arrived and no delivery is left unfinished (a send
    cut short by a kill reached the receiver once already: only its release and resend finish
    it); returns what the receiver got."""
    deadline = time.monotonic() + timeout
    with server.client() as api:
        while True:
            got = arrivals(receiver, path)
            missing = set(ids) - set(got)
            if not missing:
                pending = api.get(
                    "/deliveries", params={"status": "queued,sending,retrying", "limit": 1}
                )
                assert pending.status_code == 200, pending.text
                if not pending.json()["items"]:
                    return arrivals(receiver, path)
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(missing)} of {len(ids)} accepted messages never arrived"
                    if missing
                    else "deliveries were left unfinished"
                )
            time.sleep(0.1)


def wait_count(receiver: Receiver, path: str, count: int, timeout: float) -> None:
    receiver.wait_for(path, count, timeout=timeout)


def assert_repeats_are_told(
    got: dict[str, list[float]], interrupted: list[tuple[str, str, int]], in_flight: set[str]
) -> None:
    """Sent twice only what was mid-send at the kill, and each such send shows an
    ``interrupted`` attempt in its history."""
    repeated = {m for m, times in got.items() if len(times) > 1}
    assert repeated <= in_flight, "only sends in flight at the kill may be repeated"
    told = {message_id for message_id, _, _ in interrupted}
    assert repeated <= told, f"{len(repeated - told)} repeated sends have no interrupted attempt"
    assert all(len(got[m]) <= 2 for m in got), "a message arrived three times"


def test_serve_killed_with_128_sends_in_flight_resends_them_at_once_on_restart(
    make_server: Callable[..., ServerProcess], receiver: Receiver, unique: str
) -> None:
    server = make_server(**ONE_PROCESS)  # 128 send slots (MSGPUSH_WORKERS' default)
    path = f"/kill-serve/{unique}"
    # the first 128 sends hang, so that every send slot is mid-send at the kill; later
    # answers (the resends) come at once
    receiver.script(path, *[Reply(200, delay_s=20) for _ in range(128)])
    with server.client() as api:
        make_webhook(api, unique, receiver.url(path))
        ids = send_burst(api, unique, 200, unique)
    wait_count(receiver, path, 128, timeout=20)
    time.sleep(0.3)
    in_flight = set(arrivals(receiver, path))
    assert len(in_flight) == 128, "every send slot was busy"
    assert server.proc is not None
    killed_pid = server.proc.pid
    server.kill()

    restarted_at = time.time()
    server.start()  # the same data directory / database
    got = wait_all_delivered(server, receiver, path, ids, timeout=40)

    last = max(max(times) for times in got.values())
    assert last - restarted_at <= 10, f"the last delivery came {last - restarted_at:.1f} s late"
    interrupted = interrupted_attempts(server)
    assert {m for m, _, _ in interrupted} == in_flight, "each send cut short is told once"
    assert {pid_of(owner) for _, owner, _ in interrupted} == {killed_pid}
    assert_repeats_are_told(got, interrupted, in_flight)
    with server.client() as api:
        message_id = sorted(in_flight)[0]
        [delivery] = api.get(f"/messages/{message_id}").json()["deliveries"]
        log = api.get(f"/deliveries/{delivery['id']}").json()["attempt_log"]
        assert [a["outcome"] for a in log] == ["interrupted", "delivered"]
    assert "left mid-send by" in server.log()


def test_a_killed_worker_process_gives_back_its_claims_in_seconds(
    make_server: Callable[..., ServerProcess], receiver: Receiver, unique: str
) -> None:
    server = make_server(
        **{**BACKLOG_ENV, **NO_LEASE_HELP, "MSGPUSH_DELIVERY_PROCESS_IDLE_S": "60"}
    )
    path = f"/kill-worker/{unique}"
    ids = burst_until_two_workers(server, receiver, unique, path, 400)
    assert server.proc is not None
    victim = children(server.proc.pid)[0]
    sent_before = set(arrivals(receiver, path))
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()

    got = wait_all_delivered(server, receiver, path, ids, timeout=45)
    interrupted = [row for row in interrupted_attempts(server) if pid_of(row[1]) == victim]
    assert interrupted, "the worker was killed mid-send: some of its sends were cut short"
    released_after = max(at for _, _, at in interrupted) / 1000 - killed_at
    assert released_after <= 5, f"its claims came back {released_after:.1f} s after the kill"
    # what the dead worker was sending is repeated only if it had reached the receiver
    assert_repeats_are_told(got, interrupted, sent_before | {m for m, _, _ in interrupted})


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two serve processes, each with its own data directory (as on two hosts), sharing one
    PostgreSQL database and the secret key."""
    require_postgres()
    url = create_pg_database()
    env = {**ONE_PROCESS, "MSGPUSH_SECRET_KEY": SECRET_KEY}
    nodes = (
        ServerProcess(tmp_path / "node-a", database_url=url, extra_env=dict(env)),
        ServerProcess(tmp_path / "node-b", database_url=url, extra_env=dict(env)),
    )
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()
        drop_pg_database(url)


@pytest.mark.postgres
def test_one_of_two_postgresql_nodes_killed_mid_burst_the_other_resends_its_claims(
    two_nodes: tuple[ServerProcess, ServerProcess], receiver: Receiver, unique: str
) -> None:
    survivor, victim = two_nodes
    path = f"/kill-node/{unique}"
    count = 1000
    # 1 s a send: with 128 send slots a node has ~128 sends in flight all the time
    receiver.script(path, *[Reply(200, delay_s=1.0) for _ in range(2 * count)])
    with survivor.client() as api:
        make_webhook(api, unique, receiver.url(path))
        ids = send_burst(api, unique, count, unique)
    wait_count(receiver, path, 300, timeout=30)  # both nodes are sending
    assert victim.proc is not None
    victim_pid = victim.proc.pid
    victim.kill()
    killed_at = time.time()
    in_flight = set(arrivals(receiver, path))

    got = wait_all_delivered(survivor, receiver, path, ids, timeout=45)

    interrupted = interrupted_attempts(survivor)
    assert {pid_of(owner) for _, owner, _ in interrupted} == {victim_pid}
    assert len(interrupted) >= 50, f"only {len(interrupted)} sends were cut short by the kill"
    resent = {m for m, _, _ in interrupted}
    last = max(max(got[m]) for m in resent)
    assert last - killed_at <= 15, f"the dead node's claims came {last - killed_at:.1f} s late"
    # the survivor went on working meanwhile: first sends arrived before the dead node's
    # claims were released
    released_at = min(at for _, _, at in interrupted) / 1000
    assert all(max(got[m]) >= released_at - 0.1 for m in resent), "each was sent again"
    fresh = [m for m, times in got.items() if killed_at + 0.5 < min(times) < released_at]
    assert len(fresh) >= 50, "the survivor stalled while the dead node's claims were held"
    assert_repeats_are_told(got, interrupted, in_flight)
    counts = Counter(len(times) for times in got.values())
    assert counts[2] <= len(interrupted)
    assert httpx.get(f"{survivor.url}/healthz", timeout=5).status_code == 200
