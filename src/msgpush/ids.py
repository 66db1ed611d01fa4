"""Time-sortable identifiers (``msg_…``, ``dlv_…``, ``ch_…``) and the millisecond clock."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def now_ms() -> int:
    """Wall-clock time in integer milliseconds since the epoch (how every row stores time)."""
    return time.time_ns() // 1_000_000


def new_id(prefix: str) -> str:
    """A ULID-shaped id: 48 bits of milliseconds then 80 random bits, Crockford base32.

    Ids sort by creation time, which keeps the history pages and the delivery queue's
    index in insertion order.
    """
    return _encode(prefix, (now_ms() << 80) | int.from_bytes(os.urandom(10), "big"))


def _encode(prefix: str, value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"


def iso(ms: int | None) -> str | None:
    """Milliseconds to an ISO 8601 UTC string, as the API shows times."""
    if ms is None:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def parse_time(value: str) -> int:
    """ISO 8601 (or epoch seconds) to milliseconds; raises ValueError with the accepted forms."""
    text = value.strip()
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"{value!r} is not a time: use ISO 8601 like 2026-01-31T08:00:00Z or epoch seconds"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def id_floor(prefix: str, ms: int) -> str:
    """The smallest id ``new_id(prefix)`` can make at millisecond ``ms``: every id made before
    ``ms`` sorts below it, so a range on the primary key selects rows by creation time."""
    return _encode(prefix, max(ms, 0) << 80)
