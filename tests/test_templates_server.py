"""The vanilla, canny and pose templates in the real Cog HTTP server (coglet) on CPU, with tiny
random weights: generation modes, seeds, prompt syntax, schedulers, LoRA on top, output formats,
bad input. The other ControlNet templates: tests/test_templates_controlnet.py."""

import base64
import hashlib
import io
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from templates.cog_models import SCHEDULERS
from tests.conftest import INSTANCE_PROMPT, start_template
from tests.helpers import image_bytes, post

FAST = {"num_inference_steps": 3, "seed": 42}


def png_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def shapes_png(size=(96, 80), offset=0) -> bytes:
    """A picture with edges: shapes on a dark background."""
    image = Image.new("RGB", size, (10, 10, 30))
    draw = ImageDraw.Draw(image)
    draw.rectangle((10 + offset, 10, 50 + offset, 60), fill=(240, 240, 240))
    draw.ellipse((55, 20 + offset, 90, 70 + offset), fill=(200, 60, 60))
    draw.rectangle((60, 2, 90, 14), fill=(22, 22, 42))  # faint: only low Canny thresholds see it
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def mask_png(size=(64, 64)) -> bytes:
    image = Image.new("L", size, 0)
    image.paste(255, (16, 16, 48, 48))  # white: repaint
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def predict(server, **inputs) -> dict:
    """Run a prediction; an input given as None is left out (Cog's default applies)."""
    body = {k: v for k, v in {**FAST, **inputs}.items() if v is not None}
    status, body = post(f"{server.url}/predictions", {"input": body})
    assert status == 200, (status, body)
    return body


def outputs(body) -> list[bytes]:
    """The prediction's output files, checked to be PNGs."""
    assert body["status"] == "succeeded", body.get("error")
    files = []
    for value in body["output"]:
        assert value.startswith("data:image/png;base64,"), value[:60]
        data = base64.b64decode(value.split(",", 1)[1])
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        files.append(data)
    return files


