"""Shared API pieces: the JSON response, authentication by role, body parsing into models."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Request, Security
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.openapi.models import SecurityBase as SecurityBaseModel
from fastapi.responses import Response
from fastapi.security.base import SecurityBase
from pydantic import BaseModel, ValidationError

from msgpush.errors import ApiError, storage_unavailable, validation_error
from msgpush.runtime import Runtime
from msgpush.storage.audit import Actor
from msgpush.storage.db import storage_fault
from msgpush.storage.tokens import TokenIdentity

M = TypeVar("M", bound=BaseModel)

log = logging.getLogger(__name__)


def unexpected_error(exc: Exception) -> ApiError:
    """The answer to an exception no route turned into an ``ApiError``: 503 with Retry-After
    when storage refused the write (the request may simply be sent again), else 500, logged."""
    fault = storage_fault(exc)
    if fault is not None:
        return storage_unavailable(fault.reason)
    log.error("unhandled %s: %s", type(exc).__name__, exc)
    return ApiError(500, "internal", "internal error; see the server log")


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


async def authorize(
    rt: Runtime, authorization: str | None, allowed: Collection[str]
) -> TokenIdentity:
    """The request's token; 401 without a valid one, 403 for a role not ``allowed``."""
    token = bearer(authorization)
    if token is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing API token: send the header Authorization: Bearer <token>",
        )
    identity = await rt.tokens.identify(token)
    if identity is None:
        raise ApiError(401, "unauthorized", "the API token is not valid (unknown or deleted)")
    if identity.role not in allowed:
        raise ApiError(
            403,
            "forbidden",
            f"this route needs an admin token; this token's role is {identity.role}",
        )
    return identity


class DocumentedScheme(SecurityBase):
    """A security scheme for the OpenAPI document only: the checks read the headers themselves
    (so that every refusal is the project's own answer); this dependency costs a no-op call."""

    def __init__(self, name: str, model: SecurityBaseModel) -> None:
        self.scheme_name = name
        self.model = model

    async def __call__(self) -> None:
        return None


BEARER = DocumentedScheme(
    "bearer",
    HTTPBearerModel(description="An API token (mpk_…): Authorization: Bearer <token>"),
)
ADMIN_ROLES = frozenset({"admin"})
SENDER_ROLES = frozenset({"admin", "sender"})


async def admit(request: Request, allowed: Collection[str]) -> str:
    """The role of the request's token (kept on the request for the audit log), then the
    checks every route makes of its URL."""
    identity = await authorize(runtime(request), request.headers.get("authorization"), allowed)
    request.state.token = identity
    _refuse_nul(request)
    refuse_unknown_query(request)
    return identity.role


# The security scopes name the role a route needs (OpenAPI 3.1 lets non-OAuth schemes list
# roles there): the document's 403 answers are derived from them (api/openapi.py).
async def admin(request: Request, _: Annotated[None, Security(BEARER, scopes=["admin"])]) -> str:
    """Admin tokens only."""
    return await admit(request, ADMIN_ROLES)


async def sender(request: Request, _: Annotated[None, Security(BEARER)]) -> str:
    """Sender or admin tokens."""
    return await admit(request, SENDER_ROLES)


def actor(request: Request) -> Actor:
    """Who makes this request, for the audit log: its token (as ``admit`` found it) and the
    client's address."""
    identity: TokenIdentity | None = getattr(request.state, "token", None)
    return Actor(
        token_id=identity.id if identity else None,
        token_name=identity.name if identity else None,
        address=request.client.host if request.client else None,
    )


def _refuse_nul(request: Request) -> None:
    """NUL in a path or query parameter: no id or name has one, and PostgreSQL cannot take it."""
    for name, value in request.path_params.items():
        if "\x00" in str(value):
            raise ApiError(
                404, "not_found", f"no such {name} {value!r}: ids and names never contain NUL"
            )
    for name, value in request.query_params.multi_items():
        if "\x00" in value or "\x00" in name:
            raise ApiError(
                422, "invalid", f"{name}: must not contain NUL (\\u0000) characters", name
            )


def refuse_unknown_query(request: Request) -> None:
    """A misspelt filter (``?stauts=failed``) would silently answer unfiltered: name it instead."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = {param.alias for param in dependant.query_params}
    for name in request.query_params:
        if name not in known:
            accepted = ", ".join(sorted(known)) or "none"
            raise ApiError(
                422,
                "invalid",
                f"{name}: unknown query parameter; this route takes: {accepted}",
                name,
            )


async def read_json(request: Request) -> Any:
    body = await request.body()
    if not body.strip():
        raise ApiError(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    _check_values(value)
    return value


INT64_MAX = 2**63 - 1


def _check_values(body: Any) -> None:
    """422 naming the first string with NUL or number beyond 64 bits: neither can be stored."""
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        field, value = stack.pop()
        where = f"{field}: " if field else ""
        if isinstance(value, str) and "\x00" in value:
            raise ApiError(
                422, "invalid", f"{where}must not contain NUL (\\u0000) characters", field or None
            )
        if isinstance(value, int | float) and abs(value) > INT64_MAX:
            raise ApiError(422, "invalid", f"{where}the number {value} is too large", field or None)
        if isinstance(value, dict):
            items = [(f"{field}.{key}" if field else str(key), item) for key, item in value.items()]
        elif isinstance(value, list):
            items = [(f"{field}.{i}" if field else str(i), item) for i, item in enumerate(value)]
        else:
            continue
        for path, _ in items:
            if "\x00" in path:
                raise ApiError(422, "invalid", f"{path!r}: names must not contain NUL", path)
        stack.extend(reversed(items))


# JSON cannot carry a raw NUL in a string (a control character), only this escape ("u" is
# lowercase by the grammar; "\\u0000", an escaped backslash, is a false alarm sorted out below)
NUL_ESCAPE = b"\\u0000"


def _refuse_nul_strings(body: bytes) -> None:
    """422 naming the string (or key) holding NUL; malformed JSON is left to the parser."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    _check_values(value)


def parse_model(body: bytes, model: type[M], prefix: str = "") -> M:
    """Parse and validate a raw body with pydantic in one pass (the hot path's parser)."""
    if not body.strip():
        raise ApiError(400, "invalid_json", "the request body is empty; send a JSON object")
    # a memchr for any escape first (~1 µs per 64 KB; most bodies have none), then a search for
    # this one (~0.5 ns per byte); only a body holding it is walked to name the field
    if b"\\" in body and NUL_ESCAPE in body:
        _refuse_nul_strings(body)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        if errors and errors[0].get("type") == "json_invalid":
            reason = errors[0].get("ctx", {}).get("error", "malformed JSON")
            raise ApiError(
                400, "invalid_json", f"the request body is not valid JSON: {reason}"
            ) from None
        raise validation_error(errors, prefix) from None
