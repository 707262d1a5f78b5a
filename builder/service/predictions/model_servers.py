"""Warm model servers of one worker: a version's image → its ``/src`` from the layer cache
(:func:`builder.cog.unpack.unpack_src`, as ``dreambuild predict``: layers pulled once, shared by
every version of a template) → a local Cog server started once, with the version's stored Cog
schema (setup: the pipeline loaded;
``model_runner: docker``: the image itself as a container, with only the worker's GPU) →
kept for the next prediction on that version → stopped when another version needs its memory
(the least recently used idle one), or when it crashed. The budget is in bytes
(:mod:`.memory`: ``model_memory`` on the host, ``model_gpu_memory`` on the GPU): each server's
memory is measured once it started and after each prediction (adapters loaded count), a server
about to start is counted at what it (or another of its template) measured before, and idle
servers are stopped, least recently used first, until the new one fits (one always may start
on a worker that holds nothing).

A LoRA version (its image = a template that bakes a base + one layer of adapters) does not get a
server of its own: it runs on its template's server, started once with the base loaded
(``DREAMBUILD_SERVE_BASE=1``), which takes the version's adapters from this worker's layer cache
for each prediction (the Cog request's context: :mod:`templates.inference.versions`). So a new
fine-tune's first prediction costs loading its adapters (tens of milliseconds), not a cold start;
every LoRA version of a template shares its memory. A full fine-tune cannot
share a base, but its cold start can be mostly paid ahead: with ``servers_ahead`` > 0, once a
version of a template has started and its first prediction ended (a Python stack starting beside
it would slow it), that many more servers of the template are started in the background with no
weights (``DREAMBUILD_WEIGHTS_LATER=1``), in free memory only (the first given up for room;
counted at their own measured size: the Python stack, no weights); the next version of the
template takes one, and its first prediction names its weights to load (the Cog context again).
(Local runner only: the docker runner and ``model_urls`` run each version's own image.)

A server runs one prediction at a time (Cog's default concurrency); a second prediction of the
same version, or of another version on the same base, waits for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from builder.cog.client import CogClient, CogError
from builder.cog.container import CogContainer, start_cog_container
from builder.cog.server import CogServer, start_cog_server
from builder.cog.unpack import UnpackedImage, unpack_src
from builder.oci.manifest import LABEL_WEIGHTS
from builder.service.predictions.memory import Memory, container_memory, resident
from builder.settings import BuilderSettings
from dreambuild.layout import LORA_WEIGHTS

log = logging.getLogger(__name__)
MODEL = "model's Cog server"
Boot = Literal["cold", "pre-started", "warm"]  # the model's own word for a prediction's start: predictions add "adapter load"
# The Cog context key templates.inference.versions reads (a copy: the service does not import the
# templates; tests/test_templates_inputs.py keeps the two equal). WEIGHTS: a server started ahead's.
VERSION_WEIGHTS = "dreambuild_version_weights"
WEIGHTS = "dreambuild_weights"


@dataclass
class RunningServer:
    """A Cog server someone else started (``model_urls``): used, never started or stopped here."""

    url: str

    def alive(self) -> bool:
        return CogClient(self.url).health() is not None

    def logs(self) -> str:
        return ""


@dataclass(frozen=True)
class Served:
    """How one version runs: on its own server (``key`` = the version), or, a LoRA version, on
    its template's base server (``key`` = the template's layers) with its adapters in ``context``."""

    key: str
    image: UnpackedImage | None  # local runner: the version's image, unpacked
    context: dict[str, str] = field(default_factory=dict)
    template: str | None = None  # a full fine-tune's template (its layers but the weights): servers started ahead


@dataclass
class LoadedModel:
    """One Cog server, warm: a version's own, or a template's base serving its LoRA versions."""

    version: str  # the key it is loaded under (Served.key)
    server: CogServer | CogContainer | RunningServer
    setup_time: float  # seconds the cold start took (pull, unpack, setup)
    project: Path | None  # the local server's working directory
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)  # held by the prediction running on it
    predictions: int = 0
    lease: str | None = None  # the holder of a model_urls server's lease
    versions: set[str] = field(default_factory=set)  # the versions it has run
    context: dict[str, str] = field(default_factory=dict)  # for the prediction holding it: the Cog request's context
    bound: dict[str, str] = field(default_factory=dict)  # started ahead: the weights it was given, sent with each prediction
    template_version: str | None = None  # a base server: its template's catalog version (heartbeats name it)
    boot: Boot = "warm"  # how the prediction holding it got it
    memory: Memory = field(default_factory=Memory)  # measured after its start and after each prediction
    sizes: tuple[str, ...] = ()  # the names its measure estimates others by (its key, its template)
    over_budget: bool = False  # alone more than the budget (said once)
    then_ahead: tuple | None = None  # (Served, schema): servers of its template to start ahead once its prediction ended

    @property
    def client(self) -> CogClient:
        return CogClient(self.server.url, what=MODEL)


class ModelServers:
    """Loaded versions within ``budget`` bytes; :meth:`acquire` a version's server, then :meth:`release` it."""

    def __init__(
        self,
        settings: BuilderSettings,
        budget: Memory,
        gpu: str | None = None,
        runner: str = "local",
        pools: dict[str, list[str]] | None = None,
        leases=None,
        ahead: int = 0,
    ) -> None:
        self.settings, self.budget, self.gpu, self.runner, self.ahead = settings, budget, gpu, runner, ahead
        self.pools, self.leases = pools or {}, leases  # model_urls, leased through the database
        self._loaded: dict[str, LoadedModel] = {}
        self._guard = threading.Condition()
        self._starting: dict[str, Memory] = {}  # servers starting, at their estimated size
        self._sizes: dict[str, Memory] = {}  # a key's or a template's last measured size
        self._served: dict[str, Served] = {}  # version -> how it runs (read from its image once)
        self._waiting: dict[str, list[LoadedModel]] = {}  # template -> servers started ahead, idle
        # One long-lived thread starts them: a Cog server dies with the thread that started it
        # (PR_SET_PDEATHSIG), so never a short-lived one.
        self._ahead_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-server-ahead")
        self._closed = False
        self.evictions = 0

    def loaded(self) -> list[str]:
        """The versions warm here: those with a server, and those run on a loaded base."""
        with self._guard:
            return list(dict.fromkeys(v for key, model in self._loaded.items() for v in (key, *sorted(model.versions))))

    def bases(self) -> list[str]:
        """The templates (catalog versions) whose base is loaded here: any LoRA version of them runs warm."""
        with self._guard:
            return sorted({m.template_version for key, m in self._loaded.items() if key.startswith("base:") and m.template_version})

    def served(self, version: str, image: str) -> Served:
        """How ``version`` runs here (cached: an image's layers never change)."""
        if version not in self._served:
            if self.runner != "local" or version in self.pools:
                self._served[version] = Served(version, None)
            else:
                unpacked = unpack_src(image, self.settings)
                weights = unpacked.src / "weights"
                if (weights / LORA_WEIGHTS).is_file() and not (weights / "model_index.json").is_file():
                    self._served[version] = Served(f"base:{template_key(unpacked)}", unpacked, {VERSION_WEIGHTS: str(weights)})
                else:
                    self._served[version] = Served(version, unpacked, template=template_key(unpacked))
        return self._served[version]

    def waiting(self) -> int:
        """Servers started ahead, waiting for a version."""
        with self._guard:
            return sum(len(models) for models in self._waiting.values())

    def acquire(
        self, version: str, image: str, holder: str | None = None, schema: dict | None = None, template_version: str | None = None
    ) -> tuple[LoadedModel, bool]:
        """The version's server, locked for one prediction; and whether it was started for it
        (a cold start). A version of ``model_urls`` gets one of its running servers, leased to
        ``holder`` (the prediction: a re-run of it gets its lease back), waited for while all are busy.
        ``schema``: the version's Cog schema, known since it was built (a cold start then
        generates none); ``template_version``: its template's catalog version (a base server
        started for it is reported under it in the heartbeat's ``bases``)."""
        if version in self.pools:
            resources = [f"model:{url}" for url in self.pools[version]]
            holder = holder or uuid.uuid4().hex
            while (leased := self.leases.acquire(resources, holder)) is None:
                time.sleep(0.2)
            model = LoadedModel(version=version, server=RunningServer(leased.removeprefix("model:")), setup_time=0.0, project=None, lease=holder)
            model.lock.acquire()
            return model, False
        served = self.served(version, image)
        key = served.key
        with self._guard:
            while True:
                model = self._loaded.get(key)
                if model is not None and isinstance(model.server, CogServer) and not model.lock.locked() and not model.server.alive():
                    log.warning("the model server of %s stopped while idle: starting another", key)
                    del self._loaded[key]  # died while idle (killed, out of memory): not handed to a prediction
                    self._stop(model)
                    model = None
                if model is not None and model.lock.acquire(blocking=False):
                    model.last_used, model.boot = time.monotonic(), "warm"
                    model.context = {**served.context, **model.bound}
                    model.versions.add(version)
                    return model, False
                ready = self._waiting.get(served.template or "") or []
                while ready and not ready[-1].server.alive():  # died while waiting
                    self._stop(ready.pop())
                if model is None and key not in self._starting and ready:
                    model = ready.pop()  # started ahead: it loads this version's weights at its first prediction
                    model.version, model.bound = key, {WEIGHTS: str(served.image.src / "weights")}
                    model.sizes = (key, served.template)
                    model.setup_time, model.boot = 0.0, "pre-started"  # paid ahead; its first prediction reports weights_load_time
                    model.lock.acquire()
                    self._loaded[key] = model
                    model.context, model.last_used = {**served.context, **model.bound}, time.monotonic()
                    model.versions.add(version)
                    log.info("model version %s runs on a server started ahead for its template", version)
                    break
                if model is None and key not in self._starting and self._make_room(need := self._estimate(key, served.template)):
                    self._starting[key] = need
                    break
                self._guard.wait(0.2)  # busy, starting elsewhere, or every slot busy
        if model is not None:
            model.then_ahead = (served, schema)
            return model, True
        try:
            model = self._start(key, image, schema, served)
        finally:
            with self._guard:
                self._starting.pop(key, None)
                self._guard.notify_all()
        model.lock.acquire()
        model.context, model.template_version, model.boot = served.context, template_version, "cold"
        model.sizes = (key, served.template) if served.template else (key,)
        model.versions.add(version)
        self._measure(model)
        with self._guard:
            self._loaded[key] = model
        model.then_ahead = (served, schema)
        return model, True

    def _start_ahead(self, served: Served, schema: dict | None) -> None:
        """Start servers of a full fine-tune's template in the background, up to ``ahead`` waiting,
        in free memory only (never evicting a loaded version for one)."""
        if not self.ahead or served.template is None:
            return
        with self._guard:
            starting = f"ahead:{served.template}:{uuid.uuid4().hex[:8]}"
            waiting = len(self._waiting.get(served.template, [])) + sum(s.startswith(f"ahead:{served.template}:") for s in self._starting)
            need = self._estimate(f"ahead:{served.template}")
            if self._closed or waiting >= self.ahead or not (self.used() + need).within(self.budget):
                return
            self._starting[starting] = need

        def start() -> None:
            model = None
            try:
                model = self._start(starting, "", schema, served, ahead=True)
                model.sizes = (f"ahead:{served.template}",)
                self._measure(model)
            except Exception as exc:  # noqa: BLE001 - a server started ahead is an optimisation: the next cold start still works
                log.warning("a model server started ahead for a template failed: %s", exc)
            with self._guard:
                self._starting.pop(starting, None)
                if model is not None and not self._closed:
                    self._waiting.setdefault(served.template, []).append(model)
                    model = None
                self._guard.notify_all()
            if model is not None:
                self._stop(model)

        self._ahead_thread.submit(start)

    def used(self) -> Memory:
        """What the servers hold: loaded, waiting, and starting (at their estimate)."""
        with self._guard:
            servers = [*self._loaded.values(), *(m for models in self._waiting.values() for m in models)]
            return sum((m.memory for m in servers), sum(self._starting.values(), Memory()))

    def memory(self) -> dict[str, int]:
        """Bytes held and allowed, host and GPU (the heartbeat's ``model_memory``)."""
        used = self.used()
        return {"host": used.host, "host_budget": self.budget.host, "gpu": used.device, "gpu_budget": self.budget.device}

    def _estimate(self, *names: str | None) -> Memory:
        """A server about to start: as it (or its template) measured before, else the largest seen."""
        for name in names:
            if name in self._sizes:
                return self._sizes[name]
        return max(self._sizes.values(), key=lambda m: (m.device, m.host), default=Memory())

    def _measure(self, model: LoadedModel) -> None:
        if isinstance(model.server, CogServer):
            memory = resident(model.server.process.pid)
        elif isinstance(model.server, CogContainer):
            memory = container_memory(model.server.container)
        else:
            return  # someone else's server (model_urls): not this worker's memory
        with self._guard:
            model.memory = memory
            self._sizes.update(dict.fromkeys(model.sizes, memory))
        if not memory.within(self.budget) and not model.over_budget:
            model.over_budget = True
            log.warning("model server %s alone holds %s, more than the budget of %s: it runs, alone", model.version, memory, self.budget)

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
        else:
            self._measure(model)  # adapters or weights it loaded for this prediction count now
        if model.then_ahead is not None:
            # After the prediction, not beside it: a Python stack starting competes for its CPU.
            self._start_ahead(*model.then_ahead)
            model.then_ahead = None
        model.lock.release()
        with self._guard:
            self._guard.notify_all()

    def _make_room(self, need: Memory) -> bool:
        """With the guard held: True when a server of ``need`` bytes may start now, idle ones
        stopped for it if needed (least recently used first; servers started ahead before any)."""
        while True:
            waiting = [m for models in self._waiting.values() for m in models]
            if not (self._loaded or self._starting or waiting) or (self.used() + need).within(self.budget):
                return True
            if waiting:  # a server started ahead is the cheapest to give up
                victim = next(models for models in self._waiting.values() if models).pop()
                log.info("stopping a server started ahead (%s) to make room for %s", victim.memory, need)
                self._stop(victim)
                continue
            idle = [m for m in self._loaded.values() if not m.lock.locked()]
            if not idle:
                return False
            victim = min(idle, key=lambda m: m.last_used)
            victim.lock.acquire()
            del self._loaded[victim.version]
            self.evictions += 1
            log.info(
                "unloading model version %s (least recently used, %s) to make room for another (%s; %s used of %s)",
                victim.version,
                victim.memory,
                need,
                self.used() + victim.memory,
                self.budget,
            )
            self._stop(victim)
            victim.lock.release()

    def _start(self, version: str, image: str, schema: dict | None, served: Served, *, ahead: bool = False) -> LoadedModel:
        started = time.monotonic()
        if self.runner == "docker":  # the image as it is (its own Python and CUDA), with only this worker's GPU
            container = start_cog_container(
                image, name=f"dreambuild-model-{uuid.uuid4().hex[:12]}", gpus=[self.gpu] if self.gpu is not None else True, what="model image"
            )
            return LoadedModel(version=version, server=container, setup_time=round(time.monotonic() - started, 3), project=None)
        unpacked = served.image or unpack_src(image, self.settings)
        try:
            entry = yaml.safe_load((unpacked.src / "cog.yaml").read_text())["predict"]
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            raise CogError(f"{unpacked.reference} is not a Cog model: /src/cog.yaml with a predict entry is missing") from None
        env = unpacked.env()
        if served.context:  # a template's base, for every LoRA version of it (the first one's image holds the same layers)
            env["DREAMBUILD_SERVE_BASE"] = "1"
        if ahead:  # no weights yet: the next version of the template names them
            env["DREAMBUILD_WEIGHTS_LATER"] = "1"
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
            self._closed = True
            models, self._loaded = list(self._loaded.values()), {}
            models += [model for waiting in self._waiting.values() for model in waiting]
            self._waiting = {}
        self._ahead_thread.shutdown(wait=False, cancel_futures=True)
        for model in models:
            self._stop(model)


def template_key(image: UnpackedImage) -> str:
    """What a LoRA version's image shares with every other version of its template: its layers
    but the weights layer, and its environment (hashed)."""
    config = image.config
    weights = ((config.get("config") or {}).get("Labels") or {}).get(LABEL_WEIGHTS)
    layers = [d for d in config.get("rootfs", {}).get("diff_ids", []) if d != weights]
    env = (config.get("config") or {}).get("Env") or []
    return hashlib.sha256(json.dumps([layers, env]).encode()).hexdigest()[:32]
