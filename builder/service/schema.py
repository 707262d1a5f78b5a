"""The service's vocabulary, one name for each thing from the request to the webhook: the status
of a training or prediction (Replicate's), a training's stage, the webhook events and the state
of a webhook's delivery.

Each is a ``str``-valued Enum: stored, compared and sent as its value (``"succeeded"``), so
records and the wire keep the strings they always had, and a misspelled name fails at import.
"""

from __future__ import annotations

from enum import StrEnum


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
