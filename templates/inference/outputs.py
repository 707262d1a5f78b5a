"""Output files: PNG (lossless, the default), JPEG or WebP at ``output_quality``."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from dreambuild.errors import InputError

FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


def write_images(images: list[Image.Image], directory: Path, output_format: str = "png", quality: int = 80) -> list[Path]:
    """Write ``images`` as ``out-<i>.<format>`` into ``directory``; quality is for jpg and webp."""
    if output_format not in FORMATS:
        raise InputError(f"unknown output_format {output_format!r}; choose one of: {', '.join(FORMATS)}")
    if not 0 <= quality <= 100:
        raise InputError(f"output_quality={quality} is outside 0..100")
    paths = []
    for index, image in enumerate(images):
        path = directory / f"out-{index}.{output_format}"
        if output_format == "png":
            # zlib level 1: a tenth of the default level's encoding time (about 0.1 s of a 512px
            # image, measured against a 1.4 s generation) for files about 15% larger.
            image.save(path, format="PNG", compress_level=1)
        else:
            image.convert("RGB").save(path, format=FORMATS[output_format], quality=quality)
        paths.append(path)
    return paths
