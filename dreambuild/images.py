"""Decoding user images (training photos, img2img inputs, masks, control images)."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from dreambuild.errors import ImageDataError

# Far below PIL's own bomb limit (179 MP): a 48 MP phone photo passes, an 88 MP bomb that
# decodes to 260 MB from a few kilobytes does not. Stable Diffusion trains at 1024 px at most.
MAX_PIXELS = 50_000_000


def load_rgb(path: Path, name: str, *, shorter_side: int | None = None) -> Image.Image:
    """Open one image, apply its EXIF orientation and convert it to RGB.

    The size in the file's header is checked before anything is decoded (:data:`MAX_PIXELS`).
    With ``shorter_side``, a larger image is scaled down right after decoding so that its shorter
    side is that many pixels (as torchvision's ``Resize(shorter_side)`` would), so that a set of
    photos is never held at full size. Transparent images are composited on white, as photos of
    objects usually are. Raises :class:`ImageDataError` naming the file when it cannot be used.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # judged right below, by MAX_PIXELS
            opened = Image.open(path)
        with opened:
            width, height = opened.size
            if width * height > MAX_PIXELS:
                raise ImageDataError(
                    f"image {name!r} is {width}x{height} pixels ({width * height / 1e6:.0f} MP), "
                    f"over the limit of {MAX_PIXELS / 1e6:.0f} MP: scale it down first"
                )
            image = ImageOps.exif_transpose(opened)
            image.load()
    except Image.DecompressionBombError:  # PIL's own hard limit (179 MP), met while opening
        raise ImageDataError(f"image {name!r} is over the limit of {MAX_PIXELS / 1e6:.0f} MP: scale it down first") from None
    except UnidentifiedImageError:  # its message is the file's path on this machine: the user's name says it
        raise ImageDataError(f"image {name!r} cannot be read: not an image in a format this reads (PNG, JPEG, WebP, …)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDataError(f"image {name!r} cannot be read: {str(exc).replace(str(path), name)}") from None
    if shorter_side and min(image.size) > shorter_side:
        w, h = image.size
        size = (shorter_side, int(shorter_side * h / w)) if w <= h else (int(shorter_side * w / h), shorter_side)
        image = image.resize(size, Image.Resampling.BILINEAR)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
