"""The egress policy: where the service connects on a user's behalf (webhooks, and the files a
training's inputs name, which the service fetches itself so that its trainers fetch only from it);
and the one bounded download (:func:`fetch`), which the build step's ``--weights URL`` uses too.

URL → its host → every address DNS gives for it → refused when any is loopback, private,
link-local (cloud metadata: 169.254.169.254), shared, multicast, reserved or unspecified —
unless the operator's allow-list (``egress_allow``: host names, addresses or networks) names it
→ connect, and check again at every redirect. At creation the API checks what it can without
DNS (literal addresses and local names), so a refused URL is a 422 before anything is stored.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from builder.tls import tls_context
from dreambuild.errors import InputError

LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "metadata.google.internal")
MAX_REDIRECTS = 5


class EgressRefused(InputError):
    """A URL points where the egress policy does not let the service connect."""


class FetchUnavailable(InputError):
    """The download failed on the way (connection, timeout): trying again may help."""


@dataclass(frozen=True)
class EgressPolicy:
    """Host names and networks the operator allows despite the default refusals."""

    allow: tuple[str, ...] = ()
    _networks: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        networks = []
        for item in self.allow:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                pass  # a host name
        object.__setattr__(self, "_networks", tuple(networks))

    def _allowed_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in {a.lower().rstrip(".") for a in self.allow}

    def _refused(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if any(ip in network for network in self._networks):
            return False
        return not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified

    def check_static(self, url: str, what: str) -> None:
        """What can be judged without DNS: a literal address (in any notation) or a local name in ``url``."""
        host = (urlsplit(url).hostname or "").lower().rstrip(".")
        if self._allowed_host(host):
            return
        literal = literal_address(host)
        if literal is None:
            if host in LOCAL_NAMES or host.endswith((".localhost", ".internal")):
                raise EgressRefused(_refusal(what, url, host))
            return
        if self._refused(str(literal)):
            raise EgressRefused(_refusal(what, url, host if host == str(literal) else f"{host} ({literal})"))

    def check(self, url: str, what: str) -> list[str]:
        """``url``'s host, resolved: every address it has must be allowed. Returns them, for
        :func:`pinned` (none for a host the allow-list names, which is connected to as it is)."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().rstrip(".")
        if self._allowed_host(host):
            return []
        self.check_static(url, what)
        try:
            infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise EgressRefused(f"{what}: cannot resolve {host} ({exc.args[-1] if exc.args else exc})") from None
        for info in infos:
            if self._refused(info[4][0]):
                raise EgressRefused(_refusal(what, url, f"{host} ({info[4][0]})"))
        # IPv4 first: the connection is pinned to the first, and hosts without an IPv6 route are common.
        return [info[4][0] for info in sorted(infos, key=lambda info: info[0] != socket.AF_INET)]


def literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` is, when it is written as one, read as the resolver reads it: IPv6
    (an IPv4-mapped one too, judged by its IPv4 address), dotted IPv4, and the forms ``inet_aton``
    also takes, which ``ipaddress`` does not: integer (2130706433), hex (0x7f000001), octal
    (0177.0.0.1) and short (127.1). None for a name."""
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, UnicodeError, ValueError):
        return None


def pinned(url: str, addresses: list[str]) -> tuple[str, dict[str, str], dict]:
    """The request for ``url`` sent to the address that was checked, not to whatever the name
    resolves to a moment later (DNS rebinding): the URL with that address, the ``Host`` header and
    the TLS server name (certificates are still verified for the name)."""
    parsed = httpx.URL(url)
    try:
        ipaddress.ip_address(parsed.host)
        return url, {}, {}
    except ValueError:
        pass
    if not addresses:
        return url, {}, {}
    address = addresses[0].split("%")[0]
    return str(parsed.copy_with(host=address)), {"Host": parsed.netloc.decode("ascii")}, {"sni_hostname": parsed.host}


def _refusal(what: str, url: str, where: str) -> str:
    return (
        f"{what} {url!r} points to {where}, a loopback, private, link-local or otherwise non-public address, "
        "which this service does not connect to (the operator can allow it with egress_allow)"
    )


def fetch(url: str, dest: Path, *, policy: EgressPolicy | None, what: str, max_bytes: int, timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` under the policy (checked again at every redirect; None: an
    operator's own URL, not checked) and a limit on the bytes actually read; raise
    :class:`InputError` naming what went wrong (:class:`FetchUnavailable` when it may be transient)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with httpx.Client(follow_redirects=False, timeout=httpx.Timeout(timeout, read=300), verify=tls_context()) as client:
            for _ in range(MAX_REDIRECTS + 1):
                target, headers, extensions = pinned(url, policy.check(url, what)) if policy is not None else (url, {}, {})
                with client.stream("GET", target, headers=headers, extensions=extensions) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    if response.status_code >= 400:
                        raise InputError(f"{what}: downloading {url} failed with HTTP {response.status_code}")
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > max_bytes:
                        raise InputError(f"{what}: {url} is larger than the limit of {max_bytes} bytes ({declared} bytes)")
                    written = 0
                    with open(tmp, "wb") as out:
                        for chunk in response.iter_bytes(2**20):
                            written += len(chunk)
                            if written > max_bytes:
                                raise InputError(f"{what}: {url} is larger than the limit of {max_bytes} bytes")
                            out.write(chunk)
                    tmp.replace(dest)
                    return dest
            raise InputError(f"{what}: {url} redirects more than {MAX_REDIRECTS} times")
    except httpx.HTTPError as exc:
        raise FetchUnavailable(f"{what}: cannot download {url} ({type(exc).__name__})") from None
    finally:
        tmp.unlink(missing_ok=True)
