"""``/integrations``: Prometheus Alertmanager's and Grafana's webhooks, as ``alert.*`` events.

These tools cannot always set a header, so here (and only here) the token may also come as
``?token=…`` or as the password of HTTP basic auth.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.openapi.models import APIKey, APIKeyIn, HTTPBase
from pydantic import RootModel

from msgpush.api.common import BEARER, JSON, DocumentedScheme, bearer, read_json, runtime
from msgpush.api.events import accept
from msgpush.api.openapi import json_body
from msgpush.errors import ApiError
from msgpush.events.adapters import (
    LegacyGrafana,
    Notification,
    Routing,
    alertmanager_events,
    grafana_events,
)
from msgpush.events.models import MAX_GROUP_WINDOW_S

router = APIRouter()

QUERY = {"token", "channels", "group_by", "group_window_s"}
HOW = (
    "send the header Authorization: Bearer <token>, or (on /integrations routes only) "
    "?token=<token> in the URL"
)


def _basic_password(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        _user, _, password = base64.b64decode(value.strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password or None


BASIC = DocumentedScheme(
    "basic", HTTPBase(scheme="basic", description="The API token as the basic-auth password")
)
TOKEN_QUERY = DocumentedScheme(
    "token_query",
    APIKey(
        **{"in": APIKeyIn.query},
        name="token",
        description="The API token in the URL, for tools that cannot set a header",
    ),
)


async def integration_sender(
    request: Request,
    _bearer: Annotated[None, Security(BEARER)],
    _basic: Annotated[None, Security(BASIC)],
    _query: Annotated[None, Security(TOKEN_QUERY)],
) -> str:
    """Sender or admin, by Bearer header, basic-auth password or ``?token=``."""
    given = bearer(request.headers.get("authorization")) or _basic_password(request)
    if given is None and "authorization" not in request.headers:
        given = request.query_params.get("token") or None
    if given is None:
        raise ApiError(401, "unauthorized", f"missing API token: {HOW}")
    role = await runtime(request).tokens.role_of(given)
    if role is None:
        raise ApiError(
            401, "unauthorized", f"the API token is not valid (unknown or deleted); {HOW}"
        )
    for name, value in request.query_params.multi_items():
        if "\x00" in value or "\x00" in name:
            raise ApiError(
                422, "invalid", f"{name}: must not contain NUL (\\u0000) characters", name
            )
        if name not in QUERY:
            accepted = ", ".join(sorted(QUERY))
            raise ApiError(
                422,
                "invalid",
                f"{name}: unknown query parameter; this route takes: {accepted}",
                name,
            )
    return role


class GrafanaPayload(RootModel[Notification | LegacyGrafana]):
    """Grafana's unified alerting body (Alertmanager's), or the legacy one of Grafana < 8."""


def _routing(
    channels: list[str] | None, group_by: str | None, group_window_s: str | None
) -> Routing:
    refs = [c.strip() for item in channels or [] for c in item.split(",") if c.strip()]
    window = None
    if group_window_s not in (None, ""):
        try:
            window = int(group_window_s)
        except ValueError:
            window = -1
        if not 0 <= window <= MAX_GROUP_WINDOW_S:
            raise ApiError(
                422,
                "invalid",
                f"group_window_s: {group_window_s!r} is not a number of seconds "
                f"from 0 to {MAX_GROUP_WINDOW_S}",
                "group_window_s",
            )
    keys = [k.strip() for k in (group_by or "").split(",") if k.strip()]
    return Routing(channels=refs, group_by=keys or None, group_window_s=window)


Channels = Annotated[
    list[str] | None,
    Query(description="channels to send to besides the rules' (names or ids, comma-separated)"),
]
GroupByQuery = Annotated[
    str | None, Query(description="group these channels' alerts by these labels (comma-separated)")
]
WindowQuery = Annotated[
    str | None, Query(description="…within windows of this many seconds (digests)")
]
TokenQuery = Annotated[
    str | None, Query(description="the API token, when the tool cannot send a header")
]


async def _answer(request: Request, found: tuple[list[Any], list[str]], source: str) -> JSON:
    events, warnings = found
    accepted = await accept(request, events, source) if events else []
    return JSON({"items": [a.answer for a in accepted], "warnings": warnings}, status_code=202)


@router.post(
    "/integrations/alertmanager",
    dependencies=[Depends(integration_sender)],
    status_code=202,
    summary="Prometheus Alertmanager webhook (payload version 4)",
    description=(
        "Point an Alertmanager webhook_config here. Each alert becomes an alert.firing or "
        "alert.resolved event, routed by the rules and to ?channels=."
    ),
    openapi_extra=json_body(Notification),
)
async def alertmanager(
    request: Request,
    channels: Channels = None,
    group_by: GroupByQuery = None,
    group_window_s: WindowQuery = None,
    token: TokenQuery = None,
) -> JSON:
    routing = _routing(channels, group_by, group_window_s)
    return await _answer(
        request, alertmanager_events(await read_json(request), routing), "alertmanager"
    )


@router.post(
    "/integrations/grafana",
    dependencies=[Depends(integration_sender)],
    status_code=202,
    summary="Grafana alerting webhook contact point",
    description=(
        "Point a Grafana webhook contact point here (unified alerting, or legacy alerting). "
        "Each alert becomes an alert.firing or alert.resolved event."
    ),
    openapi_extra=json_body(GrafanaPayload),
)
async def grafana(
    request: Request,
    channels: Channels = None,
    group_by: GroupByQuery = None,
    group_window_s: WindowQuery = None,
    token: TokenQuery = None,
) -> JSON:
    routing = _routing(channels, group_by, group_window_s)
    return await _answer(request, grafana_events(await read_json(request), routing), "grafana")
