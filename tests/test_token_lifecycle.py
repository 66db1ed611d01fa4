"""API tokens across processes: a token deleted through one process is refused by every other
within a second; ``last_used_at`` is recorded without a write per request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server import ServerProcess, create_pg_database, drop_pg_database

SECRET_KEY = "VGhpcy1pcy1hLXRlc3Qta2V5LW9mLTMyLWJ5dGVzISE="


@pytest.fixture
def two_servers(backend: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two ``serve`` processes on one database: PostgreSQL, or SQLite in a shared data dir."""
    database_url = create_pg_database() if backend == "postgresql" else None
    first = ServerProcess(tmp_path / "shared", database_url=database_url)
    second = ServerProcess(
        tmp_path / ("shared" if database_url is None else "other"),
        database_url=database_url,
        admin_token=first.admin_token,
    )
    started: list[ServerProcess] = []
    try:
        for process in (first, second):
            process.extra_env["MSGPUSH_SECRET_KEY"] = SECRET_KEY
            started.append(process.start())
        yield first, second
    finally:
        for process in started:
            process.stop()
        if database_url:
            drop_pg_database(database_url)


def test_a_token_deleted_in_one_process_is_refused_by_another_within_a_second(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = two_servers
    with first.client() as admin_first:
        created = admin_first.post("/tokens", json={"name": "short-lived", "role": "sender"})
        assert created.status_code == 201, created.text
        token = created.json()
        with second.client(token["token"]) as as_sender:
            # the second process has the token in its cache, fresh
            for _ in range(5):
                assert as_sender.get("/deliveries").status_code == 200
            assert admin_first.delete(f"/tokens/{token['id']}").status_code == 204
            deleted_at = time.monotonic()
            while True:
                status = as_sender.get("/deliveries").status_code
                waited = time.monotonic() - deleted_at
                if status == 401:
                    break
                assert status == 200
                assert waited < 1.0, "the other process still accepts the deleted token"
                time.sleep(0.02)
            assert waited < 1.0
            refused = as_sender.post("/messages", json={"channels": ["x"], "title": "t"})
            assert refused.status_code == 401


def _last_used(api: httpx.Client, token_id: str) -> str | None:
    tokens = api.get("/tokens").json()["items"]
    value: str | None = next(t["last_used_at"] for t in tokens if t["id"] == token_id)
    return value


def test_last_used_at_is_recorded_once_a_minute_at_most(
    api: httpx.Client, server: ServerProcess
) -> None:
    created = api.post("/tokens", json={"name": "used", "role": "sender"}).json()
    assert _last_used(api, created["id"]) is None
    with server.client(created["token"]) as as_sender:
        assert as_sender.get("/deliveries").status_code == 200
        deadline = time.monotonic() + 5
        first_use = _last_used(api, created["id"])
        while first_use is None and time.monotonic() < deadline:
            time.sleep(0.05)
            first_use = _last_used(api, created["id"])
        assert first_use is not None, "last_used_at was not written"
        for _ in range(5):
            time.sleep(0.1)  # past the token cache: each of these authenticates afresh
            assert as_sender.get("/deliveries").status_code == 200
        time.sleep(0.5)
    assert _last_used(api, created["id"]) == first_use, "written more than once a minute"
