"""ControlNet conditioning images: a user's control image turned into what the template's
ControlNet was trained on (Canny edges, an OpenPose skeleton, a depth map, soft edges, straight
lines, normals, a scribble, an ADE20K segmentation), at the output size.

Annotators: controlnet-aux's detectors for Canny, OpenPose, HED, MLSD, NormalBae and PiDiNet;
transformers models for depth (DPT) and segmentation (UperNet), which load from any saved config.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dreambuild.errors import ControlImageError

log = logging.getLogger(__name__)

# The checkpoints each controlnet-aux detector reads from the annotators directory (all from
# lllyasviel/Annotators); depth and seg read a transformers model directory instead.
ANNOTATOR_FILES: dict[str, tuple[str, ...]] = {
    "canny": (),
    "openpose": ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
    "hed": ("ControlNetHED.pth",),
    "mlsd": ("mlsd_large_512_fp32.pth",),
    "normal": ("scannet.pt",),
    "scribble": ("table5_pidinet.pth",),  # PiDiNet: only to derive a scribble from a photo
    "depth": ("config.json", "preprocessor_config.json"),
    "seg": ("config.json", "preprocessor_config.json"),
}
# OpenPose finds keypoints at this scale whatever the output size (its training scale).
POSE_DETECT_RESOLUTION = 512


def controlnet_aux():
    """Import controlnet-aux, whose package import loads every annotator and warns about the
    optional ones (mediapipe, timm aliases); none of that concerns the detectors used here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import controlnet_aux
    return controlnet_aux


def _load_detector(kind: str, annotators: Path, device: torch.device) -> Any:
    if kind in ("depth", "seg"):
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation, UperNetForSemanticSegmentation

        model_class = AutoModelForDepthEstimation if kind == "depth" else UperNetForSemanticSegmentation
        model = model_class.from_pretrained(annotators, local_files_only=True).to(device).eval()
        return model, AutoImageProcessor.from_pretrained(annotators, local_files_only=True)
    aux = controlnet_aux()
    if kind == "canny":
        return aux.CannyDetector()
    detector = {
        "openpose": aux.OpenposeDetector,
        "hed": aux.HEDdetector,
        "mlsd": aux.MLSDdetector,
        "normal": aux.NormalBaeDetector,
        "scribble": aux.PidiNetDetector,
    }[kind]
    return detector.from_pretrained(str(annotators)).to(device)


@dataclass
class ControlPreprocessor:
    kind: str  # a key of ANNOTATOR_FILES
    detector: Any = None
    problem: str | None = None  # why the detector cannot run, when it cannot

    @classmethod
    def load(cls, kind: str, annotators: Path, device: torch.device) -> "ControlPreprocessor":
        """Load the detector; missing or broken checkpoints are recorded, not raised, so the model
        still starts and predictions that need no preprocessing still run."""
        if kind not in ANNOTATOR_FILES:
            raise ValueError(f"unknown control preprocessor {kind!r}")
        missing = [name for name in ANNOTATOR_FILES[kind] if not (annotators / name).is_file()]
        if missing:
            return cls(kind, problem=f"{kind} annotator files missing in {annotators}: {', '.join(missing)}")
        try:
            return cls(kind, _load_detector(kind, annotators, device))
        except Exception as exc:  # noqa: BLE001 - report at prediction time, like missing files
            return cls(kind, problem=f"{kind} annotator in {annotators} cannot be loaded: {exc}")

    def __call__(self, image: Image.Image, size: tuple[int, int], options: dict | None = None) -> Image.Image:
        """The conditioning image for ``image``, resized to ``size`` (width, height); ``options``
        are the template's own inputs (thresholds, include_hand, scribble_from_photo...)."""
        options = options or {}
        if self.kind == "scribble" and not options.get("scribble_from_photo"):
            return scribble_from_drawing(image).resize(size, Image.Resampling.NEAREST)
        if self.problem:
            raise ControlImageError(f"control_image preprocessing ({self.kind}) cannot run: {self.problem}")
        try:
            detected = self._detect(image, min(size), options)
        except Exception as exc:  # noqa: BLE001 - any failure inside the annotator is the control image's
            raise ControlImageError(f"control_image preprocessing ({self.kind}) failed: {exc}") from None
        # Class colours and binary strokes must stay exact: no blending between neighbours.
        exact = self.kind in ("seg", "scribble")
        return detected.convert("RGB").resize(size, Image.Resampling.NEAREST if exact else Image.Resampling.BILINEAR)

    def _detect(self, image: Image.Image, short_side: int, options: dict) -> Image.Image:
        common = {"detect_resolution": short_side, "image_resolution": short_side, "output_type": "pil"}
        if self.kind == "canny":
            low, high = options.get("low_threshold", 100), options.get("high_threshold", 200)
            if low > high:
                raise ValueError(f"low_threshold={low} is above high_threshold={high}")
            return self.detector(image, low_threshold=low, high_threshold=high, **common)
        if self.kind == "openpose":
            return self.detector(
                image,
                **{**common, "detect_resolution": POSE_DETECT_RESOLUTION},
                include_hand=options.get("include_hand", False),
                include_face=options.get("include_face", False),
            )
        if self.kind == "mlsd":
            return self.detector(image, thr_v=options.get("value_threshold", 0.1), thr_d=options.get("distance_threshold", 0.1), **common)
        if self.kind == "scribble":  # ControlNet 1.1's Scribble_PIDI: thinned, thresholded soft edges
            return self.detector(image, safe=True, scribble=True, **common)
        if self.kind == "depth":
            return depth_map(*self.detector, image)
        if self.kind == "seg":
            return segmentation_map(*self.detector, image)
        return self.detector(image, **common)  # hed, normal


def scribble_from_drawing(drawing: Image.Image) -> Image.Image:
    """A user's drawing as the scribble ControlNet reads it: white strokes on black. Drawings on a
    light background (dark pen on paper) are inverted; strokes are any pixel off the background."""
    gray = np.asarray(drawing.convert("L"), dtype=np.uint8)
    strokes = gray < 128 if gray.mean() >= 128 else gray >= 128
    return Image.fromarray(np.where(strokes, 255, 0).astype(np.uint8)).convert("RGB")


@torch.no_grad()
def depth_map(model, processor, image: Image.Image) -> Image.Image:
    """Relative depth as grey levels, near white (DPT predicts inverse depth, as ControlNet's
    depth model was trained on), at the image's size."""
    param = next(model.parameters())
    inputs = processor(images=image, return_tensors="pt").to(param.device)
    depth = model(**inputs).predicted_depth.unsqueeze(1).float()
    depth = torch.nn.functional.interpolate(depth, size=image.size[::-1], mode="bicubic", align_corners=False)[0, 0]
    low, high = depth.min(), depth.max()
    scaled = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
    return Image.fromarray((scaled * 255).clamp(0, 255).byte().cpu().numpy()).convert("RGB")


@torch.no_grad()
def segmentation_map(model, processor, image: Image.Image) -> Image.Image:
    """ADE20K classes painted in the ADE20K palette (what ControlNet's seg model was trained on)."""
    from controlnet_aux.util import ade_palette

    param = next(model.parameters())
    inputs = processor(images=image, return_tensors="pt").to(param.device)
    classes = processor.post_process_semantic_segmentation(model(**inputs), target_sizes=[image.size[::-1]])[0]
    palette = np.asarray(ade_palette(), dtype=np.uint8)
    return Image.fromarray(palette[classes.cpu().numpy() % len(palette)])
