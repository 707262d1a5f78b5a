"""Image stores, the places images live: a registry repository or an OCI image layout, behind
one interface (manifest, read/open/has/mount/upload blob, put manifest); opening one for a
reference, and moving blobs between two."""

from __future__ import annotations

from typing import Callable, Protocol

from builder.oci.layout import OciLayout
from builder.oci.references import ImageRef, LayoutRef
from builder.oci.registry import RegistryClient, RegistryRepository

ImageStore = RegistryRepository | OciLayout


class RegistryAccess(Protocol):
    """How registries are spoken to (``builder.settings.BuilderSettings`` is one)."""

    insecure_registries: frozenset[str]
    retries: int


def open_store(ref: ImageRef, access: RegistryAccess, *, create: bool = False) -> ImageStore:
    """The store holding ``ref``; ``create`` makes a missing OCI layout."""
    if isinstance(ref, LayoutRef):
        return OciLayout(ref.path, create=create)
    client = RegistryClient(ref.registry, insecure=access.insecure_registries, retries=access.retries)
    return RegistryRepository(client, ref.repository)


def copy_blob(source: ImageStore, dest: ImageStore, digest: str, on_bytes: Callable[[int], None] | None = None) -> None:
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


def ensure_blob(source: ImageStore, dest: ImageStore, digest: str) -> str:
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
