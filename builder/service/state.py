"""The shared state of one running service: configuration → database → dispatcher (embedded, or
the queue of many machines: :mod:`builder.service.dispatch`) → runtime
(:mod:`builder.service.runtime`), and who a request's token acts for. The routes reach it
through :mod:`builder.service.http.deps`; :mod:`builder.service.app` assembles both.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
from pathlib import Path

from builder.service.config import ALL_OWNERS, ServiceConfig
from builder.service.dispatch import Dispatcher, EmbeddedDispatcher, QueueDispatcher
from builder.service.runtime import build_runtime
from builder.service.store.database import Database
from builder.service.store.files import FileStore
from builder.service.store.retention import Sweeper
from dreambuild.errors import InputError

log = logging.getLogger(__name__)


class Service:
    """Shared state of one running service: configuration, database, secrets, the dispatcher and
    runtime, and who a token acts for (the HTTP edge answers 401/404 from these)."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(config.database)
        # For Cog servers started by others (cog-http runner): one upload URL for all trainings,
        # which coglet's X-Prediction-Id header tells apart.
        self.upload_secret = self.db.settings.get("upload_secret", lambda: secrets.token_urlsafe(24))
        (config.data_dir / "cog-upload-url").write_text(self.cog_upload_url + "\n")
        self.queue = None  # the queue of external workers
        if config.workers == "external":
            from builder.service.workers.jobs import apply_schema, create_queue_app

            apply_schema(config)
            self.queue = create_queue_app(config)
            self.queue.open()
            self.dispatch: Dispatcher = QueueDispatcher(self.queue, self.db)
        else:
            self._lock = _embedded_lock(config.data_dir)
            self.dispatch = EmbeddedDispatcher(config)
        self.files = FileStore(config, self.db)
        # The API's process runs predictions and trainings itself only when embedded; it always
        # records webhooks, shows predictions (and waits on them), and validates with the schemas.
        self.runtime = build_runtime(config, self.db, self.dispatch.schedule_delivery, files=self.files)
        self.dispatch.bind(self.runtime)
        self.notifier, self.schemas, self.predictor = self.runtime.notifier, self.runtime.schemas, self.runtime.predictor
        self.sweeper = Sweeper(config, self.db)
        self.tokens = [(entry.token.encode(), entry.owners) for entry in config.tokens]

    def template_schema(self, template_version: str) -> dict | None:
        """A template's Cog schema (its versions'), once a build has published it."""
        published = self.db.settings.get(f"model_schema/{template_version.removeprefix('sha256:')}", str)
        return json.loads(published)["schema"] if published else None

    def start(self) -> None:
        self.schemas.warm()
        self.sweeper.start()
        self.dispatch.start()

    def stop(self) -> None:
        self.sweeper.stop()
        self.dispatch.stop()
        if self.queue is not None:
            self.queue.close()
        else:
            os.close(self._lock)

    @property
    def cog_upload_url(self) -> str:
        """The ``--upload-url`` for Cog servers of cog-http trainers."""
        return f"{self.config.internal_base_url}/internal/{self.upload_secret}/files/"

    def token_owners(self, authorization: str) -> list[str] | None:
        """The owners an ``Authorization`` header's API token may act for; None for no known token."""
        scheme, _, token = authorization.partition(" ")
        given, found = token.strip().encode(), None
        for known, owners in self.tokens:  # every token compared, each in constant time
            if hmac.compare_digest(known, given):
                found = owners
        return found if scheme.lower() in ("bearer", "token") else None

    @staticmethod
    def may_use(owners: list[str], owner: str) -> bool:
        return ALL_OWNERS in owners or owner in owners

    def upload_path(self, url: str, owners: list[str] | None = None) -> Path | None:
        """The file behind an upload URL of this service, or None; with ``owners``, only an
        upload made by a token whose owners these cover (another owner's upload is not there)."""
        tail = url.removeprefix(self.config.base_url + "/v1/uploads/")
        upload_id, _, name = tail.partition("/")
        doc = self.db.uploads.get(upload_id)
        if not doc or doc["name"] != name or not Path(doc["path"]).is_file():
            return None
        if owners is not None and not all(self.may_use(owners, owner) for owner in doc.get("owners") or [doc["owner"]]):
            return None
        return Path(doc["path"])


def _embedded_lock(data_dir: Path) -> int:
    """Held while an embedded service runs: a second one on the same data directory would run
    the same trainings (the embedded worker resumes every unfinished one)."""
    import fcntl

    fd = os.open(data_dir / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InputError(
            f"another dreambuild service runs on {data_dir} with its embedded worker: two would run the same "
            'trainings (more processes: `workers: external`, README "Many machines")'
        ) from None
    return fd
