"""Workers' heartbeats (the ``workers`` table): what each worker runs and is doing, written every
few seconds; ``/v1/workers``, metrics and the stalled-job sweep read them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from builder.service.store.tables import workers

if TYPE_CHECKING:
    from builder.service.store.database import Database


class Heartbeats:
    """The workers' heartbeats: each worker writes what it runs and its current jobs every few seconds."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def beat(self, worker_id: str, doc: dict[str, Any]) -> None:
        with self.db.transaction() as conn:
            insert = self.db.insert(workers).values(id=worker_id, last_seen=time.time(), doc=doc)
            conn.execute(
                insert.on_conflict_do_update(index_elements=["id"], set_={"last_seen": insert.excluded.last_seen, "doc": insert.excluded.doc})
            )

    def remove(self, worker_id: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(workers.delete().where(workers.c.id == worker_id))

    def live(self, within: float) -> list[dict[str, Any]]:
        """The workers seen in the last ``within`` seconds, with ``last_seen``."""
        rows = self.db.read(select(workers.c.doc, workers.c.last_seen).where(workers.c.last_seen > time.time() - within).order_by(workers.c.id))
        return [{**doc, "last_seen": last_seen} for doc, last_seen in rows]
