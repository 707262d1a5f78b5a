"""Scheduler names and their diffusers classes: the public dream templates' names (kept working)
and the A1111 sampler names of the SD-Dockerized API, as far as diffusers expresses them.

A1111's "DPM fast" and "DPM adaptive" have no diffusers scheduler and are not offered; "DPM++ 2S a"
is diffusers' singlestep DPM-Solver++ (diffusers' own mapping: it has no ancestral variant).
"""

from __future__ import annotations

from typing import Any

from dreambuild.errors import InputError

# name -> (diffusers class, config overrides)
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "DDIM": ("DDIMScheduler", {}),
    "DPMSolverMultistep": ("DPMSolverMultistepScheduler", {}),
    "HeunDiscrete": ("HeunDiscreteScheduler", {}),
    "K_EULER_ANCESTRAL": ("EulerAncestralDiscreteScheduler", {}),
    "K_EULER": ("EulerDiscreteScheduler", {}),
    "KLMS": ("LMSDiscreteScheduler", {}),
    # PLMS steps only, as SD's own scheduler config ships it: the Runge-Kutta warm-up needs more
    # steps than the schema's minimum, and a base whose config is DDIM's (no skip_prk_steps) failed.
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPCMultistep": ("UniPCMultistepScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM++ 2S a": ("DPMSolverSinglestepScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}),
    "LMS Karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2S a Karras": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DPM++ SDE Karras": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
}


def make_scheduler(name: str, config: Any, seed: int = 0):
    """A fresh scheduler of the named kind, configured like the model's own (betas, offsets).

    ``seed`` seeds the SDE schedulers' Brownian noise, which does not come from the pipeline's
    generator: without it the same seed would give a different image each time.
    """
    if name not in SCHEDULERS:
        raise InputError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    import diffusers

    cls, overrides = SCHEDULERS[name]
    if cls == "DPMSolverSDEScheduler":
        overrides = {**overrides, "noise_sampler_seed": seed}
    return getattr(diffusers, cls).from_config(config, **overrides)
