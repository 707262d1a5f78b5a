"""Webhook deliveries as their own jobs, off the trainer's path: event → delivery record (its
webhook id, the payload of that moment) → scheduled attempt → record the outcome → next attempt
after a capped exponential backoff, until delivered or ``webhook_retry_hours`` have passed.

A stage only records a delivery and schedules it (``schedule(delivery_id, at)``: the embedded
scheduler's thread, or a queue job on the ``webhooks`` queue of the workers), so a receiver that
is down never holds a trainer. Re-running the stage that recorded it keeps the first record (same
id, same payload); every attempt sends the same webhook id, so receivers deduplicate. The
completed event's outcome is shown on the training (``webhook_delivery``), and it can be re-sent.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from builder.service.config import ServiceConfig
from builder.service.schema import DeliveryState, WebhookEvent
from builder.service.store.database import Database
from builder.service.trainings.record import TrainingRecord, now_iso, public_training
from builder.service.webhooks.attempt import attempt, backoff, new_secret, secret_setting

log = logging.getLogger(__name__)
Schedule = Callable[[str, float], None]  # (delivery id, epoch seconds to attempt it at)
# Events only best-effort: one attempt (a later logs event carries the logs again).
ONE_ATTEMPT = (WebhookEvent.LOGS,)


class Notifier:
    """Records webhook events of trainings and runs their attempts."""

    def __init__(self, config: ServiceConfig, db: Database, schedule: Schedule) -> None:
        self.config, self.db, self.schedule = config, db, schedule
        self.deliveries = db.deliveries

    def event(self, doc: TrainingRecord, event: str, webhook_id: str | None = None) -> dict | None:
        """Record and schedule ``event`` of the training, when it asked for that event."""
        if not self._wanted(doc.get("webhook"), doc.get("webhook_events_filter") or [WebhookEvent.COMPLETED], event):
            return None
        return self._record(doc, event, doc["webhook"], public_training(doc, self.config.base_url), webhook_id)

    def prediction_event(self, doc: dict, event: str, payload: dict, webhook_id: str | None = None) -> dict | None:
        """Record and schedule ``event`` of a prediction (``payload``: the prediction as the API
        shows it now), when it asked for that event."""
        if not self._wanted(doc.get("webhook"), doc.get("webhook_events_filter") or [], event):
            return None
        return self._record(doc, event, doc["webhook"], payload, webhook_id, kind="prediction")

    @staticmethod
    def _wanted(url: str | None, wanted: list[str], event: str) -> bool:
        return bool(url) and event in wanted

    def _record(self, doc: dict, event: str, url: str, payload: dict, webhook_id: str | None, kind: str = "training") -> dict:
        delivery = self.deliveries.add(
            {
                # training_id: the training's or prediction's id (the row's subject; deleted with it)
                "id": webhook_id or f"{doc['id']}-{event}",
                "training_id": doc["id"],
                "kind": kind,
                "owner": doc["owner"],
                "event": event,
                "url": url,
                "payload": payload,
                "status": DeliveryState.PENDING,
                "attempts": 0,
                "created_at": now_iso(),
                "first_attempt_at": None,
                "last_status": None,
                "last_error": None,
            },
            next_attempt_at=time.time(),
        )
        if delivery["status"] == DeliveryState.PENDING:
            self.schedule(delivery["id"], time.time())
        return delivery

    def attempt(self, delivery_id: str) -> dict | None:
        """One attempt of a pending delivery: record it, then schedule the next or end it."""
        delivery = self.deliveries.get(delivery_id)
        if delivery is None or delivery["status"] != DeliveryState.PENDING:
            return delivery  # delivered, given up, or deleted with its training: a late job does nothing
        secret = self.db.settings.get(secret_setting(delivery["owner"]), new_secret)  # the secret of now (rotations apply)
        result = attempt(delivery["url"], delivery["payload"], secret=secret, webhook_id=delivery["id"], policy=self.config.egress)
        now = time.time()
        first = delivery.get("first_attempt_at") or now
        attempts = delivery["attempts"] + 1
        delay = backoff(attempts, self.config.webhook_backoff, self.config.webhook_backoff_max)
        out_of_time = now + delay - first > self.config.webhook_retry_hours * 3600
        out_of_attempts = self.config.webhook_attempts is not None and attempts >= self.config.webhook_attempts
        if result.ok:
            status = DeliveryState.DELIVERED
        elif result.final or out_of_time or out_of_attempts or delivery["event"] in ONE_ATTEMPT:
            status = DeliveryState.FAILED
        else:
            status = DeliveryState.PENDING
        delivery = self.deliveries.update(
            delivery_id,
            next_attempt_at=now + delay,
            status=status,
            attempts=attempts,
            first_attempt_at=first,
            last_attempt_at=now_iso(),
            last_status=result.status,
            last_error=result.error,
        )
        if status == DeliveryState.PENDING:
            log.warning("webhook %s to %s failed (%s); attempt %d in %.1fs", delivery_id, delivery["url"], result.error, attempts + 1, delay)
            self.schedule(delivery_id, now + delay)
        if delivery["event"] == WebhookEvent.COMPLETED:
            self._show(delivery)
        return delivery

    def _show(self, delivery: dict) -> None:
        update = self.db.predictions.update if delivery.get("kind") == "prediction" else self.db.trainings.update
        try:
            update(delivery["training_id"], webhook_delivery=outcome(delivery))
        except KeyError:
            pass  # the training was deleted meanwhile

    def resend(self, doc: TrainingRecord) -> dict | None:
        """Send the training's completed webhook again (a fresh series of attempts, same id); None
        when it has none to send."""
        delivery = self.deliveries.get(f"{doc['id']}-completed")
        if delivery is None:
            return None
        delivery = self.deliveries.update(
            delivery["id"],
            next_attempt_at=time.time(),
            status=DeliveryState.PENDING,
            attempts=0,
            first_attempt_at=None,
            url=doc.get("webhook") or delivery["url"],
        )
        self._show(delivery)
        self.schedule(delivery["id"], time.time())
        return delivery

    def pending(self) -> list[tuple[str, float]]:
        return self.deliveries.pending()


def outcome(delivery: dict) -> dict:
    """How a delivery went, as the training shows it."""
    return {
        "ok": delivery["status"] == DeliveryState.DELIVERED,
        "state": delivery["status"],
        "attempts": delivery["attempts"],
        "status": delivery.get("last_status"),
        "error": delivery.get("last_error"),
        "webhook_id": delivery["id"],
        "last_attempt_at": delivery.get("last_attempt_at"),
    }


class LocalScheduler:
    """The embedded mode's delivery queue: attempts at their time on a few threads of this process
    (its state is the delivery records: pending ones are scheduled again at the next start)."""

    def __init__(self, threads: int = 4) -> None:
        self._heap: list[tuple[float, str]] = []
        self._wake = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhook")
        self._stopped = False
        self._run: Callable[[str], object] | None = None
        self._thread = threading.Thread(target=self._loop, name="webhook-scheduler", daemon=True)

    def start(self, run: Callable[[str], object]) -> None:
        self._run = run
        self._thread.start()

    def __call__(self, delivery_id: str, at: float) -> None:
        with self._wake:
            heapq.heappush(self._heap, (at, delivery_id))
            self._wake.notify()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.time()):
                    self._wake.wait(timeout=(self._heap[0][0] - time.time()) if self._heap else None)
                if self._stopped:
                    return
                _, delivery_id = heapq.heappop(self._heap)
            self._pool.submit(self._attempt, delivery_id)

    def _attempt(self, delivery_id: str) -> None:
        try:
            self._run(delivery_id)
        except Exception:  # the record stays pending: the next start schedules it again
            log.exception("webhook delivery %s failed", delivery_id)

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._pool.shutdown(wait=True, cancel_futures=True)
