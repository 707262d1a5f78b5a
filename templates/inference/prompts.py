"""Prompt embeddings through compel: weighting syntax (``(red)1.3``, ``dragon++``,
``beach--``) and prompts longer than CLIP's 77 tokens (encoded in 77-token chunks)."""

from __future__ import annotations

import torch


class PromptEncoder:
    """Encodes a prompt and its negative prompt into padded, equally long embeddings."""

    def __init__(self, pipe) -> None:
        from compel import CompelForSD

        self._compel = CompelForSD(pipe)

    @torch.no_grad()
    def encode(self, prompt: str, negative_prompt: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        conditioning = self._compel(prompt, negative_prompt or "")
        return conditioning.embeds, conditioning.negative_embeds
