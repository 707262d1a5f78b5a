"""The queue of many machines: the pipeline's stages and webhook deliveries as procrastinate jobs
in the same PostgreSQL as the state.

API: training recorded → ``advance`` job on its trainer version's queue (``train-<version>``) →
a GPU worker runs the trainer → ``advance`` on ``build`` → a worker builds and pushes → the
completed event's ``deliver`` job on ``webhooks`` (every attempt its own job, scheduled after its
backoff). Why procrastinate (README, "Many machines"): its workers heartbeat, so a job whose
worker died is found within seconds (``recover``: every 5 s, jobs of workers silent for
:data:`STALLED_SECONDS` go back to their queue) while a job may run for hours while its worker
lives; it needs no server beyond PostgreSQL; cancel needs no queue at all (the pipeline reads the
record's ``cancel_requested`` every 0.3 s). Every job of a training holds the training's lock, so
no two workers ever run it at once; a recovered job resumes from the recorded stage, so it
completes once (one version, one completed webhook id).

``reconcile`` (every 5 s) queues what has no job: a training recorded by an API that died before
it queued the job, a pending delivery whose job was lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from builder.service.config import ServiceConfig
from builder.service.schema import FINISHED, Stage

log = logging.getLogger(__name__)
STALLED_SECONDS = 20.0  # a worker silent this long is dead (it heartbeats every HEARTBEAT_SECONDS)
HEARTBEAT_SECONDS = 5.0
ORPHAN_SECONDS = 10.0  # a training this old with no job gets one
BUILD, WEBHOOKS, MAINTENANCE, PREDICT = "build", "webhooks", "maintenance", "predict"


async def in_thread(fn, *args: Any) -> Any:
    """``fn(*args)`` in a thread of the worker's pool from which jobs may be deferred: procrastinate's
    synchronous ``defer`` there runs its query on this event loop (asgiref's threadlocal). From an
    ``asyncio.to_thread`` thread it would open a second event loop on the same connection pool
    ("Lock is not acquired": deferrals lost, a procrastinate worker stopped, a training left at
    its webhook stage); tests/test_workers.py keeps the two apart."""
    from procrastinate.utils import sync_to_async

    return await sync_to_async(fn, *args)


def train_queue(trainer_version: str) -> str:
    """The queue of a trainer version's trainings (GPU workers subscribe to the versions they run)."""
    return "train-" + trainer_version.removeprefix("sha256:")[:16]


def worker_predict_queue(worker_name: str) -> str:
    """A prediction worker's own queue: predictions of a version it has loaded (warm) go there."""
    return f"{PREDICT}-{worker_name}"


def stage_queue(doc: dict) -> str:
    return train_queue(doc["trainer_version"]) if doc["stage"] in (Stage.QUEUED, Stage.TRAINING) else BUILD


def conninfo(database_url: str) -> str:
    """libpq's form of the database URL (procrastinate talks psycopg directly)."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


@dataclass
class JobState:
    """What a worker's jobs run with (set by ``dreambuild worker``; the API only defers)."""

    runtime: Any = None  # its Runtime (builder.service.runtime)
    current: dict[str, str] = field(default_factory=dict)  # job id → the training or prediction it runs
    takers: dict[str, str] = field(default_factory=dict)  # job id → the procrastinate worker (a role) running it
    # Called when a job starts or ends: the worker then heartbeats at once, so that the API routes
    # the next prediction by what it runs now, not by a heartbeat up to 5 s old.
    changed: Callable[[], None] = lambda: None

    def busy(self, worker_name: str) -> bool:
        """Whether a job taken by this procrastinate worker still runs (it may outlive the worker:
        procrastinate stops a worker whose database connection broke, not the job's thread)."""
        return worker_name in self.takers.values()

    @contextmanager
    def running(self, context, what: str) -> Iterator[None]:
        """``what`` (a training or prediction id) runs as this job."""
        job_id = str(context.job.id)
        self.current[job_id], self.takers[job_id] = what, context.worker_name
        self.changed()
        try:
            yield
        finally:
            self.current.pop(job_id, None)
            self.takers.pop(job_id, None)
            self.changed()


# The tasks, at module level: each reads its worker's state (the runtime it runs on) from the
# job's context, which ``dreambuild worker`` passes as procrastinate's additional context.


def _state(context) -> JobState:
    return context.additional_context["state"]


async def advance(context, training_id: str) -> None:
    """Run the training's current stage; queue the next one."""
    state = _state(context)
    with state.running(context, training_id):
        following = await in_thread(state.runtime.pipeline.advance, training_id)
    doc = state.runtime.pipeline.db.trainings.get(training_id)
    if doc is not None and (following or (state.runtime.pipeline.stopping.is_set() and doc["stage"] != Stage.DONE)):
        await defer_stage_async(context.app, doc)  # next stage, or the same one elsewhere (this worker is stopping)


async def predict(context, prediction_id: str) -> None:
    """Run a prediction on this worker's model servers (a prediction waiting for its training is
    queued again when the training ends)."""
    state = _state(context)
    with state.running(context, prediction_id):
        outcome = await in_thread(state.runtime.predictor.run, prediction_id)
    if outcome == "again":  # this worker is stopping: another takes it (its lock waits for this job's end)
        await defer_prediction_async(context.app, {"id": prediction_id})


async def deliver(context, delivery_id: str) -> None:
    await in_thread(_state(context).runtime.notifier.attempt, delivery_id)


async def recover(context, timestamp: int) -> None:
    """Jobs of dead workers back to their queues (the other workers take them). A job whose
    procrastinate worker went silent while the dreambuild worker running it still beats (and
    lists the job) is not dead: a database outage made procrastinate stop that worker, but the
    job's thread ran on, and running it a second time would kill its trainer."""

    live = await in_thread(_state(context).runtime.pipeline.db.heartbeats.live, STALLED_SECONDS)
    running = {job for worker in live for job in worker.get("jobs", [])}
    for job in await context.app.job_manager.get_stalled_jobs(seconds_since_heartbeat=STALLED_SECONDS):
        if str(job.id) in running:
            continue
        log.warning("job %s (%s %s) was on a worker that stopped answering: queued again", job.id, job.task_name, job.task_kwargs)
        await context.app.job_manager.retry_job(job)


async def reconcile(context, timestamp: int) -> None:
    await reconcile_jobs(context.app, _state(context))


def create_queue_app(config: ServiceConfig):
    """The procrastinate app with dreambuild's tasks (their names are what queued jobs hold:
    they stay the same across releases)."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo(config.database_url), kwargs={"connect_timeout": 5}))
    app.task(name="dreambuild.advance", pass_context=True)(advance)
    app.task(name="dreambuild.predict", pass_context=True)(predict)
    app.task(name="dreambuild.deliver", pass_context=True)(deliver)
    for periodic in (recover, reconcile):
        task = app.task(name=f"dreambuild.{periodic.__name__}", queue=MAINTENANCE, pass_context=True)(periodic)
        app.periodic(cron="* * * * * */5", periodic_id=periodic.__name__)(task)
    return app


def _training_job(app, doc: dict):
    return app.tasks["dreambuild.advance"].configure(queue=stage_queue(doc), lock=f"training:{doc['id']}", queueing_lock=f"training:{doc['id']}")


def _delivery_job(app, delivery_id: str, at: float):
    from datetime import datetime, timezone

    return app.tasks["dreambuild.deliver"].configure(
        queue=WEBHOOKS, lock=f"webhook:{delivery_id}", schedule_at=datetime.fromtimestamp(at, timezone.utc)
    )


def defer_stage(app, doc: dict) -> None:
    """Queue the training's current stage (once: a job already waiting for it is enough)."""
    import procrastinate.exceptions

    try:
        _training_job(app, doc).defer(training_id=doc["id"])
    except procrastinate.exceptions.AlreadyEnqueued:
        pass


async def defer_stage_async(app, doc: dict) -> None:
    import procrastinate.exceptions

    try:
        await _training_job(app, doc).defer_async(training_id=doc["id"])
    except procrastinate.exceptions.AlreadyEnqueued:
        pass


def prediction_queue(db, doc: dict) -> str:
    """The queue of a worker that has the version loaded, or a LoRA version's base, and is idle,
    else the shared one: a warm model answers without setup (Replicate routes to warm models too)."""

    if doc.get("version"):
        owner, _, name = (doc.get("model") or "").partition("/")
        version = db.versions.get(owner, name, doc["version"]) if name else None
        base = version.get("template_version") if version and version.get("lora") else None
        from sqlalchemy import text

        with db.engine.connect() as conn:  # a worker already sent work is not idle, whatever its last heartbeat said
            waiting = {
                row[0]
                for row in conn.execute(
                    text("SELECT DISTINCT queue_name FROM procrastinate_jobs WHERE status IN ('todo', 'doing') AND queue_name LIKE :q"),
                    {"q": PREDICT + "-%"},
                )
            }
        for worker in db.heartbeats.live(STALLED_SECONDS / 2):
            queue = worker_predict_queue(worker["name"])
            warm = doc["version"] in (worker.get("loaded") or []) or (base is not None and base in (worker.get("bases") or []))
            if warm and not worker.get("current") and queue not in waiting:
                return queue
    return PREDICT


def defer_prediction(app, doc: dict, db=None) -> None:
    """Queue a prediction (once), preferring a worker where its version is warm."""
    import procrastinate.exceptions

    queue = prediction_queue(db, doc) if db is not None else PREDICT
    try:
        app.tasks["dreambuild.predict"].configure(queue=queue, lock=f"prediction:{doc['id']}", queueing_lock=f"prediction:{doc['id']}").defer(
            prediction_id=doc["id"]
        )
    except procrastinate.exceptions.AlreadyEnqueued:
        pass


async def defer_prediction_async(app, doc: dict, db=None) -> None:
    await in_thread(defer_prediction, app, doc, db)


def defer_delivery(app, delivery_id: str, at: float) -> None:
    _delivery_job(app, delivery_id, at).defer(delivery_id=delivery_id)


async def reconcile_jobs(app, state: JobState) -> None:
    """Queue every unfinished training and pending delivery that has no job waiting or running."""
    db = state.runtime.pipeline.db
    rows = await app.connector.execute_query_all_async("SELECT lock FROM procrastinate_jobs WHERE status IN ('todo', 'doing') AND lock IS NOT NULL")
    locked = {row["lock"] for row in rows}
    now = time.time()
    for doc in await in_thread(db.trainings.unfinished):
        if f"training:{doc['id']}" in locked or (doc["status"] in FINISHED and doc["stage"] == Stage.DONE):
            continue
        if now - min((doc.get("stage_started") or {}).values(), default=now) < ORPHAN_SECONDS:
            continue  # just created: its API is queuing it now
        if doc["stage"] == Stage.WEBHOOK:
            await in_thread(state.runtime.pipeline.advance, doc["id"])  # record its completed webhook, mark it done
            continue
        log.warning("training %s (stage %s) had no job: queued", doc["id"], doc["stage"])
        await defer_stage_async(app, doc)
    await _reconcile_predictions(app, db)
    for delivery_id, at in await in_thread(state.runtime.notifier.pending):
        if f"webhook:{delivery_id}" not in locked and at < now - ORPHAN_SECONDS:
            await _delivery_job(app, delivery_id, now).defer_async(delivery_id=delivery_id)


async def _reconcile_predictions(app, db) -> None:
    """Queue unfinished predictions that have no job (and are not waiting for a training), and
    move jobs waiting in the own queue of a worker that is gone to the shared queue."""
    from builder.service.predictions.predictor import waiting_on

    live = {w["name"] for w in await in_thread(db.heartbeats.live, STALLED_SECONDS)}
    rows = await app.connector.execute_query_all_async(
        "SELECT id, lock, queue_name, status FROM procrastinate_jobs WHERE status IN ('todo', 'doing') AND lock LIKE 'prediction:%%'"
    )
    jobs = {row["lock"]: row for row in rows}
    now = time.time()
    for doc in await in_thread(db.predictions.unfinished):
        job = jobs.get(f"prediction:{doc['id']}")
        orphaned = (
            job is not None
            and job["status"] == "todo"
            and job["queue_name"].startswith(PREDICT + "-")
            and job["queue_name"].removeprefix(PREDICT + "-") not in live
        )
        if orphaned:
            await app.job_manager.cancel_job_by_id_async(job["id"])
            log.warning("prediction %s waited for a worker that is gone: queued for any worker", doc["id"])
        elif job is not None or now - doc.get("created", now) < ORPHAN_SECONDS:
            continue
        if not doc.get("version") and waiting_on(doc, await in_thread(db.trainings.get, doc["training_id"])) == "wait":
            continue
        await defer_prediction_async(app, {"id": doc["id"]})


def apply_schema(config: ServiceConfig) -> None:
    """Create procrastinate's tables in the database once (under the migration lock)."""
    import psycopg

    from builder.service.store.database import LOCK_KEY

    with psycopg.connect(conninfo(config.database_url), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            exists = conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()[0]
            if not exists:
                import procrastinate

                app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=conninfo(config.database_url)))
                with app.open():
                    app.schema_manager.apply_schema()
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def queue_depths(config: ServiceConfig) -> dict[str, int]:
    """Jobs waiting per queue (for metrics)."""
    import psycopg

    with psycopg.connect(conninfo(config.database_url), autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute("SELECT queue_name, count(*) FROM procrastinate_jobs WHERE status = 'todo' GROUP BY queue_name").fetchall()
    return {queue: count for queue, count in rows}
