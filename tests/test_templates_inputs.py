"""The templates' inputs: one shared set, named and ranged alike in every Cog class, the classes
matching the catalog's table, and the request checks that need no model (sizes, schedulers,
prompt syntax, output formats)."""

import inspect

import pytest
import torch
from PIL import Image

import templates.cog_models as predict
from dreambuild.errors import ControlImageError, InputError
from templates.inference.catalog import CONTROLNET_INPUTS, SHARED_INPUTS, TEMPLATES, template_inputs
from templates.inference.control import ANNOTATOR_FILES, ControlPreprocessor
from templates.inference.outputs import write_images
from templates.inference.prompts import PromptEncoder, a1111_weights, detect_syntax, to_compel
from templates.inference.request import ASPECT_RATIOS, GenerationRequest, denoising_steps, resolve_size
from templates.inference.schedulers import SCHEDULERS, make_scheduler

CLASSES = {name: getattr(predict, row.cog_class) for name, row in TEMPLATES.items()}


def params(cls) -> dict:
    return {name: p for name, p in inspect.signature(cls.run).parameters.items() if name != "self"}


@pytest.mark.parametrize("name", TEMPLATES)
def test_inputs_are_the_catalogs(name):
    assert list(params(CLASSES[name])) == list(dict.fromkeys(params(CLASSES[name])))  # no duplicates
    assert set(params(CLASSES[name])) == set(template_inputs(TEMPLATES[name]))


@pytest.mark.parametrize("name", [n for n in TEMPLATES if n != "vanilla"])
def test_shared_inputs_are_declared_identically(name):
    vanilla, other = params(predict.Vanilla), params(CLASSES[name])
    # FLUX's own: plain prompts, sizes in 16-pixel blocks, steps defaulting per variant (dev 28, schnell 4).
    own = {"prompt", "width", "height", "num_inference_steps"} if TEMPLATES[name].family == "flux" else set()
    for field in [f for f in SHARED_INPUTS if f in other and f not in own]:
        assert repr(other[field].default) == repr(vanilla[field].default), field
        assert other[field].annotation == vanilla[field].annotation, field
    canny = params(predict.ControlNetCanny)

    def generic(template, cls, field):  # descriptions name the template's guide ("Canny edges")
        return repr(params(cls)[field].default).replace(TEMPLATES[template].guide.split(" (")[0], "{guide}")

    for field in CONTROLNET_INPUTS if TEMPLATES[name].preprocessor else ():
        assert generic(name, CLASSES[name], field) == generic("controlnet-canny", predict.ControlNetCanny, field), field
        assert other[field].annotation == canny[field].annotation, field


def test_the_catalog_and_the_cog_classes_agree():
    from builder.settings import TEMPLATE_NAMES

    assert TEMPLATE_NAMES == tuple(TEMPLATES)
    assert {row.cog_class for row in TEMPLATES.values()} == {
        name for name, value in vars(predict).items() if inspect.isclass(value) and value.__module__ == predict.__name__
    }
    for row in TEMPLATES.values():
        assert (row.preprocessor is None) == (row.controlnet is None)
        assert row.preprocessor is None or row.preprocessor in ANNOTATOR_FILES


def test_every_input_maps_onto_the_request():
    fields = set(GenerationRequest.__dataclass_fields__)
    for cls in CLASSES.values():
        assert set(params(cls)) <= fields


def test_scheduler_choices_are_the_supported_schedulers():
    assert predict.SCHEDULERS == list(SCHEDULERS)
    with pytest.raises(InputError, match="unknown scheduler 'FAST'; choose one of: DDIM, DPMSolverMultistep"):
        make_scheduler("FAST", {})


def test_sizes_default_to_native_and_are_checked():
    assert resolve_size(None, None, 512) == (512, 512)
    assert resolve_size(768, None, 512) == (768, 512)
    # FLUX's aspect_ratio, with both sides empty: about native² pixels, never more, in 16-pixel blocks.
    sizes = {ratio: resolve_size(None, None, 1024, block=16, aspect_ratio=ratio) for ratio in ASPECT_RATIOS}
    assert sizes["1:1"] == (1024, 1024) and sizes["16:9"] == (1360, 768) and sizes["9:16"] == (768, 1360)
    for ratio, (width, height) in sizes.items():
        w, h = (int(side) for side in ratio.split(":"))
        assert width % 16 == height % 16 == 0 and 0.9 * 1024**2 < width * height <= 1024**2 and abs(width / height - w / h) < 0.06, ratio
    assert resolve_size(512, 512, 1024, block=16, aspect_ratio="16:9") == (512, 512)  # sides given win
    with pytest.raises(InputError, match="width=513 is not a positive multiple of 8"):
        resolve_size(513, 512, 512)
    with pytest.raises(InputError, match="over the limit of 1000"):
        resolve_size(40, 32, 512, max_pixels=1000)


