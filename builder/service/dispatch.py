"""Where recorded work goes: one interface, two implementations. Embedded (``dreambuild serve``
alone): thread pools of this process and a local delivery scheduler. Many machines: procrastinate
jobs in PostgreSQL (:mod:`builder.service.workers.jobs`), run by ``dreambuild worker``.

record → :meth:`Dispatcher.submit_training` / :meth:`~Dispatcher.submit_prediction` → a
pipeline or predictor of a :class:`~builder.service.runtime.Runtime` runs it; a webhook attempt →
:meth:`~Dispatcher.schedule_delivery`; a training's end → :meth:`~Dispatcher.training_ended`
(the predictions queued on it run). Submitting is safe to repeat: the record is the state, a
training's jobs hold its lock, and what a process left unfinished is submitted again at the next
start (embedded) or by the workers' reconcile job.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from builder.service.config import ServiceConfig
from builder.service.predictions.predictor import PredictionPool
from builder.service.predictions.record import PredictionRecord
from builder.service.store.database import Database
from builder.service.trainings.pipeline import TrainingPool
from builder.service.trainings.record import TrainingRecord
from builder.service.webhooks.deliveries import LocalScheduler

if TYPE_CHECKING:
    from builder.service.runtime import Runtime

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def submit_training(self, doc: TrainingRecord) -> None: ...

    def submit_prediction(self, doc: PredictionRecord) -> None: ...

    def schedule_delivery(self, delivery_id: str, at: float) -> None: ...

    def training_ended(self, training_id: str) -> None: ...

    def bind(self, runtime: Runtime) -> None:
        """Run work on ``runtime`` (the one built with this dispatcher's schedule)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class EmbeddedDispatcher:
    """Everything in this process: trainings (``max_concurrent``) and predictions
    (``max_concurrent_predictions``) on thread pools, webhook attempts at their time."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.scheduler = LocalScheduler()
        self.trainings: TrainingPool | None = None
        self.predictions: PredictionPool | None = None
        self.runtime: Runtime | None = None

    def bind(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.trainings = TrainingPool(runtime.pipeline, self.config.max_concurrent)
        self.predictions = PredictionPool(runtime.predictor, self.config.max_concurrent_predictions)
        runtime.pipeline.on_training_end = self.training_ended

    def submit_training(self, doc: TrainingRecord) -> None:
        self.trainings.submit(doc["id"])

    def submit_prediction(self, doc: PredictionRecord) -> None:
        self.predictions.submit(doc["id"])

    def schedule_delivery(self, delivery_id: str, at: float) -> None:
        self.scheduler(delivery_id, at)

    def training_ended(self, training_id: str) -> None:
        self.predictions.training_ended(training_id)

    def start(self) -> None:
        """Resume what the last process left: pending deliveries, trainings, predictions."""
        self.scheduler.start(self.runtime.notifier.attempt)
        for delivery_id, at in self.runtime.notifier.pending():
            self.scheduler(delivery_id, at)
        resumed = self.trainings.resume()
        if resumed:
            log.warning("resuming %d unfinished training(s): %s", len(resumed), ", ".join(resumed))
        resumed = self.predictions.resume()
        if resumed:
            log.warning("resuming %d unfinished prediction(s): %s", len(resumed), ", ".join(resumed))

    def stop(self) -> None:
        """Trainings stop where they are; running predictions get their grace (both resume at the
        next start); then the delivery scheduler stops (pending ones are scheduled again then)."""
        self.runtime.predictor.stop(self.config.shutdown_grace_seconds)  # their grace runs while trainings stop
        self.trainings.shutdown()
        self.predictions.shutdown()
        self.scheduler.stop()


class QueueDispatcher:
    """Jobs on the queue of many machines. The API defers them right after recording; a deferral
    that fails is not an error for the request (the workers' reconcile job queues what has no
    job), as a second record would be."""

    def __init__(self, app, db: Database) -> None:
        self.app, self.db = app, db

    def bind(self, runtime: Runtime) -> None:
        runtime.pipeline.on_training_end = self.training_ended

    def submit_training(self, doc: TrainingRecord) -> None:
        from builder.service.workers.jobs import defer_stage

        try:
            defer_stage(self.app, doc)
        except Exception as exc:  # recorded already: the workers' reconcile job queues it (an error would invite a duplicate)
            log.warning("training %s recorded but not queued (%s: %s): the workers queue it shortly", doc["id"], type(exc).__name__, exc)

    def submit_prediction(self, doc: PredictionRecord) -> None:
        from builder.service.workers.jobs import defer_prediction

        try:
            defer_prediction(self.app, doc, self.db)
        except Exception as exc:  # recorded already: the workers' reconcile job queues it
            log.warning("prediction %s recorded but not queued (%s: %s): the workers queue it shortly", doc["id"], type(exc).__name__, exc)

    def schedule_delivery(self, delivery_id: str, at: float) -> None:
        from builder.service.workers.jobs import defer_delivery

        defer_delivery(self.app, delivery_id, at)

    def training_ended(self, training_id: str) -> None:
        """Queue the predictions that waited for this training (where their version is warm)."""
        from builder.service.workers.jobs import defer_prediction

        for doc in self.db.predictions.waiting_for(training_id):
            defer_prediction(self.app, doc, self.db)

    def start(self) -> None:
        pass  # the workers resume what is unfinished (reconcile)

    def stop(self) -> None:
        pass  # the queue is its opener's to close
