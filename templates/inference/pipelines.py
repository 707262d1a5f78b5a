"""The fine-tuned pipeline (SD 1.x/2.x, SDXL or FLUX.1), loaded once, and every mode's pipeline
built from it with ``from_pipe`` (the same UNet or transformer, VAE and text encoders; no second
copy in memory)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dreambuild.layout import family, native_size, t5_sequence_length
from templates.inference.loras import fuse_adapters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Device:
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def detect(cls) -> "Device":
        """fp16 on CUDA (SDPA attention is diffusers' default on torch 2), fp32 on the CPU."""
        if torch.cuda.is_available():
            return cls(torch.device("cuda"), torch.float16)
        return cls(torch.device("cpu"), torch.float32)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return f"{name}, {str(self.dtype).removeprefix('torch.')}"


@dataclass
class Pipelines:
    base: Any  # StableDiffusionPipeline, StableDiffusionXLPipeline or FluxPipeline (txt2img)
    by_mode: dict[str, Any] = field(default_factory=dict)
    xl: bool = False  # SDXL: two text encoders, pooled embeddings
    raw_denoiser: Any = None  # compiled: the UNet (FLUX: transformer) module under the compiled one (LoRAs are fused into it in place)
    native_size: int = 512  # the size it was trained at (dreambuild.layout.native_size)
    flux: bool = False  # FLUX.1: plain prompts (T5 up to t5_tokens), one flow-matching sampler, guidance embedding
    t5_tokens: int = 0  # FLUX's T5 prompt length (512 dev, 256 schnell)

    @property
    def guidance_embeds(self) -> bool:
        """FLUX.1-dev (guidance-distilled) rather than schnell."""
        return self.flux and bool(self.base.transformer.config.guidance_embeds)


def load_pipelines(weights: Path, controlnet: Any | None, device: Device, *, compile_unet: bool = False, fuse: Path | None = None) -> Pipelines:
    """Load ``weights`` (a diffusers Stable Diffusion 1.x/2.x or SDXL pipeline) and derive the
    mode pipelines.

    ``controlnet`` is a loaded ``ControlNetModel`` for the ControlNet templates (SD 1.x), else None.
    ``fuse`` is a LoRA training's output for ``weights`` (its base), fused in before anything else.
    """
    import diffusers

    kind = family(weights)
    if kind == "flux":
        return _load_flux(weights, device, fuse, compile_unet)
    xl = kind == "sdxl"
    if xl:
        # SDXL has no safety_checker component; its VAE runs in fp32 where fp16 overflows
        # (the pipeline's own force_upcast), so nothing else to set here.
        base = diffusers.StableDiffusionXLPipeline.from_pretrained(weights, dtype=device.dtype, local_files_only=True).to(device.device)
    else:
        # Templates bring their own safety checker: never load one that came with the weights.
        base = diffusers.StableDiffusionPipeline.from_pretrained(
            weights, dtype=device.dtype, safety_checker=None, requires_safety_checker=False, local_files_only=True
        ).to(device.device)
    if fuse is not None:  # before compiling: the compiled UNet must be the fused one
        fuse_lora(base, fuse)
    raw_denoiser = _compile(base, "unet", device) if compile_unet else None
    # from_pipe casts the new pipeline, shared components included, to fp32 unless told the
    # dtype (diffusers 0.42): always pass it, or every mode silently runs in fp32.
    same = {"dtype": device.dtype}
    prefix = "StableDiffusionXL" if xl else "StableDiffusion"
    by_mode = {
        "txt2img": base,
        "img2img": getattr(diffusers, f"{prefix}Img2ImgPipeline").from_pipe(base, **same),
        "inpaint": getattr(diffusers, f"{prefix}InpaintPipeline").from_pipe(base, **same),
    }
    if controlnet is not None:
        if xl:
            raise ValueError("SDXL weights need an SDXL ControlNet; this template's is for SD 1.x")
        controlnet.to(device.device)
        same["controlnet"] = controlnet
        by_mode["controlnet-txt2img"] = diffusers.StableDiffusionControlNetPipeline.from_pipe(base, **same)
        by_mode["controlnet-img2img"] = diffusers.StableDiffusionControlNetImg2ImgPipeline.from_pipe(base, **same)
        by_mode["controlnet-inpaint"] = diffusers.StableDiffusionControlNetInpaintPipeline.from_pipe(base, **same)
    for pipe in by_mode.values():
        pipe.set_progress_bar_config(disable=True)
    return Pipelines(base=base, by_mode=by_mode, xl=xl, raw_denoiser=raw_denoiser, native_size=native_size(weights))


def _compile(base, name: str, device: Device) -> Any:
    """Compile the pipeline's denoiser (``unet`` or FLUX's ``transformer``) in place; return the
    module under it, into which LoRAs are fused."""
    # Inference only: loading a LoRA later (peft) would turn requires_grad off, and the
    # compiled graph, guarded on it, would recompile.
    for component in base.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False)
    raw = getattr(base, name)
    if name == "unet" and device.device.type == "cuda":  # channels_last pays off with inductor's kernels; eager SDPA runs measured slower with it
        raw.to(memory_format=torch.channels_last)
    setattr(base, name, torch.compile(raw, mode=os.environ.get("DREAMBUILD_TORCH_COMPILE_MODE", "default"), fullgraph=True))
    return raw


