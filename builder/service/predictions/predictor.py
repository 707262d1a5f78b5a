"""Running one prediction on a worker: record → its version (or, for a prediction queued on a
training, that training's new version once it exists) → the version's warm Cog server
(:mod:`builder.service.predictions.model_servers`) → inputs made fetchable (the service's files as signed
URLs; other URLs fetched here under the egress policy) → one Cog prediction, cancelable →
outputs stored as files → the record finished → webhooks.

Re-running is safe: a prediction interrupted by a restart starts again from its inputs (a Cog
prediction has no partial result worth keeping), and only a prediction still ``starting`` or
``processing`` is run. A stopping worker lets a running prediction end within
``shutdown_grace_seconds`` — its end comes back on the request that started it, not through the
service's listener, which a stopping service has closed — then hands it back as ``starting``.
"""

from __future__ import annotations

import base64
import logging
import mimetypes
import re
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from builder.cog.client import CogError
from builder.cog.messages import log_error, prediction_error, without_host_paths
from builder.egress import fetch
from builder.service.config import ServiceConfig
from builder.service.predictions.memory import peak_host
from builder.service.predictions.model_servers import ModelServers
from builder.service.predictions.record import FILE_REF, PredictionRecord, public_prediction
from builder.service.schema import FINISHED, Status, WebhookEvent
from builder.service.store.database import Database
from builder.service.store.files import FileStore, safe_name
from builder.service.trainings.record import TrainingRecord, now_iso
from builder.service.trainings.schemas import file_inputs
from builder.service.webhooks.deliveries import Notifier
from dreambuild.errors import DreambuildError

log = logging.getLogger(__name__)
POLL = 0.3
FIRST_POLL = 0.02
LOGS_INTERVAL = 2.0  # at most one logs webhook this often
HEALTH_SECONDS = 5.0
DATA_URL = re.compile(r"^data:([^;,]+)?((?:;[^;,]*)*?)(;base64)?,(.*)$", re.S)


class PredictionFailed(DreambuildError):
    """The prediction cannot run (its training failed, its version is gone, ...)."""


class ModelCrashed(PredictionFailed):
    """The model's server died, hung or lost the prediction: it is stopped, the next one starts fresh."""


class Canceled(Exception):
    pass


class Interrupted(Exception):
    """The worker is stopping and the prediction did not end within its grace: handed back."""


def waiting_on(doc: PredictionRecord, training: TrainingRecord | None) -> str | None:
    """For a prediction queued on a training: ``None`` when it may run (its version is set),
    ``"wait"`` while the training runs, else why it cannot run."""
    if doc.get("version"):
        return None
    if training is None:
        return f"training {doc.get('training_id')} no longer exists"
    if training["status"] == Status.SUCCEEDED and training.get("version"):
        return None
    if training["status"] in FINISHED:
        reason = training.get("error") or training["status"]
        return f"training {training['id']} {training['status']}: {reason}"
    return "wait"


