"""``dreambuild worker``: one process per GPU (or a CPU-only one for builds and webhooks).

configuration → database + the queue → procrastinate workers on its queues: the trainer
versions it runs (``train-<version>``, one job at a time: one training per GPU), ``build`` (one
at a time), ``webhooks`` and ``maintenance`` (several at once: a receiver that is down never holds
anything else) → the same pipeline stages as the embedded worker → a heartbeat in ``workers``
every few seconds (what ``dreambuild workers`` lists). SIGTERM stops the running training where
it is and queues it again for another worker, and lets a running prediction end within
``shutdown_grace_seconds`` before queuing it again; SIGKILL is found by procrastinate's heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid

from builder.service.config import ServiceConfig
from builder.service.dispatch import QueueDispatcher
from builder.service.runtime import build_runtime
from builder.service.store.database import Database, DatabaseUnavailable
from builder.service.workers.jobs import (
    BUILD,
    HEARTBEAT_SECONDS,
    MAINTENANCE,
    PREDICT,
    STALLED_SECONDS,
    WEBHOOKS,
    JobState,
    apply_schema,
    create_queue_app,
    in_thread,
    train_queue,
    worker_predict_queue,
)
from dreambuild.errors import DreambuildError, InputError

log = logging.getLogger(__name__)
ROLES = ("train", "build", "webhooks", "predict")
RETRY_SECONDS = 3


def worker_queues(config: ServiceConfig, roles: set[str], trainers: list[str] | None, name: str = "") -> dict[str, list[str]]:
    """The queues of each of this worker's roles."""
    unknown = roles - set(ROLES)
    if unknown:
        raise InputError(f"unknown worker role(s) {', '.join(sorted(unknown))}: choose from {', '.join(ROLES)}")
    versions = list(config.trainers)
    if trainers:
        versions = []
        for wanted in trainers:
            key = config.catalog_key(config.trainers, wanted)
            if key is None:
                raise InputError(f"trainer version {wanted} is not in the catalog")
            versions.append(key)
    queues: dict[str, list[str]] = {}
    if "train" in roles:
        if not versions:
            raise InputError("this worker trains, but the catalog has no trainer")
        queues["train"] = [train_queue(v) for v in versions]
    if "build" in roles:
        queues["build"] = [BUILD]
    if "webhooks" in roles:
        queues["webhooks"] = [WEBHOOKS, MAINTENANCE]
    if "predict" in roles:  # its own queue first: predictions routed to the versions it has warm
        queues["predict"] = [worker_predict_queue(name), PREDICT]
    return queues


def run_worker(
    config: ServiceConfig,
    *,
    roles: set[str],
    gpu: str | None = None,
    trainers: list[str] | None = None,
    name: str | None = None,
    webhook_concurrency: int = 8,
) -> None:
    """Run until SIGTERM/SIGINT."""
    if config.workers != "external":
        raise InputError("dreambuild worker needs `workers: external` and a PostgreSQL database_url in the configuration")
    if gpu is None and "train" in roles:
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES") or None
    if gpu is None and "predict" in roles:
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES") or None
    name = name or f"{socket.gethostname()}-{os.getpid()}" + (f"-gpu{gpu}" if gpu is not None else "")
    queues = worker_queues(config, roles, trainers, name)
    asyncio.run(_main(config, queues, gpu, name, webhook_concurrency))


async def _open(config: ServiceConfig) -> Database:
    """The database, waited for while it does not answer (workers may start before it)."""
    while True:
        try:
            db = Database(config.database)
            apply_schema(config)
            return db
        except DatabaseUnavailable as exc:
            problem = exc.detail
        except Exception as exc:  # procrastinate's schema step speaks psycopg
            import psycopg

            if not isinstance(exc, psycopg.OperationalError):
                raise
            problem = str(exc).strip().splitlines()[0]
        log.warning("waiting for the database: %s", problem)
        await asyncio.sleep(RETRY_SECONDS)


