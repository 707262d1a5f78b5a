"""The service as an ASGI app: configuration → database → pipeline and worker → the public API
(:mod:`builder.service.api`) and the routes for trainers' Cog servers
(:mod:`builder.service.internal`). Starting it resumes unfinished trainings.
"""

from __future__ import annotations

import logging
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from builder.cog.client import describe_validation
from builder.service.api import public_router
from builder.service.config import ALL_OWNERS, ServiceConfig
from builder.service.database import Database
from builder.service.http import fail
from builder.service.internal import internal_router
from builder.service.pipeline import Pipeline, Worker
from builder.service.training import TrainingRecord
from builder.service.webhooks import new_secret

log = logging.getLogger(__name__)


class Service:
    """Shared state of one running service: configuration, database, secrets, the worker, and
    who a request's token lets it see."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.db = Database(config.database)
        self.webhook_secret = self.db.setting("webhook_secret", new_secret)
        # For Cog servers started by others (cog-http runner): one upload URL for all trainings,
        # which coglet's X-Prediction-Id header tells apart.
        self.upload_secret = self.db.setting("upload_secret", lambda: secrets.token_urlsafe(24))
        (config.data_dir / "cog-upload-url").write_text(self.cog_upload_url + "\n")
        self.pipeline = Pipeline(config, self.db, self.webhook_secret)
        self.worker = Worker(self.pipeline, config.max_concurrent)
        self.tokens = {entry.token: entry.owners for entry in config.tokens}

    @property
    def cog_upload_url(self) -> str:
        """The ``--upload-url`` for Cog servers of cog-http trainers."""
        return f"{self.config.base_url}/internal/{self.upload_secret}/files/"

    def owners(self, request: Request) -> list[str]:
        """The owners the request's API token may act for (401 without a known token)."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("bearer", "token") or token.strip() not in self.tokens:
            raise fail(401, "missing or unknown API token: send Authorization: Bearer <token>")
        return self.tokens[token.strip()]

    @staticmethod
    def may_use(owners: list[str], owner: str) -> bool:
        return ALL_OWNERS in owners or owner in owners

    def training_for(self, training_id: str, owners: list[str]) -> TrainingRecord:
        """The training, if these owners may see it (else 404: others' trainings do not exist)."""
        doc = self.db.get_training(training_id)
        if doc is None or not self.may_use(owners, doc["owner"]):
            raise fail(404, f"training {training_id} not found")
        return doc

    def upload_path(self, url: str) -> Path | None:
        """The file behind an upload URL of this service, or None."""
        tail = url.removeprefix(self.config.base_url + "/v1/uploads/")
        upload_id, _, name = tail.partition("/")
        doc = self.db.get_upload(upload_id)
        return Path(doc["path"]) if doc and doc["name"] == name and Path(doc["path"]).is_file() else None


def create_app(config: ServiceConfig) -> FastAPI:
    """The service's ASGI app; starting it resumes unfinished trainings."""
    service = Service(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        resumed = service.worker.resume()
        if resumed:
            log.warning("resuming %d unfinished training(s): %s", len(resumed), ", ".join(resumed))
        yield
        service.worker.shutdown()

    app = FastAPI(title="dreambuild", version="1", lifespan=lifespan,
                  description="Self-hosted Replicate Dreambooth API: train → build → push → webhook.")
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = describe_validation(list(exc.errors())).replace("Extra inputs are not permitted", "unknown field")
        return JSONResponse({"detail": detail}, status_code=422)

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        limit = config.max_upload_bytes if request.url.path.startswith(("/v1/uploads", "/internal/")) else config.max_body_bytes
        if length and length.isdigit() and int(length) > limit:
            return JSONResponse({"detail": f"request body of {length} bytes is over the limit of {limit}"}, status_code=413)
        return await call_next(request)

    app.include_router(public_router(service))
    app.include_router(internal_router(service))
    return app
