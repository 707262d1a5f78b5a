"""An image's ``/src`` (and ``/opt/dreambuild``) on local disk, without Docker, for running it
in a local Cog server (``dreambuild predict``).

Each layer is pulled once (from a registry or an OCI layout), verified against its digest and
diff_id while it streams, and its ``src/`` entries extracted into a content-addressed cache
(``$DREAMBUILD_HOME/cache/layers/<diff_id>``); an image's ``/src`` is then composed from its
layers by hard links (``cache/images/<manifest digest>/src``), honouring OCI whiteouts. So the
weights of a model are extracted once, and its next run, or the next model on the same template,
reuses them.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from builder.oci.manifest import Manifest
from builder.oci.resolve import resolve_image
from builder.oci.stores import ImageStore
from builder.settings import BuilderSettings
from dreambuild.errors import RegistryError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
COMPLETE = ".dreambuild-complete"
# What a model needs to run: its code and weights, and the weights its template baked.
PREFIXES = (("src",), ("opt", "dreambuild"))
# templates.inference.locations' defaults under /opt/dreambuild, by the variable overriding each.
BAKED_DEFAULTS = {"DREAMBUILD_CONTROLNET": "controlnet", "DREAMBUILD_ANNOTATORS": "annotators",
                  "DREAMBUILD_SAFETY_CHECKER": "safety-checker"}


class _LayerReader(io.RawIOBase):
    """Reads a layer blob from chunks, hashing it (digest) and its decompressed tar (diff_id)."""

    def __init__(self, chunks, media_type: str) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""
        self.blob_hash, self.tar_hash = hashlib.sha256(), hashlib.sha256()
        if media_type.endswith(("gzip", "+gzip")):
            self._decompressor = zlib.decompressobj(wbits=47)
        elif media_type.endswith("+zstd"):
            import zstandard

            self._decompressor = zstandard.ZstdDecompressor().decompressobj()
        else:
            self._decompressor = None

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buffer:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return 0
            self.blob_hash.update(chunk)
            data = self._decompressor.decompress(chunk) if self._decompressor else chunk
            self.tar_hash.update(data)
            self._buffer = data
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size

    def drain(self) -> None:
        """Hash what the tar reader left unread (padding after the end-of-archive marker)."""
        while self.readinto(bytearray(2**20)):
            pass


def _safe_parts(name: str) -> tuple[str, ...] | None:
    parts = tuple(p for p in PurePosixPath(name.lstrip("./")).parts if p not in ("", "."))
    return None if not parts or ".." in parts or name.startswith("/") else parts


def _wanted(parts: tuple[str, ...]) -> bool:
    return any(parts[: len(prefix)] == prefix for prefix in PREFIXES)


def _extract_layer(reader: _LayerReader, dest: Path) -> None:
    """Extract the entries under PREFIXES of a tar stream into ``dest``."""
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            parts = _safe_parts(member.name)
            if not parts or not _wanted(parts):
                continue
            target = dest.joinpath(*parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 8 * 2**20)
                os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
            elif member.issym():
                link = PurePosixPath(member.linkname)
                resolved = PurePosixPath(*parts[:-1]) / link if not link.is_absolute() else PurePosixPath(str(link).lstrip("/"))
                if ".." in PurePosixPath(os.path.normpath(str(resolved))).parts:
                    continue  # points outside the image's root: never followed
                target.parent.mkdir(parents=True, exist_ok=True)
                target.unlink(missing_ok=True)
                os.symlink(member.linkname, target)
            elif member.islnk():
                source = _safe_parts(member.linkname)
                if source and _wanted(source) and dest.joinpath(*source).is_file():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.link(dest.joinpath(*source), target)
            # devices and fifos have no place in /src: skipped
    reader.drain()


def ensure_layer(store: ImageStore, descriptor: dict, diff_id: str, cache: Path) -> Path:
    """The layer's entries under PREFIXES, extracted once into the cache (verified)."""
    target = cache / "layers" / diff_id.removeprefix("sha256:")
    if (target / COMPLETE).exists():
        return target
    tmp = cache / "layers" / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        with store.open_blob(descriptor["digest"]) as chunks:
            reader = _LayerReader(chunks, descriptor.get("mediaType", ""))
            _extract_layer(reader, tmp)
        if "sha256:" + reader.blob_hash.hexdigest() != descriptor["digest"]:
            raise RegistryError(f"layer {descriptor['digest']} from {store} does not match its digest")
        if "sha256:" + reader.tar_hash.hexdigest() != diff_id:
            raise RegistryError(f"layer {descriptor['digest']} from {store} does not match its diff_id {diff_id}")
        (tmp / COMPLETE).touch()
        try:
            os.rename(tmp, target)
        except OSError:  # another process extracted it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
        return target
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _merge(layer: Path, merged: Path) -> None:
    """Apply one extracted layer onto ``merged`` by hard links, honouring whiteouts."""
    for root, dirs, files in os.walk(layer):
        rel = Path(root).relative_to(layer)
        out = merged / rel
        if OPAQUE in files and out.is_dir():
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        out.mkdir(parents=True, exist_ok=True)
        for name in dirs:
            if (out / name).is_symlink() or (out / name).is_file():
                (out / name).unlink()
        for name in files:
            if name == COMPLETE or name == OPAQUE:
                continue
            if name.startswith(WHITEOUT):
                victim = out / name[len(WHITEOUT):]
                if victim.is_dir() and not victim.is_symlink():
                    shutil.rmtree(victim)
                elif victim.exists() or victim.is_symlink():
                    victim.unlink()
                continue
            source, dest = Path(root) / name, out / name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            elif dest.exists() or dest.is_symlink():
                dest.unlink()
            if source.is_symlink():
                os.symlink(os.readlink(source), dest)
            else:
                os.link(source, dest)


