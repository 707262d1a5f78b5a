"""Several trainings in one process, as a Cog server's worker runs them."""

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from tests.helpers import photos_zip

# Two steps on the tiny base at 64 px, no class images.
SMALL = {
    "instance_prompt": "a photo of a cjw toy",
    "class_prompt": "a photo of a toy",
    "with_prior_preservation": False,
    "max_train_steps": 2,
    "resolution": 64,
    "seed": 0,
}


def test_a_job_after_one_with_another_precision(tmp_path, tiny_base, monkeypatch):
    monkeypatch.setenv("DREAMBUILD_BASE_MODEL", str(tiny_base))
    monkeypatch.setenv("DREAMBUILD_WORKDIR", str(tmp_path / "work"))
    from trainer.job import run_job

    AcceleratorState._reset_state(reset_partial_state=True)  # whatever another test of this process left
    Accelerator(mixed_precision="bf16", cpu=True)  # what an earlier job in this process left behind
    result = run_job(SMALL, photos_zip(tmp_path / "photos.zip"))
    assert result.steps == 2 and result.archive.is_file()


def test_a_lora_checkpoint_holds_the_adapters_and_resumes_to_the_same_weights(tmp_path, tiny_base, monkeypatch, caplog):
    """An SD LoRA training's checkpoint is its adapters (and optimizer state), not the UNet and text
    encoder around them; the same training run again resumes from it and ends with the adapters of
    the run that was never interrupted."""
    import zipfile

    from safetensors.torch import load

    from trainer.checkpoints import Checkpoints
    from trainer.job import run_job

    monkeypatch.setenv("DREAMBUILD_BASE_MODEL", str(tiny_base))
    monkeypatch.setenv("DREAMBUILD_WORKDIR", str(tmp_path / "work"))
    inputs = {**SMALL, "max_train_steps": 4, "checkpointing_steps": 2, "lora_rank": 4, "lora_lr": 5e-2}
    photos = photos_zip(tmp_path / "photos.zip")

    def adapters(result) -> dict:
        with zipfile.ZipFile(result.archive) as zf:
            return load(zf.read("pytorch_lora_weights.safetensors"))

    whole = adapters(run_job(inputs, photos))
    monkeypatch.setattr(Checkpoints, "clear", lambda self: None)  # as if the run had stopped after its step-2 checkpoint
    run_job(inputs, photos)
    (saved,) = (tmp_path / "work" / "dreambuild-checkpoints").glob("*/step-2")
    files = {p.name for p in saved.iterdir()}
    assert {"adapters-0.safetensors", "adapters-1.safetensors"} <= files and not any(n.startswith("model") for n in files)  # UNet, text encoder
    with caplog.at_level("INFO"):
        resumed = adapters(run_job(inputs, photos))
    assert "Resuming from the checkpoint at step 2 of 4" in caplog.text
    assert resumed.keys() == whole.keys() and all((resumed[k] == whole[k]).all() for k in whole)


def test_a_flux_lora_trains_on_a_quantised_base(tiny_flux):
    """quantize_base int8 / fp8: the frozen transformer's linear weights are torchao's 8-bit tensors
    while training (peft's torchao LoRA layers around them), the adapters stay in full precision, and
    they are not the adapters trained on the unquantised base: the 8-bit weights are what ran."""
    from PIL import Image

    from tests.helpers import SAMPLE_PHOTOS
    from trainer.args import TrainingArgs
    from trainer.device import plan_device
    from trainer.flux import train_flux_lora

    photos = [Image.open(path).convert("RGB") for path in SAMPLE_PHOTOS[:2]]
    plan = plan_device("no", False)
    inputs = {**SMALL, "lora_rank": 4, "lora_lr": 5e-2, "train_text_encoder": False}
    adapters, weights = {}, {}
    for quantize in ("no", "int8", "fp8"):
        args = TrainingArgs.from_inputs({**inputs, "quantize_base": quantize, "save_sample_prompt": "a cjw toy"})
        result = train_flux_lora(args, tiny_flux, photos, [], plan)
        adapters[quantize] = result.lora["transformer"]
        to_q = result.pipeline.transformer.transformer_blocks[0].attn.to_q
        weights[quantize] = type(to_q.base_layer.weight).__name__
        assert all(v.dtype == torch.float32 for v in adapters[quantize].values())
        assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapters[quantize].items())  # trained
    assert weights == {"no": "Parameter", "int8": "Int8Tensor", "fp8": "Float8Tensor"}
    assert adapters["no"].keys() == adapters["int8"].keys() == adapters["fp8"].keys()
    for a, b in (("no", "int8"), ("no", "fp8"), ("int8", "fp8")):
        assert any(not torch.equal(adapters[a][k], adapters[b][k]) for k in adapters[a]), (a, b)


@pytest.mark.parametrize(
    "base, inputs",
    # SD's LoRA samples take the full fine-tune's path (one case is enough); FLUX's its own.
    [("tiny_base", {}), ("tiny_flux", {"lora_rank": 4, "quantize_base": "int8", "train_text_encoder": False})],
    ids=["sd-full", "flux-lora-int8"],
)
def test_jobs_under_a_gpu_s_mixed_precision(request, tmp_path, monkeypatch, base, inputs):
    """The plan a GPU gets (bf16 autocast, samples in half precision), run on the CPU, which has
    bf16 autocast too: paths CI otherwise never takes. Validation samples, the training, and the
    samples after it (they failed, LoRA or not: the trained models' forwards keep accelerate's
    fp32-output wrapper, whose latents reached a half-precision VAE outside autocast); a quantised FLUX base
    under mixed precision (it failed: a quantised model cannot be cast to the weight dtype)."""
    import zipfile

    from trainer.device import DevicePlan
    from trainer.job import run_job

    monkeypatch.setenv("DREAMBUILD_BASE_MODEL", str(request.getfixturevalue(base)))
    monkeypatch.setenv("DREAMBUILD_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setattr("trainer.job.plan_device", lambda precision, adam: DevicePlan(torch.device("cpu"), precision, False))
    monkeypatch.setattr(DevicePlan, "inference_dtype", property(lambda plan: plan.weight_dtype))  # CUDA's: half precision
    job = {
        **SMALL,
        "mixed_precision": "bf16",
        "validation_prompt": "a cjw toy",
        "validation_steps": 1,
        "save_sample_prompt": "a cjw toy",
        "save_infer_steps": 2,
    }
    result = run_job({**job, **inputs}, photos_zip(tmp_path / "photos.zip"))
    with zipfile.ZipFile(result.archive) as zf:
        assert {"samples/step-1-0.png", "samples/sample-0.png"} <= set(zf.namelist())
