"""The FLUX templates (vanilla-flux, vanilla-flux-schnell) in the real Cog HTTP server on CPU with
the tiny FLUX bases: a LoRA training's output fused into its base, or run on a server of the base
(fast boot), the per-variant defaults, the three modes, LoRA on top, the schema's FLUX inputs, and
what is refused."""

import numpy as np
import pytest

from tests.conftest import INSTANCE_PROMPT, start_template
from tests.helpers import post
from tests.test_templates_server import lora_url, mask_png, outputs, pixels, png_url, predict, shapes_png, size_of

SMALL = {"width": 64, "height": 64, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def flux_server(tmp_path_factory, flux_lora_output, tiny_flux, safety_checker):
    """vanilla-flux with the tiny FLUX.1-dev base baked and a LoRA training's output as its weights."""
    with start_template(tmp_path_factory, "vanilla-flux", weights=flux_lora_output, base=tiny_flux, safety_checker=safety_checker) as server:
        yield server


@pytest.fixture(scope="module")
def flux_base_server(tmp_path_factory, tiny_flux, safety_checker):
    """vanilla-flux serving its base (fast boot): the plain base, or a LoRA version named in a
    request's Cog context."""
    with start_template(tmp_path_factory, "vanilla-flux", weights=None, base=tiny_flux, safety_checker=safety_checker, serve_base=True) as server:
        yield server


def test_a_flux_lora_output_runs_fused_into_its_base(flux_server, flux_base_server, flux_lora_output):
    """The version's defaults: its instance prompt, the native size, dev's 28 steps at guidance 3.5;
    its LoRA changes the image; the same LoRA on top of the base alone changes it too."""
    body = predict(flux_server, num_inference_steps=None, seed=3)
    (image,) = outputs(body)
    assert size_of(image) == (64, 64) and "28 steps of flow matching" in body["logs"]
    assert f"Fused the fine-tune's LoRA {flux_lora_output}" not in body["logs"]  # at setup, not per prediction
    lora, plain = (outputs(predict(server, prompt=INSTANCE_PROMPT, **SMALL))[0] for server in (flux_server, flux_base_server))
    assert lora != plain
    on_top = outputs(
        predict(flux_base_server, prompt=INSTANCE_PROMPT, lora_weights=lora_url(flux_lora_output / "pytorch_lora_weights.safetensors"), **SMALL)
    )
    assert on_top != plain and outputs(predict(flux_base_server, prompt=INSTANCE_PROMPT, **SMALL))[0] == plain  # no trace left
    guided = outputs(predict(flux_base_server, prompt=INSTANCE_PROMPT, guidance=7.0, **SMALL))[0]
    assert guided != plain  # dev's guidance embedding reads it
    # Fast boot: the version named in the Cog context runs on the base's server, unfused x W + (x B) A
    # against its own server's fused x (W + B A): float rounding only; the plain base after it, untouched.
    status, body = post(
        f"{flux_base_server.url}/predictions",
        {"input": {"prompt": INSTANCE_PROMPT, "seed": 42, **SMALL}, "context": {"dreambuild_version_weights": str(flux_lora_output)}},
    )
    assert status == 200, body
    difference = np.abs(pixels(outputs(body)[0]) - pixels(lora))
    assert difference.max() <= 2 and difference.mean() < 0.05, (difference.max(), difference.mean())
    assert outputs(predict(flux_base_server, prompt=INSTANCE_PROMPT, **SMALL))[0] == plain


def test_img2img_and_inpainting_keep_the_requested_size_and_txt2img_takes_an_aspect_ratio(flux_server):
    img2img = outputs(predict(flux_server, image=png_url(shapes_png((96, 64))), width=96, height=64, num_inference_steps=4))
    inpaint = outputs(predict(flux_server, image=png_url(shapes_png()), mask=png_url(mask_png()), **{**SMALL, "num_inference_steps": 4}))
    assert size_of(img2img[0]) == (96, 64) and size_of(inpaint[0]) == (64, 64)
    wide = outputs(predict(flux_server, aspect_ratio="16:9", num_inference_steps=2))  # Replicate's FLUX models' input
    assert size_of(wide[0]) == (80, 48)  # about the tiny base's 64² pixels at 16:9, in 16-pixel blocks


def test_the_schema_has_flux_s_inputs(flux_server):
    import httpx

    inputs = httpx.get(f"{flux_server.url}/openapi.json").json()["components"]["schemas"]["Input"]["properties"]
    assert {"guidance", "prompt", "image", "mask", "lora_weights", "aspect_ratio"} <= set(inputs)
    assert not {"negative_prompt", "scheduler", "prompt_syntax", "guidance_scale"} & set(inputs)


def test_a_size_off_flux_s_blocks_fails_clearly(flux_server):
    body = predict(flux_server, **{**SMALL, "width": 72})
    assert body["status"] == "failed" and "width=72 is not a positive multiple of 16 (FLUX's VAE and latent packing" in body["error"]


def _generator(template, weights, base, tmp_path):
    from templates.inference.generator import ImageGenerator
    from templates.inference.locations import WeightLocations

    missing = tmp_path / "not-baked"
    generator = ImageGenerator(template, WeightLocations(weights, missing, missing, missing, base=base or missing))
    generator.setup()
    return generator


def test_schnell_defaults_to_four_steps(tiny_flux_schnell, tmp_path, caplog):
    from templates.inference.request import GenerationRequest

    generator = _generator("vanilla-flux-schnell", tiny_flux_schnell, None, tmp_path)
    with caplog.at_level("INFO"):
        (path,) = generator.generate(GenerationRequest(prompt="a toy", width=64, height=64, num_inference_steps=None, disable_safety_check=True))
    assert path.read_bytes()[:4] == b"\x89PNG" and "4 steps of flow matching" in caplog.text


def test_a_template_of_another_family_refuses_the_weights(tiny_flux, lora_output, tmp_path):
    """An SD LoRA on the FLUX template, and FLUX weights on the SD one: refused, naming why."""
    from templates.inference.request import GenerationRequest

    for template, weights, base, message in (
        ("vanilla-flux", lora_output, tiny_flux, "was trained on base sha256:"),
        ("vanilla", tiny_flux, None, "are a FLUX.1 pipeline, and the vanilla template runs Stable Diffusion"),
    ):
        generator = _generator(template, weights, base, tmp_path)
        with pytest.raises(Exception, match=message):
            generator.generate(GenerationRequest(prompt="a toy", **SMALL))


def test_a_lora_layer_left_unfused_is_an_error_not_dropped(tiny_flux, flux_lora_output, tmp_path, monkeypatch):
    """Fusing names every component a LoRA adapts; were one left out (diffusers fuses FLUX's
    transformer alone by default), its adapters would be unloaded unfused: an error instead."""
    import templates.inference.loras as loras

    monkeypatch.setattr(loras, "lora_components", lambda pipe: ["transformer"])
    with pytest.raises(RuntimeError, match=r"LoRA layers left unfused: text_encoder\."):
        _generator("vanilla-flux", flux_lora_output, tiny_flux, tmp_path)


def test_a_compiled_flux_base_switches_versions_and_loras_without_recompiling(tmp_path, monkeypatch, tiny_flux, flux_lora_output):
    """DREAMBUILD_TORCH_COMPILE=1 compiles FLUX's transformer: LoRA versions and a user's LoRA are
    fused in place (templates/inference/fused.py), nothing recompiles, and the images are the eager
    server's up to float rounding."""
    import torch

    from fixtures.tiny_models import build_tiny_lora
    from templates.inference.fused import FusedLoras
    from templates.inference.request import GenerationRequest
    from tests.conftest import _lora_output
    from tests.test_templates_compiled import close

    second = _lora_output(tmp_path, tiny_flux, build_tiny_lora(tmp_path / "b" / "b.safetensors", tiny_flux, seed=1))

    def run(generator, **inputs) -> list[bytes]:
        request = GenerationRequest(prompt=INSTANCE_PROMPT, disable_safety_check=True, seed=42, **SMALL, **inputs)
        return [path.read_bytes() for path in generator.generate(request)]

    torch._dynamo.reset()
    monkeypatch.setenv("DREAMBUILD_SERVE_BASE", "1")
    monkeypatch.setenv("DREAMBUILD_TORCH_COMPILE", "1")
    # torch's own patch: pytest's monkeypatch deletes a config module's value on undo, hiding it from later tests
    with torch._dynamo.config.patch(error_on_recompile=True):  # any recompilation fails the test
        try:
            compiled = _generator("vanilla-flux", tmp_path / "none", tiny_flux, tmp_path)
            assert isinstance(compiled.loras, FusedLoras)
            plain = run(compiled)  # compiles
            first = run(compiled, version_weights=flux_lora_output)
            other = run(compiled, version_weights=second)
            again = run(compiled, version_weights=flux_lora_output)
        finally:
            torch._dynamo.reset()
    assert again == first and len({plain[0], first[0], other[0]}) == 3
    monkeypatch.delenv("DREAMBUILD_TORCH_COMPILE")
    monkeypatch.delenv("DREAMBUILD_SERVE_BASE")
    assert close(first, run(_generator("vanilla-flux", flux_lora_output, tiny_flux, tmp_path)))
