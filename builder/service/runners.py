"""Runners: how a trainer version runs one training as a Cog prediction.

The prediction is created asynchronously (``PUT /predictions/{id}``, ``Prefer: respond-async``)
with the service's per-training webhook, so logs and the result arrive as Cog sends them; the
trainer's output.zip arrives through Cog's ``--upload-url`` (``PUT <url>output.zip``) straight
into the service's file store, never as a base64 data URL.

- ``local``: this checkout's trainer in a Cog HTTP server subprocess (as the tests run it).
- ``cog-http``: a Cog server already running at a URL (a GPU box), started with
  ``--upload-url <service>/internal/<secret>/files/``.

(Predictions rather than Cog's train mode: coglet 0.23 returns a ``Path`` nested in a training
output as a data URL and ignores ``--upload-url`` for it.)
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from builder.service.config import TrainerEntry
from dreambuild.cog_server import CogServer, start_cog_server
from dreambuild.errors import DreambuildError


class RunnerError(DreambuildError):
    """The trainer could not be started or reached."""


def _request(method: str, url: str, body: dict | None = None, headers: dict | None = None, attempts: int = 20) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    last = ""
    for _ in range(attempts):
        request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # coglet answers 409 briefly after a previous prediction
                return exc.code, json.loads(exc.read() or b"{}")
            last = "409 busy"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise RunnerError(f"cannot reach the trainer's Cog server at {url}: {last}")


@dataclass
class Run:
    """One trainer prediction in flight."""

    base_url: str
    prediction_id: str
    server: CogServer | None = None

    def cancel(self) -> None:
        try:
            _request("POST", f"{self.base_url}/predictions/{self.prediction_id}/cancel", attempts=3)
        except RunnerError:
            pass

    def alive(self) -> bool:
        return self.server is None or self.server.process.poll() is None

    def logs(self) -> str:
        return self.server.logs()[-3000:] if self.server else ""

    def stop(self) -> None:
        if self.server:
            self.server.stop()


def start_run(entry: TrainerEntry, prediction_id: str, inputs: dict, *, webhook: str, upload_url: str, workdir: Path) -> Run:
    """Start the trainer's prediction; updates go to ``webhook``, output.zip to ``upload_url``."""
    if entry.runner == "local":
        env = {"DREAMBUILD_WORKDIR": str(workdir / "trainer-work"), **entry.env}
        server = start_cog_server(entry.predictor, workdir / "cog", env=env, upload_url=upload_url)
        base = server.url
    elif entry.runner == "cog-http":
        if not entry.url:
            raise RunnerError(f"trainer {entry.name!r} uses the cog-http runner but has no url")
        server, base = None, entry.url.rstrip("/")
    else:
        raise RunnerError(f"the {entry.runner} runner is not available in this build (use local or cog-http)")
    run = Run(base_url=base, prediction_id=prediction_id, server=server)
    try:
        status, body = _request("PUT", f"{base}/predictions/{prediction_id}", {
            "id": prediction_id, "input": inputs, "webhook": webhook,
            "webhook_events_filter": ["start", "output", "logs", "completed"],
        }, headers={"Prefer": "respond-async"})
    except BaseException:
        run.stop()
        raise
    if status >= 300:
        run.stop()
        detail = body.get("detail") if isinstance(body, dict) else body
        raise RunnerError(f"the trainer refused the input: {_describe_detail(detail)}")
    return run


def _describe_detail(detail) -> str:
    """Cog's 422 body as one line: ``input.field: message; ...``."""
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg', '')}" for d in detail if isinstance(d, dict))
    return str(detail)
