"""``/messages``: accept messages (stored durably before the 202), read one back."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from msgpush import metrics
from msgpush.api.common import JSON, parse_model, runtime, sender
from msgpush.api.openapi import IDEMPOTENT_ACCEPTED, json_body
from msgpush.errors import ApiError
from msgpush.message import BatchSendRequest, SendRequest
from msgpush.runtime import Runtime
from msgpush.storage.queue import NewMessage

router = APIRouter()
ACCEPTED_ONE = metrics.MESSAGES_ACCEPTED.labels("messages")
ACCEPTED_BATCH = metrics.MESSAGES_ACCEPTED.labels("batch")


@router.post(
    "/messages",
    dependencies=[Depends(sender)],
    status_code=202,
    summary="Send a message",
    responses=IDEMPOTENT_ACCEPTED,
    openapi_extra=json_body(SendRequest),
)
async def send_message(request: Request) -> JSON:
    answer, headers = await accept_one(runtime(request), await request.body())
    return JSON(answer, status_code=202, headers=headers)


async def accept_one(rt: Runtime, raw: bytes) -> tuple[dict[str, Any], dict[str, str] | None]:
    """Validate, resolve and durably store one message: the 202 answer and its headers.
    (Also served without FastAPI by ``api/ingest.py``.)"""
    body = parse_model(raw, SendRequest)
    targets = await rt.channels.resolve(body.channels)
    new = NewMessage(
        payload=body.payload(),
        targets=targets,
        idempotency_key=body.idempotency_key,
    )
    [accepted] = await rt.queue.enqueue([new])
    if not accepted.replayed:
        ACCEPTED_ONE.inc()
        rt.notify()
    headers = {"Idempotent-Replayed": "true"} if accepted.replayed else None
    return accepted.as_json(), headers


@router.post(
    "/messages/batch",
    dependencies=[Depends(sender)],
    status_code=202,
    summary="Send up to 1,000 messages",
    openapi_extra=json_body(BatchSendRequest),
)
async def send_batch(request: Request) -> JSON:
    answer, _ = await accept_batch(runtime(request), await request.body())
    return JSON(answer, status_code=202)


async def accept_batch(rt: Runtime, raw: bytes) -> tuple[dict[str, Any], None]:
    """Validate, resolve and durably store up to 1,000 messages, all or none."""
    body = parse_model(raw, BatchSendRequest)
    batch = []
    for index, item in enumerate(body.messages):
        targets = await rt.channels.resolve(item.channels, field=f"messages.{index}.channels")
        batch.append(
            NewMessage(
                payload=item.payload(),
                targets=targets,
                idempotency_key=item.idempotency_key,
            )
        )
    accepted = await rt.queue.enqueue(batch)
    fresh = sum(1 for a in accepted if not a.replayed)
    if fresh:
        ACCEPTED_BATCH.inc(fresh)
        rt.notify()
    return {"items": [a.as_json() for a in accepted]}, None


@router.get("/messages/{message_id}", dependencies=[Depends(sender)], summary="One message")
async def get_message(request: Request, message_id: str) -> JSON:
    if not message_id.startswith("msg_"):
        raise ApiError(404, "not_found", f"no message {message_id!r} (message ids start with msg_)")
    return JSON(await runtime(request).history.message(message_id))
