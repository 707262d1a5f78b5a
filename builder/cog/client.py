"""One client of a Cog HTTP server, for every caller that talks to one: the service's runners
and ``dreambuild predict``, whether the server is a local subprocess, a container or a URL.

readiness (``GET /health-check`` until READY) → ``GET /openapi.json`` → a prediction
(``POST /predictions`` or ``PUT /predictions/{id}`` and wait, or ``PUT`` with ``Prefer:
respond-async``) → cancel. coglet answers 409 for a moment after a prediction while it frees its slot; that is
retried here, and nowhere else. Every failure is one :class:`CogError` with a one-line message.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable

from builder.cog.messages import log_error, prediction_error
from dreambuild.errors import DreambuildError

EVENTS = ["start", "output", "logs", "completed"]


class CogError(DreambuildError):
    """A Cog server could not be started or reached, refused the input, or its prediction failed."""


def describe_validation(detail: object) -> str:
    """A 422 ``detail`` (pydantic's list of problems, as Cog and FastAPI answer) as one line:
    ``input.field: message; ...`` (the leading ``body`` of each location left out)."""
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in list(d.get('loc') or [])[1:]) or 'body'}: {d.get('msg', 'invalid')}" for d in detail if isinstance(d, dict)
        )
    return str(detail)


@dataclass(frozen=True)
class CogClient:
    """The HTTP API of one Cog server at ``base_url``."""

    base_url: str
    what: str = "Cog server"  # how messages name it: "the trainer's Cog server", ...

    def request(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        *,
        headers: dict | None = None,
        attempts: int = 20,
        retry_delay: float = 0.5,
        timeout: float = 60,
    ) -> tuple[int, dict]:
        """One request; busy (409) and unreachable are retried ``attempts`` times; other HTTP
        errors are returned as (status, body) for the caller to judge."""
        data = json.dumps(body).encode() if body is not None else None
        url = f"{self.base_url.rstrip('/')}{path}"
        last = ""
        for _ in range(attempts):
            request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return response.status, _json(response.read())
            except urllib.error.HTTPError as exc:
                if exc.code != 409:
                    return exc.code, _json(exc.read())
                last = "409 busy"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = str(getattr(exc, "reason", None) or exc)
            time.sleep(retry_delay)
        raise CogError(f"cannot reach the {self.what} at {self.base_url}: {last}")

    def health(self) -> dict | None:
        """One health check: Cog's answer (``status``: STARTING, READY, SETUP_FAILED, ...), or
        None while nothing answers."""
        try:
            _, body = self.request("GET", "/health-check", attempts=1, timeout=5)
        except CogError:
            return None
        return body if isinstance(body, dict) and "status" in body else None

    def openapi(self) -> dict:
        status, body = self.request("GET", "/openapi.json")
        if status >= 300:
            raise CogError(f"the {self.what} has no OpenAPI schema (HTTP {status})")
        return body

    def predict(self, inputs: dict, *, timeout: float = 3600) -> dict:
        """Run one prediction and wait for it; return Cog's prediction response."""
        status, body = self.request("POST", "/predictions", {"input": inputs}, attempts=40, retry_delay=0.25, timeout=timeout)
        self._accepted(status, body)
        if body.get("status") != "succeeded":
            raise CogError(f"the prediction failed: {prediction_error(body.get('error') or body.get('status'))}")
        return body

    def start_prediction(self, prediction_id: str, inputs: dict, *, webhook: str, events: list[str] = EVENTS) -> None:
        """Create prediction ``prediction_id`` asynchronously; updates go to ``webhook``."""
        status, body = self.request(
            "PUT",
            f"/predictions/{prediction_id}",
            {
                "id": prediction_id,
                "input": inputs,
                "webhook": webhook,
                "webhook_events_filter": events,
            },
            headers={"Prefer": "respond-async"},
        )
        self._accepted(status, body)

    def run_prediction(
        self,
        prediction_id: str,
        inputs: dict,
        *,
        timeout: float = 3600,
        webhook: str | None = None,
        events: list[str] = EVENTS,
        context: dict[str, str] | None = None,
    ) -> dict:
        """Run prediction ``prediction_id`` and wait for its end (another thread may
        :meth:`cancel` it by id); return Cog's response, whatever its status. With ``webhook``,
        Cog also sends the ``events`` there meanwhile (its logs, say): the end still comes back
        on this request, so it arrives whether or not the webhook's receiver is listening.
        ``context``: Cog's per-prediction context (the model reads it, a user cannot set it)."""
        body: dict = {"id": prediction_id, "input": inputs}
        if context:
            body["context"] = context
        if webhook:
            body.update(webhook=webhook, webhook_events_filter=events)
        status, body = self.request("PUT", f"/predictions/{prediction_id}", body, attempts=40, retry_delay=0.25, timeout=timeout)
        self._accepted(status, body)
        return body

    def cancel(self, prediction_id: str) -> None:
        """Ask the server to cancel a prediction (best effort: it may already be gone)."""
        try:
            self.request("POST", f"/predictions/{prediction_id}/cancel", attempts=3)
        except CogError:
            pass

    def _accepted(self, status: int, body: dict) -> None:
        if status >= 300:
            detail = body.get("detail", body) if isinstance(body, dict) else body
            raise CogError(f"the {self.what} refused the input: {describe_validation(detail)}")


def _json(data: bytes) -> dict:
    try:
        return json.loads(data or b"{}")
    except ValueError:
        return {"detail": data[:200].decode(errors="replace")}


def wait_ready(
    client: CogClient,
    *,
    alive: Callable[[], bool],
    logs: Callable[[], str],
    timeout: float,
    interval: float = 0.3,
    abort: Callable[[], None] | None = None,
) -> dict:
    """Wait until the server's setup has finished (READY) and return Cog's setup result.

    Raises :class:`CogError` with the end of the server's logs when it exits, its setup fails
    (SETUP_FAILED, DEFUNCT), or it is not ready within ``timeout`` seconds; ``abort`` is called
    between checks and raises to stop waiting (a cancel or a shutdown during a long setup).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if abort is not None:
            abort()
        if not alive():
            raise CogError(f"the {client.what} exited during setup: {log_error(logs()) or 'no error in its log'}")
        health = client.health() or {}
        if health.get("status") == "READY":
            return health.get("setup") or {}
        if health.get("status") in ("SETUP_FAILED", "DEFUNCT"):
            setup_logs = str((health.get("setup") or {}).get("logs", ""))
            raise CogError(f"the {client.what}'s setup failed: {log_error(setup_logs) or prediction_error(setup_logs[-500:])}")
        time.sleep(interval)
    raise CogError(f"the {client.what} was not ready after {timeout:.0f}s: {log_error(logs()) or 'no error in its log'}")
