"""Replicate's predictions and models routes, so that its official clients run dreambuild's
versions unmodified.

request → version (an id, ``owner/name:id``, ``owner/name`` for the latest, or a training whose
version it waits for) → the token may use that model (else it is not found) → input checked
against the version's Cog schema (422 naming the field; file inputs: this owner's files, or URLs
the egress policy allows) → a prediction record → a worker (:mod:`builder.service.predictions.predictor`)
→ ``Prefer: wait``: the answer once it ends, or ``starting`` when the wait runs out.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from builder.oci.references import is_model_name, normalize_digest
from builder.service.config import ALL_OWNERS
from builder.service.http.common import CheckedJSONRoute, Cursor, Limit, check_http_url, check_reachable, fail
from builder.service.http.deps import Owners, ServiceDep
from builder.service.predictions.predictor import waiting_on
from builder.service.predictions.record import new_prediction
from builder.service.schema import FINISHED, Page, Prediction, Status, WebhookEvent
from builder.service.state import Service
from builder.service.trainings.record import now_iso
from builder.service.trainings.schemas import file_inputs, input_problems

MAX_WAIT = 60
MAX_CANCEL_AFTER = 7 * 24 * 3600.0  # a week: longer than any prediction_timeout_minutes worth setting
# A wait ends this long before the time the client asked for, counted from the request's arrival:
# the official Python client reads for just 0.5 s more than the wait it asks (60.5 s for a bare
# ``Prefer: wait``), so on a loaded machine the answer could otherwise come after it gave up.
ANSWER_MARGIN = 5.0


class PredictionRequest(BaseModel):
    """Replicate's ``POST /v1/predictions`` body, and ChaosPixel's ``training`` instead of a version."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(None, description="A version id, owner/name:id, or owner/name (its latest version).")
    training: str | None = Field(None, description="A training id instead of a version: runs on its version once built.")
    input: dict[str, Any] = Field(default_factory=dict, description="The model's inputs.")
    webhook: str | None = Field(None, description="URL for webhooks.")
    webhook_completed: str | None = Field(None, description="Replicate's older name for webhook.")
    webhook_events_filter: list[WebhookEvent] | None = Field(None, description="Events to send (default: all).")
    stream: bool | None = Field(None, description="Accepted for the clients' sake; outputs are not streamed.")


class ModelPredictionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any] = Field(default_factory=dict)
    webhook: str | None = None
    webhook_completed: str | None = None
    webhook_events_filter: list[WebhookEvent] | None = None
    stream: bool | None = None