def _load_flux(weights: Path, device: Device, fuse: Path | None, compile_transformer: bool) -> Pipelines:
    """FLUX.1 and its img2img and inpainting pipelines, in bf16 on CUDA (fp16 overflows in its
    T5 and transformer; Black Forest Labs run it in bf16), fp32 on the CPU."""
    import diffusers

    dtype = torch.bfloat16 if device.device.type == "cuda" else device.dtype
    base = diffusers.FluxPipeline.from_pretrained(weights, dtype=dtype, local_files_only=True).to(device.device)
    if fuse is not None:  # before compiling, as for SD
        fuse_lora(base, fuse)
    raw_denoiser = _compile(base, "transformer", device) if compile_transformer else None
    by_mode = {
        "txt2img": base,
        "img2img": diffusers.FluxImg2ImgPipeline.from_pipe(base, dtype=dtype),
        "inpaint": diffusers.FluxInpaintPipeline.from_pipe(base, dtype=dtype),
    }
    for pipe in by_mode.values():
        pipe.set_progress_bar_config(disable=True)
    return Pipelines(
        base=base, by_mode=by_mode, raw_denoiser=raw_denoiser, native_size=native_size(weights), flux=True, t5_tokens=t5_sequence_length(weights)
    )


def fuse_lora(pipe, path: Path) -> None:
    """Apply a fine-tune's LoRA to the base once, for good: fused into the weights and the adapter
    layers removed, so predictions run at the base's speed (LoRA on top still works)."""
    started = time.perf_counter()
    pipe.load_lora_weights(path.parent, weight_name=path.name, adapter_name="fine-tune", use_safetensors=True)
    fuse_adapters(pipe, ["fine-tune"])
    log.info("Fused the fine-tune's LoRA %s into the base in %.2f s.", path, time.perf_counter() - started)


def load_controlnet(path: Path, device: Device) -> Any:
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(path, dtype=device.dtype, local_files_only=True)


def compile_requested() -> bool:
    """``DREAMBUILD_TORCH_COMPILE=1`` compiles the UNet (meant for CUDA; the CPU compiles too,
    slowly): faster steps, but the first prediction pays the compilation (``DREAMBUILD_TORCH_COMPILE_MODE``: inductor's default mode
    compiles in about a minute; max-autotune took over five on an H200)."""
    return os.environ.get("DREAMBUILD_TORCH_COMPILE", "") in ("1", "true", "yes")
