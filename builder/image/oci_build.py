"""The oci backend: template + weights layer, pushed over the distribution API without a daemon.

Reads only the template's manifest and config; its layers are mounted or found present, never
downloaded (unless the destination is another registry). The weights layer is produced, hashed
and uploaded in one pass. A layer cache remembers, per weights source identity, the digest of
the layer it gave; when the destination already has that blob, an identical rebuild reads no
weights at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from builder.image.weights import WeightsSource
from builder.oci.layer import Compression, Layer, write_layer
from builder.oci.layout import OciLayout
from builder.oci.manifest import (
    BASE_DIGEST,
    BASE_NAME,
    LABEL_MODEL,
    LABEL_NOTES,
    LABEL_TEMPLATE,
    LABEL_WEIGHTS,
    Manifest,
    canonical_json,
    derive_config,
    derive_manifest,
)
from builder.oci.resolve import ResolvedImage
from builder.oci.stores import ImageStore, ensure_blob
from dreambuild.errors import RegistryUnavailableError

LAYER_FORMAT = "dreambuild-layer-1"  # bump when write_layer's output changes


class LayerCache:
    """``fingerprint → Layer`` in a JSON file; a hint only: the destination is always asked."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    @staticmethod
    def key(source: WeightsSource, compression: Compression, prefix: str) -> str:
        return hashlib.sha256(f"{LAYER_FORMAT}|{source.fingerprint()}|{compression}|{prefix}".encode()).hexdigest()

    def _load(self) -> dict:
        try:
            return json.loads(self.path.read_text()) if self.path else {}
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> Layer | None:
        entry = self._load().get(key)
        try:
            return Layer(**entry) if entry else None
        except TypeError:
            return None

    def put(self, key: str, layer: Layer) -> None:
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entries = self._load()
        entries[key] = asdict(layer)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, self.path)


def image_labels(template: ResolvedImage, diff_id: str, notes: str, model: str | None) -> dict[str, str]:
    labels = {LABEL_NOTES: notes, LABEL_TEMPLATE: template.reference, LABEL_WEIGHTS: diff_id}
    return {**labels, LABEL_MODEL: model} if model else labels


def push_weights_layer(
    weights: WeightsSource,
    dest: ImageStore,
    *,
    compression: Compression,
    cache: LayerCache,
    attempts: int,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[Layer, bool]:
    """Make ``dest`` hold the weights layer; return it and whether it was uploaded now."""
    key = cache.key(weights, compression, "src/weights")
    cached = cache.get(key)
    if cached and dest.has_blob(cached.digest):
        return cached, False
    for attempt in range(attempts):
        upload = dest.upload()
        try:
            layer = write_layer(weights.entries(), upload.write, compression=compression, on_bytes=on_bytes)
            upload.commit(layer.digest)
        except RegistryUnavailableError:
            upload.abort()
            if attempt + 1 == attempts:
                raise
            continue
        except BaseException:
            upload.abort()
            raise
        cache.put(key, layer)
        return layer, True
    raise AssertionError("unreachable")


def build_oci(
    weights: WeightsSource,
    template: ResolvedImage,
    dest: ImageStore,
    tag: str | None,
    *,
    notes: str,
    model: str | None = None,
    compression: Compression,
    cache: LayerCache,
    attempts: int = 3,
    on_step: Callable[[str], None] = lambda message: None,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[Manifest, Layer, bool]:
    """Push template + weights to ``dest`` under ``tag``; return the manifest, layer, and whether it was uploaded."""
    layers = template.manifest.json.get("layers", [])
    on_step(f"template: {len(layers)} layers and config of {template.reference}")
    # The template's layers are made present (a HEAD or a mount each: one round trip, which is
    # most of a LoRA build) in parallel with the weights layer's upload; the manifest waits for all.
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(layers))), thread_name_prefix="template-layer") as pool:
        pending = [pool.submit(ensure_blob, template.store, dest, layer["digest"]) for layer in layers]
        try:
            on_step(f"weights layer ({compression})")
            layer, uploaded = push_weights_layer(weights, dest, compression=compression, cache=cache, attempts=attempts, on_bytes=on_bytes)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        moved = [future.result() for future in pending]
    if moved:
        on_step("template layers: " + ", ".join(f"{moved.count(kind)} {kind}" for kind in ("present", "mounted", "copied") if kind in moved))
    on_step(f"weights layer {layer.digest} {'uploaded' if uploaded else 'already in ' + str(dest)}")
    config = canonical_json(derive_config(template.config, layer, image_labels(template, layer.diff_id, notes, model)))
    dest.put_blob(config)
    annotations = {BASE_NAME: template.reference.split("@")[0], BASE_DIGEST: template.manifest.digest}
    kind = "oci" if isinstance(dest, OciLayout) else None  # an OCI layout holds OCI manifests only
    manifest = derive_manifest(template.manifest, config, layer, annotations, kind=kind)
    dest.put_manifest(manifest, tag)
    return manifest, layer, uploaded
