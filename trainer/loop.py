"""The DreamBooth optimisation: fine-tune the UNet (and optionally the text encoder) on
instance photos, with optional prior preservation on class images — the whole models, or LoRA
adapters on their attention projections (``lora_rank`` > 0).

Same objective as diffusers' ``examples/dreambooth/train_dreambooth.py`` (full) and
``train_dreambooth_lora.py`` (LoRA: peft adapters on the UNet's to_q/to_k/to_v/to_out.0 and the
text encoder's q/k/v/out projections, the base frozen). Two exact shortcuts: with
``center_crop`` the images never change, so their VAE latent distributions are encoded once and
sampled every step; with a frozen text encoder the two prompts are encoded once. The loss is
read back from the device only when a progress line is due: a read every step stalls a GPU.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from PIL import Image
from torchvision import transforms

from dreambuild.layout import family
from trainer.args import TrainingArgs
from trainer.checkpoints import Checkpoints, adapters_only
from trainer.device import DevicePlan
from trainer.likeness import Evaluation
from trainer.progress import StepLogger
from trainer.text import TextEncoders, sdxl_time_ids

log = logging.getLogger(__name__)


UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@dataclass
class TrainResult:
    pipeline: StableDiffusionPipeline  # with the LoRA adapters active when lora
    steps: int
    seconds: float
    final_loss: float
    lora: dict[str, dict[str, torch.Tensor]] | None = None  # peft state dicts: "unet", "text_encoder"
    lora_metadata: dict[str, dict] | None = None  # their LoraConfigs (alpha, targets), as diffusers saves them


class PhotoDataset(torch.utils.data.Dataset):
    """Instance photos paired (when prior preservation is on) with class photos, as tensors."""

    def __init__(self, instance: list[Image.Image], klass: list[Image.Image], resolution: int, center_crop: bool) -> None:
        self.instance, self.klass = instance, klass
        crop = transforms.CenterCrop(resolution) if center_crop else transforms.RandomCrop(resolution)
        self.transform = transforms.Compose(
            [
                transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
                crop,
                transforms.ToTensor(),
                transforms.Normalize([0.5], [0.5]),
            ]
        )

    def __len__(self) -> int:
        return max(len(self.instance), len(self.klass))

    def __getitem__(self, index: int) -> dict:
        i = index % len(self.instance)
        item = {"instance": self.transform(self.instance[i]), "instance_index": i}
        if self.klass:
            c = index % len(self.klass)
            item.update({"class": self.transform(self.klass[c]), "class_index": c})
        return item


def epoch_order(size: int, seed: int | None, epoch: int) -> list[int]:
    """The photos' order in an epoch: a function of the seed and the epoch alone (not of the
    global RNG, which a resumed run restores to the checkpoint's state), so that a training
    resumed from a checkpoint sees the batches the uninterrupted one would have. Without a seed,
    the process's own random one: the order is random, as the training is."""
    generator = torch.Generator().manual_seed((seed if seed is not None else torch.initial_seed()) * 1_000_003 + epoch)
    return torch.randperm(size, generator=generator).tolist()


def _collate(examples: list[dict]) -> dict:
    batch = {
        "pixels": [e["instance"] for e in examples],
        "keys": [("instance", e["instance_index"]) for e in examples],
    }
    if "class" in examples[0]:
        batch["pixels"] += [e["class"] for e in examples]
        batch["keys"] += [("class", e["class_index"]) for e in examples]
    batch["pixels"] = torch.stack(batch["pixels"]).contiguous(memory_format=torch.contiguous_format).float()
    return batch


