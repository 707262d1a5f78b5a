"""One training job, from raw inputs to ``output.zip``.

inputs -> work directory -> photos (instance, class) -> base pipeline -> class images ->
training -> ``save_pretrained`` (or the LoRA adapters) + ``args.json`` + samples -> ``output.zip``.
Everything is written inside one work directory per job; only the archive survives the job,
and the previous job's directory is removed when the next one starts.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dreambuild.archives import ArchiveLimits, extract_zip
from dreambuild.errors import ImageDataError, InputError, ModelLayoutError
from dreambuild.layout import baked_pipeline_digest, check_diffusers_layout, family, locate_pipeline_root, native_size, t5_sequence_length
from trainer.archive import write_weights_zip
from trainer.args import TrainingArgs
from trainer.checkpoints import Checkpoints, checkpoints_root, training_key
from trainer.class_images import generate_class_images
from trainer.device import plan_device
from trainer.flux import check_flux_args, train_flux_lora
from trainer.images import IMAGE_SUFFIXES, PHOTO_LIMITS, find_images, load_all, read_captions
from trainer.likeness import EvalPrompts, Evaluation, Scorer, eval_models_dir
from trainer.loop import train_dreambooth

log = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "/src/base-model"
CHECKPOINT_LIMITS = ArchiveLimits(max_files=500, max_total_bytes=24 * 2**30)

_previous_workdir: Path | None = None


@dataclass
class JobResult:
    archive: Path
    training_seconds: float
    total_seconds: float
    steps: int
    final_loss: float
    instance_images: int
    class_images: int
    generated_class_images: int


def base_model_dir() -> Path:
    """The default base pipeline: ``$DREAMBUILD_BASE_MODEL`` or the path the trainer image bakes."""
    return Path(os.environ.get("DREAMBUILD_BASE_MODEL", DEFAULT_BASE_MODEL))


def _catalog(variable: str, defaults: dict[str, Path]) -> dict[str, Path]:
    """``name=path,name=path`` from ``variable``, else the defaults that exist."""
    value = os.environ.get(variable, "").strip()
    if value:
        pairs = [item.split("=", 1) for item in value.split(",") if "=" in item]
        return {name.strip(): Path(path.strip()) for name, path in pairs}
    return {name: path for name, path in defaults.items() if path.is_dir()}


# The bases besides the default one, by name; each baked beside it as ``<default>-<name>`` (the
# trainer image's /src/base-model-sdxl, a checkout's ./base-model-flux-dev: where
# ``python -m trainer.fetch_base_model --dest`` writes them). builder/settings.py keeps a copy.
NAMED_BASES = ("sdxl", "flux-dev", "flux-schnell")


def base_models() -> dict[str, Path]:
    """The bases baked in the trainer image, by name (Tiyaro's ``model``): ``$DREAMBUILD_BASE_MODELS``,
    else ``sd15`` (the default base) and each of ``NAMED_BASES`` found beside it."""
    default = base_model_dir()
    return _catalog("DREAMBUILD_BASE_MODELS", {"sd15": default, **{name: default.with_name(f"{default.name}-{name}") for name in NAMED_BASES}})


def vaes() -> dict[str, Path]:
    """Alternative VAEs baked in the trainer image, by name: ``$DREAMBUILD_VAES``, else
    ``sdxl-fp16-fix`` (``/src/vae-sdxl-fp16-fix``, madebyollin's fp16-safe SDXL VAE) where baked."""
    return _catalog("DREAMBUILD_VAES", {"sdxl-fp16-fix": Path("/src/vae-sdxl-fp16-fix")})


def new_workdir() -> Path:
    """A fresh work directory; the previous job's is removed (its archive was delivered)."""
    global _previous_workdir
    if _previous_workdir is not None:
        shutil.rmtree(_previous_workdir, ignore_errors=True)
    root = os.environ.get("DREAMBUILD_WORKDIR")
    if root:
        Path(root).mkdir(parents=True, exist_ok=True)
    _previous_workdir = Path(tempfile.mkdtemp(prefix="dreambuild-train-", dir=root))
    return _previous_workdir


def subject_photos(instance_data: Path | None, input_images: Path | None) -> Path:
    """The subject's photos: ``instance_data``, or ``input_images`` (Replicate's FLUX trainer's
    name for it); exactly one."""
    if instance_data is not None and input_images is not None:
        raise InputError("input_images and instance_data are the same input (the subject's photos) under two names; give one")
    if instance_data is None and input_images is None:
        raise InputError("instance_data is required: a zip of the subject's photos (input_images, Replicate's FLUX trainer's name, works too)")
    return Path(instance_data if instance_data is not None else input_images)


def run_job(
    inputs: dict[str, Any],
    instance_data: Path | None = None,
    class_data: Path | None = None,
    ckpt_base: Path | None = None,
    input_images: Path | None = None,
) -> JobResult:
    """Validate, train and package. Raises a :class:`~dreambuild.errors.DreambuildError` on bad input."""
    started = time.monotonic()
    args = TrainingArgs.from_inputs(inputs)
    instance_data = subject_photos(instance_data, input_images)
    checkpoints = None
    if args.checkpointing_steps:
        files = {"instance_data": Path(instance_data), "class_data": class_data and Path(class_data), "ckpt_base": ckpt_base and Path(ckpt_base)}
        key = training_key(inputs, files, str(base_models().get(args.base_model or "", base_model_dir())))
        checkpoints = Checkpoints(checkpoints_root() / key, args.checkpointing_steps)
    if args.seed is None:
        args.seed = random.randrange(2**31)
        log.info("seed: %d (random)", args.seed)
    work = new_workdir()
    try:
        result = _run(args, work, Path(instance_data), class_data and Path(class_data), ckpt_base and Path(ckpt_base), checkpoints)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # the checkpoints stay: a re-run resumes from them
        raise
    if checkpoints:
        checkpoints.clear()
    for child in work.iterdir():
        if child != result.archive:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    result.total_seconds = time.monotonic() - started
    return result


def _run(  # noqa: C901
    args: TrainingArgs, work: Path, instance_data: Path, class_data: Path | None, ckpt_base: Path | None, checkpoints: Checkpoints | None = None
) -> JobResult:
    base = _resolve_base(work, ckpt_base, args.base_model)
    kind = family(base)
    args.resolve_for(kind)
    if kind == "flux":
        check_flux_args(args)
        if args.mixed_precision == "fp16":  # the trainer's default; FLUX's T5 and transformer overflow in fp16
            log.info("FLUX base: mixed_precision fp16 is taken as bf16 (FLUX.1 overflows in fp16; Black Forest Labs and diffusers train it in bf16).")
            args.mixed_precision = "bf16"
    elif args.quantize_base != "no":
        raise InputError(f"quantize_base quantises a FLUX base's transformer; this {kind.upper()} base trains unquantised (set quantize_base to no)")
    vae = None
    if args.vae is not None:
        if args.vae not in vaes():
            raise InputError(f"vae {args.vae!r} is not baked in this trainer; known: {', '.join(sorted(vaes())) or 'none'}")
        vae = vaes()[args.vae]
        log.info("VAE: %s (%s).", args.vae, vae)
    if args.resolution is None:
        args.resolution = native_size(base)
        log.info("resolution: %d (the base's native size)", args.resolution)
    extract_zip(instance_data, work / "instance_data", label="instance_data", limits=PHOTO_LIMITS)
    photos = find_images(work / "instance_data")
    if photos.skipped:
        log.info("instance_data: skipped %d non-image file(s): %s", len(photos.skipped), ", ".join(photos.skipped[:10]))
    if not photos.instance:
        raise ImageDataError("instance_data contains no images (looked for " + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
    class_files = list(photos.klass)
    if class_data is not None:
        extract_zip(class_data, work / "class_data", label="class_data", limits=PHOTO_LIMITS)
        supplied = find_images(work / "class_data", all_class=True)
        if not supplied.klass:
            raise ImageDataError("class_data contains no images")
        class_files += supplied.klass
    instance_images = load_all(photos.instance, args.resolution)
    captions = read_captions(photos.instance, args.caption_prefix)
    if args.token_string:  # before anything slow: each photo's prompt must name the subject
        for (_, name), caption in zip(photos.instance, captions):
            args.check_token(caption or args.instance_prompt, f"the caption of {name}" if caption else "instance_prompt")
    if not args.with_prior_preservation:
        if args.class_prompt is None:
            log.info("No class_prompt: training without prior preservation (class_prompt turns DreamBooth's prior-preservation loss on).")
        if class_files:
            log.info("with_prior_preservation is off: ignoring %d supplied class image(s).", len(class_files))
        class_files = []
    class_images = load_all(class_files, args.resolution)
    log.info("Loaded %d instance image(s) and %d supplied class image(s).", len(instance_images), len(class_images))
    plan = plan_device(args.mixed_precision, args.use_8bit_adam)
    generated = 0
    if args.with_prior_preservation:
        missing = args.num_class_images - len(class_images)
        if missing > 0:
            log.info("Prior preservation: generating %d class image(s) for %r.", missing, args.class_prompt)
            class_images += generate_class_images(
                base, args.class_prompt, missing, args.sample_batch_size, work / "generated_class", plan, args.seed, args.resolution
            )
            generated = missing
        if not class_images:
            raise ImageDataError("with_prior_preservation needs class images: set num_class_images > 0 or supply class_data")

    if any(captions):
        log.info(
            "Captions: %d of %d instance image(s) have one (a .txt beside the image); the others use instance_prompt.",
            sum(1 for c in captions if c),
            len(captions),
        )
    samples = work / "samples"
    flux_size = {"height": args.resolution, "width": args.resolution, "max_sequence_length": t5_sequence_length(base)} if kind == "flux" else {}
    likeness = _likeness(args, instance_images, plan, flux_size) if args.measure_likeness else None
    train = train_flux_lora if kind == "flux" else train_dreambooth
    extra = {"likeness": likeness} if kind == "flux" else {"vae_dir": vae, "likeness": likeness}
    result = train(
        args,
        base,
        instance_images,
        class_images,
        plan,
        captions=captions,
        checkpoints=checkpoints,
        samples=samples,
        **extra,
    )
    weights = work / "weights"
    saved_dtype = torch.float16 if plan.mixed_precision != "no" else torch.float32  # templates run fp16 on GPUs
    if kind == "flux":
        saved_dtype = plan.weight_dtype  # bf16 under mixed precision: FLUX runs in bf16
    recorded = {**args.to_json(), "base_model": "ckpt_base" if ckpt_base else (args.base_model or str(base))}
    if result.lora is not None:
        save_lora(weights, result.lora, result.lora_metadata or {}, saved_dtype, args, kind)
        # A LoRA runs only on the base it was trained on: templates compare this digest with theirs.
        recorded["base_digest"] = baked_pipeline_digest(base)
    else:
        result.pipeline.to(dtype=saved_dtype)
        result.pipeline.save_pretrained(weights, safe_serialization=True)
    (weights / "args.json").write_text(json.dumps(recorded, indent=2))
    if likeness is not None:
        (weights / "metrics.json").write_text(json.dumps({"likeness": likeness.report()}, indent=2))
    if samples.is_dir():  # validation samples taken during training
        shutil.move(samples, weights / "samples")
    if args.save_sample_prompt:
        _save_samples(result.pipeline, args, plan, weights / "samples", **flux_size)
    archive = write_weights_zip(weights, work / "output.zip")
    log.info("Wrote %s (%.1f MB) after %d steps in %.1fs.", archive.name, archive.stat().st_size / 1e6, result.steps, result.seconds)
    return JobResult(
        archive=archive,
        training_seconds=result.seconds,
        total_seconds=0.0,
        steps=result.steps,
        final_loss=result.final_loss,
        instance_images=len(instance_images),
        class_images=len(class_images) if args.with_prior_preservation else 0,
        generated_class_images=generated,
    )


def _likeness(args: TrainingArgs, photos: list, plan, extra: dict) -> Evaluation:
    """The likeness evaluations of this training (models loaded, the photos embedded once);
    a missing model fails the training before its first step. ``extra``: more of the pipeline's
    arguments (FLUX: the size and T5 prompt length)."""
    scorer = Scorer.load(eval_models_dir(), plan.device)
    scorer.set_real(photos)
    prompts = EvalPrompts.build(args.instance_prompt, args.class_prompt)
    seed = args.seed if args.seed is not None else 0
    return Evaluation(
        scorer, prompts, seed=seed, steps=args.save_infer_steps, guidance=args.save_guidance_scale, keep_best=args.keep_best, extra=extra
    )


def save_lora(weights: Path, lora: dict, metadata: dict, dtype: torch.dtype, args: TrainingArgs, kind: str = "sd") -> None:
    """The adapters as diffusers writes LoRAs (``pytorch_lora_weights.safetensors``, loadable by
    ``load_lora_weights``, alpha in its metadata) and a kohya/A1111 copy (``lora_kohya.safetensors``)
    for other tools. FLUX's kohya copy names the transformer's modules as diffusers does
    (``lora_transformer_…``, which diffusers' and ComfyUI's loaders read), not by Black Forest
    Labs' fused-qkv names: the adapters were trained on separate q, k and v."""
    from diffusers import FluxPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from safetensors.torch import save_file

    cast = {name: {k: v.to(dtype).contiguous() for k, v in state.items()} for name, state in lora.items()}
    # SD and SDXL in diffusers' own keys (lora.down/lora.up); FLUX in peft's (lora_A/lora_B), as
    # diffusers' FLUX scripts, ai-toolkit and ComfyUI write them.
    keys = (lambda state: state) if kind == "flux" else convert_state_dict_to_diffusers
    layers = {f"{name}_lora_layers": keys(state) for name, state in cast.items()}
    layers.update({f"{name}_lora_adapter_metadata": meta for name, meta in metadata.items()})
    if not any(name.endswith("_2") for name in cast):
        layers.setdefault("text_encoder_lora_layers", None)
    pipeline = {"flux": FluxPipeline, "sdxl": StableDiffusionXLPipeline}.get(kind, StableDiffusionPipeline)
    pipeline.save_lora_weights(weights, **layers, safe_serialization=True)
    prefix = {"transformer": "lora_transformer"}  # the converter knows unet and the text encoders by name
    kohya = convert_state_dict_to_kohya({f"{prefix.get(name, name)}.{k}": v for name, state in cast.items() for k, v in state.items()})
    alpha = float(args.lora_alpha or args.lora_rank)  # diffusers writes alpha = rank; keep the trained one
    kohya = {k: torch.tensor(alpha) if k.endswith(".alpha") else v for k, v in kohya.items()}
    save_file(kohya, weights / "lora_kohya.safetensors")


def _resolve_base(work: Path, ckpt_base: Path | None, name: str | None = None) -> Path:
    if ckpt_base is not None:
        extract_zip(ckpt_base, work / "ckpt_base", label="ckpt_base", limits=CHECKPOINT_LIMITS)
        base = locate_pipeline_root(work / "ckpt_base")
        check_diffusers_layout(base, "ckpt_base")
        log.info("Starting from ckpt_base.")
        return base
    if name is not None:
        known = base_models()
        if name not in known:
            raise InputError(f"base_model {name!r} is not baked in this trainer; known: {', '.join(sorted(known)) or 'none'}")
        base = known[name]
        check_diffusers_layout(base, f"base model {name} ({base})")
        log.info("Starting from base model %s (%s).", name, base)
        return base
    base = base_model_dir()
    if not base.is_dir():
        raise ModelLayoutError(
            f"base model not found at {base}: bake it into the image (python -m trainer.fetch_base_model) "
            "or set DREAMBUILD_BASE_MODEL, or pass ckpt_base"
        )
    check_diffusers_layout(base, f"base model {base}")
    log.info("Starting from base model %s.", base)
    return base


def _save_samples(pipeline, args: TrainingArgs, plan, out: Path, **extra) -> None:
    out.mkdir(exist_ok=True)
    pipeline.to(plan.device)
    if plan.inference_dtype != torch.float32 and getattr(pipeline, "unet", None) is not None:  # FLUX stays in bf16
        pipeline.to(dtype=plan.inference_dtype)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(args.seed if args.seed is not None else 0)
    # Under training's autocast, as validation samples are: the trained models' forwards still carry
    # accelerate's mixed-precision wrapper, whose fp32 outputs would reach a half-precision VAE.
    autocast = torch.autocast(plan.device.type, dtype=plan.weight_dtype, enabled=plan.mixed_precision != "no")
    with torch.inference_mode(), autocast:
        images = pipeline(
            args.save_sample_prompt,
            negative_prompt=args.save_sample_negative_prompt,
            num_images_per_prompt=args.n_save_sample,
            guidance_scale=args.save_guidance_scale,
            num_inference_steps=args.save_infer_steps,
            generator=generator,
            **extra,
        ).images
    for i, image in enumerate(images):
        image.save(out / f"sample-{i}.png")
    log.info("Saved %d sample image(s) for %r.", len(images), args.save_sample_prompt)
