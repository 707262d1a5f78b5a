"""The service's vocabulary, one name for each thing from the request to the webhook: the status
of a training or prediction (Replicate's), a training's stage, the webhook events, the state of a
webhook's delivery — and the public shapes the API answers with (the routers' ``response_model``s,
so ``/docs`` shows them and an answer that strays from its shape fails loudly, not at a client).

Each value is a ``str``-valued Enum: stored, compared and sent as its value (``"succeeded"``), so
records and the wire keep the strings they always had, and a misspelled name fails at import.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field


class Status(StrEnum):
    """A training's or prediction's status, as Replicate names them."""

    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELED)
UNFINISHED = (Status.STARTING, Status.PROCESSING)


class Stage(StrEnum):
    """A training's stage in the durable pipeline (:mod:`builder.service.trainings.pipeline`), in order."""

    QUEUED = "queued"
    TRAINING = "training"
    BUILDING = "building"
    WEBHOOK = "webhook"
    DONE = "done"


STAGES = tuple(Stage)


class WebhookEvent(StrEnum):
    """What a webhook reports (Replicate's ``webhook_events_filter`` values)."""

    START = "start"
    OUTPUT = "output"
    LOGS = "logs"
    COMPLETED = "completed"


EVENTS = tuple(WebhookEvent)


class DeliveryState(StrEnum):
    """Where a webhook's delivery stands (:mod:`builder.service.webhooks.deliveries`)."""

    PENDING = "pending"  # to be attempted (again)
    DELIVERED = "delivered"
    FAILED = "failed"  # given up: the receiver refused it for good, or its time or attempts ran out


# --- public shapes (what the routes answer; records become these in their public_* functions) ---


class Urls(BaseModel):
    get: str
    cancel: str


class WebhookDelivery(BaseModel):
    """How a training's completed webhook went (re-send: ``POST /v1/trainings/{id}/webhook``)."""

    ok: bool
    state: DeliveryState
    attempts: int
    status: int | None = Field(description="The receiver's last HTTP status")
    error: str | None
    webhook_id: str = Field(description="The webhook-id header, the same on every attempt")
    last_attempt_at: str | None


class TrainingOutput(BaseModel):
    version: str = Field(description="owner/name:version of the model version built")
    weights: str | None = Field(description="output.zip (GET with the token)")


class Training(BaseModel):
    """A training: the seed's fields and Replicate's."""

    id: str
    status: Status
    stage: Stage
    input: dict[str, Any]
    model: str | None = Field(description="The destination model (seed route) or the trainer's model (Replicate's route)")
    destination: str
    notes: str | None
    trainer_version: str
    template_version: str
    webhook_completed: str | None
    created_at: str
    started_at: str | None
    completed_at: str | None
    logs: str
    error: str | None
    metrics: dict[str, Any]
    version: str = Field(description="The new model version once built (seed route); the trainer version (Replicate's route)")
    model_version: str | None
    image: str | None = Field(description="The pushed image, pinned by digest")
    webhook_delivery: WebhookDelivery | None
    output: TrainingOutput | None
    urls: Urls


class Prediction(BaseModel):
    """A prediction, as Replicate's clients read it (files as signed, expiring URLs)."""

    id: str
    model: str
    version: str
    training: str | None = Field(description="The training whose new version it runs, if it named one")
    input: dict[str, Any]
    output: Any
    logs: str
    error: str | None
    status: Status
    source: Literal["api"]
    data_removed: bool
    created_at: str
    started_at: str | None
    completed_at: str | None
    metrics: dict[str, Any]
    urls: Urls


class Version(BaseModel):
    """A model version: a built image (its id is the image's digest)."""

    id: str
    model: str | None
    image: str | None
    notes: str | None
    training_id: str | None
    trainer_version: str | None
    template_version: str | None
    created_at: str | None
    openapi_schema: dict[str, Any] = Field(description="The model's Cog schema (its inputs and output)")
    cog_version: str


class Visibility(StrEnum):
    """Who may see a model on Replicate; recorded and shown here, where only its owner's tokens reach it."""

    PUBLIC = "public"
    PRIVATE = "private"


class ModelCreate(BaseModel):
    """Replicate's ``POST /v1/models`` body (``replicate.models.create``)."""

    model_config = ConfigDict(extra="forbid")

    owner: str = Field(..., description="One of this token's owners.")
    name: str = Field(..., description="Lowercase letters and digits, with '.', '_' or '-' between them.")
    visibility: Visibility
    hardware: str = Field(
        ..., max_length=100, description="Replicate's hardware SKU (e.g. gpu-t4): recorded; dreambuild's workers decide where a model runs."
    )
    description: str | None = Field(None, max_length=10_000)
    github_url: str | None = Field(None, max_length=2048)
    paper_url: str | None = Field(None, max_length=2048)
    license_url: str | None = Field(None, max_length=2048)
    cover_image_url: str | None = Field(None, max_length=2048)


class Model(BaseModel):
    """A model, with Replicate's fields (those dreambuild has no use for are null): one created by
    ``POST /v1/models`` keeps what it was created with; one made by a training is private."""

    url: str
    owner: str
    name: str
    description: str | None
    visibility: Visibility
    hardware: str | None
    github_url: str | None
    paper_url: str | None
    license_url: str | None
    cover_image_url: str | None
    default_example: Any
    run_count: int
    latest_version: Version | None


class FileUrls(BaseModel):
    get: str


class File(BaseModel):
    """A file uploaded for a prediction's input, or a prediction's output (Replicate's file object)."""

    id: str
    name: str
    content_type: str
    size: int
    etag: str
    checksums: dict[str, str]
    metadata: dict[str, Any]
    created_at: str
    expires_at: str | None
    urls: FileUrls


class Upload(BaseModel):
    """A training's input file; its URL is an unguessable capability URL (no token needed)."""

    id: str
    name: str
    size: int
    url: str


class TrainingImage(BaseModel):
    name: str
    url: str


class TrainingImages(BaseModel):
    images: list[TrainingImage]


class CatalogTrainer(BaseModel):
    version: str
    name: str
    runner: str
    base_digest: str | None
    base_digests: dict[str, str] = Field(default_factory=dict, description="The bases it bakes by name (its base_model input) and their digests")


class CatalogTemplate(BaseModel):
    version: str
    name: str
    base_digest: str | None = Field(description="The base model it bakes (a LoRA version needs one)")
    builds: list[Literal["full", "lora"]]


class Catalog(BaseModel):
    trainers: list[CatalogTrainer]
    templates: list[CatalogTemplate]


class WebhookSecret(BaseModel):
    key: str = Field(description="whsec_…: verifies the webhook-signature header (Standard Webhooks)")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list, newest first; ``next`` is the next page's URL."""

    previous: str | None
    next: str | None
    results: list[T]