def size_of(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def digest(png: bytes) -> str:
    return hashlib.sha256(png).hexdigest()


def failed(server, **inputs) -> str:
    body = predict(server, **inputs)
    assert body["status"] == "failed", body.get("output")
    return body["error"]


# --- vanilla: txt2img, img2img, inpainting -------------------------------------------------


def test_txt2img_returns_pngs_of_the_requested_size(vanilla_server):
    files = outputs(predict(vanilla_server, prompt="a cjw toy", width=80, height=64, num_outputs=2))
    assert len(files) == 2 and all(size_of(f) == (80, 64) for f in files)
    assert digest(files[0]) != digest(files[1])  # image i uses seed + i


def test_defaults_are_the_native_size_and_the_instance_prompt(vanilla_server):
    default = outputs(predict(vanilla_server))
    explicit = outputs(predict(vanilla_server, prompt=INSTANCE_PROMPT, width=64, height=64))
    assert size_of(default[0]) == (64, 64)
    assert default == explicit
    assert default != outputs(predict(vanilla_server, prompt="a photo of a dog"))


def test_same_seed_is_byte_identical_and_other_seeds_differ(vanilla_server):
    first = outputs(predict(vanilla_server, prompt="a cjw toy", seed=7))
    again = outputs(predict(vanilla_server, prompt="a cjw toy", seed=7))
    other = outputs(predict(vanilla_server, prompt="a cjw toy", seed=8))
    assert first == again and first != other


def test_image_i_uses_seed_plus_i(vanilla_server):
    batch = outputs(predict(vanilla_server, prompt="a cjw toy", seed=7, num_outputs=2))
    second = Image.open(io.BytesIO(outputs(predict(vanilla_server, prompt="a cjw toy", seed=8))[0]))
    diff = max(abs(a - b) for a, b in zip(Image.open(io.BytesIO(batch[1])).tobytes(), second.tobytes()))
    assert diff <= 2  # batched and single runs differ only by float rounding


def test_random_seed_is_logged_and_reproduces(vanilla_server):
    body = predict(vanilla_server, prompt="a cjw toy", seed=None)
    seed = int(re.search(r"Using seed: (\d+)", body["logs"]).group(1))
    assert outputs(body) == outputs(predict(vanilla_server, prompt="a cjw toy", seed=seed))


def test_img2img_and_inpainting_run(vanilla_server):
    photo = png_url(shapes_png())
    txt2img = outputs(predict(vanilla_server, prompt="a cjw toy"))
    img2img = outputs(predict(vanilla_server, prompt="a cjw toy", image=photo, prompt_strength=0.6, num_inference_steps=5))
    inpaint = outputs(predict(vanilla_server, prompt="a cjw toy", image=photo, mask=png_url(mask_png()), num_inference_steps=5))
    assert size_of(img2img[0]) == size_of(inpaint[0]) == (64, 64)
    assert len({digest(txt2img[0]), digest(img2img[0]), digest(inpaint[0])}) == 3
    weaker = outputs(predict(vanilla_server, prompt="a cjw toy", image=photo, prompt_strength=0.3, num_inference_steps=5))
    assert weaker != img2img


def test_weighted_prompt_syntax_changes_the_conditioning(vanilla_server):
    plain = outputs(predict(vanilla_server, prompt="a red toy on a beach"))
    # Weight 1.0 is the plain prompt: compel parsed the syntax rather than encoding "(red)1.0".
    assert outputs(predict(vanilla_server, prompt="a (red)1.0 toy on a beach")) == plain
    assert outputs(predict(vanilla_server, prompt="a (red)1.5 toy on a beach")) != plain
    assert outputs(predict(vanilla_server, prompt="a red toy++ on a beach--")) != plain
    weighted_negative = outputs(predict(vanilla_server, prompt="a red toy on a beach", negative_prompt="(blurry)1.4"))
    assert weighted_negative != outputs(predict(vanilla_server, prompt="a red toy on a beach", negative_prompt="blurry"))


def test_prompts_longer_than_77_tokens_are_not_truncated(vanilla_server):
    long_prompt = "a photo of a cjw toy, " * 6  # the fixture's tokenizer has one token per character
    assert len(long_prompt) > 100
    base = outputs(predict(vanilla_server, prompt=long_prompt))
    assert outputs(predict(vanilla_server, prompt=long_prompt + "in the snow")) != base


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_runs(vanilla_server, scheduler):
    body = predict(vanilla_server, prompt="a cjw toy", scheduler=scheduler, num_inference_steps=2)
    assert len(outputs(body)) == 1
    assert f"steps of {scheduler}" in body["logs"]


def test_sde_schedulers_are_reproducible_by_seed(vanilla_server):
    """The SDE schedulers' Brownian noise is seeded from the prediction's seed too."""
    first = outputs(predict(vanilla_server, prompt="a cjw toy", scheduler="DPM++ SDE Karras", seed=3))
    assert outputs(predict(vanilla_server, prompt="a cjw toy", scheduler="DPM++ SDE Karras", seed=3)) == first
    assert outputs(predict(vanilla_server, prompt="a cjw toy", scheduler="DPM++ SDE Karras", seed=4)) != first


def test_a1111_prompt_syntax_reaches_the_model(vanilla_server):
    plain = outputs(predict(vanilla_server, prompt="a red toy on a beach"))
    a1111 = outputs(predict(vanilla_server, prompt="a (red:1.5) toy on a [beach]"))
    assert a1111 != plain
    assert outputs(predict(vanilla_server, prompt="a (red)1.5 toy on a (beach)0.909091", prompt_syntax="compel")) == a1111
    # The same text read as compel's syntax is another conditioning ((red:1.5) is literal text there).
    assert outputs(predict(vanilla_server, prompt="a (red:1.5) toy on a [beach]", prompt_syntax="compel")) != a1111


@pytest.mark.parametrize("fmt, magic", [("jpg", b"\xff\xd8\xff"), ("webp", b"RIFF")])
def test_output_formats(vanilla_server, fmt, magic):
    def files(**inputs):
        body = predict(vanilla_server, prompt="a cjw toy", output_format=fmt, **inputs)
        assert body["status"] == "succeeded", body.get("error")
        return [base64.b64decode(value.split(",", 1)[1]) for value in body["output"]]

    best, worst = files(output_quality=100)[0], files(output_quality=5)[0]
    assert best.startswith(magic) and worst.startswith(magic) and len(worst) < len(best)
    assert Image.open(io.BytesIO(best)).size == (64, 64)


# --- LoRA on top --------------------------------------------------------------------------------


def lora_url(path) -> str:
    return png_url(path.read_bytes(), "application/octet-stream")


def test_lora_changes_the_image_and_leaves_no_trace(vanilla_server, loras):
    before = outputs(predict(vanilla_server, prompt="a cjw toy"))
    with_lora = outputs(predict(vanilla_server, prompt="a cjw toy", lora_weights=lora_url(loras["diffusers"])))
    after = outputs(predict(vanilla_server, prompt="a cjw toy"))
    assert with_lora != before and after == before  # byte-identical: the adapter is off again
    # Cached by content: the same LoRA again gives the same image; its scale matters.
    again = predict(vanilla_server, prompt="a cjw toy", lora_weights=lora_url(loras["diffusers"]))
    assert outputs(again) == with_lora and "loaded from" not in again["logs"]
    assert outputs(predict(vanilla_server, prompt="a cjw toy", lora_weights=lora_url(loras["diffusers"]), lora_scale=0.3)) != with_lora
    assert outputs(predict(vanilla_server, prompt="a cjw toy", lora_weights=lora_url(loras["diffusers"]), lora_scale=0.0)) == before


def test_kohya_loras_and_a_second_lora(vanilla_server, loras):
    before = outputs(predict(vanilla_server, prompt="a cjw toy"))
    kohya = outputs(predict(vanilla_server, prompt="a cjw toy", lora_weights=lora_url(loras["kohya"])))
    first = outputs(predict(vanilla_server, prompt="a cjw toy", lora_weights=lora_url(loras["diffusers"])))
    both = outputs(
        predict(
            vanilla_server, prompt="a cjw toy", lora_weights=lora_url(loras["diffusers"]), extra_lora=lora_url(loras["other"]), extra_lora_scale=0.8
        )
    )
    assert len({digest(f[0]) for f in (before, kohya, first, both)}) == 4
    assert outputs(predict(vanilla_server, prompt="a cjw toy")) == before


def test_bad_loras_fail_clearly_and_change_nothing(vanilla_server, loras, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    before = outputs(predict(vanilla_server, prompt="a cjw toy"))
    pickled = tmp_path / "lora.bin"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, pickled)
    assert "lora_weights is not a .safetensors file" in failed(vanilla_server, prompt="a cjw toy", lora_weights=lora_url(pickled))
    plain = tmp_path / "not-a-lora.safetensors"
    save_file({"weight": torch.zeros(2)}, plain)
    assert "extra_lora holds no LoRA weights" in failed(vanilla_server, prompt="a cjw toy", extra_lora=lora_url(plain))
    # A LoRA for another model: its layers' shapes do not fit this one's.
    other = tmp_path / "other-base.safetensors"
    save_file({k: v if v.dim() == 0 else torch.zeros([n * 2 for n in v.shape]) for k, v in load_file(loras["kohya"]).items()}, other)
    assert "lora_weights cannot be applied to this model" in failed(vanilla_server, prompt="a cjw toy", lora_weights=lora_url(other))
    assert outputs(predict(vanilla_server, prompt="a cjw toy")) == before


def test_lora_on_canny_and_pose(canny_server, pose_server, loras):
    person = png_url(image_bytes(size=(64, 96)))
    for server, control in ((canny_server, png_url(shapes_png())), (pose_server, person)):
        before = outputs(predict(server, prompt="a cjw toy", control_image=control))
        with_lora = outputs(predict(server, prompt="a cjw toy", control_image=control, lora_weights=lora_url(loras["kohya"])))
        assert with_lora != before and outputs(predict(server, prompt="a cjw toy", control_image=control)) == before


def test_safety_checker_runs_and_keeps_clean_images(vanilla_server):
    body = predict(vanilla_server, prompt="a cjw toy", num_outputs=2)
    assert len(outputs(body)) == 2 and "flagged" not in body["logs"]


# --- bad input: a failed prediction whose error names the problem ---------------------------


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"width": 100}, "width=100 is not a positive multiple of 8"),
        ({"height": 68}, "height=68 is not a positive multiple of 8"),
        ({"width": 2048, "height": 2048}, "2048x2048 is 4194304 pixels, over the limit of 1048576"),
        ({"mask": "MASK"}, "mask was given without image"),
        ({"image": "BROKEN"}, "image 'image' cannot be read"),
        ({"image": "PHOTO", "mask": "BROKEN"}, "image 'mask' cannot be read"),
        ({"image": "PHOTO", "prompt_strength": 0.1, "num_inference_steps": 5}, "leaves no denoising step"),
    ],
)
def test_bad_input_fails_with_a_clear_error(vanilla_server, inputs, message):
    files = {"MASK": png_url(mask_png()), "BROKEN": png_url(b"not an image at all"), "PHOTO": png_url(shapes_png())}
    inputs = {k: files.get(v, v) if isinstance(v, str) else v for k, v in inputs.items()}
    assert message in failed(vanilla_server, prompt="a cjw toy", **inputs)


