"""The trainer's text conditioning: Stable Diffusion 1.x/2.x's one CLIP text encoder, or SDXL's
two (the penultimate hidden states of both, concatenated, and the second one's pooled projection,
as diffusers' SDXL training scripts encode prompts).

prompt -> token ids (one per tokenizer) -> encoders -> (hidden states, pooled or None)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection


@dataclass
class TextEncoders:
    names: list[str]  # the pipeline's component names: text_encoder[, text_encoder_2]
    tokenizers: list
    models: list[torch.nn.Module]

    @property
    def xl(self) -> bool:
        return len(self.models) == 2

    @classmethod
    def load(cls, base: Path, xl: bool) -> "TextEncoders":
        names = ["text_encoder", "text_encoder_2"] if xl else ["text_encoder"]
        tokenizers = [
            AutoTokenizer.from_pretrained(base, subfolder=name.replace("text_encoder", "tokenizer"), local_files_only=True) for name in names
        ]
        classes = [CLIPTextModel, CLIPTextModelWithProjection] if xl else [CLIPTextModel]
        models = [c.from_pretrained(base, subfolder=name, local_files_only=True) for c, name in zip(classes, names)]
        return cls(names, tokenizers, models)

    def ids(self, text: str, device: torch.device) -> list[torch.Tensor]:
        return [
            t(text, truncation=True, padding="max_length", max_length=t.model_max_length, return_tensors="pt").input_ids.to(device)
            for t in self.tokenizers
        ]

    def encode(self, ids: list[torch.Tensor], models: list[torch.nn.Module] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states for the UNet's cross-attention, and SDXL's pooled embedding (None for SD).
        ``models`` replaces the loaded encoders (their accelerate-prepared wrappers)."""
        models = models or self.models
        if not self.xl:
            return models[0](ids[0])[0], None
        first = models[0](ids[0], output_hidden_states=True)
        second = models[1](ids[1], output_hidden_states=True)
        return torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1), second[0]


def sdxl_time_ids(resolution: int, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """SDXL's size and crop micro-conditioning: original size, crop top-left, target size. Photos
    are resized to the training resolution before cropping, so original = target and the crop
    starts at 0, 0 (diffusers' scripts with center crops)."""
    return torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], device=device, dtype=dtype).repeat(batch, 1)


@dataclass
class FluxEncoders:
    """FLUX.1's prompt encoders: CLIP ViT-L's pooled output (the transformer's global conditioning)
    and T5's hidden states (its text tokens), as diffusers' ``train_dreambooth_lora_flux.py``
    encodes them. T5 (4.7B parameters in FLUX.1) is used once: every training prompt is encoded
    up front, then it is freed (:meth:`free_t5`)."""

    clip_tokenizer: object
    clip: torch.nn.Module
    t5_tokenizer: object
    t5: torch.nn.Module | None
    sequence_length: int  # T5 tokens: 512 for dev, 256 for schnell

    @classmethod
    def load(cls, base: Path, sequence_length: int, t5_dtype: torch.dtype, device: torch.device) -> "FluxEncoders":
        from transformers import T5EncoderModel

        clip_tokenizer = AutoTokenizer.from_pretrained(base, subfolder="tokenizer", local_files_only=True)
        t5_tokenizer = AutoTokenizer.from_pretrained(base, subfolder="tokenizer_2", local_files_only=True)
        clip = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", local_files_only=True)
        t5 = T5EncoderModel.from_pretrained(base, subfolder="text_encoder_2", dtype=t5_dtype, local_files_only=True).to(device)
        t5.requires_grad_(False)
        return cls(clip_tokenizer, clip, t5_tokenizer, t5, sequence_length)

    def clip_ids(self, text: str, device: torch.device) -> torch.Tensor:
        return self.clip_tokenizer(text, truncation=True, padding="max_length", max_length=77, return_tensors="pt").input_ids.to(device)

    def pooled(self, ids: torch.Tensor, model: torch.nn.Module | None = None) -> torch.Tensor:
        """CLIP's pooled embedding of ``ids``; ``model`` replaces the loaded CLIP (its accelerate wrapper)."""
        return (model or self.clip)(ids, output_hidden_states=False).pooler_output

    @torch.no_grad()
    def t5_states(self, text: str) -> torch.Tensor:
        tokens = self.t5_tokenizer(text, truncation=True, padding="max_length", max_length=self.sequence_length, return_tensors="pt")
        return self.t5(tokens.input_ids.to(self.t5.device))[0]

    def free_t5(self) -> None:
        self.t5 = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