@dataclass(frozen=True)
class UnpackedImage:
    reference: str  # pinned
    manifest: Manifest
    config: dict
    root: Path  # holds the image's src/ and opt/dreambuild/

    @property
    def src(self) -> Path:
        return self.root / "src"

    def env(self) -> dict[str, str]:
        """The image's ``Env``, with its paths under /src and /opt/dreambuild mapped to ``root``,
        and the template's baked weights (its defaults under /opt/dreambuild) pointed at too."""
        mapped = {}
        for key, value in image_env(self.config).items():
            for prefix in ("/src", "/opt/dreambuild"):
                if value == prefix or value.startswith(prefix + "/"):
                    value = str(self.root) + value
            mapped[key] = value
        mapped.pop("PATH", None)  # the image's PATH names the image's Python, not this machine's
        baked = self.root / "opt" / "dreambuild"
        for variable, folder in BAKED_DEFAULTS.items():
            if variable not in mapped and (baked / folder).is_dir():
                mapped[variable] = str(baked / folder)
        return mapped


def unpack_src(image: str, settings: BuilderSettings | None = None) -> UnpackedImage:
    """Pull ``image`` (registry or ``oci:`` reference) and return its ``/src`` on local disk."""
    settings = settings or BuilderSettings.from_env()
    # A bare sha256 version is looked up where templates are (predict --weights tries templates).
    image_ref = resolve_image(image, settings, search=settings.template_repositories)
    cache = settings.cache
    merged_root = cache / "images" / image_ref.manifest.digest.removeprefix("sha256:")
    if not (merged_root / COMPLETE).exists():
        diff_ids = image_ref.config.get("rootfs", {}).get("diff_ids", [])
        layers = image_ref.manifest.json.get("layers", [])
        if len(diff_ids) != len(layers):
            raise RegistryError(f"{image_ref.reference}: the config lists {len(diff_ids)} layers, the manifest {len(layers)}")
        extracted = [ensure_layer(image_ref.store, layer, diff_id, cache) for layer, diff_id in zip(layers, diff_ids)]
        tmp = cache / "images" / f".tmp-{uuid.uuid4().hex}"
        try:
            (tmp / "root" / "src").mkdir(parents=True)
            for layer in extracted:
                _merge(layer, tmp / "root")
            (tmp / COMPLETE).touch()
            shutil.rmtree(merged_root, ignore_errors=True)
            os.rename(tmp, merged_root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return UnpackedImage(reference=image_ref.reference, manifest=image_ref.manifest, config=image_ref.config, root=merged_root / "root")


def image_env(config: dict) -> dict[str, str]:
    """The image's ``Env`` as a dict."""
    return dict(item.split("=", 1) for item in (config.get("config") or {}).get("Env") or [] if "=" in item)

