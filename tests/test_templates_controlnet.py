"""The depth, HED, M-LSD, normal, scribble and seg ControlNet templates in the real Cog HTTP server
(coglet) on CPU, with tiny random weights and annotators built locally; LoRA on top in every
template. One server runs at a time (module-scoped, parametrized by template)."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from templates.inference.catalog import TEMPLATES
from tests.conftest import start_template
from tests.helpers import image_bytes
from tests.test_templates_server import digest, failed, mask_png, outputs, png_url, predict, shapes_png, size_of

NEW = ["controlnet-depth", "controlnet-hed", "controlnet-mlsd", "controlnet-normal", "controlnet-scribble", "controlnet-seg"]


@pytest.fixture(scope="module", params=NEW)
def server(request, tmp_path_factory, fine_tune, tiny_controlnet, safety_checker):
    name = request.param
    kind = TEMPLATES[name].preprocessor
    annotators = {"depth": "depth_estimator", "seg": "segmenter"}.get(kind, "aux_annotators")
    with start_template(
        tmp_path_factory,
        name,
        weights=fine_tune,
        controlnet=tiny_controlnet,
        annotators=request.getfixturevalue(annotators),
        safety_checker=safety_checker,
    ) as server:
        server.template = name
        yield server


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def photo(size=(64, 64)) -> bytes:
    return shapes_png(size=size)


def drawing() -> bytes:
    """Dark pen strokes on white paper."""
    image = Image.new("RGB", (80, 96), "white")
    draw = ImageDraw.Draw(image)
    draw.line((5, 5, 70, 90), fill=(10, 10, 10), width=4)
    draw.ellipse((20, 20, 60, 60), outline=(0, 0, 0), width=3)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def control_input(template: str) -> str:
    return png_url(drawing() if template == "controlnet-scribble" else photo(size=(96, 80)))


def test_controlnet_txt2img_is_the_asked_size_reproducible_and_guided(server):
    control = control_input(server.template)
    plain = outputs(predict(server, prompt="a cjw toy", width=80, height=64))
    body = predict(server, prompt="a cjw toy", width=80, height=64, control_image=control, return_control_image=True)
    guided = outputs(body)
    assert "controlnet-txt2img 80x64" in body["logs"]
    assert len(guided) == 2 and all(size_of(f) == (80, 64) for f in guided)
    assert guided[1] != plain[0]  # the ControlNet took part
    again = outputs(predict(server, prompt="a cjw toy", width=80, height=64, control_image=control, return_control_image=True))
    assert again == guided  # same seed, same bytes: the control image included
    weaker = outputs(predict(server, prompt="a cjw toy", width=80, height=64, control_image=control, controlnet_conditioning_scale=0.3))
    assert weaker[0] != guided[1]


def test_return_control_image_is_the_processed_control_image(server):
    body = predict(server, prompt="a cjw toy", control_image=control_input(server.template), return_control_image=True)
    control = pixels(outputs(body)[0])
    raw = np.asarray(
        Image.open(io.BytesIO(drawing() if server.template == "controlnet-scribble" else photo(size=(96, 80))))
        .convert("RGB")
        .resize((64, 64), Image.Resampling.BILINEAR)
    )
    assert control.shape == raw.shape and not np.array_equal(control, raw)  # it went through the annotator
    kind = TEMPLATES[server.template].preprocessor
    if kind in ("depth", "hed", "mlsd", "scribble"):  # grey-level maps
        assert (control[..., 0] == control[..., 1]).all() and (control[..., 1] == control[..., 2]).all()
    if kind == "scribble":  # white strokes on black
        assert set(np.unique(control)) == {0, 255} and (control == 255).mean() < 0.5
        person = png_url(image_bytes(size=(64, 96)))
        body = predict(server, prompt="a cjw toy", control_image=person, scribble_from_photo=True, return_control_image=True)
        assert set(np.unique(pixels(outputs(body)[0]))) <= {0, 255}  # PiDiNet's edges, thinned and thresholded
    if kind == "mlsd":  # its thresholds are inputs
        body = predict(server, prompt="a cjw toy", control_image=control_input(server.template), value_threshold=0.5, distance_threshold=5.0)
        assert len(outputs(body)) == 1
    if kind == "seg":  # every pixel a class colour of ADE20K's palette
        from controlnet_aux.util import ade_palette

        palette = {tuple(c) for c in ade_palette()}
        assert {tuple(p) for p in control.reshape(-1, 3)} <= palette


def test_control_preprocess_false_uses_the_users_own_map(server):
    own = photo()  # already 64x64: passed through untouched
    body = predict(server, prompt="a cjw toy", control_image=png_url(own), control_preprocess=False, return_control_image=True)
    files = outputs(body)
    assert np.array_equal(pixels(files[0]), pixels(own))
    processed = outputs(predict(server, prompt="a cjw toy", control_image=png_url(own), return_control_image=True))
    assert files[1] != processed[1]


def test_controlnet_img2img_and_inpainting(server):
    control, init = control_input(server.template), png_url(photo())
    body = predict(server, prompt="a cjw toy", image=init, control_image=control, num_inference_steps=5)
    assert "controlnet-img2img" in body["logs"] and size_of(outputs(body)[0]) == (64, 64)
    body = predict(server, prompt="a cjw toy", image=init, mask=png_url(mask_png()), control_image=control, num_inference_steps=5)
    assert "controlnet-inpaint" in body["logs"] and size_of(outputs(body)[0]) == (64, 64)
    assert len({digest(outputs(b)[0]) for b in (body, predict(server, prompt="a cjw toy", image=init, num_inference_steps=5))}) == 2


def test_an_unreadable_control_image_fails_clearly(server):
    assert "image 'control_image' cannot be read" in failed(server, control_image=png_url(b"GIF89a broken"))


def test_lora_on_top(server, loras):
    """A LoRA changes the image; the next plain prediction is byte-identical to one before it."""
    control = control_input(server.template)
    before = outputs(predict(server, prompt="a cjw toy", control_image=control))
    lora = png_url(loras["diffusers"].read_bytes(), "application/octet-stream")
    with_lora = outputs(predict(server, prompt="a cjw toy", control_image=control, lora_weights=lora))
    after = outputs(predict(server, prompt="a cjw toy", control_image=control))
    assert with_lora != before and after == before


def test_without_its_annotator_a_template_fails_only_what_needs_it(tmp_path_factory, fine_tune, tiny_controlnet, safety_checker):
    """Missing annotator files: a failed prediction naming them; control_preprocess false and
    plain predictions still run."""
    with start_template(tmp_path_factory, "controlnet-depth", weights=fine_tune, controlnet=tiny_controlnet, safety_checker=safety_checker) as depth:
        error = failed(depth, prompt="a cjw toy", control_image=png_url(photo()))
        assert "control_image preprocessing (depth) cannot run: depth annotator files missing in" in error
        assert "config.json, preprocessor_config.json" in error
        assert len(outputs(predict(depth, prompt="a cjw toy", control_image=png_url(photo()), control_preprocess=False))) == 1
        assert len(outputs(predict(depth, prompt="a cjw toy"))) == 1
