"""``dreambuild build``: weights + template → model image, pushed; the model version is its digest.

request → destination and template resolved → weights opened and checked (before any upload)
→ backend (oci: daemonless, or docker: the seed's build + push) → :class:`BuildResult`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from builder.cog.container import engine_available
from builder.image.oci_build import LayerCache, build_oci, image_labels
from builder.image.weights import WeightsSource, open_weights
from builder.oci.layer import Compression, write_layer
from builder.oci.manifest import family, image_size
from builder.oci.references import ImageRef, LayoutRef, RegistryRef, names_registry, parse_layout_ref, parse_registry_ref
from builder.oci.resolve import ResolvedImage, resolve_image
from builder.oci.stores import open_store
from builder.settings import BuilderSettings
from dreambuild.errors import ImageReferenceError, InputError

BACKENDS = ("auto", "oci", "docker")


@dataclass
class BuildResult:
    image: str  # the pushed reference, pinned by digest
    digest: str  # the model version
    size: int
    weights_layer: str
    seconds: float
    backend: str
    template: str
    weights_uploaded: bool
    tag: str | None = None
    steps: list[str] = field(default_factory=list)
    weights_kind: str = "pipeline"  # or "lora": adapters a template's baked base runs

    def as_json(self) -> dict:
        return asdict(self)


@dataclass
class Reporter:
    """Progress callbacks; the CLI draws them, the service logs them."""

    step: Callable[[str], None] = lambda message: None
    weights_total: Callable[[int], None] = lambda total: None
    weights_bytes: Callable[[int], None] = lambda n: None


def model_ref(name: str, settings: BuilderSettings) -> ImageRef:
    """A model named without a registry, ``owner/name[:tag]``: in the configured registry, else in
    the embedded OCI layout. (The service's model names are always this, even with a ``.`` in
    the owner, which a bare reference would read as a registry host.)"""
    if settings.registry:
        return parse_registry_ref(f"{settings.registry}/{name}", what="model")
    checked = parse_registry_ref(name, what="model", default_registry="localhost")  # same name rules
    return LayoutRef(settings.layout, name=name.split("@")[0], digest=checked.digest)


def parse_destination(model: str | ImageRef, settings: BuilderSettings) -> tuple[ImageRef, str]:
    """``registry/owner/name[:tag]``, ``owner/name[:tag]``, ``oci:PATH:owner/name[:tag]`` or a
    parsed reference → (ref with its tag, tag)."""
    if isinstance(model, (RegistryRef, LayoutRef)):
        ref = model
    elif not isinstance(model, str) or not model.strip():
        raise ImageReferenceError("model is empty: give owner/name, registry/owner/name or oci:PATH:owner/name")
    elif model.strip().startswith("oci:"):
        ref = parse_layout_ref(model.strip(), what="model")
    elif names_registry(model):
        ref = parse_registry_ref(model.strip(), what="model")
    else:
        ref = model_ref(model.strip(), settings)
    if isinstance(ref, LayoutRef):
        if not ref.name:
            raise ImageReferenceError(f"model {str(model).strip()!r} names no image: write oci:PATH:owner/name[:tag]")
        name = ref.name
    else:
        name = ref.repository + (f":{ref.tag}" if ref.tag else "")
    if ref.digest:
        raise ImageReferenceError(f"model {str(model).strip()!r} carries a digest; the digest is what the build produces")
    repository, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
    if "/" not in repository:
        raise ImageReferenceError(f"model {str(model).strip()!r} must name an owner and a model: owner/name")
    tag = tag or "latest"
    if isinstance(ref, LayoutRef):
        return LayoutRef(ref.path, name=f"{repository}:{tag}"), f"{repository}:{tag}"
    return RegistryRef(ref.registry, ref.repository, tag=tag), tag


def resolve_template(text: str, settings: BuilderSettings) -> ResolvedImage:
    """A template given as an image reference, or as a bare ``sha256:`` version looked up in the
    configured template repositories."""
    return resolve_image(text, settings, search=settings.template_repositories, what="template")


def template_base(template: ResolvedImage) -> str | None:
    """Where a template bakes a base pipeline for LoRA outputs (its ``DREAMBUILD_BASE``), or None."""
    for entry in (template.config.get("config") or {}).get("Env") or []:
        name, _, value = entry.partition("=")
        if name == "DREAMBUILD_BASE" and value:
            return value
    return None


def choose_backend(requested: str, template: ResolvedImage, dest: ImageRef) -> str:
    registry_only = isinstance(dest, RegistryRef) and not template.reference.startswith("oci:")
    if requested == "docker" and not registry_only:
        raise InputError("the docker backend builds FROM and pushes to registries; for an OCI layout use --backend oci")
    if requested == "auto":
        return "docker" if registry_only and engine_available() else "oci"
    return requested


def build_image(
    weights: str | Path,
    template: str,
    model: str | ImageRef,
    *,
    notes: str = "",
    backend: str = "auto",
    compression: str | None = None,
    settings: BuilderSettings | None = None,
    reporter: Reporter | None = None,
    workdir: Path | None = None,
) -> BuildResult:
    """Build ``template`` + ``weights`` as ``model`` and push it; see the module docstring."""
    started = time.monotonic()
    settings = settings or BuilderSettings.from_env()
    reporter = reporter or Reporter()
    steps: list[str] = []

    def step(message: str) -> None:
        steps.append(message)
        reporter.step(message)

    dest_ref, tag = parse_destination(model, settings)
    chosen_compression = Compression.parse(compression or settings.compression)
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}")
    own_workdir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="dreambuild-build-")) if own_workdir else Path(workdir)
    source: WeightsSource | None = None
    try:
        source = open_weights(weights, workdir)  # checked before any registry is contacted
        layout = "a diffusers layout" if source.kind == "pipeline" else "LoRA adapters (a LoRA training's output)"
        step(f"weights checked: {source.total_bytes()} bytes in {layout}")
        resolved = resolve_template(template, settings)
        step(f"template {resolved.reference} ({family(resolved.manifest)} manifest)")
        if source.kind == "lora" and template_base(resolved) is None:
            raise InputError(
                f"the weights are LoRA adapters, and template {resolved.reference} has no base model baked in "
                "to apply them to (no DREAMBUILD_BASE in its environment): use a template built with the LoRA's base"
            )
        if chosen_compression.algorithm == "zstd" and family(resolved.manifest) == "docker":
            raise InputError("zstd layers need an OCI template; this template has a Docker v2 manifest (use gzip or none)")
        kind = choose_backend(backend, resolved, dest_ref)
        reporter.weights_total(source.total_bytes())
        dest = open_store(dest_ref, settings, create=True)
        if kind == "oci":
            manifest, layer, uploaded = build_oci(
                source,
                resolved,
                dest,
                tag,
                notes=notes,
                model=dest_ref.repository,
                compression=chosen_compression,
                cache=LayerCache(settings.cache / "layers.json"),
                attempts=settings.retries,
                on_step=step,
                on_bytes=reporter.weights_bytes,
            )
            digest = manifest.digest
        else:
            from builder.image.docker_build import build_docker

            diff_id = write_layer(source.entries(), lambda chunk: None).diff_id
            labels = image_labels(resolved, diff_id, notes, dest_ref.repository)
            step("docker build + push")
            digest = build_docker(source, resolved.reference, dest_ref, tag, labels=labels, workdir=workdir, on_log=step)
            manifest = dest.manifest(digest)
            uploaded = True
        pushed = dest_ref.pinned(digest)
        return BuildResult(
            image=str(pushed),
            digest=digest,
            size=image_size(manifest),
            weights_layer=manifest.json["layers"][-1]["digest"],
            seconds=round(time.monotonic() - started, 3),
            backend=kind,
            template=resolved.reference,
            weights_uploaded=uploaded,
            tag=tag,
            steps=steps,
            weights_kind=source.kind,
        )
    finally:
        if source is not None:
            source.close()
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
