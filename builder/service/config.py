"""The service's configuration: data directory, catalog of trainer and template versions,
registry, tokens, limits. A YAML file (``dreambuild serve --config FILE``) or embedded defaults.

Embedded defaults need nothing: the data directory is ``./.dreambuild``; the catalog holds this
repository's trainer (run by the ``local`` runner) under a version derived from its source, and
the templates found in the embedded OCI layout (``dreambuild/<template>``) under their digests;
images go to that layout; a local token is created on first start.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import secrets
import time
import typing
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from builder.checkout import REPO_ROOT, has_checkout
from builder.cog.unpack import BASE_LABEL
from builder.egress import EgressPolicy
from builder.oci.layout import OciLayout
from builder.oci.references import LayoutRef, normalize_digest, parse_image_ref
from builder.settings import NAMED_BASES, BuilderSettings
from dreambuild.errors import DreambuildError, InputError
from dreambuild.layout import baked_pipeline_digest, digest_file, family

ALL_OWNERS = "*"
log = logging.getLogger(__name__)


class _Strict(BaseModel):
    # A misspelled key (``prot: 8000``) is an error naming it, never a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


def _base_digest(value: str | None) -> str | None:
    if value is None:
        return None
    digest = normalize_digest(str(value))
    if digest is None:
        raise ValueError(f"{value!r} is not a base digest (sha256:<64 hex>, as `python -m dreambuild.layout DIR` prints it)")
    return digest


class TrainerEntry(_Strict):
    """A trainer version: a Cog model whose prediction returns output.zip."""

    name: str
    runner: Literal["local", "cog-http", "docker"] = "local"
    image: str | None = Field(None, description="Image reference (docker runner; recorded for the others).")
    url: str | None = Field(None, description="Base URL of a running Cog server (cog-http runner; same as urls: [url]).")
    urls: list[str] = Field(
        default_factory=list,
        description="cog-http runner: a pool of Cog servers, each leased by one "
        "training at a time (trainings wait for a free one; none answers 409).",
    )
    timeout_minutes: float = Field(24 * 60, description="A training's trainer stage fails after this long.")
    health_seconds: float = Field(
        30,
        description="How often the trainer's Cog server is health-checked while it trains; "
        "a server that stops answering, or forgets the training, fails it.",
    )
    predictor: str = Field("trainer/cog_model.py:Predictor", description="Cog entry point under the repo (local runner).")
    env: dict[str, str] = Field(default_factory=dict, description="Environment of the trainer's Cog server.")
    gpus: bool = Field(True, description="docker runner: request GPUs (all of them, or a worker's own with --gpu).")
    base_digest: str | None = Field(
        None,
        description="The trainer's built-in base (pipeline_digest), when known: a LoRA "
        "training is refused at creation on a template whose base differs.",
    )

    base_digests: dict[str, str] = Field(
        default_factory=dict,
        description="The bases baked in the trainer by name (its base_model input: sdxl, flux-dev, …) and their "
        "pipeline_digest: a LoRA training naming one is refused at creation on a template whose base differs.",
    )

    _digest = field_validator("base_digest")(_base_digest)

    @field_validator("base_digests")
    @classmethod
    def _digests(cls, value: dict[str, str]) -> dict[str, str]:
        return {name: _base_digest(digest) for name, digest in value.items()}

    def base_of(self, inputs: dict) -> str | None:
        """The digest of the base a training with ``inputs`` starts from, when known: the one its
        ``base_model`` names, else the trainer's default base. A local trainer's bases are looked
        for again when unknown (one fetched while the service runs counts at once)."""
        named = inputs.get("base_model")
        if self.runner == "local" and (named not in self.base_digests if named else self.base_digest is None):
            self.read_local_digests()
        return self.base_digests.get(named) if named else self.base_digest

    def trains_lora(self, inputs: dict) -> bool:
        """Whether a training with ``inputs`` trains LoRA adapters, as the trainer decides it:
        ``lora_rank`` > 0, or ``lora_rank`` left empty on a FLUX base (trainer.args: 16 there,
        since FLUX trains LoRA only). The base is FLUX when its folder says so (a local
        trainer), else when ``base_model`` names one (``flux-dev``, ``flux-schnell``); a
        ``ckpt_base`` is unknown until the trainer opens it (taken as not FLUX)."""
        rank = inputs.get("lora_rank")
        if rank is not None:
            return isinstance(rank, int) and rank > 0
        if inputs.get("ckpt_base"):
            return False
        named = inputs.get("base_model")
        if self.runner == "local":
            folder = self.local_bases().get(named) if named else self.local_base()
            if folder is not None and (folder / "model_index.json").is_file():
                return family(folder) == "flux"
        return isinstance(named, str) and named.startswith("flux")

    def local_bases(self) -> dict[str, Path]:
        """local runner: the bases by name, as trainer.job finds them: ``DREAMBUILD_BASE_MODELS``,
        else each named base beside the default one (``./base-model-flux-dev``)."""
        value = self.env.get("DREAMBUILD_BASE_MODELS") or os.environ.get("DREAMBUILD_BASE_MODELS", "")
        pairs = [item.split("=", 1) for item in value.split(",") if "=" in item]
        if pairs:
            return {name.strip(): Path(path.strip()).expanduser().absolute() for name, path in pairs}
        default = self.local_base()
        return {name: default.with_name(f"{default.name}-{name}") for name in NAMED_BASES}

    def read_local_digests(self) -> None:
        """local runner: the digests its bases' folders were baked with (``base.digest`` beside
        each, as trainer.fetch_base_model writes them), where the configuration names none."""
        base = self.local_base()
        if self.base_digest is None and digest_file(base).is_file():
            self.base_digest = baked_pipeline_digest(base)
        for name, path in self.local_bases().items():
            if name not in self.base_digests and digest_file(path).is_file():
                self.base_digests[name] = baked_pipeline_digest(path)

    def local_base(self) -> Path:
        """local runner: the base pipeline the trainer fine-tunes by default: ``env:``'s
        ``DREAMBUILD_BASE_MODEL``, else the service's, else ``base-model/`` in the checkout (where
        ``python -m trainer.fetch_base_model`` writes SD 1.5)."""
        chosen = self.env.get("DREAMBUILD_BASE_MODEL") or os.environ.get("DREAMBUILD_BASE_MODEL")
        return Path(chosen).expanduser().absolute() if chosen else REPO_ROOT / "base-model"

    @property
    def pool(self) -> list[str]:
        """cog-http: the servers' base URLs."""
        return [u.rstrip("/") for u in ([self.url] if self.url else []) + self.urls]


