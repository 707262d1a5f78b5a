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
import json
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

SCHEMA_LABEL = "run.cog.openapi_schema"  # written by `cog build`; a version built on a template inherits it
BASE_LABEL = "io.dreambuild.base.digest"  # the base a template bakes (`dreambuild templates add`): LoRAs of it build on it

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
COMPLETE = ".dreambuild-complete"
# What a model needs to run: its code and weights, and the weights its template baked.
PREFIXES = (("src",), ("opt", "dreambuild"))
# templates.inference.locations' defaults under /opt/dreambuild, by the variable overriding each.
BAKED_DEFAULTS = {
    "DREAMBUILD_CONTROLNET": "controlnet",
    "DREAMBUILD_ANNOTATORS": "annotators",
    "DREAMBUILD_SAFETY_CHECKER": "safety-checker",
    "DREAMBUILD_BASE": "base",
}


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


def _inside(root: Path, path: Path | str) -> bool:
    """Whether ``path``, with every link on its way followed, stays under ``root``."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base + os.sep)


def _link_target(link: str, parts: tuple[str, ...]) -> str:
    """A symlink's target as a relative link: an absolute one means the image's root, which here
    is the extraction root, not this machine's."""
    if not link.startswith("/"):
        return link
    return os.path.relpath("/" + link.lstrip("/"), "/" + "/".join(parts[:-1]))


def _place(root: Path, target: Path) -> bool:
    """Make ``target``'s folder, if it and the way to it stay under ``root`` (tarfile's
    ``data_filter`` rule: no writing through a link that leads out, even one of an earlier entry)."""
    if not _inside(root, target.parent):
        return False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file, or a link to nothing, is in the way
        return False
    if target.is_symlink():  # replaced, never written through
        target.unlink()
    return _inside(root, target.parent)


def _extract_layer(reader: _LayerReader, dest: Path) -> None:
    """Extract the entries under PREFIXES of a tar stream into ``dest``; an entry that would
    land, or a link that would point, outside ``dest`` is left out."""
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            parts = _safe_parts(member.name)
            if not parts or not _wanted(parts):
                continue
            target = dest.joinpath(*parts)
            if member.isdir():
                if _place(dest, target) and not target.is_symlink():
                    target.mkdir(exist_ok=True)
            elif member.isfile():
                if not _place(dest, target) or target.is_dir():
                    continue
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 8 * 2**20)
                os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
            elif member.issym():
                link = _link_target(member.linkname, parts)
                if link and _place(dest, target) and not target.is_dir() and _inside(dest, target.parent / link):
                    os.symlink(link, target)
            elif member.islnk():
                source_parts = _safe_parts(member.linkname)
                source = dest.joinpath(*source_parts) if source_parts else None
                if (
                    source is not None
                    and _wanted(source_parts)
                    and source.is_file()
                    and not source.is_symlink()
                    and _inside(dest, source)
                    and _place(dest, target)
                    and not target.exists()
                ):
                    os.link(source, target)
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


def _merge(layer: Path, merged: Path) -> None:  # noqa: C901
    """Apply one extracted layer onto ``merged`` by hard links, honouring whiteouts."""
    for root, dirs, files in os.walk(layer):
        rel = Path(root).relative_to(layer)
        out = merged / rel
        if not _inside(merged, out) or (out.is_symlink() and not out.is_dir()) or out.is_file():
            dirs[:] = []  # a lower layer's link leads this folder out of the image or to nothing: left out
            continue
        if OPAQUE in files and out.is_dir():
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        out.mkdir(parents=True, exist_ok=True)
        for name in list(dirs):
            if (Path(root) / name).is_symlink():  # a link to a folder is placed like a file, not walked
                dirs.remove(name)
                files.append(name)
            elif (out / name).is_symlink() or (out / name).is_file():
                (out / name).unlink()
        for name in files:
            if name == COMPLETE or name == OPAQUE:
                continue
            if name.startswith(WHITEOUT):
                victim = out / name[len(WHITEOUT) :]
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
                if _inside(merged, dest.parent / os.readlink(source)):  # links of two layers combined may lead out
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

    def labelled_schema(self) -> dict | None:
        """The Cog schema ``cog build`` wrote into the image's ``run.cog.openapi_schema`` label, if
        it is there and JSON: the model's server needs no schema generated from /src then."""
        label = ((self.config.get("config") or {}).get("Labels") or {}).get(SCHEMA_LABEL)
        try:
            schema = json.loads(label) if label else None
        except ValueError:
            return None
        return schema if isinstance(schema, dict) and schema else None


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
