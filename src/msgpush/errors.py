"""The API's error type: a status, a stable code, a message that says how to fix it, a field."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.details = details
        self.headers = headers

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        if self.details:
            error["details"] = self.details
        return {"error": error}


def not_found(kind: str, ref: str) -> ApiError:
    return ApiError(404, "not_found", f"no {kind} {ref!r}")


# How long a client is asked to wait while storage fails: freeing space takes a person.
STORAGE_RETRY_AFTER_S = 5


def storage_unavailable(reason: str) -> ApiError:
    """503 for a request whose write storage refused (disk full, read-only, unreachable). A
    refused commit stored nothing, but a connection lost after the commit was sent may hide one
    that took effect: the answer asks for a retry and says how to make it harmless."""
    return ApiError(
        503,
        "storage_unavailable",
        f"msgpush cannot store anything now: {reason}; send it again later (with an "
        "idempotency_key, a repeat is harmless should this request have been stored after all)",
        headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)},
    )


OBJECT_TYPES = ("model_type", "model_attributes_type", "dict_type")


def pydantic_details(errors: list[Any], prefix: str = "") -> list[dict[str, Any]]:
    """pydantic errors as [{field, message}], field as a dotted path like ``config.url``."""
    details = []
    for error in errors:
        path = [str(part) for part in error.get("loc", ())]
        field = ".".join(([prefix] if prefix else []) + path)
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = "unknown field: remove it (check the spelling against the API docs)"
        elif error.get("type") == "missing":
            message = "required field is missing"
        elif error.get("type") in OBJECT_TYPES:
            message = "must be a JSON object" if field else "the request body must be a JSON object"
        details.append({"field": field or None, "message": message})
    return details


def validation_error(errors: list[Any], prefix: str = "") -> ApiError:
    details = pydantic_details(errors, prefix)
    first = details[0] if details else {"field": None, "message": "invalid input"}
    where = f"{first['field']}: " if first["field"] else ""
    return ApiError(422, "invalid", f"{where}{first['message']}", first["field"], details)