def test_modes_and_step_checks():
    assert GenerationRequest().mode == "txt2img"
    assert GenerationRequest(image="a").mode == "img2img"
    assert GenerationRequest(image="a", mask="m").mode == "inpaint"
    assert GenerationRequest(image="a", control_image="c").mode == "controlnet-img2img"
    assert GenerationRequest(control_image="c").mode == "controlnet-txt2img"
    with pytest.raises(InputError, match="mask was given without image"):
        GenerationRequest(mask="m").mode
    assert denoising_steps(50, 0.8) == 40
    with pytest.raises(InputError, match="leaves no denoising step"):
        denoising_steps(3, 0.2)


def test_choices_are_the_supported_ones():
    assert predict.PROMPT_SYNTAXES == ["auto", "compel", "a1111"]
    assert predict.OUTPUT_FORMATS == ["png", "jpg", "webp"]
    assert tuple(predict.ASPECT_RATIOS) == ASPECT_RATIOS
    # A1111's sampler names, as the SD-Dockerized API lists them, where diffusers has the sampler.
    for name in (
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
    ):
        assert name in SCHEDULERS
    config = make_scheduler("DDIM", {}).config
    assert make_scheduler("DPM++ 2M Karras", config).config.use_karras_sigmas is True
    assert make_scheduler("DPM++ 2M", config).config.use_karras_sigmas is False
    assert make_scheduler("DPM++ SDE", config, seed=5).config.noise_sampler_seed == 5


# --- prompt syntax ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, runs",
    [
        ("a red toy", [("a red toy", 1.0)]),
        ("a (red) toy", [("a ", 1.0), ("red", 1.1), (" toy", 1.0)]),
        ("((red))", [("red", pytest.approx(1.21))]),
        ("[red]", [("red", pytest.approx(1 / 1.1))]),
        ("(red:1.3), [[blue]]", [("red", 1.3), (", ", 1.0), ("blue", pytest.approx(1 / 1.21))]),
        ("(red toy", [("red toy", 1.1)]),  # unclosed: to the end, as in A1111
        (r"a \(literal\) toy", [("a (literal) toy", 1.0)]),
    ],
)
def test_a1111_weights_are_parsed_as_a1111_does(prompt, runs):
    assert a1111_weights(prompt) == runs


def test_syntax_is_detected():
    for compel in ("a (red)1.3 toy", "a red toy++", "beach--", "(a, b).and()", "a red toy", "(red)-"):
        assert detect_syntax(compel) == "compel", compel
    for a1111 in ("a (red:1.3) toy", "a [red] toy", "((red))", "a (red) toy", "(red:1.2). A photo"):
        assert detect_syntax(a1111) == "a1111", a1111
    assert to_compel("a (red) toy", "compel") == "a (red) toy"
    assert to_compel("a (red) toy", "a1111") == "a (red)1.1 toy"
    assert to_compel('say "(hi)"', "a1111") == 'say \\" (hi)1.1 \\"'  # compel's quote escaped
    with pytest.raises(InputError, match="unknown prompt_syntax 'sd'"):
        to_compel("x", "sd")


