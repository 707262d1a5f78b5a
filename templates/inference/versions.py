"""LoRA versions served by their template's warm base ("fast booting", as Replicate calls it).

worker: a LoRA version's prediction → the template's server, started once with
``DREAMBUILD_SERVE_BASE=1`` (its baked base loaded, no fine-tune fused) → the version's weights
folder (its ``pytorch_lora_weights.safetensors`` and ``args.json``, from the worker's layer cache)
named in the Cog request's context (``VERSION_WEIGHTS``) → :meth:`BaseVersions.resolve` (checked against the base it
was trained on, once per folder) → an adapter of :class:`~templates.inference.loras.LoraAdapters`
(loaded once, kept in its LRU, so switching back is free) with the user's LoRAs on top — or,
with a compiled UNet, fused in place (:mod:`templates.inference.fused`: nothing recompiles).

Served this way a version's adapters are not fused: a fused layer computes ``x(W + sBA)``, an
unfused one ``xW + s(xB)A``; the two differ only by float rounding (fp32: the same PNG or a
pixel off by one; fp16 on a GPU: a few levels in a few pixels — tests/test_templates_server.py
holds the tolerance).

A full fine-tune cannot share a base; its server can still be started ahead: a worker keeps one
of its template's servers up with no weights (``DREAMBUILD_WEIGHTS_LATER=1``), and the first
prediction of the next version of that template names its weights folder (``WEIGHTS``), which
the server loads then — Cog runs ``setup()`` once, before any weights are known, so the load moves
into that first prediction (``weights_load_time`` in its metrics).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dreambuild.errors import InputError
from dreambuild.layout import LORA_WEIGHTS

VERSION_WEIGHTS = "dreambuild_version_weights"  # the Cog request context's key naming a version's weights folder
WEIGHTS = "dreambuild_weights"  # the context's key naming the weights of a server started ahead (DREAMBUILD_WEIGHTS_LATER)


def serving_base() -> bool:
    """``DREAMBUILD_SERVE_BASE=1``: load the template's baked base and run LoRA versions on it."""
    return os.environ.get("DREAMBUILD_SERVE_BASE", "") in ("1", "true", "yes")


def weights_later() -> bool:
    """``DREAMBUILD_WEIGHTS_LATER=1``: a server started ahead of its version (Python, torch and the
    Cog server up, the safety checker loaded); its first prediction names the weights to load."""
    return os.environ.get("DREAMBUILD_WEIGHTS_LATER", "") in ("1", "true", "yes")


@dataclass(frozen=True)
class VersionWeights:
    adapters: Path  # the version's LoRA (pytorch_lora_weights.safetensors)
    instance_prompt: str | None  # what an empty prompt means for this version


class BaseVersions:
    """The LoRA versions one served base runs: each folder checked once, then remembered."""

    def __init__(self, base_digest: str) -> None:
        self.base_digest = base_digest
        self._known: dict[tuple[str, int, int], VersionWeights] = {}

    def resolve(self, folder: Path) -> VersionWeights:
        lora, args = folder / LORA_WEIGHTS, folder / "args.json"
        if not lora.is_file() or not args.is_file():
            raise InputError(f"the version's weights in {folder} are not a LoRA output ({LORA_WEIGHTS} and args.json)")
        stat = lora.stat()
        key = (str(lora.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._known:
            recorded = json.loads(args.read_text())
            if recorded.get("base_digest") != self.base_digest:
                raise InputError(
                    f"the version's LoRA was trained on base {recorded.get('base_digest') or '(not named)'}, "
                    f"and this server serves base {self.base_digest}"
                )
            self._known[key] = VersionWeights(lora, recorded.get("instance_prompt"))
        return self._known[key]
