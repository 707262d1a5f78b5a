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
