"""Upload records (the ``uploads`` table): training inputs posted to ``/v1/uploads``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from builder.service.store.tables import uploads

if TYPE_CHECKING:
    from builder.service.store.database import Database


class Uploads:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, doc: dict[str, Any]) -> dict[str, Any]:
        with self.db.transaction() as conn:
            conn.execute(uploads.insert().values(id=doc["id"], owner=doc["owner"], doc=doc))
        return doc

    def get(self, upload_id: str) -> dict[str, Any] | None:
        rows = self.db.read(select(uploads.c.doc).where(uploads.c.id == upload_id))
        return rows[0][0] if rows else None

    def all(self) -> list[dict[str, Any]]:
        return [doc for (doc,) in self.db.read(select(uploads.c.doc))]

    def delete(self, upload_id: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(uploads.delete().where(uploads.c.id == upload_id))
