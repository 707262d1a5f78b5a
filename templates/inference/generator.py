"""The templates' predictor core: ``setup()`` loads every component once; ``generate()``
turns one request into image files (request -> the version's and the user's LoRAs -> images ->
safety check -> files). A template serving its base runs many LoRA versions
(:mod:`templates.inference.versions`)."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from dreambuild.errors import InputError, NSFWContentError, TemplateWithoutWeightsError
from dreambuild.images import load_rgb
from dreambuild.layout import LORA_WEIGHTS, baked_pipeline_digest, check_diffusers_layout, family
from templates.inference.catalog import TEMPLATES
from templates.inference.control import ControlPreprocessor
from templates.inference.fused import FusedLoras
from templates.inference.locations import WeightLocations
from templates.inference.loras import LoraAdapters
from templates.inference.outputs import write_images
from templates.inference.pipelines import Device, Pipelines, compile_requested, load_controlnet, load_pipelines
from templates.inference.prompts import PromptEncoder
from templates.inference.request import GenerationRequest, denoising_steps, resolve_size
from templates.inference.safety import SafetyChecker
from templates.inference.schedulers import make_scheduler
from templates.inference.versions import VERSION_WEIGHTS, WEIGHTS, BaseVersions, serving_base, weights_later

__all__ = ["VERSION_WEIGHTS", "WEIGHTS", "ImageGenerator"]

log = logging.getLogger(__name__)


def template_message(weights: Path) -> str:
    if (weights / LORA_WEIGHTS).is_file():
        return (
            f"The weights in {weights.resolve()} are LoRA adapters ({LORA_WEIGHTS}), and this template has no base "
            "model baked in to apply them to (DREAMBUILD_BASE): build them on a template with a base, or pass the "
            "LoRA as lora_weights to a model built on its base."
        )
    return (
        f"This is a dreambuild template: it has no Stable Diffusion weights (no model_index.json in {weights.resolve()}). "
        "Build a model from it first: `dreambuild build --weights output.zip --template <this image> --model <name>` "
        "adds a diffusers pipeline at /src/weights."
    )


def lora_base_problem(loc: WeightLocations) -> str | None:
    """Why the LoRA output in ``loc.weights`` cannot run on this template's base, or None."""
    if not (loc.base / "model_index.json").is_file():
        return template_message(loc.weights)
    args = loc.weights / "args.json"
    recorded = json.loads(args.read_text()).get("base_digest") if args.is_file() else None
    if not recorded:
        return f"the LoRA in {loc.weights.resolve()} does not name its base (no base_digest in args.json): retrain it with this trainer"
    started = time.perf_counter()
    baked = baked_pipeline_digest(loc.base)
    log.info("Base %s: %s (digest in %.2f s).", loc.base, baked, time.perf_counter() - started)
    if recorded != baked:
        return (
            f"the LoRA in {loc.weights.resolve()} was trained on base {recorded}, and this template's base is {baked}: "
            "build it on a template with that base"
        )
    return None


