"""The service's SQLite store: durable, paginated, idempotent version records."""

from builder.service.database import Database


def doc(i, owner="alice", status="starting", stage="queued"):
    return {"id": f"t{i}", "owner": owner, "status": status, "stage": stage, "logs": ""}


def test_trainings_survive_reopening_and_page_newest_first(tmp_path):
    store = Database(tmp_path / "db.sqlite")
    for i in range(5):
        store.create_training(doc(i, owner="alice" if i != 2 else "bob"))
    store.update_training("t1", status="processing", stage="training", logs_append="step 1\n")
    store.update_training("t1", logs_append="step 2\n")
    store.close()
    store = Database(tmp_path / "db.sqlite")
    assert store.get_training("t1")["logs"] == "step 1\nstep 2\n" and store.get_training("t1")["status"] == "processing"
    page, cursor = store.list_trainings(["alice"], limit=2)
    assert [d["id"] for d in page] == ["t4", "t3"] and cursor is not None
    page, cursor = store.list_trainings(["alice"], before=cursor, limit=2)
    assert [d["id"] for d in page] == ["t1", "t0"] and cursor is None
    assert store.list_trainings([], limit=2) == ([], None)
    store.update_training("t0", status="succeeded", stage="done")
    store.update_training("t3", status="failed", stage="webhook")  # failed, webhook not yet delivered
    assert [d["id"] for d in store.unfinished_trainings()] == ["t1", "t2", "t3", "t4"]


def test_versions_are_recorded_once(tmp_path):
    store = Database(tmp_path / "db.sqlite")
    first = store.add_version("alice", "m", {"id": "sha256:1", "training_id": "t1"})
    again = store.add_version("alice", "m", {"id": "sha256:1", "training_id": "t1-rerun"})
    store.add_version("alice", "m", {"id": "sha256:2", "training_id": "t2"})
    assert again == first
    assert [v["id"] for v in store.list_versions("alice", "m")] == ["sha256:2", "sha256:1"]
    assert store.get_version("alice", "m", "sha256:9") is None and store.list_versions("bob", "m") == []


def test_settings_persist(tmp_path):
    store = Database(tmp_path / "db.sqlite")
    secret = store.setting("webhook_secret", lambda: "whsec_abc")
    store.close()
    assert Database(tmp_path / "db.sqlite").setting("webhook_secret", lambda: "other") == secret
