"""Trainings, the Replicate Dreambooth API self-hosted: create (the seed's payload, or Replicate's
model-scoped route), get, list, cancel, events, weights, images, webhook again, delete.

request → token (its owners) → :func:`validate` (model name, catalog, inputs) → a training
record (:mod:`builder.service.trainings.record`) in the database → the worker. Every route needs
``Authorization: Bearer <token>``; a token may use only its owners' trainings and models
(another owner's are 404, creating into one is 403). A file input is an upload of the token's
owners (:mod:`builder.service.http.uploads`), one of their files, or a URL the egress policy allows.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from builder.oci.references import is_model_name
from builder.service.config import ALL_OWNERS
from builder.service.http.common import FILE_ANSWER, CheckedJSONRoute, Cursor, Limit, check_http_url, check_reachable, fail, user_content_headers
from builder.service.http.deps import Owners, ServiceDep
from builder.service.schema import FINISHED, UNFINISHED, Page, Stage, Status, Training, TrainingImages, WebhookEvent
from builder.service.state import Service
from builder.service.store.database import DatabaseUnavailable
from builder.service.store.files import FILENAME
from builder.service.store.retention import delete_training_files
from builder.service.trainings.previews import media_type, read_image, zip_images
from builder.service.trainings.record import TrainingRecord, new_training, now_iso, public_training
from builder.service.trainings.schemas import SchemaUnavailable, file_inputs, input_problems, missing_alternatives
from dreambuild.errors import InputError


class TrainingRequest(BaseModel):
    """The seed's payload, exactly."""

    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any] = Field(..., description="The trainer's inputs (instance_prompt, instance_data, ...).")
    trainer_version: str | None = Field(None, description="A trainer version from the catalog (default: its only trainer).")
    template_version: str | None = Field(
        None,
        description="A template version from the catalog (default: "
        "default_template_version, else the only template, else the one for what "
        "is trained: for a LoRA (lora_rank > 0) the template baking the trainer's "
        "base, else the vanilla template).",
    )
    model: str = Field(..., description="owner/name of the model to push the new version to.")
    notes: str | None = Field(None, description="Notes recorded on the new version.")
    webhook_completed: str | None = Field(None, description="URL to POST the training to when it ends.")


class ReplicateTrainingRequest(BaseModel):
    """Replicate's ``POST /v1/models/{owner}/{name}/versions/{id}/trainings`` body."""

    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any] = Field(..., description="The trainer's inputs.")
    destination: str = Field(..., description="owner/name of the model that receives the new version.")
    webhook: str | None = Field(None, description="URL for webhooks.")
    webhook_events_filter: list[WebhookEvent] | None = Field(None, description="Events to send (default: completed).")


def validate(service: Service, body: TrainingRequest, owners: list[str]) -> TrainingRequest:  # noqa: C901
    """Check a training request against the token, the catalog and the service's uploads; return
    it with the versions as the catalog writes them."""
    config = service.config
    if not is_model_name(body.model):
        raise fail(422, f"model {body.model!r} must be owner/name: lowercase letters and digits, with '.', '_' or '-' between them")
    owner = body.model.split("/")[0]
    if not service.may_use(owners, owner):
        raise fail(403, f"this token may not push to owner {owner!r}")
    trainer = config.catalog_key(config.trainers, body.trainer_version) if body.trainer_version else _default_trainer(config)
    if trainer is None:
        raise fail(422, f"unknown trainer_version {body.trainer_version!r}; known: {', '.join(config.trainers) or 'none'}")
    templates = config.template_catalog()
    if body.template_version:
        template = config.catalog_key(templates, body.template_version)
        if template is None:
            raise fail(422, f"unknown template_version {body.template_version!r}; known: {', '.join(templates) or 'none'}")
    else:
        template = default_template(config, trainer, body.input)
    if body.webhook_completed is not None:
        check_reachable(check_http_url(body.webhook_completed, "webhook_completed"), "webhook_completed", config.egress)
    try:
        schema = service.schemas.get(trainer)
    except SchemaUnavailable as exc:
        raise fail(503, f"{exc}; nothing was stored, try again when the trainer is reachable") from None
    problems = input_problems(schema, body.input) + missing_alternatives(schema, body.input)
    if problems:
        raise fail(422, "; ".join(problems))
    if config.trainers[trainer].trains_lora(body.input):
        _check_lora_template(config, trainer, template, body.input)
    inputs, files = dict(body.input), {}
    for name in sorted(file_inputs(schema) & set(inputs)):
        values = inputs[name] if isinstance(inputs[name], list) else [inputs[name]]
        for value in values:
            if value is not None and (file := _check_file_input(service, name, value, owners)):
                files[value] = file
    for name in files and sorted(file_inputs(schema) & set(inputs)):  # all checked: now link the files
        values = [
            _file_as_upload(service, files[v], owners) if v in files else v
            for v in (inputs[name] if isinstance(inputs[name], list) else [inputs[name]])
        ]
        inputs[name] = values if isinstance(inputs[name], list) else values[0]
    return body.model_copy(update={"trainer_version": trainer, "template_version": template, "input": inputs})


