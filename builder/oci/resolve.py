"""Resolving an image: reference (or a bare ``sha256:`` digest looked up in a list of
repositories) → its store → top manifest → the linux/amd64 manifest of an index → its config.

The build step resolves templates with it, ``dreambuild predict`` any model image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from builder.oci.manifest import Manifest, pick_platform
from builder.oci.references import ImageRef, LayoutRef, normalize_digest, parse_image_ref
from builder.oci.stores import ImageStore, RegistryAccess, open_store
from dreambuild.errors import ImageNotFoundError, ImageReferenceError, RegistryError


@dataclass(frozen=True)
class ResolvedImage:
    """An image found: its store, pinned reference, linux/amd64 manifest and config."""

    store: ImageStore
    reference: str  # pinned: ...@sha256:<the digest the user names (an index's, for a multi-platform image)>
    manifest: Manifest
    config: dict


def resolve_image(text: str, access: RegistryAccess, *, search: Sequence[str] = (), what: str = "image") -> ResolvedImage:
    """An image given as a reference, or as a bare ``sha256:`` digest looked up in the
    repositories ``search`` (``registry/repo`` or ``oci:PATH``), in order."""
    digest = normalize_digest(text) if isinstance(text, str) else None
    if digest:
        tried = []
        for repository in search:
            ref = parse_image_ref(repository, what=f"{what} repository")
            try:
                store = open_store(ref, access)
                top = store.manifest(digest)
            except ImageNotFoundError:
                tried.append(repository)
                continue
            except RegistryError as exc:
                tried.append(f"{repository} ({exc})")
                continue
            return _resolved(store, ref.pinned(digest), top, what)
        raise ImageNotFoundError(f"{what} version {digest} not found in the {what} repositories: {', '.join(tried) or 'none configured'}")
    ref = parse_image_ref(text, what=what)
    store = open_store(ref, access)
    if isinstance(ref, LayoutRef):
        reference = ref.digest or ref.name
        if not reference:
            raise ImageReferenceError(f"{what} {text!r} names no image: write oci:PATH:NAME or oci:PATH@sha256:…")
    else:
        reference = ref.reference
    top = store.manifest(reference)
    return _resolved(store, ref.pinned(top.digest), top, what)


def _resolved(store: ImageStore, pinned: ImageRef, top: Manifest, what: str) -> ResolvedImage:
    manifest = store.manifest(pick_platform(top, str(pinned))["digest"]) if top.is_index else top
    try:
        config = json.loads(store.read_blob(manifest.json["config"]["digest"]))
    except (KeyError, ValueError, TypeError):
        raise RegistryError(f"{what} {pinned} has no readable image config") from None
    return ResolvedImage(store=store, reference=str(pinned), manifest=manifest, config=config)
