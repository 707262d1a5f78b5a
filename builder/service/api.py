"""The HTTP API (FastAPI; OpenAPI docs at /docs): the Replicate Dreambooth API, self-hosted.

Public routes need ``Authorization: Bearer <token>``; a token may use only its owners'
trainings and models (another owner's are 404, creating into one is 403). ``/internal/<secret>/``
routes are for the trainer's Cog server (its webhook and its output upload), addressed with a
per-training secret instead of a token. Upload URLs are unguessable capability URLs, like the
peers' presigned URLs, so a trainer can download them without a token.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from builder.service.config import ALL_OWNERS, ServiceConfig
from builder.service.pipeline import Pipeline, Worker, public_training
from builder.service.store import Store, now_iso
from builder.service.webhooks import new_secret

log = logging.getLogger(__name__)
MODEL = re.compile(r"^[a-z0-9][a-z0-9_.-]*/[a-z0-9][a-z0-9_.-]*$")
FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class TrainingRequest(BaseModel):
    """The seed's payload, exactly."""

    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any] = Field(..., description="The trainer's inputs (instance_prompt, instance_data, ...).")
    trainer_version: str = Field(..., description="A trainer version from the catalog.")
    template_version: str = Field(..., description="A template version from the catalog.")
    model: str = Field(..., description="owner/name of the model to push the new version to.")
    notes: str | None = Field(None, description="Notes recorded on the new version.")
    webhook_completed: str | None = Field(None, description="URL to POST the training to when it ends.")


class ReplicateTrainingRequest(BaseModel):
    """Replicate's ``POST /v1/models/{owner}/{name}/versions/{id}/trainings`` body."""

    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any] = Field(..., description="The trainer's inputs.")
    destination: str = Field(..., description="owner/name of the model that receives the new version.")
    webhook: str | None = Field(None, description="URL for webhooks.")
    webhook_events_filter: list[Literal["start", "output", "logs", "completed"]] | None = Field(
        None, description="Events to send (default: completed).")


