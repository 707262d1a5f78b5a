"""Cog entry points of the templates (templates/<name>/cog.yaml points at one class each).

All the work is in ``templates.inference``; these classes only declare each template's inputs.
The signatures are spelled out per class because Cog builds a model's schema from this file's
source, statically; ``tests/test_templates_inputs.py`` checks that the shared inputs agree and
that the classes match the table in ``templates/inference/catalog.py``.
"""

import os
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a template never downloads at setup or prediction time

from cog import BaseRunner, Input, Path, current_scope  # noqa: E402

from dreambuild.logs import configure_logging  # noqa: E402
from templates.inference.generator import VERSION_WEIGHTS, WEIGHTS, ImageGenerator  # noqa: E402
from templates.inference.request import GenerationRequest  # noqa: E402

# Literal lists: Cog reads choices from this file's source.
SCHEDULERS = [
    "DDIM",
    "DPMSolverMultistep",
    "HeunDiscrete",
    "K_EULER_ANCESTRAL",
    "K_EULER",
    "KLMS",
    "PNDM",
    "UniPCMultistep",
    "Euler a",
    "Euler",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM++ 2S a",
    "DPM++ 2M",
    "DPM++ SDE",
    "LMS Karras",
    "DPM2 Karras",
    "DPM2 a Karras",
    "DPM++ 2S a Karras",
    "DPM++ 2M Karras",
    "DPM++ SDE Karras",
]
PROMPT_SYNTAXES = ["auto", "compel", "a1111"]
OUTPUT_FORMATS = ["png", "jpg", "webp"]
ASPECT_RATIOS = ["1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21"]  # request.ASPECT_RATIOS


def _generate(generator: ImageGenerator, inputs: dict) -> list[Path]:
    inputs.pop("self")
    scope = current_scope()  # inference_time, and peak_gpu_memory_bytes on CUDA: in the prediction's metrics
    # A LoRA version run on its template's warm base, or a server started ahead of its version:
    # the worker names the weights in the request's context (never an input: no user can set it).
    context = getattr(scope, "context", None) or {}
    named = {key: Path(context[name]) for key, name in (("version_weights", VERSION_WEIGHTS), ("weights", WEIGHTS)) if context.get(name)}
    request = GenerationRequest(**inputs, **named)
    paths = [Path(p) for p in generator.generate(request)]
    for name, value in generator.last_metrics.items():
        scope.record_metric(name, value)
    return paths


