"""A layer: files (the weights: ``src/weights/...``) as a deterministic tar stream, compressed, hashed and
handed to a sink chunk by chunk while it is produced (no second copy of the weights on disk).

Deterministic: entries sorted by path, mtime 0, uid/gid 0 with empty owner names, modes 0755
(directories) / 0644 (files), PAX headers; so the same weights give the same layer digest, and
a registry that already has the blob is not sent it again. The tar is written directly (headers
from :class:`tarfile.TarInfo`, file data in large reads) rather than through
``tarfile.TarFile``, whose stream mode copies data in 10 KiB records.
"""

from __future__ import annotations

import hashlib
import tarfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable

from dreambuild.errors import InputError

CHUNK = 8 * 2**20
DEFAULT_LEVELS = {"none": 0, "gzip": 1, "zstd": 3}
MEDIA_TYPES = {
    "oci": {
        "none": "application/vnd.oci.image.layer.v1.tar",
        "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
        "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    },
    "docker": {
        "none": "application/vnd.docker.image.rootfs.diff.tar",
        "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    },
}


@dataclass(frozen=True)
class LayerEntry:
    """One file or directory of a layer, ``path`` relative to the layer's prefix."""

    path: str
    is_dir: bool
    size: int = 0
    open: Callable[[], BinaryIO] | None = None


@dataclass(frozen=True)
class Compression:
    """A layer compression: ``none``, ``gzip[:LEVEL]`` or ``zstd[:LEVEL]``."""

    algorithm: str = "none"
    level: int = 0

    @classmethod
    def parse(cls, text: str) -> "Compression":
        algorithm, _, level = text.strip().lower().partition(":")
        if algorithm not in DEFAULT_LEVELS:
            raise InputError(f"unknown layer compression {text!r}: use none, gzip[:1-9] or zstd[:1-19]")
        if algorithm == "none":
            return cls()
        try:
            value = int(level) if level else DEFAULT_LEVELS[algorithm]
        except ValueError:
            raise InputError(f"layer compression {text!r}: the level must be a number") from None
        if not (1 <= value <= (9 if algorithm == "gzip" else 19)):
            raise InputError(f"layer compression {text!r}: level out of range")
        return cls(algorithm, value)

    def __str__(self) -> str:
        return self.algorithm if self.algorithm == "none" else f"{self.algorithm}:{self.level}"

    def compressor(self):
        """An object with ``compress(bytes)`` and ``flush()``, or None for no compression."""
        if self.algorithm == "gzip":
            # wbits 31: a gzip container whose header carries no name and mtime 0.
            return zlib.compressobj(self.level, zlib.DEFLATED, 31)
        if self.algorithm == "zstd":
            import zstandard

            # Single-threaded: zstd's multi-threaded frames differ from single-threaded ones,
            # and the digest must not depend on the machine's core count.
            return zstandard.ZstdCompressor(level=self.level, write_content_size=False).compressobj()
        return None


@dataclass(frozen=True)
class Layer:
    digest: str  # sha256 of the blob as stored (compressed)
    diff_id: str  # sha256 of the uncompressed tar (the image config's rootfs.diff_ids)
    size: int  # bytes of the blob
    compression: str  # "none", "gzip" or "zstd"

    def media_type(self, family: str) -> str:
        try:
            return MEDIA_TYPES[family][self.compression]
        except KeyError:
            raise InputError(f"{self.compression} layers cannot go into a {family} image; use gzip or none") from None


class _Pipe:
    """Hashes the tar, compresses it, hashes the blob and hands it on in chunks of >= CHUNK."""

    def __init__(self, sink: Callable[[bytes], None], compression: Compression) -> None:
        self._sink = sink
        self._compressor = compression.compressor()
        self._tar_hash = hashlib.sha256()
        # Uncompressed, the blob is the tar: one hash serves both digests.
        self._blob_hash = hashlib.sha256() if self._compressor else self._tar_hash
        self._buffer = bytearray()
        self.size = 0
        self.tar_size = 0

    def write(self, data: bytes) -> None:
        self._tar_hash.update(data)
        self.tar_size += len(data)
        self._emit(self._compressor.compress(data) if self._compressor else data)

    def _emit(self, data: bytes, final: bool = False) -> None:
        if not self._buffer and len(data) >= CHUNK:
            self._pass_on(bytes(data))  # large reads go through without another copy
            return
        self._buffer += data
        if self._buffer and (final or len(self._buffer) >= CHUNK):
            chunk = bytes(self._buffer)
            self._buffer.clear()
            self._pass_on(chunk)

    def _pass_on(self, chunk: bytes) -> None:
        if self._compressor:
            self._blob_hash.update(chunk)
        self.size += len(chunk)
        self._sink(chunk)

    def close(self) -> tuple[str, str]:
        self._emit(self._compressor.flush() if self._compressor else b"", final=True)
        return "sha256:" + self._blob_hash.hexdigest(), "sha256:" + self._tar_hash.hexdigest()


def _header(name: str, *, directory: bool, size: int = 0) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def write_layer(
    entries: Iterable[LayerEntry],
    sink: Callable[[bytes], None],
    *,
    compression: Compression = Compression(),
    prefix: str = "src/weights",
    on_bytes: Callable[[int], None] | None = None,
) -> Layer:
    """Stream ``entries`` as a layer placing them under ``/prefix`` into ``sink``; return its digests.

    ``on_bytes`` is told how many bytes of file data were read, for progress.
    """
    pipe = _Pipe(sink, compression)
    parts = prefix.strip("/").split("/")
    for depth in range(1, len(parts) + 1):
        pipe.write(_header("/".join(parts[:depth]), directory=True))
    for entry in entries:
        name = "/".join([*parts, entry.path])
        if entry.is_dir:
            pipe.write(_header(name, directory=True))
            continue
        pipe.write(_header(name, directory=False, size=entry.size))
        remaining = entry.size
        with entry.open() as handle:
            while remaining:
                data = handle.read(min(CHUNK, remaining))
                if not data:
                    raise InputError(f"weights file {entry.path} is shorter than its recorded size (changed while read?)")
                remaining -= len(data)
                pipe.write(data)
                if on_bytes:
                    on_bytes(len(data))
            if handle.read(1):
                raise InputError(f"weights file {entry.path} is longer than its recorded size (changed while read?)")
        if entry.size % tarfile.BLOCKSIZE:
            pipe.write(bytes(tarfile.BLOCKSIZE - entry.size % tarfile.BLOCKSIZE))
    pipe.write(bytes(2 * tarfile.BLOCKSIZE))  # end-of-archive marker
    digest, diff_id = pipe.close()
    return Layer(digest=digest, diff_id=diff_id, size=pipe.size, compression=compression.algorithm)
