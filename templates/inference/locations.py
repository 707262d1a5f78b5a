"""Where a template finds weights: the fine-tune (``weights/``, added by the image builder)
and the template's own, baked into the template image at build time (templates/*/cog.yaml)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

BAKED = Path("/opt/dreambuild")


@dataclass(frozen=True)
class WeightLocations:
    weights: Path  # the fine-tuned diffusers pipeline, or a LoRA output for the base below
    controlnet: Path  # a diffusers ControlNetModel (ControlNet templates)
    annotators: Path  # body_pose_model.pth, hand_pose_model.pth, facenet.pth (pose template)
    safety_checker: Path  # StableDiffusionSafetyChecker + its CLIPImageProcessor
    base: Path = BAKED / "base"  # a base pipeline baked in the template: what a LoRA output applies to

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "WeightLocations":
        """Defaults are the image's paths; each can be overridden by an environment variable."""
        return cls(
            # Relative to the working directory: /src/weights in a Cog image.
            weights=Path(environ.get("DREAMBUILD_WEIGHTS", "weights")),
            controlnet=Path(environ.get("DREAMBUILD_CONTROLNET", str(BAKED / "controlnet"))),
            annotators=Path(environ.get("DREAMBUILD_ANNOTATORS", str(BAKED / "annotators"))),
            safety_checker=Path(environ.get("DREAMBUILD_SAFETY_CHECKER", str(BAKED / "safety-checker"))),
            base=Path(environ.get("DREAMBUILD_BASE", str(BAKED / "base"))),
        )
