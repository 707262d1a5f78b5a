"""Runners: where a trainer version's Cog server comes from for one training.

- ``local``: this checkout's trainer in a Cog HTTP server subprocess (:mod:`builder.cog.server`).
- ``cog-http``: a Cog server already running at a URL (a GPU box), started with the
  ``--upload-url`` the service prints.
- ``docker``: the trainer image as a container (:mod:`builder.cog.container`), removed afterwards.

Each then runs the training as one asynchronous Cog prediction (:class:`builder.cog.client.CogClient`)
with the service's per-training webhook, so logs and the result arrive as Cog sends them; the
trainer's output.zip arrives through Cog's ``--upload-url`` (``PUT <url>output.zip``) straight
into the service's file store, never as a base64 data URL.

(Predictions rather than Cog's train mode: coglet 0.23 returns a ``Path`` nested in a training
output as a data URL and ignores ``--upload-url`` for it.)
"""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from builder.cog.client import CogClient, CogError
from builder.cog.container import CogContainer, remove_container, start_cog_container
from builder.cog.server import LAUNCH, UPLOAD_URL_VARIABLE, CogServer, start_cog_server
from builder.service.config import TrainerEntry

TRAINER = "trainer's Cog server"


@dataclass
class Run:
    """One trainer prediction in flight, on a Cog server this run may own (local, docker)."""

    client: CogClient
    prediction_id: str
    owned: CogServer | CogContainer | None = None  # started for this run, stopped with it

    @property
    def pid(self) -> int | None:
        return self.owned.process.pid if isinstance(self.owned, CogServer) else None

    def cancel(self) -> None:
        self.client.cancel(self.prediction_id)

    def alive(self) -> bool:
        return self.owned.alive() if self.owned else True

    def logs(self) -> str:
        return self.owned.logs()[-3000:] if self.owned else ""

    def stop(self, grace: float = 20.0) -> None:
        """Stop the server this run started; after ``grace`` seconds it is killed."""
        if isinstance(self.owned, CogServer):
            self.owned.stop(grace)
        elif self.owned:
            self.owned.stop()


def container_name(prediction_id: str) -> str:
    return f"dreambuild-train-{prediction_id}"


def clear_stale(entry: TrainerEntry, training_id: str, pid: int | None, host: str | None) -> None:
    """Stop a trainer left by a process that died mid-training on this machine: its server
    subprocess (which has its own session) or its container. (On another machine it died with
    its worker: the server subprocess is killed when its parent dies.)"""
    if pid and host == socket.gethostname():
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if entry.runner == "docker":
        remove_container(container_name(training_id))


def _start_server(
    entry: TrainerEntry, prediction_id: str, upload_url: str, workdir: Path, schema: dict | None, gpu: str | None, abort: Callable[[], None] | None
) -> CogServer | CogContainer | None:
    if entry.runner == "local":
        env = {
            "DREAMBUILD_WORKDIR": str(workdir / "trainer-work"),
            **entry.env,
            "DREAMBUILD_BASE_MODEL": str(entry.local_base()),
        }  # absolute: the server runs in its own folder
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu  # the worker's own GPU, nothing else
        return start_cog_server(entry.predictor, workdir / "cog", env=env, upload_url=upload_url, schema=schema or True, abort=abort)
    if entry.runner == "cog-http":
        return None
    if not entry.image:
        raise CogError(f"trainer {entry.name!r} uses the docker runner but names no image")
    gpus = [gpu] if gpu is not None and entry.gpus else entry.gpus
    return start_cog_container(
        entry.image,
        name=container_name(prediction_id),
        env={**entry.env, UPLOAD_URL_VARIABLE: upload_url},
        gpus=gpus,
        what="trainer image",
        command=["python", "-c", LAUNCH],
        abort=abort,
    )


def start_run(
    entry: TrainerEntry,
    prediction_id: str,
    inputs: dict,
    *,
    webhook: str,
    upload_url: str,
    workdir: Path,
    schema: dict | None = None,
    url: str | None = None,
    gpu: str | None = None,
    abort: Callable[[], None] | None = None,
) -> Run:
    """Start the trainer's prediction; updates go to ``webhook``, output.zip to ``upload_url``.
    ``schema``: the trainer's Cog schema, read before (the local runner need not generate it);
    ``url``: the cog-http server leased for this run; ``gpu``: the worker's GPU (local, docker);
    ``abort``: called while the trainer's server starts, raises to stop it (cancel, shutdown)."""
    if entry.runner == "cog-http" and not url:
        raise CogError(f"trainer {entry.name!r} uses the cog-http runner but has no url")
    owned = _start_server(entry, prediction_id, upload_url, workdir, schema, gpu, abort)
    url = owned.url if owned else url
    run = Run(client=CogClient(url, what=TRAINER), prediction_id=prediction_id, owned=owned)
    try:
        run.client.start_prediction(prediction_id, inputs, webhook=webhook)
    except BaseException:
        run.stop()
        raise
    return run
