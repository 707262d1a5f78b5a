"""Prompt embeddings through compel, in either syntax users bring: compel's (``(red)1.3``,
``dragon++``, ``beach--``) or AUTOMATIC1111's (``(word)`` x1.1, ``((word))`` x1.21,
``[word]`` /1.1, ``(word:1.3)``); prompts longer than CLIP's 77 tokens are encoded in chunks.

prompt -> syntax (auto-detected or asked) -> A1111 weights rewritten as compel's -> compel -> embeddings

One encoder for both: an A1111 prompt is parsed into (text, weight) runs, as A1111's own
``parse_prompt_attention`` does, and written back as compel's ``(text)weight``, so a weight means
the same in both syntaxes. No maintained library parses A1111's syntax into compel (compel has
no A1111 mode; the diffusers community "lpw" pipeline is a script, not a package), hence the
small parser below.
"""

from __future__ import annotations

import re

import torch

from dreambuild.errors import InputError

SYNTAXES = ("auto", "compel", "a1111")

# A1111's tokens: escapes, brackets, ":weight)" closers, plain text (modules/prompt_parser.py).
_A1111_TOKEN = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
_A1111_MARK = re.compile(r"\(\s*[^()]*?:\s*[+-]?[.\d]+\s*\)|\[[^\[\]]+\]|\(\(")
_COMPEL_MARK = re.compile(r"\)\s*[+-]|\)\.?\d|\w[+-]{1,}(?=\s|$|,)|\.(and|blend|swap)\(")
ROUND, SQUARE = 1.1, 1 / 1.1


def detect_syntax(prompt: str) -> str:
    """``compel`` or ``a1111``: compel's marks (``)1.3``, ``)+``, ``word++``, ``.and(``) win;
    then A1111's (``(x:1.3)``, ``[x]``, ``((x))``, or any other bracket); plain text is the same
    in both and goes to compel."""
    if _COMPEL_MARK.search(prompt):
        return "compel"
    if _A1111_MARK.search(prompt) or "(" in prompt or "[" in prompt:
        return "a1111"
    return "compel"


def a1111_weights(prompt: str) -> list[tuple[str, float]]:  # noqa: C901
    """(text, weight) runs of an A1111 prompt, neighbours of equal weight merged; unclosed
    brackets apply to the end of the prompt, as in A1111."""
    runs: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in _A1111_TOKEN.finditer(prompt):
        text, weight = match.group(0), match.group(1)
        if text.startswith("\\"):
            runs.append([text[1:] or "\\", 1.0])
        elif text == "(":
            round_open.append(len(runs))
        elif text == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open:
            multiply(round_open.pop(), float(weight))
        elif text == ")" and round_open:
            multiply(round_open.pop(), ROUND)
        elif text == "]" and square_open:
            multiply(square_open.pop(), SQUARE)
        else:
            runs.append([text, 1.0])
    for start in round_open:
        multiply(start, ROUND)
    for start in square_open:
        multiply(start, SQUARE)
    merged: list[list] = []
    for text, weight in runs:
        if merged and merged[-1][1] == weight:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [(text, weight) for text, weight in merged if text.strip()] or [("", 1.0)]


def _compel_text(text: str) -> str:
    """``text`` literal for compel: its own syntax characters escaped."""
    return re.sub(r'([()"])', r"\\\1", text)


def a1111_to_compel(prompt: str) -> str:
    """The same weights in compel's syntax: ``(text)weight`` for each weighted run."""
    parts = []
    for text, weight in a1111_weights(prompt):
        literal = _compel_text(text.strip())
        parts.append(literal if weight == 1.0 else f"({literal}){weight:.6g}")
    return " ".join(parts)


def to_compel(prompt: str, syntax: str) -> str:
    """``prompt`` in compel's syntax, from the named syntax (``auto`` detects it)."""
    if syntax not in SYNTAXES:
        raise InputError(f"unknown prompt_syntax {syntax!r}; choose one of: {', '.join(SYNTAXES)}")
    if syntax == "auto":
        syntax = detect_syntax(prompt)
    return a1111_to_compel(prompt) if syntax == "a1111" else prompt


class PromptEncoder:
    """Encodes a prompt and its negative prompt into padded, equally long embeddings (for SDXL,
    both text encoders' and the pooled ones)."""

    def __init__(self, pipe) -> None:
        from compel import CompelForSD, CompelForSDXL

        self.xl = getattr(pipe, "text_encoder_2", None) is not None
        self._compel = CompelForSDXL(pipe) if self.xl else CompelForSD(pipe)

    @torch.no_grad()
    def encode(self, prompt: str, negative_prompt: str | None, syntax: str = "compel") -> tuple[torch.Tensor, torch.Tensor]:
        embeds = self.pipeline_kwargs(prompt, negative_prompt, syntax)
        return embeds["prompt_embeds"], embeds["negative_prompt_embeds"]

    @torch.no_grad()
    def pipeline_kwargs(self, prompt: str, negative_prompt: str | None, syntax: str = "compel") -> dict[str, torch.Tensor]:
        """The embeddings as the pipelines take them (``prompt_embeds``, ``negative_prompt_embeds``,
        and for SDXL the pooled pair)."""
        main, negative = to_compel(prompt, syntax), to_compel(negative_prompt or "", syntax)
        if self.xl:
            conditioning = self._compel(main, negative_prompt=negative)
        else:
            conditioning = self._compel(main, negative)
        kwargs = {"prompt_embeds": conditioning.embeds, "negative_prompt_embeds": conditioning.negative_embeds}
        if self.xl:
            kwargs.update(pooled_prompt_embeds=conditioning.pooled_embeds, negative_pooled_prompt_embeds=conditioning.negative_pooled_embeds)
        return kwargs
