"""Rate limits are kept, not discovered: a burst waits for its window, nothing is dropped."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.fakes.receiver import Receiver, Reply
from tests.helpers import make_webhook, wait_delivery
from tests.server import ServerProcess, create_pg_database, drop_pg_database


def test_burst_waits_for_the_window_and_all_are_delivered(
    api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    path = f"/limited/{unique}"
    name = f"limited-{unique}"
    make_webhook(api, name, receiver.url(path))
    assert api.patch(f"/channels/{name}", json={"rate_limit": {"per_second": 4}}).status_code == 200
    messages = [{"channels": [name], "title": f"m{i}"} for i in range(10)]
    answer = api.post("/messages/batch", json={"messages": messages})
    assert answer.status_code == 202, answer.text
    ids = [item["deliveries"][0]["id"] for item in answer.json()["items"]]

    arrivals = sorted(r.at for r in receiver.wait_for(path, 10, timeout=20))
    for index in range(len(arrivals) - 4):
        # any five consecutive sends span more than the one-second window
        assert arrivals[index + 4] - arrivals[index] >= 1.0, arrivals
    for delivery_id in ids:
        final = wait_delivery(api, delivery_id)
        assert final["status"] == "delivered"
        assert final["attempts"] == 1  # waiting for a window is not a failed attempt


def test_rate_limit_is_validated(api: httpx.Client, receiver: Receiver, unique: str) -> None:
    name = f"rl-{unique}"
    make_webhook(api, name, receiver.url("/rl"))
    bad = api.patch(f"/channels/{name}", json={"rate_limit": {"per_minute": 0}})
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "rate_limit.per_minute"
    unknown = api.patch(f"/channels/{name}", json={"rate_limit": {"per_day": 5}})
    assert unknown.status_code == 422
    assert unknown.json()["error"]["field"] == "rate_limit.per_day"


def _most_in_any_window(arrivals: list[float], window_s: float) -> int:
    arrivals = sorted(arrivals)
    most = 0
    start = 0
    for end, at in enumerate(arrivals):
        while at - arrivals[start] >= window_s:
            start += 1
        most = max(most, end - start + 1)
    return most


@pytest.mark.slow
def test_two_processes_sending_to_one_channel_keep_its_per_second_limit_exactly(
    backend: str, receiver: Receiver, tmp_path: Path, unique: str
) -> None:
    """Each send books its time in the shared log: the receiver, counting arrivals, never sees
    more than the limit in any second, whichever process sent."""
    database_url = create_pg_database() if backend == "postgresql" else None
    key = {
        "MSGPUSH_SECRET_KEY": "VGhpcy1pcy1hLXRlc3Qta2V5LW9mLTMyLWJ5dGVzISE=",
        "MSGPUSH_WORKERS": "3",  # few send slots each, so that both processes take a share
    }
    first = ServerProcess(tmp_path / "a", database_url=database_url, extra_env=dict(key))
    # on SQLite both processes share the one file in the first one's data directory
    second = ServerProcess(
        tmp_path / "a" if database_url is None else tmp_path / "b",
        database_url=database_url,
        extra_env=dict(key),
    )
    first.start()
    second.start()
    try:
        path = f"/exact/{unique}"
        receiver.script(path, *[Reply(200, delay_s=0.02) for _ in range(60)])
        name = f"exact-{unique}"
        with first.client() as api:
            make_webhook(api, name, receiver.url(path))
            limited = api.patch(f"/channels/{name}", json={"rate_limit": {"per_second": 5}})
            assert limited.status_code == 200
        batch = {"messages": [{"channels": [name], "title": f"m{i}"} for i in range(15)]}
        with first.client() as api_a, second.client(first.admin_token) as api_b:
            # both processes accept (and so start sending) at the same moment
            assert api_a.post("/messages/batch", json=batch).status_code == 202
            assert api_b.post("/messages/batch", json=batch).status_code == 202
        arrivals = [r.at for r in receiver.wait_for(path, 30, timeout=40)]
        assert _most_in_any_window(arrivals, 1.0) <= 5, sorted(a - min(arrivals) for a in arrivals)
        with first.client() as api:
            workers = {
                api.get(f"/deliveries/{d['id']}").json()["attempt_log"][0]["worker"]
                for d in api.get("/deliveries", params={"channel": name, "limit": 30}).json()[
                    "items"
                ]
            }
        assert len(workers) == 2, "both processes must have sent some of them"
    finally:
        second.stop()
        first.stop()
        if database_url:
            drop_pg_database(database_url)


async def _book(tmp_path: Path, count: int) -> list[int]:
    from sqlalchemy import select

    from msgpush.channels.base import RateLimit
    from msgpush.delivery.limits import RateLimiter
    from msgpush.settings import Settings
    from msgpush.storage.db import Database
    from msgpush.storage.schema import rate_events

    db = Database(Settings(data_dir=tmp_path))
    await db.start()
    try:
        # two limiters on one log, as two processes would be
        limiters = [RateLimiter(db), RateLimiter(db)]
        limit = RateLimit(per_second=5, per_minute=12)
        waits = []
        for index in range(count):
            slot = await limiters[index % 2].acquire("ch_x", limit, hold_ms=120_000)
            assert slot.reserved
            waits.append(slot.wait_ms)
        assert waits[:5] == [0] * 5 and waits[5] > 0  # the sixth waits for the first second
        refused = await limiters[0].acquire("ch_x", limit, hold_ms=1_000)
        assert not refused.reserved and refused.wait_ms > 1_000  # not booked: ask again then
        async with db.engine.connect() as conn:
            log = await conn.execute(select(rate_events.c.at_ms).order_by(rate_events.c.id))
            return [at for (at,) in log]
    finally:
        await db.close()


def test_booked_send_times_keep_every_window_across_limiters(tmp_path: Path) -> None:
    import asyncio

    booked = asyncio.run(_book(tmp_path, 15))
    assert len(booked) == 15 and booked == sorted(booked)  # booked in time order
    seconds = [at / 1000 for at in booked]
    # the log pads each window (1 s by 100 ms, 60 s by 1.2 s) against arrival jitter
    assert _most_in_any_window(seconds, 1.1) <= 5
    assert _most_in_any_window(seconds, 61.2) <= 12
    assert booked[12] - booked[0] >= 61_200  # the 13th waits for the minute window
