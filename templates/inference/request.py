"""A generation request (the templates' Cog inputs) and the checks that need no model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dreambuild.errors import InputError

# Width x height above this is refused before any work: 1024x1024, or e.g. 768x1360.
MAX_PIXELS = int(os.environ.get("DREAMBUILD_MAX_PIXELS", str(1024 * 1024)))


@dataclass
class GenerationRequest:
    """Inputs shared by the templates, named as the public dream templates name them."""

    prompt: str | None = None
    negative_prompt: str | None = None
    prompt_syntax: str = "auto"
    image: Path | None = None
    mask: Path | None = None
    control_image: Path | None = None
    width: int | None = None
    height: int | None = None
    aspect_ratio: str = "1:1"  # FLUX: the size where width and height are both empty (resolve_size)
    num_outputs: int = 1
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    guidance: float | None = None  # FLUX's guidance embedding (dev); None: the template's default
    prompt_strength: float = 0.8
    scheduler: str = "DDIM"
    seed: int | None = None
    disable_safety_check: bool = False
    lora_weights: Path | None = None
    lora_scale: float = 1.0
    extra_lora: Path | None = None
    extra_lora_scale: float = 1.0
    output_format: str = "png"
    output_quality: int = 80
    # ControlNet templates
    control_preprocess: bool = True
    controlnet_conditioning_scale: float = 1.0
    return_control_image: bool = False
    # Canny
    low_threshold: int = 100
    high_threshold: int = 200
    # OpenPose
    include_hand: bool = False
    include_face: bool = False
    # M-LSD
    value_threshold: float = 0.1
    distance_threshold: float = 0.1
    # scribble
    scribble_from_photo: bool = False
    # Not an input: a LoRA version's weights folder (its adapters and args.json), handed over by
    # the worker in the Cog request's context when a template serves its base for many versions.
    version_weights: Path | None = None
    # Not an input either: the weights a server started ahead of its version loads (the context's too).
    weights: Path | None = None

    @property
    def control_options(self) -> dict:
        """The inputs a control preprocessor reads."""
        names = ("low_threshold", "high_threshold", "include_hand", "include_face", "value_threshold", "distance_threshold", "scribble_from_photo")
        return {name: getattr(self, name) for name in names}

    @property
    def mode(self) -> str:
        """txt2img, img2img or inpaint, prefixed with ``controlnet-`` when a control image is given."""
        if self.mask is not None and self.image is None:
            raise InputError("mask was given without image: inpainting needs the image to repaint")
        base = "txt2img" if self.image is None else ("inpaint" if self.mask is not None else "img2img")
        return f"controlnet-{base}" if self.control_image is not None else base


# Replicate's FLUX models' aspect ratios (width:height).
ASPECT_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")


def resolve_size(
    width: int | None, height: int | None, native: int, max_pixels: int = MAX_PIXELS, block: int = 8, aspect_ratio: str = "1:1"
) -> tuple[int, int]:
    """Output size: the model's native size where not given; multiples of ``block`` (8 for Stable
    Diffusion's VAE; 16 for FLUX, whose latents are packed 2x2) within the pixel limit. With both
    sides empty, ``aspect_ratio`` shapes the native pixel count (at most native²): each side
    rounded down to ``block``, so 16:9 at 1024 is 1360x768."""
    if width is None and height is None and aspect_ratio != "1:1":
        if aspect_ratio not in ASPECT_RATIOS:
            raise InputError(f"aspect_ratio {aspect_ratio!r} is not one of {', '.join(ASPECT_RATIOS)}")
        w, h = (int(side) for side in aspect_ratio.split(":"))
        width = int(native * (w / h) ** 0.5) // block * block
        height = int(native * (h / w) ** 0.5) // block * block
    width = native if width is None else width
    height = native if height is None else height
    why = "Stable Diffusion's VAE works in 8-pixel blocks" if block == 8 else "FLUX's VAE and latent packing work in 16-pixel blocks"
    for name, value in (("width", width), ("height", height)):
        if value < block or value % block:
            raise InputError(f"{name}={value} is not a positive multiple of {block} ({why})")
    if width * height > max_pixels:
        raise InputError(f"{width}x{height} is {width * height} pixels, over the limit of {max_pixels}; ask for a smaller size")
    return width, height


def denoising_steps(steps: int, strength: float) -> int:
    """Steps img2img/inpainting really run; at least one is needed."""
    effective = min(int(steps * strength), steps)
    if effective < 1:
        raise InputError(
            f"prompt_strength={strength} with num_inference_steps={steps} leaves no denoising step; raise prompt_strength or num_inference_steps"
        )
    return effective
