"""``/events``: accept what platform modules report (stored with its messages before the 202),
and read events back with where they went."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError

from msgpush import metrics
from msgpush.api.common import JSON, read_json, runtime, sender
from msgpush.api.deliveries import _time
from msgpush.api.openapi import IDEMPOTENT_ACCEPTED, json_body
from msgpush.errors import ApiError, validation_error
from msgpush.events.models import Event
from msgpush.events.rules import RuleStore
from msgpush.events.service import Accepted, EventService, TemplateStore

router = APIRouter()


def events_service(request: Request) -> EventService:
    """The process's event service, made on first use next to the runtime's own services."""
    state = request.app.state
    service: EventService | None = getattr(state, "events", None)
    if service is None:
        rt = runtime(request)
        service = EventService(
            rt.db,
            rt.queue,
            rt.channels,
            RuleStore(rt.db, rt.channels),
            TemplateStore(rt.db),
            int(rt.settings.idempotency_ttl_s * 1000),
        )
        state.events = service
    return service


def parse_event(body: Any, field: str = "") -> Event:
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object (an event)")
    try:
        return Event.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc.errors(), field) from None


async def accept(request: Request, events: list[Event], source: str) -> list[Accepted]:
    """Store events and wake this process's delivery engine for what goes at once."""
    rt = runtime(request)
    accepted = await events_service(request).accept(events)
    fresh = [a for a in accepted if not a.replayed]
    if fresh:
        metrics.MESSAGES_ACCEPTED.labels(source).inc(sum(a.fresh_messages for a in fresh))
        rt.notify()
    return accepted


EVENT_EXAMPLE = {
    "type": "task.failed",
    "source": "scheduler",
    "level": "error",
    "data": {"task": "daily_sales", "run_id": 7, "error": "timeout", "url": "https://example.com"},
    "labels": {"env": "prod", "team": "data"},
    "channels": ["ops-dingtalk"],
}


@router.post(
    "/events",
    dependencies=[Depends(sender)],
    status_code=202,
    summary="Report an event",
    responses=IDEMPOTENT_ACCEPTED,
    description=(
        "Routed by the rules and the event's own channels, rendered with the event type's "
        "template, and stored with its messages before the 202."
    ),
    openapi_extra=json_body(Event, EVENT_EXAMPLE),
)
async def post_event(request: Request) -> JSON:
    event = parse_event(await read_json(request))
    [accepted] = await accept(request, [event], "events")
    headers = {"Idempotent-Replayed": "true"} if accepted.replayed else None
    return JSON(accepted.answer, status_code=202, headers=headers)


@router.get("/events", dependencies=[Depends(sender)], summary="Events, newest first")
async def list_events(
    request: Request,
    type: Annotated[str | None, Query(description="only this event type")] = None,
    source: Annotated[str | None, Query(description="only from this source")] = None,
    since: Annotated[str | None, Query(description="received at or after (ISO 8601)")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JSON:
    page = await events_service(request).list(
        type_=type, source=source, since=_time(since, "since"), cursor=cursor, limit=limit
    )
    return JSON(page)


@router.get("/events/{event_id}", dependencies=[Depends(sender)], summary="One event")
async def get_event(request: Request, event_id: str) -> JSON:
    if not event_id.startswith("evt_"):
        raise ApiError(404, "not_found", f"no event {event_id!r} (event ids start with evt_)")
    return JSON(await events_service(request).get(event_id))
