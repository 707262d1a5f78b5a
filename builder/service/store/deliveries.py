"""Webhook deliveries (the ``webhook_deliveries`` table): one row per event of a training, its
attempts recorded on it; :mod:`builder.service.webhooks.deliveries` sends them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from builder.service.schema import DeliveryState
from builder.service.store.tables import deliveries

if TYPE_CHECKING:
    from builder.service.store.database import Database


class Deliveries:
    """Webhook deliveries (``webhook_deliveries``): one row per event, attempts recorded on it."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, doc: dict[str, Any], next_attempt_at: float) -> dict[str, Any]:
        """Record a delivery once: the same webhook id again (a re-run stage) keeps the first."""
        with self.db.transaction() as conn:
            conn.execute(
                self.db.insert(deliveries)
                .values(id=doc["id"], training_id=doc["training_id"], status=doc["status"], next_attempt_at=next_attempt_at, doc=doc)
                .on_conflict_do_nothing()
            )
            return conn.execute(select(deliveries.c.doc).where(deliveries.c.id == doc["id"])).scalar_one()

    def get(self, delivery_id: str) -> dict[str, Any] | None:
        rows = self.db.read(select(deliveries.c.doc).where(deliveries.c.id == delivery_id))
        return rows[0][0] if rows else None

    def update(self, delivery_id: str, next_attempt_at: float | None = None, **changes: Any) -> dict[str, Any]:
        with self.db.transaction() as conn:
            doc = conn.execute(select(deliveries.c.doc).where(deliveries.c.id == delivery_id).with_for_update()).scalar()
            if doc is None:
                raise KeyError(delivery_id)
            doc.update(changes)
            values: dict[str, Any] = {"status": doc["status"], "doc": doc}
            if next_attempt_at is not None:
                values["next_attempt_at"] = next_attempt_at
            conn.execute(deliveries.update().where(deliveries.c.id == delivery_id).values(**values))
            return doc

    def for_training(self, training_id: str) -> list[dict[str, Any]]:
        rows = self.db.read(select(deliveries.c.doc).where(deliveries.c.training_id == training_id))
        return sorted((doc for (doc,) in rows), key=lambda d: d["created_at"])

    def pending(self) -> list[tuple[str, float]]:
        """Deliveries still to attempt, with when: (id, epoch seconds), soonest first."""
        rows = self.db.read(
            select(deliveries.c.id, deliveries.c.next_attempt_at)
            .where(deliveries.c.status == DeliveryState.PENDING)
            .order_by(deliveries.c.next_attempt_at)
        )
        return [(row[0], row[1]) for row in rows]

    def count(self) -> dict[str, int]:
        rows = self.db.read(select(deliveries.c.status, func.count()).group_by(deliveries.c.status))
        return {status: n for status, n in rows}
