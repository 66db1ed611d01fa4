"""Pure pieces: backoff schedule, rate-limit merging, redaction, ids, masking."""

from __future__ import annotations

import statistics

from msgpush.channels.base import RateLimit
from msgpush.delivery.engine import RetryPolicy
from msgpush.ids import iso, new_id, parse_time
from msgpush.redact import redact_headers, redact_url, scrub
from msgpush.secretbox import MASK, SecretBox, is_masked, mask


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(base_s=2, max_delay_s=60, max_attempts=10, max_age_s=3600)
    for attempt in range(1, 9):
        ceiling = min(60, 2 * 2 ** (attempt - 1))
        samples = [policy.delay_s(attempt) for _ in range(300)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples)
        assert statistics.pstdev(samples) > 0  # jittered, so retries of a burst spread out
    assert policy.delay_s(3, retry_after_s=7) == 7
    assert policy.delay_s(3, retry_after_s=600) == 600  # a vendor's throttle outlasts the cap
    assert policy.delay_s(3, retry_after_s=10**9) == 3600  # but never past the age limit


def test_rate_limit_lowered_never_raised() -> None:
    vendor = RateLimit(per_second=5, per_minute=100)
    assert vendor.lowered_by(RateLimit(per_minute=10)) == RateLimit(per_second=5, per_minute=10)
    assert vendor.lowered_by(RateLimit(per_hour=50)).windows() == [
        (1_000, 5),
        (60_000, 100),
        (3_600_000, 50),
    ]
    assert vendor.lowered_by(None) is vendor


def test_redaction() -> None:
    url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7xxx&debug=1"
    assert redact_url(url) == f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={MASK}&debug=1"
    assert MASK in redact_url("https://user:pw123@host/x")
    assert redact_headers(
        {"Authorization": "Bearer x", "X-Other": "has sekrit1 inside"}, ["sekrit1"]
    ) == {
        "Authorization": MASK,
        "X-Other": f"has {MASK} inside",
    }
    assert scrub("a abcd b abcdef", ["abcdef", "abcd"]) == f"a {MASK} b {MASK}"


def test_ids_sort_by_time_and_times_round_trip() -> None:
    first, second = new_id("msg"), new_id("msg")
    assert first.startswith("msg_") and len(first) == 30
    assert first[:14] <= second[:14]
    assert parse_time(iso(1_700_000_000_123) or "") == 1_700_000_000_123
    assert parse_time("1700000000") == 1_700_000_000_000


def test_secretbox_and_masks() -> None:
    from cryptography.fernet import Fernet

    box = SecretBox(Fernet.generate_key())
    sealed = box.seal({"secret": "s3cr3t-value-123456"})
    assert "s3cr3t" not in sealed
    assert box.open(sealed) == {"secret": "s3cr3t-value-123456"}
    assert mask("s3cr3t-value-123456") == MASK + "3456"
    assert mask("short") == MASK
    assert mask({"Authorization": "x"}) == {"Authorization": MASK}
    assert is_masked(MASK + "3456") and is_masked({"a": MASK}) and not is_masked("plain")


async def test_resolve_survives_a_cache_that_expires_while_the_connection_is_returned(
    tmp_path: object, monkeypatch: object
) -> None:
    """Under load, giving the read connection back once took longer than the cache's TTL, and a
    message to an existing channel was refused as unknown; resolve must use the rows it read."""
    import pytest

    from msgpush import channel_service
    from msgpush.channel_service import ChannelService
    from msgpush.settings import Settings
    from msgpush.storage.db import Database

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    db = Database(Settings(data_dir=tmp_path))  # type: ignore[arg-type]
    await db.start()
    try:
        from cryptography.fernet import Fernet

        from msgpush.egress import EgressPolicy

        local = EgressPolicy.from_settings("127.0.0.0/8", "")  # the test's target is loopback
        service = ChannelService(db, SecretBox(Fernet.generate_key()), local)
        await service.create(
            {"name": "ops", "type": "webhook", "config": {"url": "http://127.0.0.1:9/"}}
        )
        monkeypatch.setattr(channel_service, "CACHE_TTL_S", -1.0)  # every entry already stale
        [target] = await service.resolve(["ops"])
        assert target.channel_name == "ops"
    finally:
        await db.close()
