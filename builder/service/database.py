"""The service's database: training records, model versions, uploads and settings, in SQLite.

Each record is a JSON document in a row with the few columns queries need, so the same schema
maps onto PostgreSQL (JSONB) behind this one class. Every change is one transaction; WAL mode
keeps readers (the API) unblocked by the pipeline's writes. A crash loses nothing committed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from builder.service.training import FINISHED, TrainingRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS trainings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trainings_owner ON trainings (owner, seq);
CREATE INDEX IF NOT EXISTS trainings_status ON trainings (status);
CREATE TABLE IF NOT EXISTS versions (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (owner, name, id)
);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

class Database:
    """The SQLite database; safe to share between the API and pipeline threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed step survives a power cut, not just a crash
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # --- settings (the webhook secret, ...) ----------------------------------------------------

    def setting(self, key: str, default_factory) -> str:
        """A persistent value, created by ``default_factory`` on first use."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
            if row:
                return row[0]
            value = default_factory()
            db.execute("INSERT INTO settings (key, value) VALUES (?, ?)", (key, value))
            return value

    def set_setting(self, key: str, value: str) -> None:
        """Replace a persistent value (a rotated secret)."""
        with self._tx() as db:
            db.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                       (key, value))

    # --- trainings ---------------------------------------------------------------------------

    def create_training(self, doc: TrainingRecord) -> TrainingRecord:
        doc.setdefault("stage_started", {})[doc["stage"]] = time.time()
        with self._tx() as db:
            db.execute("INSERT INTO trainings (id, owner, status, doc) VALUES (?, ?, ?, ?)",
                       (doc["id"], doc["owner"], doc["status"], json.dumps(doc)))
        return doc

    def get_training(self, training_id: str) -> TrainingRecord | None:
        with self._lock:
            row = self._db.execute("SELECT doc FROM trainings WHERE id = ?", (training_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def update_training(self, training_id: str, **changes: Any) -> TrainingRecord:
        """Apply ``changes`` atomically; ``logs_append`` appends to the logs."""
        with self._tx() as db:
            row = db.execute("SELECT doc FROM trainings WHERE id = ?", (training_id,)).fetchone()
            if row is None:
                raise KeyError(training_id)
            doc = json.loads(row[0])
            extra = changes.pop("logs_append", None)
            if extra:
                doc["logs"] = (doc.get("logs") or "") + extra
            if "stage" in changes and changes["stage"] != doc.get("stage"):
                doc.setdefault("stage_started", {})[changes["stage"]] = time.time()
            doc.update(changes)
            db.execute("UPDATE trainings SET status = ?, doc = ? WHERE id = ?", (doc["status"], json.dumps(doc), training_id))
            return doc

    def list_trainings(self, owners: list[str] | None, *, before: int | None = None, limit: int = 50) -> tuple[list[TrainingRecord], int | None]:
        """Newest first (``owners`` None: every owner's); returns the page and the ``seq`` cursor
        for the next page (or None)."""
        if owners is not None and not owners:
            return [], None
        query = "SELECT seq, doc FROM trainings WHERE 1 = 1"
        params: list[Any] = []
        if owners is not None:
            query += f" AND owner IN ({','.join('?' * len(owners))})"
            params += owners
        if before is not None:
            query += " AND seq < ?"
            params.append(before)
        query += " ORDER BY seq DESC LIMIT ?"
        params.append(limit + 1)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        page = [json.loads(doc) for _, doc in rows[:limit]]
        return page, (rows[limit - 1][0] if len(rows) > limit else None)

    def unfinished_trainings(self) -> list[TrainingRecord]:
        """Trainings to resume after a restart, oldest first (including undelivered webhooks)."""
        with self._lock:
            rows = self._db.execute("SELECT doc FROM trainings ORDER BY seq").fetchall()
        docs = [json.loads(doc) for (doc,) in rows]
        return [d for d in docs if d["status"] not in FINISHED or d.get("stage") != "done"]

    def finished_trainings(self) -> list[TrainingRecord]:
        """Trainings that have ended and been delivered (retention looks at these)."""
        with self._lock:
            rows = self._db.execute("SELECT doc FROM trainings WHERE status IN (?, ?, ?)", FINISHED).fetchall()
        return [d for d in (json.loads(doc) for (doc,) in rows) if d.get("stage") == "done"]

    def delete_training(self, training_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM trainings WHERE id = ?", (training_id,))

    # --- versions ----------------------------------------------------------------------------

    def add_version(self, owner: str, name: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Record a built version once: a re-run of the same build keeps the first record."""
        with self._tx() as db:
            row = db.execute("SELECT doc FROM versions WHERE owner = ? AND name = ? AND id = ?", (owner, name, doc["id"])).fetchone()
            if row:
                return json.loads(row[0])
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM versions").fetchone()[0]
            db.execute("INSERT INTO versions (owner, name, id, seq, doc) VALUES (?, ?, ?, ?, ?)", (owner, name, doc["id"], seq, json.dumps(doc)))
            return doc

    def list_versions(self, owner: str, name: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT doc FROM versions WHERE owner = ? AND name = ? ORDER BY seq DESC", (owner, name)).fetchall()
        return [json.loads(doc) for (doc,) in rows]

    def delete_version(self, owner: str, name: str, version_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM versions WHERE owner = ? AND name = ? AND id = ?", (owner, name, version_id))

    def get_version(self, owner: str, name: str, version_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT doc FROM versions WHERE owner = ? AND name = ? AND id = ?", (owner, name, version_id)).fetchone()
        return json.loads(row[0]) if row else None

    # --- uploads -----------------------------------------------------------------------------

    def add_upload(self, doc: dict[str, Any]) -> dict[str, Any]:
        with self._tx() as db:
            db.execute("INSERT INTO uploads (id, owner, doc) VALUES (?, ?, ?)", (doc["id"], doc["owner"], json.dumps(doc)))
        return doc

    def list_uploads(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT doc FROM uploads").fetchall()
        return [json.loads(doc) for (doc,) in rows]

    def delete_upload(self, upload_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))

    def get_upload(self, upload_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT doc FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        return json.loads(row[0]) if row else None
