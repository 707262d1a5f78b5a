"""Image manifests and configs: read a template's, write the model image's.

The new image is the template plus one layer. Its manifest keeps the template's media-type
family (Docker v2 schema 2 or OCI); its config appends the layer's diff_id, a history entry and
labels. Nothing time-dependent is added (``created`` stays the template's), so the same
template, weights and notes always give the same image digest.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass

from builder.oci.layer import Layer
from dreambuild.errors import RegistryError

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)

LABEL_NOTES = "io.dreambuild.notes"
LABEL_TEMPLATE = "io.dreambuild.template"
LABEL_WEIGHTS = "io.dreambuild.weights.digest"
# The model (owner/name) an image was built for: the same weights built for two models are two
# versions with two ids, as Replicate's version ids are unique, and a bare id names one model.
LABEL_MODEL = "io.dreambuild.model"
BASE_NAME = "org.opencontainers.image.base.name"
BASE_DIGEST = "org.opencontainers.image.base.digest"
WEIGHTS_COMMAND = "COPY weights /src/weights # dreambuild"
PLATFORM = ("linux", "amd64")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Manifest:
    """A manifest or index as stored: its exact bytes, media type and digest."""

    data: bytes
    media_type: str
    digest: str

    @property
    def json(self) -> dict:
        return json.loads(self.data)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @classmethod
    def parse(cls, data: bytes, media_type: str | None, where: str) -> "Manifest":
        try:
            body = json.loads(data)
        except ValueError:
            raise RegistryError(f"{where}: the manifest is not JSON") from None
        declared = body.get("mediaType") if isinstance(body, dict) else None
        kind = (media_type or "").split(";")[0].strip()
        kind = declared or (kind if kind in MANIFEST_TYPES else None) or (OCI_INDEX if "manifests" in body else OCI_MANIFEST)
        if kind not in MANIFEST_TYPES:
            raise RegistryError(f"{where}: unsupported manifest type {kind} (Docker v2 schema 2 or OCI images only)")
        return cls(data=data, media_type=kind, digest=sha256_digest(data))


def family(manifest: Manifest) -> str:
    return "docker" if manifest.media_type in (DOCKER_MANIFEST, DOCKER_LIST) else "oci"


def pick_platform(index: Manifest, where: str) -> dict:
    """The linux/amd64 descriptor of a multi-platform index."""
    for descriptor in index.json.get("manifests", []):
        platform = descriptor.get("platform") or {}
        if (platform.get("os"), platform.get("architecture")) == PLATFORM:
            return descriptor
    platforms = [d.get("platform") or {} for d in index.json.get("manifests", [])]
    found = sorted({f"{p.get('os')}/{p.get('architecture')}" for p in platforms})
    raise RegistryError(f"{where} has no linux/amd64 image (it has: {', '.join(found) or 'none'})")


def derive_config(config: dict, layer: Layer, labels: dict[str, str]) -> dict:
    """The template's config plus the weights layer, a history entry and labels."""
    new = copy.deepcopy(config)
    rootfs = new.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs.setdefault("diff_ids", []).append(layer.diff_id)
    entry = {"created_by": WEIGHTS_COMMAND, "comment": "dreambuild weights layer"}
    if new.get("created"):
        entry["created"] = new["created"]
    new.setdefault("history", []).append(entry)
    runtime = new.setdefault("config", {})
    runtime["Labels"] = {**(runtime.get("Labels") or {}), **labels}
    return new


_DOCKER_TO_OCI = {
    DOCKER_MANIFEST: OCI_MANIFEST,
    DOCKER_CONFIG: OCI_CONFIG,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
}


def derive_manifest(template: Manifest, config: bytes, layer: Layer, annotations: dict[str, str], *, kind: str | None = None) -> Manifest:
    """The template's manifest with the new config and the weights layer appended.

    ``kind`` "oci" converts a Docker-family template to OCI media types (same blobs), as an OCI
    image layout requires; by default the template's family is kept.
    """
    kind = kind or family(template)
    body = copy.deepcopy(template.json)
    if kind == "oci" and family(template) == "docker":
        for descriptor in body.get("layers", []):
            descriptor["mediaType"] = _DOCKER_TO_OCI.get(descriptor["mediaType"], descriptor["mediaType"])
    body["config"] = {
        "mediaType": DOCKER_CONFIG if kind == "docker" else OCI_CONFIG,
        "digest": sha256_digest(config),
        "size": len(config),
    }
    body.setdefault("layers", []).append({"mediaType": layer.media_type(kind), "digest": layer.digest, "size": layer.size})
    if kind == "oci":
        body["mediaType"] = OCI_MANIFEST
        body["annotations"] = {**(body.get("annotations") or {}), **annotations}
    media_type = OCI_MANIFEST if kind == "oci" else DOCKER_MANIFEST
    data = json.dumps(body, indent=3).encode()
    return Manifest(data=data, media_type=media_type, digest=sha256_digest(data))


def image_size(manifest: Manifest) -> int:
    """Bytes of the config and layers as stored (what a pull downloads)."""
    body = manifest.json
    return body["config"]["size"] + sum(layer["size"] for layer in body.get("layers", []))
