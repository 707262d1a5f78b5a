"""Setup loads each component once and every mode shares it, in the loaded precision."""

import torch

from templates.inference.pipelines import Device, load_controlnet, load_pipelines

COMPONENTS = ("unet", "vae", "text_encoder")


def test_modes_share_components_in_the_loaded_dtype(tiny_base, tiny_controlnet):
    device = Device(torch.device("cpu"), torch.bfloat16)
    pipes = load_pipelines(tiny_base, load_controlnet(tiny_controlnet, device), device)
    assert set(pipes.by_mode) == {"txt2img", "img2img", "inpaint", "controlnet-txt2img", "controlnet-img2img", "controlnet-inpaint"}
    for mode, pipe in pipes.by_mode.items():
        for name in COMPONENTS:
            component = getattr(pipe, name)
            assert component is getattr(pipes.base, name), (mode, name)  # one copy in memory
            assert component.dtype == torch.bfloat16, (mode, name)  # from_pipe must not upcast
    controlnets = {id(pipe.controlnet) for mode, pipe in pipes.by_mode.items() if mode.startswith("controlnet-")}
    assert len(controlnets) == 1 and pipes.by_mode["controlnet-txt2img"].controlnet.dtype == torch.bfloat16
    assert pipes.native_size == 64
