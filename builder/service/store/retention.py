"""Retention: what users delete, and what expires on its own (users upload photos of people).

``DELETE`` an upload → its file and record; a finished training → its files (output.zip; the
inputs the service fetched are gone once its trainer stops) and its record; a version → its record (the image stays in its
registry, whose operator prunes it). Expiry (``upload_expiry_hours``, ``output_expiry_hours``,
``file_expiry_hours``; none: kept): a sweep every few minutes deletes older uploads, finished
trainings' files, and predictions' files (inputs uploaded to /v1/files and outputs; the
prediction then shows ``data_removed``, as Replicate's do), and any upload or file folder left
without its record (a process killed between writing and recording) an hour after it was written.
"""

from __future__ import annotations

import logging
import shutil
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

from builder.service.config import ServiceConfig
from builder.service.schema import FINISHED, Stage
from builder.service.store.database import Database
from builder.service.trainings.record import TrainingRecord, now_iso

log = logging.getLogger(__name__)
SWEEP_SECONDS = 300
ORPHAN_SECONDS = 3600  # a folder younger than this may be a request still writing, before its record


def delete_upload(config: ServiceConfig, db: Database, upload_id: str) -> None:
    """The upload's file, then its record (a crash between leaves a record whose file is gone: a 404)."""
    shutil.rmtree(config.data_dir / "uploads" / upload_id, ignore_errors=True)
    db.uploads.delete(upload_id)


def delete_training_files(config: ServiceConfig, db: Database, doc: TrainingRecord) -> TrainingRecord:
    """A finished training's files (output.zip); its record says when they went."""
    shutil.rmtree(config.files / doc["id"], ignore_errors=True)
    return db.trainings.update(doc["id"], weights=None, files_deleted_at=now_iso())


def _older(stamp: str | None, hours: float | None, now: datetime) -> bool:
    if hours is None or not stamp:
        return False
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) < now - timedelta(hours=hours)


def sweep(config: ServiceConfig, db: Database, now: datetime | None = None) -> dict[str, int]:
    """Delete what has expired; return how many uploads and trainings' files went."""
    now = now or datetime.now(timezone.utc)
    uploads = [u for u in db.uploads.all() if _older(u.get("created_at"), config.upload_expiry_hours, now)]
    for upload in uploads:
        delete_upload(config, db, upload["id"])
    outputs = [
        d
        for d in db.trainings.finished()
        if d["status"] in FINISHED
        and d.get("stage") == Stage.DONE
        and not d.get("files_deleted_at")
        and _older(d.get("completed_at"), config.output_expiry_hours, now)
    ]
    for doc in outputs:
        delete_training_files(config, db, doc)
    expired = db.files.before((now - timedelta(hours=config.file_expiry_hours)).timestamp()) if config.file_expiry_hours is not None else []
    for doc in expired:
        shutil.rmtree(Path(doc["path"]).parent, ignore_errors=True)
        db.files.delete(doc["id"])
        if doc.get("prediction_id"):
            try:
                db.predictions.update(doc["prediction_id"], data_removed=True, output=None)
            except KeyError:
                pass
    orphans = _orphans(config.data_dir / "uploads", db.uploads.get, now) + _orphans(config.data_dir / "prediction-files", db.files.get, now)
    for folder in orphans:
        shutil.rmtree(folder, ignore_errors=True)
    if uploads or outputs or expired or orphans:
        log.warning(
            "retention: deleted %d expired upload(s), the files of %d training(s), %d prediction file(s) and %d folder(s) without a record",
            len(uploads),
            len(outputs),
            len(expired),
            len(orphans),
        )
    return {"uploads": len(uploads), "trainings": len(outputs), "files": len(expired), "orphans": len(orphans)}


def _orphans(root: Path, record, now: datetime) -> list[Path]:
    """Folders under ``root`` (one per upload or file, named by its id) untouched for
    :data:`ORPHAN_SECONDS` (the folder and what is in it: a slow upload still being written is
    not) whose record ``record(id)`` does not exist."""
    if not root.is_dir():
        return []
    cutoff = now.timestamp() - ORPHAN_SECONDS

    def touched(folder: Path) -> float:
        return max([folder.stat().st_mtime, *(item.stat().st_mtime for item in folder.iterdir())])

    return [folder for folder in root.iterdir() if folder.is_dir() and touched(folder) < cutoff and record(folder.name) is None]


class Sweeper:
    """Runs :func:`sweep` now and every ``SWEEP_SECONDS`` until stopped."""

    def __init__(self, config: ServiceConfig, db: Database) -> None:
        self.config, self.db = config, db
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    def start(self) -> None:
        if any(hours is not None for hours in (self.config.upload_expiry_hours, self.config.output_expiry_hours, self.config.file_expiry_hours)):
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sweep(self.config, self.db)
            except Exception:  # never the end of the service: the next sweep tries again
                log.exception("retention sweep failed")
            self._stop.wait(SWEEP_SECONDS)