@pytest.mark.parametrize(
    "inputs, field",
    [
        ({"scheduler": "EULER_MAGIC"}, "scheduler"),
        ({"num_outputs": 11}, "num_outputs"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"width": "wide"}, "width"),
    ],
)
def test_schema_rejects_unknown_choices_and_fields(vanilla_server, inputs, field):
    status, body = post(f"{vanilla_server.url}/predictions", {"input": {"prompt": "a cjw toy", **inputs}})
    assert status == 422, body
    assert field in str(body["detail"])


# --- ControlNet templates ---------------------------------------------------------------------


def test_canny_controlnet_txt2img_and_img2img(canny_server):
    control = png_url(shapes_png())
    plain = outputs(predict(canny_server, prompt="a cjw toy"))
    guided = outputs(predict(canny_server, prompt="a cjw toy", control_image=control, return_control_image=True))
    assert len(guided) == 2 and all(size_of(f) == (64, 64) for f in guided)
    edges = np.asarray(Image.open(io.BytesIO(guided[0])))
    assert (edges[..., 0] == edges[..., 1]).all() and edges.min() == 0 and edges.max() > 200  # an edge map
    assert guided[1] != plain[0]
    moved = outputs(predict(canny_server, prompt="a cjw toy", control_image=png_url(shapes_png(offset=8))))
    assert moved[0] != guided[1]  # the control image steers the result

    photo = png_url(shapes_png(size=(64, 64)))
    img2img = outputs(predict(canny_server, prompt="a cjw toy", image=photo, num_inference_steps=5))
    controlled = outputs(predict(canny_server, prompt="a cjw toy", image=photo, control_image=control, num_inference_steps=5))
    assert controlled != img2img
    inpaint = outputs(predict(canny_server, prompt="a cjw toy", image=photo, mask=png_url(mask_png()), control_image=control))
    assert size_of(inpaint[0]) == (64, 64)


