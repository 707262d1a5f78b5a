"""Training records (the ``trainings`` table): created by the API, advanced by the pipeline.

A change is a read-modify-write under the row's lock (``FOR UPDATE``; SQLite: ``BEGIN
IMMEDIATE``), so the API and any number of workers never lose each other's changes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from builder.service.schema import FINISHED, Stage
from builder.service.store.tables import deliveries, trainings
from builder.service.trainings.record import TrainingRecord

if TYPE_CHECKING:
    from builder.service.store.database import Database


class Trainings:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, doc: TrainingRecord) -> TrainingRecord:
        doc.setdefault("stage_started", {})[doc["stage"]] = time.time()
        with self.db.transaction() as conn:
            conn.execute(trainings.insert().values(id=doc["id"], owner=doc["owner"], status=doc["status"], doc=doc))
        return doc

    def get(self, training_id: str) -> TrainingRecord | None:
        rows = self.db.read(select(trainings.c.doc).where(trainings.c.id == training_id))
        return rows[0][0] if rows else None

    def update(self, training_id: str, **changes: Any) -> TrainingRecord:
        """Apply ``changes`` atomically; ``logs_append`` appends to the logs."""
        with self.db.transaction() as conn:
            doc = conn.execute(select(trainings.c.doc).where(trainings.c.id == training_id).with_for_update()).scalar()
            if doc is None:
                raise KeyError(training_id)
            extra = changes.pop("logs_append", None)
            if extra:
                doc["logs"] = (doc.get("logs") or "") + extra
            if "stage" in changes and changes["stage"] != doc.get("stage"):
                doc.setdefault("stage_started", {})[changes["stage"]] = time.time()
            doc.update(changes)
            conn.execute(trainings.update().where(trainings.c.id == training_id).values(status=doc["status"], doc=doc))
            return doc

    def page(self, owners: list[str] | None, *, before: int | None = None, limit: int = 50) -> tuple[list[TrainingRecord], int | None]:
        """Newest first (``owners`` None: every owner's); returns the page and the ``seq`` cursor
        for the next page (or None)."""
        if owners is not None and not owners:
            return [], None
        query = select(trainings.c.seq, trainings.c.doc).order_by(trainings.c.seq.desc()).limit(limit + 1)
        if owners is not None:
            query = query.where(trainings.c.owner.in_(owners))
        if before is not None:
            query = query.where(trainings.c.seq < before)
        rows = self.db.read(query)
        return [doc for _, doc in rows[:limit]], (rows[limit - 1][0] if len(rows) > limit else None)

    def unfinished(self) -> list[TrainingRecord]:
        """Trainings to resume after a restart, oldest first (including undelivered webhooks)."""
        rows = self.db.read(select(trainings.c.doc).order_by(trainings.c.seq))
        return [d for (d,) in rows if d["status"] not in FINISHED or d.get("stage") != Stage.DONE]

    def finished(self) -> list[TrainingRecord]:
        """Trainings that have ended and been delivered (retention looks at these)."""
        rows = self.db.read(select(trainings.c.doc).where(trainings.c.status.in_(FINISHED)))
        return [d for (d,) in rows if d.get("stage") == Stage.DONE]

    def count(self) -> dict[str, int]:
        """How many trainings are in each status (for metrics)."""
        rows = self.db.read(select(trainings.c.status, func.count()).group_by(trainings.c.status))
        return {status: count for status, count in rows}

    def delete(self, training_id: str) -> None:
        """The record and its webhook deliveries (their payloads are copies of it)."""
        with self.db.transaction() as conn:
            conn.execute(deliveries.delete().where(deliveries.c.training_id == training_id))
            conn.execute(trainings.delete().where(trainings.c.id == training_id))
