"""The weights layer: ``src/weights/...`` as a deterministic tar stream, compressed, hashed and
handed to a sink chunk by chunk while it is produced (no second copy of the weights on disk).

Deterministic: entries sorted, mtime 0, uid/gid 0 with empty owner names, modes 0755 (dirs and
executables) / 0644; so the same weights give the same layer digest, and a registry that
already has the blob is not sent it again.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dreambuild.errors import InputError

CHUNK = 8 * 2**20
COMPRESSIONS = ("none", "gzip")
MEDIA_TYPES = {
    "oci": {"none": "application/vnd.oci.image.layer.v1.tar", "gzip": "application/vnd.oci.image.layer.v1.tar+gzip"},
    "docker": {"none": "application/vnd.docker.image.rootfs.diff.tar", "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip"},
}


@dataclass(frozen=True)
class Layer:
    digest: str  # sha256 of the blob as stored (compressed)
    diff_id: str  # sha256 of the uncompressed tar (the image config's rootfs.diff_ids)
    size: int  # bytes of the blob
    compression: str

    def media_type(self, family: str) -> str:
        return MEDIA_TYPES[family][self.compression]


class _Pipe:
    """File-like object tarfile writes into: hashes the tar, compresses, hashes the blob and
    passes it on in chunks of about CHUNK bytes."""

    def __init__(self, sink: Callable[[bytes], None], compression: str, level: int) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"unknown compression {compression!r}")
        self._sink = sink
        # wbits 31: a gzip container whose header carries no name and mtime 0.
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 31) if compression == "gzip" else None
        self._tar_hash = hashlib.sha256()
        self._blob_hash = hashlib.sha256()
        self._buffer = bytearray()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._tar_hash.update(data)
        self._emit(self._compressor.compress(data) if self._compressor else bytes(data))
        return len(data)

    def _emit(self, data: bytes, final: bool = False) -> None:
        self._buffer += data
        if self._buffer and (final or len(self._buffer) >= CHUNK):
            chunk = bytes(self._buffer)
            self._buffer.clear()
            self._blob_hash.update(chunk)
            self.size += len(chunk)
            self._sink(chunk)

    def close(self) -> tuple[str, str]:
        self._emit(self._compressor.flush() if self._compressor else b"", final=True)
        return "sha256:" + self._blob_hash.hexdigest(), "sha256:" + self._tar_hash.hexdigest()


def _info(name: str, *, directory: bool, size: int = 0, executable: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory or executable else 0o644
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_layer(weights: Path, sink: Callable[[bytes], None], *, compression: str = "gzip", level: int = 1,
                prefix: str = "src/weights") -> Layer:
    """Stream ``weights`` as a layer placing it at ``/prefix`` into ``sink``; return its digests."""
    weights = Path(weights)
    if not weights.is_dir():
        raise InputError(f"weights directory {weights} does not exist")
    pipe = _Pipe(sink, compression, level)
    with tarfile.open(fileobj=pipe, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        parts = prefix.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            tar.addfile(_info("/".join(parts[:depth]), directory=True))
        for root, dirs, files in os.walk(weights):
            dirs.sort()
            rel_root = Path(root).relative_to(weights)
            for name in sorted(dirs + files):
                path = Path(root) / name
                arcname = "/".join([*parts, *rel_root.parts, name])
                mode = path.lstat().st_mode
                if stat.S_ISLNK(mode):
                    raise InputError(f"weights contain a symbolic link, which a layer must not carry: {path.relative_to(weights)}")
                if stat.S_ISDIR(mode):
                    tar.addfile(_info(arcname, directory=True))
                elif stat.S_ISREG(mode):
                    with open(path, "rb") as handle:
                        tar.addfile(_info(arcname, directory=False, size=path.stat().st_size,
                                          executable=bool(mode & stat.S_IXUSR)), handle)
                else:
                    raise InputError(f"weights contain a special file: {path.relative_to(weights)}")
    digest, diff_id = pipe.close()
    return Layer(digest=digest, diff_id=diff_id, size=pipe.size, compression=compression)
