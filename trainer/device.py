"""Where training runs and with what precision: CUDA when present, CPU otherwise.

Options that only exist on CUDA (fp16/bf16 autocast, 8-bit Adam) fall back on the CPU with a
logged line instead of failing deep inside a library.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from dreambuild.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DevicePlan:
    device: torch.device
    mixed_precision: str  # effective: "no", "fp16" or "bf16"
    use_8bit_adam: bool

    @property
    def weight_dtype(self) -> torch.dtype:
        """dtype of the frozen models (VAE, and the text encoder when it is not trained)."""
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.mixed_precision, torch.float32)

    @property
    def inference_dtype(self) -> torch.dtype:
        return torch.float16 if self.device.type == "cuda" else torch.float32


def plan_device(mixed_precision: str, use_8bit_adam: bool) -> DevicePlan:
    """Choose the device and the precision options that it supports."""
    if torch.cuda.is_available():
        if mixed_precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise InputError("mixed_precision=bf16 is not supported by this GPU; use fp16 or no")
        if use_8bit_adam:
            try:
                import bitsandbytes  # noqa: F401
            except ImportError:
                raise InputError("use_8bit_adam needs the bitsandbytes package, which is not installed") from None
        plan = DevicePlan(torch.device("cuda"), mixed_precision, use_8bit_adam)
    else:
        if mixed_precision != "no":
            log.info("No CUDA device: mixed_precision=%s falls back to full precision (fp32) on the CPU.", mixed_precision)
        if use_8bit_adam:
            log.info("No CUDA device: use_8bit_adam falls back to torch.optim.AdamW (bitsandbytes needs CUDA).")
        plan = DevicePlan(torch.device("cpu"), "no", False)
    name = torch.cuda.get_device_name() if plan.device.type == "cuda" else "CPU"
    log.info("Training on %s, mixed precision %s, optimizer %s.", name, plan.mixed_precision, "AdamW8bit" if plan.use_8bit_adam else "AdamW")
    return plan
