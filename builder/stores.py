"""Opening image stores (a registry repository or an OCI layout) and moving blobs between them."""

from __future__ import annotations

from typing import Callable

from builder.oci_layout import OciLayout
from builder.references import ImageRef, LayoutRef
from builder.registry import RegistryClient, RegistryRepository
from builder.settings import BuilderSettings

Store = RegistryRepository | OciLayout


def open_store(ref: ImageRef, settings: BuilderSettings, *, create: bool = False) -> Store:
    """The store holding ``ref``; ``create`` makes a missing OCI layout."""
    if isinstance(ref, LayoutRef):
        return OciLayout(ref.path, create=create)
    client = RegistryClient(ref.registry, insecure=settings.insecure_registries, retries=settings.retries)
    return RegistryRepository(client, ref.repository)


def copy_blob(source: Store, dest: Store, digest: str, on_bytes: Callable[[int], None] | None = None) -> None:
    """Stream a blob from one store into another (no copy on local disk)."""
    upload = dest.upload()
    try:
        with source.open_blob(digest) as chunks:
            for chunk in chunks:
                upload.write(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
        upload.commit(digest)
    except BaseException:
        upload.abort()
        raise


def ensure_blob(source: Store, dest: Store, digest: str) -> str:
    """Make ``dest`` hold a blob of ``source``: ``present``, ``mounted`` or ``copied``.

    Within one registry the blob is mounted across repositories, never downloaded; only a
    destination on another registry (or a layout) needs the bytes.
    """
    if dest.has_blob(digest):
        return "present"
    if dest.mount(digest, source):
        return "mounted"
    copy_blob(source, dest, digest)
    return "copied"
