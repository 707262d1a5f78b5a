"""A client for the OCI distribution API (what ``docker push`` speaks), over httpx.

Auth follows the registry's ``WWW-Authenticate`` challenge: none, Basic, or Bearer tokens
fetched from the realm with the scopes each request needs, using credentials from the Docker
config. Loopback registries and ``DREAMBUILD_INSECURE_REGISTRIES`` use plain HTTP, as Docker
does. Connection failures, timeouts, 429 and 5xx are retried with exponential backoff; what
still fails raises one typed error with a one-line message.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import queue
import re
import ssl
import threading
import time
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urljoin

import httpx

from builder.oci.credentials import Credentials, lookup_credentials
from builder.oci.manifest import MANIFEST_TYPES, Manifest, sha256_digest
from dreambuild.errors import ImageNotFoundError, RegistryAuthError, RegistryError, RegistryUnavailableError

log = logging.getLogger(__name__)

RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
SMALL_BLOB_MAX = 64 * 2**20
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def is_plain_http(registry: str, insecure: frozenset[str] | set[str] = frozenset()) -> bool:
    """Loopback hosts and configured insecure registries are spoken to over plain HTTP."""
    if registry in insecure:
        return True
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    host = host.strip("[]")
    if host == "localhost" or host.endswith(".localhost") or host in insecure:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error_text(response: httpx.Response) -> str:
    """The registry's error codes and messages, or the HTTP status."""
    try:
        errors = response.json().get("errors") or []
        text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, AttributeError):
        text = ""
    return text or f"HTTP {response.status_code} {response.reason_phrase}".strip()


def _describe(exc: httpx.HTTPError) -> str:
    cause = exc.__cause__ or exc.__context__
    text = str(exc) or type(exc).__name__
    if cause and str(cause) and str(cause) not in text:
        text = f"{text} ({cause})"
    return text


