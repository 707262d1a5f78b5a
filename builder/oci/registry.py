"""The OCI distribution API (what ``docker push`` speaks) on one registry: manifests, blobs
(checked against their digests), cross-repository mounts and streamed uploads, over the
authorized, retried :class:`~builder.oci.transport.Transport`; a repository of it as an image
store (:class:`RegistryRepository`).
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator
from urllib.parse import urljoin

from builder.oci.manifest import MANIFEST_TYPES, Manifest, sha256_digest
from builder.oci.transport import Transport
from dreambuild.errors import RegistryError, RegistryUnavailableError

SMALL_BLOB_MAX = 64 * 2**20


class RegistryClient:
    """One registry host; methods take the repository they act on."""

    def __init__(self, registry: str, **options) -> None:
        """``options``: :class:`~builder.oci.transport.Transport`'s (insecure hosts, credentials, retries, ...)."""
        self.registry = registry
        self.transport = Transport(registry, **options)

    def close(self) -> None:
        self.transport.close()

    # --- the distribution API ----------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        what = f"{repository}{'@' if reference.startswith('sha256:') else ':'}{reference}"
        response = self.transport.check(
            self.transport.request(
                "GET",
                f"/v2/{repository}/manifests/{reference}",
                pull(repository),
                headers={"Accept": ", ".join(MANIFEST_TYPES)},
                follow_redirects=True,
            ),
            what,
            (200,),
        )
        manifest = Manifest.parse(response.content, response.headers.get("Content-Type"), f"{self.registry}/{what}")
        if reference.startswith("sha256:") and manifest.digest != reference:
            raise RegistryError(f"registry {self.registry} returned a manifest for {what} whose digest is {manifest.digest}")
        return manifest

    def get_blob(self, repository: str, digest: str) -> bytes:
        """A small blob (a config), checked against its digest."""
        response = self.transport.check(
            self.transport.request("GET", f"/v2/{repository}/blobs/{digest}", pull(repository), follow_redirects=True),
            f"blob {digest} of {repository}",
            (200,),
        )
        if len(response.content) > SMALL_BLOB_MAX or sha256_digest(response.content) != digest:
            raise RegistryError(f"registry {self.registry} returned a blob that does not match {digest}")
        return response.content

    def open_blob(self, repository: str, digest: str):
        """Stream a blob's bytes (for copies between registries)."""
        return self.transport.stream(f"/v2/{repository}/blobs/{digest}", pull(repository), f"blob {digest} of {repository}")

    def has_blob(self, repository: str, digest: str) -> bool:
        response = self.transport.request("HEAD", f"/v2/{repository}/blobs/{digest}", pull(repository), follow_redirects=True)
        if response.status_code == 404:
            return False
        self.transport.check(response, f"blob {digest} of {repository}", (200,))
        return True

    def mount_blob(self, repository: str, digest: str, source_repository: str) -> bool:
        """Cross-repository mount; False when the registry started an upload instead."""
        response = self.transport.request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            push(repository) | pull(source_repository),
            params={"mount": digest, "from": source_repository},
        )
        if response.status_code == 201:
            return True
        self.transport.check(response, f"a blob mount into {repository}", (202,))
        self._cancel(response.headers.get("Location"), repository)
        return False

    def start_upload(self, repository: str) -> str:
        response = self.transport.check(
            self.transport.request("POST", f"/v2/{repository}/blobs/uploads/", push(repository)), f"an upload to {repository}", (202,)
        )
        return urljoin(self.transport.base, response.headers["Location"])

    def finish_upload(self, repository: str, location: str, digest: str, content: bytes = b"", *, retry: bool = True) -> None:
        url = location + ("&" if "?" in location else "?") + f"digest={digest}"
        response = self.transport.request(
            "PUT", url, push(repository), content=content, retry=retry, headers={"Content-Type": "application/octet-stream"}
        )
        self.transport.check(response, f"blob {digest} of {repository}", (201, 204))

    def _cancel(self, location: str | None, repository: str) -> None:
        if location:
            try:
                self.transport.request("DELETE", location, push(repository), retry=False)
            except RegistryError:
                pass  # the registry expires abandoned uploads

    def put_blob(self, repository: str, data: bytes) -> str:
        """Upload a small blob in one request, unless the registry has it."""
        digest = sha256_digest(data)
        if not self.has_blob(repository, digest):
            self.finish_upload(repository, self.start_upload(repository), digest, data)
        return digest

    def put_manifest(self, repository: str, reference: str, manifest: Manifest) -> None:
        response = self.transport.request(
            "PUT", f"/v2/{repository}/manifests/{reference}", push(repository), content=manifest.data, headers={"Content-Type": manifest.media_type}
        )
        self.transport.check(response, f"manifest {repository}:{reference}", (201, 200, 202))
        returned = response.headers.get("Docker-Content-Digest")
        if returned and returned != manifest.digest:
            raise RegistryError(f"registry {self.registry} stored the manifest as {returned}, expected {manifest.digest}")


