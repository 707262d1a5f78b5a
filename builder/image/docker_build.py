"""The docker backend: the seed's ``docker build`` + ``docker push``, through the Docker SDK.

Writes the two-line Dockerfile and the weights into a build context, builds with the engine at
``DOCKER_HOST`` (a Docker daemon, or ``podman system service``), streams its log, pushes with
the registry auth of the Docker config, and returns the pushed manifest digest.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Callable

from builder.cog.container import docker_client
from builder.image.weights import WeightsSource, materialize
from builder.oci.references import RegistryRef
from dreambuild.errors import BuildError, RegistryError

_PUSHED = re.compile(r"digest: (sha256:[0-9a-f]{64})")


def dockerfile(template: str) -> str:
    return f"FROM {template}\nCOPY weights /src/weights\n"


def build_docker(
    weights: WeightsSource,
    template: str,
    dest: RegistryRef,
    tag: str,
    *,
    labels: dict[str, str],
    workdir: Path,
    on_log: Callable[[str], None] = lambda line: None,
) -> str:
    """Build and push ``dest:tag``; return the pushed manifest digest."""
    import docker.errors

    context = workdir / "docker-context"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    try:
        materialize(weights, context / "weights")
        (context / "Dockerfile").write_text(dockerfile(template))
        client = docker_client()
        image = f"{dest.name}:{tag}"
        try:
            for line in client.api.build(path=str(context), tag=image, labels=labels, decode=True, rm=True, forcerm=True):
                if line.get("error") or line.get("errorDetail"):
                    message = line.get("error") or line["errorDetail"].get("message", "")
                    raise BuildError(f"docker build of {image} failed: {message.strip()}")
                if line.get("stream", "").strip():
                    on_log(line["stream"].rstrip())
            digest = None
            for line in client.api.push(dest.name, tag=tag, stream=True, decode=True):
                if line.get("error") or line.get("errorDetail"):
                    message = line.get("error") or line["errorDetail"].get("message", "")
                    raise RegistryError(f"docker push of {image} failed: {message.strip()}")
                aux = line.get("aux") or {}
                found = aux.get("Digest") or (_PUSHED.search(line.get("status", "")) or [None, None])[1]
                digest = found or digest
                if line.get("status"):
                    on_log(line["status"])
        except docker.errors.APIError as exc:
            raise BuildError(f"the Docker engine refused the build of {image}: {exc.explanation or exc}") from None
        except docker.errors.DockerException as exc:
            raise BuildError(f"cannot use the Docker engine: {exc}") from None
        if not digest:
            raise RegistryError(f"docker push of {image} did not report a digest")
        try:
            client.api.remove_image(image)  # the engine keeps the template; the model image lives in the registry
        except docker.errors.APIError:
            pass
        return digest
    finally:
        shutil.rmtree(context, ignore_errors=True)
