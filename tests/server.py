"""Run ``msgpush serve`` as a real subprocess (so a test can SIGKILL it) on SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx

T = TypeVar("T")

PG_ADMIN_URL = os.environ.get("MSGPUSH_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

# Every test talks to fakes on loopback, which the egress policy refuses by default; a test of
# the policy itself overrides this through extra_env.
LOCAL_EGRESS = {"MSGPUSH_EGRESS_ALLOW": "127.0.0.0/8"}

FAST_ENGINE = {
    "MSGPUSH_RETRY_BASE_S": "0.2",
    "MSGPUSH_RETRY_MAX_DELAY_S": "2",
    "MSGPUSH_POLL_S": "0.2",
    "MSGPUSH_LEASE_S": "3",
    "MSGPUSH_MAX_ATTEMPTS": "4",
}


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even where an event loop is running
    (pytest-asyncio may have one going in this thread): a fresh thread has none."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pg_available() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""

    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
        await conn.close()

    try:
        run_async(probe())
    except Exception as exc:
        return f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({type(exc).__name__})"
    return None


def create_pg_database() -> str:
    name = f"msgpush_t_{secrets.token_hex(4)}"

    async def create() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    run_async(create())
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{name}"


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]

    async def drop() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    run_async(drop())


class ServerProcess:
    def __init__(
        self,
        data_dir: Path,
        *,
        database_url: str | None = None,
        admin_token: str = "mpk_admin_" + secrets.token_hex(8),
        extra_env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.admin_token = admin_token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / f"server-{self.port}.log"
        self.extra_env = extra_env or {}
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSGPUSH_")}
        env.update(FAST_ENGINE)
        env.update(LOCAL_EGRESS)
        env["MSGPUSH_DATA_DIR"] = str(self.data_dir)
        env["MSGPUSH_ADMIN_TOKEN"] = self.admin_token
        if self.database_url:
            env["MSGPUSH_DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        return env

    def start(self) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "msgpush", "serve", "--port", str(self.port), *self.args],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"msgpush exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"msgpush did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {token or self.admin_token}"},
            timeout=30,
        )
