"""``/audit``: the audit log of admin changes, newest first (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from msgpush.api.common import JSON, admin, runtime
from msgpush.api.deliveries import _time
from msgpush.storage.audit import KINDS

router = APIRouter(dependencies=[Depends(admin)])


class AuditToken(BaseModel):
    id: str
    name: str


class AuditEntry(BaseModel):
    id: str
    at: str = Field(description="when (ISO 8601, UTC)")
    token: AuditToken | None = Field(
        description="the API token that made the change; null when msgpush itself did "
        "(the first admin token, `msgpush token create`)"
    )
    address: str | None = Field(description="the client's address")
    action: str = Field(description="create, update, delete, enable, disable or test")
    kind: str = Field(description=" | ".join(KINDS))
    object_id: str = Field(description="the object's id (a template's: its event type)")
    object_name: str | None
    fields: list[str] = Field(
        description="names of the fields set or changed, e.g. config.secret; never values"
    )


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page")


@router.get("/audit", summary="Audit log of admin changes", response_model=AuditPage)
async def list_audit(
    request: Request,
    kind: Annotated[str | None, Query(description=" | ".join(KINDS))] = None,
    object_id: Annotated[str | None, Query(description="one object's entries")] = None,
    token_id: Annotated[str | None, Query(description="changes made with this token")] = None,
    since: Annotated[str | None, Query(description="at or after (ISO 8601)")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JSON:
    page = await runtime(request).audit.list(
        kind=kind,
        object_id=object_id,
        token_id=token_id,
        since=_time(since, "since"),
        cursor=cursor,
        limit=limit,
    )
    return JSON(page)
