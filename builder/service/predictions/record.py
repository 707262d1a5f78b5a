"""The prediction record: its shape, and how the API and webhooks show it (Replicate's prediction).

request → :func:`new_prediction` (status ``starting``; waiting for its training's version when it
names a training) → a worker: ``processing`` (its model's Cog server warm, or started) → one of
:data:`~builder.service.trainings.record.FINISHED`. Outputs are files of the service
(:mod:`builder.service.store.files`), kept in the record as ``dreambuild-file:<id>`` and shown as signed,
expiring download URLs, which work without the API token.
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any, Callable, NotRequired, TypedDict

from builder.service.schema import EVENTS, Status, WebhookEvent
from builder.service.trainings.record import now_iso

FILE_REF = "dreambuild-file:"


class PredictionRecord(TypedDict):
    """A prediction as stored. The first keys are written at creation, the rest as it runs."""

    id: str
    owner: str
    model: str  # owner/name
    version: str | None  # None while it waits for its training's new version
    training_id: str | None  # the training whose version it runs (queued on a training)
    input: dict[str, Any]  # files as dreambuild-file:<id>, or URLs fetched under the egress policy
    status: Status
    output: Any  # Cog's output, files as dreambuild-file:<id>
    logs: str
    error: str | None
    metrics: dict[str, Any]
    created_at: str
    created: float  # epoch seconds (queue_time)
    started_at: str | None
    completed_at: str | None
    webhook: str | None
    webhook_events_filter: list[WebhookEvent]
    cancel_at: float | None  # Cancel-After, as epoch seconds
    secret: str  # addresses the internal routes of its worker's Cog server and outputs
    cancel_requested: NotRequired[bool]
    worker: NotRequired[str | None]  # the worker that runs (or ran) it
    data_removed: NotRequired[bool]  # its files expired or were deleted


def new_prediction(
    *,
    owner: str,
    model: str,
    version: str | None,
    input: dict[str, Any],
    training_id: str | None = None,
    webhook: str | None = None,
    events: list[str] | None = None,
    cancel_after: float | None = None,
) -> PredictionRecord:
    """A new prediction record (status ``starting``) for a validated request."""
    return {
        "id": uuid.uuid4().hex[:26],
        "owner": owner,
        "model": model,
        "version": version,
        "training_id": training_id,
        "input": input,
        "status": Status.STARTING,
        "output": None,
        "logs": "",
        "error": None,
        "metrics": {},
        "created_at": now_iso(),
        "created": time.time(),
        "started_at": None,
        "completed_at": None,
        "webhook": webhook,
        "webhook_events_filter": list(events or EVENTS),
        "cancel_at": time.time() + cancel_after if cancel_after else None,
        "secret": secrets.token_urlsafe(24),  # addresses the internal route a worker sends its outputs to
    }


def map_files(value: Any, change: Callable[[str], Any]) -> Any:
    """``value`` with every ``dreambuild-file:<id>`` string replaced by ``change(id)``."""
    if isinstance(value, dict):
        return {k: map_files(v, change) for k, v in value.items()}
    if isinstance(value, list):
        return [map_files(v, change) for v in value]
    if isinstance(value, str) and value.startswith(FILE_REF):
        return change(value[len(FILE_REF) :])
    return value


def public_prediction(doc: PredictionRecord, base_url: str, file_url: Callable[[str], str]) -> dict:
    """The prediction object as the API and webhooks show it (the fields Replicate's clients read)."""
    return {
        "id": doc["id"],
        "model": doc["model"],
        "version": doc.get("version") or "",
        "training": doc.get("training_id"),
        "input": doc["input"],
        "output": map_files(doc.get("output"), file_url),
        "logs": doc.get("logs") or "",
        "error": doc.get("error"),
        "status": doc["status"],
        "source": "api",
        "data_removed": bool(doc.get("data_removed")),
        "created_at": doc["created_at"],
        "started_at": doc.get("started_at"),
        "completed_at": doc.get("completed_at"),
        "metrics": doc.get("metrics") or {},
        "urls": {"get": f"{base_url}/v1/predictions/{doc['id']}", "cancel": f"{base_url}/v1/predictions/{doc['id']}/cancel"},
    }