def test_canny_thresholds_change_the_edge_map(canny_server):
    control = png_url(shapes_png())
    low = outputs(predict(canny_server, control_image=control, return_control_image=True, low_threshold=1, high_threshold=2))
    high = outputs(predict(canny_server, control_image=control, return_control_image=True, low_threshold=250, high_threshold=255))
    assert np.asarray(Image.open(io.BytesIO(low[0]))).sum() > np.asarray(Image.open(io.BytesIO(high[0]))).sum()
    error = failed(canny_server, control_image=control, low_threshold=200, high_threshold=100)
    assert "control_image preprocessing (canny) failed: low_threshold=200 is above high_threshold=100" in error


def test_unreadable_control_image_fails(canny_server):
    assert "image 'control_image' cannot be read" in failed(canny_server, control_image=png_url(b"GIF89a broken"))


def test_pose_controlnet_txt2img_and_img2img(pose_server):
    person = png_url(image_bytes(size=(64, 96)))
    body = predict(pose_server, prompt="a cjw toy", control_image=person, return_control_image=True, include_hand=True, include_face=True)
    files = outputs(body)
    assert len(files) == 2 and size_of(files[0]) == size_of(files[1]) == (64, 64)
    assert "controlnet-txt2img" in body["logs"]
    body = predict(pose_server, prompt="a cjw toy", control_image=person, image=png_url(shapes_png()), num_inference_steps=5)
    assert len(outputs(body)) == 1 and "controlnet-img2img" in body["logs"]


# --- SDXL weights ------------------------------------------------------------------------------


