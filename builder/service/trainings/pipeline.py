"""One training's pipeline: train → build + push → webhook, each step recorded before the next.

The training document's ``stage`` says where it is (queued, training, building, webhook, done);
:meth:`Pipeline.advance` runs the stage it is at, so a restarted service, or another worker after
one died, resumes every unfinished training where it stopped. The embedded worker runs the stages
one after another; ``dreambuild worker`` runs each as a queue job (:mod:`builder.service.workers.jobs`).
Re-running a step is safe: the trainer runs again from scratch, the build of the same weights
gives the same digest (versions are recorded once), and webhooks are recorded once under their
id and sent by their own jobs (:mod:`builder.service.webhooks.deliveries`).
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import httpx

from builder.cog.client import CogError
from builder.cog.messages import log_error, prediction_error, without_host_paths
from builder.egress import fetch
from builder.image.build import Reporter, build_image, model_ref
from builder.service.config import ServiceConfig
from builder.service.schema import FINISHED, Stage, Status
from builder.service.store.database import Database, DatabaseUnavailable
from builder.service.store.files import FILENAME
from builder.service.trainings.metrics import read_likeness
from builder.service.trainings.record import TrainingRecord, now_iso
from builder.service.trainings.runners import TRAINER, clear_stale, start_run
from builder.service.trainings.schemas import TrainerSchemas, file_inputs, model_schema
from builder.service.webhooks.deliveries import Notifier
from dreambuild.errors import DreambuildError

log = logging.getLogger(__name__)
POLL = 0.3
LOGS_INTERVAL = 2.0  # at most one logs webhook this often
CANCEL_GRACE = 2.0  # seconds a canceled trainer's server has to exit before it is killed
DATABASE_OUTAGE_SECONDS = 300  # a running trainer outlasts a database outage this long


class Canceled(Exception):
    """The user canceled the training."""


class Interrupted(Exception):
    """The service is shutting down: the training stops where it is and resumes at the next start."""


class TrainerFailed(DreambuildError):
    """The trainer's prediction failed."""


class FilesUnavailable(DreambuildError):
    """A worker cannot move a file through the API's file store."""


