"""``/channel-types`` and ``/channels``: manage channels and Test Push them."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, RootModel, create_model

from msgpush.api.common import JSON, actor, admin, read_json, runtime, sender
from msgpush.api.openapi import conflict, json_body, partial
from msgpush.channel_service import (
    LoadedChannel,
    channel_type_or_error,
    validate_settings,
    verify_settings,
)
from msgpush.channels import registry
from msgpush.channels.base import RateLimit
from msgpush.delivery.engine import test_push
from msgpush.errors import ApiError
from msgpush.message import Strict

router = APIRouter()


class ChannelFields(Strict):
    """What every channel has besides its type's settings."""

    name: Annotated[
        str,
        Field(min_length=1, max_length=128, description="unique; ids start with ch_, names not"),
    ]
    description: Annotated[str, Field(max_length=2000)] = ""
    enabled: bool = True
    rate_limit: RateLimit | None = Field(
        default=None, description="lower the vendor's sending limits (never above them)"
    )


class UnsavedFields(Strict):
    """A Test Push of settings not saved yet."""

    name: Annotated[str, Field(max_length=128)] | None = None


class ChannelEdit(ChannelFields):
    """A channel's fields and settings (secrets in ``config`` sent empty or masked keep their
    stored values; ``null`` clears them)."""

    config: dict[str, Any] = Field(description="settings of the channel's type to change")


class SavedTestEdits(Strict):
    """Unsaved edits to test on top of the saved settings (the body may also be empty)."""

    config: dict[str, Any] = Field(description="settings of the channel's type to try")


def _tag(type_id: str) -> Any:
    return Literal.__getitem__(type_id)


def per_type(base: type[Strict], name: str) -> type[BaseModel]:
    """A body of ``base``'s fields plus ``type`` and that type's ``config``: one variant per
    channel type, told apart by ``type`` (a discriminated union, ``oneOf`` in the schema)."""
    variants: list[Any] = [
        create_model(
            f"{name}{''.join(part.title() for part in channel_type.type_id.split('_'))}",
            __base__=base,
            type=(_tag(channel_type.type_id), ...),
            config=(channel_type.settings_model, ...),
        )
        for channel_type in registry.all_types()
    ]
    union: Any = Annotated[Union.__getitem__(tuple(variants)), Field(discriminator="type")]
    model: type[BaseModel] = type(name, (RootModel[union],), {"__doc__": base.__doc__})
    return model


NewChannel = per_type(ChannelFields, "NewChannel")
UnsavedChannel = per_type(UnsavedFields, "UnsavedChannel")
NAME_TAKEN = conflict("A channel by that name exists")
EXAMPLE = {
    "name": "ops-webhook",
    "type": "webhook",
    "config": {"url": "https://example.com/hooks/msgpush"},
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
    responses=NAME_TAKEN,
    openapi_extra=json_body(NewChannel, EXAMPLE),
)
async def create_channel(request: Request) -> JSON:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object")
    _refuse_unknown(body, {"name", "type", "config", "enabled", "description", "rate_limit"})
    return JSON(await runtime(request).channels.create(body, actor=actor(request)), status_code=201)


@router.post(
    "/channels/test",
    dependencies=[Depends(admin)],
    summary="Test Push with unsaved settings",
    openapi_extra=json_body(UnsavedChannel, {"type": "webhook", "config": EXAMPLE["config"]}),
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
    settings = await verify_settings(
        channel_type, validate_settings(channel_type, body.get("config", {}))
    )
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


@router.patch(
    "/channels/{ref}",
    dependencies=[Depends(admin)],
    summary="Change a channel",
    responses=NAME_TAKEN,
    openapi_extra=json_body(partial(ChannelEdit, "ChannelChanges"), {"enabled": False}),
)
async def update_channel(request: Request, ref: str) -> JSON:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object")
    return JSON(await runtime(request).channels.update(ref, body, actor=actor(request)))


@router.delete(
    "/channels/{ref}", dependencies=[Depends(admin)], status_code=204, summary="Delete a channel"
)
async def delete_channel(request: Request, ref: str) -> Response:
    await runtime(request).channels.delete(ref, actor=actor(request))
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
    openapi_extra=json_body(SavedTestEdits, required=False),
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
    summary = {k: v for k, v in result.items() if k != "request"} if edits is None else None
    await rt.channels.record_test(channel, summary, actor=actor(request))
    return JSON(result)
