"""``POST /api/v1/messages`` and ``/messages/batch`` served straight from ASGI: the ingest path.

These two routes carry nearly all of msgpush's traffic. Through FastAPI each request also pays
for route matching, dependency solving, exit stacks and telemetry hooks, which measured about
as much CPU as everything msgpush itself does to accept a message. ``IngestRoutes`` sits in
front of the FastAPI app and answers these two itself, with the same checks in the same order
and the same answers: it calls the very functions the FastAPI routes in ``api/messages.py``
call (those remain for the OpenAPI schema and for apps built without this wrapper).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from msgpush.api.common import SENDER_ROLES, authorize
from msgpush.api.messages import accept_batch, accept_one
from msgpush.errors import ApiError, storage_unavailable
from msgpush.runtime import Runtime

log = logging.getLogger(__name__)

Accept = Callable[[Runtime, bytes], Awaitable[tuple[dict[str, Any], dict[str, str] | None]]]
ROUTES: dict[str, Accept] = {
    "/api/v1/messages": accept_one,
    "/api/v1/messages/batch": accept_batch,
}
INTERNAL = ApiError(500, "internal", "internal error; see the server log")


class IngestRoutes:
    def __init__(self, app: ASGIApp, runtime: Callable[[], Runtime | None]) -> None:
        self.app = app
        self._runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        accept = ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        rt = self._runtime() if accept is not None and scope["method"] == "POST" else None
        if accept is None or rt is None:
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] | None = None
        try:
            await self._check(rt, scope)
            body = await _read_body(receive)
            payload, headers = await accept(rt, body)
            status = 202
        except ApiError as refused:
            status, payload, headers = refused.status, refused.body(), refused.headers
        except Exception as exc:  # the app's own handler would say the same
            unavailable = storage_unavailable(exc)
            if unavailable is None:
                log.error("unhandled %s: %s", type(exc).__name__, exc)
                status, payload = 500, INTERNAL.body()
            else:
                log.warning("answered 503: %s", unavailable.message)
                status, payload, headers = 503, unavailable.body(), unavailable.headers
        await _answer(send, status, payload, headers)

    @staticmethod
    async def _check(rt: Runtime, scope: Scope) -> None:
        """What the FastAPI route's ``Depends(sender)`` checks, in its order."""
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        await authorize(rt, authorization, SENDER_ROLES)
        query = scope.get("query_string", b"")
        if not query:
            return
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        for name, value in pairs:
            if "\x00" in value or "\x00" in name:
                raise ApiError(
                    422, "invalid", f"{name}: must not contain NUL (\\u0000) characters", name
                )
        for name, _ in pairs:
            raise ApiError(
                422, "invalid", f"{name}: unknown query parameter; this route takes: none", name
            )


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "invalid_json", "the client went away before sending the body")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(
    send: Send, status: int, payload: dict[str, Any], extra: dict[str, str] | None
) -> None:
    body = orjson.dumps(payload)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    for name, value in (extra or {}).items():
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
