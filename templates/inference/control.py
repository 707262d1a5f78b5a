"""ControlNet conditioning images: a user's control image turned into Canny edges or an
OpenPose skeleton (controlnet-aux), at the output size."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dreambuild.errors import ControlImageError

log = logging.getLogger(__name__)

ANNOTATOR_FILES = ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")
# OpenPose finds keypoints at this scale whatever the output size (its training scale).
POSE_DETECT_RESOLUTION = 512


def controlnet_aux():
    """Import controlnet-aux, whose package import loads every annotator and warns about the
    optional ones (mediapipe, timm aliases); none of that concerns Canny or OpenPose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import controlnet_aux
    return controlnet_aux


@dataclass
class ControlPreprocessor:
    kind: str  # "canny" or "openpose"
    detector: Any = None
    problem: str | None = None  # why it cannot run, when it cannot

    @classmethod
    def load(cls, kind: str, annotators: Path, device: torch.device) -> "ControlPreprocessor":
        if kind == "canny":
            return cls(kind, controlnet_aux().CannyDetector())
        if kind != "openpose":
            raise ValueError(f"unknown control preprocessor {kind!r}")
        missing = [name for name in ANNOTATOR_FILES if not (annotators / name).is_file()]
        if missing:
            return cls(kind, problem=f"OpenPose annotator checkpoints missing in {annotators}: {', '.join(missing)}")
        try:
            detector = controlnet_aux().OpenposeDetector.from_pretrained(str(annotators)).to(device)
        except Exception as exc:  # noqa: BLE001 - report at prediction time, like missing files
            return cls(kind, problem=f"OpenPose annotator checkpoints in {annotators} cannot be loaded: {exc}")
        return cls(kind, detector)

    def __call__(self, image: Image.Image, size: tuple[int, int], *, low_threshold: int = 100, high_threshold: int = 200,
                 include_hand: bool = False, include_face: bool = False) -> Image.Image:
        """The conditioning image for ``image``, resized to ``size`` (width, height)."""
        if self.problem:
            raise ControlImageError(f"control_image preprocessing ({self.kind}) cannot run: {self.problem}")
        short_side = min(size)
        try:
            if self.kind == "canny":
                if low_threshold > high_threshold:
                    raise ValueError(f"low_threshold={low_threshold} is above high_threshold={high_threshold}")
                detected = self.detector(image, low_threshold=low_threshold, high_threshold=high_threshold,
                                         detect_resolution=short_side, image_resolution=short_side, output_type="pil")
            else:
                detected = self.detector(image, detect_resolution=POSE_DETECT_RESOLUTION, image_resolution=short_side,
                                         include_hand=include_hand, include_face=include_face, output_type="pil")
        except Exception as exc:  # noqa: BLE001 - any failure inside the annotator is the control image's
            raise ControlImageError(f"control_image preprocessing ({self.kind}) failed: {exc}") from None
        return detected.convert("RGB").resize(size, Image.Resampling.BILINEAR)
