"""Training checkpoints: the state a re-run of the same training resumes from.

job inputs -> key (what makes two runs the same training) -> ``<root>/<key>/step-<n>``
(accelerate's ``save_state``: models, optimizer, learning-rate schedule, RNG states) -> the next
run with that key loads the newest and continues at its step -> removed when the training ends.

A checkpoint is written under a temporary name and renamed, so a crash while saving leaves the
previous one whole; only the newest is kept (a full SD 1.5 state with its optimizer is ~10 GB; a
LoRA training's holds its adapters and their optimizer state only, :func:`adapters_only`).
The data order is a function of the seed and the epoch (``loop.epoch_order``), so a resumed run
continues inside the interrupted epoch with the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Inputs that do not change what is trained up to a step: a re-run differing only in these resumes.
NOT_IN_KEY = frozenset(
    {
        "max_train_steps",
        "steps",
        "checkpointing_steps",
        "save_sample_prompt",
        "save_sample_negative_prompt",
        "n_save_sample",
        "save_guidance_scale",
        "save_infer_steps",
    }
)


def checkpoints_root() -> Path:
    """``$DREAMBUILD_CHECKPOINTS``, else ``dreambuild-checkpoints`` beside the jobs' work directories."""
    explicit = os.environ.get("DREAMBUILD_CHECKPOINTS")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("DREAMBUILD_WORKDIR") or tempfile.gettempdir()) / "dreambuild-checkpoints"


def training_key(inputs: dict[str, Any], files: dict[str, Path | None], base: str) -> str:
    """What identifies a training: its inputs (as given: a random seed is not the same training),
    the content of its files and its base."""
    digest = hashlib.sha256()
    digest.update(json.dumps({k: v for k, v in sorted(inputs.items()) if k not in NOT_IN_KEY}, default=str).encode())
    digest.update(base.encode())
    for name, path in sorted(files.items()):
        digest.update(name.encode())
        if path is not None:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
    return digest.hexdigest()[:32]


def adapters_only(accelerator) -> None:
    """LoRA trainings: a checkpoint holds the models' adapters (``adapters-<i>.safetensors``, peft's
    keys), not the frozen base around them, which accelerate would write whole: FLUX.1's
    transformer is 24 GB in bf16, SD 1.5's UNet 3.4 GB, the adapters a few MB. The optimizer, the
    learning-rate schedule and the RNG states are saved by accelerate as before. (diffusers' LoRA
    scripts register the same two hooks.)"""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    def save(models: list, weights: list, output_dir: str) -> None:
        for i, model in enumerate(models):
            state = get_peft_model_state_dict(accelerator.unwrap_model(model))
            save_file({k: v.detach().contiguous() for k, v in state.items()}, str(Path(output_dir) / f"adapters-{i}.safetensors"))
        weights.clear()  # accelerate writes no model weights

    def load(models: list, input_dir: str) -> None:
        for i, model in enumerate(models):
            set_peft_model_state_dict(accelerator.unwrap_model(model), load_file(str(Path(input_dir) / f"adapters-{i}.safetensors")))
        models.clear()  # loaded here: accelerate loads no model weights (this list is load_state's own)

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


@dataclass
class Checkpoints:
    folder: Path  # this training's checkpoints
    every: int  # steps between checkpoints

    def latest(self) -> tuple[int, Path] | None:
        """The newest whole checkpoint: (step, directory)."""
        found = [(int(p.name.removeprefix("step-")), p) for p in self.folder.glob("step-*") if p.name.removeprefix("step-").isdigit()]
        return max(found) if found else None

    def due(self, step: int, total: int) -> bool:
        return self.every > 0 and step % self.every == 0 and step < total

    def save(self, accelerator, step: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f".step-{step}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        accelerator.save_state(str(partial))
        partial.rename(self.folder / f"step-{step}")
        for old in self.folder.glob("step-*"):
            if old.name != f"step-{step}":
                shutil.rmtree(old, ignore_errors=True)
        log.info("Checkpoint saved at step %d.", step)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
