"""The shared fixture generator writes loadable models with the intended behaviour."""

import numpy as np
import torch

from dreambuild.layout import check_diffusers_layout
from fixtures.tiny_models import build_tiny_controlnet, build_tiny_safety_checker


def test_tiny_pipeline_layout_and_native_size(tiny_base):
    index = check_diffusers_layout(tiny_base, "tiny base")
    assert index["_class_name"] == "StableDiffusionPipeline" and index["safety_checker"] == [None, None]
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, local_files_only=True)
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    assert pipe.tokenizer.model_max_length == 77


def test_tiny_controlnet_conditions_the_unet(tiny_base, tmp_path):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from PIL import Image

    controlnet = ControlNetModel.from_pretrained(build_tiny_controlnet(tmp_path / "cn", tiny_base), local_files_only=True)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(tiny_base, controlnet=controlnet, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)

    def run(control):
        return pipe("a toy", image=control, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images[0]

    black, white = Image.new("RGB", (64, 64)), Image.new("RGB", (64, 64), (255, 255, 255))
    assert run(black).shape == (64, 64, 3)
    assert not np.allclose(run(black), run(white))


def test_tiny_safety_checker_flags_on_request(tmp_path):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    images = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)
    for flag, expected in ((False, [False, False]), (True, [True, True])):
        path = build_tiny_safety_checker(tmp_path / f"sc-{flag}", flag_everything=flag)
        checker = StableDiffusionSafetyChecker.from_pretrained(path, local_files_only=True)
        inputs = CLIPImageProcessor.from_pretrained(path)([(i * 255).astype(np.uint8) for i in images], return_tensors="pt")
        _, flagged = checker(images=images.copy(), clip_input=inputs.pixel_values)
        assert list(flagged) == expected