def train_dreambooth(  # noqa: C901
    args: TrainingArgs,
    base: Path,
    instance: list[Image.Image],
    klass: list[Image.Image],
    plan: DevicePlan,
    log_interval: float = 10.0,
    captions: list[str | None] | None = None,
    checkpoints: Checkpoints | None = None,
    samples: Path | None = None,
    vae_dir: Path | None = None,
    likeness: Evaluation | None = None,
) -> TrainResult:
    """Run ``args.max_train_steps`` optimizer steps and return the fine-tuned pipeline.

    ``captions[i]`` is instance image i's prompt (a .txt beside it); None: the instance prompt.
    With ``checkpoints``, the state is saved every ``checkpoints.every`` steps, and a newer saved
    state of the same training is resumed from. With ``args.validation_prompt``, sample images of
    the model as it is are written to ``samples`` every ``args.validation_steps`` steps. With
    ``likeness``, the model is scored before the first step (the base: the baseline, and prior
    drift's reference), every ``args.validation_steps`` steps and at the end.
    """
    prior = args.with_prior_preservation
    accelerator = new_accelerator(args, plan)

    xl = family(base) == "sdxl"
    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler", local_files_only=True)
    encoders = TextEncoders.load(base, xl)
    # An alternative VAE (e.g. the fp16-safe SDXL one) replaces the base's, in training and output.
    vae = (
        AutoencoderKL.from_pretrained(vae_dir, local_files_only=True)
        if vae_dir
        else AutoencoderKL.from_pretrained(base, subfolder="vae", local_files_only=True)
    )
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", local_files_only=True)
    # SDXL's own VAE overflows in fp16: it stays in fp32 unless an fp16-safe one replaces it (the
    # rule of diffusers' SDXL scripts). Not by config.force_upcast: AutoencoderKL defaults it to
    # True, so SD 1.5's VAE would needlessly run in fp32 too.
    vae_dtype = torch.float32 if xl and vae_dir is None else plan.weight_dtype

    vae.requires_grad_(False)
    for model in encoders.models:
        model.requires_grad_(args.train_text_encoder and not args.lora)
    if args.lora:
        add_lora_adapters(unet, encoders.models if args.train_text_encoder else [], args, plan.weight_dtype)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if args.train_text_encoder:
            for model in encoders.models:
                model.gradient_checkpointing_enable()

    lr = args.lora_lr if args.lora else args.learning_rate
    text_lr = args.text_encoder_lr or lr
    if args.scale_lr:
        scale = args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
        lr, text_lr = lr * scale, text_lr * scale
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": lr}]
    if args.train_text_encoder:
        groups.append({"params": [p for m in encoders.models for p in m.parameters() if p.requires_grad], "lr": text_lr})
    trainable = [p for group in groups for p in group["params"]]
    optimizer, lr_scheduler = make_optimizer(groups, args, plan, accelerator)
    dataset = PhotoDataset(instance, klass if prior else [], args.resolution, args.center_crop)
    batches_per_epoch = math.ceil(len(dataset) / args.train_batch_size)

    text_models = list(encoders.models)  # accelerate's wrappers of them when they train
    if args.lora:
        adapters_only(accelerator)  # checkpoints: the adapters, not the UNet and text encoders around them
    if args.train_text_encoder:
        unet, *text_models, optimizer, lr_scheduler = accelerator.prepare(unet, *text_models, optimizer, lr_scheduler)
    else:
        unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
        for model in text_models:
            model.to(accelerator.device, dtype=plan.weight_dtype)
    vae.to(accelerator.device, dtype=vae_dtype)

    def prompt(key: tuple[str, int]) -> str:
        kind, index = key
        if kind == "class":
            return args.class_prompt
        return (captions[index] if captions and captions[index] else None) or args.instance_prompt

    prompts = sorted({prompt(("instance", i)) for i in range(len(instance))} | ({args.class_prompt} if prior else set()))
    prompt_ids = {text: encoders.ids(text, accelerator.device) for text in prompts}
    frozen_embeddings: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    if not args.train_text_encoder:
        with torch.no_grad():
            frozen_embeddings = {text: encoders.encode(ids, text_models) for text, ids in prompt_ids.items()}
    latent_cache: dict[tuple[str, int], torch.Tensor] | None = {} if args.center_crop else None

    def latent_params(pixels: torch.Tensor, keys: list[tuple[str, int]]) -> torch.Tensor:
        """Mean and log-variance of the VAE posterior for each image (cached when exact)."""
        if latent_cache is not None and all(k in latent_cache for k in keys):
            return torch.stack([latent_cache[k] for k in keys])
        with torch.no_grad():
            params = vae.encode(pixels.to(accelerator.device, dtype=vae_dtype)).latent_dist.parameters
        if latent_cache is not None:
            for key, p in zip(keys, params):
                latent_cache[key] = p
        return params

    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    log.info(
        "Training %d steps%s: %d instance image(s), %d class image(s), batch %d, %d step(s) per epoch, lr %.3g%s.",
        args.max_train_steps,
        f" of LoRA rank {args.lora_rank} ({sum(p.numel() for p in trainable):,} parameters)" if args.lora else "",
        len(instance),
        len(dataset.klass),
        args.train_batch_size,
        steps_per_epoch,
        lr,
        ", prior preservation" if prior else "",
    )

    def assemble():
        """A pipeline of the models as they are now (validation samples, the result)."""
        components = {"unet": accelerator.unwrap_model(unet), "vae": vae}
        components.update({name: accelerator.unwrap_model(m) for name, m in zip(encoders.names, text_models)})
        components.update({name.replace("text_encoder", "tokenizer"): t for name, t in zip(encoders.names, encoders.tokenizers)})
        if encoders.xl:
            return StableDiffusionXLPipeline.from_pretrained(base, **components, local_files_only=True)
        return StableDiffusionPipeline.from_pretrained(base, **components, safety_checker=None, requires_safety_checker=False, local_files_only=True)

    step = 0
    resumed = checkpoints.latest() if checkpoints else None
    if likeness is not None:  # before a resumed state is loaded: always the base's scores
        _evaluate(likeness, assemble(), 0, accelerator, trainable)
    if resumed and resumed[0] < args.max_train_steps:
        accelerator.load_state(str(resumed[1]))
        step = resumed[0]
        log.info("Resuming from the checkpoint at step %d of %d.", step, args.max_train_steps)
    progress = StepLogger(args.max_train_steps, interval=log_interval, first=step)
    prediction_type = noise_scheduler.config.prediction_type
    loss_value, started = float("nan"), time.monotonic()
    trained = [unet, *text_models] if args.train_text_encoder else [unet]
    for model in trained:
        model.train()
    # One optimizer step is gradient_accumulation_steps batches, across epochs: a resumed run
    # continues inside the epoch where the checkpoint was taken, in that epoch's order.
    epoch, skip = divmod(step * args.gradient_accumulation_steps, batches_per_epoch)
    while step < args.max_train_steps:
        order = epoch_order(len(dataset), args.seed, epoch)[skip * args.train_batch_size :]
        epoch, skip = epoch + 1, 0
        # Its own generator: a DataLoader draws a seed when iterated, which must not consume the
        # global RNG (restored from a checkpoint; an extra draw would change every later step).
        batches = torch.utils.data.DataLoader(
            dataset, batch_size=args.train_batch_size, sampler=order, collate_fn=_collate, generator=torch.Generator()
        )
        for batch in batches:
            with accelerator.accumulate(*trained):
                posterior = latent_params(batch["pixels"], batch["keys"])
                mean, logvar = posterior.chunk(2, dim=1)
                std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
                latents = (mean + std * torch.randn_like(mean)) * vae.config.scaling_factor
                latents = latents.float()
                noise = torch.randn_like(latents)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device).long()
                noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                texts = [prompt(key) for key in batch["keys"]]
                if args.train_text_encoder:
                    hidden, pooled = encoders.encode([torch.cat(parts) for parts in zip(*(prompt_ids[t] for t in texts))], text_models)
                else:
                    hidden = torch.cat([frozen_embeddings[t][0] for t in texts])
                    pooled = torch.cat([frozen_embeddings[t][1] for t in texts]) if encoders.xl else None
                extra = {}
                if encoders.xl:  # SDXL: the pooled prompt and the size/crop micro-conditioning
                    extra["added_cond_kwargs"] = {
                        "text_embeds": pooled,
                        "time_ids": sdxl_time_ids(args.resolution, len(texts), hidden.device, hidden.dtype),
                    }
                model_pred = unet(noisy, timesteps, hidden, **extra).sample
                if prediction_type == "epsilon":
                    target = noise
                elif prediction_type == "v_prediction":
                    target = noise_scheduler.get_velocity(latents, noise, timesteps)
                else:
                    raise ValueError(f"unsupported prediction type {prediction_type}")
                if prior:
                    model_pred, prior_pred = model_pred.chunk(2)
                    target, prior_target = target.chunk(2)
                    loss = F.mse_loss(model_pred.float(), target.float())
                    loss = loss + args.prior_loss_weight * F.mse_loss(prior_pred.float(), prior_target.float())
                else:
                    loss = F.mse_loss(model_pred.float(), target.float())
                apply_gradients(accelerator, loss, trainable, optimizer, lr_scheduler, args.max_grad_norm)
            if accelerator.sync_gradients:
                step += 1
                loss_value = step_done(step, loss, loss_value, progress, lr_scheduler, accelerator, checkpoints, args.max_train_steps)
                if step % args.validation_steps == 0 and step < args.max_train_steps:
                    if args.validation_prompt and samples is not None:
                        validation_samples(args, step, samples, accelerator, assemble())
                    if likeness is not None:
                        _evaluate(likeness, assemble(), step, accelerator, trainable)
                    for model in trained:
                        model.train()
                if step >= args.max_train_steps:
                    break
    seconds = time.monotonic() - started
    accelerator.wait_for_everyone()
    pipeline = assemble()
    if likeness is not None:
        _evaluate(likeness, pipeline, step, accelerator, trainable)
        if likeness.restore(trainable, step):  # keep_best: an earlier evaluation won
            pipeline = assemble()
    lora = metadata = None
    if args.lora:
        from peft import get_peft_model_state_dict

        models = {"unet": accelerator.unwrap_model(unet)}
        if args.train_text_encoder:
            models.update({name: accelerator.unwrap_model(m) for name, m in zip(encoders.names, text_models)})
        lora = {name: get_peft_model_state_dict(model) for name, model in models.items()}
        metadata = {name: model.peft_config["default"].to_dict() for name, model in models.items()}
    accelerator.free_memory()
    return TrainResult(pipeline=pipeline, steps=step, seconds=seconds, final_loss=loss_value, lora=lora, lora_metadata=metadata if lora else None)


