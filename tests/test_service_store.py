"""The service's database, on SQLite and PostgreSQL: durable, paginated, idempotent version
records, migrations that adopt a database made before them and match the code's tables."""

import sqlite3
import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from builder.service.store.database import Database, DatabaseUnavailable
from builder.service.store.tables import metadata


def doc(i, owner="alice", status="starting", stage="queued"):
    return {"id": f"t{i}", "owner": owner, "status": status, "stage": stage, "logs": ""}


def test_trainings_survive_reopening_and_page_newest_first(database_target):
    store = Database(database_target)
    for i in range(5):
        store.trainings.create(doc(i, owner="alice" if i != 2 else "bob"))
    store.trainings.update("t1", status="processing", stage="training", logs_append="step 1\n")
    store.trainings.update("t1", logs_append="step 2\n")
    store.close()
    store = Database(database_target)
    assert store.trainings.get("t1")["logs"] == "step 1\nstep 2\n" and store.trainings.get("t1")["status"] == "processing"
    page, cursor = store.trainings.page(["alice"], limit=2)
    assert [d["id"] for d in page] == ["t4", "t3"] and cursor is not None
    page, cursor = store.trainings.page(["alice"], before=cursor, limit=2)
    assert [d["id"] for d in page] == ["t1", "t0"] and cursor is None
    assert store.trainings.page([], limit=2) == ([], None)
    store.trainings.update("t0", status="succeeded", stage="done")
    store.trainings.update("t3", status="failed", stage="webhook")  # failed, webhook not yet delivered
    assert [d["id"] for d in store.trainings.unfinished()] == ["t1", "t2", "t3", "t4"]
    assert store.trainings.count() == {"starting": 2, "processing": 1, "succeeded": 1, "failed": 1}
    with pytest.raises(KeyError):
        store.trainings.update("t9", status="failed")
    store.deliveries.add({"id": "t0-completed", "training_id": "t0", "status": "pending"}, next_attempt_at=0)
    store.trainings.delete("t0")  # its deliveries (copies of the record) go with it
    assert store.trainings.get("t0") is None and store.deliveries.get("t0-completed") is None


def test_predictions_and_files_page_filter_and_finish(database_target):
    store = Database(database_target)
    for i in range(4):
        store.predictions.create(
            {"id": f"p{i}", "owner": "bob" if i == 1 else "alice", "model": "alice/a" if i % 2 == 0 else "alice/b", "status": "starting", "logs": ""}
        )
    store.predictions.update("p2", status="succeeded", logs_append="done\n")
    page, cursor = store.predictions.page(["alice"], limit=1)
    assert [d["id"] for d in page] == ["p3"] and cursor is not None
    assert [d["id"] for d in store.predictions.page(["alice"], model="alice/a")[0]] == ["p2", "p0"]
    assert [d["id"] for d in store.predictions.page(None, status="succeeded")[0]] == ["p2"]
    assert [d["id"] for d in store.predictions.unfinished()] == ["p0", "p1", "p3"]
    assert store.predictions.count("alice/a") == {"starting": 1, "succeeded": 1}
    assert store.predictions.get("p2")["logs"] == "done\n"
    with pytest.raises(KeyError):
        store.predictions.update("p9", status="failed")
    store.files.add({"id": "f1", "owner": "alice", "name": "a.png"})
    assert store.files.get("f1")["name"] == "a.png" and store.files.recent(["bob"]) == []
    store.files.delete("f1")
    assert store.files.get("f1") is None


