"""The API's error type: a status, a stable code, a message that says how to fix it, a field."""

from __future__ import annotations

from typing import Any

from sqlalchemy import exc as sa_exc


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


# How long a client should wait before retrying a request the database could not take: about
# what a PostgreSQL restart or a fail-over takes; the connection pool reconnects by itself.
STORAGE_RETRY_AFTER_S = 2

# SQLSTATE classes of a lost or refused connection: 08 connection exception, 57 operator
# intervention (server shutting down, starting up, crashed).
CONNECTION_SQLSTATE_CLASSES = ("08", "57")


def storage_unavailable(exc: BaseException) -> ApiError | None:
    """A 503 with ``Retry-After`` when ``exc`` (or what caused it) means the database cannot be
    reached at the moment, else None (the error is msgpush's own: a 500).

    The connection pool checks connections before use (``pool_pre_ping``) and opens new ones,
    so the same request succeeds once the database answers again. The answer does not say
    "nothing was stored": a commit whose acknowledgement was lost may have taken effect, which
    an ``idempotency_key`` on the retried request makes harmless.
    """
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        orig = getattr(cause, "orig", None)  # SQLAlchemy keeps the driver's error here
        cause = orig if isinstance(orig, BaseException) else (cause.__cause__ or cause.__context__)
    for cause in chain:
        sqlstate = str(getattr(cause, "sqlstate", "") or "")
        if (
            isinstance(cause, (sa_exc.OperationalError, sa_exc.InterfaceError, ConnectionError))
            or (isinstance(cause, sa_exc.DBAPIError) and cause.connection_invalidated)
            or sqlstate[:2] in CONNECTION_SQLSTATE_CLASSES
        ):
            return ApiError(
                503,
                "storage_unavailable",
                f"the database is unavailable ({type(chain[-1]).__name__}); retry in "
                f"{STORAGE_RETRY_AFTER_S} s (send an idempotency_key to make the retry safe)",
                headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)},
            )
    return None


def not_found(kind: str, ref: str) -> ApiError:
    return ApiError(404, "not_found", f"no {kind} {ref!r}")


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