def parse_wait(prefer: str | None, wait: int | None = None) -> float | None:
    """Seconds to hold the request open: ``Prefer: wait`` (60) or ``wait=N`` (at most 60)."""
    if wait is not None:
        return float(max(1, min(wait, MAX_WAIT)))
    for part in (prefer or "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "wait":
            if not value:
                return float(MAX_WAIT)
            if not value.strip().isdigit():
                raise fail(422, f"Prefer: wait={value} must be a whole number of seconds")
            return float(max(1, min(int(value), MAX_WAIT)))
    return None


def parse_duration(text: str | None) -> float | None:
    """``Cancel-After``: seconds, or a duration such as ``90s``, ``5m``, ``1h30m``."""
    if not text:
        return None
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise fail(422, f"Cancel-After {text!r} is not a duration (such as 30s, 5m or 1h30m)")
        scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
        seconds = sum(float(n) * scale[u] for n, u in parts)
    if seconds < 5:
        raise fail(422, f"Cancel-After {text!r} is shorter than the minimum of 5 seconds")
    if not math.isfinite(seconds) or seconds > MAX_CANCEL_AFTER:
        raise fail(422, f"Cancel-After {text[:40]!r} is longer than the maximum of {MAX_CANCEL_AFTER // 3600:.0f} hours")
    return seconds


router = APIRouter(tags=["predictions"], route_class=CheckedJSONRoute)


def _find_version(service: Service, reference: str, token_owners: list[str]) -> dict:
    """The version a prediction names, if these owners may use it."""
    model, _, version_id = reference.partition(":")
    unknown = fail(422, f"version {reference!r} not found (or this token may not use it)")
    if "/" in model:
        if not is_model_name(model) or not service.may_use(token_owners, model.split("/")[0]):
            raise unknown
        owner, name = model.split("/")
        if not version_id:
            found = service.db.versions.latest(owner, name)
        else:
            digest = normalize_digest(version_id)
            found = service.db.versions.get(owner, name, digest) if digest else None
    else:
        digest = normalize_digest(reference)
        visible = [v for v in service.db.versions.with_id(digest) if service.may_use(token_owners, v["model"].split("/")[0])] if digest else []
        if len({v["model"] for v in visible}) > 1:  # images built before they named their model
            raise fail(
                422,
                f"version {reference!r} is in several of your models ({', '.join(sorted({v['model'] for v in visible}))}): "
                "name it as owner/name:version",
            )
        found = visible[0] if visible else None
    if found is None:
        raise unknown
    return found


def _check_input(service: Service, schema: dict | None, inputs: dict, token_owners: list[str]) -> None:
    if schema:
        problems = input_problems(schema, inputs)
        if problems:
            raise fail(422, "; ".join(problems))
    # Without a schema (a version built before schemas were recorded) any input may be a file.
    names = file_inputs(schema) & set(inputs) if schema else set(inputs)
    for name in sorted(names):
        values = inputs[name] if isinstance(inputs[name], list) else [inputs[name]]
        for value in values:
            _check_file_value(service, name, value, token_owners, required=bool(schema))


def _check_file_value(service: Service, name: str, value: object, token_owners: list[str], *, required: bool) -> None:
    """A file input: a data URL, a file of this token's owners, or a URL the egress policy allows."""
    if value is None or (isinstance(value, str) and value.startswith("data:")):
        return
    file_id = service.files.file_id_of(value) if isinstance(value, str) else None
    if file_id:
        if service.files.get(file_id, token_owners) is None:
            raise fail(422, f"input.{name}: file {file_id} not found")
        return
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        check_reachable(check_http_url(value, f"input.{name}"), f"input.{name}", service.config.egress)
    elif required:
        raise fail(422, f"input.{name} must be a file: an http(s) URL, a data URL, or a file uploaded to /v1/files")


def _check_webhook(service: Service, url: str | None) -> None:
    if url is not None:
        check_reachable(check_http_url(url, "webhook"), "webhook", service.config.egress)


def _record(service: Service, version_ref: str | None, training_id: str | None, body, token_owners: list[str], cancel_after: float | None) -> dict:
    """Check the request, record the prediction and hand it to a worker (database and
    schema work: run off the event loop)."""
    webhook = body.webhook or body.webhook_completed
    _check_webhook(service, webhook)
    if (version_ref is None) == (training_id is None):
        raise fail(422, "name either a version or a training")
    if training_id is not None:
        training = service.db.trainings.get(training_id)
        if training is None or not service.may_use(token_owners, training["owner"]):
            raise fail(422, f"training {training_id!r} not found")
        why = waiting_on({"training_id": training_id}, training)
        if why not in (None, "wait"):
            raise fail(422, f"cannot run on {why}")
        version = service.db.versions.get(*training["model"].split("/"), training["version"]) if why is None else None
        schema = (version or {}).get("openapi_schema") or service.template_schema(training["template_version"])
        model, version_id = training["model"], (version or {}).get("id")
    else:
        version = _find_version(service, version_ref, token_owners)
        schema, model, version_id = version.get("openapi_schema"), version["model"], version["id"]
    _check_input(service, schema, body.input, token_owners)
    events = body.webhook_events_filter or ([WebhookEvent.COMPLETED] if body.webhook_completed and not body.webhook else None)
    doc = new_prediction(
        owner=model.split("/")[0],
        model=model,
        version=version_id,
        input=body.input,
        training_id=training_id,
        webhook=webhook,
        events=events,
        cancel_after=cancel_after,
    )
    service.db.predictions.create(doc)
    service.dispatch.submit_prediction(doc)
    return doc


async def _create(
    service: Service, version_ref: str | None, training_id: str | None, body, request: Request, token_owners: list[str], wait: int | None
) -> Any:
    arrived = asyncio.get_running_loop().time()
    seconds = parse_wait(request.headers.get("prefer"), wait)
    cancel_after = parse_duration(request.headers.get("cancel-after"))
    doc = await run_in_threadpool(_record, service, version_ref, training_id, body, token_owners, cancel_after)
    if seconds:  # what is left of the wait once recorded (at least a second)
        seconds = max(1.0, arrived + seconds - ANSWER_MARGIN - asyncio.get_running_loop().time())
    if seconds and service.queue is None:  # embedded: woken when it ends, no thread held
        loop, ended = asyncio.get_running_loop(), asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(ended.set)

        service.predictor.on_finish(doc["id"], wake)
        try:
            doc = await run_in_threadpool(service.db.predictions.get, doc["id"])
            if doc["status"] not in FINISHED:
                try:
                    await asyncio.wait_for(ended.wait(), seconds)
                except TimeoutError:
                    pass
                doc = await run_in_threadpool(service.db.predictions.get, doc["id"])
        finally:
            service.predictor.forget(doc["id"], wake)
    elif seconds:
        deadline, pause = asyncio.get_running_loop().time() + seconds, 0.01
        while doc["status"] not in FINISHED and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(pause)
            pause = min(0.25, pause * 1.5)  # often at first: most predictions are short
            doc = await run_in_threadpool(service.db.predictions.get, doc["id"])
    if seconds and doc["status"] not in FINISHED:
        # What Replicate answers when the wait runs out: the clients then poll.
        doc = {**doc, "status": Status.STARTING}
    return service.predictor.public(doc)


@router.post("/v1/predictions", status_code=201, summary="Create a prediction (Replicate's route)", response_model=Prediction)
async def create_prediction(service: ServiceDep, token_owners: Owners, body: PredictionRequest, request: Request, wait: int | None = None) -> dict:
    return await _create(service, body.version, body.training, body, request, token_owners, wait)


@router.post(
    "/v1/models/{owner}/{name}/predictions", status_code=201, summary="Create a prediction on a model's latest version", response_model=Prediction
)
async def create_model_prediction(
    service: ServiceDep, token_owners: Owners, owner: str, name: str, body: ModelPredictionRequest, request: Request, wait: int | None = None
) -> dict:
    return await _create(service, f"{owner}/{name}", None, body, request, token_owners, wait)


def _prediction_for(service: Service, prediction_id: str, token_owners: list[str]) -> dict:
    doc = service.db.predictions.get(prediction_id)
    if doc is None or not service.may_use(token_owners, doc["owner"]):
        raise fail(404, f"prediction {prediction_id} not found")
    return doc


@router.get("/v1/predictions/{prediction_id}", summary="Get a prediction", response_model=Prediction)
def get_prediction(service: ServiceDep, token_owners: Owners, prediction_id: str) -> dict:
    return service.predictor.public(_prediction_for(service, prediction_id, token_owners))


@router.get("/v1/predictions", summary="List predictions, newest first (filter: model=owner/name, status)", response_model=Page[Prediction])
def list_predictions(
    service: ServiceDep, token_owners: Owners, cursor: Cursor = None, limit: Limit = 50, model: str | None = None, status: Status | None = None
) -> dict:
    limit = max(1, min(limit, 100))
    owners_filter = None if ALL_OWNERS in token_owners else token_owners
    page, after = service.db.predictions.page(owners_filter, model=model, status=status, before=cursor, limit=limit)
    query = "".join(f"&{k}={v}" for k, v in (("model", model), ("status", status)) if v)
    next_url = f"{service.config.base_url}/v1/predictions?cursor={after}&limit={limit}{query}" if after else None
    return {"previous": None, "next": next_url, "results": [service.predictor.public(d) for d in page]}


@router.post("/v1/predictions/{prediction_id}/cancel", summary="Cancel a prediction", response_model=Prediction)
def cancel_prediction(service: ServiceDep, token_owners: Owners, prediction_id: str) -> dict:
    doc = _prediction_for(service, prediction_id, token_owners)
    if doc["status"] not in FINISHED:
        changes: dict = {"cancel_requested": True}
        if doc["status"] == Status.STARTING and not doc.get("version"):  # waiting for its training: nothing runs
            changes.update(status=Status.CANCELED, completed_at=now_iso())
        doc = service.db.predictions.update(prediction_id, **changes)
    return service.predictor.public(doc)