def test_sdxl_weights_run_in_the_vanilla_template(tmp_path_factory, tiny_sdxl, loras, safety_checker):
    """txt2img, img2img and inpainting with SDXL's pipelines; weighting through compel's SDXL
    encoder (both text encoders and the pooled embedding); an SD 1.5 LoRA is refused clearly."""
    with start_template(tmp_path_factory, "vanilla", weights=tiny_sdxl, safety_checker=safety_checker) as server:
        plain = outputs(predict(server, prompt="a red toy", width=80, height=64))
        assert size_of(plain[0]) == (80, 64) and outputs(predict(server, prompt="a red toy", width=80, height=64)) == plain
        assert outputs(predict(server, prompt="a (red)1.5 toy", width=80, height=64)) != plain
        photo = png_url(shapes_png(size=(64, 64)))
        img2img = predict(server, prompt="a red toy", image=photo, num_inference_steps=4)
        inpaint = predict(server, prompt="a red toy", image=photo, mask=png_url(mask_png()), num_inference_steps=4)
        assert "img2img 64x64" in img2img["logs"] and "inpaint 64x64" in inpaint["logs"]
        assert outputs(img2img) != outputs(inpaint)
        error = failed(server, prompt="a red toy", lora_weights=lora_url(loras["diffusers"]))
        assert "lora_weights" in error and ("cannot be applied to this model" in error or "no weights for this model's layers" in error)
        assert outputs(predict(server, prompt="a red toy", width=80, height=64)) == plain


def test_sdxl_weights_in_a_controlnet_template_fail_clearly(tmp_path, tiny_sdxl, tiny_controlnet):
    from templates.inference.generator import ImageGenerator
    from templates.inference.locations import WeightLocations
    from templates.inference.request import GenerationRequest

    missing = tmp_path / "none"
    generator = ImageGenerator("controlnet-canny", WeightLocations(tiny_sdxl, tiny_controlnet, missing, missing))
    generator.setup()
    with pytest.raises(Exception, match="are an SDXL pipeline, and the controlnet-canny template's ControlNet is for SD 1.x"):
        generator.generate(GenerationRequest(prompt="a toy", num_inference_steps=2, disable_safety_check=True))


# --- a LoRA training's output on a template with a baked base ---------------------------------


def test_a_lora_output_runs_fused_into_the_baked_base(tmp_path_factory, tmp_path, tiny_base, lora_output, safety_checker):
    """The same images as the base with the LoRA fused into it and saved as a full pipeline."""
    from diffusers import StableDiffusionPipeline

    from templates.inference.generator import ImageGenerator
    from templates.inference.locations import WeightLocations
    from templates.inference.request import GenerationRequest

    with start_template(tmp_path_factory, "vanilla", weights=lora_output, base=tiny_base, safety_checker=safety_checker) as server:
        assert server.setup.get("status") == "succeeded" and "Fused the fine-tune's LoRA" in server.logs()
        from_lora = outputs(predict(server))  # the instance prompt of the LoRA's args.json
    with start_template(tmp_path_factory, "vanilla", weights=tiny_base, safety_checker=safety_checker) as plain:
        assert outputs(predict(plain, prompt=INSTANCE_PROMPT)) != from_lora

    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None, requires_safety_checker=False, local_files_only=True)
    pipe.load_lora_weights(lora_output, weight_name="pytorch_lora_weights.safetensors")
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.save_pretrained(tmp_path / "fused")
    missing = tmp_path / "none"
    generator = ImageGenerator("vanilla", WeightLocations(tmp_path / "fused", missing, missing, missing))
    generator.setup()
    paths = generator.generate(GenerationRequest(prompt=INSTANCE_PROMPT, num_inference_steps=3, seed=42, disable_safety_check=True))
    assert [p.read_bytes() for p in paths] == from_lora


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_lora_versions_run_on_their_templates_warm_base(tmp_path_factory, tiny_base, lora_output, loras, other_base, safety_checker):
    """Fast boot: one server of the template, its base loaded, runs LoRA versions named in each
    request's Cog context (never an input). A version's images match its own cold server's (fused)
    within rounding; another version differs; switching back reuses the loaded adapters; a user's
    LoRA still goes on top; without a version it is the plain base; a version of another base is refused."""
    from templates.inference.generator import ImageGenerator
    from templates.inference.locations import WeightLocations
    from templates.inference.request import GenerationRequest
    from tests.conftest import _lora_output

    second = _lora_output(tmp_path_factory.mktemp("second-version"), tiny_base, loras["other"])
    foreign = _lora_output(tmp_path_factory.mktemp("foreign-version"), other_base, loras["diffusers"])

    def run(server, version=None, **inputs):
        body = {"input": {k: v for k, v in {**FAST, **inputs}.items() if v is not None}}
        if version is not None:
            body["context"] = {"dreambuild_version_weights": str(version)}
        status, answer = post(f"{server.url}/predictions", body)
        assert status == 200, (status, answer)
        return answer

    with start_template(tmp_path_factory, "vanilla", weights=lora_output, base=tiny_base, safety_checker=safety_checker) as cold:
        fused = outputs(predict(cold))  # the version's own image: its LoRA fused at setup
        body = run(cold, second)
        assert body["status"] == "failed" and "does not serve its base" in body["error"]
    with start_template(tmp_path_factory, "vanilla", weights=None, base=tiny_base, safety_checker=safety_checker, serve_base=True) as warm:
        assert warm.setup.get("status") == "succeeded" and "Fused" not in warm.logs()
        first = outputs(run(warm, lora_output))  # no prompt: the version's instance prompt
        # Fused x(W + BA) against unfused xW + (xB)A: float rounding only (fp32 here).
        difference = np.abs(pixels(first[0]) - pixels(fused[0]))
        assert difference.max() <= 2 and difference.mean() < 0.05, (difference.max(), difference.mean())
        other = outputs(run(warm, second))
        assert other != first
        assert outputs(run(warm, lora_output)) == first  # back to the first version: the same image, its adapter still loaded
        assert warm.logs().count("from the version's LoRA") == 2  # loaded once per version
        on_top = outputs(run(warm, lora_output, lora_weights=lora_url(loras["kohya"])))
        assert on_top != first
        plain = outputs(run(warm, prompt=INSTANCE_PROMPT))
        assert plain not in (first, other, on_top)
        body = run(warm, foreign)
        assert body["status"] == "failed" and "trained on base sha256:" in body["error"] and "this server serves base" in body["error"]
    missing = tmp_path_factory.mktemp("none") / "none"
    generator = ImageGenerator("vanilla", WeightLocations(tiny_base, missing, missing, missing))
    generator.setup()
    paths = generator.generate(GenerationRequest(prompt=INSTANCE_PROMPT, **FAST, disable_safety_check=True))
    assert [p.read_bytes() for p in paths] == plain  # the plain base: no trace of the versions' adapters


