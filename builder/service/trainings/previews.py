"""Images inside a training's zips, for the dashboard: the subject's photos (``instance_data``,
when it is an upload to this service) and the validation samples in ``output.zip``.

zip → its image members (by name, never extracted: nothing is written) → one member read,
at most :data:`PREVIEW_MAX_BYTES` of it as decompressed (a bomb stops there) → its bytes, served
with an image type chosen from the name's suffix (no SVG: an image here never runs a script).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from dreambuild.errors import InputError

MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
PREVIEW_MAX_BYTES = 16 * 2**20
PREVIEW_MAX_IMAGES = 200
CLASS_FOLDER = "dataset_class/"  # the trainer's class images inside instance_data: not the subject


def media_type(name: str) -> str | None:
    return MEDIA_TYPES.get(Path(name).suffix.lower())


def _images(archive: zipfile.ZipFile, under: str) -> list[str]:
    return [
        info.filename
        for info in archive.infolist()
        if not info.is_dir()
        and info.filename.startswith(under)
        and media_type(info.filename)
        and not info.filename.startswith(CLASS_FOLDER)
        and not Path(info.filename).name.startswith(".")
    ][:PREVIEW_MAX_IMAGES]


def _open(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path.name} is not a readable zip: {exc}") from None


def zip_images(path: Path, under: str = "") -> list[str]:
    """The image members of the zip at ``path`` below ``under``, in archive order."""
    with _open(path) as archive:
        return _images(archive, under)


def read_image(path: Path, name: str, under: str = "") -> bytes | None:
    """The bytes of image member ``name`` (one :func:`zip_images` lists), or None if it is not one."""
    with _open(path) as archive:
        if name not in _images(archive, under):
            return None
        with archive.open(name) as member:
            data = member.read(PREVIEW_MAX_BYTES + 1)
    if len(data) > PREVIEW_MAX_BYTES:
        raise InputError(f"{name} is over {PREVIEW_MAX_BYTES // 2**20} MiB: not shown")
    return data
