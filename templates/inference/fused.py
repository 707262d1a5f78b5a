"""LoRAs on a compiled UNet or FLUX transformer (``DREAMBUILD_TORCH_COMPILE=1``): fused into the
weights in place, so switching them never recompiles.

the LoRAs a prediction asks for (a version's, lora_weights, extra_lora) → the same as the last
prediction's: nothing to do → else the weights the last ones changed restored from exact copies →
each loaded by diffusers' loaders into the uncompiled UNet (and text encoders) → fused at its
scale → the adapter layers removed. The compiled graph then sees the same modules and parameters
with new values: no guard fails, nothing recompiles.

Why not adapters: peft's adapter layers change the UNet's modules, which the compiled graph is
guarded on, so each new set would recompile (a minute on a GPU). diffusers' hotswap avoids that
for the UNet but refuses text-encoder adapters (diffusers 0.42), which the trainer writes. Fused,
a version's images are exactly those of its own server (which fuses too); the price is a copy of
the weights its LoRAs touch (the attention projections) and a fuse per switch (milliseconds).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from templates.inference.loras import _quiet_loading, digest_of, fuse_adapters, load_adapter

log = logging.getLogger(__name__)


class FusedLoras:
    """The LoRAs fused into one compiled pipeline's weights; the same interface as
    :class:`~templates.inference.loras.LoraAdapters`."""

    def __init__(self, pipe: Any, raw_denoiser: Any, name: str = "unet") -> None:
        self.pipe, self.raw_denoiser, self.name = pipe, raw_denoiser, name  # name: unet, or FLUX's transformer
        self._saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (parameter, its value before fusing)
        self._fused: tuple[tuple[str, float], ...] = ()  # (sha256, scale) of what is fused now
        self.load_seconds = 0.0  # spent loading and fusing in the last activate (0: fused already)

    def activate(self, loras: list[tuple[str, Path, float]]) -> None:
        """Fuse ``loras`` ((input name, file, scale) each) unless they are fused already; none: the plain weights."""
        wanted = tuple(sorted((digest_of(path), float(scale)) for _, path, scale in loras))
        self.load_seconds = 0.0
        if wanted == self._fused:
            return
        started = time.perf_counter()
        self._restore()
        if not loras:
            return
        compiled = getattr(self.pipe, self.name)
        setattr(self.pipe, self.name, self.raw_denoiser)  # loaders and fusing work on the module itself
        try:
            names = [f"fused_{i}" for i in range(len(loras))]
            for name, (field, path, _) in zip(names, loras):
                load_adapter(self.pipe, field, path, name)
            self._save_targets()
            with _quiet_loading():
                self.pipe.set_adapters(names, adapter_weights=[scale for _, _, scale in loras])
                fuse_adapters(self.pipe, names)  # the adapter layers removed too
        except BaseException:
            self.pipe.unload_lora_weights()
            self._restore()
            raise
        finally:
            setattr(self.pipe, self.name, compiled)
        self._fused = wanted
        self.load_seconds = time.perf_counter() - started
        log.info("LoRA fused: %s.", ", ".join(f"{field} x{scale:g}" for field, _, scale in loras))

    def deactivate(self) -> None:
        """Nothing: what is fused stays until a prediction asks for other LoRAs (the next one often asks for the same)."""

    def _save_targets(self) -> None:
        from peft.tuners.lora import LoraLayer

        for component in (getattr(self.pipe, self.name), getattr(self.pipe, "text_encoder", None), getattr(self.pipe, "text_encoder_2", None)):
            for module in component.modules() if component is not None else ():
                if isinstance(module, LoraLayer):
                    for parameter in (module.base_layer.weight, getattr(module.base_layer, "bias", None)):
                        if parameter is not None and id(parameter) not in self._saved:
                            # on the CPU: GPU memory stays the model's; a restore copies back in milliseconds
                            self._saved[id(parameter)] = (parameter, parameter.detach().to("cpu", copy=True))

    def _restore(self) -> None:
        with torch.no_grad():
            for parameter, value in self._saved.values():
                parameter.copy_(value)
        self._saved.clear()
        self._fused = ()