def _tls_context() -> ssl.SSLContext:
    """httpx's default TLS context, made once per process and CA setting: loading the CA bundle
    takes ~40 ms, which was a third of a LoRA build's time (a build opens two clients)."""
    return _tls_context_for(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.cache
def _tls_context_for(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context()


class RegistryClient:
    """One registry host; methods take the repository they act on."""

    def __init__(
        self,
        registry: str,
        *,
        insecure: frozenset[str] = frozenset(),
        credentials: Credentials | None = None,
        retries: int = 5,
        backoff: float = 0.5,
        timeout: float = 60.0,
    ) -> None:
        self.registry = registry
        host = "registry-1.docker.io" if registry == "docker.io" else registry
        self.base = ("http" if is_plain_http(registry, insecure) else "https") + "://" + host
        self.credentials = credentials if credentials is not None else lookup_credentials(registry)
        self.retries = retries
        self.backoff = backoff
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, read=max(timeout, 600)), verify=_tls_context())
        self._challenge: tuple[str, dict[str, str]] | None = None
        self._tokens: dict[frozenset[str], str] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    # --- auth --------------------------------------------------------------------------------

    def _authorization(self, scopes: frozenset[str]) -> str | None:
        if self._challenge is None:
            return None
        scheme, params = self._challenge
        if scheme == "basic":
            return self.credentials.basic() if self.credentials else None
        with self._lock:
            token = self._tokens.get(scopes)
        if token is None:
            token = self._fetch_token(params, scopes)
            with self._lock:
                self._tokens[scopes] = token
        return f"Bearer {token}"

    def _fetch_token(self, params: dict[str, str], scopes: frozenset[str]) -> str:
        realm = params.get("realm")
        if not realm:
            raise RegistryAuthError(f"registry {self.registry} asked for a bearer token without saying where to get one")
        query = [("service", params["service"])] if params.get("service") else []
        # Exactly the scopes this request needs; a challenge's own scope belongs to the request
        # that drew it, not to later ones.
        query += [("scope", scope) for scope in sorted(scopes)]
        headers = {"Authorization": self.credentials.basic()} if self.credentials else {}
        response = self._send("GET", realm, params=query, headers=headers, what=f"token service of {self.registry}")
        if response.status_code in (401, 403):
            raise RegistryAuthError(f"registry {self.registry} refused the credentials{self._who()}: {_error_text(response)}")
        if response.status_code >= 400:
            raise RegistryAuthError(f"the token service of {self.registry} failed: {_error_text(response)}")
        body = response.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryAuthError(f"the token service of {self.registry} returned no token")
        return token

    def _who(self) -> str:
        return f" of user {self.credentials.username!r}" if self.credentials else " (none configured: run `docker login " + self.registry + "`)"

    def _learn_challenge(self, response: httpx.Response, scopes: frozenset[str]) -> bool:
        """Record a 401's challenge; True when a retry with new authorization may succeed."""
        header = response.headers.get("WWW-Authenticate", "")
        scheme = header.split(" ", 1)[0].lower()
        if scheme not in ("basic", "bearer"):
            return False
        params = dict(_CHALLENGE_PARAM.findall(header))
        known = self._challenge
        self._challenge = (scheme, params)
        if scheme == "basic":
            return self.credentials is not None and (known is None or known[0] != "basic")
        with self._lock:
            had = self._tokens.pop(scopes, None)
        return had is None or known is None  # a fresh token for these scopes is worth one try

    # --- transport ---------------------------------------------------------------------------

    def _send(self, method: str, url: str, *, what: str, retry: bool = True, **kwargs) -> httpx.Response:
        """One request with retries on transport errors, 429 and 5xx."""
        attempts = self.retries if retry else 1
        last = ""
        for attempt in range(attempts):
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                last = f"cannot reach {what}: {_describe(exc)}"
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                last = f"{what} answered {_error_text(response)}"
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.isdigit() and attempt + 1 < attempts:
                    time.sleep(min(int(retry_after), 30))
                    continue
            if attempt + 1 < attempts:
                delay = self.backoff * 2**attempt
                log.warning("%s; retrying in %.1fs", last, delay)
                time.sleep(delay)
        raise RegistryUnavailableError(last + (f" (after {attempts} attempts)" if attempts > 1 else ""))

    def request(
        self, method: str, path_or_url: str, scopes: frozenset[str], *, retry: bool = True, headers: dict[str, str] | None = None, **kwargs
    ) -> httpx.Response:
        """A request with auth: answers a 401 challenge once, then returns whatever comes."""
        url = urljoin(self.base, path_or_url)
        for _ in range(3):
            auth = self._authorization(scopes)
            merged = {**(headers or {}), **({"Authorization": auth} if auth else {})}
            response = self._send(method, url, headers=merged, what=f"registry {self.registry}", retry=retry, **kwargs)
            if response.status_code != 401:
                return response
            learned = self._learn_challenge(response, scopes)
            # Requests run in parallel (a build's template layers): one sent before another
            # learned the challenge is answered 401 too, and is worth one try with what it learned.
            if not retry or not (learned or (auth is None and self._authorization(scopes) is not None)):
                return response
        return response

    def _check(self, response: httpx.Response, what: str, ok: tuple[int, ...]) -> httpx.Response:
        if response.status_code in ok:
            return response
        if response.status_code == 401:
            raise RegistryAuthError(f"registry {self.registry} refused access to {what}{self._who()}: {_error_text(response)}")
        if response.status_code == 403:
            raise RegistryAuthError(f"registry {self.registry} denied access to {what}{self._who()}: {_error_text(response)}")
        if response.status_code == 404:
            raise ImageNotFoundError(f"{what} not found in registry {self.registry}: {_error_text(response)}")
        raise RegistryError(f"registry {self.registry} failed on {what}: {_error_text(response)}")

    # --- the distribution API ----------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        what = f"{repository}{'@' if reference.startswith('sha256:') else ':'}{reference}"
        response = self._check(
            self.request(
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
        response = self._check(
            self.request("GET", f"/v2/{repository}/blobs/{digest}", pull(repository), follow_redirects=True), f"blob {digest} of {repository}", (200,)
        )
        if len(response.content) > SMALL_BLOB_MAX or sha256_digest(response.content) != digest:
            raise RegistryError(f"registry {self.registry} returned a blob that does not match {digest}")
        return response.content

    @contextmanager
    def open_blob(self, repository: str, digest: str) -> Iterator[Iterator[bytes]]:
        """Stream a blob's bytes (for copies between registries)."""
        url = urljoin(self.base, f"/v2/{repository}/blobs/{digest}")
        auth = self._authorization(pull(repository))
        if auth is None:  # learn the challenge with a cheap request first
            self.has_blob(repository, digest)
            auth = self._authorization(pull(repository))
        with self._http.stream("GET", url, headers={"Authorization": auth} if auth else {}, follow_redirects=True) as response:
            self._check(response, f"blob {digest} of {repository}", (200,))
            yield response.iter_bytes(8 * 2**20)

    def has_blob(self, repository: str, digest: str) -> bool:
        response = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", pull(repository), follow_redirects=True)
        if response.status_code == 404:
            return False
        self._check(response, f"blob {digest} of {repository}", (200,))
        return True

    def mount_blob(self, repository: str, digest: str, source_repository: str) -> bool:
        """Cross-repository mount; False when the registry started an upload instead."""
        response = self.request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            push(repository) | pull(source_repository),
            params={"mount": digest, "from": source_repository},
        )
        if response.status_code == 201:
            return True
        self._check(response, f"a blob mount into {repository}", (202,))
        self._cancel(response.headers.get("Location"), repository)
        return False

    def start_upload(self, repository: str) -> str:
        response = self._check(self.request("POST", f"/v2/{repository}/blobs/uploads/", push(repository)), f"an upload to {repository}", (202,))
        return urljoin(self.base, response.headers["Location"])

    def finish_upload(self, repository: str, location: str, digest: str, content: bytes = b"", *, retry: bool = True) -> None:
        url = location + ("&" if "?" in location else "?") + f"digest={digest}"
        response = self.request("PUT", url, push(repository), content=content, retry=retry, headers={"Content-Type": "application/octet-stream"})
        self._check(response, f"blob {digest} of {repository}", (201, 204))

    def _cancel(self, location: str | None, repository: str) -> None:
        if location:
            try:
                self.request("DELETE", location, push(repository), retry=False)
            except RegistryError:
                pass  # the registry expires abandoned uploads

    def put_blob(self, repository: str, data: bytes) -> str:
        """Upload a small blob in one request, unless the registry has it."""
        digest = sha256_digest(data)
        if not self.has_blob(repository, digest):
            self.finish_upload(repository, self.start_upload(repository), digest, data)
        return digest

    def put_manifest(self, repository: str, reference: str, manifest: Manifest) -> None:
        response = self.request(
            "PUT", f"/v2/{repository}/manifests/{reference}", push(repository), content=manifest.data, headers={"Content-Type": manifest.media_type}
        )
        self._check(response, f"manifest {repository}:{reference}", (201, 200, 202))
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
            response = self._client.request(
                "PATCH",
                self._location,
                push(self._repository),
                retry=False,
                content=self._body(),
                headers={"Content-Type": "application/octet-stream"},
            )
            if response.status_code == 401:
                self._client._tokens.clear()
                raise RegistryUnavailableError(f"registry {self._client.registry}: the token expired during the upload")
            self._client._check(response, f"an upload to {self._repository}", (202, 204))
            self._location = urljoin(self._client.base, response.headers.get("Location") or self._location)
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
