"""Leases (the ``leases`` table): a resource (a cog-http trainer URL) held by one training at a
time, across every process that shares the database.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlalchemy import select

from builder.service.store.tables import leases

if TYPE_CHECKING:
    from builder.service.store.database import Database


class Leases:
    """Exclusive leases on named resources (a cog-http trainer URL), held by a training."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def acquire(self, resources: list[str], holder: str) -> str | None:
        """The resource ``holder`` already holds, else the first free one now leased to it, else None."""
        with self.db.transaction() as conn:
            held = conn.execute(select(leases.c.resource).where(leases.c.holder == holder)).scalar()
            if held in resources:
                return held
            for resource in resources:
                inserted = conn.execute(
                    self.db.insert(leases)
                    .values(resource=resource, holder=holder, acquired_at=time.time())
                    .on_conflict_do_nothing()
                    .returning(leases.c.resource)
                ).scalar()
                if inserted:
                    return inserted
        return None

    def release(self, holder: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(leases.delete().where(leases.c.holder == holder))

    def held(self) -> dict[str, str]:
        return {resource: holder for resource, holder in self.db.read(select(leases.c.resource, leases.c.holder))}
