"""Routes for the trainer's Cog server and the workers, not for users: Cog's webhook (logs,
status), its output upload (``--upload-url``), the inputs fetched for it, and output.zip for the
build. Workers share no disk with the API: every file moves through these routes. They are
addressed by a per-training secret in the path instead of an API token, and are left out of the
OpenAPI document.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from builder.service.http.common import fail, stream_to
from builder.service.http.deps import ServiceDep
from builder.service.schema import FINISHED, Stage, Status
from builder.service.state import Service
from builder.service.store.database import DatabaseUnavailable
from builder.service.store.files import FILENAME
from builder.service.trainings.record import TrainingRecord

DATABASE_WAIT_SECONDS = 60  # a trainer's callback waits out a database restart this long


async def _through_outage(call, *args, **kwargs):
    """``call`` (a database operation), retried while the database restarts: a trainer finishing
    during an outage keeps its output and its end instead of failing (its upload or webhook would
    otherwise get a 503). Awaits between attempts, so other requests go on."""
    deadline = time.monotonic() + DATABASE_WAIT_SECONDS
    while True:
        try:
            return call(*args, **kwargs)
        except DatabaseUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


router = APIRouter(include_in_schema=False)


def _training_for(service: Service, secret: str, training_id: str) -> TrainingRecord:
    doc = service.db.trainings.get(training_id)
    if doc is None or not secrets.compare_digest(doc.get("secret", ""), secret):
        raise fail(404, "not found")
    return doc


async def _receive_output(service: Service, training_id: str, filename: str, request: Request) -> JSONResponse:
    if not FILENAME.fullmatch(filename):
        raise fail(422, "bad file name")
    folder = service.config.files / training_id
    folder.mkdir(parents=True, exist_ok=True)
    await stream_to(request, folder / filename, service.config.max_output_bytes, None)
    if filename == "output.zip":  # complete: the pipeline builds from it
        await _through_outage(service.db.trainings.update, training_id, weights=filename)
    location = f"{service.config.base_url}/v1/trainings/{training_id}/weights"
    return JSONResponse({}, status_code=201, headers={"Location": location})


@router.put("/internal/{secret}/files/{filename}")
async def receive_shared_output(service: ServiceDep, secret: str, filename: str, request: Request) -> JSONResponse:
    """cog-http trainers: one upload URL for all trainings, told apart by X-Prediction-Id."""
    if not secrets.compare_digest(secret, service.upload_secret):
        raise fail(404, "not found")
    training_id = request.headers.get("x-prediction-id", "")
    doc = service.db.trainings.get(training_id)
    entry = service.config.trainers.get(doc["trainer_version"]) if doc else None
    # Only a training that a cog-http trainer is running now, and only once: whoever holds
    # this URL cannot replace another training's finished output.
    if doc is None or entry is None or entry.runner != "cog-http" or doc["stage"] != Stage.TRAINING:
        raise fail(404, "unknown prediction id")
    if filename == "output.zip" and doc.get("weights"):
        raise fail(409, f"{filename} of this training was already received")
    return await _receive_output(service, training_id, filename, request)


@router.put("/internal/{secret}/files/{training_id}/{filename}")
async def receive_training_output(service: ServiceDep, secret: str, training_id: str, filename: str, request: Request) -> JSONResponse:
    await _through_outage(_training_for, service, secret, training_id)
    return await _receive_output(service, training_id, filename, request)


@router.get("/internal/{secret}/files/{training_id}/{filename}")
def send_output(service: ServiceDep, secret: str, training_id: str, filename: str) -> FileResponse:
    """The trainer's output, for the worker that builds it (workers share no disk with the API)."""
    _training_for(service, secret, training_id)
    path = service.config.files / training_id / filename
    if not FILENAME.fullmatch(filename) or not path.is_file():
        raise fail(404, "not found")
    return FileResponse(path)


