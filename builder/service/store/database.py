"""The service's state: trainings, model versions, uploads, settings, webhook deliveries and
worker leases, in SQLite (the embedded default) or PostgreSQL, through SQLAlchemy Core.

open → ``alembic upgrade head`` (under an advisory lock on PostgreSQL, so replicas starting
together migrate once) → one transaction per change. Each record is a JSON document (JSONB on
PostgreSQL) in a row with the few columns queries need. A read-modify-write of a training locks
its row (``FOR UPDATE``; SQLite: ``BEGIN IMMEDIATE``), so the API and any number of workers never
lose each other's changes. A crash loses nothing committed.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import JSON, Column, Connection, Float, Index, Integer, MetaData, Table, Text, create_engine, event, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from builder.service.predictions.record import PredictionRecord
from builder.service.schema import FINISHED, UNFINISHED, DeliveryState, Stage, Status
from builder.service.trainings.record import TrainingRecord
from dreambuild.errors import DreambuildError

DOC = JSON().with_variant(JSONB(), "postgresql")
metadata = MetaData()

# The tables as the newest migration leaves them (builder/service/store/migrations/versions/): the
# migrations are the schema's history, these are what the code reads and writes.
trainings = Table(
    "trainings",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", Text, nullable=False, unique=True),
    Column("owner", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("doc", DOC, nullable=False),
    Index("trainings_owner", "owner", "seq"),
    Index("trainings_status", "status"),
    sqlite_autoincrement=True,
)
versions = Table(
    "versions",
    metadata,
    Column("owner", Text, primary_key=True),
    Column("name", Text, primary_key=True),
    Column("id", Text, primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("doc", DOC, nullable=False),
)
uploads = Table(
    "uploads",
    metadata,
    Column("id", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("doc", DOC, nullable=False),
)
settings = Table(
    "settings",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)
deliveries = Table(  # one webhook event of a training: its id, payload and how sending it went
    "webhook_deliveries",
    metadata,
    Column("id", Text, primary_key=True),  # the webhook-id header: the same on every attempt
    Column("training_id", Text, nullable=False, index=True),
    Column("status", Text, nullable=False),  # pending, delivered, failed
    Column("next_attempt_at", Float, nullable=False),
    Column("doc", DOC, nullable=False),
)
leases = Table(  # a resource (a cog-http trainer URL) held by one training at a time
    "leases",
    metadata,
    Column("resource", Text, primary_key=True),
    Column("holder", Text, nullable=False),
    Column("acquired_at", Float, nullable=False),
)
workers = Table(  # workers seen: what they run and what they are doing
    "workers",
    metadata,
    Column("id", Text, primary_key=True),
    Column("last_seen", Float, nullable=False),
    Column("doc", DOC, nullable=False),
)

predictions = Table(
    "predictions",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", Text, nullable=False, unique=True),
    Column("owner", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("doc", DOC, nullable=False),
    Index("predictions_owner", "owner", "seq"),
    Index("predictions_status", "status"),
    sqlite_autoincrement=True,
)
files = Table(  # files users upload for predictions (POST /v1/files) and predictions' outputs
    "files",
    metadata,
    Column("id", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("doc", DOC, nullable=False),
    Index("files_owner", "owner", "created"),
)

MIGRATIONS = Path(__file__).with_name("migrations")
_LOCK_KEY = 0x64726D62  # "drmb": the advisory lock held while migrating PostgreSQL


class DatabaseUnavailable(DreambuildError):
    """The database cannot be reached (the API answers 503). Its message is for clients and names
    no host or port; ``detail`` (the driver's first line) is for the operator's log."""

    def __init__(self, detail: str) -> None:
        super().__init__("the database is unavailable")
        self.detail = detail


def database_url(target: str | Path) -> str:
    """A SQLAlchemy URL: ``postgresql://…`` (psycopg 3 is the driver) or a SQLite file's path."""
    if isinstance(target, Path) or "://" not in target:
        return f"sqlite:///{Path(target)}"
    url = make_url(target)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def migrate(connection: Connection) -> None:
    """Bring the schema to the newest migration (a database made before migrations existed is
    adopted as revision 0001)."""
    import logging

    from alembic import command
    from alembic.config import Config

    logging.getLogger("alembic").setLevel(logging.WARNING)  # its INFO lines would fill every start's log

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


class Database:
    """The service's database; safe to share between threads, and between processes on PostgreSQL."""

    def __init__(self, target: str | Path) -> None:
        url = database_url(target)
        self.dialect = make_url(url).get_backend_name()
        if self.dialect == "sqlite":
            path = Path(make_url(url).database)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30, "isolation_level": None})
            event.listen(self.engine, "connect", _sqlite_pragmas)
            # pysqlite's own transaction handling would start a deferred transaction: a writer
            # that read first could then fail to upgrade its lock. IMMEDIATE takes it up front.
            event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        else:
            # No pre-ping (it doubles the round trips of every query): after a PostgreSQL restart
            # the first query on a pooled connection fails, the pool replaces all of them, and
            # reads are retried once on a fresh one (writes answer 503 once instead).
            self.engine = create_engine(url, pool_size=10, max_overflow=20, connect_args={"connect_timeout": 5})
        self.url = url
        self._write_lock = threading.RLock() if self.dialect == "sqlite" else None
        with self._tx() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
            migrate(conn)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            if self._write_lock is None:
                with self.engine.begin() as conn:
                    yield conn
            else:
                with self._write_lock, self.engine.begin() as conn:
                    yield conn
        except DBAPIError as exc:
            if exc.connection_invalidated or _is_connection_error(exc):
                raise DatabaseUnavailable(_first_line(exc.orig)) from None
            raise

    def _read(self, statement) -> list:
        for attempt in (1, 2):
            try:
                with self.engine.connect() as conn:
                    return list(conn.execute(statement))
            except DBAPIError as exc:
                if exc.connection_invalidated and attempt == 1:
                    continue  # a connection the database closed (it restarted): once more, on a new one
                if exc.connection_invalidated or _is_connection_error(exc):
                    raise DatabaseUnavailable(_first_line(exc.orig)) from None
                raise
        raise AssertionError("unreachable")

    def _insert(self, table: Table):
        return (pg_insert if self.dialect == "postgresql" else sqlite_insert)(table)

    def ping(self) -> None:
        """Raise :class:`DatabaseUnavailable` unless the database answers."""
        self._read(select(1))

    def close(self) -> None:
        self.engine.dispose()

    # --- settings (the webhook secret, ...) ----------------------------------------------------

    def setting(self, key: str, default_factory) -> str:
        """A persistent value, created by ``default_factory`` on first use (once, whoever asks first)."""
        rows = self._read(select(settings.c.value).where(settings.c.key == key))
        if rows:
            return rows[0][0]
        with self._tx() as conn:
            conn.execute(self._insert(settings).values(key=key, value=default_factory()).on_conflict_do_nothing())
            return conn.execute(select(settings.c.value).where(settings.c.key == key)).scalar_one()

    def set_setting(self, key: str, value: str) -> None:
        """Replace a persistent value (a rotated secret)."""
        with self._tx() as conn:
            insert = self._insert(settings).values(key=key, value=value)
            conn.execute(insert.on_conflict_do_update(index_elements=["key"], set_={"value": insert.excluded.value}))

    # --- trainings ---------------------------------------------------------------------------

    def create_training(self, doc: TrainingRecord) -> TrainingRecord:
        doc.setdefault("stage_started", {})[doc["stage"]] = time.time()
        with self._tx() as conn:
            conn.execute(trainings.insert().values(id=doc["id"], owner=doc["owner"], status=doc["status"], doc=doc))
        return doc

    def get_training(self, training_id: str) -> TrainingRecord | None:
        rows = self._read(select(trainings.c.doc).where(trainings.c.id == training_id))
        return rows[0][0] if rows else None

    def update_training(self, training_id: str, **changes: Any) -> TrainingRecord:
        """Apply ``changes`` atomically; ``logs_append`` appends to the logs."""
        with self._tx() as conn:
            doc = conn.execute(select(trainings.c.doc).where(trainings.c.id == training_id).with_for_update()).scalar()
            if doc is None:
                raise KeyError(training_id)
            extra = changes.pop("logs_append", None)
            if extra:
                doc["logs"] = (doc.get("logs") or "") + extra
            if "stage" in changes and changes["stage"] != doc.get("stage"):
                doc.setdefault("stage_started", {})[changes["stage"]] = time.time()
            doc.update(changes)
            conn.execute(trainings.update().where(trainings.c.id == training_id).values(status=doc["status"], doc=doc))
            return doc

    def list_trainings(self, owners: list[str] | None, *, before: int | None = None, limit: int = 50) -> tuple[list[TrainingRecord], int | None]:
        """Newest first (``owners`` None: every owner's); returns the page and the ``seq`` cursor
        for the next page (or None)."""
        if owners is not None and not owners:
            return [], None
        query = select(trainings.c.seq, trainings.c.doc).order_by(trainings.c.seq.desc()).limit(limit + 1)
        if owners is not None:
            query = query.where(trainings.c.owner.in_(owners))
        if before is not None:
            query = query.where(trainings.c.seq < before)
        rows = self._read(query)
        return [doc for _, doc in rows[:limit]], (rows[limit - 1][0] if len(rows) > limit else None)

    def unfinished_trainings(self) -> list[TrainingRecord]:
        """Trainings to resume after a restart, oldest first (including undelivered webhooks)."""
        rows = self._read(select(trainings.c.doc).order_by(trainings.c.seq))
        return [d for (d,) in rows if d["status"] not in FINISHED or d.get("stage") != Stage.DONE]

    def finished_trainings(self) -> list[TrainingRecord]:
        """Trainings that have ended and been delivered (retention looks at these)."""
        rows = self._read(select(trainings.c.doc).where(trainings.c.status.in_(FINISHED)))
        return [d for (d,) in rows if d.get("stage") == Stage.DONE]

    def count_trainings(self) -> dict[str, int]:
        """How many trainings are in each status (for metrics)."""
        rows = self._read(select(trainings.c.status, func.count()).group_by(trainings.c.status))
        return {status: count for status, count in rows}

    def delete_training(self, training_id: str) -> None:
        """The record and its webhook deliveries (their payloads are copies of it)."""
        with self._tx() as conn:
            conn.execute(deliveries.delete().where(deliveries.c.training_id == training_id))
            conn.execute(trainings.delete().where(trainings.c.id == training_id))

    # --- versions ----------------------------------------------------------------------------

    def add_version(self, owner: str, name: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Record a built version once: a re-run of the same build keeps the first record."""
        key = (versions.c.owner == owner) & (versions.c.name == name) & (versions.c.id == doc["id"])
        with self._tx() as conn:
            seq = conn.execute(select(func.coalesce(func.max(versions.c.seq), 0) + 1)).scalar_one()
            conn.execute(self._insert(versions).values(owner=owner, name=name, id=doc["id"], seq=seq, doc=doc).on_conflict_do_nothing())
            return conn.execute(select(versions.c.doc).where(key)).scalar_one()

    def list_versions(self, owner: str, name: str) -> list[dict[str, Any]]:
        rows = self._read(select(versions.c.doc).where((versions.c.owner == owner) & (versions.c.name == name)).order_by(versions.c.seq.desc()))
        return [doc for (doc,) in rows]

    def list_models(self, owners: list[str] | None) -> list[tuple[str, str]]:
        """(owner, name) of every model with a version, the most recently built first."""
        newest = func.max(versions.c.seq)
        query = select(versions.c.owner, versions.c.name).group_by(versions.c.owner, versions.c.name).order_by(newest.desc())
        if owners is not None:
            query = query.where(versions.c.owner.in_(owners))
        return [(owner, name) for owner, name in self._read(query)]

    def delete_version(self, owner: str, name: str, version_id: str) -> None:
        with self._tx() as conn:
            conn.execute(versions.delete().where((versions.c.owner == owner) & (versions.c.name == name) & (versions.c.id == version_id)))

    def get_version(self, owner: str, name: str, version_id: str) -> dict[str, Any] | None:
        rows = self._read(select(versions.c.doc).where((versions.c.owner == owner) & (versions.c.name == name) & (versions.c.id == version_id)))
        return rows[0][0] if rows else None

    # --- uploads -----------------------------------------------------------------------------

    def add_upload(self, doc: dict[str, Any]) -> dict[str, Any]:
        with self._tx() as conn:
            conn.execute(uploads.insert().values(id=doc["id"], owner=doc["owner"], doc=doc))
        return doc

    def list_uploads(self) -> list[dict[str, Any]]:
        return [doc for (doc,) in self._read(select(uploads.c.doc))]

    def delete_upload(self, upload_id: str) -> None:
        with self._tx() as conn:
            conn.execute(uploads.delete().where(uploads.c.id == upload_id))

    def get_upload(self, upload_id: str) -> dict[str, Any] | None:
        rows = self._read(select(uploads.c.doc).where(uploads.c.id == upload_id))
        return rows[0][0] if rows else None

    # --- predictions -------------------------------------------------------------------------

    def create_prediction(self, doc: PredictionRecord) -> PredictionRecord:
        with self._tx() as conn:
            conn.execute(predictions.insert().values(id=doc["id"], owner=doc["owner"], model=doc["model"], status=doc["status"], doc=doc))
        return doc

    def get_prediction(self, prediction_id: str) -> PredictionRecord | None:
        rows = self._read(select(predictions.c.doc).where(predictions.c.id == prediction_id))
        return rows[0][0] if rows else None

    def update_prediction(self, prediction_id: str, *, if_status: Status | None = None, **changes: Any) -> PredictionRecord:
        """Apply ``changes`` atomically (row-locked, as trainings); ``logs_append`` appends. With
        ``if_status``, only while the prediction has that status (else it is returned unchanged)."""
        with self._tx() as conn:
            doc = conn.execute(select(predictions.c.doc).where(predictions.c.id == prediction_id).with_for_update()).scalar()
            if doc is None:
                raise KeyError(prediction_id)
            if if_status is not None and doc["status"] != if_status:
                return doc
            extra = changes.pop("logs_append", None)
            if extra:
                doc["logs"] = (doc.get("logs") or "") + extra
            doc.update(changes)
            conn.execute(predictions.update().where(predictions.c.id == prediction_id).values(status=doc["status"], model=doc["model"], doc=doc))
            return doc

    def list_predictions(
        self, owners: list[str] | None, *, model: str | None = None, status: str | None = None, before: int | None = None, limit: int = 50
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Newest first, as :meth:`list_trainings`; optionally of one model (owner/name) or status."""
        if owners is not None and not owners:
            return [], None
        query = select(predictions.c.seq, predictions.c.doc).order_by(predictions.c.seq.desc()).limit(limit + 1)
        if owners is not None:
            query = query.where(predictions.c.owner.in_(owners))
        if model is not None:
            query = query.where(predictions.c.model == model)
        if status is not None:
            query = query.where(predictions.c.status == status)
        if before is not None:
            query = query.where(predictions.c.seq < before)
        rows = self._read(query)
        return [doc for _, doc in rows[:limit]], (rows[limit - 1][0] if len(rows) > limit else None)

    def count_predictions(self, model: str | None = None) -> dict[str, int]:
        """How many predictions are in each status (of one model, or all: metrics)."""
        query = select(predictions.c.status, func.count()).group_by(predictions.c.status)
        if model is not None:
            query = query.where(predictions.c.model == model)
        return {status: count for status, count in self._read(query)}

    def unfinished_predictions(self) -> list[dict[str, Any]]:
        """Predictions to run again after a restart, oldest first."""
        rows = self._read(select(predictions.c.doc).where(predictions.c.status.in_(UNFINISHED)).order_by(predictions.c.seq))
        return [doc for (doc,) in rows]

    def predictions_waiting_for(self, training_id: str) -> list[dict[str, Any]]:
        """Unfinished predictions queued on a training that has no version for them yet."""
        return [doc for doc in self.unfinished_predictions() if doc.get("training_id") == training_id and not doc.get("version")]

    def latest_version(self, owner: str, name: str) -> dict[str, Any] | None:
        found = self.list_versions(owner, name)
        return found[0] if found else None

    def versions_with_id(self, version_id: str) -> list[dict[str, Any]]:
        """Every model's version with this id (a digest: the same image pushed to several models)."""
        return [doc for (doc,) in self._read(select(versions.c.doc).where(versions.c.id == version_id).order_by(versions.c.seq.desc()))]

    # --- files (predictions' inputs and outputs) ----------------------------------------------

    def add_file(self, doc: dict[str, Any]) -> dict[str, Any]:
        with self._tx() as conn:
            conn.execute(files.insert().values(id=doc["id"], owner=doc["owner"], created=time.time(), doc=doc))
        return doc

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        rows = self._read(select(files.c.doc).where(files.c.id == file_id))
        return rows[0][0] if rows else None

    def list_files(self, owners: list[str] | None, limit: int = 100) -> list[dict[str, Any]]:
        query = select(files.c.doc).order_by(files.c.created.desc()).limit(limit)
        if owners is not None:
            query = query.where(files.c.owner.in_(owners))
        return [doc for (doc,) in self._read(query)]

    def files_before(self, epoch: float) -> list[dict[str, Any]]:
        """Files made before ``epoch`` (retention)."""
        return [doc for (doc,) in self._read(select(files.c.doc).where(files.c.created < epoch))]

    def delete_file(self, file_id: str) -> None:
        with self._tx() as conn:
            conn.execute(files.delete().where(files.c.id == file_id))


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (the API) are not blocked by the pipeline's writes
    cursor.execute("PRAGMA synchronous=FULL")  # a committed step survives a power cut, not just a crash
    cursor.close()


def _is_connection_error(exc: DBAPIError) -> bool:
    import psycopg

    # Not a serialization failure or deadlock (also OperationalError): those are answers, not an outage.
    return isinstance(exc.orig, psycopg.OperationalError) and not isinstance(exc.orig, psycopg.errors.TransactionRollback)


def _first_line(exc: BaseException | None) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class Deliveries:
    """Webhook deliveries (``webhook_deliveries``): one row per event, attempts recorded on it."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, doc: dict[str, Any], next_attempt_at: float) -> dict[str, Any]:
        """Record a delivery once: the same webhook id again (a re-run stage) keeps the first."""
        with self.db._tx() as conn:
            conn.execute(
                self.db._insert(deliveries)
                .values(id=doc["id"], training_id=doc["training_id"], status=doc["status"], next_attempt_at=next_attempt_at, doc=doc)
                .on_conflict_do_nothing()
            )
            return conn.execute(select(deliveries.c.doc).where(deliveries.c.id == doc["id"])).scalar_one()

    def get(self, delivery_id: str) -> dict[str, Any] | None:
        rows = self.db._read(select(deliveries.c.doc).where(deliveries.c.id == delivery_id))
        return rows[0][0] if rows else None

    def update(self, delivery_id: str, next_attempt_at: float | None = None, **changes: Any) -> dict[str, Any]:
        with self.db._tx() as conn:
            doc = conn.execute(select(deliveries.c.doc).where(deliveries.c.id == delivery_id).with_for_update()).scalar()
            if doc is None:
                raise KeyError(delivery_id)
            doc.update(changes)
            values: dict[str, Any] = {"status": doc["status"], "doc": doc}
            if next_attempt_at is not None:
                values["next_attempt_at"] = next_attempt_at
            conn.execute(deliveries.update().where(deliveries.c.id == delivery_id).values(**values))
            return doc

    def for_training(self, training_id: str) -> list[dict[str, Any]]:
        rows = self.db._read(select(deliveries.c.doc).where(deliveries.c.training_id == training_id))
        return sorted((doc for (doc,) in rows), key=lambda d: d["created_at"])

    def pending(self) -> list[tuple[str, float]]:
        """Deliveries still to attempt, with when: (id, epoch seconds), soonest first."""
        rows = self.db._read(
            select(deliveries.c.id, deliveries.c.next_attempt_at)
            .where(deliveries.c.status == DeliveryState.PENDING)
            .order_by(deliveries.c.next_attempt_at)
        )
        return [(row[0], row[1]) for row in rows]

    def count(self) -> dict[str, int]:
        rows = self.db._read(select(deliveries.c.status, func.count()).group_by(deliveries.c.status))
        return {status: n for status, n in rows}


class Leases:
    """Exclusive leases on named resources (a cog-http trainer URL), held by a training."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def acquire(self, resources: list[str], holder: str) -> str | None:
        """The resource ``holder`` already holds, else the first free one now leased to it, else None."""
        with self.db._tx() as conn:
            held = conn.execute(select(leases.c.resource).where(leases.c.holder == holder)).scalar()
            if held in resources:
                return held
            for resource in resources:
                inserted = conn.execute(
                    self.db._insert(leases)
                    .values(resource=resource, holder=holder, acquired_at=time.time())
                    .on_conflict_do_nothing()
                    .returning(leases.c.resource)
                ).scalar()
                if inserted:
                    return inserted
        return None

    def release(self, holder: str) -> None:
        with self.db._tx() as conn:
            conn.execute(leases.delete().where(leases.c.holder == holder))

    def held(self) -> dict[str, str]:
        return {resource: holder for resource, holder in self.db._read(select(leases.c.resource, leases.c.holder))}


class Heartbeats:
    """The workers' heartbeats: each worker writes what it runs and its current jobs every few seconds."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def beat(self, worker_id: str, doc: dict[str, Any]) -> None:
        with self.db._tx() as conn:
            insert = self.db._insert(workers).values(id=worker_id, last_seen=time.time(), doc=doc)
            conn.execute(
                insert.on_conflict_do_update(index_elements=["id"], set_={"last_seen": insert.excluded.last_seen, "doc": insert.excluded.doc})
            )

    def remove(self, worker_id: str) -> None:
        with self.db._tx() as conn:
            conn.execute(workers.delete().where(workers.c.id == worker_id))

    def live(self, within: float) -> list[dict[str, Any]]:
        """The workers seen in the last ``within`` seconds, with ``last_seen``."""
        rows = self.db._read(select(workers.c.doc, workers.c.last_seen).where(workers.c.last_seen > time.time() - within).order_by(workers.c.id))
        return [{**doc, "last_seen": last_seen} for doc, last_seen in rows]
