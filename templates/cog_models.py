"""Cog entry points of the three templates (templates/<name>/cog.yaml points at one class each).

All the work is in ``templates.inference``; these classes only declare each template's inputs.
The signatures are spelled out per class because Cog builds a model's schema from this file's
source, statically; ``tests/test_templates_inputs.py`` checks that the shared inputs agree.
"""

import os
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a template never downloads at setup or prediction time

from cog import BaseRunner, Input, Path, current_scope  # noqa: E402

from dreambuild.logs import configure_logging  # noqa: E402
from templates.inference.generator import ImageGenerator  # noqa: E402
from templates.inference.request import GenerationRequest  # noqa: E402

SCHEDULERS = ["DDIM", "DPMSolverMultistep", "HeunDiscrete", "K_EULER_ANCESTRAL", "K_EULER", "KLMS", "PNDM", "UniPCMultistep"]


def _generate(generator: ImageGenerator, inputs: dict) -> list[Path]:
    inputs.pop("self")
    paths = [Path(p) for p in generator.generate(GenerationRequest(**inputs))]
    scope = current_scope()  # inference_time, and peak_gpu_memory_bytes on CUDA: in the prediction's metrics
    for name, value in generator.last_metrics.items():
        scope.record_metric(name, value)
    return paths


class Vanilla(BaseRunner):
    """txt2img; img2img with `image`; inpainting with `image` and `mask`."""

    def setup(self) -> None:
        configure_logging()
        self.generator = ImageGenerator("vanilla")
        self.generator.setup()

    def run(
        self,
        prompt: Optional[str] = Input(description="Prompt. Weighting works as compel parses it: (red)1.3, dragon++, beach--; longer than 77 tokens is fine. Defaults to the instance prompt the model was trained with.", default=None),
        negative_prompt: Optional[str] = Input(description="What not to see in the image (same syntax as prompt).", default=None),
        image: Optional[Path] = Input(description="Initial image for img2img, or for inpainting with mask; resized to width x height.", default=None),
        mask: Optional[Path] = Input(description="Inpainting mask for image: white pixels are repainted, black pixels are kept.", default=None),
        width: Optional[int] = Input(description="Output width in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048),
        height: Optional[int] = Input(description="Output height in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048),
        num_outputs: int = Input(description="Number of images to generate.", default=1, ge=1, le=10),
        num_inference_steps: int = Input(description="Number of denoising steps.", default=50, ge=1, le=500),
        guidance_scale: float = Input(description="Scale for classifier-free guidance.", default=7.5, ge=1.0, le=20.0),
        prompt_strength: float = Input(description="How much img2img and inpainting change image: 1.0 replaces it entirely.", default=0.8, ge=0.0, le=1.0),
        scheduler: str = Input(description="Denoising scheduler.", default="DDIM", choices=SCHEDULERS),
        seed: Optional[int] = Input(description="Random seed; image i uses seed + i. Random when empty (the seed is logged).", default=None),
        disable_safety_check: bool = Input(description="Skip the safety checker, which otherwise leaves out images it flags.", default=False),
    ) -> list[Path]:
        """Generate PNG images with the fine-tuned model."""
        return _generate(self.generator, dict(locals()))


class ControlNetCanny(BaseRunner):
    """Everything Vanilla does, plus ControlNet guidance from Canny edges of `control_image`."""

    def setup(self) -> None:
        configure_logging()
        self.generator = ImageGenerator("controlnet-canny")
        self.generator.setup()

    def run(
        self,
        prompt: Optional[str] = Input(description="Prompt. Weighting works as compel parses it: (red)1.3, dragon++, beach--; longer than 77 tokens is fine. Defaults to the instance prompt the model was trained with.", default=None),
        negative_prompt: Optional[str] = Input(description="What not to see in the image (same syntax as prompt).", default=None),
        control_image: Optional[Path] = Input(description="Image whose Canny edges guide the output (ControlNet); resized to width x height.", default=None),
        image: Optional[Path] = Input(description="Initial image for img2img, or for inpainting with mask; resized to width x height.", default=None),
        mask: Optional[Path] = Input(description="Inpainting mask for image: white pixels are repainted, black pixels are kept.", default=None),
        width: Optional[int] = Input(description="Output width in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048),
        height: Optional[int] = Input(description="Output height in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048),
        num_outputs: int = Input(description="Number of images to generate.", default=1, ge=1, le=10),
        num_inference_steps: int = Input(description="Number of denoising steps.", default=50, ge=1, le=500),
        guidance_scale: float = Input(description="Scale for classifier-free guidance.", default=7.5, ge=1.0, le=20.0),
        prompt_strength: float = Input(description="How much img2img and inpainting change image: 1.0 replaces it entirely.", default=0.8, ge=0.0, le=1.0),
        scheduler: str = Input(description="Denoising scheduler.", default="DDIM", choices=SCHEDULERS),
        seed: Optional[int] = Input(description="Random seed; image i uses seed + i. Random when empty (the seed is logged).", default=None),
        disable_safety_check: bool = Input(description="Skip the safety checker, which otherwise leaves out images it flags.", default=False),
        return_control_image: bool = Input(description="Also return the processed control image (first in the list).", default=False),
        low_threshold: int = Input(description="Canny low threshold.", default=100, ge=1, le=255),
        high_threshold: int = Input(description="Canny high threshold.", default=200, ge=1, le=255),
    ) -> list[Path]:
        """Generate PNG images with the fine-tuned model, guided by Canny edges."""
        return _generate(self.generator, dict(locals()))


class ControlNetPose(BaseRunner):
    """Everything Vanilla does, plus ControlNet guidance from an OpenPose skeleton of `control_image`."""

    def setup(self) -> None:
        configure_logging()
        self.generator = ImageGenerator("controlnet-pose")
        self.generator.setup()

    def run(
        self,
        prompt: Optional[str] = Input(description="Prompt. Weighting works as compel parses it: (red)1.3, dragon++, beach--; longer than 77 tokens is fine. Defaults to the instance prompt the model was trained with.", default=None),
        negative_prompt: Optional[str] = Input(description="What not to see in the image (same syntax as prompt).", default=None),
        control_image: Optional[Path] = Input(description="Image whose OpenPose skeleton guides the output (ControlNet); resized to width x height.", default=None),
        image: Optional[Path] = Input(description="Initial image for img2img, or for inpainting with mask; resized to width x height.", default=None),
        mask: Optional[Path] = Input(description="Inpainting mask for image: white pixels are repainted, black pixels are kept.", default=None),
        width: Optional[int] = Input(description="Output width in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048),
        height: Optional[int] = Input(description="Output height in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048),
        num_outputs: int = Input(description="Number of images to generate.", default=1, ge=1, le=10),
        num_inference_steps: int = Input(description="Number of denoising steps.", default=50, ge=1, le=500),
        guidance_scale: float = Input(description="Scale for classifier-free guidance.", default=7.5, ge=1.0, le=20.0),
        prompt_strength: float = Input(description="How much img2img and inpainting change image: 1.0 replaces it entirely.", default=0.8, ge=0.0, le=1.0),
        scheduler: str = Input(description="Denoising scheduler.", default="DDIM", choices=SCHEDULERS),
        seed: Optional[int] = Input(description="Random seed; image i uses seed + i. Random when empty (the seed is logged).", default=None),
        disable_safety_check: bool = Input(description="Skip the safety checker, which otherwise leaves out images it flags.", default=False),
        return_control_image: bool = Input(description="Also return the processed control image (first in the list).", default=False),
        include_hand: bool = Input(description="Also detect hand keypoints in control_image.", default=False),
        include_face: bool = Input(description="Also detect face keypoints in control_image.", default=False),
    ) -> list[Path]:
        """Generate PNG images with the fine-tuned model, guided by an OpenPose skeleton."""
        return _generate(self.generator, dict(locals()))