def test_concurrent_updates_lose_nothing(database_target):
    """Read-modify-write under a row lock: 4 threads × 25 appends each, every line kept."""
    store = Database(database_target)
    store.trainings.create(doc(1))

    def append(n):
        for i in range(25):
            store.trainings.update("t1", logs_append=f"{n}-{i}\n")

    threads = [threading.Thread(target=append, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(store.trainings.get("t1")["logs"].split()) == sorted(f"{n}-{i}" for n in range(4) for i in range(25))


def test_versions_are_recorded_once(database_target):
    store = Database(database_target)
    first = store.versions.add("alice", "m", {"id": "sha256:1", "training_id": "t1"})
    again = store.versions.add("alice", "m", {"id": "sha256:1", "training_id": "t1-rerun"})
    store.versions.add("alice", "m", {"id": "sha256:2", "training_id": "t2"})
    assert again == first
    assert [v["id"] for v in store.versions.of_model("alice", "m")] == ["sha256:2", "sha256:1"]
    assert store.versions.get("alice", "m", "sha256:9") is None and store.versions.of_model("bob", "m") == []


def test_models_are_created_once_and_listed_newest_first(database_target):
    store = Database(database_target)
    assert store.models.create("alice", "a", {"visibility": "private"}) and store.models.create("bob", "b", {"visibility": "public"})
    assert not store.models.create("alice", "a", {"visibility": "public"})  # the first record stays
    assert store.models.get("alice", "a") == {"visibility": "private"} and store.models.get("alice", "b") is None
    assert store.models.names(None) == [("bob", "b"), ("alice", "a")] and store.models.names(["alice"]) == [("alice", "a")]
    store.models.delete("alice", "a")
    assert store.models.get("alice", "a") is None and store.models.create("alice", "a", {"visibility": "public"})


def test_settings_persist(database_target):
    store = Database(database_target)
    secret = store.settings.get("webhook_secret", lambda: "whsec_abc")
    store.settings.set("other", "1")
    store.settings.set("other", "2")
    store.close()
    again = Database(database_target)
    assert again.settings.get("webhook_secret", lambda: "other") == secret and again.settings.get("other", lambda: "x") == "2"


def test_migrations_match_the_tables_the_code_uses(database_target):
    """Upgraded to head, the database has exactly the code's tables, columns and indexes: a model
    change without its migration fails here."""
    store = Database(database_target)
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0005"


PRE_MIGRATION_SCHEMA = """
CREATE TABLE trainings (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL,
                        status TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX trainings_owner ON trainings (owner, seq);
CREATE INDEX trainings_status ON trainings (status);
CREATE TABLE versions (owner TEXT NOT NULL, name TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL, doc TEXT NOT NULL,
                       PRIMARY KEY (owner, name, id));
CREATE TABLE uploads (id TEXT PRIMARY KEY, owner TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO trainings (id, owner, status, doc)
VALUES ('old', 'alice', 'succeeded', '{"id": "old", "owner": "alice", "status": "succeeded", "stage": "done",
                                         "webhook_completed": "https://example.com/hook"}');
INSERT INTO settings (key, value) VALUES ('webhook_secret/alice', 'whsec_kept');
"""


def test_a_database_made_before_migrations_is_adopted_with_its_data(tmp_path):
    path = tmp_path / "dreambuild.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(PRE_MIGRATION_SCHEMA)
    store = Database(path)
    assert store.trainings.get("old")["status"] == "succeeded"
    assert store.trainings.get("old")["webhook"] == "https://example.com/hook"  # 0004: one name, as predictions'
    assert "webhook_completed" not in store.trainings.get("old")
    assert store.settings.get("webhook_secret/alice", lambda: "new") == "whsec_kept"
    store.trainings.update("old", logs_append="more\n")  # the TEXT documents of then read and write as JSON
    assert store.trainings.get("old")["logs"] == "more\n"
    with store.engine.connect() as conn:  # and the later migrations ran
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0005"
        assert conn.exec_driver_sql("SELECT count(*) FROM webhook_deliveries").scalar() == 0


def test_an_unreachable_database_is_a_clear_error(postgres, pg_url):
    store = Database(pg_url)
    postgres.stop()
    try:
        with pytest.raises(DatabaseUnavailable, match="the database is unavailable"):
            store.trainings.get("t1")
        with pytest.raises(DatabaseUnavailable):
            store.ping()
    finally:
        postgres.start()
    store.trainings.create(doc(1))  # back without a restart of the service: the pool reconnects
    assert store.trainings.get("t1")["id"] == "t1"