class Pipeline:
    """Runs one training's stages, recording each in the database before the next.

    ``local_files``: this process is the API's (embedded mode) and reads its file store
    directly; a worker on another machine moves files through the API's internal routes."""

    def __init__(
        self,
        config: ServiceConfig,
        db: Database,
        schemas: TrainerSchemas,
        notifier: Notifier,
        *,
        local_files: bool = True,
        gpu: str | None = None,
        worker: str = "embedded",
    ) -> None:
        self.config, self.db, self.schemas, self.notifier = config, db, schemas, notifier
        self.local_files, self.gpu, self.worker = local_files, gpu, worker
        self.leases = db.leases
        self.stopping = threading.Event()  # set at shutdown: running trainings stop and keep their stage
        # Called when a training has ended: predictions queued on it are run (or failed).
        self.on_training_end: Callable[[str], None] = lambda training_id: None

    def internal_url(self, doc: TrainingRecord, what: str) -> str:
        return f"{self.config.internal_base_url}/internal/{doc['secret']}/{what}/{doc['id']}"

    def run(self, training_id: str) -> None:
        """Every stage left, one after the other (the embedded mode's worker)."""
        while self.advance(training_id) is not None:
            pass

    def advance(self, training_id: str) -> Stage | None:
        """Run the stage the training is at; return the stage to run next (``building``), or
        None when nothing is left to run (done, or stopped by a shutdown: resumed where it is)."""
        doc = self.db.trainings.get(training_id)
        if doc is None or doc["stage"] == Stage.DONE:
            return None
        try:
            self._check_stopping()
            if doc["stage"] in (Stage.QUEUED, Stage.TRAINING):
                self._train(doc)
                return Stage.BUILDING
            if doc["stage"] == Stage.BUILDING:
                doc = self._build(doc)
        except Interrupted:
            log.warning(
                "training %s stopped by the shutdown at stage %s; it resumes there at the next start (or on another worker)",
                training_id,
                self.db.trainings.get(training_id)["stage"],
            )
            return None
        except DatabaseUnavailable as exc:  # not the training's fault: it is queued again once the database is back
            log.warning("training %s stopped at its stage: %s (%s)", training_id, exc, exc.detail)
            return None
        except Canceled:
            doc = self._finish(training_id, Status.CANCELED, "canceled")
        except DreambuildError as exc:
            doc = self._finish(training_id, Status.FAILED, str(exc))
        except Exception as exc:  # a bug must still end the training and tell the user
            log.exception("training %s failed", training_id)
            doc = self._finish(training_id, Status.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        self._complete(doc)
        return None

    def _check_stopping(self) -> None:
        if self.stopping.is_set():
            raise Interrupted

    def _setup_abort(self, training_id: str) -> Callable[[], None]:
        """While a trainer's server sets up (a minute or more on a GPU machine loading its base), a
        shutdown or a cancel stops it rather than waiting for it: raises Interrupted or Canceled."""
        checked = 0.0

        def abort() -> None:
            nonlocal checked
            self._check_stopping()
            if time.monotonic() - checked >= 1.0:  # the database at most once a second
                checked = time.monotonic()
                doc = self.db.trainings.get(training_id)
                if doc is None or doc.get("cancel_requested"):
                    raise Canceled

        return abort

    def _finish(self, training_id: str, status: str, error: str) -> TrainingRecord:
        self.leases.release(training_id)
        # Errors are the user's to read: no path of this machine (the trainer's work directory, its temporary files).
        error = without_host_paths(error) if error else error
        return self.db.trainings.update(training_id, status=status, error=error, stage=Stage.WEBHOOK, completed_at=now_iso())

    def _complete(self, doc: TrainingRecord) -> None:
        """The training has ended: its completed webhook is recorded (and sent by its own job)."""
        # The trainer's copy of output.zip, its Cog project and the build context: kept elsewhere or done with.
        shutil.rmtree(self.config.data_dir / "work" / doc["id"], ignore_errors=True)
        self.notifier.event(doc, "completed")
        self.db.trainings.update(doc["id"], stage=Stage.DONE)
        self.on_training_end(doc["id"])  # predictions queued on it run (or fail) now

    def _lease(self, entry, doc: TrainingRecord) -> tuple[str | None, float]:
        """cog-http: a server of the pool for this training alone, waited for while all are busy;
        and how long that took."""
        if entry.runner != "cog-http":
            return None, 0.0
        started = time.monotonic()
        while True:
            url = self.leases.acquire(entry.pool, doc["id"])
            if url or not entry.pool:
                return url, round(time.monotonic() - started, 3)
            if self.db.trainings.get(doc["id"]).get("cancel_requested"):
                raise Canceled
            self._check_stopping()
            time.sleep(POLL * 3)

    def _train(self, doc: TrainingRecord) -> TrainingRecord:
        if doc.get("cancel_requested"):
            raise Canceled
        entry = self.config.trainers[doc["trainer_version"]]
        clear_stale(entry, doc["id"], doc.get("runner_pid"), doc.get("runner_host"))
        url, server_wait = self._lease(entry, doc)
        workdir = self.config.data_dir / "work" / doc["id"]
        doc = self.db.trainings.update(
            doc["id"],
            stage=Stage.TRAINING,
            status=Status.PROCESSING,
            started_at=doc.get("started_at") or now_iso(),
            cog_status=None,
            runner_pid=None,
            weights=None,
            worker=self.worker,
        )
        started = time.monotonic()
        self.notifier.event(doc, "start")
        try:
            inputs = self._fetch_inputs(doc, workdir / "inputs")
            run = start_run(
                entry,
                doc["id"],
                inputs,
                webhook=self.internal_url(doc, "cog"),
                upload_url=self.internal_url(doc, "files") + "/",
                workdir=workdir,
                schema=self.schemas.get(doc["trainer_version"]),
                url=url,
                gpu=self.gpu,
                abort=self._setup_abort(doc["id"]),
            )
        except BaseException:
            self._forget_inputs(doc, workdir / "inputs")
            raise
        try:
            if run.pid:
                self.db.trainings.update(doc["id"], runner_pid=run.pid, runner_host=socket.gethostname())
            doc = self._watch(doc, entry, run, started)
        finally:
            run.stop()
            # The copies of the user's files fetched for the trainer: not kept past it (a re-run fetches again).
            self._forget_inputs(doc, workdir / "inputs")
            if entry.runner == "cog-http":
                self.leases.release(doc["id"])
        if doc["cog_status"] == Status.CANCELED:
            raise Canceled
        if doc["cog_status"] == Status.FAILED:
            raise TrainerFailed(f"training failed: {prediction_error(doc.get('cog_error'))}")
        if not doc.get("weights"):
            raise TrainerFailed("the trainer finished without uploading output.zip")
        predict_time = (doc.get("cog_metrics") or {}).get("predict_time") or round(time.monotonic() - started, 3)
        metrics = {"predict_time": predict_time, **({"trainer_wait_time": server_wait} if server_wait >= 1 else {})}
        return self.db.trainings.update(doc["id"], stage=Stage.BUILDING, metrics=metrics, runner_pid=None)

    def _watch(self, doc: TrainingRecord, entry, run, started: float) -> TrainingRecord:  # noqa: C901
        """Follow the trainer's prediction to its end: logs webhooks, cancel, shutdown, deadline
        and health checks (a server that stops answering, or is idle without having reported)."""
        sent_logs, last_sent = "", 0.0
        next_check, unreachable, idle = time.monotonic() + entry.health_seconds, 0, 0
        deadline = started + entry.timeout_minutes * 60
        down_since = None
        while True:
            try:
                doc = self.db.trainings.get(doc["id"])
                down_since = None
            except DatabaseUnavailable:  # a database restart does not end a training that runs on
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > DATABASE_OUTAGE_SECONDS:
                    raise
                time.sleep(1)
                continue
            if doc.get("logs") != sent_logs and time.monotonic() - last_sent >= LOGS_INTERVAL:
                # Best effort, one attempt: the next update carries the logs again.
                sent_logs, last_sent = doc.get("logs"), time.monotonic()
                self.notifier.event(doc, "logs", f"{doc['id']}-logs-{len(sent_logs)}")
            if doc.get("cancel_requested"):
                run.cancel()
                # Nothing of a canceled run is kept: its server need not wind down gracefully, and
                # the user sees "canceled" within seconds.
                run.stop(grace=CANCEL_GRACE)
                raise Canceled
            if self.stopping.is_set():
                run.cancel()  # a server this run does not own (cog-http) must not go on for nothing
                raise Interrupted
            if doc.get("cog_status") in FINISHED:
                return doc
            if not run.alive():
                tail = run.logs()
                log.warning("training %s: the trainer's server stopped; the end of its log:\n%s", doc["id"], tail[-3000:])
                raise CogError(f"the {TRAINER} stopped: {log_error(tail) or 'no error in its log'}")
            if time.monotonic() > deadline:
                run.cancel()
                raise TrainerFailed(f"the trainer did not finish within timeout_minutes={entry.timeout_minutes:g}")
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + entry.health_seconds
                health = run.client.health()
                unreachable = 0 if health else unreachable + 1
                idle = idle + 1 if health and health.get("status") == "READY" else 0
                if unreachable >= 3:
                    raise CogError(f"the {TRAINER} at {run.client.base_url} stopped answering health checks")
                if idle >= 2:  # twice in a row: a final webhook in flight has had its time
                    raise CogError(
                        f"the {TRAINER} at {run.client.base_url} is idle but never reported the training's end: it restarted, "
                        f"or it cannot reach this service at {self.config.internal_base_url} (internal_url) to report"
                    )
            time.sleep(POLL)

    def _fetch_inputs(self, doc: TrainingRecord, scratch: Path) -> dict:
        """The trainer's inputs with every file URL outside this service fetched here first, under
        the egress policy and the upload limit, and handed on as this service's own URL: a trainer
        connects to nothing a user names."""
        inputs = dict(doc["input"])
        uploads = self.config.base_url + "/v1/uploads/"
        for name in sorted(file_inputs(self.schemas.get(doc["trainer_version"])) & set(inputs)):
            values = inputs[name] if isinstance(inputs[name], list) else [inputs[name]]
            fetched = []
            for index, url in enumerate(values):
                if not isinstance(url, str) or url.startswith(uploads):
                    fetched.append(self.config.to_internal(url) if isinstance(url, str) else url)  # as the trainer reaches it
                    continue
                filename, folder = _file_name(url), f"{name}-{index}"
                target = (self.config.files / doc["id"] / "inputs" if self.local_files else scratch) / folder / filename
                fetch(url, target, policy=self.config.egress, what=f"input.{name}", max_bytes=self.config.max_upload_bytes)
                if not self.local_files:  # into the API's file store, which serves it to the trainer
                    _put(f"{self.internal_url(doc, 'inputs')}/{folder}/{filename}", target)
                    target.unlink()
                fetched.append(f"{self.internal_url(doc, 'inputs')}/{folder}/{filename}")
            inputs[name] = fetched if isinstance(inputs[name], list) else fetched[0]
        return inputs

    def _forget_inputs(self, doc: TrainingRecord, scratch: Path) -> None:
        shutil.rmtree(scratch, ignore_errors=True)
        if self.local_files:
            shutil.rmtree(self.config.files / doc["id"] / "inputs", ignore_errors=True)
        else:
            _delete(f"{self.internal_url(doc, 'inputs')}")

    def _weights(self, doc: TrainingRecord) -> Path:
        """output.zip for the build: the API's own file, or a copy downloaded from it."""
        if self.local_files:
            return self.config.files / doc["id"] / "output.zip"
        target = self.config.data_dir / "work" / doc["id"] / "output.zip"
        _get(f"{self.internal_url(doc, 'files')}/output.zip", target)
        return target

    def _build(self, doc: TrainingRecord) -> TrainingRecord:
        if doc.get("cancel_requested"):
            raise Canceled
        template = doc.get("template_image") or self.config.template_catalog()[doc["template_version"]].reference(doc["template_version"])
        settings = self.config.builder_settings()

        def step(message: str) -> None:
            if self.db.trainings.update(doc["id"], logs_append=f"build: {message}\n").get("cancel_requested"):
                raise Canceled  # between build steps; a version is recorded only after the build
            self._check_stopping()

        reporter = Reporter(step=step)
        weights = self._weights(doc)
        likeness = read_likeness(weights)
        if likeness is not None:  # measure_likeness: the scores, for the answer and the completed webhook
            doc = self.db.trainings.update(doc["id"], metrics={**(doc.get("metrics") or {}), "likeness": likeness})
        result = build_image(
            weights,
            template,
            model_ref(doc["model"], settings),
            notes=doc.get("notes") or "",
            settings=settings,
            reporter=reporter,
            workdir=self.config.data_dir / "work" / doc["id"] / "build",
        )
        owner, name = doc["model"].split("/")
        try:  # the template's schema is its versions' (Replicate's clients read it as openapi_schema)
            schema, cog_version = model_schema(template, settings, self.db)
        except DreambuildError as exc:  # predictions then leave input checks to the model's Cog server
            log.warning("training %s: the version's schema cannot be read: %s", doc["id"], exc)
            schema, cog_version = None, ""
        self.db.versions.add(
            owner,
            name,
            {
                "id": result.digest,
                "model": doc["model"],
                "image": result.image,
                "notes": doc.get("notes"),
                "training_id": doc["id"],
                "trainer_version": doc["trainer_version"],
                "template_version": doc["template_version"],
                "lora": result.weights_kind == "lora",  # served by its template's base (workers route it where that is warm)
                "created_at": now_iso(),
                "openapi_schema": schema,
                "cog_version": cog_version,
            },
        )
        doc = self.db.trainings.update(
            doc["id"], stage=Stage.WEBHOOK, status=Status.SUCCEEDED, version=result.digest, image=result.image, completed_at=now_iso()
        )
        self.notifier.event(doc, "output")
        return doc


def _get(url: str, target: Path) -> None:
    """Download one of the API's internal files (a worker's copy of output.zip)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with httpx.stream("GET", url, timeout=60) as response, open(target, "wb") as out:
            if response.status_code != 200:
                raise FilesUnavailable(f"the service's file store answered HTTP {response.status_code} for {urlsplit(url).path.rsplit('/', 1)[-1]}")
            for chunk in response.iter_bytes(2**20):
                out.write(chunk)
    except httpx.HTTPError as exc:
        raise FilesUnavailable(f"cannot reach the service's file store: {exc}") from None


def _put(url: str, source: Path) -> None:
    def chunks():
        with open(source, "rb") as handle:
            while chunk := handle.read(2**20):
                yield chunk

    try:
        response = httpx.put(url, content=chunks(), timeout=60)
    except httpx.HTTPError as exc:
        raise FilesUnavailable(f"cannot reach the service's file store: {exc}") from None
    if response.status_code >= 300:
        raise FilesUnavailable(f"the service's file store refused {source.name}: HTTP {response.status_code} {response.text[:200]}")


def _delete(url: str) -> None:
    try:
        httpx.delete(url, timeout=30)
    except httpx.HTTPError:
        log.warning("could not delete %s (the retention sweep will)", url)


def _file_name(url: str) -> str:
    """The name a fetched file is kept and served under: the URL's own, when it is a safe one."""
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    return name if FILENAME.fullmatch(name) else "input"


class TrainingPool:
    """The embedded mode's trainings: run in this process, at most ``max_concurrent`` at once, off
    the API's threads (the same stages a ``dreambuild worker`` runs as queue jobs)."""

    def __init__(self, pipeline: Pipeline, max_concurrent: int) -> None:
        self.pipeline = pipeline
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="training")
        self._active: set[str] = set()
        self._lock = threading.Lock()

    def submit(self, training_id: str) -> None:
        with self._lock:
            if training_id in self._active:
                return
            self._active.add(training_id)
        self._pool.submit(self._run, training_id)

    def _run(self, training_id: str) -> None:
        try:
            self.pipeline.run(training_id)
        finally:
            with self._lock:
                self._active.discard(training_id)

    def resume(self) -> list[str]:
        """Submit every unfinished training (after a restart); return their ids."""
        ids = [doc["id"] for doc in self.pipeline.db.trainings.unfinished()]
        for training_id in ids:
            self.submit(training_id)
        return ids

    def shutdown(self) -> None:
        """Stop the running trainings where they are (their trainers stopped, their stages kept, so
        that the next start resumes them) and wait for that; queued ones stay queued."""
        with self._lock:
            running = sorted(self._active)
        if running:
            log.warning("shutting down: stopping %d training(s): %s", len(running), ", ".join(running))
        self.pipeline.stopping.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if running:
            log.warning("shutdown complete: every unfinished training resumes at the next start")
