"""Model versions (the ``versions`` table): one row per built image of a model, keyed by
(owner, name, id) — a version id is unique within a model, not across models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from builder.service.store.tables import versions

if TYPE_CHECKING:
    from builder.service.store.database import Database


class Versions:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, owner: str, name: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Record a built version once: a re-run of the same build keeps the first record."""
        key = (versions.c.owner == owner) & (versions.c.name == name) & (versions.c.id == doc["id"])
        with self.db.transaction() as conn:
            seq = conn.execute(select(func.coalesce(func.max(versions.c.seq), 0) + 1)).scalar_one()
            conn.execute(self.db.insert(versions).values(owner=owner, name=name, id=doc["id"], seq=seq, doc=doc).on_conflict_do_nothing())
            return conn.execute(select(versions.c.doc).where(key)).scalar_one()

    def of_model(self, owner: str, name: str) -> list[dict[str, Any]]:
        """A model's versions, the newest first."""
        rows = self.db.read(select(versions.c.doc).where((versions.c.owner == owner) & (versions.c.name == name)).order_by(versions.c.seq.desc()))
        return [doc for (doc,) in rows]

    def latest(self, owner: str, name: str) -> dict[str, Any] | None:
        found = self.of_model(owner, name)
        return found[0] if found else None

    def get(self, owner: str, name: str, version_id: str) -> dict[str, Any] | None:
        rows = self.db.read(select(versions.c.doc).where((versions.c.owner == owner) & (versions.c.name == name) & (versions.c.id == version_id)))
        return rows[0][0] if rows else None

    def with_id(self, version_id: str) -> list[dict[str, Any]]:
        """Every model's version with this id (a digest: the same image pushed to several models)."""
        return [doc for (doc,) in self.db.read(select(versions.c.doc).where(versions.c.id == version_id).order_by(versions.c.seq.desc()))]

    def models(self, owners: list[str] | None) -> list[tuple[str, str]]:
        """(owner, name) of every model with a version, the most recently built first."""
        newest = func.max(versions.c.seq)
        query = select(versions.c.owner, versions.c.name).group_by(versions.c.owner, versions.c.name).order_by(newest.desc())
        if owners is not None:
            query = query.where(versions.c.owner.in_(owners))
        return [(owner, name) for owner, name in self.db.read(query)]

    def delete(self, owner: str, name: str, version_id: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(versions.delete().where((versions.c.owner == owner) & (versions.c.name == name) & (versions.c.id == version_id)))
