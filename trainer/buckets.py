"""Aspect-ratio buckets: photos keep their shape instead of being cropped square.

resolution -> bucket sizes (about resolution² pixels each, sides multiples of 16 or more) ->
each photo's bucket (the nearest aspect ratio) -> resized to cover it, cropped to it -> batches of
one bucket each (a batch is one tensor).

Kohya's sd-scripts and ai-toolkit train this way; a portrait photo cropped square loses the top
of the head or the feet, which the model then never learns.
"""

from __future__ import annotations

import math

import torch
from PIL import Image
from torchvision import transforms


def bucket_sizes(resolution: int) -> list[tuple[int, int]]:
    """(width, height) pairs of at most ``resolution``² pixels, sides from half to twice
    ``resolution`` in steps of 1/16 of it (64 px at 1024), at least 16 px (FLUX's VAE × packing)."""
    step = max(16, resolution // 16 // 16 * 16)
    area = resolution * resolution
    sizes = {(resolution // step * step,) * 2}
    for width in range(max(step, resolution // 2 // step * step), resolution * 2 + 1, step):
        height = min(resolution * 2, area // width // step * step)
        if height >= max(step, resolution // 2):
            sizes |= {(width, height), (height, width)}
    return sorted(sizes)


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (by log ratio: 2:1 and 1:2 are as far from 1:1)."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def fit(image: Image.Image, size: tuple[int, int], center: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """``image`` resized to cover ``size`` and cropped to it (centred, or where ``generator`` draws),
    as a tensor in [-1, 1]."""
    width, height = size
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.Resampling.BILINEAR)
    dx, dy = resized.width - width, resized.height - height
    if center:
        left, top = dx // 2, dy // 2
    else:
        left = int(torch.randint(0, dx + 1, (1,), generator=generator)) if dx else 0
        top = int(torch.randint(0, dy + 1, (1,), generator=generator)) if dy else 0
    crop = resized.crop((left, top, left + width, top + height))
    return transforms.functional.normalize(transforms.functional.to_tensor(crop), [0.5], [0.5])


class BucketedPhotos(torch.utils.data.Dataset):
    """Instance photos in their buckets, each paired (with prior preservation) with a class
    image cropped to the same bucket, so that the two stack into one batch."""

    def __init__(self, instance: list[Image.Image], klass: list[Image.Image], resolution: int, center_crop: bool) -> None:
        self.instance, self.klass, self.center = instance, klass, center_crop
        sizes = bucket_sizes(resolution)
        self.buckets = [nearest_bucket(image.size, sizes) for image in instance]

    def __len__(self) -> int:
        return max(len(self.instance), len(self.klass))

    def bucket(self, index: int) -> tuple[int, int]:
        return self.buckets[index % len(self.instance)]

    def __getitem__(self, index: int) -> dict:
        i = index % len(self.instance)
        size = self.buckets[i]
        item = {"instance": fit(self.instance[i], size, self.center), "instance_index": i}
        if self.klass:
            c = index % len(self.klass)
            item.update({"class": fit(self.klass[c], size, self.center), "class_index": c})
        return item


def bucket_batches(order: list[int], dataset: BucketedPhotos, batch_size: int) -> list[list[int]]:
    """The epoch's batches: items in ``order``, a batch filled from one bucket at a time (a bucket's
    batch is emitted when full; the partial ones at the end, in the order their buckets first came)."""
    pending: dict[tuple[int, int], list[int]] = {}
    batches: list[list[int]] = []
    for index in order:
        group = pending.setdefault(dataset.bucket(index), [])
        group.append(index)
        if len(group) == batch_size:
            batches.append(list(group))
            group.clear()
    batches += [group for group in pending.values() if group]
    return batches
