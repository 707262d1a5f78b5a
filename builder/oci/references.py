"""Image references: ``registry/repository[:tag][@sha256:…]`` and ``oci:PATH[:NAME][@sha256:…]``.

Registry references follow Docker's grammar: the first component is a registry when it holds a
``.`` or ``:`` or is ``localhost``; otherwise the image lives on Docker Hub (``docker.io``, with
``library/`` for one-component names). OCI layout references follow skopeo's ``oci:`` transport:
the path ends at the first ``:``; what follows is the ``org.opencontainers.image.ref.name``
annotation in the layout's ``index.json`` (here ``owner/name:tag``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from dreambuild.errors import ImageReferenceError

DOCKER_HUB = "docker.io"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
# Always used with fullmatch: `$` alone would accept a trailing newline.
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_MODEL = re.compile(rf"{_COMPONENT}/{_COMPONENT}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?")
MAX_NAME = 255  # the distribution spec's limit on a repository name (with its registry)


def normalize_digest(text: str) -> str | None:
    """``sha256:<hex>`` for a digest written with or without its algorithm, else None."""
    text = text.strip()
    if re.fullmatch(r"[a-f0-9]{64}", text):
        text = "sha256:" + text
    return text if _DIGEST.fullmatch(text) else None


def is_model_name(text: object) -> bool:
    """``owner/name``: two repository components of the registry's grammar (lowercase letters,
    digits, and ``.``, ``_``, ``__`` or ``-`` between them), no registry, tag or digest."""
    return isinstance(text, str) and len(text) <= MAX_NAME and _MODEL.fullmatch(text) is not None


@dataclass(frozen=True)
class RegistryRef:
    """An image in a registry."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        return self.registry + "/" + self.repository + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def pinned(self, digest: str) -> "RegistryRef":
        return replace(self, tag=None, digest=digest)


@dataclass(frozen=True)
class LayoutRef:
    """An image in an OCI image layout directory."""

    path: Path
    name: str | None = None  # the ref.name annotation, e.g. ``owner/model:latest``
    digest: str | None = None

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.name}" if self.name else "") + (f"@{self.digest}" if self.digest else "")

    @property
    def repository(self) -> str | None:
        """The image's name without its tag (``owner/model``), as a registry's repository."""
        return _without_tag(self.name) if self.name else None

    def pinned(self, digest: str) -> "LayoutRef":
        return replace(self, name=self.repository, digest=digest)


ImageRef = RegistryRef | LayoutRef


def _without_tag(name: str) -> str:
    repository, _, tag = name.rpartition(":")
    return repository if repository and "/" not in tag else name


def _split_digest(text: str, what: str) -> tuple[str, str | None]:
    if "@" not in text:
        return text, None
    rest, _, digest = text.rpartition("@")
    if not _DIGEST.fullmatch(digest):
        raise ImageReferenceError(f"{what} {text!r}: {digest!r} is not a sha256 digest (sha256: and 64 hex digits)")
    return rest, digest


def parse_registry_ref(text: str, *, what: str = "image reference", default_registry: str | None = None) -> RegistryRef:
    """Parse ``[registry/]repository[:tag][@digest]``.

    A name without a registry part goes to ``default_registry`` when given, else Docker Hub.
    """
    original = text
    text, digest = _split_digest(text.strip(), what)
    tag = None
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, _, tag = text.rpartition(":")
        if not _TAG.fullmatch(tag):
            raise ImageReferenceError(f"{what} {original!r}: {tag!r} is not a valid tag")
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, repository = first, rest
        if not _HOST.fullmatch(registry):
            raise ImageReferenceError(f"{what} {original!r}: {registry!r} is not a valid registry host")
    elif default_registry:
        registry, repository = default_registry, text
    else:
        registry, repository = DOCKER_HUB, text if sep else f"library/{text}"
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if not _REPOSITORY.fullmatch(repository) or len(repository) > MAX_NAME:
        raise ImageReferenceError(
            f"{what} {original!r}: repository {repository!r} must be lowercase letters, digits and separators (. _ -), in components joined by /"
        )
    return RegistryRef(registry=registry, repository=repository, tag=tag, digest=digest)


def parse_layout_ref(text: str, *, what: str = "image reference") -> LayoutRef:
    """Parse ``oci:PATH[:NAME][@digest]`` (the path ends at the first ``:``, as in skopeo)."""
    if not text.startswith("oci:"):
        raise ImageReferenceError(f"{what} {text!r} is not an OCI layout reference (oci:PATH[:NAME])")
    body, digest = _split_digest(text[4:], what)
    path, _, name = body.partition(":")
    if not path:
        raise ImageReferenceError(f"{what} {text!r} names no directory")
    if name:
        repository, _, tag = name.rpartition(":") if ":" in name else (name, "", "")
        if not _REPOSITORY.fullmatch(repository) or (tag and not _TAG.fullmatch(tag)):
            raise ImageReferenceError(
                f"{what} {text!r}: {name!r} is not a valid image name (owner/name[:tag], lowercase letters, digits and separators)"
            )
    return LayoutRef(path=Path(path).expanduser(), name=name or None, digest=digest)


def parse_image_ref(text: str, *, what: str = "image reference", default_registry: str | None = None) -> ImageRef:
    """A registry or an OCI layout reference."""
    if not isinstance(text, str) or not text.strip():
        raise ImageReferenceError(f"{what} is empty")
    if text.startswith("oci:"):
        return parse_layout_ref(text, what=what)
    return parse_registry_ref(text, what=what, default_registry=default_registry)


def names_registry(text: str) -> bool:
    """Whether a reference's first component is a registry host (``host.tld/``, ``host:port/``, ``localhost/``)."""
    first, sep, _ = text.strip().partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost" or first.startswith("["))