class TemplateEntry(_Strict):
    """A template version: a weight-less Cog model image in a repository."""

    name: str
    repository: str = Field(..., description="registry/repo or oci:PATH:NAME; the version digest is appended.")
    base_digest: str | None = Field(
        None,
        description="The base pipeline baked in this template (DREAMBUILD_BASE), as "
        "dreambuild.layout.pipeline_digest names it: LoRA trainings (lora_rank > 0) of that "
        "base build on it. None: full fine-tunes only.",
    )

    _digest = field_validator("base_digest")(_base_digest)

    def reference(self, version: str) -> str:
        """The template image of ``version``, pinned by digest (in a layout: by digest alone)."""
        ref = parse_image_ref(self.repository, what=f"template {self.name!r} repository")
        if isinstance(ref, LayoutRef):
            ref = LayoutRef(ref.path)
        return str(ref.pinned(normalize_digest(version)))


class TokenEntry(_Strict):
    token: str
    owners: list[str]


class ServiceConfig(_Strict):
    data_dir: Path = Field(Path(".dreambuild"), validate_default=True)
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(
        None, description="How users reach this service: the URLs in its answers (files, uploads, outputs, trainings). Default http://host:port."
    )
    internal_url: str | None = Field(
        None,
        description="How trainers, model servers and workers reach this service "
        "(its internal routes, the inputs handed to trainers), when not as users do: "
        "http://api:8000 on a compose network. Default: public_url.",
    )
    database_url: str | None = Field(
        None, description="postgresql://user:password@host/db (many machines); none: SQLite in the data directory (the embedded default)."
    )
    workers: Literal["embedded", "external"] = Field(
        "embedded",
        description="embedded: trainings run in the API's process "
        "(max_concurrent at once); external: on `dreambuild worker` processes, "
        "through the queue in PostgreSQL (needs database_url).",
    )
    max_concurrent: int = 1
    max_upload_bytes: int = 2 * 2**30
    max_output_bytes: int = Field(
        32 * 2**30, description="Largest trainer output (output.zip): an SD 1.5 fp32 fine-tune is ~4.3 GB, SDXL's several times that."
    )
    max_body_bytes: int = 2**20
    registry: str | None = Field(None, description="Registry for models; none: the embedded OCI layout.")
    insecure_registries: list[str] = Field(default_factory=list)
    egress_allow: list[str] = Field(
        default_factory=list,
        description="Hosts, addresses and networks (CIDR) the service may "
        "connect to for users although they are loopback, private or link-local (README: egress policy).",
    )
    trainers: dict[str, TrainerEntry] = Field(default_factory=dict)
    templates: dict[str, TemplateEntry] = Field(default_factory=dict)
    template_repositories: list[str] = Field(
        default_factory=list,
        description="Repositories (registry/repo[:tag], "
        "tag default latest) whose image is a template the catalog offers, as "
        "`dreambuild templates add NAME --to REPO` pushes them: read when the "
        "catalog is, at most every 30 s; a version once seen stays offered.",
    )
    tokens: list[TokenEntry] = Field(default_factory=list)
    default_template_version: str | None = Field(
        None, description="Template for trainings created through Replicate's model-scoped route (default: the only template in the catalog)."
    )
    upload_expiry_hours: float | None = Field(168, description="Uploads are deleted this long after they were made (none: kept until DELETE).")
    output_expiry_hours: float | None = Field(
        None, description="A finished training's output.zip are deleted this long after it ended (none: kept until DELETE)."
    )
    webhook_backoff: float = Field(2.0, description="Seconds before a webhook's second attempt; doubling after each.")
    webhook_backoff_max: float = Field(600.0, description="The longest wait between two attempts of a webhook.")
    webhook_retry_hours: float = Field(24.0, description="A webhook is retried this long before it is given up.")
    webhook_attempts: int | None = Field(None, description="At most this many attempts (none: as many as fit in webhook_retry_hours).")
    model_memory: ByteSize | None = Field(
        None,
        description=(
            "Host memory a worker's model servers may hold together (e.g. 24GiB): their processes' resident memory, measured "
            "after each start and prediction (weights, adapters, servers started ahead). The least recently used idle one is "
            "stopped to make room for another (logged). Default: half of the machine's memory."
        ),
    )
    model_gpu_memory: ByteSize | None = Field(
        None,
        description="The same for GPU memory (measured through NVML: the gpu extra). Default: 90% of the worker's GPU; none without a GPU.",
    )
    servers_ahead: int = Field(
        0,
        ge=0,
        le=8,
        description=(
            "Model servers per template a worker starts ahead, with no weights, once a full fine-tune of the template ran: "
            "the next version's first prediction loads only its weights. Started in free model_memory only, and counted in it (local runner)."
        ),
    )
    max_concurrent_predictions: int = Field(1, ge=1, description="Predictions the embedded worker runs at once.")
    model_runner: Literal["local", "docker"] = Field(
        "local",
        description="How a worker runs a version for predictions: "
        "local (its /src from the layer cache in a local Cog server, this "
        "Python environment) or docker (the image itself, with only the "
        "worker's GPU, on the engine at DOCKER_HOST).",
    )
    model_urls: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Versions served by Cog servers already "
        "running (other GPU boxes): version id → their URLs, each leased by one "
        "prediction at a time; nothing is started or stopped for these versions.",
    )
    prediction_timeout_minutes: float = Field(30.0, description="A prediction running longer fails.")
    shutdown_grace_seconds: float = Field(
        30.0,
        ge=0,
        description="A stopping service or worker lets running predictions "
        "end this long; then they are canceled and handed back (they run again "
        "from their inputs at the next start, or on another worker).",
    )
    file_url_seconds: int = Field(3600, ge=60, description="How long signed download URLs of files and outputs work.")
    file_expiry_hours: float | None = Field(
        24,
        description="Files of predictions (uploaded inputs, outputs) are deleted "
        "this long after they were made; the prediction then shows data_removed "
        "(none: kept until DELETE).",
    )

    # Embedded defaults with no templates configured: the catalog's templates are the layout's,
    # read again when asked, so `dreambuild templates add` needs no restart.
    _templates_from_layout: bool = PrivateAttr(False)
    _layout_read: tuple | None = PrivateAttr(None)  # the layout index's (mtime, size) when last read
    _repositories_read: float | None = PrivateAttr(None)

    def template_catalog(self) -> dict[str, TemplateEntry]:
        """The catalog's templates, by version."""
        if self._templates_from_layout:
            try:
                stat = (self.layout / "index.json").stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
            except OSError:
                stamp = None
            if stamp is None or stamp != self._layout_read:  # written again (a template added, a model pushed)
                self.templates, self._layout_read = layout_templates(self.layout), stamp
        if self.template_repositories and (self._repositories_read is None or time.monotonic() - self._repositories_read > 30):
            self._repositories_read = time.monotonic()
            self.templates.update(repository_templates(self.template_repositories, self.builder_settings()))
        return self.templates

    @field_validator("data_dir")
    @classmethod
    def _data_dir_is_absolute(cls, value: Path) -> Path:
        # Read where it was given: the model and trainer servers run in folders of their own,
        # where a relative path would name another place.
        return Path(value).expanduser().absolute()

    @field_validator("model_urls")
    @classmethod
    def _model_urls_by_digest(cls, value: dict) -> dict:
        pools = {}
        for version, urls in value.items():
            digest = normalize_digest(str(version))
            if digest is None:
                raise ValueError(f"model_urls: {version!r} is not a version id (sha256:<64 hex>)")
            pools[digest] = [url.rstrip("/") for url in urls]
        return pools

    @model_validator(mode="after")
    def _external_workers_need_postgresql(self) -> "ServiceConfig":
        if self.workers == "external" and not (self.database_url or "").startswith(("postgresql", "postgres:")):
            raise ValueError("workers: external needs database_url: postgresql://… (the queue lives in PostgreSQL)")
        return self

    @field_validator("trainers", "templates")
    @classmethod
    def _versions_are_digests(cls, value: dict) -> dict:
        for version in value:
            if not normalize_digest(version):
                raise ValueError(f"catalog version {version!r} must be 64 hex digits (optionally sha256:)")
        return value

    @staticmethod
    def catalog_key(catalog: dict, version: object) -> str | None:
        """The catalog's key for ``version``, written with or without ``sha256:``; None if absent."""
        wanted = normalize_digest(version) if isinstance(version, str) else None
        return next((key for key in catalog if normalize_digest(key) == wanted), None) if wanted else None

    @property
    def egress(self) -> EgressPolicy:
        return EgressPolicy(tuple(self.egress_allow))

    def builder_settings(self) -> BuilderSettings:
        """The image builder's settings: the data directory (its embedded layout and caches) and
        the registry models go to."""
        return BuilderSettings(home=self.data_dir, registry=self.registry, insecure_registries=frozenset(self.insecure_registries))

    @property
    def base_url(self) -> str:
        """The users' URL of this service (``public_url``)."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def internal_base_url(self) -> str:
        """How this service's own trainers, model servers and workers reach it (``internal_url``)."""
        return (self.internal_url or self.base_url).rstrip("/")

    def to_internal(self, url: str) -> str:
        """A URL of this service as users have it, as trainers and workers reach it."""
        return self.internal_base_url + url[len(self.base_url) :] if url.startswith(self.base_url + "/") else url

    @property
    def database(self) -> str | Path:
        """The database: its URL, or the embedded SQLite file."""
        return self.database_url or self.data_dir / "dreambuild.sqlite"

    @property
    def files(self) -> Path:
        return self.data_dir / "files"

    @property
    def layout(self) -> Path:
        return self.data_dir / "images"


