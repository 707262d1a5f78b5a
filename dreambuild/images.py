"""Decoding user images (training photos, img2img inputs, masks, control images)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from dreambuild.errors import ImageDataError


def load_rgb(path: Path, name: str) -> Image.Image:
    """Open one image, apply its EXIF orientation and convert it to RGB.

    Transparent images are composited on white, as photos of objects usually are.
    Raises :class:`ImageDataError` naming the file when it cannot be decoded.
    """
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDataError(f"image {name!r} cannot be read: {exc}") from None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
