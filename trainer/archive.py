"""Writes ``output.zip``: the pipeline directory at the archive root, deterministic entries."""

from __future__ import annotations

import zipfile
from pathlib import Path

# Tensors do not compress; deflating gigabytes of them costs minutes for nothing.
_STORED_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".png", ".jpg", ".jpeg", ".webp")
_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_weights_zip(source: Path, archive: Path) -> Path:
    """Zip every file under ``source`` (sorted, fixed timestamps) into ``archive``."""
    with zipfile.ZipFile(archive, "w", allowZip64=True) as zf:
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            name = path.relative_to(source).as_posix()
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_STORED if name.endswith(_STORED_SUFFIXES) else zipfile.ZIP_DEFLATED
            with open(path, "rb") as src, zf.open(info, "w", force_zip64=path.stat().st_size >= zipfile.ZIP64_LIMIT) as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    return archive