def _default_trainer(config) -> str:
    if len(config.trainers) == 1:
        return next(iter(config.trainers))
    names = ", ".join(f"{entry.name} ({version[:12]})" for version, entry in config.trainers.items()) or "none"
    raise fail(422, f"trainer_version is required: the catalog has several trainers or none ({names}); `dreambuild catalog` lists them")


def default_template(config, trainer: str, inputs: dict) -> str:
    """The template a training builds on when it names none: the configured default, the only
    one, or the one for what is trained (a LoRA: the template baking the trainer's base; a full
    fine-tune: vanilla). 422 saying how to add or name one otherwise."""
    templates = config.template_catalog()
    if config.default_template_version:
        chosen = config.catalog_key(templates, config.default_template_version)
        if chosen is None:
            raise fail(
                422, f"default_template_version {config.default_template_version!r} is not in the catalog (known: {', '.join(templates) or 'none'})"
            )
        return chosen
    if len(templates) == 1:
        return next(iter(templates))
    if config.trainers[trainer].trains_lora(inputs):
        base = config.trainers[trainer].base_of(inputs)
        fits = [v for v, entry in templates.items() if entry.base_digest and base in (None, entry.base_digest)]
    else:
        fits = [v for v, entry in templates.items() if entry.name == "vanilla"]
    if len(fits) == 1:
        return fits[0]
    if not templates:
        raise fail(
            422,
            "template_version: the catalog has no template to build on; add one with "
            "`dreambuild templates add vanilla` (README, 'The trainings service')",
        )
    names = ", ".join(f"{entry.name} ({version[:12]})" for version, entry in templates.items())
    raise fail(422, f"template_version is required: no single template fits this training among {names}")


def _check_lora_template(config, trainer: str, template: str, inputs: dict) -> None:
    """A LoRA training's output builds only on a template with its base baked in: refused before
    any work when the catalog says the template has no base, or another than the trainer's."""
    entry = config.template_catalog()[template]
    rank = inputs.get("lora_rank") or "(empty: 16 on a FLUX base)"
    if entry.base_digest is None:
        raise fail(
            422,
            f"input.lora_rank={rank} trains LoRA adapters, and template {entry.name!r} "
            "has no base baked in to apply them to (no base_digest in the catalog): use lora_rank 0, or a "
            "template with the trainer's base",
        )
    trained_on = config.trainers[trainer].base_of(inputs)
    if trained_on and not inputs.get("ckpt_base") and trained_on != entry.base_digest:
        named = f"base_model {inputs['base_model']!r}" if inputs.get("base_model") else "the trainer's base"
        raise fail(
            422,
            f"input.lora_rank={rank}: {named} is {trained_on}, and template "
            f"{entry.name!r} bakes {entry.base_digest}; a LoRA runs only on the base it was trained on",
        )


def _check_file_input(service: Service, name: str, value: object, owners: list[str]) -> dict | None:
    """A file input reaches the trainer only as an http(s) URL the egress policy allows, an
    upload URL of this service, or a file of this service (``/v1/files``: where Replicate's
    clients put a file handle), each only when the token's owners made it (never a path on the
    service's disk). Returns the file's record for the last case."""
    problem = f"input.{name} must be an http(s) URL, an upload URL or a file URL of this service"
    try:
        url = check_http_url(value, f"input.{name}")
    except HTTPException:
        raise fail(422, problem) from None
    if url.startswith(service.config.base_url + "/v1/uploads/"):
        if not service.upload_path(url, owners):
            raise fail(422, f"input.{name} {url!r} is not an upload of this token's owners")
    elif url.startswith(service.config.base_url + "/v1/files/"):
        file_id = service.files.file_id_of(url)
        doc = service.files.get(file_id, owners) if file_id else None
        if doc is None or not Path(doc["path"]).is_file():
            raise fail(422, f"input.{name} {url!r} is not a file of this token's owners")
        return doc
    else:
        check_reachable(url, f"input.{name}", service.config.egress)
    return None


def _file_as_upload(service: Service, doc: dict, owners: list[str]) -> str:
    """A file (``/v1/files``) handed to the trainer as an upload (a capability URL it reads
    without a token): hard-linked into the uploads, so neither expiry nor DELETE of one removes
    the other, and nothing goes over the network."""
    upload_id = secrets.token_urlsafe(24)
    folder = service.config.data_dir / "uploads" / upload_id
    folder.mkdir(parents=True)
    name = doc["name"] if FILENAME.fullmatch(doc["name"] or "") else "file"
    try:
        os.link(doc["path"], folder / name)
    except OSError:  # another filesystem
        shutil.copyfile(doc["path"], folder / name)
    service.db.uploads.add(
        {
            "id": upload_id,
            "owner": doc["owner"],
            "owners": owners,
            "name": name,
            "path": str(folder / name),
            "size": (folder / name).stat().st_size,
            "created_at": now_iso(),
        }
    )
    return f"{service.config.base_url}/v1/uploads/{upload_id}/{name}"


