"""``dreambuild build``: weights + template → model image, pushed; the model version is its digest.

request → destination and template resolved → weights opened and checked (before any upload)
→ backend (oci: daemonless, or docker: the seed's build + push) → :class:`BuildResult`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from builder.image import family, image_size, pick_platform
from builder.layer import Compression, write_layer
from builder.oci_build import LayerCache, Template, build_oci, image_labels
from builder.references import (ImageRef, LayoutRef, RegistryRef, names_registry, normalize_digest, parse_image_ref,
                                parse_layout_ref, parse_registry_ref)
from builder.settings import BuilderSettings
from builder.stores import Store, open_store
from builder.weights import WeightsSource, open_weights
from dreambuild.errors import ImageNotFoundError, ImageReferenceError, InputError, RegistryError

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

    def as_json(self) -> dict:
        return asdict(self)


@dataclass
class Reporter:
    """Progress callbacks; the CLI draws them, the service logs them."""

    step: Callable[[str], None] = lambda message: None
    weights_total: Callable[[int], None] = lambda total: None
    weights_bytes: Callable[[int], None] = lambda n: None


def parse_destination(model: str, settings: BuilderSettings) -> tuple[ImageRef, str]:
    """``registry/owner/name[:tag]``, ``owner/name[:tag]`` or ``oci:PATH:owner/name[:tag]`` → (ref, tag)."""
    if not isinstance(model, str) or not model.strip():
        raise ImageReferenceError("model is empty: give owner/name, registry/owner/name or oci:PATH:owner/name")
    model = model.strip()
    if model.startswith("oci:"):
        ref = parse_layout_ref(model, what="model")
        if not ref.name:
            raise ImageReferenceError(f"model {model!r} names no image: write oci:PATH:owner/name[:tag]")
        name = ref.name
    elif names_registry(model) or settings.registry:
        ref = parse_registry_ref(model, what="model", default_registry=settings.registry)
        name = ref.repository + (f":{ref.tag}" if ref.tag else "")
    else:
        checked = parse_registry_ref(model, what="model", default_registry="localhost")  # same name rules
        ref = LayoutRef(settings.layout, name=model, digest=checked.digest)
        name = model.split("@")[0]
    if ref.digest:
        raise ImageReferenceError(f"model {model!r} carries a digest; the digest is what the build produces")
    repository, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
    if "/" not in repository:
        raise ImageReferenceError(f"model {model!r} must name an owner and a model: owner/name")
    tag = tag or "latest"
    if isinstance(ref, LayoutRef):
        return LayoutRef(ref.path, name=f"{repository}:{tag}"), f"{repository}:{tag}"
    return RegistryRef(ref.registry, ref.repository, tag=tag), tag


def _platform_manifest(store: Store, top, where: str):
    if not top.is_index:
        return top
    return store.manifest(pick_platform(top, where)["digest"])


def resolve_template(text: str, settings: BuilderSettings) -> Template:
    """A template given as an image reference, or as a bare ``sha256:`` version looked up in the
    configured template repositories."""
    digest = normalize_digest(text) if isinstance(text, str) else None
    if digest:
        tried = []
        for repository in settings.template_repositories:
            ref = parse_image_ref(repository, what="template repository")
            try:
                store = open_store(ref, settings)
                top = store.manifest(digest)
            except ImageNotFoundError:
                tried.append(repository)
                continue
            except RegistryError as exc:
                tried.append(f"{repository} ({exc})")
                continue
            return _template(store, ref.pinned(digest), top)
        raise ImageNotFoundError(f"template version {digest} not found in the template repositories: {', '.join(tried) or 'none configured'}")
    ref = parse_image_ref(text, what="template")
    store = open_store(ref, settings)
    if isinstance(ref, LayoutRef):
        reference = ref.digest or ref.name
        if not reference:
            raise ImageReferenceError(f"template {text!r} names no image: write oci:PATH:NAME or oci:PATH@sha256:…")
    else:
        reference = ref.reference
    top = store.manifest(reference)
    return _template(store, ref.pinned(top.digest), top)


def _template(store: Store, pinned: ImageRef, top) -> Template:
    manifest = _platform_manifest(store, top, str(pinned))
    try:
        config = json.loads(store.read_blob(manifest.json["config"]["digest"]))
    except (KeyError, ValueError, TypeError):
        raise RegistryError(f"template {pinned} has no readable image config") from None
    return Template(store=store, reference=str(pinned), manifest=manifest, config=config)


def choose_backend(requested: str, template: Template, dest: ImageRef) -> str:
    from builder.docker_build import engine_available

    registry_only = isinstance(dest, RegistryRef) and not template.reference.startswith("oci:")
    if requested == "docker" and not registry_only:
        raise InputError("the docker backend builds FROM and pushes to registries; for an OCI layout use --backend oci")
    if requested == "auto":
        return "docker" if registry_only and engine_available() else "oci"
    return requested


def build_image(weights: str | Path, template: str, model: str, *, notes: str = "", backend: str = "auto",
                compression: str | None = None, settings: BuilderSettings | None = None,
                reporter: Reporter | None = None, workdir: Path | None = None) -> BuildResult:
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
        step(f"weights checked: {source.total_bytes()} bytes in a diffusers layout")
        resolved = resolve_template(template, settings)
        step(f"template {resolved.reference} ({family(resolved.manifest)} manifest)")
        if chosen_compression.algorithm == "zstd" and family(resolved.manifest) == "docker":
            raise InputError("zstd layers need an OCI template; this template has a Docker v2 manifest (use gzip or none)")
        kind = choose_backend(backend, resolved, dest_ref)
        reporter.weights_total(source.total_bytes())
        dest = open_store(dest_ref, settings, create=True)
        if kind == "oci":
            manifest, layer, uploaded = build_oci(source, resolved, dest, tag, notes=notes, compression=chosen_compression,
                                                  cache=LayerCache(settings.cache / "layers.json"), attempts=settings.retries,
                                                  on_step=step, on_bytes=reporter.weights_bytes)
            digest = manifest.digest
        else:
            from builder.docker_build import build_docker

            diff_id = write_layer(source.entries(), lambda chunk: None).diff_id
            labels = image_labels(resolved, diff_id, notes)
            step("docker build + push")
            digest = build_docker(source, resolved.reference, dest_ref, tag, labels=labels, workdir=workdir, on_log=step)
            manifest = dest.manifest(digest)
            uploaded = True
        pushed = dest_ref.pinned(digest)
        return BuildResult(
            image=str(pushed), digest=digest, size=image_size(manifest),
            weights_layer=manifest.json["layers"][-1]["digest"], seconds=round(time.monotonic() - started, 3),
            backend=kind, template=resolved.reference, weights_uploaded=uploaded, tag=tag, steps=steps,
        )
    finally:
        if source is not None:
            source.close()
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
