"""One training's pipeline: train → build + push → webhook, each step recorded before the next.

The training document's ``stage`` says where it is (queued, training, building, webhook, done);
:meth:`Pipeline.run` starts from that stage, so a restarted service resumes every unfinished
training where it stopped. Re-running a step is safe: the trainer runs again from scratch, the
build of the same weights gives the same digest (versions are recorded once), and the webhook
keeps its id.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from builder.build import Reporter, build_image, model_ref
from builder.cog.client import CogError, prediction_error
from builder.egress import fetch
from builder.service.config import ServiceConfig
from builder.service.database import Database
from builder.service.http import FILENAME
from builder.service.runners import TRAINER, clear_stale, start_run
from builder.service.schemas import TrainerSchemas, file_inputs
from builder.service.training import TrainingRecord, now_iso, public_training
from builder.service.webhooks import deliver, new_secret, secret_setting
from dreambuild.errors import DreambuildError

log = logging.getLogger(__name__)
POLL = 0.3
LOGS_INTERVAL = 2.0  # at most one logs webhook this often


class Canceled(Exception):
    """The user canceled the training."""


class Interrupted(Exception):
    """The service is shutting down: the training stops where it is and resumes at the next start."""


class TrainerFailed(DreambuildError):
    """The trainer's prediction failed."""


