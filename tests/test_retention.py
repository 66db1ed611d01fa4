"""Retention removes what is finished and old, keeps what is not; backup and downgrade."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from msgpush.ids import id_floor, new_id, now_ms
from msgpush.settings import Settings, parse_duration_s
from msgpush.storage.db import Database
from msgpush.storage.retention import Retention
from msgpush.storage.schema import deliveries, delivery_attempts, events, messages
from tests.fakes.receiver import Receiver, Reply
from tests.helpers import make_webhook, send, wait_delivery
from tests.server import ServerProcess


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 2_592_000), ("12h", 43_200), ("90m", 5_400), ("15s", 15), ("2w", 1_209_600)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds
    assert Settings(retention=text).retention_s() == seconds


def test_retention_can_be_off_and_refuses_nonsense() -> None:
    assert Settings(retention="off").retention_s() is None
    with pytest.raises(ValueError, match="30d, 12h"):
        Settings(retention="a month")


def test_id_floor_sorts_below_every_later_id() -> None:
    at = now_ms()
    time.sleep(0.002)
    assert all(new_id("msg") > id_floor("msg", at) for _ in range(100))
    assert id_floor("msg", at - 1) < id_floor("msg", at)


def _insert(conn_rows: list[tuple[str, str]], *, age_ms: int) -> list[dict[str, object]]:
    """Rows of messages (one delivery and one attempt each) created ``age_ms`` ago."""
    created = now_ms() - age_ms
    rows = []
    for status, updated in conn_rows:
        message_id = id_floor("msg", created)[:-6] + new_id("x")[-6:]
        rows.append(
            {
                "message": {"id": message_id, "created_at": created, "payload": "{}"},
                "delivery": {
                    "id": new_id("dlv"),
                    "message_id": message_id,
                    "channel_id": "ch_x",
                    "channel_name": "x",
                    "channel_type": "webhook",
                    "status": status,
                    "attempts": 1,
                    "budget_attempts": 0,
                    "budget_since": created,
                    "next_attempt_at": created,
                    "created_at": created,
                    "updated_at": created if updated == "old" else now_ms(),
                },
            }
        )
    return rows


async def _sweep_in_process(tmp_path: Path) -> tuple[list[str], list[str], int]:
    db = Database(Settings(data_dir=tmp_path))
    await db.start()
    try:
        rows = _insert(
            [
                ("retrying", "old"),  # not finished: stays
                ("delivered", "old"),
                ("sending", "old"),  # not finished: stays
                ("failed", "old"),
                ("delivered", "new"),  # resent lately: stays
                ("cancelled", "old"),
                ("delivered", "old"),
            ],
            age_ms=60_000,
        )
        recent = _insert([("delivered", "new")], age_ms=0)
        async with db.engine.begin() as conn:
            for row in rows + recent:
                await conn.execute(insert(messages).values(row["message"]))
                await conn.execute(insert(deliveries).values(row["delivery"]))
                await conn.execute(
                    insert(delivery_attempts).values(
                        delivery_id=row["delivery"]["id"],  # type: ignore[index]
                        number=1,
                        started_at=0,
                        duration_ms=1,
                        outcome="delivered",
                    )
                )
            await conn.execute(
                insert(events).values(
                    id=id_floor("evt", now_ms() - 60_000)[:-4] + "ZZZZ",
                    type="task.succeeded",
                    source="t",
                    level="success",
                    occurred_at=0,
                    created_at=0,
                    body="{}",
                )
            )
        # a batch of two makes the sweep step over kept rows across batches
        swept = await Retention(db, 30).sweep(batch=2)
        async with db.engine.connect() as conn:
            left = [r.status for r in await conn.execute(select(deliveries.c.status))]
            kept_ids = [r.id for r in await conn.execute(select(messages.c.id))]
            attempts = (
                await conn.execute(select(func.count()).select_from(delivery_attempts))
            ).scalar_one()
            left_events = [r.id for r in await conn.execute(select(events.c.id))]
        assert swept.messages == 4 and swept.deliveries == 4 and swept.attempts == 4
        assert swept.events == 1 and left_events == []
        assert attempts == 4
        return sorted(left), kept_ids, swept.messages
    finally:
        await db.close()


def test_sweep_removes_only_finished_rows_older_than_the_cutoff(tmp_path: Path) -> None:
    left, kept, removed = asyncio.run(_sweep_in_process(tmp_path))
    assert left == ["delivered", "delivered", "retrying", "sending"]
    assert len(kept) == 4 and removed == 4


def test_a_new_sqlite_file_hands_freed_pages_back(tmp_path: Path) -> None:
    async def make() -> None:
        db = Database(Settings(data_dir=tmp_path))
        await db.start()
        await db.close()

    asyncio.run(make())
    with sqlite3.connect(tmp_path / "msgpush.db") as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental


def test_serve_removes_old_finished_messages_and_events_and_keeps_the_rest(
    make_server: Callable[..., ServerProcess], receiver: Receiver, unique: str
) -> None:
    server = make_server(MSGPUSH_RETENTION="2s")
    receiver.script(f"/wait/{unique}", Reply(503, b"later", headers={"Retry-After": "300"}))
    with server.client() as api:
        make_webhook(api, f"ok-{unique}", receiver.url(f"/ok/{unique}"))
        make_webhook(api, f"wait-{unique}", receiver.url(f"/wait/{unique}"))
        done = send(api, [f"ok-{unique}"])
        pending = send(api, [f"wait-{unique}"])
        event = api.post("/events", json={"type": "task.succeeded", "source": "retention-test"})
        assert event.status_code == 202, event.text
        event_id = event.json()["id"]
        assert wait_delivery(api, done["deliveries"][0]["id"])["status"] == "delivered"
        wait_delivery(api, pending["deliveries"][0]["id"], ("retrying",))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            gone = api.get(f"/messages/{done['id']}").status_code == 404
            if gone and api.get(f"/events/{event_id}").status_code == 404:
                break
            time.sleep(0.2)
        else:
            pytest.fail("retention did not remove the delivered message and the event in 15 s")
        assert api.get(f"/deliveries/{done['deliveries'][0]['id']}").status_code == 404
        kept = api.get(f"/messages/{pending['id']}")
        assert kept.status_code == 200
        assert kept.json()["deliveries"][0]["status"] == "retrying"


def _cli(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    environ = {k: v for k, v in os.environ.items() if not k.startswith("MSGPUSH_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "msgpush", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )


def test_backup_copies_a_running_database(tmp_path: Path, receiver: Receiver, unique: str) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        with server.client() as api:
            make_webhook(api, f"b-{unique}", receiver.url(f"/b/{unique}"))
            send(api, [f"b-{unique}"])
        target = tmp_path / "copy.db"
        result = _cli("db", "backup", str(target), data_dir=server.data_dir)
        assert result.returncode == 0, result.stderr
        assert "backed up" in result.stderr
        assert target.stat().st_mode & 0o777 == 0o600
        with sqlite3.connect(target) as copy:
            assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            names = [r[0] for r in copy.execute("SELECT name FROM channels")]
        assert f"b-{unique}" in names
        again = _cli("db", "backup", str(target), data_dir=server.data_dir)
        assert again.returncode == 2 and "exists" in again.stderr
    finally:
        server.stop()


def test_backup_on_postgresql_says_how(tmp_path: Path) -> None:
    result = _cli(
        "db",
        "backup",
        str(tmp_path / "x"),
        data_dir=tmp_path,
        MSGPUSH_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
    )
    assert result.returncode == 2
    assert "pg_dump" in result.stderr and "Traceback" not in result.stderr


def test_downgrade_and_upgrade_again(tmp_path: Path) -> None:
    assert _cli("db", "upgrade", data_dir=tmp_path).returncode == 0
    down = _cli("db", "downgrade", "0003", data_dir=tmp_path)
    assert down.returncode == 0, down.stderr
    with sqlite3.connect(tmp_path / "msgpush.db") as conn:
        indexes = [r[1] for r in conn.execute("PRAGMA index_list(messages)")]
        assert "ix_messages_event" not in indexes
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0003"
    assert _cli("db", "upgrade", data_dir=tmp_path).returncode == 0
    bad = _cli("db", "downgrade", "nonsense", data_dir=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    result = _cli("db", "upgrade", data_dir=tmp_path, MSGPUSH_RETENTION="a month")
    assert result.returncode == 2
    assert result.stderr.startswith("error: MSGPUSH_RETENTION:")
    assert "Traceback" not in result.stderr