def local_trainer_version() -> str:
    """The version of this checkout's trainer: a digest of its source, like an image digest."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "trainer").glob("*.py")) + [REPO_ROOT / "cog.yaml"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def load_config(path: Path | None = None, **overrides) -> ServiceConfig:
    """The YAML file's configuration (or the defaults), with the local trainer when none is listed."""
    data: dict = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(f"service configuration {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"service configuration {path}: a mapping of keys (data_dir:, port:, …) was expected")
    data.update({k: v for k, v in overrides.items() if v is not None})
    if "data_dir" not in data and os.environ.get("DREAMBUILD_HOME"):
        data["data_dir"] = os.environ["DREAMBUILD_HOME"]  # where the CLI looks for the token, too
    try:
        config = ServiceConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"service configuration {path or '(defaults)'}: {config_errors(exc)}") from None
    if not config.trainers and has_checkout():  # installed from a wheel, there is no local trainer to offer
        config.trainers[local_trainer_version()] = TrainerEntry(name="dreambooth (this checkout)")
    for entry in config.trainers.values():
        if entry.runner == "local":
            entry.read_local_digests()
    if not config.templates and not config.template_repositories and config.workers == "embedded":  # a layout is one machine's
        config._templates_from_layout = True
        config.template_catalog()
    return config


