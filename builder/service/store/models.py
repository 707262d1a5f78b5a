"""Model records (the ``models`` table): a model created by ``POST /v1/models`` (Replicate's
``models.create``), with its settings, before or beside its versions (``versions.py``). A model
that only ever received trainings has versions and no record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from builder.service.store.tables import models

if TYPE_CHECKING:
    from builder.service.store.database import Database


class Models:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, owner: str, name: str, doc: dict[str, Any]) -> bool:
        """Record a new model; False when ``owner/name`` already has a record (nothing changes)."""
        with self.db.transaction() as conn:
            seq = conn.execute(select(func.coalesce(func.max(models.c.seq), 0) + 1)).scalar_one()
            insert = self.db.insert(models).values(owner=owner, name=name, seq=seq, doc=doc).on_conflict_do_nothing()
            return conn.execute(insert.returning(models.c.name)).first() is not None  # a row only when inserted

    def get(self, owner: str, name: str) -> dict[str, Any] | None:
        rows = self.db.read(select(models.c.doc).where((models.c.owner == owner) & (models.c.name == name)))
        return rows[0][0] if rows else None

    def names(self, owners: list[str] | None) -> list[tuple[str, str]]:
        """(owner, name) of every recorded model, the most recently created first."""
        query = select(models.c.owner, models.c.name).order_by(models.c.seq.desc())
        if owners is not None:
            query = query.where(models.c.owner.in_(owners))
        return [(owner, name) for owner, name in self.db.read(query)]

    def delete(self, owner: str, name: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(models.delete().where((models.c.owner == owner) & (models.c.name == name)))