def test_a_server_started_ahead_loads_the_weights_its_first_prediction_names(tmp_path_factory, vanilla_server, fine_tune, tiny_base, safety_checker):
    """A full fine-tune's server started before its version is known (DREAMBUILD_WEIGHTS_LATER):
    its first prediction names the weights in the Cog context and gets the same image as a server
    set up with them; later ones run on them, and may not name others."""

    def run(server, weights=None, **inputs):
        body = {"input": {**FAST, "prompt": INSTANCE_PROMPT, **inputs}}
        if weights is not None:
            body["context"] = {"dreambuild_weights": str(weights)}
        status, answer = post(f"{server.url}/predictions", body)
        assert status == 200, (status, answer)
        return answer

    expected = outputs(predict(vanilla_server, prompt=INSTANCE_PROMPT))
    project = tmp_path_factory.mktemp("ahead")
    env = {"DREAMBUILD_WEIGHTS_LATER": "1", "DREAMBUILD_WEIGHTS": str(project / "not-yet"), "DREAMBUILD_SAFETY_CHECKER": str(safety_checker)}
    from builder.cog.server import start_cog_server

    with start_cog_server("templates/cog_models.py:Vanilla", project, env=env) as ahead:
        assert ahead.setup.get("status") == "succeeded" and "Started ahead" in ahead.logs()
        body = run(ahead)
        assert body["status"] == "failed" and "started ahead of its weights" in body["error"]
        body = run(ahead, fine_tune)
        assert outputs(body) == expected and body["metrics"]["weights_load_time"] > 0
        again = run(ahead)  # bound: no context needed now, and no second load
        assert outputs(again) == expected and "weights_load_time" not in again["metrics"]
        body = run(ahead, tiny_base)
        assert body["status"] == "failed" and "runs the weights in" in body["error"]


