"""Several processes share one PostgreSQL queue: every message sent exactly once, none left."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_postgres
from tests.fakes.receiver import Receiver, Reply
from tests.server import ServerProcess, create_pg_database, drop_pg_database

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_url() -> Iterator[str]:
    require_postgres()
    url = create_pg_database()
    yield url
    drop_pg_database(url)


def test_api_only_server_and_two_workers_share_the_work(
    pg_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    api_server = ServerProcess(tmp_path / "api", database_url=pg_url, args=("--no-worker",))
    api_server.extra_env["MSGPUSH_SECRET_KEY"] = "VGhpcy1pcy1hLXRlc3Qta2V5LW9mLTMyLWJ5dGVzISE="
    api_server.start()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        path = f"/shared/{api_server.port}"
        receiver.script(path, *[Reply(200, delay_s=0.01) for _ in range(300)])
        with api_server.client() as api:
            created = api.post(
                "/channels",
                json={"name": "shared", "type": "webhook", "config": {"url": receiver.url(path)}},
            )
            assert created.status_code == 201
            messages = [{"channels": ["shared"], "title": f"n{i}"} for i in range(300)]
            assert api.post("/messages/batch", json={"messages": messages}).status_code == 202
            time.sleep(0.5)
            assert not receiver.at(path), "an API-only server must not deliver"

            env = api_server.env()
            for index in range(2):
                log = (tmp_path / f"worker{index}.log").open("wb")
                workers.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "msgpush", "worker"],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            arrived = receiver.wait_for(path, 300, timeout=60)
            time.sleep(1.0)
            titles = Counter(r.json()["title"] for r in receiver.at(path))
            assert len(titles) == 300 and set(titles.values()) == {1}, "each message exactly once"
            listed = api.get(
                "/deliveries", params={"channel": "shared", "status": "delivered", "limit": 500}
            )
            assert len(listed.json()["items"]) == 300
            assert len(arrived) == 300
            workers_used = {
                api.get(f"/deliveries/{d['id']}").json()["attempt_log"][0]["worker"]
                for d in listed.json()["items"][::10]
            }
            assert len(workers_used) == 2, workers_used
    finally:
        for proc in workers:
            proc.terminate()
            proc.wait(15)
        api_server.stop()
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert all("worker running" in log for log in logs), logs
