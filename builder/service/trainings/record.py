"""The training record: its shape, its stages, and how the API and webhooks show it.

request → :func:`new_training` (stage ``queued``, status ``starting``) → ``training`` (status
``processing``) → ``building`` → ``webhook`` (status now one of :data:`FINISHED`) → ``done``.
The database keeps it as one JSON document; the pipeline moves it from stage to stage.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timezone
from typing import Any, NotRequired, TypedDict

from builder.service.schema import STAGES, DeliveryState, Stage, Status, WebhookEvent


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class WebhookDelivery(TypedDict):
    """How the completed webhook went (:func:`builder.service.webhooks.deliveries.outcome`)."""

    ok: bool
    state: DeliveryState
    attempts: int
    status: int | None
    error: str | None
    webhook_id: str
    last_attempt_at: str | None


class TrainingRecord(TypedDict):
    """A training as stored. The first keys are written at creation, the rest as it runs."""

    id: str
    owner: str
    model: str  # owner/name of the destination model
    status: Status
    stage: Stage
    input: dict[str, Any]  # the trainer's inputs
    trainer_version: str  # a key of the trainer catalog
    template_version: str  # a key of the template catalog
    template_image: NotRequired[str | None]  # that template, pinned, as the catalog named it at creation (what the build uses)
    notes: str | None
    webhook: str | None  # the request's webhook_completed (the seed's name) or webhook (Replicate's)
    webhook_events_filter: list[str]
    created_at: str
    logs: str
    metrics: dict[str, Any]
    secret: str  # addresses the internal routes for this training's Cog server
    stage_started: NotRequired[dict[str, float]]  # stage → epoch seconds it was (last) entered
    api: NotRequired[str]  # "replicate" for Replicate's model-scoped route
    trainer_model: NotRequired[str]  # owner/name of the trainer (Replicate's route)
    started_at: NotRequired[str]
    completed_at: NotRequired[str]
    error: NotRequired[str | None]
    cancel_requested: NotRequired[bool]
    runner_pid: NotRequired[int | None]  # the local runner's Cog server, killed if found stale (on runner_host)
    runner_host: NotRequired[str]
    worker: NotRequired[str]  # the worker that ran (or runs) its trainer
    cog_status: NotRequired[str | None]  # the trainer's prediction status, from Cog's webhook
    cog_error: NotRequired[str | None]
    cog_metrics: NotRequired[dict[str, Any]]
    weights: NotRequired[str | None]  # "output.zip" once received whole, in the API's file store
    version: NotRequired[str]  # the built image's digest: the new model version
    image: NotRequired[str]  # the pushed reference, pinned by that digest
    webhook_delivery: NotRequired[WebhookDelivery]


def new_training(
    *,
    model: str,
    input: dict[str, Any],
    trainer_version: str,
    template_version: str,
    notes: str | None,
    webhook: str | None,
    events: list[str] | None = None,
    template_image: str | None = None,
) -> TrainingRecord:
    """A new training record (queued) for a validated request."""
    return {
        "id": uuid.uuid4().hex[:26],
        "owner": model.split("/")[0],
        "model": model,
        "status": Status.STARTING,
        "stage": Stage.QUEUED,
        "input": input,
        "trainer_version": trainer_version,
        "template_version": template_version,
        "template_image": template_image,
        "notes": notes,
        "webhook": webhook,
        "webhook_events_filter": events or [WebhookEvent.COMPLETED],
        "created_at": now_iso(),
        "logs": "",
        "metrics": {},
        "secret": secrets.token_urlsafe(24),
    }


def stage_seconds(doc: TrainingRecord) -> dict[str, float]:
    """How long each finished stage took (a resumed stage counts from its last start)."""
    started = doc.get("stage_started") or {}
    reached = [stage for stage in STAGES if stage in started]
    return {first: round(started[second] - started[first], 3) for first, second in zip(reached, reached[1:])}


def public_training(doc: TrainingRecord, base_url: str) -> dict:
    """The training object as the API and webhooks show it (the seed's fields and Replicate's)."""
    weights = f"{base_url}/v1/trainings/{doc['id']}/weights" if doc.get("weights") else None
    replicate_style = doc.get("api") == "replicate"
    return {
        "id": doc["id"],
        "status": doc["status"],
        "stage": doc["stage"],
        "input": doc["input"],
        # Seed trainings name the destination model; Replicate's name the trainer's model.
        "model": doc.get("trainer_model") if replicate_style else doc["model"],
        "destination": doc["model"],
        "notes": doc.get("notes"),
        "trainer_version": doc["trainer_version"],
        "template_version": doc["template_version"],
        "webhook_completed": doc.get("webhook"),
        "created_at": doc["created_at"],
        "started_at": doc.get("started_at"),
        "completed_at": doc.get("completed_at"),
        "logs": doc.get("logs") or "",
        "error": doc.get("error"),
        "metrics": {**(doc.get("metrics") or {}), "stage_seconds": stage_seconds(doc)},
        # The seed's version is the new model version; Replicate's client requires a string here
        # and means the trainer version, which is also what a seed training shows until built.
        "version": doc["trainer_version"] if replicate_style else (doc.get("version") or doc["trainer_version"]),
        "model_version": doc.get("version"),
        "image": doc.get("image"),
        "webhook_delivery": doc.get("webhook_delivery"),  # how the completed webhook went (re-send: POST …/webhook)
        "output": {"version": f"{doc['model']}:{doc['version']}", "weights": weights} if doc.get("version") else None,
        "urls": {"get": f"{base_url}/v1/trainings/{doc['id']}", "cancel": f"{base_url}/v1/trainings/{doc['id']}/cancel"},
    }