def test_a_lora_output_on_another_base_or_none_fails_every_prediction_clearly(tmp_path, lora_output, other_base):
    from templates.inference.generator import ImageGenerator
    from templates.inference.locations import WeightLocations
    from templates.inference.request import GenerationRequest

    missing = tmp_path / "none"
    for base, message in ((other_base, "was trained on base sha256:"), (missing, "are LoRA adapters (pytorch_lora_weights.safetensors)")):
        generator = ImageGenerator("vanilla", WeightLocations(lora_output, missing, missing, missing, base=base))
        generator.setup()
        with pytest.raises(Exception, match=re.escape(message)):
            generator.generate(GenerationRequest(prompt="a cjw toy", num_inference_steps=2, disable_safety_check=True))


def test_weights_a_server_started_ahead_cannot_load_fail_each_prediction_clearly(tmp_path, tiny_base, monkeypatch):
    """A server started ahead is bound to the weights its first prediction names; when they cannot
    be loaded, that prediction and every later one say why (not a bare "no weights loaded")."""
    import shutil

    from templates.inference.generator import ImageGenerator
    from templates.inference.locations import WeightLocations
    from templates.inference.request import GenerationRequest

    broken = tmp_path / "broken"
    shutil.copytree(tiny_base, broken)
    (unet,) = (broken / "unet").glob("*.safetensors")
    unet.write_bytes(unet.read_bytes()[:100])  # cut short
    monkeypatch.setenv("DREAMBUILD_WEIGHTS_LATER", "1")
    missing = tmp_path / "none"
    generator = ImageGenerator("vanilla", WeightLocations(missing, missing, missing, missing))
    generator.setup()
    request = GenerationRequest(prompt="a cjw toy", num_inference_steps=2, disable_safety_check=True, weights=broken)
    with pytest.raises(Exception):
        generator.generate(request)
    with pytest.raises(Exception, match=re.escape(f"the weights in {broken} could not be loaded")):
        generator.generate(GenerationRequest(prompt="a cjw toy", num_inference_steps=2, disable_safety_check=True))


def test_a_template_reads_its_bases_baked_digest(tmp_path, lora_output, tiny_base):
    """Setup compares the LoRA's base with the digest baked beside the base (base.digest, written
    at image build time), not with a hash of the base: a planted digest is what it reports."""
    import shutil

    from dreambuild.layout import digest_file, write_pipeline_digest
    from templates.inference.generator import lora_base_problem
    from templates.inference.locations import WeightLocations

    base = shutil.copytree(tiny_base, tmp_path / "base")
    missing = tmp_path / "none"
    loc = WeightLocations(lora_output, missing, missing, missing, base=base)
    write_pipeline_digest(base)
    assert lora_base_problem(loc) is None
    digest_file(base).write_text("sha256:" + "e" * 64)
    assert f"this template's base is sha256:{'e' * 64}" in lora_base_problem(loc)


# --- templates without their weights ----------------------------------------------------------


def test_weightless_template_starts_and_every_prediction_says_it_is_a_template(tmp_path_factory, safety_checker):
    with start_template(tmp_path_factory, "vanilla", weights=None, safety_checker=safety_checker) as server:
        assert server.setup.get("status") == "succeeded"
        for inputs in ({}, {"prompt": "a cjw toy", "width": 64}):
            error = failed(server, **inputs)
            assert "This is a dreambuild template: it has no Stable Diffusion weights" in error
            assert "dreambuild build" in error


def test_all_flagged_images_fail_the_prediction(tmp_path_factory, fine_tune, flag_all_safety_checker):
    with start_template(tmp_path_factory, "vanilla", weights=fine_tune, safety_checker=flag_all_safety_checker) as server:
        error = failed(server, prompt="a cjw toy", num_outputs=2)
        assert "all 2 generated image(s) were flagged as NSFW by the safety checker" in error
        assert len(outputs(predict(server, prompt="a cjw toy", disable_safety_check=True))) == 1


def test_missing_baked_weights_fail_closed(tmp_path_factory, fine_tune, tiny_controlnet):
    with start_template(tmp_path_factory, "controlnet-pose", weights=fine_tune, controlnet=tiny_controlnet) as server:
        error = failed(server, prompt="a cjw toy")
        assert "safety checker weights not found at" in error and "disable_safety_check" in error
        assert len(outputs(predict(server, prompt="a cjw toy", disable_safety_check=True))) == 1
        error = failed(server, prompt="a cjw toy", disable_safety_check=True, control_image=png_url(shapes_png()))
        assert "control_image preprocessing (openpose) cannot run: openpose annotator files missing in" in error