class Pipeline:
    """Runs one training's stages, recording each in the database before the next."""

    def __init__(self, config: ServiceConfig, db: Database, schemas: TrainerSchemas) -> None:
        self.config, self.db, self.schemas = config, db, schemas
        self.stopping = threading.Event()  # set at shutdown: running trainings stop and keep their stage

    def webhook_secret(self, doc: TrainingRecord) -> str:
        """The signing secret of the training's owner."""
        return self.db.setting(secret_setting(doc["owner"]), new_secret)

    def internal_url(self, doc: TrainingRecord, what: str) -> str:
        return f"{self.config.base_url}/internal/{doc['secret']}/{what}/{doc['id']}"

    def run(self, training_id: str) -> None:
        doc = self.db.get_training(training_id)
        try:
            self._check_stopping()
            if doc["stage"] in ("queued", "training"):
                doc = self._train(doc)
            if doc["stage"] == "building":
                doc = self._build(doc)
            if doc["stage"] == "webhook":
                self._check_stopping()
        except Interrupted:
            log.warning("training %s stopped by the shutdown at stage %s; it resumes there at the next start",
                        training_id, self.db.get_training(training_id)["stage"])
            return
        except Canceled:
            doc = self._finish(training_id, "canceled", "canceled")
        except DreambuildError as exc:
            doc = self._finish(training_id, "failed", str(exc))
        except Exception as exc:  # a bug must still end the training and tell the user
            log.exception("training %s failed", training_id)
            doc = self._finish(training_id, "failed", f"internal error: {type(exc).__name__}: {exc}")
        # The trainer's copy of output.zip, its Cog project and the build context: all kept elsewhere or done with.
        shutil.rmtree(self.config.data_dir / "work" / training_id, ignore_errors=True)
        if doc["stage"] == "webhook":
            try:
                self._webhook(doc)
            except Interrupted:
                log.warning("training %s: its webhook is sent at the next start (shutdown)", training_id)
                return
            except Exception as exc:  # the training is over: record why its webhook was not sent, never loop on it
                log.exception("webhook of training %s failed", training_id)
                self.db.update_training(training_id, stage="done", webhook_delivery={
                    "ok": False, "attempts": 0, "status": None, "error": f"internal error: {type(exc).__name__}: {exc}"})

    def _check_stopping(self) -> None:
        if self.stopping.is_set():
            raise Interrupted

    def _finish(self, training_id: str, status: str, error: str) -> TrainingRecord:
        return self.db.update_training(training_id, status=status, error=error, stage="webhook", completed_at=now_iso())

    def _train(self, doc: TrainingRecord) -> TrainingRecord:
        if doc.get("cancel_requested"):
            raise Canceled
        entry = self.config.trainers[doc["trainer_version"]]
        clear_stale(entry, doc["id"], doc.get("runner_pid"))
        workdir = self.config.data_dir / "work" / doc["id"]
        files = self.config.files / doc["id"]
        (files / "output.zip").unlink(missing_ok=True)
        doc = self.db.update_training(doc["id"], stage="training", status="processing", started_at=doc.get("started_at") or now_iso(),
                                         cog_status=None, runner_pid=None)
        started = time.monotonic()
        self._send_event(doc, "start")
        inputs = self._fetch_inputs(doc)
        run = start_run(entry, doc["id"], inputs, webhook=self.internal_url(doc, "cog"),
                        upload_url=self.internal_url(doc, "files") + "/", workdir=workdir, schema=self.schemas.get(doc["trainer_version"]))
        sent_logs, last_sent = "", 0.0
        try:
            if run.pid:
                self.db.update_training(doc["id"], runner_pid=run.pid)
            while True:
                doc = self.db.get_training(doc["id"])
                if doc.get("logs") != sent_logs and time.monotonic() - last_sent >= LOGS_INTERVAL:
                    # Best effort, one attempt: the next update carries the logs again.
                    sent_logs, last_sent = doc.get("logs"), time.monotonic()
                    self._send_event(doc, "logs", f"{doc['id']}-logs-{len(sent_logs)}", attempts=1)
                if doc.get("cancel_requested"):
                    run.cancel()
                    raise Canceled
                if self.stopping.is_set():
                    run.cancel()  # a server this run does not own (cog-http) must not go on for nothing
                    raise Interrupted
                if doc.get("cog_status") in ("succeeded", "failed", "canceled"):
                    break
                if not run.alive():
                    raise CogError(f"the {TRAINER} stopped: {run.logs()[-500:]}")
                time.sleep(POLL)
        finally:
            run.stop()
            # The copies of the user's files fetched for the trainer: not kept past it (a re-run fetches again).
            shutil.rmtree(files / "inputs", ignore_errors=True)
        if doc["cog_status"] == "canceled":
            raise Canceled
        if doc["cog_status"] == "failed":
            raise TrainerFailed(f"training failed: {prediction_error(doc.get('cog_error'))}")
        weights = files / "output.zip"
        if not weights.is_file():
            raise TrainerFailed("the trainer finished without uploading output.zip")
        predict_time = (doc.get("cog_metrics") or {}).get("predict_time") or round(time.monotonic() - started, 3)
        return self.db.update_training(doc["id"], stage="building", weights=str(weights), metrics={"predict_time": predict_time},
                                          runner_pid=None)

    def _fetch_inputs(self, doc: TrainingRecord) -> dict:
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
                    fetched.append(url)
                    continue
                filename = _file_name(url)
                folder = f"{name}-{index}"
                fetch(url, self.config.files / doc["id"] / "inputs" / folder / filename, policy=self.config.egress,
                      what=f"input.{name}", max_bytes=self.config.max_upload_bytes)
                fetched.append(f"{self.internal_url(doc, 'inputs')}/{folder}/{filename}")
            inputs[name] = fetched if isinstance(inputs[name], list) else fetched[0]
        return inputs

    def _build(self, doc: TrainingRecord) -> TrainingRecord:
        if doc.get("cancel_requested"):
            raise Canceled
        template = self.config.templates[doc["template_version"]].reference(doc["template_version"])
        settings = self.config.builder_settings()
        def step(message: str) -> None:
            if self.db.update_training(doc["id"], logs_append=f"build: {message}\n").get("cancel_requested"):
                raise Canceled  # between build steps; a version is recorded only after the build
            self._check_stopping()

        reporter = Reporter(step=step)
        result = build_image(Path(doc["weights"]), template, model_ref(doc["model"], settings), notes=doc.get("notes") or "",
                             settings=settings, reporter=reporter, workdir=self.config.data_dir / "work" / doc["id"] / "build")
        owner, name = doc["model"].split("/")
        self.db.add_version(owner, name, {
            "id": result.digest, "model": doc["model"], "image": result.image, "notes": doc.get("notes"),
            "training_id": doc["id"], "trainer_version": doc["trainer_version"], "template_version": doc["template_version"],
            "created_at": now_iso(),
        })
        doc = self.db.update_training(doc["id"], stage="webhook", status="succeeded", version=result.digest,
                                         image=result.image, completed_at=now_iso())
        self._send_event(doc, "output")
        return doc

    def _send_event(self, doc: TrainingRecord, event: str, webhook_id: str | None = None, attempts: int | None = None) -> None:
        """A webhook for a non-final event (start, logs, output), when the training asked for it."""
        url = doc.get("webhook_completed")
        if url and event in (doc.get("webhook_events_filter") or []):
            deliver(url, public_training(doc, self.config.base_url), secret=self.webhook_secret(doc), policy=self.config.egress,
                    webhook_id=webhook_id or f"{doc['id']}-{event}", attempts=attempts or self.config.webhook_attempts,
                    backoff=self.config.webhook_backoff, stop=self.stopping)

    def _webhook(self, doc: TrainingRecord) -> None:
        url = doc.get("webhook_completed")
        if url and "completed" in (doc.get("webhook_events_filter") or ["completed"]):
            result = deliver(url, public_training(doc, self.config.base_url), secret=self.webhook_secret(doc), policy=self.config.egress,
                             webhook_id=f"{doc['id']}-completed", attempts=self.config.webhook_attempts,
                             backoff=self.config.webhook_backoff, stop=self.stopping)
            if not result.ok and self.stopping.is_set():
                raise Interrupted  # not given up: retried at the next start
            self.db.update_training(doc["id"], webhook_delivery={"ok": result.ok, "attempts": result.attempts,
                                                                    "status": result.status, "error": result.error})
        self.db.update_training(doc["id"], stage="done")


def _file_name(url: str) -> str:
    """The name a fetched file is kept and served under: the URL's own, when it is a safe one."""
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    return name if FILENAME.fullmatch(name) else "input"


class Worker:
    """Runs trainings, at most ``max_concurrent`` at once, off the API's threads."""

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
        ids = [doc["id"] for doc in self.pipeline.db.unfinished_trainings()]
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