@router.put("/internal/{secret}/inputs/{training_id}/{folder}/{filename}", status_code=201)
async def receive_input(service: ServiceDep, secret: str, training_id: str, folder: str, filename: str, request: Request) -> dict:
    """A file input a worker fetched for this training, kept here for its trainer."""
    _training_for(service, secret, training_id)
    if not FILENAME.fullmatch(folder) or not FILENAME.fullmatch(filename):
        raise fail(422, "bad file name")
    target = service.config.files / training_id / "inputs" / folder / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    await stream_to(request, target, service.config.max_upload_bytes, None)
    return {}


@router.delete("/internal/{secret}/inputs/{training_id}", status_code=204)
def delete_inputs(service: ServiceDep, secret: str, training_id: str) -> None:
    _training_for(service, secret, training_id)
    shutil.rmtree(service.config.files / training_id / "inputs", ignore_errors=True)


@router.get("/internal/{secret}/inputs/{training_id}/{folder}/{filename}")
def send_input(service: ServiceDep, secret: str, training_id: str, folder: str, filename: str) -> FileResponse:
    """A file input the service fetched for this training, for its trainer."""
    _training_for(service, secret, training_id)
    if not FILENAME.fullmatch(folder) or not FILENAME.fullmatch(filename):
        raise fail(404, "not found")
    path = service.config.files / training_id / "inputs" / folder / filename
    if not path.is_file():
        raise fail(404, "not found")
    return FileResponse(path)


@router.put("/internal/{secret}/predictions/{prediction_id}/outputs/{filename}", status_code=201)
async def receive_prediction_output(service: ServiceDep, secret: str, prediction_id: str, filename: str, request: Request) -> dict:
    """An output file of a prediction a worker runs, stored as a file of the prediction's owner."""
    doc = service.db.predictions.get(prediction_id)
    if doc is None or not secrets.compare_digest(doc.get("secret", ""), secret) or doc["status"] != Status.PROCESSING:
        raise fail(404, "not found")
    if not FILENAME.fullmatch(filename):
        raise fail(422, "bad file name")
    with tempfile.TemporaryDirectory(prefix="dreambuild-output-") as scratch:
        received = Path(scratch) / filename
        await stream_to(request, received, service.config.max_output_bytes, None)

        def copy(handle) -> None:
            with open(received, "rb") as source:
                shutil.copyfileobj(source, handle)

        saved = service.files.add(
            doc["owner"], filename, request.headers.get("content-type") or "application/octet-stream", copy, prediction_id=prediction_id
        )
    return {"id": saved["id"]}


@router.post("/internal/{secret}/predictions/{prediction_id}/cog")
async def cog_prediction_update(service: ServiceDep, secret: str, prediction_id: str, request: Request) -> dict:
    """Cog's webhook for a prediction a worker runs: its logs (its end comes back to the worker
    on the prediction's own request)."""
    doc = service.db.predictions.get(prediction_id)
    if doc is None or not secrets.compare_digest(doc.get("secret", ""), secret) or doc["status"] != Status.PROCESSING:
        raise fail(404, "not found")
    body = await request.json()
    # Only while it runs: a late webhook must not overwrite the logs its end recorded.
    service.db.predictions.update(prediction_id, if_status=Status.PROCESSING, logs=body.get("logs") or "")
    service.predictor.notify(prediction_id)
    return {}


@router.post("/internal/{secret}/cog/{training_id}")
async def cog_update(service: ServiceDep, secret: str, training_id: str, request: Request) -> dict:
    await _through_outage(_training_for, service, secret, training_id)
    body = await request.json()
    changes: dict[str, Any] = {"logs": body.get("logs") or ""}
    if body.get("status") in FINISHED:
        changes.update(cog_status=body["status"], cog_error=body.get("error"), cog_metrics=body.get("metrics") or {})
    await _through_outage(service.db.trainings.update, training_id, **changes)
    return {}
