"""Training arguments, their defaults and their invariants.

The Cog ``Input`` declarations in ``predict.py`` repeat these ranges literally (Cog builds its
schema by parsing that file); ``tests/test_trainer_inputs.py`` keeps both in step. Validation
here still runs on every request, because the Cog server only validates when the image's
OpenAPI schema is present.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from dreambuild.errors import InputError

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
MIXED_PRECISION = ("no", "fp16", "bf16")
QUANTIZE_BASE = ("no", "int8", "fp8")  # a FLUX LoRA's frozen transformer: torchao weight-only (trainer.flux)

# Inclusive (min, max) bounds; None means unbounded on that side.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "num_class_images": (0, 10_000),
    "prior_loss_weight": (0.0, None),
    "resolution": (64, 2048),
    "train_batch_size": (1, 64),
    "batch_size": (1, 64),
    "sample_batch_size": (1, 64),
    "max_train_steps": (1, 100_000),
    "steps": (1, 100_000),
    "checkpointing_steps": (0, 100_000),
    "gradient_accumulation_steps": (1, 1024),
    "learning_rate": (0.0, 1.0),
    "lora_rank": (0, 256),
    "lora_alpha": (0.0, None),
    "lora_lr": (0.0, 1.0),
    "text_encoder_lr": (0.0, 1.0),
    "lr_warmup_steps": (0, 100_000),
    "adam_beta1": (0.0, 1.0),
    "adam_beta2": (0.0, 1.0),
    "adam_weight_decay": (0.0, 1.0),
    "adam_epsilon": (0.0, 1.0),
    "max_grad_norm": (0.0, None),
    "n_save_sample": (1, 64),
    "save_guidance_scale": (0.0, 50.0),
    "save_infer_steps": (1, 500),
    "validation_steps": (1, 100_000),
}
CHOICES: dict[str, tuple[str, ...]] = {"lr_scheduler": LR_SCHEDULERS, "mixed_precision": MIXED_PRECISION, "quantize_base": QUANTIZE_BASE}
# Replicate's FLUX trainer's names (ostris/flux-dev-lora-trainer) for inputs this trainer names as
# diffusers' scripts do: either may be given; the alias, when set, is the value. (Its
# ``input_images`` is ``instance_data``'s: files are resolved by trainer.job.subject_photos.)
ALIASES = {"trigger_word": "token_string", "steps": "max_train_steps", "batch_size": "train_batch_size"}
FLUX_LORA_RANK = 16  # lora_rank left empty on a FLUX base (LoRA only): Replicate's FLUX trainer's default
FULL_LEARNING_RATE = 1e-6  # learning_rate left empty in a full fine-tune (the seed's trainer)
LORA_LEARNING_RATE = 1e-4  # the adapters' rate when neither lora_lr nor learning_rate is given (diffusers' LoRA scripts)


@dataclass
class TrainingArgs:
    """Every hyper-parameter of one DreamBooth run; saved to ``args.json`` in the archive."""

    # Empty instance_prompt: the trigger word alone (as Replicate's FLUX trainer captions a photo
    # without one); empty class_prompt: no prior preservation. Resolved by from_inputs.
    instance_prompt: str | None = None
    class_prompt: str | None = None
    base_model: str | None = None  # a base baked in the trainer, by name (sd15, sdxl); None: the default
    vae: str | None = None  # an alternative VAE baked in the trainer, by name
    caption_prefix: str | None = None  # before every caption (a .txt beside an image), e.g. "a photo of cjw,"
    token_string: str | None = None  # the subject's trigger word (cog-sdxl's name): in every training prompt
    trigger_word: str | None = None  # Replicate's FLUX trainer's name for token_string
    num_class_images: int = 50
    with_prior_preservation: bool | None = None  # None: on when class_prompt is given
    prior_loss_weight: float = 1.0
    seed: int | None = 1337
    resolution: int | None = None  # None: the base's native size (512 SD 1.5, 1024 SDXL), set by the job
    center_crop: bool = False
    train_text_encoder: bool = True
    train_batch_size: int = 1
    batch_size: int | None = None  # Replicate's FLUX trainer's name for train_batch_size
    sample_batch_size: int = 4
    max_train_steps: int = 2000
    steps: int | None = None  # Replicate's FLUX trainer's name for max_train_steps
    checkpointing_steps: int = 0  # 0: none; else the state every N steps, which a re-run resumes from
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    learning_rate: float | None = None  # the full fine-tune's rate, and a LoRA's when lora_lr is empty (resolve_for)
    # LoRA DreamBooth: 0 keeps the full fine-tune (the seed's trainer); > 0 trains peft adapters;
    # None: FLUX_LORA_RANK on a FLUX base, else 0 (resolve_for, once the base is known).
    lora_rank: int | None = None
    lora_alpha: float | None = None  # None: equal to lora_rank (diffusers' LoRA scripts)
    lora_lr: float | None = None  # the adapters' rate; None: learning_rate, else LORA_LEARNING_RATE
    text_encoder_lr: float | None = None  # None: the UNet's rate
    scale_lr: bool = False
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    use_8bit_adam: bool = True
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str = "fp16"
    quantize_base: str = "no"  # FLUX LoRA: the frozen transformer's weights in int8 or fp8 (half bf16's memory)
    validation_prompt: str | None = None  # sample images of it every validation_steps, into samples/
    validation_steps: int = 100
    save_sample_prompt: str | None = None
    save_sample_negative_prompt: str | None = None
    n_save_sample: int = 1
    save_guidance_scale: float = 7.5
    save_infer_steps: int = 50
    measure_likeness: bool = False  # DINO / CLIP-I / CLIP-T / prior drift into metrics.json (trainer.likeness)
    keep_best: bool = False  # ship the evaluation with the best subject fidelity that holds prompt fidelity

    @classmethod
    def from_inputs(cls, values: dict[str, Any]) -> "TrainingArgs":
        """Build from raw request values, checking types, ranges, choices and invariants."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise InputError(f"unknown training input(s): {', '.join(unknown)}")
        # None keeps the default, except for optional fields where it is meaningful (seed: random).
        kwargs = {
            name: None if value is None else _coerce(name, fields[name].type, value)
            for name, value in values.items()
            if value is not None or "None" in fields[name].type
        }
        args = cls(**kwargs)
        args._apply_aliases()
        args._resolve_prompts()
        args.validate()
        return args

    def _resolve_prompts(self) -> None:
        """An empty instance_prompt is the trigger word; prior preservation follows class_prompt."""
        for name in ("instance_prompt", "class_prompt"):
            if not (getattr(self, name) or "").strip():
                setattr(self, name, None)
        if self.instance_prompt is None:
            if not (self.token_string or "").strip():
                raise InputError(
                    "instance_prompt is required (e.g. 'a photo of a cjw person'), or trigger_word alone "
                    "(then every photo without a caption is prompted by the trigger word, as Replicate's FLUX trainer does)"
                )
            self.instance_prompt = self.token_string.strip()
        if self.with_prior_preservation is None:
            self.with_prior_preservation = self.class_prompt is not None
        elif self.with_prior_preservation and self.class_prompt is None:
            raise InputError("with_prior_preservation needs class_prompt (e.g. 'a photo of a person'): the class the subject belongs to")

    def resolve_for(self, family: str) -> None:
        """The defaults that depend on the base (``dreambuild.layout.family``): the LoRA rank (a
        FLUX base trains LoRA only) and the learning rate of what trains."""
        if self.lora_rank is None:
            self.lora_rank = FLUX_LORA_RANK if family == "flux" else 0
        if self.lora:
            self.lora_lr = self.lora_lr or self.learning_rate or LORA_LEARNING_RATE
        else:
            self.learning_rate = self.learning_rate or FULL_LEARNING_RATE

    def _apply_aliases(self) -> None:
        """Replicate's names (``ALIASES``) set ours; both set to different values is an error."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for alias, name in ALIASES.items():
            value = getattr(self, alias)
            if value is None:
                continue
            current = getattr(self, name)
            if current != defaults[name] and current != value:
                raise InputError(f"{alias} ({value!r}) and {name} ({current!r}) are the same input under two names; give one")
            setattr(self, name, value)

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first invalid argument."""
        for name, (lo, hi) in RANGES.items():
            value = getattr(self, name)
            if value is None:  # an optional input left empty
                continue
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
                raise InputError(f"{name} must be {bounds}, got {value}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.resolution is not None and self.resolution % 8:
            raise InputError(f"resolution must be a multiple of 8, got {self.resolution}")
        if self.token_string is not None and (not self.token_string.strip() or any(c.isspace() for c in self.token_string.strip())):
            raise InputError(f"token_string must be one word without spaces, got {self.token_string!r}")
        if self.keep_best and not self.measure_likeness:
            raise InputError("keep_best picks among likeness evaluations: set measure_likeness too")
        for name in ("learning_rate", "lora_lr", "text_encoder_lr", "lora_alpha"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise InputError(f"{name} must be greater than 0, got {value}")

    def check_token(self, prompt: str, what: str) -> None:
        """A prompt without the trigger word teaches the model nothing about it: refused, naming it."""
        token = (self.token_string or "").strip()
        if not re.search(rf"(?<!\w){re.escape(token)}(?!\w)", prompt):
            raise InputError(f"{what} does not contain token_string {token!r}: {prompt!r}")

    @property
    def lora(self) -> bool:
        return (self.lora_rank or 0) > 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, annotation: str, value: Any) -> Any:
    """Check one value against its annotation; ints widen to floats, nothing else is guessed."""
    kind = annotation.split(" | ")[0]
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind == "str":
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a new field type must be handled above
        raise TypeError(f"unhandled annotation {annotation!r} for {name}")
    raise InputError(f"{name} must be of type {kind}, got {type(value).__name__} {value!r}")
