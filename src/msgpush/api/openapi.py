"""The OpenAPI document, made to tell the truth about every route under ``/api/v1``.

The handlers parse their bodies themselves (so that every refusal is the project's own error
answer), which leaves FastAPI nothing to describe. This module fills the gaps in one place:

- request bodies: a route declares ``openapi_extra=json_body(Model)``; the models' schemas land
  in ``components.schemas``;
- security: FastAPI lists the schemes of the route's token check (``api.common.admin``/``sender``
  declare HTTP bearer, the integrations also basic auth and ``?token=``); the scope "admin"
  marks the routes that need an admin token;
- answers: every route gets the error answers its kind can give, all with the ``ErrorBody``
  schema: 401 (any token check), 403 (admin-only routes), 422 (query parameters are checked on
  every route), 404 (a path parameter names something), 400, 413 and 422 (a body is read), 503
  with Retry-After (the database is unavailable: ``errors.storage_unavailable``). A
  route adds its own (409) with ``responses={409: {"description": ...}}``; the schema is filled
  in here. New routes get all of this by depending on ``admin``/``sender``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import models_json_schema

API_PREFIX = "/api/v1"
REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    field: str | None = Field(description="the failing field, as a dotted path like config.url")
    message: str


class Error(BaseModel):
    model_config = ConfigDict(json_schema_extra={"additionalProperties": False})

    code: str = Field(description="stable: invalid, invalid_json, unauthorized, forbidden, …")
    message: str = Field(description="what is wrong and how to fix it")
    field: str | None = Field(default=None, description="the failing field (dotted path)")
    details: list[ErrorDetail] | None = Field(
        default=None, description="every failing field, when a body had several"
    )


class ErrorBody(BaseModel):
    """Every refusal: ``{"error": {"code", "message", "field"?, "details"?}}``."""

    error: Error


_BODY_MODELS: dict[str, type[BaseModel]] = {"ErrorBody": ErrorBody}

ERROR_DESCRIPTIONS = {
    400: "The body is empty or not valid JSON",
    401: "No API token, or one that is unknown or deleted",
    403: "The token's role may not use this route (it needs an admin token)",
    404: "Nothing by that id or name",
    409: "Conflicts with what is stored",
    413: "The body is larger than MSGPUSH_MAX_BODY_BYTES",
    422: "A field, query parameter or value is invalid (the error names it)",
    503: "The database is unavailable for now; retry after the Retry-After header's seconds",
}


def json_body(
    model: type[BaseModel], example: Any = None, *, required: bool = True
) -> dict[str, Any]:
    """``openapi_extra`` declaring a JSON request body of ``model`` (which goes in components)."""
    known = _BODY_MODELS.setdefault(model.__name__, model)
    if known is not model:
        raise ValueError(f"two body models are named {model.__name__}")
    media: dict[str, Any] = {"schema": {"$ref": REF.format(model=model.__name__)}}
    if example is not None:
        media["example"] = example
    return {"requestBody": {"required": required, "content": {"application/json": media}}}


def conflict(description: str) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=`` for its 409 answer (the error schema is added by the builder)."""
    return {409: {"description": description}}


IDEMPOTENT_ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "Stored durably; delivery follows",
        "headers": {
            "Idempotent-Replayed": {
                "description": "true when the idempotency key was seen: the first answer again",
                "required": False,
                "schema": {"type": "string", "enum": ["true"]},
            }
        },
    }
}


def partial(model: type[BaseModel], name: str) -> type[BaseModel]:
    """``model`` with every field optional (a PATCH body: the fields sent are changed)."""
    fields: dict[str, Any] = {}
    for field_name, info in model.model_fields.items():
        loose = copy.copy(info)
        loose.default, loose.default_factory = None, None
        fields[field_name] = (info.annotation, loose)
    doc = f"{model.__doc__ or model.__name__}\n\nThe fields to change; those left out keep theirs."
    made: type[BaseModel] = create_model(name, __config__=model.model_config, __doc__=doc, **fields)
    return made


def _error(status: int, given: dict[str, Any] | None = None) -> dict[str, Any]:
    answer = dict(given or {})
    if answer.get("description") in (None, "", "Validation Error"):
        answer["description"] = ERROR_DESCRIPTIONS.get(status, "Refused")
    answer["content"] = {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}}
    if status == 503:
        wait = {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
        answer["headers"] = {"Retry-After": wait}
    return answer


def describe_operation(operation: dict[str, Any]) -> None:
    """Add the error answers an ``/api/v1`` operation can give, judged from what it declares."""
    statuses = {422, 503}  # query parameters are checked, the database used, on every route
    security = operation.get("security", [])
    if security:
        statuses.add(401)
        if all("admin" in scopes for requirement in security for scopes in requirement.values()):
            statuses.add(403)
    if any(param.get("in") == "path" for param in operation.get("parameters", [])):
        statuses.add(404)
    if "requestBody" in operation:
        statuses |= {400, 413}
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for status in statuses:
        responses.setdefault(str(status), {})
    for code, answer in list(responses.items()):
        if code.startswith(("4", "5")):
            responses[code] = _error(int(code), answer)
    if "204" in responses:  # FastAPI still lists its default 200
        responses.pop("200", None)
    operation["responses"] = dict(sorted(responses.items()))


def openapi_builder(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The app's ``openapi()``: FastAPI's document, completed as this module describes."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        for path, operations in schema.get("paths", {}).items():
            if path.startswith(API_PREFIX):
                for operation in operations.values():
                    describe_operation(operation)
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        _, defs = models_json_schema(
            [(model, "validation") for model in _BODY_MODELS.values()], ref_template=REF
        )
        schemas.update(defs.get("$defs", {}))
        missing = set(_BODY_MODELS) - set(schemas)
        if missing:
            raise RuntimeError(f"body models named like another model: {sorted(missing)}")
        app.openapi_schema = schema
        return schema

    return build
