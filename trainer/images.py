"""Training photos: find them in extracted archives and load them as RGB images.

Layout rules (Tiyaro's and replicate/dreambooth's): images at any depth are used, flattened;
images under a top-level ``dataset_class/`` folder are class images; ``__MACOSX``, hidden
files and non-image files are skipped; a ``.txt`` beside an instance image is its caption.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from dreambuild.archives import ArchiveLimits
from dreambuild.errors import ImageDataError
from dreambuild.images import MAX_PIXELS, load_rgb

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
CLASS_FOLDER = "dataset_class"

# An archive of photos, bounded by what the trainer reads: one file at most an image at the pixel
# limit stored uncompressed (8-bit RGBA, plus headers); photos are compressed already (JPEG, PNG,
# WebP; BMP and TIFF deflate 2-5x), so an archive of them expands at most 50 times its size
# (beyond 64 MiB).
PHOTO_LIMITS = ArchiveLimits(max_files=2_000, max_total_bytes=2 * 2**30, max_entry_bytes=MAX_PIXELS * 4 + 2**20, max_ratio=50, ratio_floor=64 * 2**20)


@dataclass
class ImageSet:
    """Image files found in one archive, each with the name it had in the archive."""

    instance: list[tuple[Path, str]] = field(default_factory=list)
    klass: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def find_images(root: Path, *, all_class: bool = False) -> ImageSet:
    """Sort the files under ``root`` into instance and class images.

    With ``all_class`` (the ``class_data`` archive) every image is a class image.
    """
    found = ImageSet()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        parts = path.relative_to(root).parts
        name = "/".join(parts)
        if any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            if not (path.suffix.lower() == ".txt" and any(path.with_suffix(s).is_file() for s in IMAGE_SUFFIXES)):
                found.skipped.append(name)  # captions are read with their images, not skipped
            continue
        if all_class or (len(parts) > 1 and parts[0] == CLASS_FOLDER):
            found.klass.append((path, name))
        else:
            found.instance.append((path, name))
    return found


CAPTION_MAX_BYTES = 4096


def read_captions(files: list[tuple[Path, str]], prefix: str | None = None) -> list[str | None]:
    """Each image's caption: the text of a ``.txt`` beside it (``photo.jpg`` -> ``photo.txt``),
    after ``prefix``; None where there is none (the instance prompt applies)."""
    captions: list[str | None] = []
    for path, name in files:
        text_file = path.with_suffix(".txt")
        caption = None
        if text_file.is_file():
            raw = text_file.read_bytes()[: CAPTION_MAX_BYTES + 1]
            if len(raw) > CAPTION_MAX_BYTES:
                raise ImageDataError(f"caption of {name} ({text_file.name}) is over {CAPTION_MAX_BYTES} bytes")
            try:
                caption = " ".join(raw.decode("utf-8").split()) or None
            except UnicodeDecodeError:
                raise ImageDataError(f"caption of {name} ({text_file.name}) is not UTF-8 text") from None
        if caption and prefix:
            caption = f"{prefix.strip()} {caption}"
        captions.append(caption)
    return captions


def load_all(files: list[tuple[Path, str]], shorter_side: int | None = None) -> list[Image.Image]:
    """Load every image up front, so a bad file fails the run before training starts: one at a
    time, each scaled to ``shorter_side`` (the training resolution) as soon as it is decoded."""
    return [load_rgb(path, name, shorter_side=shorter_side) for path, name in files]
