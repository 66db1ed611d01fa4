"""The delivery queue's hot path: enqueue, claim, record. A few lean statements each.

- enqueue: one multi-row insert of messages and one of deliveries per commit, shared by every
  request waiting on that commit; idempotency keys are checked in the same transaction.
- claim: one ``UPDATE … WHERE id IN (SELECT … LIMIT n [FOR UPDATE SKIP LOCKED]) RETURNING``.
- record: one multi-row update of deliveries and one multi-row insert of attempts per commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, literal_column, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from msgpush.ids import new_id, now_ms
from msgpush.storage.db import Database, DriverInsert, DriverStatement
from msgpush.storage.schema import deliveries, delivery_attempts, events, messages

INTERRUPTED = (
    "the process sending this stopped before it could record the answer (it was killed or lost "
    "the database); the vendor may have received the message once already; sending again"
)


@dataclass(frozen=True)
class Target:
    channel_id: str
    channel_name: str
    channel_type: str


@dataclass
class NewMessage:
    payload: dict[str, Any]
    targets: list[Target]
    idempotency_key: str | None = None
    event_id: str | None = None
    id: str = field(default_factory=lambda: new_id("msg"))
    due_at: int | None = None  # later than now: held until then (an alert storm's digest)


@dataclass
class Accepted:
    """The 202 answer for one message; ``replayed`` when an idempotency key matched."""

    message_id: str
    deliveries: list[dict[str, str]]
    replayed: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"id": self.message_id, "deliveries": self.deliveries}


@dataclass
class Claimed:
    id: str
    message_id: str
    channel_id: str
    channel_name: str
    attempts: int
    created_at: int
    budget_attempts: int
    budget_since: int


@dataclass
class AttemptRecord:
    delivery_id: str
    number: int
    started_at: int
    duration_ms: int
    outcome: str
    status: str  # the delivery's new status
    next_attempt_at: int | None = None
    status_code: int | None = None
    vendor_code: str | None = None
    vendor_message: str | None = None
    diagnosis: str | None = None
    warning: str | None = None
    request: str | None = None
    response: str | None = None
    lease_owner: str | None = None


class Queue:
    def __init__(self, db: Database, idempotency_ttl_ms: int) -> None:
        self._db = db
        self._ttl_ms = idempotency_ttl_ms

    # -- enqueue -----------------------------------------------------------------------------

    async def enqueue(self, batch: list[NewMessage]) -> list[Accepted]:
        """Store messages and their deliveries; returns once committed (durable)."""
        result: list[Accepted] = await self._db.submit(self._enqueue_many, batch)
        return result

    async def enqueue_within(
        self, conn: AsyncConnection, batch: list[NewMessage]
    ) -> list[Accepted]:
        """Store messages inside a caller's write transaction (an event stores its messages in
        the same commit as itself)."""
        [accepted] = await self._enqueue_many(conn, [batch])
        return accepted

    async def _enqueue_many(
        self, conn: AsyncConnection, batches: list[list[NewMessage]]
    ) -> list[list[Accepted]]:
        now = now_ms()
        keys = {m.idempotency_key for batch in batches for m in batch if m.idempotency_key}
        known: dict[str, str] = {}
        if keys:
            rows = await conn.execute(
                select(messages.c.id, messages.c.idempotency_key, messages.c.created_at).where(
                    messages.c.idempotency_key.in_(keys)
                )
            )
            expired = []
            for message_id, key, created_at in rows:
                if created_at < now - self._ttl_ms:
                    expired.append(message_id)
                else:
                    known[key] = message_id
            if expired:  # a key is only remembered for the TTL; free it for reuse
                await conn.execute(
                    update(messages).where(messages.c.id.in_(expired)).values(idempotency_key=None)
                )
        message_rows: list[dict[str, Any]] = []
        delivery_rows: list[dict[str, Any]] = []
        answers: list[list[Accepted | str]] = []
        for batch in batches:
            answer: list[Accepted | str] = []
            for message in batch:
                key = message.idempotency_key
                if key and key in known:
                    answer.append(known[key])  # filled in below, after the inserts
                    continue
                if key:
                    known[key] = message.id
                message_rows.append(
                    {
                        "id": message.id,
                        "created_at": now,
                        "idempotency_key": key,
                        "payload": orjson.dumps(message.payload).decode(),
                        "event_id": message.event_id,
                    }
                )
                listed = []
                for target in message.targets:
                    delivery_id = new_id("dlv")
                    delivery_rows.append(
                        {
                            "id": delivery_id,
                            "message_id": message.id,
                            "channel_id": target.channel_id,
                            "channel_name": target.channel_name,
                            "channel_type": target.channel_type,
                            "status": "queued",
                            "attempts": 0,
                            "budget_attempts": 0,
                            "budget_since": now,
                            "next_attempt_at": max(now, message.due_at or now),
                            "created_at": now,
                            "updated_at": now,
                        }
                    )
                    listed.append(
                        {"id": delivery_id, "channel": target.channel_name, "status": "queued"}
                    )
                answer.append(Accepted(message.id, listed))
            answers.append(answer)
        if message_rows:
            await _insert_messages.run_many(conn, message_rows)
        if delivery_rows:
            await _insert_deliveries.run_many(conn, delivery_rows)
        replay_ids = {a for answer in answers for a in answer if isinstance(a, str)}
        replays: dict[str, list[dict[str, str]]] = {}
        if replay_ids:
            replay_rows = await conn.execute(
                select(
                    deliveries.c.message_id,
                    deliveries.c.id,
                    deliveries.c.channel_name,
                    deliveries.c.status,
                )
                .where(deliveries.c.message_id.in_(replay_ids))
                .order_by(deliveries.c.id)
            )
            for message_id, delivery_id, channel_name, status in replay_rows:
                replays.setdefault(message_id, []).append(
                    {"id": delivery_id, "channel": channel_name, "status": status}
                )
        return [
            [
                Accepted(a, replays.get(a, []), replayed=True) if isinstance(a, str) else a
                for a in answer
            ]
            for answer in answers
        ]

    # -- claim -------------------------------------------------------------------------------

    async def claim(self, owner: str, limit: int, lease_ms: int) -> list[Claimed]:
        """Lease up to ``limit`` due deliveries to ``owner`` (status becomes ``sending``)."""
        now = now_ms()
        params = {"c_now": now, "c_limit": limit, "c_owner": owner, "c_until": now + lease_ms}

        async def op(conn: AsyncConnection) -> list[Claimed]:
            rows = await _claim.run(conn, params)
            return [Claimed(*row) for row in rows]

        claimed: list[Claimed] = await self._db.write(op, durable=False)
        return claimed

    async def release_expired_leases(self) -> int:
        """Deliveries whose lease ran out (their worker died mid-send, and no heartbeat told it
        sooner: see ``storage/owners.py``) become due again (at-least-once)."""
        now = now_ms()

        async def op(conn: AsyncConnection) -> int:
            return await release_interrupted(conn, deliveries.c.lease_until < now, now)

        released: int = await self._db.write(op, durable=False)
        return released

    async def release(self, delivery_ids: list[str], owner: str) -> None:
        """Give back claims that were not sent (shutdown): due again at once."""
        if not delivery_ids:
            return
        now = now_ms()

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.id.in_(delivery_ids),
                    deliveries.c.lease_owner == owner,
                    deliveries.c.status == "sending",
                )
                .values(status="queued", lease_owner=None, lease_until=None, updated_at=now)
            )

        await self._db.write(op, durable=False)

    async def defer(self, delivery_id: str, owner: str, until_ms: int) -> None:
        """Put a claimed delivery back until ``until_ms`` without counting an attempt."""
        now = now_ms()

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery_id, deliveries.c.lease_owner == owner)
                .values(
                    status="queued",
                    lease_owner=None,
                    lease_until=None,
                    next_attempt_at=until_ms,
                    updated_at=now,
                )
            )

        await self._db.write(op, durable=False)

    async def payloads(self, message_ids: list[str]) -> dict[str, tuple[str, str | None, int]]:
        """message id -> (payload JSON, the JSON of the event it came from or None, created_at)."""
        async with self._db.read_now() as conn:
            rows = await conn.execute(
                select(messages.c.id, messages.c.payload, events.c.body, messages.c.created_at)
                .select_from(messages.outerjoin(events, events.c.id == messages.c.event_id))
                .where(messages.c.id.in_(message_ids))
            )
            return {row[0]: (row[1], row[2], row[3]) for row in rows}

    # -- record ------------------------------------------------------------------------------

    async def record(self, attempt: AttemptRecord) -> None:
        await self._db.submit(_record_many, attempt, durable=False)


_update_delivery = DriverStatement(
    update(deliveries)
    .where(
        and_(
            deliveries.c.id == bindparam("b_id"),
            deliveries.c.status == "sending",
            deliveries.c.lease_owner == bindparam("b_owner"),
        )
    )
    .values(
        status=bindparam("b_status"),
        attempts=bindparam("b_attempts"),
        next_attempt_at=bindparam("b_next"),
        lease_owner=None,
        lease_until=None,
        updated_at=bindparam("b_now"),
        delivered_at=bindparam("b_delivered_at"),
        last_error=bindparam("b_error"),
        warning=bindparam("b_warning"),
    )
)


_DUE_STATUSES: tuple[Any, ...] = (literal_column("'queued'"), literal_column("'retrying'"))
# Due deliveries, oldest first, leased to one worker. On PostgreSQL the rows are locked and
# rows another worker has locked are skipped; SQLite has one writer and ignores the clause.
_claim = DriverStatement(
    update(deliveries)
    .where(
        deliveries.c.id.in_(
            select(deliveries.c.id)
            .where(deliveries.c.status.in_(_DUE_STATUSES))
            .where(deliveries.c.next_attempt_at <= bindparam("c_now"))
            .order_by(deliveries.c.next_attempt_at)
            .limit(bindparam("c_limit"))
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
    )
    .values(
        status="sending",
        lease_owner=bindparam("c_owner"),
        lease_until=bindparam("c_until"),
        updated_at=bindparam("c_now"),
    )
    .returning(
        deliveries.c.id,
        deliveries.c.message_id,
        deliveries.c.channel_id,
        deliveries.c.channel_name,
        deliveries.c.attempts,
        deliveries.c.created_at,
        deliveries.c.budget_attempts,
        deliveries.c.budget_since,
    )
)


async def release_interrupted(conn: AsyncConnection, condition: Any, now: int) -> int:
    """Claims (``sending``) matching ``condition`` whose process stopped become due again.

    Each counts an attempt with outcome ``interrupted``, so the history tells that the
    message may have reached the vendor once already. Returns how many were released."""
    expired = (
        await conn.execute(
            select(deliveries.c.id, deliveries.c.attempts, deliveries.c.lease_owner)
            .where(deliveries.c.status == "sending", condition)
            .with_for_update(skip_locked=True)
        )
    ).all()
    if not expired:
        return 0
    await conn.execute(
        update(deliveries)
        .where(
            deliveries.c.id == bindparam("r_id"),
            deliveries.c.status == "sending",
            deliveries.c.lease_owner == bindparam("r_owner"),
        )
        .values(
            status="retrying",
            attempts=bindparam("r_number"),
            lease_owner=None,
            lease_until=None,
            next_attempt_at=now,
            updated_at=now,
            last_error=INTERRUPTED,
        ),
        [
            {"r_id": row.id, "r_owner": row.lease_owner, "r_number": row.attempts + 1}
            for row in expired
        ],
    )
    await _insert_attempts.run_many(
        conn,
        [
            {
                "delivery_id": row.id,
                "number": row.attempts + 1,
                "started_at": now,
                "duration_ms": 0,
                "outcome": "interrupted",
                "diagnosis": INTERRUPTED,
                "next_attempt_at": now,
                "worker": row.lease_owner,
            }
            for row in expired
        ],
    )
    return len(expired)


_insert_messages = DriverInsert(messages)
_insert_deliveries = DriverInsert(deliveries)
_insert_attempts = DriverInsert(delivery_attempts)


async def _record_many(conn: AsyncConnection, records: list[AttemptRecord]) -> list[None]:
    now = now_ms()
    await _update_delivery.run_many(
        conn,
        [
            {
                "b_id": r.delivery_id,
                "b_owner": r.lease_owner,
                "b_status": r.status,
                "b_attempts": r.number,
                "b_next": r.next_attempt_at if r.next_attempt_at is not None else now,
                "b_now": now,
                "b_delivered_at": now if r.status == "delivered" else None,
                "b_error": r.diagnosis if r.status in ("failed", "retrying") else None,
                "b_warning": r.warning,
            }
            for r in records
        ],
    )
    await _insert_attempts.run_many(
        conn,
        [
            {
                "delivery_id": r.delivery_id,
                "number": r.number,
                "started_at": r.started_at,
                "duration_ms": r.duration_ms,
                "outcome": r.outcome,
                "status_code": r.status_code,
                "vendor_code": r.vendor_code,
                "vendor_message": r.vendor_message,
                "diagnosis": r.diagnosis,
                "next_attempt_at": r.next_attempt_at if r.status == "retrying" else None,
                "request": r.request,
                "response": r.response,
                "worker": r.lease_owner,
            }
            for r in records
        ],
    )
    return [None] * len(records)
