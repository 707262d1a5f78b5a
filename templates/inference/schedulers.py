"""Scheduler names (as the public dream templates spell them) and their diffusers classes."""

from __future__ import annotations

from typing import Any

from dreambuild.errors import InputError

SCHEDULERS: dict[str, str] = {
    "DDIM": "DDIMScheduler",
    "DPMSolverMultistep": "DPMSolverMultistepScheduler",
    "HeunDiscrete": "HeunDiscreteScheduler",
    "K_EULER_ANCESTRAL": "EulerAncestralDiscreteScheduler",
    "K_EULER": "EulerDiscreteScheduler",
    "KLMS": "LMSDiscreteScheduler",
    "PNDM": "PNDMScheduler",
    "UniPCMultistep": "UniPCMultistepScheduler",
}


def make_scheduler(name: str, config: Any):
    """A fresh scheduler of the named kind, configured like the model's own (betas, offsets)."""
    if name not in SCHEDULERS:
        raise InputError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    import diffusers

    return getattr(diffusers, SCHEDULERS[name]).from_config(config)
