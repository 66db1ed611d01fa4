"""The ASGI application: routers, error handlers, body-size guard, health, metrics, console."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import func, select, text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from msgpush import __version__, metrics, template_worker
from msgpush.api import (
    audit,
    channels,
    deliveries,
    events,
    integrations,
    messages,
    rules,
    templates,
    tokens,
)
from msgpush.api.common import JSON
from msgpush.api.ingest import IngestRoutes
from msgpush.api.openapi import openapi_builder
from msgpush.errors import ApiError, storage_unavailable, validation_error
from msgpush.runtime import Runtime, settle_gc
from msgpush.settings import Settings
from msgpush.storage.schema import deliveries as deliveries_table

log = logging.getLogger(__name__)


class BodyLimit:
    """Answer 413 to a body larger than the limit, declared or streamed, before reading it all.

    A declared Content-Length over the limit is refused here; a streamed (chunked) body is
    counted as the app reads it, and the read that crosses the limit raises the 413 as an
    ``ApiError``, which the app's error handler answers like any other.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large(self.max_bytes)
            return message

        await self.app(scope, limited, send)

    async def _reject(self, send: Send) -> None:
        payload = orjson.dumps(too_large(self.max_bytes).body())
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        "too_large",
        f"the request body is larger than {max_bytes} bytes; send fewer messages per batch",
    )


# The console's files carry no version in their names: browsers must check them after an upgrade.
REVALIDATE = {"Cache-Control": "no-cache"}


class RevalidatedStaticFiles(StaticFiles):
    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(REVALIDATE)
        return response


def create_app(settings: Settings | None = None, *, worker: bool = True) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = Runtime(
            settings,
            worker=worker,
            worker_processes=settings.delivery_processes if worker else 0,
            housekeeping=True,
        )
        await rt.start()
        settle_gc()
        app.state.runtime = rt
        token = await rt.ensure_admin_token()
        if token:
            print(
                "\n  msgpush: created the first admin API token (shown only this once):\n\n"
                f"    {token}\n\n  Keep it safe; create more with `msgpush token create`.\n",
                flush=True,
            )
        try:
            yield
        finally:
            await rt.stop()
            await template_worker.close()

    app = FastAPI(
        title="msgpush",
        version=__version__,
        description="Self-hosted message push: WeCom, Feishu/Lark, DingTalk and webhooks.",
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    for router in (
        channels.router,
        messages.router,
        deliveries.router,
        tokens.router,
        events.router,
        rules.router,
        templates.router,
        integrations.router,
        audit.router,
    ):
        app.include_router(router, prefix="/api/v1")

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSON:
        return JSON(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def request_validation(_request: Request, exc: RequestValidationError) -> JSON:
        # FastAPI's locations start with where the value was: body, query, path or header
        errors = [{**e, "loc": tuple(e.get("loc", ()))[1:]} for e in exc.errors()]
        error = validation_error(errors)
        return JSON(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSON:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = "no such path; the API lives under /api/v1 (see /docs)"
        return JSON(ApiError(exc.status_code, code, message).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSON:
        error = storage_unavailable(exc)
        if error is None:
            log.error("unhandled %s: %s", type(exc).__name__, exc)
            error = ApiError(500, "internal", "internal error; see the server log")
        else:
            log.warning("answered 503: %s", error.message)
        return JSON(error.body(), status_code=error.status, headers=error.headers)

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> JSON:
        rt: Runtime = request.app.state.runtime
        try:
            async with rt.db.read() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            return JSON({"status": "error", "database": type(exc).__name__}, status_code=503)
        return JSON(
            {
                "status": "ok",
                "database": rt.db.dialect,
                "worker": rt.engine is not None,
                "worker_processes": rt.worker_processes_state(),
                "version": __version__,
            }
        )

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(request: Request) -> Response:
        rt: Runtime = request.app.state.runtime
        async with rt.db.read() as conn:
            rows = await conn.execute(
                select(deliveries_table.c.status, func.count())
                .where(deliveries_table.c.status.in_(("queued", "sending", "retrying")))
                .group_by(deliveries_table.c.status)
            )
            counts = dict(rows.all())
        for status in ("queued", "sending", "retrying"):
            metrics.QUEUE_DEPTH.labels(status).set(counts.get(status, 0))
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    web_dir = files("msgpush") / "web"

    @app.get("/", include_in_schema=False)
    async def console() -> HTMLResponse:
        return HTMLResponse(
            (web_dir / "index.html").read_text(encoding="utf-8"), headers=REVALIDATE
        )

    app.mount("/static", RevalidatedStaticFiles(directory=str(web_dir)), name="static")

    app.openapi = openapi_builder(app)  # type: ignore[method-assign]
    return app


def build(settings: Settings | None = None, *, worker: bool = True) -> ASGIApp:
    """The app wrapped in the body-size guard: what uvicorn serves."""
    settings = settings or Settings()
    app = create_app(settings, worker=worker)
    ingest = IngestRoutes(app, lambda: getattr(app.state, "runtime", None))
    return BodyLimit(ingest, settings.max_body_bytes)
