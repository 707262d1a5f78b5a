"""FLUX.1 LoRA DreamBooth: peft adapters on the rectified-flow transformer's attention (and
optionally CLIP's), the base frozen, photos in aspect-ratio buckets.

photos -> buckets -> VAE latents ((x - shift) * scale) -> noise at a sampled sigma
(x_t = (1 - σ) x + σ ε) -> packed 2x2 -> transformer (T5 states, CLIP pooled, dev's guidance)
-> unpacked -> loss against the velocity ε - x -> adapters.

The objective of diffusers' ``examples/dreambooth/train_dreambooth_lora_flux.py``: sigmas sampled
uniformly (its default weighting scheme "none"), guidance 3.5 fed to dev's guidance embedding,
LoRA on the attention of its default layers (every attention's projections, the text stream's
too). Memory: every prompt's T5 states are computed once and T5 is freed before the first step
(T5-XXL is 9 GB in bf16); validation samples load it again from disk. ``quantize_base`` holds the
frozen transformer's linear weights in int8 or fp8 (torchao weight-only; diffusers' newer LoRA
scripts quantise with bitsandbytes: :func:`base_quantization` says why not): half its 24 GB, the
adapters in full precision. Checkpoints, validation samples and the data order are the SD
trainer's (:mod:`trainer.loop`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from PIL import Image

from dreambuild.errors import InputError
from dreambuild.layout import t5_sequence_length
from trainer.args import TrainingArgs
from trainer.buckets import BucketedPhotos, bucket_batches
from trainer.checkpoints import Checkpoints, adapters_only
from trainer.device import DevicePlan
from trainer.likeness import Evaluation
from trainer.loop import (
    TrainResult,
    _collate,
    _evaluate,
    add_lora_adapters,
    apply_gradients,
    epoch_order,
    make_optimizer,
    new_accelerator,
    step_done,
    validation_samples,
)
from trainer.progress import StepLogger
from trainer.text import FluxEncoders

log = logging.getLogger(__name__)

TRAIN_GUIDANCE = 3.5  # diffusers' --guidance_scale default: dev's guidance embedding while training
# The attention block of diffusers' default --lora_layers: every attention's projections (the
# single-stream blocks' too, by suffix) and the text stream's. Not its feed-forwards: a kohya-keyed
# copy of those does not load back in diffusers (its converter maps only attention keys by
# diffusers' names; tested), and the issue asks for attention.
FLUX_LORA_TARGETS = [
    "attn.to_k",
    "attn.to_q",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
]


def base_quantization(name: str):
    """diffusers' torchao config for ``quantize_base`` (None for "no"). torchao rather than
    bitsandbytes: diffusers' bitsandbytes quantizer refuses to load without CUDA, so a CPU could not
    run (or test) the same path; torchao's int8 and fp8 weight tensors run on both, and peft wraps
    them with its torchao LoRA layer."""
    if name == "no":
        return None
    from diffusers import TorchAoConfig
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    return TorchAoConfig({"int8": Int8WeightOnlyConfig, "fp8": Float8WeightOnlyConfig}[name]())


def check_flux_args(args: TrainingArgs) -> None:
    """What a FLUX training cannot do, refused before anything loads."""
    if not args.lora:
        raise InputError(
            "FLUX bases train LoRA adapters only: lora_rank 0 asks for a full fine-tune of the 12B transformer, which is not offered; "
            "leave lora_rank empty (16) or set it above 0"
        )
    if args.vae is not None:
        raise InputError("vae replaces an SD/SDXL VAE; FLUX bases keep their own 16-channel VAE")
    if args.resolution is not None and args.resolution % 16:
        raise InputError(f"resolution must be a multiple of 16 for FLUX bases (8x VAE, 2x2 latent packing), got {args.resolution}")


def train_flux_lora(  # noqa: C901
    args: TrainingArgs,
    base: Path,
    instance: list[Image.Image],
    klass: list[Image.Image],
    plan: DevicePlan,
    log_interval: float = 10.0,
    captions: list[str | None] | None = None,
    checkpoints: Checkpoints | None = None,
    samples: Path | None = None,
    likeness: Evaluation | None = None,
) -> TrainResult:
    """Run ``args.max_train_steps`` optimizer steps of LoRA on the FLUX pipeline at ``base``.
    Arguments as :func:`trainer.loop.train_dreambooth`; the result's pipeline is None unless
    ``args.save_sample_prompt`` asks for samples after training."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3
    from peft import get_peft_model_state_dict

    prior = args.with_prior_preservation
    accelerator = new_accelerator(args, plan)
    weight_dtype = plan.weight_dtype
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(base, subfolder="scheduler", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae", local_files_only=True)
    # In the frozen base's dtype from the start: FLUX.1's transformer is 48 GB of host memory in fp32.
    transformer = FluxTransformer2DModel.from_pretrained(
        base, subfolder="transformer", dtype=weight_dtype, quantization_config=base_quantization(args.quantize_base), local_files_only=True
    )
    sequence_length = t5_sequence_length(base)
    encoders = FluxEncoders.load(base, sequence_length, weight_dtype, accelerator.device)

    def prompt(key: tuple[str, int]) -> str:
        kind, index = key
        if kind == "class":
            return args.class_prompt
        return (captions[index] if captions and captions[index] else None) or args.instance_prompt

    texts = sorted({prompt(("instance", i)) for i in range(len(instance))} | ({args.class_prompt} if prior else set()))
    t5_states = {text: encoders.t5_states(text) for text in texts}
    encoders.free_t5()  # the largest model of all, needed no more until validation
    clip_ids = {text: encoders.clip_ids(text, accelerator.device) for text in texts}

    vae.requires_grad_(False)
    encoders.clip.requires_grad_(False)
    add_lora_adapters(transformer, [encoders.clip] if args.train_text_encoder else [], args, weight_dtype, FLUX_LORA_TARGETS)
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
        if args.train_text_encoder:
            encoders.clip.gradient_checkpointing_enable()
    groups = [{"params": [p for p in transformer.parameters() if p.requires_grad], "lr": args.lora_lr}]
    if args.train_text_encoder:
        groups.append({"params": [p for p in encoders.clip.parameters() if p.requires_grad], "lr": args.text_encoder_lr or args.lora_lr})
    if args.scale_lr:
        for group in groups:
            group["lr"] *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    trainable = [p for group in groups for p in group["params"]]
    optimizer, lr_scheduler = make_optimizer(groups, args, plan, accelerator)

    clip = encoders.clip
    adapters_only(accelerator)  # checkpoints: the adapters, not the 24 GB transformer around them
    if args.train_text_encoder:
        transformer, clip, optimizer, lr_scheduler = accelerator.prepare(transformer, clip, optimizer, lr_scheduler)
    else:
        transformer, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)
        clip.to(accelerator.device, dtype=weight_dtype)
    vae.to(accelerator.device, dtype=weight_dtype)
    pooled_frozen: dict[str, torch.Tensor] = {}
    if not args.train_text_encoder:
        with torch.no_grad():
            pooled_frozen = {text: encoders.pooled(ids, clip) for text, ids in clip_ids.items()}

    dataset = BucketedPhotos(instance, klass if prior else [], args.resolution, args.center_crop)

    def epoch_batches(epoch: int) -> list[list[int]]:
        return bucket_batches(epoch_order(len(dataset), args.seed, epoch), dataset, args.train_batch_size)

    batches_per_epoch = len(epoch_batches(0))  # the same every epoch: per bucket, its items over the batch size
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    guidance_embeds = accelerator.unwrap_model(transformer).config.guidance_embeds
    buckets = sorted({dataset.bucket(i) for i in range(len(instance))})
    log.info(
        "Training %d steps of FLUX LoRA rank %d (%s parameters): %d instance image(s) in %d bucket(s) (%s), %d class image(s), batch %d, lr %.3g%s.",
        args.max_train_steps,
        args.lora_rank,
        f"{sum(p.numel() for p in trainable):,}",
        len(instance),
        len(buckets),
        ", ".join(f"{w}x{h}" for w, h in buckets),
        len(dataset.klass),
        args.train_batch_size,
        groups[0]["lr"],
        (", prior preservation" if prior else "") + (f", base weights {args.quantize_base} (torchao)" if args.quantize_base != "no" else ""),
    )

    def assemble():
        """A pipeline of the models as they are now, T5 loaded again (validation samples, the result)."""
        return FluxPipeline.from_pretrained(
            base,
            transformer=accelerator.unwrap_model(transformer),
            text_encoder=accelerator.unwrap_model(clip),
            vae=vae,
            dtype=weight_dtype,
            local_files_only=True,
        ).to(accelerator.device)

    sample_size = {"height": args.resolution, "width": args.resolution, "max_sequence_length": sequence_length}
    step = 0
    resumed = checkpoints.latest() if checkpoints else None
    if likeness is not None:  # before a resumed state is loaded: always the base's scores
        _evaluate(likeness, assemble(), 0, accelerator, trainable)
    if resumed and resumed[0] < args.max_train_steps:
        accelerator.load_state(str(resumed[1]))
        step = resumed[0]
        log.info("Resuming from the checkpoint at step %d of %d.", step, args.max_train_steps)
    progress = StepLogger(args.max_train_steps, interval=log_interval, first=step)
    loss_value, started = float("nan"), time.monotonic()
    trained = [transformer, clip] if args.train_text_encoder else [transformer]
    for model in trained:
        model.train()
    epoch, skip = divmod(step * args.gradient_accumulation_steps, batches_per_epoch)
    while step < args.max_train_steps:
        batches = epoch_batches(epoch)[skip:]
        epoch, skip = epoch + 1, 0
        # Its own generator: a DataLoader draws a seed when iterated, which must not consume the
        # global RNG (restored from a checkpoint; an extra draw would change every later step).
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=_collate, generator=torch.Generator())
        for batch in loader:
            with accelerator.accumulate(*trained):
                pixels = batch["pixels"].to(accelerator.device, dtype=weight_dtype)
                with torch.no_grad():
                    latents = (vae.encode(pixels).latent_dist.sample() - shift) * scale
                latents = latents.to(weight_dtype)
                size, channels, height, width = latents.shape
                noise = torch.randn_like(latents)
                u = compute_density_for_timestep_sampling(weighting_scheme="none", batch_size=size, logit_mean=0.0, logit_std=1.0, mode_scale=1.29)
                indices = (u * scheduler.config.num_train_timesteps).long()
                timesteps = scheduler.timesteps[indices].to(accelerator.device)
                sigmas = scheduler.sigmas[indices].to(accelerator.device, dtype=latents.dtype).view(-1, 1, 1, 1)
                noisy = (1.0 - sigmas) * latents + sigmas * noise
                packed = FluxPipeline._pack_latents(noisy, size, channels, height, width)
                image_ids = FluxPipeline._prepare_latent_image_ids(size, height // 2, width // 2, accelerator.device, weight_dtype)
                texts = [prompt(key) for key in batch["keys"]]
                states = torch.cat([t5_states[t] for t in texts]).to(weight_dtype)
                if args.train_text_encoder:
                    pooled = encoders.pooled(torch.cat([clip_ids[t] for t in texts]), clip)
                else:
                    pooled = torch.cat([pooled_frozen[t] for t in texts])
                text_ids = torch.zeros(states.shape[1], 3, device=accelerator.device, dtype=weight_dtype)
                guidance = torch.full((size,), TRAIN_GUIDANCE, device=accelerator.device) if guidance_embeds else None
                prediction = transformer(
                    hidden_states=packed,
                    timestep=timesteps / 1000,
                    guidance=guidance,
                    pooled_projections=pooled.to(weight_dtype),
                    encoder_hidden_states=states,
                    txt_ids=text_ids,
                    img_ids=image_ids,
                    return_dict=False,
                )[0]
                prediction = FluxPipeline._unpack_latents(prediction, height * vae_scale_factor, width * vae_scale_factor, vae_scale_factor)
                weighting = compute_loss_weighting_for_sd3(weighting_scheme="none", sigmas=sigmas)
                target = noise - latents

                def mse(pred: torch.Tensor, goal: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
                    return torch.mean((weight.float() * (pred.float() - goal.float()) ** 2).reshape(goal.shape[0], -1), 1).mean()

                if prior:
                    prediction, prior_prediction = prediction.chunk(2)
                    target, prior_target = target.chunk(2)
                    weighting, prior_weighting = weighting.chunk(2)
                    loss = mse(prediction, target, weighting) + args.prior_loss_weight * mse(prior_prediction, prior_target, prior_weighting)
                else:
                    loss = mse(prediction, target, weighting)
                apply_gradients(accelerator, loss, trainable, optimizer, lr_scheduler, args.max_grad_norm)
            if accelerator.sync_gradients:
                step += 1
                loss_value = step_done(step, loss, loss_value, progress, lr_scheduler, accelerator, checkpoints, args.max_train_steps)
                if step % args.validation_steps == 0 and step < args.max_train_steps:
                    if args.validation_prompt and samples is not None:
                        validation_samples(args, step, samples, accelerator, assemble(), **sample_size)
                    if likeness is not None:
                        _evaluate(likeness, assemble(), step, accelerator, trainable)
                    for model in trained:
                        model.train()
                if step >= args.max_train_steps:
                    break
    seconds = time.monotonic() - started
    accelerator.wait_for_everyone()
    pipeline = assemble() if args.save_sample_prompt or likeness is not None else None
    if likeness is not None:
        _evaluate(likeness, pipeline, step, accelerator, trainable)
        likeness.restore(trainable, step)  # keep_best: an earlier evaluation's adapters, in place
    models = {"transformer": accelerator.unwrap_model(transformer)}
    if args.train_text_encoder:
        models["text_encoder"] = accelerator.unwrap_model(clip)
    lora = {name: get_peft_model_state_dict(model) for name, model in models.items()}
    metadata = {name: model.peft_config["default"].to_dict() for name, model in models.items()}
    accelerator.free_memory()
    return TrainResult(pipeline=pipeline, steps=step, seconds=seconds, final_loss=loss_value, lora=lora, lora_metadata=metadata)
