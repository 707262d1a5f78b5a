"""Prediction records (the ``predictions`` table): created by the API, advanced by the predictor.

Changed under the row's lock, as trainings are; listed by owner, model and status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from builder.service.predictions.record import PredictionRecord
from builder.service.schema import UNFINISHED, Status
from builder.service.store.tables import predictions

if TYPE_CHECKING:
    from builder.service.store.database import Database


class Predictions:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, doc: PredictionRecord) -> PredictionRecord:
        with self.db.transaction() as conn:
            conn.execute(predictions.insert().values(id=doc["id"], owner=doc["owner"], model=doc["model"], status=doc["status"], doc=doc))
        return doc

    def get(self, prediction_id: str) -> PredictionRecord | None:
        rows = self.db.read(select(predictions.c.doc).where(predictions.c.id == prediction_id))
        return rows[0][0] if rows else None

    def update(self, prediction_id: str, *, if_status: Status | None = None, **changes: Any) -> PredictionRecord:
        """Apply ``changes`` atomically (row-locked, as trainings); ``logs_append`` appends. With
        ``if_status``, only while the prediction has that status (else it is returned unchanged)."""
        with self.db.transaction() as conn:
            doc = conn.execute(select(predictions.c.doc).where(predictions.c.id == prediction_id).with_for_update()).scalar()
            if doc is None:
                raise KeyError(prediction_id)
            if if_status is not None and doc["status"] != if_status:
                return doc
            extra = changes.pop("logs_append", None)
            if extra:
                doc["logs"] = (doc.get("logs") or "") + extra
            doc.update(changes)
            conn.execute(predictions.update().where(predictions.c.id == prediction_id).values(status=doc["status"], model=doc["model"], doc=doc))
            return doc

    def page(
        self, owners: list[str] | None, *, model: str | None = None, status: str | None = None, before: int | None = None, limit: int = 50
    ) -> tuple[list[PredictionRecord], int | None]:
        """Newest first, as trainings' pages; optionally of one model (owner/name) or status."""
        if owners is not None and not owners:
            return [], None
        query = select(predictions.c.seq, predictions.c.doc).order_by(predictions.c.seq.desc()).limit(limit + 1)
        if owners is not None:
            query = query.where(predictions.c.owner.in_(owners))
        if model is not None:
            query = query.where(predictions.c.model == model)
        if status is not None:
            query = query.where(predictions.c.status == status)
        if before is not None:
            query = query.where(predictions.c.seq < before)
        rows = self.db.read(query)
        return [doc for _, doc in rows[:limit]], (rows[limit - 1][0] if len(rows) > limit else None)

    def count(self, model: str | None = None) -> dict[str, int]:
        """How many predictions are in each status (of one model, or all: metrics)."""
        query = select(predictions.c.status, func.count()).group_by(predictions.c.status)
        if model is not None:
            query = query.where(predictions.c.model == model)
        return {status: count for status, count in self.db.read(query)}

    def unfinished(self) -> list[PredictionRecord]:
        """Predictions to run again after a restart, oldest first."""
        rows = self.db.read(select(predictions.c.doc).where(predictions.c.status.in_(UNFINISHED)).order_by(predictions.c.seq))
        return [doc for (doc,) in rows]

    def waiting_for(self, training_id: str) -> list[PredictionRecord]:
        """Unfinished predictions queued on a training that has no version for them yet."""
        return [doc for doc in self.unfinished() if doc.get("training_id") == training_id and not doc.get("version")]