def test_each_a1111_form_weighs_as_documented(tiny_base):
    """(word) is x1.1, ((word)) x1.21, [word] /1.1, (word:1.3) x1.3: the same conditioning as
    compel's explicit weights, and each unlike the plain prompt."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None, requires_safety_checker=False, local_files_only=True)
    encoder = PromptEncoder(pipe)

    def embeds(prompt, syntax="auto"):
        return encoder.encode(prompt, None, syntax)[0]

    plain = embeds("a red toy")
    seen = [plain]
    for a1111, compel in [
        ("a (red) toy", "a (red)1.1 toy"),
        ("a ((red)) toy", "a (red)1.21 toy"),
        ("a [red] toy", "a (red)0.909091 toy"),
        ("a (red:1.3) toy", "a (red)1.3 toy"),
    ]:
        weighted = embeds(a1111)
        assert torch.equal(weighted, embeds(a1111, "a1111")) and torch.equal(weighted, embeds(compel, "compel")), a1111
        assert not any(torch.equal(weighted, other) for other in seen), a1111
        seen.append(weighted)
    assert torch.equal(embeds("a (red) toy", "compel"), plain)  # compel's bare brackets only group


# --- control preprocessing and outputs, without a model ---------------------------------------


@pytest.mark.parametrize("kind", [k for k in ANNOTATOR_FILES if k != "canny"])
def test_missing_annotators_fail_each_control_prediction_clearly(kind, tmp_path):
    preprocessor = ControlPreprocessor.load(kind, tmp_path / "nothing-here", torch.device("cpu"))
    assert preprocessor.problem and f"{kind} annotator files missing in" in preprocessor.problem
    photo = Image.new("RGB", (32, 32), (200, 10, 10))
    with pytest.raises(ControlImageError, match=rf"control_image preprocessing \({kind}\) cannot run: {kind} annotator files missing"):
        preprocessor(photo, (32, 32), {"scribble_from_photo": True})


def test_a_failing_annotator_is_a_clear_error():
    def broken(*args, **kwargs):
        raise RuntimeError("out of cheese")

    with pytest.raises(ControlImageError, match=r"control_image preprocessing \(hed\) failed: out of cheese"):
        ControlPreprocessor("hed", broken)(Image.new("RGB", (8, 8)), (8, 8))


def test_scribbles_from_drawings_are_white_strokes_on_black():
    pen_on_paper = Image.new("RGB", (16, 16), "white")
    pen_on_paper.paste((20, 20, 20), (4, 4, 12, 6))
    chalk_on_board = Image.new("RGB", (16, 16), "black")
    chalk_on_board.paste((230, 230, 230), (4, 4, 12, 6))
    scribble = ControlPreprocessor("scribble")  # no PiDiNet needed for a drawing
    for drawing in (pen_on_paper, chalk_on_board):
        pixels = list(scribble(drawing, (16, 16)).get_flattened_data())
        assert sorted(set(pixels)) == [(0, 0, 0), (255, 255, 255)]
        assert sum(p == (255, 255, 255) for p in pixels) == 16


def test_output_formats(tmp_path):
    image = Image.effect_noise((64, 64), 60).convert("RGB")
    png, jpg, webp = (write_images([image], tmp_path, fmt, 80)[0] for fmt in ("png", "jpg", "webp"))
    assert png.read_bytes().startswith(b"\x89PNG") and jpg.read_bytes().startswith(b"\xff\xd8")
    assert webp.read_bytes()[8:12] == b"WEBP"
    (tmp_path / "low").mkdir()
    low = write_images([image], tmp_path / "low", "jpg", 10)[0]
    assert low.stat().st_size < jpg.stat().st_size
    with pytest.raises(InputError, match="unknown output_format 'gif'"):
        write_images([image], tmp_path, "gif")


# Scheduler configurations as bases ship them: SD 1.5's (PNDM, skip_prk_steps on), SDXL's (Euler),
# and a fine-tune saved with DDIM's (no skip_prk_steps: PNDM's default, off).
SHIPPED_SCHEDULER_CONFIGS = {
    "sd15": {
        "_class_name": "PNDMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
        "clip_sample": False,
    },
    "sdxl": {
        "_class_name": "EulerDiscreteScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
        "use_karras_sigmas": False,
    },
    "ddim": {
        "_class_name": "DDIMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "trained_betas": None,
    },
}


def test_every_scheduler_runs_the_schemas_fewest_steps_on_every_shipped_config():
    """Each scheduler denoises 1 and 2 steps (the schema's minimum is 1) from each base's own
    configuration: PNDM failed with a raw broadcast error on a DDIM-config base below 4 steps."""
    import warnings

    import torch

    from templates.inference.schedulers import SCHEDULERS, make_scheduler

    failed = []
    for config_name, config in SHIPPED_SCHEDULER_CONFIGS.items():
        for name in SCHEDULERS:
            for steps in (1, 2):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        scheduler = make_scheduler(name, config, seed=0)
                        scheduler.set_timesteps(steps)
                        sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
                        for t in scheduler.timesteps:
                            scheduler.scale_model_input(sample, t)
                            sample = scheduler.step(torch.zeros_like(sample), t, sample).prev_sample
                    assert torch.isfinite(sample).all()
                except Exception as exc:  # noqa: BLE001 - every failure is listed
                    failed.append(f"{config_name} {name} {steps}: {type(exc).__name__}: {str(exc)[:80]}")
    assert failed == []


def test_the_service_names_a_version_s_weights_as_the_templates_read_them():
    """The Cog context key is written twice on purpose (the service does not import the templates)."""
    from builder.service.predictions.model_servers import VERSION_WEIGHTS as sent
    from templates.inference.versions import VERSION_WEIGHTS as read

    assert sent == read