class Predictor:
    """Runs predictions on this worker's model servers."""

    def __init__(
        self,
        config: ServiceConfig,
        db: Database,
        files: FileStore,
        notifier: Notifier,
        servers: ModelServers,
        *,
        local_files: bool = True,
        worker: str = "embedded",
    ) -> None:
        self.config, self.db, self.files, self.notifier, self.servers = config, db, files, notifier, servers
        self.local_files, self.worker = local_files, worker  # a worker sends outputs to the API (no shared disk)
        self._updates: dict[str, threading.Event] = {}  # predictions running here, woken by Cog's webhook
        self._ended: dict[str, list] = {}  # predictions API requests wait for (Prefer: wait): their wake-ups
        self._guard = threading.Lock()
        self._stop_at: float | None = None  # set by stop(): when running predictions are handed back

    def notify(self, prediction_id: str) -> None:
        """Cog's webhook for a prediction arrived (embedded: in this process): look now, not at the next poll."""
        event = self._updates.get(prediction_id)
        if event is not None:
            event.set()

    def public(self, doc: PredictionRecord) -> dict:
        return public_prediction(doc, self.config.base_url, self.files.signed_url)

    def _event(self, doc: PredictionRecord, event: WebhookEvent, webhook_id: str | None = None) -> None:
        self.notifier.prediction_event(doc, event, self.public(doc), webhook_id)

    def run(self, prediction_id: str) -> str | None:
        """Run the prediction if it is due; ``"wait"`` when it waits for its training,
        ``"again"`` when this worker is stopping and hands it back (not started, or interrupted
        after its grace: it runs again from its inputs, here at the next start or on another
        worker)."""
        if self.stopping:
            return "again"
        doc = self.db.predictions.get(prediction_id)
        if doc is None or doc["status"] in FINISHED:
            return None
        try:
            doc = self._resolve_version(doc)
            if doc is None:
                return "wait"
            doc = self._predict(doc)
        except Interrupted:
            self.db.predictions.update(prediction_id, status=Status.STARTING, started_at=None, worker=None, logs="")
            log.warning(
                "prediction %s handed back by the shutdown (not done after shutdown_grace_seconds=%g): it runs again from its inputs",
                prediction_id,
                self.config.shutdown_grace_seconds,
            )
            return "again"
        except Canceled:
            doc = self._finish(prediction_id, Status.CANCELED, None)
        except DreambuildError as exc:
            doc = self._finish(prediction_id, Status.FAILED, str(exc))
        except Exception as exc:  # a bug must still end the prediction and tell the user
            log.exception("prediction %s failed", prediction_id)
            doc = self._finish(prediction_id, Status.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        self._event(doc, WebhookEvent.COMPLETED)
        return None

    @property
    def stopping(self) -> bool:
        return self._stop_at is not None

    def stop(self, grace: float) -> None:
        """Start no prediction from now on; a running one may end within ``grace`` seconds,
        then it is canceled and handed back (see :meth:`run`)."""
        if self._stop_at is None:  # the first call's grace counts
            self._stop_at = time.monotonic() + grace

    def _handing_back(self) -> bool:
        return self._stop_at is not None and time.monotonic() >= self._stop_at

    def _finish(self, prediction_id: str, status: Status, error: str | None, **changes) -> PredictionRecord:
        # Errors are the user's to read: no path of this machine (temporary inputs, the layer cache, the model's files).
        error = without_host_paths(error) if error else error
        doc = self.db.predictions.update(prediction_id, status=status, error=error, completed_at=now_iso(), **changes)
        with self._guard:
            waiting = self._ended.pop(prediction_id, [])
        for wake in waiting:
            wake()
        return doc

    def on_finish(self, prediction_id: str, wake) -> None:
        """Call ``wake()`` when the prediction ends here (the API's ``Prefer: wait``, embedded;
        external workers are polled for instead). The caller checks the record after registering."""
        with self._guard:
            self._ended.setdefault(prediction_id, []).append(wake)

    def forget(self, prediction_id: str, wake) -> None:
        with self._guard:
            waiting = self._ended.get(prediction_id, [])
            if wake in waiting:
                waiting.remove(wake)
            if not waiting:
                self._ended.pop(prediction_id, None)

    def _check_cancel(self, doc: PredictionRecord) -> None:
        if doc.get("cancel_requested") or (doc.get("cancel_at") and time.time() >= doc["cancel_at"]):
            raise Canceled

    def _resolve_version(self, doc: PredictionRecord) -> PredictionRecord | None:
        """The prediction with its version set (None while its training still runs)."""
        self._check_cancel(doc)
        if doc.get("version"):
            return doc
        training = self.db.trainings.get(doc["training_id"])
        why = waiting_on(doc, training)
        if why == "wait":
            return None
        if why:
            raise PredictionFailed(why)
        return self.db.predictions.update(doc["id"], version=training["version"], model=training["model"])

    def _predict(self, doc: PredictionRecord) -> PredictionRecord:
        owner, name = doc["model"].split("/")
        version = self.db.versions.get(owner, name, doc["version"])
        if version is None:
            raise PredictionFailed(f"version {doc['version']} of {doc['model']} no longer exists")
        queued = time.time() - doc["created"]
        try:
            model, _ = self.servers.acquire(
                version["id"],
                version["image"],
                holder=f"prediction:{doc['id']}",
                schema=version.get("openapi_schema") or None,
                template_version=version.get("template_version"),
            )
        except DreambuildError as exc:
            raise PredictionFailed(f"model version {version['id']} could not start: {exc}") from None
        broken = False
        try:
            doc = self.db.predictions.update(doc["id"], status=Status.PROCESSING, started_at=now_iso(), worker=self.worker)
            self._check_cancel(doc)
            self._event(doc, WebhookEvent.START)
            with tempfile.TemporaryDirectory(prefix="dreambuild-inputs-") as scratch:
                inputs = self._inputs(doc, version, Path(scratch))
                try:
                    result = self._watch(doc, model, inputs)
                    if result.get("status") == Status.FAILED and result.get("error") == "Worker crashed":
                        # coglet's word for a predictor process that died: it poisoned the server's only slot
                        raise ModelCrashed(
                            self._crashed(
                                doc,
                                model,
                                "the model's process crashed (out of memory, or a fault in native code); the next prediction starts a fresh server",
                            )
                        )
                except (ModelCrashed, CogError, Interrupted):
                    broken = True  # the next prediction gets a fresh server
                    raise
        finally:
            self.servers.release(model, broken=broken)
        reported = {k: v for k, v in (result.get("metrics") or {}).items() if isinstance(v, (int, float))}  # the model's own
        metrics = {
            **reported,
            "predict_time": reported.get("predict_time"),
            "queue_time": round(queued, 3),
            **({"setup_time": model.setup_time} if model.boot == "cold" else {}),
            # cold (a server started), pre-started (one started ahead loaded the weights), adapter
            # load (a warm base loaded the version's adapters), warm
            "boot": "adapter load" if model.boot == "warm" and "adapter_load_time" in reported else model.boot,
            **_peak_memory(model.server),
        }
        logs = result.get("logs") or ""
        if result.get("status") == Status.CANCELED:
            raise Canceled
        if result.get("status") != Status.SUCCEEDED:
            self.db.predictions.update(doc["id"], logs=logs, metrics=metrics)
            raise PredictionFailed(f"the model failed: {prediction_error(result.get('error'))}")
        output = self._store_outputs(doc, result.get("output"))
        doc = self._finish(doc["id"], Status.SUCCEEDED, None, output=output, logs=logs, metrics=metrics)
        self._event(doc, WebhookEvent.OUTPUT)
        return doc

    def _watch(self, doc: PredictionRecord, model, inputs: dict) -> dict:
        """Run the Cog prediction, its end coming back on the request that started it (so a
        stopping service, its listener closed, still gets it) and its logs by Cog's webhook on the
        service's internal route meanwhile, while watching for cancel, Cancel-After, the
        deadline, a shutdown and the server's health; return Cog's final state."""
        woken = self._updates.setdefault(doc["id"], threading.Event())
        timeout = self.config.prediction_timeout_minutes * 60
        ended: dict = {}

        def run() -> None:
            try:
                ended["result"] = model.client.run_prediction(
                    doc["id"],
                    inputs,
                    timeout=timeout + 60,
                    events=["logs"],
                    webhook=f"{self.config.internal_base_url}/internal/{doc['secret']}/predictions/{doc['id']}/cog",
                    context=model.context,  # a LoRA version on its template's base: its adapters
                )
            except Exception as exc:  # noqa: BLE001 - judged by the watching thread
                ended["error"] = exc
            woken.set()

        threading.Thread(target=run, name=f"cog-{doc['id']}", daemon=True).start()
        try:
            return self._follow(doc, model, woken, ended, time.monotonic() + timeout)
        finally:
            self._updates.pop(doc["id"], None)

    def _follow(self, doc: PredictionRecord, model, woken: threading.Event, ended: dict, deadline: float) -> dict:  # noqa: C901
        client = model.client
        sent_logs, last_sent, canceled = "", 0.0, False
        next_check, idle, wait = time.monotonic() + HEALTH_SECONDS, 0, FIRST_POLL
        while True:
            # Woken by the end or a logs webhook (embedded); else polled, often at first: most predictions are short.
            woken.wait(wait)
            woken.clear()
            wait = min(POLL, wait * 1.5)
            if "result" in ended:
                result = ended["result"]
                logs = result.get("logs") or (self.db.predictions.get(doc["id"]) or doc).get("logs") or ""
                return {**result, "logs": logs}
            if "error" in ended:
                if not model.server.alive():
                    raise ModelCrashed(self._crashed(doc, model))
                if isinstance(ended["error"], CogError):  # refused the input, or unreachable
                    raise ended["error"]
                raise ModelCrashed(f"the model's Cog server lost the prediction: {ended['error']}")
            current = self.db.predictions.get(doc["id"]) or doc
            if current.get("logs") != sent_logs and time.monotonic() - last_sent >= LOGS_INTERVAL:
                # Best effort, one attempt each: the next one carries the logs again.
                sent_logs, last_sent = current.get("logs"), time.monotonic()
                self._event(current, WebhookEvent.LOGS, f"{doc['id']}-logs-{len(sent_logs or '')}")
            if not canceled:
                try:
                    self._check_cancel(current)
                except Canceled:
                    client.cancel(doc["id"])  # Cog ends it as canceled, on the prediction's request
                    canceled, deadline = True, min(deadline, time.monotonic() + 30)
            if self._handing_back():
                client.cancel(doc["id"])
                raise Interrupted
            if not model.server.alive():
                raise ModelCrashed(self._crashed(doc, model))
            if time.monotonic() > deadline:
                client.cancel(doc["id"])
                raise ModelCrashed(
                    "the model did not stop after its cancel"
                    if canceled
                    else f"the prediction did not finish within prediction_timeout_minutes={self.config.prediction_timeout_minutes:g}"
                )
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + HEALTH_SECONDS
                health = client.health()
                idle = idle + 1 if health and health.get("status") == "READY" else 0
                if idle >= 2:  # twice in a row: its answer in flight has had its time
                    raise ModelCrashed("the model's Cog server is idle but never answered the prediction")

    def _crashed(self, doc: PredictionRecord, model, what: str | None = None) -> str:
        """Why the model's server failed, for the user (the last error of its log); its log's end
        goes to this service's log, for the operator."""
        logs = model.server.logs()
        log.warning("prediction %s: the model's Cog server failed; the end of its log:\n%s", doc["id"], logs[-3000:])
        return what or f"the model's Cog server stopped: {log_error(logs) or 'no error in its log'}"

    def _inputs(self, doc: PredictionRecord, version: dict, scratch: Path) -> dict:
        """The inputs as the Cog server gets them: this service's files as signed URLs (owner
        checked at creation), other URLs fetched here under the egress policy as data URLs."""
        inputs = dict(doc["input"])
        named = file_inputs(version.get("openapi_schema") or {})
        for key, value in inputs.items():
            values = value if isinstance(value, list) else [value]
            converted = []
            for index, item in enumerate(values):
                file_id = self.files.file_id_of(item) if isinstance(item, str) else None
                if file_id:
                    item = self.config.to_internal(self.files.signed_url(file_id, self.config.prediction_timeout_minutes * 60 + 300))
                elif isinstance(item, str) and item.startswith(("http://", "https://")) and (key in named or not named):
                    target = scratch / f"{key}-{index}" / safe_name(item.split("?")[0], "input")
                    fetch(item, target, policy=self.config.egress, what=f"input.{key}", max_bytes=self.config.max_upload_bytes)
                    mime = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                    item = f"data:{mime};base64," + base64.b64encode(target.read_bytes()).decode()
                converted.append(item)
            inputs[key] = converted if isinstance(value, list) else converted[0]
        return inputs

    def _store_outputs(self, doc: PredictionRecord, output):
        """Cog's outputs with every file (a data URL, as Cog returns them without an upload URL)
        stored as a file of the prediction's owner."""
        counter = iter(range(10**6))

        def store(value):
            if isinstance(value, list):
                return [store(v) for v in value]
            if isinstance(value, dict):
                return {k: store(v) for k, v in value.items()}
            match = DATA_URL.match(value) if isinstance(value, str) and value.startswith("data:") else None
            if not match:
                return value
            mime = match.group(1) or "application/octet-stream"
            data = base64.b64decode(match.group(4)) if match.group(3) else match.group(4).encode()
            name = f"output-{next(counter)}{mimetypes.guess_extension(mime) or '.bin'}"
            return FILE_REF + self._save(doc, name, mime, data)

        return store(output)

    def _save(self, doc: PredictionRecord, name: str, mime: str, data: bytes) -> str:
        """Store an output file; its id."""
        if self.local_files:
            return self.files.add_bytes(doc["owner"], name, mime, data, prediction_id=doc["id"])["id"]
        url = f"{self.config.internal_base_url}/internal/{doc['secret']}/predictions/{doc['id']}/outputs/{name}"
        try:
            response = httpx.put(url, content=data, headers={"content-type": mime}, timeout=120)
        except httpx.HTTPError as exc:
            raise PredictionFailed(f"cannot reach the service's file store: {exc}") from None
        if response.status_code != 201:
            raise PredictionFailed(f"the service's file store refused {name}: HTTP {response.status_code} {response.text[:200]}")
        return response.json()["id"]


def _peak_memory(server) -> dict:
    """Peak resident memory of a local model server's processes (the server and its children:
    the predictor); a container's is the engine's to tell."""
    process = getattr(server, "process", None)
    peak = peak_host(process.pid) if process is not None else 0
    return {"peak_host_memory_bytes": peak} if peak else {}


class PredictionPool:
    """The embedded mode's predictions: at most ``max_concurrent_predictions`` at once in this
    process (a ``dreambuild worker`` runs the same :meth:`Predictor.run` as queue jobs)."""

    def __init__(self, predictor: Predictor, concurrency: int) -> None:
        self.predictor = predictor
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="prediction")
        self._running: set[str] = set()

    def submit(self, prediction_id: str) -> None:
        self._pool.submit(self._run, prediction_id)

    def _run(self, prediction_id: str) -> None:
        self._running.add(prediction_id)
        try:
            self.predictor.run(prediction_id)
        except Exception:  # the record stays unfinished: the next start runs it again
            log.exception("prediction %s could not run", prediction_id)
        finally:
            self._running.discard(prediction_id)

    def resume(self) -> list[str]:
        """Predictions left unfinished by the last process: run (or wait) again."""
        ids = [doc["id"] for doc in self.predictor.db.predictions.unfinished()]
        for prediction_id in ids:
            self.submit(prediction_id)
        return ids

    def training_ended(self, training_id: str) -> None:
        """Run the predictions that waited for this training."""
        for doc in self.predictor.db.predictions.waiting_for(training_id):
            self.submit(doc["id"])

    def shutdown(self) -> None:
        """Wait for the running predictions (at most ``shutdown_grace_seconds``, then they are
        handed back); those not started stay queued for the next start."""
        grace = self.predictor.config.shutdown_grace_seconds
        self.predictor.stop(grace)
        if self._running:
            log.warning(
                "shutting down: %d running prediction(s) may end within %gs (shutdown_grace_seconds): %s",
                len(self._running),
                grace,
                ", ".join(sorted(self._running)),
            )
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.predictor.servers.stop_all()