def _fail(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def _catalog_key(catalog: dict, version: str) -> str | None:
    bare = version.removeprefix("sha256:")
    for key in catalog:
        if key.removeprefix("sha256:") == bare:
            return key
    return None


class Service:
    """Shared state of one running service."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.store = Store(config.database)
        self.webhook_secret = self.store.setting("webhook_secret", new_secret)
        # For Cog servers started by others (cog-http runner): one upload URL for all trainings,
        # which coglet's X-Prediction-Id header tells apart.
        self.upload_secret = self.store.setting("upload_secret", lambda: secrets.token_urlsafe(24))
        (config.data_dir / "cog-upload-url").write_text(self.cog_upload_url + "\n")
        self.pipeline = Pipeline(config, self.store, self.webhook_secret)
        self.worker = Worker(self.pipeline, config.max_concurrent)
        self.tokens = {entry.token: entry.owners for entry in config.tokens}

    @property
    def cog_upload_url(self) -> str:
        """The ``--upload-url`` for Cog servers of cog-http trainers."""
        return f"{self.config.base_url}/internal/{self.upload_secret}/files/"

    def owners(self, request: Request) -> list[str]:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("bearer", "token") or token.strip() not in self.tokens:
            raise _fail(401, "missing or unknown API token: send Authorization: Bearer <token>")
        return self.tokens[token.strip()]

    @staticmethod
    def may_use(owners: list[str], owner: str) -> bool:
        return ALL_OWNERS in owners or owner in owners

    def training_for(self, training_id: str, owners: list[str]) -> dict:
        doc = self.store.get_training(training_id)
        if doc is None or not self.may_use(owners, doc["owner"]):
            raise _fail(404, f"training {training_id} not found")
        return doc

    def validate(self, body: TrainingRequest, owners: list[str]) -> TrainingRequest:
        if not MODEL.match(body.model):
            raise _fail(422, f"model {body.model!r} must be owner/name (lowercase letters, digits, -, _ and .)")
        owner = body.model.split("/")[0]
        if not self.may_use(owners, owner):
            raise _fail(403, f"this token may not push to owner {owner!r}")
        trainer = _catalog_key(self.config.trainers, body.trainer_version)
        if trainer is None:
            raise _fail(422, f"unknown trainer_version {body.trainer_version!r}; known: {', '.join(self.config.trainers) or 'none'}")
        template = _catalog_key(self.config.templates, body.template_version)
        if template is None:
            raise _fail(422, f"unknown template_version {body.template_version!r}; known: {', '.join(self.config.templates) or 'none'}")
        if body.webhook_completed is not None and not re.match(r"^https?://[^\s/]+", body.webhook_completed):
            raise _fail(422, f"webhook_completed {body.webhook_completed!r} is not an http(s) URL")
        data = body.input.get("instance_data")
        if data is not None:
            if not isinstance(data, str) or not re.match(r"^https?://[^\s/]+", data):
                raise _fail(422, "input.instance_data must be an http(s) URL or an upload URL of this service")
            if data.startswith(self.config.base_url + "/v1/uploads/") and not self.upload_path(data):
                raise _fail(422, f"input.instance_data {data!r} is not an upload of this service")
        return body.model_copy(update={"trainer_version": trainer, "template_version": template})

    def upload_path(self, url: str) -> Path | None:
        tail = url.removeprefix(self.config.base_url + "/v1/uploads/")
        upload_id, _, name = tail.partition("/")
        doc = self.store.get_upload(upload_id)
        return Path(doc["path"]) if doc and doc["name"] == name and Path(doc["path"]).is_file() else None


def new_training(body: TrainingRequest, events: list[str] | None = None) -> dict:
    """A new training document (queued) for a validated request."""
    return {
        "id": uuid.uuid4().hex[:26], "owner": body.model.split("/")[0], "model": body.model, "status": "starting",
        "stage": "queued", "input": body.input, "trainer_version": body.trainer_version,
        "template_version": body.template_version, "notes": body.notes, "webhook_completed": body.webhook_completed,
        "webhook_events_filter": events or ["completed"], "created_at": now_iso(), "logs": "", "metrics": {},
        "secret": secrets.token_urlsafe(24),
    }


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
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ())[1:]) or "body"
            problems.append(f"{where}: {error.get('msg', 'invalid')}".replace("Extra inputs are not permitted", "unknown field"))
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        limit = config.max_upload_bytes if request.url.path.startswith(("/v1/uploads", "/internal/")) else config.max_body_bytes
        if length and length.isdigit() and int(length) > limit:
            return JSONResponse({"detail": f"request body of {length} bytes is over the limit of {limit}"}, status_code=413)
        return await call_next(request)

    def owners(request: Request) -> list[str]:
        return service.owners(request)

    @app.post("/v1/trainings", status_code=201, summary="Create a training (the seed's payload)")
    def create_training(body: TrainingRequest, request: Request, token_owners: list[str] = Depends(owners)) -> dict:
        doc = new_training(service.validate(body, token_owners))
        service.store.create_training(doc)
        service.worker.submit(doc["id"])
        return public_training(doc, config.base_url)

    @app.post("/v1/models/{owner}/{name}/versions/{version_id}/trainings", status_code=201,
              summary="Create a training (Replicate's route, as the replicate client calls it)")
    def create_replicate_training(owner: str, name: str, version_id: str, body: ReplicateTrainingRequest,
                                  token_owners: list[str] = Depends(owners)) -> dict:
        template = config.default_template_version or (next(iter(config.templates)) if len(config.templates) == 1 else None)
        if template is None:
            raise _fail(422, "no default_template_version is configured for Replicate-style trainings")
        seed = TrainingRequest(input=body.input, trainer_version=version_id, template_version=template,
                               model=body.destination, webhook_completed=body.webhook)
        doc = new_training(service.validate(seed, token_owners), events=body.webhook_events_filter or ["completed"])
        doc.update(api="replicate", trainer_model=f"{owner}/{name}")
        service.store.create_training(doc)
        service.worker.submit(doc["id"])
        return public_training(doc, config.base_url)

    @app.get("/v1/trainings/{training_id}", summary="Get a training")
    def get_training(training_id: str, token_owners: list[str] = Depends(owners)) -> dict:
        return public_training(service.training_for(training_id, token_owners), config.base_url)

    @app.get("/v1/trainings", summary="List trainings, newest first")
    def list_trainings(cursor: str | None = None, limit: int = 50, token_owners: list[str] = Depends(owners)) -> dict:
        if cursor is not None and not cursor.isdigit():
            raise _fail(422, "cursor must come from a previous page's next")
        limit = max(1, min(limit, 100))
        owners_filter = None if ALL_OWNERS in token_owners else token_owners
        page, after = service.store.list_trainings(owners_filter, before=int(cursor) if cursor else None, limit=limit)
        next_url = f"{config.base_url}/v1/trainings?cursor={after}&limit={limit}" if after else None
        return {"previous": None, "next": next_url, "results": [public_training(d, config.base_url) for d in page]}

    @app.post("/v1/trainings/{training_id}/cancel", summary="Cancel a training")
    def cancel_training(training_id: str, token_owners: list[str] = Depends(owners)) -> dict:
        doc = service.training_for(training_id, token_owners)
        if doc["status"] in ("starting", "processing"):
            doc = service.store.update_training(training_id, cancel_requested=True)
        return public_training(doc, config.base_url)

    @app.get("/v1/trainings/{training_id}/weights", summary="Download the training's output.zip")
    def training_weights(training_id: str, token_owners: list[str] = Depends(owners)) -> FileResponse:
        doc = service.training_for(training_id, token_owners)
        if not doc.get("weights") or not Path(doc["weights"]).is_file():
            raise _fail(404, f"training {training_id} has no weights")
        return FileResponse(doc["weights"], media_type="application/zip", filename="output.zip")

    @app.get("/v1/models/{owner}/{name}/versions", summary="List a model's built versions")
    def list_versions(owner: str, name: str, token_owners: list[str] = Depends(owners)) -> dict:
        if not service.may_use(token_owners, owner):
            raise _fail(404, f"model {owner}/{name} not found")
        return {"previous": None, "next": None, "results": service.store.list_versions(owner, name)}

    @app.get("/v1/models/{owner}/{name}/versions/{version_id}", summary="Get a built version")
    def get_version(owner: str, name: str, version_id: str, token_owners: list[str] = Depends(owners)) -> dict:
        version = service.store.get_version(owner, name, version_id if version_id.startswith("sha256:") else f"sha256:{version_id}")
        if version is None or not service.may_use(token_owners, owner):
            raise _fail(404, f"version {version_id} of {owner}/{name} not found")
        return version

    @app.get("/v1/webhooks/default/secret", summary="The webhook signing secret")
    def webhook_secret(token_owners: list[str] = Depends(owners)) -> dict:
        return {"key": service.webhook_secret}

    @app.post("/v1/uploads/{filename}", status_code=201, summary="Upload a file (instance data zip); returns its URL")
    async def upload(filename: str, request: Request, token_owners: list[str] = Depends(owners)) -> dict:
        if not FILENAME.match(filename):
            raise _fail(422, f"file name {filename!r} must be letters, digits, '.', '_' or '-'")
        upload_id = secrets.token_urlsafe(24)
        folder = config.data_dir / "uploads" / upload_id
        folder.mkdir(parents=True)
        size = await _stream_to(request, folder / filename, config.max_upload_bytes, folder)
        service.store.add_upload({"id": upload_id, "owner": token_owners[0], "name": filename, "path": str(folder / filename),
                                  "size": size, "created_at": now_iso()})
        return {"id": upload_id, "name": filename, "size": size, "url": f"{config.base_url}/v1/uploads/{upload_id}/{filename}"}

    @app.get("/v1/uploads/{upload_id}/{filename}", summary="Download an upload (capability URL, no token)")
    def download(upload_id: str, filename: str) -> FileResponse:
        path = service.upload_path(f"{config.base_url}/v1/uploads/{upload_id}/{filename}")
        if path is None:
            raise _fail(404, "upload not found")
        return FileResponse(path)

    # --- for the trainer's Cog server ---------------------------------------------------------

    def internal_training(secret: str, training_id: str) -> dict:
        doc = service.store.get_training(training_id)
        if doc is None or not secrets.compare_digest(doc.get("secret", ""), secret):
            raise _fail(404, "not found")
        return doc

    @app.put("/internal/{secret}/files/{filename}", include_in_schema=False)
    async def receive_shared_output(secret: str, filename: str, request: Request) -> JSONResponse:
        if not secrets.compare_digest(secret, service.upload_secret):
            raise _fail(404, "not found")
        training_id = request.headers.get("x-prediction-id", "")
        if service.store.get_training(training_id) is None:
            raise _fail(404, "unknown prediction id")
        return await _receive_output(training_id, filename, request)

    @app.put("/internal/{secret}/files/{training_id}/{filename}", include_in_schema=False)
    async def receive_output(secret: str, training_id: str, filename: str, request: Request) -> JSONResponse:
        internal_training(secret, training_id)
        return await _receive_output(training_id, filename, request)

    async def _receive_output(training_id: str, filename: str, request: Request) -> JSONResponse:
        if not FILENAME.match(filename):
            raise _fail(422, "bad file name")
        folder = config.files / training_id
        folder.mkdir(parents=True, exist_ok=True)
        await _stream_to(request, folder / filename, config.max_upload_bytes, None)
        location = f"{config.base_url}/v1/trainings/{training_id}/weights"
        return JSONResponse({}, status_code=201, headers={"Location": location})

    @app.post("/internal/{secret}/cog/{training_id}", include_in_schema=False)
    async def cog_update(secret: str, training_id: str, request: Request) -> dict:
        internal_training(secret, training_id)
        body = await request.json()
        changes: dict[str, Any] = {"logs": body.get("logs") or ""}
        if body.get("status") in ("succeeded", "failed", "canceled"):
            changes.update(cog_status=body["status"], cog_error=body.get("error"), cog_metrics=body.get("metrics") or {})
        service.store.update_training(training_id, **changes)
        return {}

    return app


async def _stream_to(request: Request, target: Path, limit: int, cleanup: Path | None) -> int:
    """Stream the request body to ``target`` (never whole in memory), enforcing ``limit``."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    size = 0
    try:
        with open(tmp, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _fail(413, f"upload is over the limit of {limit} bytes")
                out.write(chunk)
        tmp.replace(target)
        return size
    except BaseException:
        tmp.unlink(missing_ok=True)
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)
        raise
