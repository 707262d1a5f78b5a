"""The templates: one row each, naming its Cog class, control preprocessor, the ControlNet and
annotators its image bakes, and its own inputs beyond the shared ones.

Adding a template is a ``templates/<name>/cog.yaml``, a class with its literal signature in
``templates/cog_models.py`` (Cog reads it statically) and a row here; the tests check that the
three agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Template:
    name: str
    cog_class: str  # in templates/cog_models.py
    preprocessor: str | None = None  # a key of control.ANNOTATOR_FILES; None: no ControlNet
    controlnet: str | None = None  # the SD 1.5 ControlNet v1.1 its image bakes (Hugging Face repo)
    annotators: tuple[str, ...] = ()  # what its image bakes as annotators: "repo" or "repo file..."
    inputs: tuple[str, ...] = ()  # its own inputs, beyond the shared and the ControlNet ones
    guide: str = ""  # what guides the output, for descriptions and the README
    base: str | None = None  # a base pipeline its image bakes (Hugging Face repo): LoRA outputs apply to it
    family: str = "sd"  # what it runs (dreambuild.layout.family): sd (1.x/2.x and SDXL) or flux


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("vanilla", "Vanilla"),
        # vanilla with a base baked in, the trainer's own (base_model sd15 / sdxl): it builds LoRA outputs too.
        Template("vanilla-sd15", "Vanilla", base="stable-diffusion-v1-5/stable-diffusion-v1-5"),
        Template("vanilla-sdxl", "Vanilla", base="stabilityai/stable-diffusion-xl-base-1.0"),
        # FLUX.1 with its base baked (the trainer's flux-dev / flux-schnell): LoRA outputs, and the base alone.
        Template("vanilla-flux", "Flux", base="black-forest-labs/FLUX.1-dev", family="flux"),
        Template("vanilla-flux-schnell", "Flux", base="black-forest-labs/FLUX.1-schnell", family="flux"),
        Template(
            "controlnet-canny",
            "ControlNetCanny",
            "canny",
            "lllyasviel/control_v11p_sd15_canny",
            inputs=("low_threshold", "high_threshold"),
            guide="Canny edges",
        ),
        Template(
            "controlnet-pose",
            "ControlNetPose",
            "openpose",
            "lllyasviel/control_v11p_sd15_openpose",
            ("lllyasviel/Annotators body_pose_model.pth hand_pose_model.pth facenet.pth",),
            ("include_hand", "include_face"),
            "an OpenPose skeleton",
        ),
        Template(
            "controlnet-depth",
            "ControlNetDepth",
            "depth",
            "lllyasviel/control_v11f1p_sd15_depth",
            ("Intel/dpt-hybrid-midas",),
            guide="a depth map (DPT)",
        ),
        Template(
            "controlnet-hed",
            "ControlNetHED",
            "hed",
            "lllyasviel/control_v11p_sd15_softedge",
            ("lllyasviel/Annotators ControlNetHED.pth",),
            guide="soft edges (HED)",
        ),
        Template(
            "controlnet-mlsd",
            "ControlNetMLSD",
            "mlsd",
            "lllyasviel/control_v11p_sd15_mlsd",
            ("lllyasviel/Annotators mlsd_large_512_fp32.pth",),
            ("value_threshold", "distance_threshold"),
            "straight lines (M-LSD)",
        ),
        Template(
            "controlnet-normal",
            "ControlNetNormal",
            "normal",
            "lllyasviel/control_v11p_sd15_normalbae",
            ("lllyasviel/Annotators scannet.pt",),
            guide="a normal map (NormalBae)",
        ),
        Template(
            "controlnet-scribble",
            "ControlNetScribble",
            "scribble",
            "lllyasviel/control_v11p_sd15_scribble",
            ("lllyasviel/Annotators table5_pidinet.pth",),
            ("scribble_from_photo",),
            "a scribble",
        ),
        Template(
            "controlnet-seg",
            "ControlNetSeg",
            "seg",
            "lllyasviel/control_v11p_sd15_seg",
            ("openmmlab/upernet-convnext-small",),
            guide="an ADE20K segmentation (UperNet)",
        ),
    )
}

# Every template's inputs, and every ControlNet template's.
SHARED_INPUTS = (
    "prompt",
    "negative_prompt",
    "prompt_syntax",
    "image",
    "mask",
    "width",
    "height",
    "num_outputs",
    "num_inference_steps",
    "guidance_scale",
    "prompt_strength",
    "scheduler",
    "seed",
    "disable_safety_check",
    "lora_weights",
    "lora_scale",
    "extra_lora",
    "extra_lora_scale",
    "output_format",
    "output_quality",
)
CONTROLNET_INPUTS = ("control_image", "control_preprocess", "controlnet_conditioning_scale", "return_control_image")
# FLUX's: no negative prompt, prompt weighting or sampler choice (one flow-matching sampler; T5
# reads long prompts), `guidance` for its guidance embedding, as Replicate's FLUX models name it,
# and their `aspect_ratio`.
FLUX_INPUTS = tuple(
    "guidance" if name == "guidance_scale" else name for name in SHARED_INPUTS if name not in ("negative_prompt", "prompt_syntax", "scheduler")
) + ("aspect_ratio",)


def template_inputs(template: Template) -> tuple[str, ...]:
    """All the inputs of ``template``'s Cog class."""
    if template.family == "flux":
        return FLUX_INPUTS + template.inputs
    control = CONTROLNET_INPUTS if template.preprocessor else ()
    return SHARED_INPUTS + control + template.inputs
