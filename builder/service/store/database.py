"""The service's state in SQLite (the embedded default) or PostgreSQL, through SQLAlchemy Core.

open → ``alembic upgrade head`` (under an advisory lock on PostgreSQL, so replicas starting
together migrate once) → one transaction per change, through one object per record type:
``db.trainings``, ``db.predictions``, ``db.versions``, ``db.models``, ``db.uploads``, ``db.files``,
``db.settings``, ``db.deliveries``, ``db.leases``, ``db.heartbeats`` (a module each, beside this
one; the tables are in :mod:`builder.service.store.tables`). A crash loses nothing committed.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Connection, Table, create_engine, event, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from builder.service.store.deliveries import Deliveries
from builder.service.store.file_records import FileRecords
from builder.service.store.heartbeats import Heartbeats
from builder.service.store.leases import Leases
from builder.service.store.models import Models
from builder.service.store.predictions import Predictions
from builder.service.store.settings import Settings
from builder.service.store.trainings import Trainings
from builder.service.store.uploads import Uploads
from builder.service.store.versions import Versions
from dreambuild.errors import DreambuildError

MIGRATIONS = Path(__file__).with_name("migrations")
LOCK_KEY = 0x64726D62  # "drmb": the advisory lock held while migrating PostgreSQL


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
    """The service's database; safe to share between threads, and between processes on PostgreSQL.
    A read-modify-write locks its row (``FOR UPDATE``; SQLite: ``BEGIN IMMEDIATE``), so the API and
    any number of workers never lose each other's changes."""

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
        with self.transaction() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LOCK_KEY})")
            migrate(conn)
        self.trainings = Trainings(self)
        self.predictions = Predictions(self)
        self.versions = Versions(self)
        self.models = Models(self)
        self.uploads = Uploads(self)
        self.files = FileRecords(self)
        self.settings = Settings(self)
        self.deliveries = Deliveries(self)
        self.leases = Leases(self)
        self.heartbeats = Heartbeats(self)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction (SQLite: one writer at a time); an outage is :class:`DatabaseUnavailable`."""
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

    def read(self, statement) -> list:
        """The rows of one read, retried once on a fresh connection after the database restarted."""
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

    def insert(self, table: Table):
        """This dialect's INSERT (both have ``on_conflict_do_nothing``/``_do_update``)."""
        return (pg_insert if self.dialect == "postgresql" else sqlite_insert)(table)

    def ping(self) -> None:
        """Raise :class:`DatabaseUnavailable` unless the database answers."""
        self.read(select(1))

    def close(self) -> None:
        self.engine.dispose()


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