async def _main(config: ServiceConfig, queues: dict[str, list[str]], gpu: str | None, name: str, webhook_concurrency: int) -> None:  # noqa: C901
    db = await _open(config)
    state = JobState()
    app = create_queue_app(config)
    dispatch = QueueDispatcher(app, db)
    state.runtime = runtime = build_runtime(config, db, dispatch.schedule_delivery, worker=name, gpu=gpu, local_files=False)
    dispatch.bind(runtime)
    schemas = runtime.schemas
    if "train" in queues:  # publish the schemas an API without the trainers' code validates with
        for version in config.trainers:
            try:
                await in_thread(schemas.get, version)
            except DreambuildError as exc:
                log.warning("trainer version %s: %s", version, exc)
    worker_id = uuid.uuid4().hex[:12]
    workers = db.heartbeats
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    options = {
        "install_signal_handlers": False,
        "update_heartbeat_interval": HEARTBEAT_SECONDS,
        "stalled_worker_timeout": STALLED_SECONDS,
        "fetch_job_polling_interval": 1.0,
        "additional_context": {"state": state},  # what the tasks run on (builder.service.workers.jobs)
    }

    async def serve(role: str, queue_names: list[str]) -> None:
        """One role's procrastinate worker, started again whenever it ends before this worker stops
        (the database, and so the queue, went away: it waits for it to come back)."""
        while not stop.is_set():
            try:
                await app.run_worker_async(
                    queues=queue_names, concurrency=webhook_concurrency if role == "webhooks" else 1, name=f"{name}-{role}", **options
                )
                problem = "it stopped"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                problem = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            if not stop.is_set():
                log.warning("worker %s (%s): the queue is unavailable (%s); again in %ss", name, role, problem, RETRY_SECONDS)
                await asyncio.sleep(RETRY_SECONDS)
            while state.busy(f"{name}-{role}") and not stop.is_set():
                await asyncio.sleep(1)  # one training per GPU: its job outlived the worker that took it

    async with app.open_async():
        runs = [asyncio.create_task(serve(role, q), name=role) for role, q in queues.items()]
        log.warning("worker %s: queues %s%s", name, ", ".join(q for qs in queues.values() for q in qs), f", GPU {gpu}" if gpu is not None else "")

        beat_now = asyncio.Event()
        state.changed = lambda: loop.call_soon_threadsafe(beat_now.set)

        async def beat() -> None:
            while not stop.is_set():
                beat_now.clear()
                doc = {
                    "id": worker_id,
                    "name": name,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "gpu": gpu,
                    "queues": sorted(q for qs in queues.values() for q in qs),
                    "roles": sorted(queues),
                    "trainer_versions": [v for v in config.trainers if train_queue(v) in queues.get("train", [])],
                    "current": sorted(set(state.current.values())),
                    "jobs": sorted(state.current),
                    "loaded": runtime.predictor.servers.loaded(),
                    "bases": runtime.predictor.servers.bases(),
                    "model_memory": runtime.predictor.servers.memory(),
                }
                try:
                    await in_thread(workers.beat, worker_id, doc)
                except DreambuildError as exc:
                    log.warning("worker heartbeat: %s", exc)
                waits = [asyncio.create_task(stop.wait()), asyncio.create_task(beat_now.wait())]
                await asyncio.wait(waits, timeout=HEARTBEAT_SECONDS, return_when=asyncio.FIRST_COMPLETED)
                for task in waits:
                    task.cancel()

        beating = asyncio.create_task(beat())
        await stop.wait()
        log.warning(
            "worker %s stopping: running trainings stop where they are and are queued again; running predictions "
            "may end within %gs (shutdown_grace_seconds), then are queued again",
            name,
            config.shutdown_grace_seconds,
        )
        runtime.pipeline.stopping.set()
        runtime.predictor.stop(config.shutdown_grace_seconds)  # running predictions: their grace, then handed back
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        await beating
        await in_thread(runtime.predictor.servers.stop_all)
    try:
        workers.remove(worker_id)
    except DreambuildError:
        pass  # the database is gone: its heartbeat ages out instead
    db.close()
