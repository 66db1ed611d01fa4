"""``/tokens``: API tokens (admin only); a new token's value is shown once, in the 201 answer."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from msgpush.api.common import JSON, actor, admin, read_json, runtime
from msgpush.errors import ApiError

router = APIRouter(dependencies=[Depends(admin)])


@router.get("/tokens", summary="List API tokens (values are never shown again)")
async def list_tokens(request: Request) -> JSON:
    return JSON(await runtime(request).tokens.list())


@router.post("/tokens", status_code=201, summary="Create an API token")
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


@router.delete("/tokens/{token_id}", status_code=204, summary="Delete an API token")
async def delete_token(request: Request, token_id: str) -> Response:
    await runtime(request).tokens.delete(token_id, actor=actor(request))
    return Response(status_code=204)
