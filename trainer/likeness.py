"""Measured likeness, as the DreamBooth paper (Ruiz et al., 2023, §4.1) defines it: the model's
images of the subject in new contexts → DINO (ViT-S/16, its CLS token) and CLIP image
embeddings of them and of the instance photos → **subject fidelity**: DINO and CLIP-I, the mean
pairwise cosine similarity between generated and real images; **prompt fidelity**: CLIP-T, the
mean cosine similarity between each image and its prompt's CLIP text embedding (the prompt with
the class, not the identifier, as a CLIP model knows it) → **prior drift**: CLIP-I between the
class prompt's images now and the base model's (1.0: the class is as it was; lower: the
fine-tune is overwriting what the base knew of the class, the overfitting prior preservation
guards against).

The embedding models are baked into the trainer image like the bases (``python -m
trainer.fetch_eval_models`` → ``eval-models/dino`` and ``eval-models/clip`` of the checkout, or
``DREAMBUILD_EVAL_MODELS``) and named with their digests in ``metrics.json``; the tests use tiny
random ones built locally (``fixtures/tiny_models.py``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from dreambuild.errors import InputError
from dreambuild.layout import baked_pipeline_digest

log = logging.getLogger(__name__)

DINO_REPO = "facebook/dino-vits16"  # the paper's DINO ViT-S/16
CLIP_REPO = "openai/clip-vit-base-patch32"
# New contexts for the subject, after the paper's evaluation prompts; each is appended to the
# instance prompt for generation and to the class prompt for CLIP-T.
CONTEXTS = ("in the jungle", "on a beach", "in the snow", "on top of a wooden floor")
SCORES = ("dino", "clip_i", "clip_t", "prior_drift")
# keep_best: an evaluation qualifies while its CLIP-T is within 10% of the base's (a fine-tune
# that stopped following prompts is not the best one, however like the subject its images are).
PROMPT_FLOOR = 0.9


def eval_models_dir() -> Path:
    """Where the embedding models are: ``DREAMBUILD_EVAL_MODELS``, else ``eval-models`` beside
    the trainer's code (``/src/eval-models`` in the trainer image, the checkout's for the local
    runner), where ``python -m trainer.fetch_eval_models`` writes them."""
    return Path(os.environ.get("DREAMBUILD_EVAL_MODELS") or Path(__file__).resolve().parent.parent / "eval-models")


def mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """The mean cosine similarity over every pair (a row of ``a``, a row of ``b``)."""
    a, b = torch.nn.functional.normalize(a.float(), dim=-1), torch.nn.functional.normalize(b.float(), dim=-1)
    return float((a @ b.T).mean())


def mean_paired_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """The mean cosine similarity of row i of ``a`` with row i of ``b``."""
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).mean())


@dataclass
class EvalPrompts:
    """What is generated and against which text it is scored."""

    subject: list[str]  # generation prompts: the instance prompt in new contexts
    texts: list[str]  # CLIP-T's texts: the same contexts with the class
    klass: str | None  # the class prompt (prior drift), if the training has one

    @classmethod
    def build(cls, instance_prompt: str, class_prompt: str | None) -> EvalPrompts:
        subject = [f"{instance_prompt} {context}" for context in CONTEXTS]
        texts = [f"{class_prompt or instance_prompt} {context}" for context in CONTEXTS]
        return cls(subject, texts, class_prompt)


@dataclass
class Scorer:
    """The two embedding models, loaded once per training."""

    dino: torch.nn.Module
    dino_processor: object
    clip: torch.nn.Module
    clip_processor: object
    device: torch.device
    models: dict[str, dict[str, str]]  # "dino"/"clip" -> {"name": its repository, "digest"}: what metrics.json names
    real_dino: torch.Tensor | None = None
    real_clip: torch.Tensor | None = None
    base_class: torch.Tensor | None = None  # CLIP embeddings of the base model's class images
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # spent evaluating (generation included)

    @classmethod
    def load(cls, root: Path, device: torch.device) -> Scorer:
        from transformers import AutoImageProcessor, CLIPModel, CLIPProcessor, ViTModel

        dino_dir, clip_dir = root / "dino", root / "clip"
        for folder in (dino_dir, clip_dir):
            if not (folder / "config.json").is_file():
                raise InputError(
                    f"measure_likeness needs the evaluation models, and {folder} has none: bake them into the trainer "
                    "image with `python -m trainer.fetch_eval_models` (or set DREAMBUILD_EVAL_MODELS)"
                )
        dino = ViTModel.from_pretrained(dino_dir, add_pooling_layer=False, local_files_only=True).to(device).eval()
        clip = CLIPModel.from_pretrained(clip_dir, local_files_only=True).to(device).eval()
        try:  # the repositories fetch_eval_models took them from
            names = json.loads((root / "models.json").read_text())
        except (OSError, ValueError):
            names = {}
        models = {key: {"name": str(names.get(key) or "local"), "digest": baked_pipeline_digest(root / key)} for key in ("dino", "clip")}
        return cls(
            dino,
            AutoImageProcessor.from_pretrained(dino_dir, local_files_only=True),
            clip,
            CLIPProcessor.from_pretrained(clip_dir, local_files_only=True),
            device,
            models,
        )

    @torch.no_grad()
    def dino_embeddings(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.dino_processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        return self.dino(pixel_values=pixels).last_hidden_state[:, 0]  # the CLS token, as the paper's DINO features

    @torch.no_grad()
    def clip_image_embeddings(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.clip_processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        return _features(self.clip.get_image_features(pixel_values=pixels))

    @torch.no_grad()
    def clip_text_embeddings(self, texts: list[str]) -> torch.Tensor:
        tokens = self.clip_processor(text=texts, return_tensors="pt", padding=True, truncation=True).to(self.device)
        return _features(self.clip.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]))

    def set_real(self, photos: list[Image.Image]) -> None:
        """The instance photos, embedded once."""
        self.real_dino, self.real_clip = self.dino_embeddings(photos), self.clip_image_embeddings(photos)

    def score(self, step: int, subject: list[Image.Image], texts: list[str], klass: list[Image.Image] | None) -> dict:
        """The scores of one evaluation, recorded in :attr:`history`. The first with class images
        (the base model's, before training) is prior drift's reference."""
        generated_clip = self.clip_image_embeddings(subject)
        scores = {
            "step": step,
            "dino": round(mean_pairwise_cosine(self.dino_embeddings(subject), self.real_dino), 4),
            "clip_i": round(mean_pairwise_cosine(generated_clip, self.real_clip), 4),
            "clip_t": round(mean_paired_cosine(generated_clip, self.clip_text_embeddings(texts)), 4),
        }
        if klass:
            now = self.clip_image_embeddings(klass)
            if self.base_class is None:
                self.base_class = now
            scores["prior_drift"] = round(mean_paired_cosine(now, self.base_class), 4)
        self.history.append(scores)
        return scores

    def report(self, prompts: EvalPrompts) -> dict:
        """``metrics.json``'s content: every evaluation, the last as ``final``, the models and prompts used."""
        return {
            "definitions": "DreamBooth (Ruiz et al. 2023): dino and clip_i = mean pairwise cosine similarity of generated and "
            "real subject images (DINO ViT-S/16 CLS, CLIP image embeddings); clip_t = mean cosine similarity of each image "
            "with its prompt (class instead of identifier); prior_drift = CLIP-I of the class prompt's images against the base's",
            "prompts": {"subject": prompts.subject, "clip_t": prompts.texts, "class": prompts.klass},
            "models": self.models,
            "steps": self.history,
            "final": self.history[-1] if self.history else None,
            "evaluation_seconds": round(self.seconds, 3),
        }


def _features(output) -> torch.Tensor:
    """CLIP's projected embeddings: a tensor (transformers < 5) or an output's pooler_output."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@dataclass
class Evaluation:
    """One training's likeness evaluations: what to generate, how, and the scorer."""

    scorer: Scorer
    prompts: EvalPrompts
    seed: int
    steps: int  # denoising steps of the evaluation's images
    guidance: float
    keep_best: bool = False
    extra: dict = field(default_factory=dict)  # more of the pipeline's arguments (FLUX: the size, the T5 prompt length)
    kept: dict | None = None  # keep_best: the evaluation whose weights are kept
    kept_weights: list[torch.Tensor] | None = None  # its trainable parameters, on the CPU

    @torch.no_grad()
    def __call__(self, pipe, step: int, autocast) -> dict:
        """Generate the evaluation's images with ``pipe`` (seeded: every evaluation the same
        noise) and score them; the time counts into ``scorer.seconds``."""
        started = time.perf_counter()
        pipe.set_progress_bar_config(disable=True)

        def images(prompts: list[str]) -> list[Image.Image]:
            generator = [torch.Generator("cpu").manual_seed(self.seed + i) for i in range(len(prompts))]
            with autocast():
                return pipe(prompts, num_inference_steps=self.steps, guidance_scale=self.guidance, generator=generator, **self.extra).images

        subject = images(self.prompts.subject)
        klass = images([self.prompts.klass] * 2) if self.prompts.klass else None
        scores = self.scorer.score(step, subject, self.prompts.texts, klass)
        self.scorer.seconds += time.perf_counter() - started
        log.info("Likeness at step %d: %s.", step, ", ".join(f"{k} {scores[k]}" for k in SCORES if k in scores))
        return scores

    def consider(self, scores: dict, trainable: list[torch.Tensor]) -> None:
        """keep_best: keep a copy of the trainable weights when this evaluation is the best so far
        (the highest DINO among those whose CLIP-T holds PROMPT_FLOOR of the base's; a later one
        wins a tie). The base (step 0) sets the floor and is never kept."""
        if not self.keep_best or scores["step"] == 0:
            return
        base = self.scorer.history[0]["clip_t"]
        if scores["clip_t"] < base - (1 - PROMPT_FLOOR) * abs(base):
            return
        if self.kept is None or scores["dino"] >= self.kept["dino"]:
            self.kept = scores
            self.kept_weights = [p.detach().to("cpu", copy=True) for p in trainable]

    @torch.no_grad()
    def restore(self, trainable: list[torch.Tensor], last_step: int) -> bool:
        """keep_best, after the last evaluation: put the kept weights back when an earlier step
        won; True when it did."""
        if not self.keep_best:
            return False
        if self.kept is None:
            log.warning("keep_best: no evaluation held the prompt-fidelity floor; the last step's model is shipped.")
            return False
        if self.kept["step"] == last_step:
            return False
        for param, saved in zip(trainable, self.kept_weights):
            param.copy_(saved.to(param.device, param.dtype))
        log.info("keep_best: shipping the model of step %d (DINO %s), not of step %d.", self.kept["step"], self.kept["dino"], last_step)
        return True

    def report(self) -> dict:
        report = self.scorer.report(self.prompts)
        if self.keep_best:
            report["kept_step"] = self.kept["step"] if self.kept else None
        return report
