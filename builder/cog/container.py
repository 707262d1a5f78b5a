"""A Cog model image run as a container with the Docker SDK, against the engine at
``DOCKER_HOST`` (a Docker daemon, or ``podman system service``).

engine → ``containers.run`` (Cog's port published on loopback, GPUs requested) → the published
port → ready (:func:`builder.cog.client.wait_ready`) → :class:`CogContainer`, removed by ``stop``.
Used by the service's ``docker`` runner and by ``dreambuild predict`` with a Docker engine.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

from builder.cog.client import CogClient, CogError, wait_ready
from builder.cog.messages import log_error
from dreambuild.errors import BuildError, DreambuildError


def docker_client(timeout: int = 600):
    """A Docker SDK client for ``DOCKER_HOST`` (or the default socket)."""
    import docker

    try:
        return docker.from_env(timeout=timeout)
    except docker.errors.DockerException as exc:
        where = os.environ.get("DOCKER_HOST") or "the default socket"
        raise BuildError(f"cannot reach a Docker engine at {where}: {exc}") from None


def engine_available() -> bool:
    """Whether a Docker-compatible engine answers at DOCKER_HOST."""
    try:
        return bool(docker_client(timeout=3).ping())
    except Exception:  # the SDK raises several unrelated types when nothing listens
        return False


@dataclass
class CogContainer:
    """A running Cog model container (a docker SDK ``Container``) and its server's URL."""

    container: object
    url: str = ""

    @property
    def name(self) -> str:
        return self.container.name

    @property
    def client(self) -> CogClient:
        return CogClient(self.url)

    def alive(self) -> bool:
        self.container.reload()
        return self.container.status in ("created", "running")

    def logs(self) -> str:
        return self.container.logs(tail=50).decode(errors="replace")

    def stop(self) -> None:
        remove_container(self.name)


def remove_container(name: str) -> None:
    """Remove a container (also one left by a service that died while it ran)."""
    import docker.errors

    try:
        docker_client(timeout=30).containers.get(name).remove(force=True)
    except (docker.errors.NotFound, DreambuildError):
        pass


def _gpu_request(gpus: bool | list[str]) -> list | None:
    import docker

    if gpus is True:
        return [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if gpus:  # a worker's own GPU(s) only
        return [docker.types.DeviceRequest(device_ids=list(gpus), capabilities=[["gpu"]])]
    return None


def start_cog_container(
    image: str,
    *,
    name: str,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
    gpus: bool | list[str] = True,
    timeout: float = 1800,
    what: str = "model image",
    abort: Callable[[], None] | None = None,
) -> CogContainer:
    """Run a Cog model image (GPUs requested: all, or only the device ids listed; Cog's port
    published on loopback) and wait until its server is READY (``abort``: see ``wait_ready``)."""
    import docker
    import docker.errors

    try:
        container = docker_client().containers.run(
            image,
            command,
            detach=True,
            name=name,
            environment=env or {},
            ports={"5000/tcp": ("127.0.0.1", None)},
            device_requests=_gpu_request(gpus),
        )
    except docker.errors.DockerException as exc:
        remove_container(name)
        raise CogError(f"cannot start the {what} {image}: {getattr(exc, 'explanation', None) or exc}") from None
    running = CogContainer(container)
    deadline = time.monotonic() + timeout
    try:
        while not running.url:
            if abort is not None:
                abort()
            if not running.alive():
                raise CogError(f"the {what} container exited during setup: {log_error(running.logs()) or 'no error in its log'}")
            if time.monotonic() > deadline:
                raise CogError(f"the {what} container published no port within {timeout:.0f}s")
            ports = (container.ports or {}).get("5000/tcp") or []
            if ports:
                running.url = f"http://127.0.0.1:{ports[0]['HostPort']}"
            else:
                time.sleep(0.3)
        client = CogClient(running.url, what=f"{what} container")
        wait_ready(client, alive=running.alive, logs=running.logs, timeout=max(1.0, deadline - time.monotonic()), interval=1, abort=abort)
    except BaseException:
        running.stop()
        raise
    return running
