"""``/tokens``: API tokens (admin only); a new token's value is shown once, in the 201 answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import Field

from msgpush.api.common import JSON, actor, admin, read_json, runtime
from msgpush.api.openapi import conflict, json_body
from msgpush.errors import ApiError
from msgpush.message import Strict
from msgpush.storage.tokens import Role

router = APIRouter(dependencies=[Depends(admin)])


class NewToken(Strict):
    """A token to create: what it is for, and its role (senders send and read history)."""

    name: Annotated[str, Field(min_length=1, max_length=128)]
    role: Role


@router.get("/tokens", summary="List API tokens (values are never shown again)")
async def list_tokens(request: Request) -> JSON:
    return JSON(await runtime(request).tokens.list())


@router.post(
    "/tokens",
    status_code=201,
    summary="Create an API token",
    openapi_extra=json_body(NewToken, {"name": "ci pipeline", "role": "sender"}),
)
async def create_token(request: Request) -> JSON:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object with name and role")
    unknown = set(body) - {"name", "role"}
    if unknown:
        field = sorted(unknown)[0]
        raise ApiError(422, "invalid", f"{field}: unknown field; remove it", field)
    token, view = await runtime(request).tokens.create(
        body.get("name", ""), body.get("role", ""), actor=actor(request)
    )
    return JSON({**view, "token": token}, status_code=201)


@router.delete(
    "/tokens/{token_id}",
    status_code=204,
    summary="Delete an API token",
    responses=conflict("It is the last admin token"),
)
async def delete_token(request: Request, token_id: str) -> Response:
    await runtime(request).tokens.delete(token_id, actor=actor(request))
    return Response(status_code=204)
