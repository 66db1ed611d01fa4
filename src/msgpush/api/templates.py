"""``/templates``: the built-in template of each event type, per-type overrides, and a preview
that renders an event (or a type's sample) with a template before it is saved (admin only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError

from msgpush import template_worker
from msgpush.api.common import JSON, actor, admin, read_json
from msgpush.api.events import events_service
from msgpush.api.openapi import json_body
from msgpush.errors import ApiError, validation_error
from msgpush.events.models import Event, TemplateOverride, TypePattern
from msgpush.events.service import EventService, fingerprint
from msgpush.events.templates import (
    CONTEXT_NAMES,
    EventRecord,
    RenderError,
    best_override,
    builtin_for,
    check_limits,
    check_names,
    default_level,
    describe_builtins,
    render_bounded,
    sample_event,
)
from msgpush.ids import now_ms
from msgpush.message import Strict

router = APIRouter(dependencies=[Depends(admin)])

_PATTERN = TypeAdapter(TypePattern)


class Preview(Strict):
    """A preview: an event (or the sample of a type) and the template being edited, if any."""

    event_type: TypePattern | None = None
    event: Event | None = None
    template: TemplateOverride | None = None
    use_override: bool = True  # then the stored override for the type, as routing would


def _event_type(value: str) -> str:
    try:
        return str(_PATTERN.validate_python(value))
    except ValidationError as exc:
        raise validation_error(exc.errors(), "event_type") from None


def _template(body: Any) -> TemplateOverride:
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object with title and/or content")
    try:
        template = TemplateOverride.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None
    check_names(template, "")
    return template


async def _view(service: EventService, event_type: str) -> dict[str, Any]:
    overrides = await service.templates.overrides()
    builtin = builtin_for(event_type)
    own = overrides.get(event_type)
    return {
        "event_type": event_type,
        "builtin": {
            "event_type": builtin.event_type,
            "title": builtin.title,
            "content": builtin.content,
        },
        "override": own.model_dump(mode="json", exclude_none=True) if own else None,
        "effective": (
            best.model_dump(mode="json", exclude_none=True)
            if (best := best_override(event_type, overrides))
            else None
        ),
    }


@router.get("/templates", summary="Built-in templates, overrides and template variables")
async def list_templates(request: Request) -> JSON:
    overrides = await events_service(request).templates.overrides()
    items = []
    for builtin in describe_builtins():
        own = overrides.get(builtin["event_type"])
        items.append(
            {**builtin, "override": own.model_dump(mode="json", exclude_none=True) if own else None}
        )
    known = {item["event_type"] for item in items}
    for event_type, own in sorted(overrides.items()):
        if event_type not in known:
            generic = builtin_for(event_type)
            items.append(
                {
                    "event_type": event_type,
                    "name": event_type,
                    "builtin_of": generic.event_type,
                    "title": generic.title,
                    "content": generic.content,
                    "override": own.model_dump(mode="json", exclude_none=True),
                }
            )
    return JSON({"items": items, "variables": sorted(CONTEXT_NAMES)})


@router.post(
    "/templates/preview",
    summary="Render an event (or a type's sample) with a template",
    openapi_extra=json_body(
        Preview,
        {"event_type": "task.failed", "template": {"title": "{{ f.task }} failed"}},
    ),
)
async def preview(request: Request) -> JSON:
    body = await read_json(request)
    try:
        asked = Preview.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None
    if asked.template is not None:
        check_names(asked.template, "template")
    now = now_ms()
    event = asked.event
    if event is not None:
        level = event.level or default_level(event.type, event.labels)
        record = EventRecord(
            id="evt_preview",
            type=event.type,
            source=event.source,
            level=level.value,
            labels=dict(event.labels),
            data=dict(event.data),
            occurred_at=event.occurred_ms(now),
            created_at=now,
            fingerprint=fingerprint(event.type, event.data, event.labels),
        )
    else:
        record = sample_event(asked.event_type or "task.failed", now=now)
    stored = None
    if asked.use_override:
        stored = best_override(record.type, await events_service(request).templates.overrides())
    try:
        rendered = await render_bounded(
            record,
            asked.template,
            stored,
            budget=template_worker.PREVIEW,
            strict=True,
            where=("template", "stored override"),
        )
    except RenderError as exc:
        raise ApiError(422, "invalid", str(exc), exc.part) from None
    return JSON(
        {"event": record.view(), "message": rendered.payload, "warnings": rendered.warnings}
    )


@router.get("/templates/{event_type}", summary="One event type's templates")
async def get_template(request: Request, event_type: str) -> JSON:
    return JSON(await _view(events_service(request), _event_type(event_type)))


@router.put(
    "/templates/{event_type}",
    summary="Override an event type's template (a type, or a pattern like alert.*)",
    openapi_extra=json_body(
        TemplateOverride, {"title": "[{{ level | upper }}] {{ f.task }} failed"}
    ),
)
async def put_template(request: Request, event_type: str) -> JSON:
    event_type = _event_type(event_type)
    template = _template(await read_json(request))
    await check_limits(template, event_type, "")
    service = events_service(request)
    await service.templates.put(event_type, template, actor=actor(request))
    return JSON(await _view(service, event_type))


@router.delete("/templates/{event_type}", status_code=204, summary="Back to the built-in template")
async def delete_template(request: Request, event_type: str) -> Response:
    deleted = await events_service(request).templates.delete(
        _event_type(event_type), actor=actor(request)
    )
    if not deleted:
        raise ApiError(404, "not_found", f"no template override for {event_type!r}")
    return Response(status_code=204)