def new_accelerator(args: TrainingArgs, plan: DevicePlan) -> Accelerator:
    """This training's Accelerator (and its seed). Accelerate keeps one process-wide state, fixed
    by the first Accelerator; a Cog server runs many trainings in one worker process, each with its
    own mixed precision. Found on an H200: the second job with another precision failed. Clearing
    it is the only way accelerate offers."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=plan.mixed_precision,
        cpu=plan.device.type == "cpu",
    )
    if args.seed is not None:
        set_seed(args.seed)
    return accelerator


def make_optimizer(groups: list[dict], args: TrainingArgs, plan: DevicePlan, accelerator: Accelerator) -> tuple:
    """AdamW (bitsandbytes' 8-bit one where the plan allows) over ``groups`` and its learning-rate schedule."""
    optimizer_cls = torch.optim.AdamW
    if plan.use_8bit_adam:
        import bitsandbytes as bnb

        optimizer_cls = bnb.optim.AdamW8bit
    lr = groups[0]["lr"]
    optimizer = optimizer_cls(groups, lr=lr, betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    return optimizer, lr_scheduler


def apply_gradients(accelerator: Accelerator, loss: torch.Tensor, trainable: list, optimizer, lr_scheduler, max_grad_norm: float) -> None:
    """Backpropagate ``loss``; step the optimizer and the schedule (gradients clipped when they sync)."""
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def step_done(
    step: int,
    loss: torch.Tensor,
    last: float,
    progress: StepLogger,
    lr_scheduler,
    accelerator: Accelerator,
    checkpoints: Checkpoints | None,
    total: int,
) -> float:
    """After optimizer step ``step``: a progress line when one is due (the loop's only host sync:
    a read every step stalls a GPU; a diverged loss fails the training there) and a checkpoint
    when one is due. Returns the loss last read."""
    if progress.due(step):
        last = loss.detach().item()
        if not math.isfinite(last):
            raise FloatingPointError(f"training diverged by step {step} (loss {last}); lower the learning rate")
        progress.update(step, loss=last, lr=float(lr_scheduler.get_last_lr()[0]))
    if checkpoints and checkpoints.due(step, total):
        checkpoints.save(accelerator, step)
    return last


def _for_inference(pipe) -> None:
    """A pipeline of the models in training, ready to sample: eval mode, DDIM."""
    from diffusers import DDIMScheduler

    for name in ("unet", "transformer", "text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).eval()
    if getattr(pipe, "unet", None) is not None:  # FLUX keeps its flow-matching sampler
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)


def _evaluate(likeness: Evaluation, pipe, step: int, accelerator, trainable: list) -> None:
    _for_inference(pipe)
    likeness.consider(likeness(pipe, step, accelerator.autocast), trainable)


@torch.no_grad()
def validation_samples(args: TrainingArgs, step: int, out: Path, accelerator, pipe, **extra) -> None:
    """Images of ``args.validation_prompt`` from the model as it is at ``step``: how training goes.
    ``extra``: more of the pipeline's arguments (FLUX: the size and T5 prompt length)."""
    _for_inference(pipe)
    generator = torch.Generator("cpu").manual_seed(args.seed if args.seed is not None else 0)
    with accelerator.autocast():
        images = pipe(
            args.validation_prompt,
            negative_prompt=args.save_sample_negative_prompt,
            num_images_per_prompt=args.n_save_sample,
            num_inference_steps=args.save_infer_steps,
            guidance_scale=args.save_guidance_scale,
            generator=generator,
            **extra,
        ).images
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(out / f"step-{step}-{i}.png")
    log.info("Validation: %d sample(s) of %r at step %d.", len(images), args.validation_prompt, step)


def add_lora_adapters(unet, text_encoders: list, args: TrainingArgs, weight_dtype: torch.dtype, targets: list[str] = UNET_LORA_TARGETS) -> None:
    """Freeze ``unet`` (or FLUX's transformer, with its ``targets``) and ``text_encoders`` and add
    trainable LoRA adapters to them. The frozen base is cast to ``weight_dtype`` (half the memory
    under mixed precision); the adapters stay in fp32, as diffusers' LoRA scripts keep them."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    alpha = args.lora_alpha or args.lora_rank
    models = [(unet, targets)] + [(model, TEXT_LORA_TARGETS) for model in text_encoders]
    for model, targets in models:
        model.requires_grad_(False)
        if weight_dtype != torch.float32 and model.dtype != weight_dtype:  # FLUX's is loaded in it (a quantised one cannot be cast)
            model.to(dtype=weight_dtype)
        model.add_adapter(LoraConfig(r=args.lora_rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets))
    cast_training_params([model for model, _ in models], dtype=torch.float32)