class Vanilla(BaseRunner):
    """txt2img; img2img with `image`; inpainting with `image` and `mask`; LoRA on top."""

    def setup(self) -> None:
        configure_logging()
        self.generator = ImageGenerator("vanilla")
        self.generator.setup()

    def run(
        self,
        prompt: Optional[str] = Input(
            description="Prompt. Weighting in either syntax (prompt_syntax): compel's (red)1.3, dragon++, beach-- or A1111's (red), ((red)), [red], (red:1.3); longer than 77 tokens is fine. Defaults to the instance prompt the model was trained with.",
            default=None,
        ),
        negative_prompt: Optional[str] = Input(description="What not to see in the image (same syntax as prompt).", default=None),
        prompt_syntax: str = Input(
            description="Weighting syntax of prompt and negative_prompt: compel, a1111 (AUTOMATIC1111: (word) x1.1, [word] /1.1, (word:1.3)), or auto (compel's marks such as )1.3 or word++ mean compel; brackets otherwise mean a1111).",
            default="auto",
            choices=PROMPT_SYNTAXES,
        ),
        image: Optional[Path] = Input(description="Initial image for img2img, or for inpainting with mask; resized to width x height.", default=None),
        mask: Optional[Path] = Input(description="Inpainting mask for image: white pixels are repainted, black pixels are kept.", default=None),
        width: Optional[int] = Input(
            description="Output width in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        height: Optional[int] = Input(
            description="Output height in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        num_outputs: int = Input(description="Number of images to generate.", default=1, ge=1, le=10),
        num_inference_steps: int = Input(description="Number of denoising steps.", default=50, ge=1, le=500),
        guidance_scale: float = Input(description="Scale for classifier-free guidance.", default=7.5, ge=1.0, le=20.0),
        prompt_strength: float = Input(
            description="How much img2img and inpainting change image: 1.0 replaces it entirely.", default=0.8, ge=0.0, le=1.0
        ),
        scheduler: str = Input(
            description="Denoising scheduler (A1111 sampler names, or the public dream templates' names).", default="DDIM", choices=SCHEDULERS
        ),
        seed: Optional[int] = Input(description="Random seed; image i uses seed + i. Random when empty (the seed is logged).", default=None),
        lora_weights: Optional[Path] = Input(
            description="A LoRA to apply on top (.safetensors, diffusers/peft or kohya/A1111 keys): a URL or a file.", default=None
        ),
        lora_scale: float = Input(description="Strength of lora_weights: 0 leaves the model as it is.", default=1.0, ge=-1.0, le=3.0),
        extra_lora: Optional[Path] = Input(description="A second LoRA to combine with lora_weights (.safetensors).", default=None),
        extra_lora_scale: float = Input(description="Strength of extra_lora.", default=1.0, ge=-1.0, le=3.0),
        output_format: str = Input(description="Format of the output images.", default="png", choices=OUTPUT_FORMATS),
        output_quality: int = Input(description="Quality of jpg and webp outputs, 0 to 100 (png is lossless).", default=80, ge=0, le=100),
        disable_safety_check: bool = Input(description="Skip the safety checker, which otherwise leaves out images it flags.", default=False),
    ) -> list[Path]:
        """Generate images with the fine-tuned model."""
        return _generate(self.generator, dict(locals()))


class Flux(BaseRunner):
    """FLUX.1 (dev or schnell, by the base baked): txt2img; img2img with `image`; inpainting with
    `image` and `mask`; LoRA on top."""

    def setup(self) -> None:
        configure_logging()
        self.generator = ImageGenerator("vanilla-flux")
        self.generator.setup()

    def run(
        self,
        prompt: Optional[str] = Input(
            description="Prompt, in plain words (T5 reads up to 512 tokens on dev, 256 on schnell; no weighting syntax). Defaults to the instance prompt the model was trained with.",
            default=None,
        ),
        image: Optional[Path] = Input(description="Initial image for img2img, or for inpainting with mask; resized to width x height.", default=None),
        mask: Optional[Path] = Input(description="Inpainting mask for image: white pixels are repainted, black pixels are kept.", default=None),
        width: Optional[int] = Input(
            description="Output width in pixels, a multiple of 16. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        height: Optional[int] = Input(
            description="Output height in pixels, a multiple of 16. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        aspect_ratio: str = Input(
            description="Width:height of the output when width and height are both empty, at about the native size's pixel count (16:9: 1360x768 on FLUX.1).",
            default="1:1",
            choices=ASPECT_RATIOS,
        ),
        num_outputs: int = Input(description="Number of images to generate.", default=1, ge=1, le=10),
        num_inference_steps: Optional[int] = Input(
            description="Number of denoising steps. Empty: 28 on FLUX.1-dev, 4 on FLUX.1-schnell.", default=None, ge=1, le=100
        ),
        guidance: Optional[float] = Input(
            description="Guidance of FLUX.1-dev's guidance embedding (schnell has none and ignores it). Empty: 3.5.", default=None, ge=0.0, le=20.0
        ),
        prompt_strength: float = Input(
            description="How much img2img and inpainting change image: 1.0 replaces it entirely.", default=0.8, ge=0.0, le=1.0
        ),
        seed: Optional[int] = Input(description="Random seed; image i uses seed + i. Random when empty (the seed is logged).", default=None),
        lora_weights: Optional[Path] = Input(
            description="A LoRA to apply on top (.safetensors, diffusers/peft or kohya/A1111 keys): a URL or a file.", default=None
        ),
        lora_scale: float = Input(description="Strength of lora_weights: 0 leaves the model as it is.", default=1.0, ge=-1.0, le=3.0),
        extra_lora: Optional[Path] = Input(description="A second LoRA to combine with lora_weights (.safetensors).", default=None),
        extra_lora_scale: float = Input(description="Strength of extra_lora.", default=1.0, ge=-1.0, le=3.0),
        output_format: str = Input(description="Format of the output images.", default="png", choices=OUTPUT_FORMATS),
        output_quality: int = Input(description="Quality of jpg and webp outputs, 0 to 100 (png is lossless).", default=80, ge=0, le=100),
        disable_safety_check: bool = Input(description="Skip the safety checker, which otherwise leaves out images it flags.", default=False),
    ) -> list[Path]:
        """Generate images with the FLUX model."""
        return _generate(self.generator, dict(locals()))


class ControlNetCanny(BaseRunner):
    """Everything Vanilla does, plus ControlNet guidance from Canny edges of `control_image`."""

    def setup(self) -> None:
        configure_logging()
        self.generator = ImageGenerator("controlnet-canny")
        self.generator.setup()

    def run(
        self,
        prompt: Optional[str] = Input(
            description="Prompt. Weighting in either syntax (prompt_syntax): compel's (red)1.3, dragon++, beach-- or A1111's (red), ((red)), [red], (red:1.3); longer than 77 tokens is fine. Defaults to the instance prompt the model was trained with.",
            default=None,
        ),
        negative_prompt: Optional[str] = Input(description="What not to see in the image (same syntax as prompt).", default=None),
        prompt_syntax: str = Input(
            description="Weighting syntax of prompt and negative_prompt: compel, a1111 (AUTOMATIC1111: (word) x1.1, [word] /1.1, (word:1.3)), or auto (compel's marks such as )1.3 or word++ mean compel; brackets otherwise mean a1111).",
            default="auto",
            choices=PROMPT_SYNTAXES,
        ),
        control_image: Optional[Path] = Input(
            description="Image to guide the output with Canny edges (ControlNet); resized to width x height. With control_preprocess false, it is used as it is.",
            default=None,
        ),
        image: Optional[Path] = Input(description="Initial image for img2img, or for inpainting with mask; resized to width x height.", default=None),
        mask: Optional[Path] = Input(description="Inpainting mask for image: white pixels are repainted, black pixels are kept.", default=None),
        width: Optional[int] = Input(
            description="Output width in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        height: Optional[int] = Input(
            description="Output height in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        num_outputs: int = Input(description="Number of images to generate.", default=1, ge=1, le=10),
        num_inference_steps: int = Input(description="Number of denoising steps.", default=50, ge=1, le=500),
        guidance_scale: float = Input(description="Scale for classifier-free guidance.", default=7.5, ge=1.0, le=20.0),
        prompt_strength: float = Input(
            description="How much img2img and inpainting change image: 1.0 replaces it entirely.", default=0.8, ge=0.0, le=1.0
        ),
        scheduler: str = Input(
            description="Denoising scheduler (A1111 sampler names, or the public dream templates' names).", default="DDIM", choices=SCHEDULERS
        ),
        seed: Optional[int] = Input(description="Random seed; image i uses seed + i. Random when empty (the seed is logged).", default=None),
        lora_weights: Optional[Path] = Input(
            description="A LoRA to apply on top (.safetensors, diffusers/peft or kohya/A1111 keys): a URL or a file.", default=None
        ),
        lora_scale: float = Input(description="Strength of lora_weights: 0 leaves the model as it is.", default=1.0, ge=-1.0, le=3.0),
        extra_lora: Optional[Path] = Input(description="A second LoRA to combine with lora_weights (.safetensors).", default=None),
        extra_lora_scale: float = Input(description="Strength of extra_lora.", default=1.0, ge=-1.0, le=3.0),
        output_format: str = Input(description="Format of the output images.", default="png", choices=OUTPUT_FORMATS),
        output_quality: int = Input(description="Quality of jpg and webp outputs, 0 to 100 (png is lossless).", default=80, ge=0, le=100),
        disable_safety_check: bool = Input(description="Skip the safety checker, which otherwise leaves out images it flags.", default=False),
        return_control_image: bool = Input(description="Also return the processed control image (first in the list).", default=False),
        control_preprocess: bool = Input(
            description="Turn control_image into Canny edges first; false: control_image already is one (your own map or skeleton).", default=True
        ),
        controlnet_conditioning_scale: float = Input(description="How strongly the control image steers the output.", default=1.0, ge=0.0, le=4.0),
        low_threshold: int = Input(description="Canny low threshold.", default=100, ge=1, le=255),
        high_threshold: int = Input(description="Canny high threshold.", default=200, ge=1, le=255),
    ) -> list[Path]:
        """Generate images with the fine-tuned model, guided by Canny edges."""
        return _generate(self.generator, dict(locals()))


class ControlNetPose(BaseRunner):
    """Everything Vanilla does, plus ControlNet guidance from an OpenPose skeleton of `control_image`."""

    def setup(self) -> None:
        configure_logging()
        self.generator = ImageGenerator("controlnet-pose")
        self.generator.setup()

    def run(
        self,
        prompt: Optional[str] = Input(
            description="Prompt. Weighting in either syntax (prompt_syntax): compel's (red)1.3, dragon++, beach-- or A1111's (red), ((red)), [red], (red:1.3); longer than 77 tokens is fine. Defaults to the instance prompt the model was trained with.",
            default=None,
        ),
        negative_prompt: Optional[str] = Input(description="What not to see in the image (same syntax as prompt).", default=None),
        prompt_syntax: str = Input(
            description="Weighting syntax of prompt and negative_prompt: compel, a1111 (AUTOMATIC1111: (word) x1.1, [word] /1.1, (word:1.3)), or auto (compel's marks such as )1.3 or word++ mean compel; brackets otherwise mean a1111).",
            default="auto",
            choices=PROMPT_SYNTAXES,
        ),
        control_image: Optional[Path] = Input(
            description="Image to guide the output with an OpenPose skeleton (ControlNet); resized to width x height. With control_preprocess false, it is used as it is.",
            default=None,
        ),
        image: Optional[Path] = Input(description="Initial image for img2img, or for inpainting with mask; resized to width x height.", default=None),
        mask: Optional[Path] = Input(description="Inpainting mask for image: white pixels are repainted, black pixels are kept.", default=None),
        width: Optional[int] = Input(
            description="Output width in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        height: Optional[int] = Input(
            description="Output height in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        num_outputs: int = Input(description="Number of images to generate.", default=1, ge=1, le=10),
        num_inference_steps: int = Input(description="Number of denoising steps.", default=50, ge=1, le=500),
        guidance_scale: float = Input(description="Scale for classifier-free guidance.", default=7.5, ge=1.0, le=20.0),
        prompt_strength: float = Input(
            description="How much img2img and inpainting change image: 1.0 replaces it entirely.", default=0.8, ge=0.0, le=1.0
        ),
        scheduler: str = Input(
            description="Denoising scheduler (A1111 sampler names, or the public dream templates' names).", default="DDIM", choices=SCHEDULERS
        ),
        seed: Optional[int] = Input(description="Random seed; image i uses seed + i. Random when empty (the seed is logged).", default=None),
        lora_weights: Optional[Path] = Input(
            description="A LoRA to apply on top (.safetensors, diffusers/peft or kohya/A1111 keys): a URL or a file.", default=None
        ),
        lora_scale: float = Input(description="Strength of lora_weights: 0 leaves the model as it is.", default=1.0, ge=-1.0, le=3.0),
        extra_lora: Optional[Path] = Input(description="A second LoRA to combine with lora_weights (.safetensors).", default=None),
        extra_lora_scale: float = Input(description="Strength of extra_lora.", default=1.0, ge=-1.0, le=3.0),
        output_format: str = Input(description="Format of the output images.", default="png", choices=OUTPUT_FORMATS),
        output_quality: int = Input(description="Quality of jpg and webp outputs, 0 to 100 (png is lossless).", default=80, ge=0, le=100),
        disable_safety_check: bool = Input(description="Skip the safety checker, which otherwise leaves out images it flags.", default=False),
        return_control_image: bool = Input(description="Also return the processed control image (first in the list).", default=False),
        control_preprocess: bool = Input(
            description="Turn control_image into an OpenPose skeleton first; false: control_image already is one (your own map or skeleton).",
            default=True,
        ),
        controlnet_conditioning_scale: float = Input(description="How strongly the control image steers the output.", default=1.0, ge=0.0, le=4.0),
        include_hand: bool = Input(description="Also detect hand keypoints in control_image.", default=False),
        include_face: bool = Input(description="Also detect face keypoints in control_image.", default=False),
    ) -> list[Path]:
        """Generate images with the fine-tuned model, guided by an OpenPose skeleton."""
        return _generate(self.generator, dict(locals()))


class ControlNetDepth(BaseRunner):
    """Everything Vanilla does, plus ControlNet guidance from a depth map (DPT) of `control_image`."""

    def setup(self) -> None:
        configure_logging()
        self.generator = ImageGenerator("controlnet-depth")
        self.generator.setup()

    def run(
        self,
        prompt: Optional[str] = Input(
            description="Prompt. Weighting in either syntax (prompt_syntax): compel's (red)1.3, dragon++, beach-- or A1111's (red), ((red)), [red], (red:1.3); longer than 77 tokens is fine. Defaults to the instance prompt the model was trained with.",
            default=None,
        ),
        negative_prompt: Optional[str] = Input(description="What not to see in the image (same syntax as prompt).", default=None),
        prompt_syntax: str = Input(
            description="Weighting syntax of prompt and negative_prompt: compel, a1111 (AUTOMATIC1111: (word) x1.1, [word] /1.1, (word:1.3)), or auto (compel's marks such as )1.3 or word++ mean compel; brackets otherwise mean a1111).",
            default="auto",
            choices=PROMPT_SYNTAXES,
        ),
        control_image: Optional[Path] = Input(
            description="Image to guide the output with a depth map (ControlNet); resized to width x height. With control_preprocess false, it is used as it is.",
            default=None,
        ),
        image: Optional[Path] = Input(description="Initial image for img2img, or for inpainting with mask; resized to width x height.", default=None),
        mask: Optional[Path] = Input(description="Inpainting mask for image: white pixels are repainted, black pixels are kept.", default=None),
        width: Optional[int] = Input(
            description="Output width in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        height: Optional[int] = Input(
            description="Output height in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        num_outputs: int = Input(description="Number of images to generate.", default=1, ge=1, le=10),
        num_inference_steps: int = Input(description="Number of denoising steps.", default=50, ge=1, le=500),
        guidance_scale: float = Input(description="Scale for classifier-free guidance.", default=7.5, ge=1.0, le=20.0),
        prompt_strength: float = Input(
            description="How much img2img and inpainting change image: 1.0 replaces it entirely.", default=0.8, ge=0.0, le=1.0
        ),
        scheduler: str = Input(
            description="Denoising scheduler (A1111 sampler names, or the public dream templates' names).", default="DDIM", choices=SCHEDULERS
        ),
        seed: Optional[int] = Input(description="Random seed; image i uses seed + i. Random when empty (the seed is logged).", default=None),
        lora_weights: Optional[Path] = Input(
            description="A LoRA to apply on top (.safetensors, diffusers/peft or kohya/A1111 keys): a URL or a file.", default=None
        ),
        lora_scale: float = Input(description="Strength of lora_weights: 0 leaves the model as it is.", default=1.0, ge=-1.0, le=3.0),
        extra_lora: Optional[Path] = Input(description="A second LoRA to combine with lora_weights (.safetensors).", default=None),
        extra_lora_scale: float = Input(description="Strength of extra_lora.", default=1.0, ge=-1.0, le=3.0),
        output_format: str = Input(description="Format of the output images.", default="png", choices=OUTPUT_FORMATS),
        output_quality: int = Input(description="Quality of jpg and webp outputs, 0 to 100 (png is lossless).", default=80, ge=0, le=100),
        disable_safety_check: bool = Input(description="Skip the safety checker, which otherwise leaves out images it flags.", default=False),
        return_control_image: bool = Input(description="Also return the processed control image (first in the list).", default=False),
        control_preprocess: bool = Input(
            description="Turn control_image into a depth map first; false: control_image already is one (your own map or skeleton).", default=True
        ),
        controlnet_conditioning_scale: float = Input(description="How strongly the control image steers the output.", default=1.0, ge=0.0, le=4.0),
    ) -> list[Path]:
        """Generate images with the fine-tuned model, guided by a depth map."""
        return _generate(self.generator, dict(locals()))


class ControlNetHED(BaseRunner):
    """Everything Vanilla does, plus ControlNet guidance from soft edges (HED) of `control_image`."""

    def setup(self) -> None:
        configure_logging()
        self.generator = ImageGenerator("controlnet-hed")
        self.generator.setup()

    def run(
        self,
        prompt: Optional[str] = Input(
            description="Prompt. Weighting in either syntax (prompt_syntax): compel's (red)1.3, dragon++, beach-- or A1111's (red), ((red)), [red], (red:1.3); longer than 77 tokens is fine. Defaults to the instance prompt the model was trained with.",
            default=None,
        ),
        negative_prompt: Optional[str] = Input(description="What not to see in the image (same syntax as prompt).", default=None),
        prompt_syntax: str = Input(
            description="Weighting syntax of prompt and negative_prompt: compel, a1111 (AUTOMATIC1111: (word) x1.1, [word] /1.1, (word:1.3)), or auto (compel's marks such as )1.3 or word++ mean compel; brackets otherwise mean a1111).",
            default="auto",
            choices=PROMPT_SYNTAXES,
        ),
        control_image: Optional[Path] = Input(
            description="Image to guide the output with soft edges (ControlNet); resized to width x height. With control_preprocess false, it is used as it is.",
            default=None,
        ),
        image: Optional[Path] = Input(description="Initial image for img2img, or for inpainting with mask; resized to width x height.", default=None),
        mask: Optional[Path] = Input(description="Inpainting mask for image: white pixels are repainted, black pixels are kept.", default=None),
        width: Optional[int] = Input(
            description="Output width in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        height: Optional[int] = Input(
            description="Output height in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        num_outputs: int = Input(description="Number of images to generate.", default=1, ge=1, le=10),
        num_inference_steps: int = Input(description="Number of denoising steps.", default=50, ge=1, le=500),
        guidance_scale: float = Input(description="Scale for classifier-free guidance.", default=7.5, ge=1.0, le=20.0),
        prompt_strength: float = Input(
            description="How much img2img and inpainting change image: 1.0 replaces it entirely.", default=0.8, ge=0.0, le=1.0
        ),
        scheduler: str = Input(
            description="Denoising scheduler (A1111 sampler names, or the public dream templates' names).", default="DDIM", choices=SCHEDULERS
        ),
        seed: Optional[int] = Input(description="Random seed; image i uses seed + i. Random when empty (the seed is logged).", default=None),
        lora_weights: Optional[Path] = Input(
            description="A LoRA to apply on top (.safetensors, diffusers/peft or kohya/A1111 keys): a URL or a file.", default=None
        ),
        lora_scale: float = Input(description="Strength of lora_weights: 0 leaves the model as it is.", default=1.0, ge=-1.0, le=3.0),
        extra_lora: Optional[Path] = Input(description="A second LoRA to combine with lora_weights (.safetensors).", default=None),
        extra_lora_scale: float = Input(description="Strength of extra_lora.", default=1.0, ge=-1.0, le=3.0),
        output_format: str = Input(description="Format of the output images.", default="png", choices=OUTPUT_FORMATS),
        output_quality: int = Input(description="Quality of jpg and webp outputs, 0 to 100 (png is lossless).", default=80, ge=0, le=100),
        disable_safety_check: bool = Input(description="Skip the safety checker, which otherwise leaves out images it flags.", default=False),
        return_control_image: bool = Input(description="Also return the processed control image (first in the list).", default=False),
        control_preprocess: bool = Input(
            description="Turn control_image into soft edges first; false: control_image already is one (your own map or skeleton).", default=True
        ),
        controlnet_conditioning_scale: float = Input(description="How strongly the control image steers the output.", default=1.0, ge=0.0, le=4.0),
    ) -> list[Path]:
        """Generate images with the fine-tuned model, guided by soft edges."""
        return _generate(self.generator, dict(locals()))


class ControlNetMLSD(BaseRunner):
    """Everything Vanilla does, plus ControlNet guidance from straight lines (M-LSD) of `control_image`."""

    def setup(self) -> None:
        configure_logging()
        self.generator = ImageGenerator("controlnet-mlsd")
        self.generator.setup()

    def run(
        self,
        prompt: Optional[str] = Input(
            description="Prompt. Weighting in either syntax (prompt_syntax): compel's (red)1.3, dragon++, beach-- or A1111's (red), ((red)), [red], (red:1.3); longer than 77 tokens is fine. Defaults to the instance prompt the model was trained with.",
            default=None,
        ),
        negative_prompt: Optional[str] = Input(description="What not to see in the image (same syntax as prompt).", default=None),
        prompt_syntax: str = Input(
            description="Weighting syntax of prompt and negative_prompt: compel, a1111 (AUTOMATIC1111: (word) x1.1, [word] /1.1, (word:1.3)), or auto (compel's marks such as )1.3 or word++ mean compel; brackets otherwise mean a1111).",
            default="auto",
            choices=PROMPT_SYNTAXES,
        ),
        control_image: Optional[Path] = Input(
            description="Image to guide the output with straight lines (ControlNet); resized to width x height. With control_preprocess false, it is used as it is.",
            default=None,
        ),
        image: Optional[Path] = Input(description="Initial image for img2img, or for inpainting with mask; resized to width x height.", default=None),
        mask: Optional[Path] = Input(description="Inpainting mask for image: white pixels are repainted, black pixels are kept.", default=None),
        width: Optional[int] = Input(
            description="Output width in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        height: Optional[int] = Input(
            description="Output height in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        num_outputs: int = Input(description="Number of images to generate.", default=1, ge=1, le=10),
        num_inference_steps: int = Input(description="Number of denoising steps.", default=50, ge=1, le=500),
        guidance_scale: float = Input(description="Scale for classifier-free guidance.", default=7.5, ge=1.0, le=20.0),
        prompt_strength: float = Input(
            description="How much img2img and inpainting change image: 1.0 replaces it entirely.", default=0.8, ge=0.0, le=1.0
        ),
        scheduler: str = Input(
            description="Denoising scheduler (A1111 sampler names, or the public dream templates' names).", default="DDIM", choices=SCHEDULERS
        ),
        seed: Optional[int] = Input(description="Random seed; image i uses seed + i. Random when empty (the seed is logged).", default=None),
        lora_weights: Optional[Path] = Input(
            description="A LoRA to apply on top (.safetensors, diffusers/peft or kohya/A1111 keys): a URL or a file.", default=None
        ),
        lora_scale: float = Input(description="Strength of lora_weights: 0 leaves the model as it is.", default=1.0, ge=-1.0, le=3.0),
        extra_lora: Optional[Path] = Input(description="A second LoRA to combine with lora_weights (.safetensors).", default=None),
        extra_lora_scale: float = Input(description="Strength of extra_lora.", default=1.0, ge=-1.0, le=3.0),
        output_format: str = Input(description="Format of the output images.", default="png", choices=OUTPUT_FORMATS),
        output_quality: int = Input(description="Quality of jpg and webp outputs, 0 to 100 (png is lossless).", default=80, ge=0, le=100),
        disable_safety_check: bool = Input(description="Skip the safety checker, which otherwise leaves out images it flags.", default=False),
        return_control_image: bool = Input(description="Also return the processed control image (first in the list).", default=False),
        control_preprocess: bool = Input(
            description="Turn control_image into straight lines first; false: control_image already is one (your own map or skeleton).", default=True
        ),
        controlnet_conditioning_scale: float = Input(description="How strongly the control image steers the output.", default=1.0, ge=0.0, le=4.0),
        value_threshold: float = Input(description="M-LSD score threshold: higher keeps fewer, surer lines.", default=0.1, ge=0.01, le=2.0),
        distance_threshold: float = Input(
            description="M-LSD distance threshold: lines shorter than this are dropped.", default=0.1, ge=0.01, le=20.0
        ),
    ) -> list[Path]:
        """Generate images with the fine-tuned model, guided by straight lines."""
        return _generate(self.generator, dict(locals()))


class ControlNetNormal(BaseRunner):
    """Everything Vanilla does, plus ControlNet guidance from a normal map (NormalBae) of `control_image`."""

    def setup(self) -> None:
        configure_logging()
        self.generator = ImageGenerator("controlnet-normal")
        self.generator.setup()

    def run(
        self,
        prompt: Optional[str] = Input(
            description="Prompt. Weighting in either syntax (prompt_syntax): compel's (red)1.3, dragon++, beach-- or A1111's (red), ((red)), [red], (red:1.3); longer than 77 tokens is fine. Defaults to the instance prompt the model was trained with.",
            default=None,
        ),
        negative_prompt: Optional[str] = Input(description="What not to see in the image (same syntax as prompt).", default=None),
        prompt_syntax: str = Input(
            description="Weighting syntax of prompt and negative_prompt: compel, a1111 (AUTOMATIC1111: (word) x1.1, [word] /1.1, (word:1.3)), or auto (compel's marks such as )1.3 or word++ mean compel; brackets otherwise mean a1111).",
            default="auto",
            choices=PROMPT_SYNTAXES,
        ),
        control_image: Optional[Path] = Input(
            description="Image to guide the output with a normal map (ControlNet); resized to width x height. With control_preprocess false, it is used as it is.",
            default=None,
        ),
        image: Optional[Path] = Input(description="Initial image for img2img, or for inpainting with mask; resized to width x height.", default=None),
        mask: Optional[Path] = Input(description="Inpainting mask for image: white pixels are repainted, black pixels are kept.", default=None),
        width: Optional[int] = Input(
            description="Output width in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        height: Optional[int] = Input(
            description="Output height in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        num_outputs: int = Input(description="Number of images to generate.", default=1, ge=1, le=10),
        num_inference_steps: int = Input(description="Number of denoising steps.", default=50, ge=1, le=500),
        guidance_scale: float = Input(description="Scale for classifier-free guidance.", default=7.5, ge=1.0, le=20.0),
        prompt_strength: float = Input(
            description="How much img2img and inpainting change image: 1.0 replaces it entirely.", default=0.8, ge=0.0, le=1.0
        ),
        scheduler: str = Input(
            description="Denoising scheduler (A1111 sampler names, or the public dream templates' names).", default="DDIM", choices=SCHEDULERS
        ),
        seed: Optional[int] = Input(description="Random seed; image i uses seed + i. Random when empty (the seed is logged).", default=None),
        lora_weights: Optional[Path] = Input(
            description="A LoRA to apply on top (.safetensors, diffusers/peft or kohya/A1111 keys): a URL or a file.", default=None
        ),
        lora_scale: float = Input(description="Strength of lora_weights: 0 leaves the model as it is.", default=1.0, ge=-1.0, le=3.0),
        extra_lora: Optional[Path] = Input(description="A second LoRA to combine with lora_weights (.safetensors).", default=None),
        extra_lora_scale: float = Input(description="Strength of extra_lora.", default=1.0, ge=-1.0, le=3.0),
        output_format: str = Input(description="Format of the output images.", default="png", choices=OUTPUT_FORMATS),
        output_quality: int = Input(description="Quality of jpg and webp outputs, 0 to 100 (png is lossless).", default=80, ge=0, le=100),
        disable_safety_check: bool = Input(description="Skip the safety checker, which otherwise leaves out images it flags.", default=False),
        return_control_image: bool = Input(description="Also return the processed control image (first in the list).", default=False),
        control_preprocess: bool = Input(
            description="Turn control_image into a normal map first; false: control_image already is one (your own map or skeleton).", default=True
        ),
        controlnet_conditioning_scale: float = Input(description="How strongly the control image steers the output.", default=1.0, ge=0.0, le=4.0),
    ) -> list[Path]:
        """Generate images with the fine-tuned model, guided by a normal map."""
        return _generate(self.generator, dict(locals()))


class ControlNetScribble(BaseRunner):
    """Everything Vanilla does, plus ControlNet guidance from a scribble of `control_image`."""

    def setup(self) -> None:
        configure_logging()
        self.generator = ImageGenerator("controlnet-scribble")
        self.generator.setup()

    def run(
        self,
        prompt: Optional[str] = Input(
            description="Prompt. Weighting in either syntax (prompt_syntax): compel's (red)1.3, dragon++, beach-- or A1111's (red), ((red)), [red], (red:1.3); longer than 77 tokens is fine. Defaults to the instance prompt the model was trained with.",
            default=None,
        ),
        negative_prompt: Optional[str] = Input(description="What not to see in the image (same syntax as prompt).", default=None),
        prompt_syntax: str = Input(
            description="Weighting syntax of prompt and negative_prompt: compel, a1111 (AUTOMATIC1111: (word) x1.1, [word] /1.1, (word:1.3)), or auto (compel's marks such as )1.3 or word++ mean compel; brackets otherwise mean a1111).",
            default="auto",
            choices=PROMPT_SYNTAXES,
        ),
        control_image: Optional[Path] = Input(
            description="Image to guide the output with a scribble (ControlNet); resized to width x height. With control_preprocess false, it is used as it is.",
            default=None,
        ),
        image: Optional[Path] = Input(description="Initial image for img2img, or for inpainting with mask; resized to width x height.", default=None),
        mask: Optional[Path] = Input(description="Inpainting mask for image: white pixels are repainted, black pixels are kept.", default=None),
        width: Optional[int] = Input(
            description="Output width in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        height: Optional[int] = Input(
            description="Output height in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        num_outputs: int = Input(description="Number of images to generate.", default=1, ge=1, le=10),
        num_inference_steps: int = Input(description="Number of denoising steps.", default=50, ge=1, le=500),
        guidance_scale: float = Input(description="Scale for classifier-free guidance.", default=7.5, ge=1.0, le=20.0),
        prompt_strength: float = Input(
            description="How much img2img and inpainting change image: 1.0 replaces it entirely.", default=0.8, ge=0.0, le=1.0
        ),
        scheduler: str = Input(
            description="Denoising scheduler (A1111 sampler names, or the public dream templates' names).", default="DDIM", choices=SCHEDULERS
        ),
        seed: Optional[int] = Input(description="Random seed; image i uses seed + i. Random when empty (the seed is logged).", default=None),
        lora_weights: Optional[Path] = Input(
            description="A LoRA to apply on top (.safetensors, diffusers/peft or kohya/A1111 keys): a URL or a file.", default=None
        ),
        lora_scale: float = Input(description="Strength of lora_weights: 0 leaves the model as it is.", default=1.0, ge=-1.0, le=3.0),
        extra_lora: Optional[Path] = Input(description="A second LoRA to combine with lora_weights (.safetensors).", default=None),
        extra_lora_scale: float = Input(description="Strength of extra_lora.", default=1.0, ge=-1.0, le=3.0),
        output_format: str = Input(description="Format of the output images.", default="png", choices=OUTPUT_FORMATS),
        output_quality: int = Input(description="Quality of jpg and webp outputs, 0 to 100 (png is lossless).", default=80, ge=0, le=100),
        disable_safety_check: bool = Input(description="Skip the safety checker, which otherwise leaves out images it flags.", default=False),
        return_control_image: bool = Input(description="Also return the processed control image (first in the list).", default=False),
        control_preprocess: bool = Input(
            description="Turn control_image into a scribble first; false: control_image already is one (your own map or skeleton).", default=True
        ),
        controlnet_conditioning_scale: float = Input(description="How strongly the control image steers the output.", default=1.0, ge=0.0, le=4.0),
        scribble_from_photo: bool = Input(
            description="control_image is a photo: derive the scribble from it (PiDiNet). Otherwise it is a drawing, dark strokes on light or light on dark.",
            default=False,
        ),
    ) -> list[Path]:
        """Generate images with the fine-tuned model, guided by a scribble."""
        return _generate(self.generator, dict(locals()))


class ControlNetSeg(BaseRunner):
    """Everything Vanilla does, plus ControlNet guidance from an ADE20K segmentation (UperNet) of `control_image`."""

    def setup(self) -> None:
        configure_logging()
        self.generator = ImageGenerator("controlnet-seg")
        self.generator.setup()

    def run(
        self,
        prompt: Optional[str] = Input(
            description="Prompt. Weighting in either syntax (prompt_syntax): compel's (red)1.3, dragon++, beach-- or A1111's (red), ((red)), [red], (red:1.3); longer than 77 tokens is fine. Defaults to the instance prompt the model was trained with.",
            default=None,
        ),
        negative_prompt: Optional[str] = Input(description="What not to see in the image (same syntax as prompt).", default=None),
        prompt_syntax: str = Input(
            description="Weighting syntax of prompt and negative_prompt: compel, a1111 (AUTOMATIC1111: (word) x1.1, [word] /1.1, (word:1.3)), or auto (compel's marks such as )1.3 or word++ mean compel; brackets otherwise mean a1111).",
            default="auto",
            choices=PROMPT_SYNTAXES,
        ),
        control_image: Optional[Path] = Input(
            description="Image to guide the output with an ADE20K segmentation (ControlNet); resized to width x height. With control_preprocess false, it is used as it is.",
            default=None,
        ),
        image: Optional[Path] = Input(description="Initial image for img2img, or for inpainting with mask; resized to width x height.", default=None),
        mask: Optional[Path] = Input(description="Inpainting mask for image: white pixels are repainted, black pixels are kept.", default=None),
        width: Optional[int] = Input(
            description="Output width in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        height: Optional[int] = Input(
            description="Output height in pixels, a multiple of 8. Defaults to the model's native size.", default=None, ge=64, le=2048
        ),
        num_outputs: int = Input(description="Number of images to generate.", default=1, ge=1, le=10),
        num_inference_steps: int = Input(description="Number of denoising steps.", default=50, ge=1, le=500),
        guidance_scale: float = Input(description="Scale for classifier-free guidance.", default=7.5, ge=1.0, le=20.0),
        prompt_strength: float = Input(
            description="How much img2img and inpainting change image: 1.0 replaces it entirely.", default=0.8, ge=0.0, le=1.0
        ),
        scheduler: str = Input(
            description="Denoising scheduler (A1111 sampler names, or the public dream templates' names).", default="DDIM", choices=SCHEDULERS
        ),
        seed: Optional[int] = Input(description="Random seed; image i uses seed + i. Random when empty (the seed is logged).", default=None),
        lora_weights: Optional[Path] = Input(
            description="A LoRA to apply on top (.safetensors, diffusers/peft or kohya/A1111 keys): a URL or a file.", default=None
        ),
        lora_scale: float = Input(description="Strength of lora_weights: 0 leaves the model as it is.", default=1.0, ge=-1.0, le=3.0),
        extra_lora: Optional[Path] = Input(description="A second LoRA to combine with lora_weights (.safetensors).", default=None),
        extra_lora_scale: float = Input(description="Strength of extra_lora.", default=1.0, ge=-1.0, le=3.0),
        output_format: str = Input(description="Format of the output images.", default="png", choices=OUTPUT_FORMATS),
        output_quality: int = Input(description="Quality of jpg and webp outputs, 0 to 100 (png is lossless).", default=80, ge=0, le=100),
        disable_safety_check: bool = Input(description="Skip the safety checker, which otherwise leaves out images it flags.", default=False),
        return_control_image: bool = Input(description="Also return the processed control image (first in the list).", default=False),
        control_preprocess: bool = Input(
            description="Turn control_image into an ADE20K segmentation first; false: control_image already is one (your own map or skeleton).",
            default=True,
        ),
        controlnet_conditioning_scale: float = Input(description="How strongly the control image steers the output.", default=1.0, ge=0.0, le=4.0),
    ) -> list[Path]:
        """Generate images with the fine-tuned model, guided by an ADE20K segmentation."""
        return _generate(self.generator, dict(locals()))
