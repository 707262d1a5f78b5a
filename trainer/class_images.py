"""Prior preservation: generate the class images the user did not supply."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import FluxPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image

from dreambuild.layout import family, t5_sequence_length
from trainer.device import DevicePlan
from trainer.progress import StepLogger

log = logging.getLogger(__name__)


def generate_class_images(
    base: Path, prompt: str, count: int, batch_size: int, out_dir: Path, plan: DevicePlan, seed: int | None, resolution: int | None = None
) -> list[Image.Image]:
    """Generate ``count`` images of ``prompt`` with the base pipeline, ``batch_size`` at a time.

    They are also written to ``out_dir`` so that a failed run can be inspected. SD and SDXL draw
    them at their native size; FLUX at ``resolution`` (the training's), with its T5 prompt length.
    """
    extra = {}
    kind = family(base)
    if kind == "flux":
        # FLUX.1 overflows in fp16: bf16 on a GPU.
        dtype = torch.bfloat16 if plan.device.type == "cuda" else plan.inference_dtype
        pipe = FluxPipeline.from_pretrained(base, dtype=dtype, local_files_only=True).to(plan.device)
        extra = {"max_sequence_length": t5_sequence_length(base)}
        if resolution:
            extra.update(height=resolution, width=resolution)
    elif kind == "sdxl":
        pipe = StableDiffusionXLPipeline.from_pretrained(base, dtype=plan.inference_dtype, local_files_only=True).to(plan.device)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(
            base, safety_checker=None, requires_safety_checker=False, dtype=plan.inference_dtype, local_files_only=True
        ).to(plan.device)
    pipe.set_progress_bar_config(disable=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device="cpu").manual_seed(seed if seed is not None else 0)
    batches = (count + batch_size - 1) // batch_size
    progress = StepLogger(batches, label="class images batch")
    images: list[Image.Image] = []
    for b in range(batches):
        n = min(batch_size, count - len(images))
        with torch.inference_mode():
            batch = pipe(prompt, num_images_per_prompt=n, generator=generator, **extra).images
        for image in batch:
            image.save(out_dir / f"class-{len(images):05d}.png")
            images.append(image)
        progress.update(b + 1, images=len(images))
    del pipe
    if plan.device.type == "cuda":
        torch.cuda.empty_cache()
    return images