def pull(repository: str) -> frozenset[str]:
    return frozenset({f"repository:{repository}:pull"})


def push(repository: str) -> frozenset[str]:
    return frozenset({f"repository:{repository}:pull,push"})


class BlobUpload:
    """A streamed blob upload: chunks handed to :meth:`write` go out in one chunked PATCH sent
    by a background thread, so reading, hashing and sending overlap. A blob that ends within
    ``small`` bytes (a LoRA's adapters, a config) is held and sent in the closing PUT instead:
    one round trip and no thread."""

    def __init__(self, client: RegistryClient, repository: str, depth: int = 4, small: int = 16 * 2**20) -> None:
        self._client, self._repository = client, repository
        self._location = client.start_upload(repository)
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._held: list[bytes] | None = []  # None once streaming
        self._held_bytes, self._small = 0, small
        self._thread = threading.Thread(target=self._send, name="blob-upload", daemon=True)

    def _body(self) -> Iterator[bytes]:
        while (chunk := self._queue.get()) is not None:
            yield chunk

    def _send(self) -> None:
        try:
            response = self._client.transport.request(
                "PATCH",
                self._location,
                push(self._repository),
                retry=False,
                content=self._body(),
                headers={"Content-Type": "application/octet-stream"},
            )
            if response.status_code == 401:
                self._client.transport.forget_tokens()
                raise RegistryUnavailableError(f"registry {self._client.registry}: the token expired during the upload")
            self._client.transport.check(response, f"an upload to {self._repository}", (202, 204))
            self._location = urljoin(self._client.transport.base, response.headers.get("Location") or self._location)
        except BaseException as exc:  # handed to the producing thread
            self._error = exc

    def write(self, chunk: bytes) -> None:
        if self._held is not None:
            self._held.append(chunk)
            self._held_bytes += len(chunk)
            if self._held_bytes <= self._small:
                return
            held, self._held = self._held, None  # too big to hold: stream from here on
            self._thread.start()
            for part in held:
                self._enqueue(part)
            return
        self._enqueue(chunk)

    def _enqueue(self, chunk: bytes | None) -> None:
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(chunk, timeout=0.2)
                return
            except queue.Full:
                if not self._thread.is_alive() and self._error is None:
                    raise RegistryError(f"the upload to {self._repository} stopped")

    def commit(self, digest: str) -> None:
        if self._held is not None:  # small: the whole blob in the closing PUT
            # Not retried in place: after a cut the upload's offset is unknown; the caller starts a new one.
            self._client.finish_upload(self._repository, self._location, digest, b"".join(self._held), retry=False)
            return
        self._enqueue(None)  # end of body
        self._thread.join()
        if self._error is not None:
            raise self._error
        self._client.finish_upload(self._repository, self._location, digest)

    def abort(self) -> None:
        self._held = None
        if self._thread.is_alive():
            try:
                self._queue.put(None, timeout=1)
            except queue.Full:
                pass
            self._thread.join(timeout=5)
        self._client._cancel(self._location, self._repository)


class RegistryRepository:
    """An image store: one repository of a registry."""

    def __init__(self, client: RegistryClient, repository: str) -> None:
        self.client, self.repository = client, repository

    def __str__(self) -> str:
        return f"{self.client.registry}/{self.repository}"

    def manifest(self, reference: str) -> Manifest:
        return self.client.get_manifest(self.repository, reference)

    def read_blob(self, digest: str) -> bytes:
        return self.client.get_blob(self.repository, digest)

    def open_blob(self, digest: str):
        return self.client.open_blob(self.repository, digest)

    def has_blob(self, digest: str) -> bool:
        return self.client.has_blob(self.repository, digest)

    def mount(self, digest: str, source: object) -> bool:
        if isinstance(source, RegistryRepository) and source.client.registry == self.client.registry:
            return self.client.mount_blob(self.repository, digest, source.repository)
        return False

    def upload(self) -> BlobUpload:
        return BlobUpload(self.client, self.repository)

    def put_blob(self, data: bytes) -> str:
        return self.client.put_blob(self.repository, data)

    def put_manifest(self, manifest: Manifest, tag: str | None) -> None:
        self.client.put_manifest(self.repository, tag or manifest.digest, manifest)