def catalog_listing(config: ServiceConfig) -> dict:
    """The catalog as ``GET /v1/catalog`` and ``dreambuild catalog`` show it."""
    return {
        "trainers": [
            {"version": version, "name": entry.name, "runner": entry.runner, "base_digest": entry.base_digest, "base_digests": entry.base_digests}
            for version, entry in config.trainers.items()
        ],
        "templates": [
            {"version": version, "name": entry.name, "base_digest": entry.base_digest, "builds": ["full", "lora"] if entry.base_digest else ["full"]}
            for version, entry in config.template_catalog().items()
        ],
    }


REPLACED = {"max_loaded_models": "replaced by model_memory: a budget in bytes (e.g. 24GiB), not a count of loaded models"}


def config_errors(exc: ValidationError) -> str:
    """Pydantic's errors as ``key.path: message`` lines; an unknown key names the nearest valid one."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden" and str(error["loc"][-1]) in REPLACED:
            lines.append(f"{where}: {REPLACED[str(error['loc'][-1])]}")
        elif error["type"] == "extra_forbidden":
            known = _keys_at(error["loc"][:-1])
            near = difflib.get_close_matches(str(error["loc"][-1]), known, n=1, cutoff=0.6)
            hint = f"did you mean {near[0]!r}?" if near else f"valid keys: {', '.join(known)}"
            lines.append(f"{where}: unknown key ({hint})")
        else:
            lines.append(f"{where or '(top level)'}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def _keys_at(loc: tuple) -> list[str]:
    """The keys a configuration block at ``loc`` may hold (ServiceConfig's, or an entry's)."""
    model: type[BaseModel] = ServiceConfig
    parts = list(loc)
    while parts:
        annotation = model.model_fields[str(parts.pop(0))].annotation
        nested = [arg for arg in typing.get_args(annotation) if isinstance(arg, type) and issubclass(arg, BaseModel)]
        if not nested:
            return []
        model = nested[0]
        parts = parts[1:]  # the dict's key (a version) or the list's index
    return sorted(model.model_fields)


def layout_templates(layout: Path) -> dict[str, TemplateEntry]:
    """Templates in the embedded OCI layout (images named ``dreambuild/<template>``, as
    ``dreambuild templates add`` writes them), by digest, with the base each bakes (its label)."""
    try:
        store = OciLayout(layout)
        named = store.named()
    except DreambuildError:
        return {}
    found = {}
    for name, digest in named.items():
        if not name.startswith("dreambuild/") or not normalize_digest(digest):
            continue
        try:
            config = json.loads(store.read_blob(store.manifest(digest).json["config"]["digest"]))
            base = ((config.get("config") or {}).get("Labels") or {}).get(BASE_LABEL)
        except (DreambuildError, ValueError, KeyError, TypeError):
            continue  # not an image this service can run: left out of the catalog
        found[normalize_digest(digest).removeprefix("sha256:")] = TemplateEntry(
            name=name.removeprefix("dreambuild/"), repository=f"oci:{layout}:{name}", base_digest=base
        )
    return found


def repository_templates(repositories: list[str], settings: BuilderSettings) -> dict[str, TemplateEntry]:
    """The template each repository's tag names now, by digest (a repository that cannot be read
    is logged and left out until the next read)."""
    from builder.oci.resolve import resolve_image

    found = {}
    for text in repositories:
        repository = text if ":" in text.rsplit("/", 1)[-1] or "@" in text else f"{text}:latest"
        try:
            image = resolve_image(repository, settings, what="template repository")
        except DreambuildError as exc:
            log.warning("template repository %s: %s", text, exc)
            continue
        labels = (image.config.get("config") or {}).get("Labels") or {}
        name = labels.get("io.dreambuild.template.name") or repository.rsplit("/", 1)[-1].split(":")[0]
        digest = image.reference.rsplit("@", 1)[1]
        found[digest.removeprefix("sha256:")] = TemplateEntry(name=name, repository=_repository_of(repository), base_digest=labels.get(BASE_LABEL))
    return found


def _repository_of(reference: str) -> str:
    """``registry/repo`` of ``registry/repo:tag``."""
    head, _, last = reference.rpartition("/")
    return f"{head}/{last.split(':')[0].split('@')[0]}"


def ensure_local_token(config: ServiceConfig) -> Path | None:
    """With no tokens configured, create (once) a local token for all owners; return its file."""
    if config.tokens:
        return None
    path = config.data_dir / "token"
    if not path.exists():
        config.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("r8_" + secrets.token_urlsafe(30) + "\n")
    config.tokens.append(TokenEntry(token=path.read_text().strip(), owners=[ALL_OWNERS]))
    return path
