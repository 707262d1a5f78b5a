"""Files of predictions: what users upload for them (``POST /v1/files``, as Replicate's clients
do before a prediction with a file input; routes in :mod:`builder.service.http.files`) and what
predictions output.

multipart upload (the limit holds on the bytes read) → ``data_dir/prediction-files/<id>/<name>``
and a record (owner, name, type, size, sha256) → ``GET /v1/files/{id}`` for its owner, whose
``urls.get`` is what a prediction's input names → a signed, expiring download URL
(``/v1/files/{id}/download?expires=…&signature=…``, HMAC-SHA256 with the service's secret) for
whoever holds it: a model's Cog server fetching an input, a client fetching an output with a
plain GET. Another owner's file is 404 everywhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.service.config import ALL_OWNERS
from builder.service.trainings.record import now_iso

if TYPE_CHECKING:
    from builder.service.config import ServiceConfig
    from builder.service.store.database import Database

CHUNK = 2**20
FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # a stored file's name (uploads, outputs) (use fullmatch)


def files_root(config: ServiceConfig) -> Path:
    return config.data_dir / "prediction-files"


def safe_name(name: str | None, fallback: str = "file") -> str:
    """A stored file's name: the given one when it is safe, else ``fallback`` with its suffix."""
    name = (name or "").rsplit("/", 1)[-1]
    if FILENAME.fullmatch(name):
        return name
    suffix = Path(name).suffix
    return fallback + (suffix if FILENAME.fullmatch(f"x{suffix}") and len(suffix) <= 10 else "")


class _Hashing:
    """A file being written, hashed on the way (no second read of what may be gigabytes)."""

    def __init__(self, handle, digest) -> None:
        self.handle, self.digest = handle, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.handle.write(data)


class FileStore:
    """The files' records and bytes, and their signed download URLs."""

    def __init__(self, config: ServiceConfig, db: Database) -> None:
        self.config, self.db = config, db
        self._secret = db.settings.get("file_url_secret", lambda: secrets.token_urlsafe(32)).encode()

    def add(
        self, owner: str, name: str, content_type: str, write, *, metadata: dict | None = None, prediction_id: str | None = None
    ) -> dict[str, Any]:
        """Store a file written by ``write(handle) -> size``; return its record."""
        file_id = uuid.uuid4().hex
        folder = files_root(self.config) / file_id
        folder.mkdir(parents=True)
        path = folder / name
        digest = hashlib.sha256()
        try:  # a file is kept only with its record: a failed write or insert leaves nothing behind
            with open(path, "wb") as handle:
                write(_Hashing(handle, digest))
            return self.db.files.add(
                {
                    "id": file_id,
                    "owner": owner,
                    "name": name,
                    "content_type": content_type,
                    "size": path.stat().st_size,
                    "etag": digest.hexdigest(),
                    "checksums": {"sha256": digest.hexdigest()},
                    "metadata": metadata or {},
                    "created_at": now_iso(),
                    "expires_at": None,
                    "path": str(path),
                    "prediction_id": prediction_id,
                }
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def add_bytes(self, owner: str, name: str, content_type: str, data: bytes, **extra) -> dict[str, Any]:
        return self.add(owner, name, content_type, lambda handle: handle.write(data), **extra)

    def get(self, file_id: str, owners: list[str] | None = None) -> dict[str, Any] | None:
        """The file's record if it exists (and, with ``owners``, if they may see it)."""
        doc = self.db.files.get(file_id) if FILENAME.fullmatch(file_id or "") else None
        if doc is None or (owners is not None and ALL_OWNERS not in owners and doc["owner"] not in owners):
            return None
        return doc

    def delete(self, doc: dict[str, Any]) -> None:
        shutil.rmtree(Path(doc["path"]).parent, ignore_errors=True)
        self.db.files.delete(doc["id"])

    def api_url(self, file_id: str) -> str:
        """The file's URL in the API (``urls.get``): what a prediction's input names."""
        return f"{self.config.base_url}/v1/files/{file_id}"

    def file_id_of(self, url: str) -> str | None:
        """The id of a file of this service named by its API URL, else None."""
        prefix = f"{self.config.base_url}/v1/files/"
        if not isinstance(url, str) or not url.startswith(prefix):
            return None
        tail = url[len(prefix) :]
        return tail if FILENAME.fullmatch(tail) else None

    def _signature(self, file_id: str, expires: int) -> str:
        mac = hmac.new(self._secret, f"{file_id}:{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def signed_url(self, file_id: str, seconds: float | None = None) -> str:
        """A download URL that works without a token until it expires."""
        expires = int(time.time() + (seconds or self.config.file_url_seconds))
        doc = self.db.files.get(file_id)
        name = doc["name"] if doc else "file"
        return f"{self.config.base_url}/v1/files/{file_id}/download/{name}?expires={expires}&signature={self._signature(file_id, expires)}"

    def check_signature(self, file_id: str, expires: str, signature: str) -> bool:
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(self._signature(file_id, int(expires)), signature)


def public_file(store: FileStore, doc: dict[str, Any]) -> dict[str, Any]:
    """A file as Replicate's clients read it."""
    return {key: doc[key] for key in ("id", "name", "content_type", "size", "etag", "checksums", "metadata", "created_at", "expires_at")} | {
        "urls": {"get": store.api_url(doc["id"])}
    }
