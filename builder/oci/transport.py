"""Transport to one registry host: TLS (plain HTTP for loopback and insecure registries, as
Docker does), retries with exponential backoff on connection failures, timeouts, 429 and 5xx,
and auth by the registry's ``WWW-Authenticate`` challenge: none, Basic, or Bearer tokens fetched
from the realm with exactly the scopes each request needs, using credentials from the Docker
config. A failed answer becomes one typed error with a one-line message (:meth:`Transport.check`).

The repository operations of the distribution API (:mod:`builder.oci.registry`) sit on top, as
go-containerregistry's ``remote`` sits on its ``transport``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urljoin

import httpx

from builder.oci.credentials import Credentials, lookup_credentials
from builder.tls import tls_context
from dreambuild.errors import ImageNotFoundError, RegistryAuthError, RegistryError, RegistryUnavailableError

log = logging.getLogger(__name__)

RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
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


def error_text(response: httpx.Response) -> str:
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


class Transport:
    """Authorized, retried requests to one registry host."""

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
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, read=max(timeout, 600)), verify=tls_context())
        self._challenge: tuple[str, dict[str, str]] | None = None
        self._tokens: dict[frozenset[str], str] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    # --- auth --------------------------------------------------------------------------------

    def authorization(self, scopes: frozenset[str]) -> str | None:
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
            raise RegistryAuthError(f"registry {self.registry} refused the credentials{self.who()}: {error_text(response)}")
        if response.status_code >= 400:
            raise RegistryAuthError(f"the token service of {self.registry} failed: {error_text(response)}")
        body = response.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryAuthError(f"the token service of {self.registry} returned no token")
        return token

    def who(self) -> str:
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
                last = f"{what} answered {error_text(response)}"
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
            auth = self.authorization(scopes)
            merged = {**(headers or {}), **({"Authorization": auth} if auth else {})}
            response = self._send(method, url, headers=merged, what=f"registry {self.registry}", retry=retry, **kwargs)
            if response.status_code != 401:
                return response
            learned = self._learn_challenge(response, scopes)
            # Requests run in parallel (a build's template layers): one sent before another
            # learned the challenge is answered 401 too, and is worth one try with what it learned.
            if not retry or not (learned or (auth is None and self.authorization(scopes) is not None)):
                return response
        return response

    def check(self, response: httpx.Response, what: str, ok: tuple[int, ...]) -> httpx.Response:
        if response.status_code in ok:
            return response
        if response.status_code == 401:
            raise RegistryAuthError(f"registry {self.registry} refused access to {what}{self.who()}: {error_text(response)}")
        if response.status_code == 403:
            raise RegistryAuthError(f"registry {self.registry} denied access to {what}{self.who()}: {error_text(response)}")
        if response.status_code == 404:
            raise ImageNotFoundError(f"{what} not found in registry {self.registry}: {error_text(response)}")
        raise RegistryError(f"registry {self.registry} failed on {what}: {error_text(response)}")

    def forget_tokens(self) -> None:
        """Drop every token (one expired): the next request fetches new ones."""
        with self._lock:
            self._tokens.clear()

    @contextmanager
    def stream(self, path_or_url: str, scopes: frozenset[str], what: str) -> Iterator[Iterator[bytes]]:
        """Stream a GET's body (a blob copied between registries), checked by :meth:`check`."""
        url = urljoin(self.base, path_or_url)
        if self.authorization(scopes) is None:  # learn the challenge with a cheap request first
            self.request("HEAD", url, scopes, follow_redirects=True)
        auth = self.authorization(scopes)
        with self._http.stream("GET", url, headers={"Authorization": auth} if auth else {}, follow_redirects=True) as response:
            self.check(response, what, (200,))
            yield response.iter_bytes(8 * 2**20)
