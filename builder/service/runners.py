"""Runners: how a trainer version runs one training as a Cog prediction.

The prediction is created asynchronously (``PUT /predictions/{id}``, ``Prefer: respond-async``)
with the service's per-training webhook, so logs and the result arrive as Cog sends them; the
trainer's output.zip arrives through Cog's ``--upload-url`` (``PUT <url>output.zip``) straight
into the service's file store, never as a base64 data URL.

- ``local``: this checkout's trainer in a Cog HTTP server subprocess (as the tests run it).
- ``cog-http``: a Cog server already running at a URL (a GPU box), started with the
  ``--upload-url`` the service prints.
- ``docker``: the trainer image run with the docker SDK (all GPUs requested, Cog's port
  published on loopback), health-checked until READY, called, then removed.

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
    """One trainer prediction in flight, on a Cog server this run may own (local, docker)."""

    base_url: str
    prediction_id: str
    server: CogServer | None = None
    container: object | None = None  # a docker SDK Container

    @property
    def pid(self) -> int | None:
        return self.server.process.pid if self.server else None

    def cancel(self) -> None:
        try:
            _request("POST", f"{self.base_url}/predictions/{self.prediction_id}/cancel", attempts=3)
        except RunnerError:
            pass

    def alive(self) -> bool:
        if self.server:
            return self.server.process.poll() is None
        if self.container is not None:
            self.container.reload()
            return self.container.status in ("created", "running")
        return True

    def logs(self) -> str:
        if self.server:
            return self.server.logs()[-3000:]
        if self.container is not None:
            return self.container.logs(tail=50).decode(errors="replace")
        return ""

    def stop(self) -> None:
        if self.server:
            self.server.stop()
        if self.container is not None:
            remove_container(self.container.name)


def container_name(prediction_id: str) -> str:
    return f"dreambuild-train-{prediction_id}"


def remove_container(name: str) -> None:
    """Remove a trainer container (also one left by a service that died mid-training)."""
    import docker.errors

    from builder.docker_build import docker_client

    try:
        docker_client(timeout=30).containers.get(name).remove(force=True)
    except (docker.errors.NotFound, DreambuildError):
        pass


def start_cog_container(image: str, *, name: str, command: list[str] | None = None, env: dict[str, str] | None = None,
                        gpus: bool = True, timeout: float = 1800, what: str = "image") -> Run:
    """Run a Cog model image with the docker SDK (GPUs requested, Cog's port published on
    loopback) and wait until its server is READY."""
    import docker
    import docker.errors

    from builder.docker_build import docker_client

    client = docker_client()
    try:
        container = client.containers.run(
            image, command, detach=True, name=name, environment=env or {}, ports={"5000/tcp": ("127.0.0.1", None)},
            device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpus else None,
        )
    except docker.errors.DockerException as exc:
        remove_container(name)
        raise RunnerError(f"cannot start the {what} {image}: {getattr(exc, 'explanation', None) or exc}") from None
    run = Run(base_url="", prediction_id="", container=container)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not run.alive():
            logs = run.logs()
            run.stop()
            raise RunnerError(f"the {what} container exited during setup: {logs[-500:]}")
        container.reload()
        ports = (container.ports or {}).get("5000/tcp") or []
        if ports:
            run.base_url = f"http://127.0.0.1:{ports[0]['HostPort']}"
            try:
                status, health = _request("GET", f"{run.base_url}/health-check", attempts=1)
            except RunnerError:
                status, health = 0, {}
            if status == 200 and health.get("status") == "READY":
                return run
            if health.get("status") in ("SETUP_FAILED", "DEFUNCT"):
                run.stop()
                raise RunnerError(f"the {what}'s setup failed: {str(health.get('setup', {}).get('logs', ''))[-500:]}")
        time.sleep(1)
    run.stop()
    raise RunnerError(f"the {what} container was not ready after {timeout:.0f}s")


def _start_container(entry: TrainerEntry, prediction_id: str, upload_url: str) -> Run:
    """The trainer image, told where to upload output.zip."""
    if not entry.image:
        raise RunnerError(f"trainer {entry.name!r} uses the docker runner but names no image")
    run = start_cog_container(entry.image, name=container_name(prediction_id), env=entry.env, gpus=entry.gpus, what="trainer image",
                              command=["python", "-m", "cog.server.http", "--upload-url", upload_url])
    run.prediction_id = prediction_id
    return run


def start_run(entry: TrainerEntry, prediction_id: str, inputs: dict, *, webhook: str, upload_url: str, workdir: Path) -> Run:
    """Start the trainer's prediction; updates go to ``webhook``, output.zip to ``upload_url``."""
    if entry.runner == "local":
        env = {"DREAMBUILD_WORKDIR": str(workdir / "trainer-work"), **entry.env}
        server = start_cog_server(entry.predictor, workdir / "cog", env=env, upload_url=upload_url)
        run = Run(base_url=server.url, prediction_id=prediction_id, server=server)
    elif entry.runner == "cog-http":
        if not entry.url:
            raise RunnerError(f"trainer {entry.name!r} uses the cog-http runner but has no url")
        run = Run(base_url=entry.url.rstrip("/"), prediction_id=prediction_id)
    else:
        run = _start_container(entry, prediction_id, upload_url)
    base = run.base_url
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
