"""The Stable Diffusion safety checker, failing closed: when its weights are missing or broken,
every prediction that needs it fails instead of returning unchecked images."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dreambuild.errors import SafetyCheckerError

log = logging.getLogger(__name__)


@dataclass
class SafetyChecker:
    checker: Any = None
    feature_extractor: Any = None
    problem: str | None = None  # why it cannot run, when it cannot

    @classmethod
    def load(cls, path: Path, device: torch.device, dtype: torch.dtype) -> "SafetyChecker":
        """Load from ``path``; a missing or unloadable checker is recorded, not raised, so that
        the model still starts and ``disable_safety_check`` predictions still work."""
        if not (path / "config.json").is_file():
            return cls(problem=f"safety checker weights not found at {path}")
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        try:
            checker = StableDiffusionSafetyChecker.from_pretrained(path, dtype=dtype, local_files_only=True)
            extractor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any load failure means: cannot check
            return cls(problem=f"safety checker at {path} cannot be loaded: {exc}")
        return cls(checker=checker.to(device).eval(), feature_extractor=extractor)

    def flags(self, images: list[Image.Image]) -> list[bool]:
        """One flag per image: True when the checker finds NSFW content."""
        if self.problem:
            raise SafetyCheckerError(
                f"{self.problem}; the safety checker is required unless disable_safety_check is true (set DREAMBUILD_SAFETY_CHECKER to its directory)"
            )
        param = next(self.checker.parameters())
        features = self.feature_extractor(images, return_tensors="pt").pixel_values.to(param.device, param.dtype)
        arrays = np.stack([np.asarray(image, dtype=np.float32) / 255.0 for image in images])
        with torch.no_grad():
            _, nsfw = self.checker(images=arrays, clip_input=features)
        return [bool(flag) for flag in nsfw]
