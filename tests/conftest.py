"""Shared fixtures: a msgpush server per database backend, a webhook receiver, API clients."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.fakes.receiver import Receiver
from tests.server import ServerProcess, create_pg_database, drop_pg_database, pg_available

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_postgres() -> None:
    reason = pg_available()
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    instance = Receiver().start()
    yield instance
    instance.stop()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        require_postgres()
    return str(request.param)


@pytest.fixture(scope="session")
def server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    database_url = create_pg_database() if backend == "postgresql" else None
    process = ServerProcess(
        tmp_path_factory.mktemp(f"msgpush-{backend}"), database_url=database_url
    )
    process.start()
    yield process
    process.stop()
    if database_url:
        drop_pg_database(database_url)


@pytest.fixture
def make_server(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ServerProcess]]:
    """Start an extra server on the current backend with its own settings (env overrides)."""
    started: list[tuple[ServerProcess, str | None]] = []

    def start(**env: str) -> ServerProcess:
        database_url = create_pg_database() if backend == "postgresql" else None
        process = ServerProcess(
            tmp_path_factory.mktemp(f"msgpush-{backend}-own"),
            database_url=database_url,
            extra_env=env,
        )
        started.append((process, database_url))
        return process.start()

    yield start
    for process, database_url in started:
        process.stop()
        if database_url:
            drop_pg_database(database_url)


@pytest.fixture
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture
def sender_token(api: httpx.Client) -> str:
    response = api.post("/tokens", json={"name": "sender for tests", "role": "sender"})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]
