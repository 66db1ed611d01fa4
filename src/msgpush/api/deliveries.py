"""``/deliveries``: the history with filters and paging, one delivery's attempts, resend."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from msgpush.api.common import JSON, admin, runtime, sender
from msgpush.api.openapi import conflict
from msgpush.errors import ApiError
from msgpush.ids import parse_time

router = APIRouter()


MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last time ISO 8601 can say


def _time(value: str | None, field: str) -> int | None:
    if not value:  # ?since= left empty (as forms send it) filters nothing, like no ?since=
        return None
    try:
        ms = parse_time(value)
    except ValueError as exc:
        raise ApiError(422, "invalid", f"{field}: {exc}", field) from None
    except OverflowError:  # inf, -inf
        ms = MAX_TIME_MS + 1
    if abs(ms) > MAX_TIME_MS:
        raise ApiError(
            422,
            "invalid",
            f"{field}: {value!r} is out of range: use a time before the year 10000, "
            "in ISO 8601 like 2026-01-31T08:00:00Z or epoch seconds",
            field,
        )
    return ms


@router.get("/deliveries", dependencies=[Depends(sender)], summary="Delivery history")
async def list_deliveries(
    request: Request,
    channel: Annotated[str | None, Query(description="channel id or name")] = None,
    status: Annotated[
        str | None, Query(description="status, or several separated by commas")
    ] = None,
    since: Annotated[str | None, Query(description="created at or after (ISO 8601)")] = None,
    until: Annotated[str | None, Query(description="created before (ISO 8601)")] = None,
    message_id: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JSON:
    page = await runtime(request).history.deliveries(
        channel=channel,
        status=status,
        since=_time(since, "since"),
        until=_time(until, "until"),
        message_id=message_id,
        cursor=cursor,
        limit=limit,
    )
    return JSON(page)


@router.get("/deliveries/{delivery_id}", dependencies=[Depends(sender)], summary="One delivery")
async def get_delivery(request: Request, delivery_id: str) -> JSON:
    return JSON(await runtime(request).history.delivery(delivery_id))


@router.post(
    "/deliveries/{delivery_id}/retry",
    dependencies=[Depends(admin)],
    status_code=202,
    summary="Resend a failed or cancelled delivery",
    responses=conflict("The delivery is not failed or cancelled"),
)
async def retry_delivery(request: Request, delivery_id: str) -> JSON:
    rt = runtime(request)
    view = await rt.history.retry(delivery_id)
    rt.notify()
    return JSON(view, status_code=202)
