"""``/messages``: accept messages (stored durably before the 202), read one back."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from msgpush import metrics
from msgpush.api.common import JSON, read_model, runtime, sender
from msgpush.errors import ApiError
from msgpush.message import BatchSendRequest, SendRequest, message_payload
from msgpush.storage.queue import NewMessage

router = APIRouter()


def _body_schema(model: type) -> dict[str, object]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


@router.post(
    "/messages",
    dependencies=[Depends(sender)],
    status_code=202,
    summary="Send a message",
    openapi_extra=_body_schema(SendRequest),
)
async def send_message(request: Request) -> JSON:
    rt = runtime(request)
    body = await read_model(request, SendRequest)
    targets = await rt.channels.resolve(body.channels)
    new = NewMessage(
        payload=message_payload(body.message()),
        targets=targets,
        idempotency_key=body.idempotency_key,
    )
    [accepted] = await rt.queue.enqueue([new])
    if not accepted.replayed:
        metrics.MESSAGES_ACCEPTED.labels("messages").inc()
        rt.notify()
    headers = {"Idempotent-Replayed": "true"} if accepted.replayed else None
    return JSON(accepted.as_json(), status_code=202, headers=headers)


@router.post(
    "/messages/batch",
    dependencies=[Depends(sender)],
    status_code=202,
    summary="Send up to 1,000 messages",
    openapi_extra=_body_schema(BatchSendRequest),
)
async def send_batch(request: Request) -> JSON:
    rt = runtime(request)
    body = await read_model(request, BatchSendRequest)
    batch = []
    for index, item in enumerate(body.messages):
        targets = await rt.channels.resolve(item.channels, field=f"messages.{index}.channels")
        batch.append(
            NewMessage(
                payload=message_payload(item.message()),
                targets=targets,
                idempotency_key=item.idempotency_key,
            )
        )
    accepted = await rt.queue.enqueue(batch)
    fresh = sum(1 for a in accepted if not a.replayed)
    if fresh:
        metrics.MESSAGES_ACCEPTED.labels("batch").inc(fresh)
        rt.notify()
    return JSON({"items": [a.as_json() for a in accepted]}, status_code=202)


@router.get("/messages/{message_id}", dependencies=[Depends(sender)], summary="One message")
async def get_message(request: Request, message_id: str) -> JSON:
    if not message_id.startswith("msg_"):
        raise ApiError(404, "not_found", f"no message {message_id!r} (message ids start with msg_)")
    return JSON(await runtime(request).history.message(message_id))