def _record(config, body: TrainingRequest, events: list[str] | None = None) -> TrainingRecord:
    template = config.template_catalog()[body.template_version].reference(body.template_version)
    return new_training(
        model=body.model,
        input=body.input,
        trainer_version=body.trainer_version,
        template_version=body.template_version,
        template_image=template,
        notes=body.notes,
        webhook=body.webhook_completed,
        events=events,
    )


EVENTS_POLL_SECONDS = 0.5  # how often a stream reads the record (one indexed row)
EVENTS_KEEPALIVE_SECONDS = 15.0


async def _training_stream(service: Service, training_id: str, request: Request) -> AsyncIterator[str]:
    """``event: training`` with the public record whenever it changes; a comment now and then so
    that proxies keep the connection; ends once the training is done (or deleted)."""
    last, quiet_since = None, time.monotonic()
    while not await request.is_disconnected():
        try:
            doc = await asyncio.to_thread(service.db.trainings.get, training_id)
        except DatabaseUnavailable as exc:  # a restart: the stream waits it out
            yield f"event: unavailable\ndata: {json.dumps(str(exc))}\n\n"
            await asyncio.sleep(2)
            continue
        if doc is None:
            return
        body = json.dumps(public_training(doc, service.config.base_url))
        if body != last:
            last, quiet_since = body, time.monotonic()
            yield f"event: training\ndata: {body}\n\n"
        elif time.monotonic() - quiet_since > EVENTS_KEEPALIVE_SECONDS:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        if doc["stage"] == Stage.DONE:
            return
        await asyncio.sleep(EVENTS_POLL_SECONDS)


def training_for(service: Service, training_id: str, owners: list[str]) -> TrainingRecord:
    """The training, if these owners may see it (else 404: others' trainings do not exist)."""
    doc = service.db.trainings.get(training_id)
    if doc is None or not service.may_use(owners, doc["owner"]):
        raise fail(404, f"training {training_id} not found")
    return doc


router = APIRouter(tags=["trainings"], route_class=CheckedJSONRoute)


@router.post("/v1/trainings", status_code=201, summary="Create a training (the seed's payload)", response_model=Training)
def create_training(service: ServiceDep, token_owners: Owners, body: TrainingRequest, request: Request) -> dict:
    doc = _record(service.config, validate(service, body, token_owners))
    service.db.trainings.create(doc)
    service.dispatch.submit_training(doc)
    return public_training(doc, service.config.base_url)


@router.post(
    "/v1/models/{owner}/{name}/versions/{version_id}/trainings",
    status_code=201,
    summary="Create a training (Replicate's route, as the replicate client calls it)",
    response_model=Training,
)
def create_replicate_training(
    service: ServiceDep, token_owners: Owners, owner: str, name: str, version_id: str, body: ReplicateTrainingRequest
) -> dict:
    seed = TrainingRequest(input=body.input, trainer_version=version_id, model=body.destination, webhook_completed=body.webhook)
    doc = _record(service.config, validate(service, seed, token_owners), events=body.webhook_events_filter or [WebhookEvent.COMPLETED])
    doc.update(api="replicate", trainer_model=f"{owner}/{name}")
    service.db.trainings.create(doc)
    service.dispatch.submit_training(doc)
    return public_training(doc, service.config.base_url)


@router.get("/v1/trainings/{training_id}", summary="Get a training", response_model=Training)
def get_training(service: ServiceDep, token_owners: Owners, training_id: str) -> dict:
    return public_training(training_for(service, training_id, token_owners), service.config.base_url)


@router.get("/v1/trainings", summary="List trainings, newest first", response_model=Page[Training])
def list_trainings(service: ServiceDep, token_owners: Owners, cursor: Cursor = None, limit: Limit = 50) -> dict:
    limit = max(1, min(limit, 100))
    owners_filter = None if ALL_OWNERS in token_owners else token_owners
    page, after = service.db.trainings.page(owners_filter, before=cursor, limit=limit)
    next_url = f"{service.config.base_url}/v1/trainings?cursor={after}&limit={limit}" if after else None
    return {"previous": None, "next": next_url, "results": [public_training(d, service.config.base_url) for d in page]}


