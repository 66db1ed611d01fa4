"""SIGKILL in the middle of a burst loses nothing that was accepted."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.receiver import Receiver, Reply
from tests.server import ServerProcess, create_pg_database, drop_pg_database

pytestmark = pytest.mark.slow


@pytest.fixture
def own_server(backend: str, tmp_path) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    database_url = create_pg_database() if backend == "postgresql" else None
    process = ServerProcess(tmp_path / "crash", database_url=database_url)
    yield process
    process.stop()
    if database_url:
        drop_pg_database(database_url)


def test_sigkill_mid_burst_then_restart_delivers_every_accepted_message(
    own_server: ServerProcess, receiver: Receiver
) -> None:
    server = own_server.start()
    path = f"/crash/{server.port}"
    # a slow receiver, so that many deliveries are mid-send when the process dies
    receiver.script(path, *[Reply(200, delay_s=0.05) for _ in range(2000)])
    with server.client() as api:
        assert (
            api.post(
                "/channels",
                json={"name": "crashy", "type": "webhook", "config": {"url": receiver.url(path)}},
            ).status_code
            == 201
        )

    accepted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def burst(worker: int) -> None:
        with httpx.Client(
            base_url=f"{server.url}/api/v1",
            headers={"Authorization": f"Bearer {server.admin_token}"},
            timeout=5,
        ) as client:
            for i in range(200):
                if stop.is_set():
                    return
                try:
                    response = client.post(
                        "/messages", json={"channels": ["crashy"], "title": f"w{worker}-{i}"}
                    )
                except httpx.HTTPError:
                    return  # the server died under this request: not accepted
                if response.status_code == 202:
                    with lock:
                        accepted.append(response.json()["id"])

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while len(accepted) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()
    stop.set()
    for thread in threads:
        thread.join()
    killed_with = len(accepted)
    delivered_before = {r.json()["message_id"] for r in receiver.at(path)}
    assert killed_with >= 150
    assert len(delivered_before) < killed_with, "the kill came too late to test anything"

    server.start()  # same data directory / database
    deadline = time.monotonic() + 60
    missing = set(accepted)
    while missing and time.monotonic() < deadline:
        missing -= {r.json()["message_id"] for r in receiver.at(path)}
        time.sleep(0.2)
    assert not missing, f"{len(missing)} of {killed_with} accepted messages never arrived"

    with server.client() as api:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pending = api.get(
                "/deliveries", params={"channel": "crashy", "status": "queued,sending,retrying"}
            )
            if not pending.json()["items"]:
                break
            time.sleep(0.2)
        assert not pending.json()["items"]
        for message_id in accepted[:20]:
            statuses = {
                d["status"] for d in api.get(f"/messages/{message_id}").json()["deliveries"]
            }
            assert statuses == {"delivered"}
        # Sends repeated after the crash are told in the history: the attempt interrupted by the
        # kill is recorded as such, so "sent twice" never hides behind one attempt shown.
        arrivals: dict[str, int] = {}
        for received in receiver.at(path):
            message_id = received.json()["message_id"]
            arrivals[message_id] = arrivals.get(message_id, 0) + 1
        repeated = [m for m, count in arrivals.items() if count > 1]
        for message_id in repeated[:10]:
            [delivery] = api.get(f"/messages/{message_id}").json()["deliveries"]
            log = api.get(f"/deliveries/{delivery['id']}").json()["attempt_log"]
            outcomes = [a["outcome"] for a in log]
            assert outcomes[0] == "interrupted" and outcomes[-1] == "delivered", outcomes
            assert "may have received the message" in log[0]["diagnosis"]
            assert len(log) == arrivals[message_id]
