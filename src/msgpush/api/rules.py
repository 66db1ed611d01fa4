"""``/rules``: which events go to which channels, to whom, how they read, how storms group
(admin only)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from msgpush.api.common import JSON, actor, admin, read_json
from msgpush.api.events import events_service
from msgpush.api.openapi import conflict, json_body, partial
from msgpush.events.models import Rule

router = APIRouter(dependencies=[Depends(admin)])

RULE_EXAMPLE = {
    "name": "prod alerts to ops",
    "event_types": ["alert.*"],
    "min_level": "warning",
    "labels": {"env": "prod"},
    "channels": ["ops-dingtalk"],
    "recipients": None,
    "template": None,
    "group_by": ["alertname"],
    "group_window_s": 60,
    "enabled": True,
}


@router.get("/rules", summary="List rules (in the order they apply)")
async def list_rules(request: Request) -> JSON:
    return JSON(await events_service(request).rules.list())


NAME_TAKEN = conflict("A rule by that name exists")


@router.post(
    "/rules",
    status_code=201,
    summary="Create a rule",
    responses=NAME_TAKEN,
    openapi_extra=json_body(Rule, RULE_EXAMPLE),
)
async def create_rule(request: Request) -> JSON:
    body = await read_json(request)
    created = await events_service(request).rules.create(body, actor=actor(request))
    return JSON(created, status_code=201)


@router.get("/rules/{ref}", summary="One rule (by id or name)")
async def get_rule(request: Request, ref: str) -> JSON:
    return JSON(await events_service(request).rules.get(ref))


@router.patch(
    "/rules/{ref}",
    summary="Change a rule (the fields sent)",
    responses=NAME_TAKEN,
    openapi_extra=json_body(partial(Rule, "RuleChanges"), {"enabled": False}),
)
async def update_rule(request: Request, ref: str) -> JSON:
    body = await read_json(request)
    return JSON(await events_service(request).rules.update(ref, body, actor=actor(request)))


@router.delete("/rules/{ref}", status_code=204, summary="Delete a rule")
async def delete_rule(request: Request, ref: str) -> Response:
    await events_service(request).rules.delete(ref, actor=actor(request))
    return Response(status_code=204)
