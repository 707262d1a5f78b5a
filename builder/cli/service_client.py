"""A small client of the trainings service for the CLI: one-line errors, never tracebacks.

The service URL comes from ``--url`` / ``DREAMBUILD_URL`` (default ``http://127.0.0.1:8000``),
the token from ``--token`` / ``DREAMBUILD_TOKEN``, else the embedded default's token file
(``$DREAMBUILD_HOME/token``, ``./.dreambuild/token``).
"""

from __future__ import annotations

import json
import mimetypes
import os
from pathlib import Path

import httpx

from dreambuild.errors import DreambuildError, InputError

DEFAULT_URL = "http://127.0.0.1:8000"


class ServiceError(DreambuildError):
    """The service refused a request or could not be reached."""


def find_token(token: str | None) -> str:
    if token:
        return token
    if os.environ.get("DREAMBUILD_TOKEN"):
        return os.environ["DREAMBUILD_TOKEN"]
    path = Path(os.environ.get("DREAMBUILD_HOME") or ".dreambuild") / "token"
    if path.is_file():
        return path.read_text().strip()
    raise InputError("no API token: pass --token, set DREAMBUILD_TOKEN, or run where `dreambuild serve` wrote .dreambuild/token")


def parse_value(text: str):
    """A ``-i`` value: JSON numbers, booleans and null are typed; anything else is a string."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (int, float, bool)) or value is None else text


class ServiceClient:
    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = (url or os.environ.get("DREAMBUILD_URL") or DEFAULT_URL).rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {find_token(token)}"}, timeout=httpx.Timeout(60, read=3600))

    def request(self, method: str, path: str, **kwargs) -> dict:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach the service at {self.url}: {exc}") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:200]
            raise ServiceError(f"the service answered {response.status_code}: {detail}")
        return response.json()

    def upload(self, path: Path) -> str:
        path = Path(path).expanduser()
        if not path.is_file():
            raise InputError(f"file {path} does not exist")
        with open(path, "rb") as handle:
            return self.request("POST", f"/v1/uploads/{path.name}", content=handle)["url"]

    def upload_file(self, path: Path) -> str:
        """A prediction's file input: uploaded to ``/v1/files`` as Replicate's clients do; its URL."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise InputError(f"file {path} does not exist")
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with open(path, "rb") as handle:
            return self.request("POST", "/v1/files", files={"content": (path.name, handle, mime)})["urls"]["get"]

    def inputs(self, pairs: list[str], *, for_prediction: bool = False) -> dict:
        """``key=value`` pairs; ``key=@file`` uploads the file and passes its URL (a training's
        to /v1/uploads, a prediction's to /v1/files)."""
        values = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise InputError(f"input {pair!r} is not key=value")
            if value.startswith("@"):
                values[key] = (self.upload_file if for_prediction else self.upload)(Path(value[1:]))
            else:
                values[key] = parse_value(value)
        return values

    def download(self, url: str, target: Path) -> Path:
        """An output (a signed URL of the service: no token needed, none sent)."""
        from builder.egress import fetch

        return fetch(url, target, policy=None, what="output", max_bytes=2**40)
