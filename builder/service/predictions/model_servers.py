"""Warm model servers of one worker: a version's image → its ``/src`` from the layer cache
(:func:`builder.cog.unpack.unpack_src`, as ``dreambuild predict``: layers pulled once, shared by
every version of a template) → a local Cog server started once, with the version's stored Cog
schema (setup: the pipeline loaded;
``model_runner: docker``: the image itself as a container, with only the worker's GPU) →
kept for the next prediction on that version → stopped when ``max_loaded_models`` are loaded and
another version is needed (the least recently used idle one), or when it crashed.

A server runs one prediction at a time (Cog's default concurrency); a second prediction of the
same version waits for it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from builder.cog.client import CogClient, CogError
from builder.cog.container import CogContainer, start_cog_container
from builder.cog.server import CogServer, start_cog_server
from builder.cog.unpack import unpack_src
from builder.settings import BuilderSettings

log = logging.getLogger(__name__)
MODEL = "model's Cog server"


@dataclass
class RunningServer:
    """A Cog server someone else started (``model_urls``): used, never started or stopped here."""

    url: str

    def alive(self) -> bool:
        return CogClient(self.url).health() is not None

    def logs(self) -> str:
        return ""


@dataclass
class LoadedModel:
    """One version's Cog server, warm."""

    version: str
    server: CogServer | CogContainer | RunningServer
    setup_time: float  # seconds the cold start took (pull, unpack, setup)
    project: Path | None  # the local server's working directory
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)  # held by the prediction running on it
    predictions: int = 0
    lease: str | None = None  # the holder of a model_urls server's lease

    @property
    def client(self) -> CogClient:
        return CogClient(self.server.url, what=MODEL)


class ModelServers:
    """At most ``budget`` loaded versions; :meth:`acquire` a version's server, then :meth:`release` it."""

    def __init__(
        self,
        settings: BuilderSettings,
        budget: int,
        gpu: str | None = None,
        runner: str = "local",
        pools: dict[str, list[str]] | None = None,
        leases=None,
    ) -> None:
        self.settings, self.budget, self.gpu, self.runner = settings, budget, gpu, runner
        self.pools, self.leases = pools or {}, leases  # model_urls, leased through the database
        self._loaded: dict[str, LoadedModel] = {}
        self._guard = threading.Condition()
        self._starting: set[str] = set()
        self.evictions = 0

    def loaded(self) -> list[str]:
        with self._guard:
            return list(self._loaded)

    def acquire(self, version: str, image: str, holder: str | None = None, schema: dict | None = None) -> tuple[LoadedModel, bool]:
        """The version's server, locked for one prediction; and whether it was started for it
        (a cold start). A version of ``model_urls`` gets one of its running servers, leased to
        ``holder`` (the prediction: a re-run of it gets its lease back), waited for while all are busy.
        ``schema``: the version's Cog schema, known since it was built (a cold start then
        generates none)."""
        if version in self.pools:
            resources = [f"model:{url}" for url in self.pools[version]]
            holder = holder or uuid.uuid4().hex
            while (leased := self.leases.acquire(resources, holder)) is None:
                time.sleep(0.2)
            model = LoadedModel(version=version, server=RunningServer(leased.removeprefix("model:")), setup_time=0.0, project=None, lease=holder)
            model.lock.acquire()
            return model, False
        with self._guard:
            while True:
                model = self._loaded.get(version)
                if model is not None and model.lock.acquire(blocking=False):
                    model.last_used = time.monotonic()
                    return model, False
                if model is None and version not in self._starting and self._make_room():
                    self._starting.add(version)
                    break
                self._guard.wait(0.2)  # busy, starting elsewhere, or every slot busy
        try:
            model = self._start(version, image, schema)
        finally:
            with self._guard:
                self._starting.discard(version)
                self._guard.notify_all()
        model.lock.acquire()
        with self._guard:
            self._loaded[version] = model
        return model, True

    def release(self, model: LoadedModel, *, broken: bool = False) -> None:
        """After a prediction; a ``broken`` server (crashed, or its prediction could not be
        stopped) is stopped so that the next prediction starts a fresh one."""
        model.predictions += 1
        model.last_used = time.monotonic()
        if model.lease is not None:  # a running server of model_urls: handed back, left running
            self.leases.release(model.lease)
            model.lock.release()
            return
        if broken or not model.server.alive():
            with self._guard:
                if self._loaded.get(model.version) is model:
                    del self._loaded[model.version]
            self._stop(model)
        model.lock.release()
        with self._guard:
            self._guard.notify_all()

    def _make_room(self) -> bool:
        """With the guard held: True when one more version may load (an idle one evicted if needed)."""
        if len(self._loaded) + len(self._starting) < self.budget:
            return True
        idle = [m for m in self._loaded.values() if not m.lock.locked()]
        if not idle:
            return False
        victim = min(idle, key=lambda m: m.last_used)
        victim.lock.acquire()
        del self._loaded[victim.version]
        self.evictions += 1
        log.info("unloading model version %s (least recently used) to load another", victim.version)
        self._stop(victim)
        victim.lock.release()
        return True

    def _start(self, version: str, image: str, schema: dict | None) -> LoadedModel:
        started = time.monotonic()
        if self.runner == "docker":  # the image as it is (its own Python and CUDA), with only this worker's GPU
            container = start_cog_container(
                image, name=f"dreambuild-model-{uuid.uuid4().hex[:12]}", gpus=[self.gpu] if self.gpu is not None else True, what="model image"
            )
            return LoadedModel(version=version, server=container, setup_time=round(time.monotonic() - started, 3), project=None)
        unpacked = unpack_src(image, self.settings)
        try:
            entry = yaml.safe_load((unpacked.src / "cog.yaml").read_text())["predict"]
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            raise CogError(f"{unpacked.reference} is not a Cog model: /src/cog.yaml with a predict entry is missing") from None
        env = unpacked.env()
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        project = Path(tempfile.mkdtemp(prefix=f"dreambuild-model-{version.removeprefix('sha256:')[:12]}-"))
        try:
            # The schema known for the version, else the image's label, else generated from /src.
            server = start_cog_server(entry, project, env=env, code_root=unpacked.src, schema=schema or unpacked.labelled_schema() or True)
        except BaseException:
            shutil.rmtree(project, ignore_errors=True)
            raise
        log.info("model version %s loaded in %.1fs", version, time.monotonic() - started)
        return LoadedModel(version=version, server=server, setup_time=round(time.monotonic() - started, 3), project=project)

    @staticmethod
    def _stop(model: LoadedModel) -> None:
        if isinstance(model.server, CogServer):
            model.server.stop(5)
        else:
            model.server.stop()  # the container is removed
        if model.project is not None:
            shutil.rmtree(model.project, ignore_errors=True)

    def stop_all(self) -> None:
        with self._guard:
            models, self._loaded = list(self._loaded.values()), {}
        for model in models:
            self._stop(model)
