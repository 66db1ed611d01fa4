"""``/channel-types`` and ``/channels``: manage channels and Test Push them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from msgpush.api.common import JSON, admin, read_json, runtime, sender
from msgpush.channel_service import (
    LoadedChannel,
    channel_type_or_error,
    validate_settings,
)
from msgpush.channels import registry
from msgpush.delivery.engine import test_push
from msgpush.errors import ApiError

router = APIRouter()

CHANNEL_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["name", "type", "config"],
                    "properties": {
                        "name": {"type": "string", "maxLength": 128},
                        "type": {"type": "string", "enum": registry.type_ids()},
                        "config": {"type": "object", "description": "the type's settings"},
                        "enabled": {"type": "boolean", "default": True},
                        "description": {"type": "string"},
                        "rate_limit": {
                            "type": "object",
                            "properties": {
                                "per_second": {"type": "integer"},
                                "per_minute": {"type": "integer"},
                                "per_hour": {"type": "integer"},
                            },
                        },
                    },
                },
                "example": {
                    "name": "ops-webhook",
                    "type": "webhook",
                    "config": {"url": "https://example.com/hooks/msgpush"},
                },
            }
        },
    }
}


def _refuse_unknown(body: dict[str, Any], known: set[str]) -> None:
    unknown = set(body) - known
    if unknown:
        field = sorted(unknown)[0]
        raise ApiError(422, "invalid", f"{field}: unknown field; remove it", field)


@router.get("/channel-types", dependencies=[Depends(sender)], summary="Channel types and settings")
async def channel_types() -> JSON:
    return JSON({"items": [t.describe() for t in registry.all_types()]})


@router.get("/channels", dependencies=[Depends(admin)], summary="List channels")
async def list_channels(
    request: Request,
    type: Annotated[str | None, Query(description="only this type id")] = None,
    q: Annotated[str | None, Query(description="search in name and description")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> JSON:
    page = await runtime(request).channels.list_channels(
        type_id=type, q=q, cursor=cursor, limit=limit
    )
    return JSON(page)


@router.post(
    "/channels",
    dependencies=[Depends(admin)],
    status_code=201,
    summary="Create a channel",
    openapi_extra=CHANNEL_BODY,
)
async def create_channel(request: Request) -> JSON:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object")
    _refuse_unknown(body, {"name", "type", "config", "enabled", "description", "rate_limit"})
    return JSON(await runtime(request).channels.create(body), status_code=201)


@router.post(
    "/channels/test",
    dependencies=[Depends(admin)],
    summary="Test Push with unsaved settings",
)
async def test_unsaved(request: Request) -> JSON:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object with type and config")
    _refuse_unknown(body, {"name", "type", "config"})
    name = body.get("name") or "unsaved"
    if not isinstance(name, str):
        raise ApiError(422, "invalid", "name must be a string", "name")
    channel_type = channel_type_or_error(body.get("type"))
    settings = validate_settings(channel_type, body.get("config", {}))
    rt = runtime(request)
    channel = LoadedChannel(
        id="unsaved",
        name=name,
        type=channel_type,
        settings=settings,
        enabled=True,
        limit=channel_type.default_limits,
        secrets=channel_type.secret_set(settings),
    )
    return JSON(await test_push(rt.http, None, channel, rt.vendor_tokens))


@router.get("/channels/{ref}", dependencies=[Depends(admin)], summary="One channel")
async def get_channel(request: Request, ref: str) -> JSON:
    return JSON(await runtime(request).channels.get(ref))


@router.patch("/channels/{ref}", dependencies=[Depends(admin)], summary="Change a channel")
async def update_channel(request: Request, ref: str) -> JSON:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object")
    return JSON(await runtime(request).channels.update(ref, body))


@router.delete(
    "/channels/{ref}", dependencies=[Depends(admin)], status_code=204, summary="Delete a channel"
)
async def delete_channel(request: Request, ref: str) -> Response:
    await runtime(request).channels.delete(ref)
    return Response(status_code=204)


@router.post(
    "/channels/{ref}/test",
    dependencies=[Depends(admin)],
    summary="Test Push a channel",
    description=(
        "An empty body tests the saved settings, and the result becomes the channel's last test. "
        'A body {"config": {...}} tests unsaved edits on top of them (secrets left empty or masked '
        "keep their stored values) without recording a last test."
    ),
)
async def test_saved(request: Request, ref: str) -> JSON:
    rt = runtime(request)
    view = await rt.channels.get(ref)
    edits = None
    if (await request.body()).strip():
        body = await read_json(request)
        if not isinstance(body, dict) or set(body) - {"config"}:
            raise ApiError(422, "invalid", 'the body must be empty or {"config": {...}}', "config")
        edits = body.get("config")
        if edits is not None and not isinstance(edits, dict):
            raise ApiError(422, "invalid", "config must be an object", "config")
    channel = (
        await rt.channels.preview(view["id"], edits)
        if edits is not None
        else await rt.channels.load(view["id"])
    )
    if channel is None:
        raise ApiError(404, "not_found", f"no channel {ref!r}")
    result: dict[str, Any] = await test_push(rt.http, rt.limiter, channel, rt.vendor_tokens)
    if edits is None:
        summary = {k: v for k, v in result.items() if k != "request"}
        await rt.channels.record_test(channel.id, summary)
    return JSON(result)
