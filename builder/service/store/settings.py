"""Persistent settings (the ``settings`` table): the webhook secrets, the files' signing key."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import select

from builder.service.store.tables import settings

if TYPE_CHECKING:
    from builder.service.store.database import Database


class Settings:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, key: str, default_factory: Callable[[], str]) -> str:
        """A persistent value, created by ``default_factory`` on first use (once, whoever asks first)."""
        rows = self.db.read(select(settings.c.value).where(settings.c.key == key))
        if rows:
            return rows[0][0]
        with self.db.transaction() as conn:
            conn.execute(self.db.insert(settings).values(key=key, value=default_factory()).on_conflict_do_nothing())
            return conn.execute(select(settings.c.value).where(settings.c.key == key)).scalar_one()

    def set(self, key: str, value: str) -> None:
        """Replace a persistent value (a rotated secret)."""
        with self.db.transaction() as conn:
            insert = self.db.insert(settings).values(key=key, value=value)
            conn.execute(insert.on_conflict_do_update(index_elements=["key"], set_={"value": insert.excluded.value}))
