"""The web ceiling: msgpush's web stack and request model with nothing behind it.

FastAPI + uvicorn exactly as ``msgpush serve`` runs them (``uvicorn.run`` with the default
``loop="auto"``/``http="auto"``, i.e. uvloop and httptools; no access log), one route
``POST /api/v1/messages`` that validates the raw body with
``msgpush.message.SendRequest.model_validate_json`` and answers 202 with a small JSON body.
No authentication lookup, no storage, no delivery: what msgpush could reach if the rest cost
nothing. Run by ``bench/throughput.py``; ``--port`` is required.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import threading

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError

from msgpush.message import SendRequest

_ids = itertools.count()


def create_app() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/api/v1/messages", status_code=202)
    async def send_message(request: Request) -> Response:
        body = await request.body()
        try:
            parsed = SendRequest.model_validate_json(body)
        except ValidationError as exc:
            return Response(
                orjson.dumps({"error": str(exc)}), status_code=422, media_type="application/json"
            )
        answer = {
            "id": f"msg_{next(_ids)}",
            "deliveries": [{"channel": name, "status": "queued"} for name in parsed.channels],
        }
        return Response(orjson.dumps(answer), status_code=202, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lifetime", type=float, default=3600.0, help="exit after this long")
    args = parser.parse_args()
    # a bound on the lifetime even if nobody stops it: SIGTERM to itself (uvicorn shuts down)
    timer = threading.Timer(args.lifetime, os.kill, (os.getpid(), signal.SIGTERM))
    timer.daemon = True
    timer.start()
    uvicorn.run(
        create_app(),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