class ImageGenerator:
    """One template's generation state; Cog calls :meth:`setup` once, then :meth:`generate`."""

    def __init__(self, template: str, locations: WeightLocations | None = None) -> None:
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}")
        self.template = template
        self.last_metrics: dict[str, float] = {}  # of the last request: Cog reports them with the prediction
        self.control_kind = TEMPLATES[template].preprocessor
        self.locations = locations or WeightLocations.from_env()
        self.pipes: Pipelines | None = None
        self.no_weights: str | None = None
        self.no_controlnet: str | None = None
        self.instance_prompt: str | None = None
        self.base_versions: BaseVersions | None = None  # serving the base: the LoRA versions it runs
        self.awaiting_weights = False  # started ahead (DREAMBUILD_WEIGHTS_LATER): its first prediction names them
        self._weights_seconds: float | None = None  # how long loading them took (the first prediction's metric)
        self._outputs: Path | None = None

    def setup(self) -> None:
        started = time.perf_counter()
        loc = self.locations
        self.device = Device.detect()
        self.safety = SafetyChecker.load(loc.safety_checker, self.device.device, self.device.dtype)
        if self.safety.problem:
            log.warning("%s: predictions fail unless disable_safety_check is true.", self.safety.problem)
        self.preprocessor = None
        if self.control_kind:
            self.preprocessor = ControlPreprocessor.load(self.control_kind, loc.annotators, self.device.device)
            if self.preprocessor.problem:
                log.warning("%s: predictions with a control_image fail.", self.preprocessor.problem)
        if weights_later():
            self.awaiting_weights = True
            log.info(
                "Started ahead in %.2f s, %s template: its weights come with the first prediction.", time.perf_counter() - started, self.template
            )
            return
        self._load_weights(started)

    def _load_weights(self, started: float) -> None:
        """The pipeline (a fine-tune, a LoRA output on the baked base, or the base alone), once."""
        loc = self.locations
        pipeline, lora_output = self._what_to_load(loc)
        if self.no_weights:
            log.warning(self.no_weights)
            return
        check_diffusers_layout(pipeline, f"weights in {pipeline}")
        kind, flux_template = family(pipeline), TEMPLATES[self.template].family == "flux"
        if (kind == "flux") != flux_template:
            runs = "FLUX.1 on the vanilla-flux templates" if flux_template else "Stable Diffusion and SDXL"
            self.no_weights = (
                f"the weights in {pipeline} are a {'FLUX.1' if kind == 'flux' else 'Stable Diffusion'} pipeline, "
                f"and the {self.template} template runs {runs}: build them on a template of their family"
            )
            log.warning(self.no_weights)
            return
        if self.control_kind and kind == "sdxl":
            self.no_weights = (
                f"the weights in {pipeline} are an SDXL pipeline, and the {self.template} template's ControlNet is "
                "for SD 1.x: build SDXL fine-tunes on the vanilla template"
            )
            log.warning(self.no_weights)
            return
        controlnet = None
        if self.control_kind:
            if (loc.controlnet / "config.json").is_file():
                controlnet = load_controlnet(loc.controlnet, self.device)
            else:
                self.no_controlnet = f"ControlNet weights not found at {loc.controlnet} (set DREAMBUILD_CONTROLNET)"
                log.warning("%s: predictions with a control_image fail.", self.no_controlnet)
        self.pipes = load_pipelines(pipeline, controlnet, self.device, compile_unet=compile_requested(), fuse=lora_output)
        self.prompts = None if self.pipes.flux else PromptEncoder(self.pipes.base)
        # Serving the base, versions' adapters stay loaded beside users' LoRAs: a larger cache.
        cached = int(os.environ.get("DREAMBUILD_CACHED_ADAPTERS", "8" if self.base_versions else "4"))
        if self.pipes.raw_denoiser is not None:  # compiled: LoRAs are fused in place, never recompiling
            self.loras: LoraAdapters | FusedLoras = FusedLoras(self.pipes.base, self.pipes.raw_denoiser, "transformer" if self.pipes.flux else "unet")
        else:
            self.loras = LoraAdapters(self.pipes.base, max_cached=cached)
        args = loc.weights / "args.json"
        if args.is_file() and self.base_versions is None:
            self.instance_prompt = json.loads(args.read_text()).get("instance_prompt")
        log.info(
            "Setup finished in %.2f s: %s template, weights %s, native size %dpx, on %s.",
            time.perf_counter() - started,
            self.template,
            loc.weights,
            self.pipes.native_size,
            self.device.describe(),
        )

    def _what_to_load(self, loc: WeightLocations) -> tuple[Path, Path | None]:
        """The pipeline to load and the LoRA output to fuse into it (None: nothing); sets
        ``no_weights`` when there is nothing this template can run."""
        if serving_base():  # the base alone: LoRA versions come with each prediction
            if (loc.base / "model_index.json").is_file():
                self.base_versions = BaseVersions(baked_pipeline_digest(loc.base))
            else:
                self.no_weights = f"DREAMBUILD_SERVE_BASE is set, and this template has no base baked at {loc.base}"
            return loc.base, None
        if not (loc.weights / "model_index.json").is_file() and (loc.weights / LORA_WEIGHTS).is_file():
            self.no_weights = lora_base_problem(loc)
            return loc.base, loc.weights / LORA_WEIGHTS
        if not (loc.weights / "model_index.json").is_file():
            self.no_weights = template_message(loc.weights)
        return loc.weights, None

    def bind(self, weights: Path | None) -> None:
        """A server started ahead loads the weights its first prediction names; any later one
        may only name the same."""
        if self.awaiting_weights:
            if weights is None:
                raise TemplateWithoutWeightsError("this model server was started ahead of its weights, and no prediction has named them yet")
            started = time.perf_counter()
            self.locations = replace(self.locations, weights=weights)
            self.awaiting_weights = False  # bound for good: a load that fails is this server's answer from now on
            try:
                self._load_weights(started)
            except Exception as exc:
                self.no_weights = f"the weights in {weights} could not be loaded: {type(exc).__name__}: {exc}"
                raise
            self._weights_seconds = round(time.perf_counter() - started, 4)
        elif weights is not None and weights.resolve() != self.locations.weights.resolve():
            raise InputError(f"this model server runs the weights in {self.locations.weights}, not those in {weights}")

    def generate(self, request: GenerationRequest) -> list[Path]:
        """Run one request; returns image paths (the control image first when asked for)."""
        self.bind(request.weights)
        if self.pipes is None:
            raise TemplateWithoutWeightsError(self.no_weights or "no weights loaded")
        mode = request.mode
        if request.control_image is not None:
            if self.preprocessor is None:
                raise InputError(f"control_image needs a ControlNet template; this is the {self.template} template")
            if self.no_controlnet:
                raise InputError(self.no_controlnet)
        version = None
        if request.version_weights is not None:
            if self.base_versions is None:
                raise InputError("a version's weights were given, and this server does not serve its base (DREAMBUILD_SERVE_BASE)")
            version = self.base_versions.resolve(request.version_weights)
        prompt = request.prompt if request.prompt is not None else (version.instance_prompt if version else self.instance_prompt)
        if not prompt:
            raise InputError("prompt is empty and the weights' args.json has no instance_prompt to default to")
        request = self._flux_defaults(request)
        width, height = resolve_size(
            request.width, request.height, self.pipes.native_size, block=16 if self.pipes.flux else 8, aspect_ratio=request.aspect_ratio
        )
        if request.image is not None:
            denoising_steps(request.num_inference_steps, request.prompt_strength)
        seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
        pipe = self.pipes.by_mode[mode]
        if not self.pipes.flux:  # FLUX keeps its one flow-matching sampler
            pipe.scheduler = make_scheduler(request.scheduler, self.pipes.base.scheduler.config, seed)
        kwargs, control = self._images(request, mode, (width, height))
        log.info("Using seed: %d (image i uses seed + i)", seed)
        loras = [
            (name, path, scale)
            for name, path, scale in (
                ("the version's LoRA", version.adapters if version else None, 1.0),
                ("lora_weights", request.lora_weights, request.lora_scale),
                ("extra_lora", request.extra_lora, request.extra_lora_scale),
            )
            if path is not None
        ]
        try:
            self.loras.activate(loras)  # before encoding: a LoRA may adapt the text encoder too
            images, seconds = self._run(pipe, request, prompt, seed, kwargs)
        finally:
            self.loras.deactivate()
        self._loading_metrics()
        log.info(
            "Generated %d image(s), %s %dx%d, %d steps of %s in %.2f s.",
            len(images),
            mode,
            width,
            height,
            request.num_inference_steps,
            "flow matching" if self.pipes.flux else request.scheduler,
            seconds,
        )
        if not request.disable_safety_check:
            images = self._drop_flagged(images)
        images = ([control] if control is not None and request.return_control_image else []) + images
        # The previous prediction's files have been sent by now; keep one set on disk at a time.
        if self._outputs is not None:
            shutil.rmtree(self._outputs, ignore_errors=True)
        self._outputs = Path(tempfile.mkdtemp(prefix="dreambuild-outputs-"))
        return write_images(images, self._outputs, request.output_format, request.output_quality)

    def _flux_defaults(self, request: GenerationRequest) -> GenerationRequest:
        """FLUX's steps and guidance where the request left them empty: dev 28 steps at guidance
        3.5 (Black Forest Labs' defaults), schnell 4 (it has no guidance embedding)."""
        if not self.pipes.flux:
            return request
        steps = request.num_inference_steps or (28 if self.pipes.guidance_embeds else 4)
        return replace(request, num_inference_steps=steps, guidance_scale=3.5 if request.guidance is None else request.guidance)

    def _loading_metrics(self) -> None:
        """What this prediction loaded besides generating: LoRAs, or a server started ahead's weights."""
        if self.loras.load_seconds:  # a version's or a user's LoRA, not loaded before
            self.last_metrics["adapter_load_time"] = round(self.loras.load_seconds, 4)
        if self._weights_seconds is not None:
            self.last_metrics["weights_load_time"], self._weights_seconds = self._weights_seconds, None

    def _run(self, pipe, request: GenerationRequest, prompt: str, seed: int, kwargs: dict) -> tuple[list[Image.Image], float]:
        if self.prompts is None:  # FLUX: T5 reads the prompt as it is
            embeds = {"prompt": prompt, "max_sequence_length": self.pipes.t5_tokens}
        else:
            embeds = self.prompts.pipeline_kwargs(prompt, request.negative_prompt, request.prompt_syntax)
        if str(self.device.device).startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        images = pipe(
            **embeds,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            num_images_per_prompt=request.num_outputs,
            generator=[torch.Generator("cpu").manual_seed(seed + i) for i in range(request.num_outputs)],
            output_type="pil",
            **kwargs,
        ).images
        seconds = time.perf_counter() - started
        self.last_metrics = {"inference_time": round(seconds, 4)}
        if str(self.device.device).startswith("cuda"):  # what the model server's GPU held at most for this request
            self.last_metrics["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated()
        return images, seconds

    def _images(self, request: GenerationRequest, mode: str, size: tuple[int, int]) -> tuple[dict, Image.Image | None]:
        """Pipeline keyword arguments carrying the mode's images, all at the output size, and
        the processed control image (None without ControlNet)."""
        width, height = size
        kwargs: dict = {}
        control = None
        init = load_rgb(request.image, "image").resize(size, Image.Resampling.LANCZOS) if request.image else None
        mask = load_rgb(request.mask, "mask").convert("L").resize(size, Image.Resampling.LANCZOS) if request.mask else None
        if request.control_image is not None:
            source = load_rgb(request.control_image, "control_image")
            if request.control_preprocess:
                control = self.preprocessor(source, size, request.control_options)
            else:  # the user's own depth map, skeleton or edges, used as they are
                control = source.resize(size, Image.Resampling.BILINEAR)
        base = mode.removeprefix("controlnet-")
        if base == "txt2img" or self.pipes.flux:  # FLUX's img2img too: it would draw its 1024 px default, not image's size
            kwargs.update(width=width, height=height)
        if base != "txt2img":
            kwargs.update(image=init, strength=request.prompt_strength)
        if base == "inpaint":
            kwargs.update(mask_image=mask, width=width, height=height)
        if mode == "controlnet-txt2img":
            kwargs["image"] = control
        elif mode.startswith("controlnet-"):
            kwargs["control_image"] = control
        if mode.startswith("controlnet-"):
            kwargs["controlnet_conditioning_scale"] = request.controlnet_conditioning_scale
        return kwargs, control

    def _drop_flagged(self, images: list[Image.Image]) -> list[Image.Image]:
        flags = self.safety.flags(images)
        kept = [image for image, flagged in zip(images, flags) if not flagged]
        if len(kept) < len(images):
            log.info("The safety checker flagged %d of %d image(s); they are left out.", len(images) - len(kept), len(images))
        if not kept:
            raise NSFWContentError(f"all {len(images)} generated image(s) were flagged as NSFW by the safety checker; try a different prompt or seed")
        return kept
