"""The templates' inputs: one shared set, named and ranged alike in the three Cog classes, and
the request checks that need no model."""

import inspect

import pytest

import templates.cog_models as predict
from dreambuild.errors import InputError
from templates.inference.request import GenerationRequest, denoising_steps, resolve_size
from templates.inference.schedulers import SCHEDULERS, make_scheduler

SHARED = ["prompt", "negative_prompt", "image", "mask", "width", "height", "num_outputs", "num_inference_steps",
          "guidance_scale", "prompt_strength", "scheduler", "seed", "disable_safety_check"]
EXTRA = {
    predict.Vanilla: [],
    predict.ControlNetCanny: ["control_image", "return_control_image", "low_threshold", "high_threshold"],
    predict.ControlNetPose: ["control_image", "return_control_image", "include_hand", "include_face"],
}


def params(cls) -> dict:
    return {name: p for name, p in inspect.signature(cls.run).parameters.items() if name != "self"}


@pytest.mark.parametrize("cls", EXTRA, ids=lambda c: c.__name__)
def test_inputs_are_the_shared_set_plus_the_templates_own(cls):
    assert set(params(cls)) == set(SHARED) | set(EXTRA[cls])


@pytest.mark.parametrize("cls", [predict.ControlNetCanny, predict.ControlNetPose], ids=lambda c: c.__name__)
def test_shared_inputs_are_declared_identically(cls):
    vanilla, other = params(predict.Vanilla), params(cls)
    for name in SHARED:
        assert repr(other[name].default) == repr(vanilla[name].default), name
        assert other[name].annotation == vanilla[name].annotation, name
    canny, pose = params(predict.ControlNetCanny), params(predict.ControlNetPose)
    assert repr(canny["return_control_image"].default) == repr(pose["return_control_image"].default)


def test_every_input_maps_onto_the_request():
    fields = set(GenerationRequest.__dataclass_fields__)
    for cls in EXTRA:
        assert set(params(cls)) <= fields


def test_scheduler_choices_are_the_supported_schedulers():
    assert predict.SCHEDULERS == list(SCHEDULERS)
    with pytest.raises(InputError, match="unknown scheduler 'FAST'; choose one of: DDIM, DPMSolverMultistep"):
        make_scheduler("FAST", {})


def test_sizes_default_to_native_and_are_checked():
    assert resolve_size(None, None, 512) == (512, 512)
    assert resolve_size(768, None, 512) == (768, 512)
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
