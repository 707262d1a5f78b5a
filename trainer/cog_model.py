"""Cog entry points of the trainer (root cog.yaml).

``Predictor`` serves ``/predictions`` (the Dreambooth API runs the trainer as an ordinary
prediction) and ``train`` serves ``/trainings`` and ``cog train``. Both hand the same inputs
to :func:`trainer.job.run_job` and return the same ``output.zip``. Their signatures are
spelled out twice because Cog reads them from this file's source to build the model's
schema; ``tests/test_trainer_inputs.py`` checks that they agree.
"""

import os
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing reaches the network while training

from cog import BaseModel, BaseRunner, Input, Path, current_scope  # noqa: E402

from dreambuild.logs import configure_logging  # noqa: E402
from trainer.job import JobResult, run_job  # noqa: E402


def _record(result: JobResult) -> None:
    scope = current_scope()
    scope.record_metric("training_time", round(result.training_seconds, 3))
    scope.record_metric("total_time", round(result.total_seconds, 3))
    scope.record_metric("train_steps", result.steps)
    scope.record_metric("final_loss", result.final_loss)
    scope.record_metric("instance_images", result.instance_images)
    scope.record_metric("class_images", result.class_images)


class TrainingOutput(BaseModel):
    weights: Path


class Predictor(BaseRunner):
    def setup(self) -> None:
        configure_logging()

    def run(
        self,
        instance_prompt: Optional[str] = Input(
            description="Prompt with an identifier naming the subject, e.g. 'a photo of a cjw person'; empty: the trigger word alone (trigger_word or token_string is then required).",
            default=None,
        ),
        class_prompt: Optional[str] = Input(
            description="Prompt naming the subject's class without the identifier, e.g. 'a photo of a person'; empty: no prior preservation.",
            default=None,
        ),
        instance_data: Optional[Path] = Input(
            description="Zip of 5-30 subject photos (any depth). Images under a top-level dataset_class/ folder are class images. Required (or input_images).",
            default=None,
        ),
        input_images: Optional[Path] = Input(description="Replicate's FLUX trainer's name for instance_data: either may be given.", default=None),
        class_data: Optional[Path] = Input(description="Optional zip of class images for prior preservation.", default=None),
        base_model: Optional[str] = Input(
            description="A base baked in the trainer, by name (sd15, sdxl, flux-dev, flux-schnell where baked; FLUX bases train LoRA only: lora_rank empty or above 0); empty: the default base. ckpt_base overrides it.",
            default=None,
        ),
        vae: Optional[str] = Input(
            description="An alternative VAE baked in the trainer, by name (e.g. sdxl-fp16-fix); empty: the base's own.", default=None
        ),
        caption_prefix: Optional[str] = Input(
            description="Text put before every caption (a .txt beside a photo in instance_data is its caption; photos without one use instance_prompt), e.g. 'a photo of cjw,'.",
            default=None,
        ),
        token_string: Optional[str] = Input(
            description="The word that names the subject (its trigger word, e.g. TOK or cjw): every training prompt (instance_prompt, each caption after caption_prefix) must contain it; recorded in args.json for the model's users.",
            default=None,
        ),
        trigger_word: Optional[str] = Input(description="Replicate's FLUX trainer's name for token_string: either may be given.", default=None),
        num_class_images: int = Input(
            description="Class images used for prior preservation; missing ones are generated from class_prompt.", default=50, ge=0, le=10000
        ),
        with_prior_preservation: Optional[bool] = Input(
            description="Add the prior-preservation loss on class images (needs class_prompt); empty: on when class_prompt is given.", default=None
        ),
        prior_loss_weight: float = Input(description="Weight of the prior-preservation loss.", default=1.0, ge=0.0),
        seed: Optional[int] = Input(description="Random seed for reproducible training; random when empty.", default=1337),
        resolution: Optional[int] = Input(
            description="Training resolution in pixels (multiple of 8; of 16 for FLUX); photos are resized and cropped to it (FLUX: to the size of about resolution² pixels nearest their aspect ratio). Empty: the base's native size (512 for SD 1.5, 1024 for SDXL and FLUX).",
            default=None,
            ge=64,
            le=2048,
        ),
        center_crop: bool = Input(description="Center-crop photos instead of random crops.", default=False),
        train_text_encoder: bool = Input(description="Also fine-tune the text encoder.", default=True),
        train_batch_size: int = Input(description="Photos per training step.", default=1, ge=1, le=64),
        batch_size: Optional[int] = Input(
            description="Replicate's FLUX trainer's name for train_batch_size: either may be given.", default=None, ge=1, le=64
        ),
        sample_batch_size: int = Input(description="Batch size when generating class images.", default=4, ge=1, le=64),
        max_train_steps: int = Input(description="Number of optimizer steps.", default=2000, ge=1, le=100000),
        steps: Optional[int] = Input(
            description="Replicate's FLUX trainer's name for max_train_steps: either may be given.", default=None, ge=1, le=100000
        ),
        checkpointing_steps: int = Input(
            description="Save the training state every N steps (0: never); running the same training again (same inputs and files) resumes from the newest one. Removed when the training completes.",
            default=0,
            ge=0,
            le=100000,
        ),
        gradient_accumulation_steps: int = Input(description="Batches accumulated per optimizer step.", default=1, ge=1, le=1024),
        gradient_checkpointing: bool = Input(description="Trade compute for memory with gradient checkpointing.", default=False),
        learning_rate: Optional[float] = Input(
            description="Initial learning rate (after warmup); in a LoRA training the adapters' when lora_lr is empty (Replicate's FLUX trainer's name). Empty: 1e-6 for a full fine-tune.",
            default=None,
            ge=0.0,
            le=1.0,
        ),
        lora_rank: Optional[int] = Input(
            description="LoRA rank: 0 fine-tunes the whole UNet (and text encoder); above 0 trains LoRA adapters of this rank instead: an output of a few MB (pytorch_lora_weights.safetensors). Empty: 16 on a FLUX base (LoRA only, Replicate's FLUX trainer's default), else 0.",
            default=None,
            ge=0,
            le=256,
        ),
        lora_alpha: Optional[float] = Input(
            description="LoRA alpha (adapters are scaled by alpha / rank); empty: equal to lora_rank.", default=None, ge=0.0
        ),
        lora_lr: Optional[float] = Input(
            description="Learning rate of the LoRA adapters when lora_rank > 0; empty: learning_rate if given, else 1e-4.",
            default=None,
            ge=0.0,
            le=1.0,
        ),
        text_encoder_lr: Optional[float] = Input(
            description="Learning rate of the text encoder (of its LoRA adapters when lora_rank > 0); empty: the UNet's.",
            default=None,
            ge=0.0,
            le=1.0,
        ),
        scale_lr: bool = Input(description="Scale the learning rate by GPUs, accumulation steps and batch size.", default=False),
        lr_scheduler: str = Input(
            description="Learning-rate schedule.",
            default="constant",
            choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"],
        ),
        lr_warmup_steps: int = Input(description="Warmup steps of the learning-rate schedule.", default=0, ge=0, le=100000),
        use_8bit_adam: bool = Input(description="Use bitsandbytes' 8-bit AdamW (CUDA only; AdamW on the CPU).", default=True),
        adam_beta1: float = Input(description="Adam beta1.", default=0.9, ge=0.0, le=1.0),
        adam_beta2: float = Input(description="Adam beta2.", default=0.999, ge=0.0, le=1.0),
        adam_weight_decay: float = Input(description="AdamW weight decay.", default=1e-2, ge=0.0, le=1.0),
        adam_epsilon: float = Input(description="Adam epsilon.", default=1e-8, ge=0.0, le=1.0),
        max_grad_norm: float = Input(description="Gradient clipping norm.", default=1.0, ge=0.0),
        mixed_precision: str = Input(
            description="Mixed precision on CUDA (full precision on the CPU); FLUX takes fp16 as bf16.",
            default="fp16",
            choices=["no", "fp16", "bf16"],
        ),
        quantize_base: str = Input(
            description="FLUX LoRA only: hold the frozen transformer's weights in 8 bits (torchao weight-only int8 or fp8: about 12 GB instead of 24 for FLUX.1), the adapters in full precision; no leaves it in bf16.",
            default="no",
            choices=["no", "int8", "fp8"],
        ),
        ckpt_base: Optional[Path] = Input(
            description="Optional zip of a diffusers pipeline to start from instead of the built-in base.", default=None
        ),
        validation_prompt: Optional[str] = Input(
            description="If set, sample images of this prompt are generated every validation_steps during training (n_save_sample images, save_infer_steps steps) and stored under samples/ as step-<N>-<i>.png.",
            default=None,
        ),
        validation_steps: int = Input(description="Steps between validation samples.", default=100, ge=1, le=100000),
        save_sample_prompt: Optional[str] = Input(
            description="If set, sample images of this prompt are generated after training and stored under samples/.", default=None
        ),
        save_sample_negative_prompt: Optional[str] = Input(description="Negative prompt for the sample images.", default=None),
        n_save_sample: int = Input(description="Number of sample images.", default=1, ge=1, le=64),
        save_guidance_scale: float = Input(description="Guidance scale of the sample images.", default=7.5, ge=0.0, le=50.0),
        save_infer_steps: int = Input(description="Denoising steps of the sample images.", default=50, ge=1, le=500),
        measure_likeness: bool = Input(
            description="Score how well the model learned the subject (DreamBooth's DINO, CLIP-I and CLIP-T, and prior drift) before training, every validation_steps and at the end, into metrics.json; needs the evaluation models baked (python -m trainer.fetch_eval_models).",
            default=False,
        ),
        keep_best: bool = Input(
            description="Ship the model as it was at the likeness evaluation with the best subject fidelity (DINO) whose prompt fidelity (CLIP-T) holds 90% of the base's, rather than the last step's (needs measure_likeness; metrics.json says which step).",
            default=False,
        ),
    ) -> Path:
        """Train DreamBooth and return output.zip (the fine-tuned diffusers pipeline and args.json)."""
        inputs = dict(locals())
        del inputs["self"]
        files = {name: inputs.pop(name) for name in ("instance_data", "input_images", "class_data", "ckpt_base")}
        result = run_job(inputs, **files)
        _record(result)
        return Path(result.archive)