@router.post("/v1/trainings/{training_id}/cancel", summary="Cancel a training", response_model=Training)
def cancel_training(service: ServiceDep, token_owners: Owners, training_id: str) -> dict:
    doc = training_for(service, training_id, token_owners)
    if doc["status"] in UNFINISHED:
        changes: dict = {"cancel_requested": True}
        if doc["stage"] == Stage.QUEUED:  # nothing runs yet: canceled now (the worker still sends its webhook)
            changes.update(status=Status.CANCELED, error="canceled", completed_at=now_iso())
        doc = service.db.trainings.update(training_id, **changes)
    return public_training(doc, service.config.base_url)


@router.post("/v1/trainings/{training_id}/webhook", summary="Send the finished training's completed webhook again", response_model=Training)
def resend_webhook(service: ServiceDep, token_owners: Owners, training_id: str) -> dict:
    doc = training_for(service, training_id, token_owners)
    if doc["stage"] != Stage.DONE:
        raise fail(409, f"training {training_id} has not ended: its completed webhook is not due yet")
    if service.notifier.resend(doc) is None:
        raise fail(
            409, f"training {training_id} has no completed webhook to send (it named no webhook_completed, or filtered the completed event out)"
        )
    return public_training(service.db.trainings.get(training_id), service.config.base_url)


@router.get("/v1/trainings/{training_id}/weights", summary="Download the training's output.zip", **FILE_ANSWER)
def training_weights(service: ServiceDep, token_owners: Owners, training_id: str) -> FileResponse:
    doc = training_for(service, training_id, token_owners)
    path = service.config.files / training_id / "output.zip"
    if not doc.get("weights") or not path.is_file():
        raise fail(404, f"training {training_id} has no weights")
    kind, headers = user_content_headers("application/zip", "output.zip")
    return FileResponse(path, media_type=kind, headers=headers)


def _images_zip(service: Service, doc: TrainingRecord, source: str, token_owners: list[str]) -> tuple[Path | None, str]:
    """The zip holding a training's images of ``source``, and the folder they are in."""
    if source == "photos":  # only an upload to this service (an outside URL is not fetched for a preview)
        photos = doc["input"].get("instance_data") or doc["input"].get("input_images")  # Replicate's FLUX trainer's name
        return service.upload_path(str(photos or ""), token_owners), ""
    path = service.config.files / doc["id"] / "output.zip"
    return (path if doc.get("weights") and path.is_file() else None), "samples/"


@router.get(
    "/v1/trainings/{training_id}/images/{source}",
    summary="List a training's images: its photos (instance_data or input_images uploaded here) or the samples in its output.zip",
    response_model=TrainingImages,
)
def training_images(service: ServiceDep, token_owners: Owners, training_id: str, source: Literal["photos", "samples"]) -> dict:
    doc = training_for(service, training_id, token_owners)
    path, under = _images_zip(service, doc, source, token_owners)
    try:
        names = zip_images(path, under) if path else []
    except InputError as exc:
        raise fail(422, str(exc)) from None
    base = f"{service.config.base_url}/v1/trainings/{training_id}/images/{source}/"
    return {"images": [{"name": name.removeprefix(under), "url": base + quote(name.removeprefix(under))} for name in names]}


@router.get("/v1/trainings/{training_id}/images/{source}/{name:path}", summary="One of a training's images (see the list)", **FILE_ANSWER)
def training_image(service: ServiceDep, token_owners: Owners, training_id: str, source: Literal["photos", "samples"], name: str) -> Response:
    doc = training_for(service, training_id, token_owners)
    path, under = _images_zip(service, doc, source, token_owners)
    try:
        data = read_image(path, under + name, under) if path else None
    except InputError as exc:
        raise fail(422, str(exc)) from None
    if data is None:
        raise fail(404, f"training {training_id} has no image {name!r} in its {source}")
    kind, headers = user_content_headers(media_type(name), Path(name).name)
    return Response(data, media_type=kind, headers={**headers, "Cache-Control": "private, max-age=3600"})


@router.delete("/v1/trainings/{training_id}", status_code=204, summary="Delete a finished training: its output.zip and its record")
def delete_training(service: ServiceDep, token_owners: Owners, training_id: str) -> None:
    doc = training_for(service, training_id, token_owners)
    if doc["status"] not in FINISHED or doc["stage"] != Stage.DONE:
        raise fail(409, f"training {training_id} has not ended: cancel it first")
    delete_training_files(service.config, service.db, doc)
    service.db.trainings.delete(training_id)


@router.get(
    "/v1/trainings/{training_id}/events",
    summary="The training each time it changes (server-sent events), until it is done",
    response_class=StreamingResponse,
)
async def training_events(service: ServiceDep, token_owners: Owners, training_id: str, request: Request) -> StreamingResponse:
    training_for(service, training_id, token_owners)  # 404 for another owner's, before the stream starts
    return StreamingResponse(
        _training_stream(service, training_id, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
