"""The service as an ASGI app: its state (:mod:`builder.service.state`: configuration, database,
dispatcher, runtime) → request limits and page headers → the routers of :mod:`builder.service.http`
(the public API, and the routes of trainers' and models' Cog servers). Starting it resumes
unfinished work.
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from builder.cog.client import describe_validation
from builder.dashboard.routes import mount_dashboard
from builder.service.config import ServiceConfig
from builder.service.http import files, internal, models, operations, predictions, trainings, uploads, webhooks
from builder.service.http.common import PageHeaders, fail
from builder.service.http.docs import mount_docs
from builder.service.state import Service
from builder.service.store.database import DatabaseUnavailable

log = logging.getLogger(__name__)


class BodyLimit:
    """ASGI middleware: a request body over its route's limit is refused with 413, judged on the
    bytes actually received (a chunked body has no Content-Length to trust), before the route
    stores anything."""

    def __init__(self, app, limit_for) -> None:
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope["path"])
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            return await _send_json(send, 413, f"request body of {int(length)} bytes is over the limit of {limit}")
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised where the route reads its body: FastAPI answers it as a 413.
                    raise fail(413, f"request body is over the limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(config: ServiceConfig) -> FastAPI:
    """The service's ASGI app; starting it resumes unfinished trainings."""
    service = Service(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        service.stop()

    app = FastAPI(
        title="dreambuild",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Self-hosted Replicate Dreambooth API: train → build → push → webhook.",
    )
    mount_docs(app)  # Swagger UI from packaged assets: no CDN
    mount_dashboard(app)  # the web dashboard at /
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = describe_validation(list(exc.errors())).replace("Extra inputs are not permitted", "unknown field")
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(DatabaseUnavailable)
    async def _database_down(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        log.warning("%s %s: %s (%s)", request.method, request.url.path, exc, exc.detail)
        # Nothing was half-written: each change is one transaction. The client may retry.
        return JSONResponse({"detail": f"{exc}; try again shortly"}, status_code=503, headers={"Retry-After": "5"})

    def limit_for(path: str) -> int:
        if path.startswith("/internal/"):
            if "/files/" in path or "/predictions/" in path:  # outputs (a prediction's webhook carries them too)
                return config.max_output_bytes
            return config.max_upload_bytes if "/inputs/" in path else config.max_body_bytes
        return config.max_upload_bytes if path.startswith(("/v1/uploads", "/v1/files")) else config.max_body_bytes

    app.add_middleware(BodyLimit, limit_for=limit_for)
    app.add_middleware(PageHeaders)
    for resource in (trainings, models, uploads, webhooks, predictions, files):  # the public API, a router per resource
        app.include_router(resource.router)
    app.include_router(internal.router)
    app.include_router(operations.router)
    return app
