"""File records (the ``files`` table): what users upload for predictions (``POST /v1/files``)
and predictions' outputs; the bytes are the file store's (:mod:`builder.service.store.files`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from builder.service.store.tables import files

if TYPE_CHECKING:
    from builder.service.store.database import Database


class FileRecords:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, doc: dict[str, Any]) -> dict[str, Any]:
        with self.db.transaction() as conn:
            conn.execute(files.insert().values(id=doc["id"], owner=doc["owner"], created=time.time(), doc=doc))
        return doc

    def get(self, file_id: str) -> dict[str, Any] | None:
        rows = self.db.read(select(files.c.doc).where(files.c.id == file_id))
        return rows[0][0] if rows else None

    def recent(self, owners: list[str] | None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest first (``owners`` None: every owner's)."""
        query = select(files.c.doc).order_by(files.c.created.desc()).limit(limit)
        if owners is not None:
            query = query.where(files.c.owner.in_(owners))
        return [doc for (doc,) in self.db.read(query)]

    def before(self, epoch: float) -> list[dict[str, Any]]:
        """Files made before ``epoch`` (retention)."""
        return [doc for (doc,) in self.db.read(select(files.c.doc).where(files.c.created < epoch))]

    def delete(self, file_id: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(files.delete().where(files.c.id == file_id))
