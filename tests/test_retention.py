"""Retention: expired uploads and trainings' files are deleted by the sweep, newer ones kept."""

from datetime import datetime, timedelta, timezone

from builder.service.config import ServiceConfig
from builder.service.store.database import Database
from builder.service.store.retention import sweep


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_the_sweep_deletes_what_expired(tmp_path):
    config = ServiceConfig(data_dir=tmp_path, upload_expiry_hours=24, output_expiry_hours=48)
    db = Database(config.database)
    now = datetime.now(timezone.utc)
    for upload_id, age in (("old", 25), ("new", 1)):
        folder = tmp_path / "uploads" / upload_id
        folder.mkdir(parents=True)
        (folder / "photos.zip").write_bytes(b"PK")
        db.uploads.add(
            {
                "id": upload_id,
                "owner": "alice",
                "owners": ["alice"],
                "name": "photos.zip",
                "path": str(folder / "photos.zip"),
                "size": 2,
                "created_at": _iso(now - timedelta(hours=age)),
            }
        )
    for training_id, age, status in (("t-old", 49, "succeeded"), ("t-new", 2, "succeeded"), ("t-running", 99, "processing")):
        (config.files / training_id).mkdir(parents=True)
        (config.files / training_id / "output.zip").write_bytes(b"PK")
        db.trainings.create(
            {
                "id": training_id,
                "owner": "alice",
                "status": status,
                "stage": "done" if status != "processing" else "training",
                "completed_at": _iso(now - timedelta(hours=age)),
                "weights": str(config.files / training_id / "output.zip"),
            }
        )
    assert sweep(config, db, now) == {"uploads": 1, "trainings": 1, "files": 0, "orphans": 0}
    assert [u["id"] for u in db.uploads.all()] == ["new"] and not (tmp_path / "uploads" / "old").exists()
    assert not (config.files / "t-old").exists() and (config.files / "t-new").exists() and (config.files / "t-running").exists()
    old = db.trainings.get("t-old")
    assert old["weights"] is None and old["files_deleted_at"]
    assert sweep(config, db, now) == {"uploads": 0, "trainings": 0, "files": 0, "orphans": 0}
    # No expiry configured: nothing is ever deleted by the sweep.
    kept = ServiceConfig(data_dir=tmp_path, upload_expiry_hours=None, output_expiry_hours=None, file_expiry_hours=None)
    assert sweep(kept, db, now + timedelta(days=999)) == {"uploads": 0, "trainings": 0, "files": 0, "orphans": 0}


def test_the_sweep_deletes_prediction_files_and_marks_their_predictions(tmp_path):
    config = ServiceConfig(data_dir=tmp_path, upload_expiry_hours=None, output_expiry_hours=None, file_expiry_hours=24)
    db = Database(config.database)
    now = datetime.now(timezone.utc)
    folder = tmp_path / "prediction-files" / "f1"
    folder.mkdir(parents=True)
    (folder / "output-0.png").write_bytes(b"png")
    db.predictions.create({"id": "p1", "owner": "alice", "model": "alice/toy", "status": "succeeded", "output": ["dreambuild-file:f1"]})
    db.files.add({"id": "f1", "owner": "alice", "name": "output-0.png", "path": str(folder / "output-0.png"), "prediction_id": "p1"})
    assert sweep(config, db, now + timedelta(hours=23)) == {"uploads": 0, "trainings": 0, "files": 0, "orphans": 0}
    assert db.files.get("f1") and folder.exists()
    assert sweep(config, db, now + timedelta(hours=25)) == {"uploads": 0, "trainings": 0, "files": 1, "orphans": 0}
    assert db.files.get("f1") is None and not folder.exists()
    assert db.predictions.get("p1")["data_removed"] and db.predictions.get("p1")["output"] is None


def test_the_sweep_deletes_folders_left_without_a_record_after_an_hour(tmp_path):
    """A process killed between writing an upload or a file and recording it left a folder that
    nothing listed, deleted or expired: the sweep removes it once it is an hour old, and never a
    folder with its record (or one that may still be written)."""
    import os

    config = ServiceConfig(data_dir=tmp_path, upload_expiry_hours=None, output_expiry_hours=None, file_expiry_hours=None)
    db = Database(config.database)
    now = datetime.now(timezone.utc)
    folders = {}
    for root, name in (
        ("uploads", "lost-upload"),
        ("uploads", "kept-upload"),
        ("prediction-files", "lostfile"),
        ("prediction-files", "keptfile"),
        ("prediction-files", "writing"),
    ):
        folder = tmp_path / root / name
        folder.mkdir(parents=True)
        (folder / "data.bin").write_bytes(b"x" * 1024)
        if name != "writing":  # "writing": its folder is old, its file still growing
            os.utime(folder / "data.bin", (now.timestamp() - 7200, now.timestamp() - 7200))
        os.utime(folder, (now.timestamp() - 7200, now.timestamp() - 7200))
        folders[name] = folder
    db.uploads.add(
        {
            "id": "kept-upload",
            "owner": "alice",
            "owners": ["alice"],
            "name": "data.bin",
            "path": str(folders["kept-upload"] / "data.bin"),
            "size": 1024,
            "created_at": _iso(now),
        }
    )
    db.files.add({"id": "keptfile", "owner": "alice", "name": "data.bin", "path": str(folders["keptfile"] / "data.bin")})
    assert sweep(config, db, now) == {"uploads": 0, "trainings": 0, "files": 0, "orphans": 2}
    assert {name for name, folder in folders.items() if folder.exists()} == {"kept-upload", "keptfile", "writing"}