def train(
    instance_prompt: Optional[str] = Input(
        description="Prompt with an identifier naming the subject, e.g. 'a photo of a cjw person'; empty: the trigger word alone (trigger_word or token_string is then required).",
        default=None,
    ),
    class_prompt: Optional[str] = Input(
        description="Prompt naming the subject's class without the identifier, e.g. 'a photo of a person'; empty: no prior preservation.",
        default=None,
    ),
    instance_data: Optional[Path] = Input(
        description="Zip of 5-30 subject photos (any depth). Images under a top-level dataset_class/ folder are class images. Required (or input_images).",
        default=None,
    ),
    input_images: Optional[Path] = Input(description="Replicate's FLUX trainer's name for instance_data: either may be given.", default=None),
    class_data: Optional[Path] = Input(description="Optional zip of class images for prior preservation.", default=None),
    base_model: Optional[str] = Input(
        description="A base baked in the trainer, by name (sd15, sdxl, flux-dev, flux-schnell where baked; FLUX bases train LoRA only: lora_rank empty or above 0); empty: the default base. ckpt_base overrides it.",
        default=None,
    ),
    vae: Optional[str] = Input(
        description="An alternative VAE baked in the trainer, by name (e.g. sdxl-fp16-fix); empty: the base's own.", default=None
    ),
    caption_prefix: Optional[str] = Input(
        description="Text put before every caption (a .txt beside a photo in instance_data is its caption; photos without one use instance_prompt), e.g. 'a photo of cjw,'.",
        default=None,
    ),
    token_string: Optional[str] = Input(
        description="The word that names the subject (its trigger word, e.g. TOK or cjw): every training prompt (instance_prompt, each caption after caption_prefix) must contain it; recorded in args.json for the model's users.",
        default=None,
    ),
    trigger_word: Optional[str] = Input(description="Replicate's FLUX trainer's name for token_string: either may be given.", default=None),
    num_class_images: int = Input(
        description="Class images used for prior preservation; missing ones are generated from class_prompt.", default=50, ge=0, le=10000
    ),
    with_prior_preservation: Optional[bool] = Input(
        description="Add the prior-preservation loss on class images (needs class_prompt); empty: on when class_prompt is given.", default=None
    ),
    prior_loss_weight: float = Input(description="Weight of the prior-preservation loss.", default=1.0, ge=0.0),
    seed: Optional[int] = Input(description="Random seed for reproducible training; random when empty.", default=1337),
    resolution: Optional[int] = Input(
        description="Training resolution in pixels (multiple of 8; of 16 for FLUX); photos are resized and cropped to it (FLUX: to the size of about resolution² pixels nearest their aspect ratio). Empty: the base's native size (512 for SD 1.5, 1024 for SDXL and FLUX).",
        default=None,
        ge=64,
        le=2048,
    ),
    center_crop: bool = Input(description="Center-crop photos instead of random crops.", default=False),
    train_text_encoder: bool = Input(description="Also fine-tune the text encoder.", default=True),
    train_batch_size: int = Input(description="Photos per training step.", default=1, ge=1, le=64),
    batch_size: Optional[int] = Input(
        description="Replicate's FLUX trainer's name for train_batch_size: either may be given.", default=None, ge=1, le=64
    ),
    sample_batch_size: int = Input(description="Batch size when generating class images.", default=4, ge=1, le=64),
    max_train_steps: int = Input(description="Number of optimizer steps.", default=2000, ge=1, le=100000),
    steps: Optional[int] = Input(
        description="Replicate's FLUX trainer's name for max_train_steps: either may be given.", default=None, ge=1, le=100000
    ),
    checkpointing_steps: int = Input(
        description="Save the training state every N steps (0: never); running the same training again (same inputs and files) resumes from the newest one. Removed when the training completes.",
        default=0,
        ge=0,
        le=100000,
    ),
    gradient_accumulation_steps: int = Input(description="Batches accumulated per optimizer step.", default=1, ge=1, le=1024),
    gradient_checkpointing: bool = Input(description="Trade compute for memory with gradient checkpointing.", default=False),
    learning_rate: Optional[float] = Input(
        description="Initial learning rate (after warmup); in a LoRA training the adapters' when lora_lr is empty (Replicate's FLUX trainer's name). Empty: 1e-6 for a full fine-tune.",
        default=None,
        ge=0.0,
        le=1.0,
    ),
    lora_rank: Optional[int] = Input(
        description="LoRA rank: 0 fine-tunes the whole UNet (and text encoder); above 0 trains LoRA adapters of this rank instead: an output of a few MB (pytorch_lora_weights.safetensors). Empty: 16 on a FLUX base (LoRA only, Replicate's FLUX trainer's default), else 0.",
        default=None,
        ge=0,
        le=256,
    ),
    lora_alpha: Optional[float] = Input(
        description="LoRA alpha (adapters are scaled by alpha / rank); empty: equal to lora_rank.", default=None, ge=0.0
    ),
    lora_lr: Optional[float] = Input(
        description="Learning rate of the LoRA adapters when lora_rank > 0; empty: learning_rate if given, else 1e-4.",
        default=None,
        ge=0.0,
        le=1.0,
    ),
    text_encoder_lr: Optional[float] = Input(
        description="Learning rate of the text encoder (of its LoRA adapters when lora_rank > 0); empty: the UNet's.", default=None, ge=0.0, le=1.0
    ),
    scale_lr: bool = Input(description="Scale the learning rate by GPUs, accumulation steps and batch size.", default=False),
    lr_scheduler: str = Input(
        description="Learning-rate schedule.",
        default="constant",
        choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"],
    ),
    lr_warmup_steps: int = Input(description="Warmup steps of the learning-rate schedule.", default=0, ge=0, le=100000),
    use_8bit_adam: bool = Input(description="Use bitsandbytes' 8-bit AdamW (CUDA only; AdamW on the CPU).", default=True),
    adam_beta1: float = Input(description="Adam beta1.", default=0.9, ge=0.0, le=1.0),
    adam_beta2: float = Input(description="Adam beta2.", default=0.999, ge=0.0, le=1.0),
    adam_weight_decay: float = Input(description="AdamW weight decay.", default=1e-2, ge=0.0, le=1.0),
    adam_epsilon: float = Input(description="Adam epsilon.", default=1e-8, ge=0.0, le=1.0),
    max_grad_norm: float = Input(description="Gradient clipping norm.", default=1.0, ge=0.0),
    mixed_precision: str = Input(
        description="Mixed precision on CUDA (full precision on the CPU); FLUX takes fp16 as bf16.", default="fp16", choices=["no", "fp16", "bf16"]
    ),
    quantize_base: str = Input(
        description="FLUX LoRA only: hold the frozen transformer's weights in 8 bits (torchao weight-only int8 or fp8: about 12 GB instead of 24 for FLUX.1), the adapters in full precision; no leaves it in bf16.",
        default="no",
        choices=["no", "int8", "fp8"],
    ),
    ckpt_base: Optional[Path] = Input(description="Optional zip of a diffusers pipeline to start from instead of the built-in base.", default=None),
    validation_prompt: Optional[str] = Input(
        description="If set, sample images of this prompt are generated every validation_steps during training (n_save_sample images, save_infer_steps steps) and stored under samples/ as step-<N>-<i>.png.",
        default=None,
    ),
    validation_steps: int = Input(description="Steps between validation samples.", default=100, ge=1, le=100000),
    save_sample_prompt: Optional[str] = Input(
        description="If set, sample images of this prompt are generated after training and stored under samples/.", default=None
    ),
    save_sample_negative_prompt: Optional[str] = Input(description="Negative prompt for the sample images.", default=None),
    n_save_sample: int = Input(description="Number of sample images.", default=1, ge=1, le=64),
    save_guidance_scale: float = Input(description="Guidance scale of the sample images.", default=7.5, ge=0.0, le=50.0),
    save_infer_steps: int = Input(description="Denoising steps of the sample images.", default=50, ge=1, le=500),
    measure_likeness: bool = Input(
        description="Score how well the model learned the subject (DreamBooth's DINO, CLIP-I and CLIP-T, and prior drift) before training, every validation_steps and at the end, into metrics.json; needs the evaluation models baked (python -m trainer.fetch_eval_models).",
        default=False,
    ),
    keep_best: bool = Input(
        description="Ship the model as it was at the likeness evaluation with the best subject fidelity (DINO) whose prompt fidelity (CLIP-T) holds 90% of the base's, rather than the last step's (needs measure_likeness; metrics.json says which step).",
        default=False,
    ),
) -> TrainingOutput:
    """Train DreamBooth; ``weights`` is output.zip, the same archive the prediction returns."""
    configure_logging()
    inputs = dict(locals())
    files = {name: inputs.pop(name) for name in ("instance_data", "input_images", "class_data", "ckpt_base")}
    result = run_job(inputs, **files)
    _record(result)
    return TrainingOutput(weights=Path(result.archive))
