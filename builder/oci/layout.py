"""An OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/sha256/``) as an
image store, the same interface as :class:`builder.oci.registry.RegistryRepository`.

Images are named in ``index.json`` by the ``org.opencontainers.image.ref.name`` annotation
(``owner/name:tag``), which skopeo's ``oci:PATH:NAME`` and umoci's ``--image PATH:NAME`` read.
Blobs are written to a temporary file and renamed into place; ``index.json`` is replaced
atomically under a lock, so concurrent builds into one layout do not lose each other's images.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from builder.oci.manifest import Manifest, sha256_digest
from dreambuild.errors import ImageNotFoundError, RegistryError

REF_NAME = "org.opencontainers.image.ref.name"


class LayoutUpload:
    """A blob written straight into the layout; its digest comes from the producer."""

    def __init__(self, layout: "OciLayout") -> None:
        self._layout = layout
        self._tmp = layout.blobs / f".upload-{uuid.uuid4().hex}"
        self._file = open(self._tmp, "xb")

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)

    def commit(self, digest: str) -> None:
        self._file.close()
        target = self._layout.blob_path(digest)
        if target.exists():
            self._tmp.unlink()
        else:
            os.replace(self._tmp, target)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class OciLayout:
    """An image store in a local OCI image layout."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = Path(path)
        if create:
            self.blobs.mkdir(parents=True, exist_ok=True)
            if not (self.path / "oci-layout").exists():
                (self.path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
            if not (self.path / "index.json").exists():
                self._write_index({"schemaVersion": 2, "manifests": []})
        elif not (self.path / "index.json").is_file():
            raise ImageNotFoundError(f"{self.path} is not an OCI image layout (no index.json)")

    def __str__(self) -> str:
        return f"oci:{self.path}"

    @property
    def blobs(self) -> Path:
        return self.path / "blobs" / "sha256"

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hex_digest = digest.partition(":")
        if algorithm != "sha256" or len(hex_digest) != 64:
            raise RegistryError(f"unsupported digest {digest!r}")
        return self.blobs / hex_digest

    def index(self) -> dict:
        try:
            return json.loads((self.path / "index.json").read_text())
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{self.path}/index.json cannot be read ({exc})") from None

    def named(self) -> dict[str, str]:
        """The named images: ref.name annotation → manifest digest (the last of a name wins)."""
        return {
            (d.get("annotations") or {})[REF_NAME]: d["digest"]
            for d in self.index().get("manifests", [])
            if (d.get("annotations") or {}).get(REF_NAME) and isinstance(d.get("digest"), str)
        }

    def _write_index(self, index: dict) -> None:
        tmp = self.path / f".index-{uuid.uuid4().hex}.json"
        tmp.write_text(json.dumps(index, indent=2))
        os.replace(tmp, self.path / "index.json")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path / ".index.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def manifest(self, reference: str) -> Manifest:
        """A manifest by digest, or by the ref.name annotation (``owner/name:tag``)."""
        descriptors = self.index().get("manifests", [])
        if reference.startswith("sha256:"):
            found = [d for d in descriptors if d.get("digest") == reference]
            if not found and not self.blob_path(reference).is_file():
                raise ImageNotFoundError(f"{reference} not found in {self}")
            descriptor = found[0] if found else {"digest": reference}
        else:
            found = [d for d in descriptors if (d.get("annotations") or {}).get(REF_NAME) == reference]
            if not found:
                names = sorted((d.get("annotations") or {}).get(REF_NAME, "") for d in descriptors) or ["none"]
                raise ImageNotFoundError(f"no image named {reference!r} in {self} (it has: {', '.join(n for n in names if n) or 'none'})")
            descriptor = found[-1]
        data = self.read_blob(descriptor["digest"])
        return Manifest.parse(data, descriptor.get("mediaType"), f"{self}@{descriptor['digest']}")

    def read_blob(self, digest: str) -> bytes:
        path = self.blob_path(digest)
        if not path.is_file():
            raise ImageNotFoundError(f"blob {digest} not found in {self}")
        data = path.read_bytes()
        if sha256_digest(data) != digest:
            raise RegistryError(f"blob {digest} in {self} is corrupt (its content has another digest)")
        return data

    @contextmanager
    def open_blob(self, digest: str) -> Iterator[Iterator[bytes]]:
        path = self.blob_path(digest)
        if not path.is_file():
            raise ImageNotFoundError(f"blob {digest} not found in {self}")
        with open(path, "rb") as handle:
            yield iter(lambda: handle.read(8 * 2**20), b"")

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def mount(self, digest: str, source: object) -> bool:
        """Hard-link a blob from another layout on the same file system."""
        if not isinstance(source, OciLayout) or not source.has_blob(digest):
            return False
        try:
            os.link(source.blob_path(digest), self.blob_path(digest))
            return True
        except FileExistsError:
            return True
        except OSError:
            return False

    def upload(self) -> LayoutUpload:
        return LayoutUpload(self)

    def put_blob(self, data: bytes) -> str:
        digest = sha256_digest(data)
        if not self.has_blob(digest):
            upload = self.upload()
            upload.write(data)
            upload.commit(digest)
        return digest

    def put_manifest(self, manifest: Manifest, tag: str | None) -> None:
        """Store the manifest and name it ``tag`` in index.json (replacing an older image of that name)."""
        self.put_blob(manifest.data)
        descriptor = {"mediaType": manifest.media_type, "digest": manifest.digest, "size": len(manifest.data)}
        if tag:
            descriptor["annotations"] = {REF_NAME: tag}
        with self._locked():
            index = self.index()
            kept = [
                d
                for d in index.get("manifests", [])
                if not (tag and (d.get("annotations") or {}).get(REF_NAME) == tag)
                and not (not tag and d.get("digest") == manifest.digest and not d.get("annotations"))
            ]
            index["manifests"] = kept + [descriptor]
            self._write_index(index)
