"""The trainer end to end in the real Cog HTTP server (coglet) on CPU with the tiny base."""

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dreambuild.archives import extract_zip
from tests.helpers import data_url, decode_data_url, image_bytes, make_zip, photos_zip, post

QUICK = {
    "instance_prompt": "a photo of a cjw toy",
    "class_prompt": "a photo of a toy",
    "resolution": 64,
    "max_train_steps": 6,
    "learning_rate": 1e-3,  # large, so a few steps visibly move the weights
    "with_prior_preservation": False,
    "seed": 0,
}


def predict(server, tmp_path, **inputs):
    """Train with QUICK's inputs and these; an input given as None is left out (its default applies)."""
    status, body = post(f"{server.url}/predictions", {"input": {k: v for k, v in {**QUICK, **inputs}.items() if v is not None}})
    assert status == 200, (status, body)
    return body


def output_dir(body, tmp_path, key=None):
    value = body["output"][key] if key else body["output"]
    archive = decode_data_url(value, tmp_path / "output.zip")
    extract_zip(archive, tmp_path / "weights", label="output.zip")
    return archive, tmp_path / "weights"


def tensors(root, component):
    name = "model.safetensors" if component.startswith("text_encoder") else "diffusion_pytorch_model.safetensors"
    return load_file(root / component / name)


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return data_url(photos_zip(tmp_path_factory.mktemp("photos") / "photos.zip"))


def test_prediction_trains_and_returns_a_loadable_pipeline(trainer_predict_server, tiny_base, photos, tmp_path):
    body = predict(
        trainer_predict_server,
        tmp_path,
        instance_data=photos,
        train_text_encoder=True,
        save_sample_prompt="a photo of a cjw toy",
        n_save_sample=2,
        save_infer_steps=3,
    )
    assert body["status"] == "succeeded", body.get("error")
    archive, weights = output_dir(body, tmp_path)

    with zipfile.ZipFile(archive) as zf:
        infos = {i.filename: i for i in zf.infolist()}
    assert "model_index.json" in infos and "args.json" in infos
    assert {"samples/sample-0.png", "samples/sample-1.png"} <= set(infos)
    assert not any(n.startswith("safety_checker") for n in infos)
    stored = [i for n, i in infos.items() if n.endswith(".safetensors")]
    assert len(stored) == 3 and all(i.compress_type == zipfile.ZIP_STORED for i in stored)

    args = json.loads((weights / "args.json").read_text())
    assert args["instance_prompt"] == QUICK["instance_prompt"] and args["class_prompt"] == QUICK["class_prompt"]
    assert args["max_train_steps"] == 6 and args["resolution"] == 64

    assert not same(tensors(weights, "unet"), tensors(tiny_base, "unet"))
    assert not same(tensors(weights, "text_encoder"), tensors(tiny_base, "text_encoder"))
    assert same(tensors(weights, "vae"), tensors(tiny_base, "vae"))  # frozen

    logs = body["logs"]
    assert "step 1/6 loss" in logs and "step 6/6 loss" in logs and " eta " in logs and " lr " in logs
    assert "falls back to full precision" in logs and "falls back to torch.optim.AdamW" in logs
    assert body["metrics"]["training_time"] > 0 and body["metrics"]["train_steps"] == 6

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(weights, local_files_only=True)
    image = pipe(args["instance_prompt"], num_inference_steps=2, output_type="pil").images[0]
    assert image.size == (64, 64)


def test_frozen_text_encoder_stays_unchanged(trainer_predict_server, tiny_base, photos, tmp_path):
    body = predict(trainer_predict_server, tmp_path, instance_data=photos, train_text_encoder=False, center_crop=True)
    assert body["status"] == "succeeded", body.get("error")
    _, weights = output_dir(body, tmp_path)
    assert same(tensors(weights, "text_encoder"), tensors(tiny_base, "text_encoder"))
    assert not same(tensors(weights, "unet"), tensors(tiny_base, "unet"))


def test_prior_preservation_uses_supplied_class_images_and_generates_the_rest(trainer_predict_server, tmp_path):
    instance = photos_zip(
        tmp_path / "photos.zip",
        extra={
            "dataset_class/c1.png": image_bytes((10, 200, 10)),
            "dataset_class/c2.png": image_bytes((10, 10, 200)),
        },
    )
    klass = make_zip(tmp_path / "class.zip", {"more/c3.jpg": image_bytes((90, 90, 90), fmt="JPEG")})
    body = predict(
        trainer_predict_server,
        tmp_path,
        instance_data=data_url(instance),
        class_data=data_url(klass),
        with_prior_preservation=True,
        num_class_images=5,
        sample_batch_size=2,
    )
    assert body["status"] == "succeeded", body.get("error")
    assert "Loaded 6 instance image(s) and 3 supplied class image(s)." in body["logs"]
    assert "generating 2 class image(s)" in body["logs"]
    assert "class images batch 1/1" in body["logs"]
    assert body["metrics"]["class_images"] == 5 and body["metrics"]["instance_images"] == 6


def test_lora_training_writes_only_adapters_that_change_the_output(trainer_predict_server, tiny_base, photos, tmp_path):
    """lora_rank > 0: peft adapters on the UNet and text encoder, prior preservation kept; the
    output is the adapters (diffusers and kohya keys) and args.json naming the base's digest."""
    import numpy as np
    from diffusers import StableDiffusionPipeline

    from dreambuild.layout import pipeline_digest

    body = predict(
        trainer_predict_server,
        tmp_path,
        instance_data=photos,
        lora_rank=4,
        lora_alpha=8.0,
        lora_lr=5e-2,
        train_text_encoder=True,
        with_prior_preservation=True,
        num_class_images=2,
        sample_batch_size=2,
    )
    assert body["status"] == "succeeded", body.get("error")
    assert "of LoRA rank 4" in body["logs"] and "generating 2 class image(s)" in body["logs"]
    archive, weights = output_dir(body, tmp_path)
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
    assert names == {"pytorch_lora_weights.safetensors", "lora_kohya.safetensors", "args.json"}
    assert archive.stat().st_size < 200_000  # the tiny base's adapters; the full pipeline is megabytes
    args = json.loads((weights / "args.json").read_text())
    assert args["lora_rank"] == 4 and args["base_digest"] == pipeline_digest(tiny_base)
    kohya = load_file(weights / "lora_kohya.safetensors")
    assert any(k.startswith("lora_te1_") for k in kohya) and any(k.startswith("lora_unet_") for k in kohya)
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {8.0}

    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None, requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)

    def image():
        return pipe("a photo of a cjw toy", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images

    plain = image()
    pipe.load_lora_weights(weights, weight_name="pytorch_lora_weights.safetensors", adapter_name="diffusers")
    with_lora = image()
    assert not np.array_equal(plain, with_lora)
    pipe.delete_adapters("diffusers")
    pipe.load_lora_weights(kohya, adapter_name="kohya")
    assert np.allclose(image(), with_lora, atol=1e-3)  # the kohya copy is the same LoRA, alpha included


def test_captions_beside_the_photos_are_the_prompts(trainer_predict_server, photos, tmp_path):
    """A .txt beside a photo is its caption (after caption_prefix): the same run with captions
    trains other weights than without (the frozen text encoder saw other prompts). With
    token_string, a prompt that does not name the subject is refused before training."""
    from tests.helpers import SAMPLE_PHOTOS

    for sub in "abc":
        (tmp_path / sub).mkdir()
    captions = {f"photos/{p.with_suffix('.txt').name}": f"a red toy number {i} on a table".encode() for i, p in enumerate(SAMPLE_PHOTOS)}
    captioned = data_url(photos_zip(tmp_path / "captioned.zip", extra=captions))
    same_run = {"train_text_encoder": False, "center_crop": True}
    with_captions = predict(
        trainer_predict_server, tmp_path, instance_data=captioned, caption_prefix="a photo of cjw,", token_string="cjw", **same_run
    )
    assert with_captions["status"] == "succeeded", with_captions.get("error")
    logs = with_captions["logs"]
    assert f"Captions: {len(SAMPLE_PHOTOS)} of {len(SAMPLE_PHOTOS)} instance image(s) have one" in logs and "skipped" not in logs
    _, captioned_weights = output_dir(with_captions, tmp_path / "a")
    assert json.loads((captioned_weights / "args.json").read_text())["token_string"] == "cjw"
    untagged = predict(trainer_predict_server, tmp_path, instance_data=captioned, token_string="cjw", **same_run)
    assert untagged["status"] == "failed" and "does not contain token_string 'cjw'" in untagged["error"]
    assert "the caption of " in untagged["error"] and "a red toy number" in untagged["error"]
    spaced = predict(trainer_predict_server, tmp_path, instance_data=photos, token_string="c jw", **same_run)
    assert spaced["status"] == "failed" and "token_string must be one word" in spaced["error"]
    plain = predict(trainer_predict_server, tmp_path, instance_data=photos, **same_run)
    _, plain_weights = output_dir(plain, tmp_path / "b")
    again = predict(trainer_predict_server, tmp_path, instance_data=photos, **same_run)
    _, again_weights = output_dir(again, tmp_path / "c")
    assert same(tensors(plain_weights, "unet"), tensors(again_weights, "unet"))  # the run is deterministic...
    assert not same(tensors(captioned_weights, "unet"), tensors(plain_weights, "unet"))  # ...and the captions changed it


def test_a_re_run_resumes_from_the_last_checkpoint(trainer_predict_server, trainer_workdir, photos, tmp_path):
    """Interrupted (here: canceled) after a checkpoint, the same training run again continues at
    the saved step, inside the interrupted epoch, and ends with exactly the weights of a run that
    was never interrupted; its checkpoints are removed once it completes."""
    import threading
    import time

    client = trainer_predict_server.client
    steps = 60  # 15 checkpoints: time to cancel after the first, whatever the machine's load
    inputs = {**QUICK, "instance_data": photos, "max_train_steps": steps, "checkpointing_steps": 4, "learning_rate": 1e-4, "train_batch_size": 2}
    root = trainer_workdir / "dreambuild-checkpoints"
    uninterrupted = predict(trainer_predict_server, tmp_path, **inputs)
    assert uninterrupted["status"] == "succeeded" and "Resuming" not in uninterrupted["logs"], uninterrupted.get("error")
    assert not list(root.glob("*/step-*"))
    first: dict = {}
    thread = threading.Thread(target=lambda: first.update(client.run_prediction("checkpointed-1", inputs)))
    thread.start()
    deadline = time.monotonic() + 300
    while not list(root.glob("*/step-*")) and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)
    client.cancel("checkpointed-1")
    thread.join(120)
    assert first.get("status") == "canceled", first.get("status")
    (saved,) = root.glob("*/step-*")  # only the newest is kept
    step = int(saved.name.removeprefix("step-"))
    assert step % 4 == 0 and 0 < step < steps  # 3 batches an epoch: mostly inside one

    body = predict(trainer_predict_server, tmp_path, **inputs)
    assert body["status"] == "succeeded", body.get("error")
    logs = body["logs"]
    resumed = int(logs.split("Resuming from the checkpoint at step ")[1].split(" ")[0])
    assert resumed >= step and f"step {resumed + 1}/{steps}" in logs and f"step {steps}/{steps}" in logs and f"step 1/{steps}" not in logs
    assert not saved.parent.exists()  # completed: its checkpoints are gone
    (tmp_path / "resumed").mkdir()
    (tmp_path / "whole").mkdir()
    _, resumed_weights = output_dir(body, tmp_path / "resumed")
    _, whole_weights = output_dir(uninterrupted, tmp_path / "whole")
    for component in ("unet", "text_encoder"):
        assert same(tensors(resumed_weights, component), tensors(whole_weights, component)), component


def test_validation_samples_are_taken_during_training(trainer_predict_server, photos, tmp_path):
    body = predict(
        trainer_predict_server,
        tmp_path,
        instance_data=photos,
        lora_rank=2,
        validation_prompt="a photo of a cjw toy",
        validation_steps=2,
        save_infer_steps=2,
        n_save_sample=1,
    )
    assert body["status"] == "succeeded", body.get("error")
    archive, _ = output_dir(body, tmp_path)
    with zipfile.ZipFile(archive) as zf:
        samples = sorted(n for n in zf.namelist() if n.startswith("samples/"))
    assert samples == ["samples/step-2-0.png", "samples/step-4-0.png"]  # every 2 steps, before the last (6)
    assert "Validation: 1 sample(s) of 'a photo of a cjw toy' at step 4." in body["logs"]


def test_likeness_is_scored_before_training_at_each_validation_step_and_at_the_end(trainer_predict_server, photos, tmp_path):
    """measure_likeness: DINO, CLIP-I, CLIP-T and prior drift of the base (step 0), every
    validation_steps and of the result, in metrics.json, each a cosine similarity (within [-1, 1]);
    prior drift is 1 for the base itself."""
    body = predict(trainer_predict_server, tmp_path, instance_data=photos, lora_rank=2, measure_likeness=True, validation_steps=3, save_infer_steps=2)
    assert body["status"] == "succeeded", body.get("error")
    _, weights = output_dir(body, tmp_path)
    likeness = json.loads((weights / "metrics.json").read_text())["likeness"]
    assert [entry["step"] for entry in likeness["steps"]] == [0, 3, 6] and likeness["final"] == likeness["steps"][-1]
    for entry in likeness["steps"]:
        assert set(entry) == {"step", "dino", "clip_i", "clip_t", "prior_drift"}
        assert all(-1.0 <= entry[k] <= 1.0 for k in ("dino", "clip_i", "clip_t", "prior_drift")), entry
    assert likeness["steps"][0]["prior_drift"] == 1.0  # the base against itself
    assert likeness["steps"][-1] != likeness["steps"][0]  # the trained model scores otherwise than its base
    assert set(likeness["models"]) == {"dino", "clip"} and all(m["digest"].startswith("sha256:") for m in likeness["models"].values())
    assert (
        likeness["prompts"]["subject"][0] == "a photo of a cjw toy in the jungle"
        and likeness["prompts"]["clip_t"][0] == "a photo of a toy in the jungle"
    )
    assert likeness["evaluation_seconds"] > 0 and "Likeness at step 6:" in body["logs"]


def test_likeness_without_its_models_fails_before_training(tmp_path, tiny_base, monkeypatch):
    monkeypatch.setenv("DREAMBUILD_BASE_MODEL", str(tiny_base))
    monkeypatch.setenv("DREAMBUILD_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("DREAMBUILD_EVAL_MODELS", str(tmp_path / "none"))
    from dreambuild.errors import InputError
    from trainer.job import run_job

    with pytest.raises(InputError, match="measure_likeness needs the evaluation models.*trainer.fetch_eval_models"):
        run_job({**QUICK, "measure_likeness": True}, photos_zip(tmp_path / "photos.zip"))


def test_sdxl_lora_and_full_fine_tunes(trainer_predict_server, tiny_sdxl, tiny_base, photos, tmp_path):
    """An SDXL base (as ckpt_base): LoRA adapters on the UNet and both text encoders, validation
    samples and likeness scores from the SDXL pipeline, the base's native size by default; and a
    full fine-tune."""
    import numpy as np
    from diffusers import StableDiffusionXLPipeline

    from dreambuild.layout import pipeline_digest

    ckpt = data_url(
        make_zip(tmp_path / "sdxl.zip", {p.relative_to(tiny_sdxl).as_posix(): p.read_bytes() for p in tiny_sdxl.rglob("*") if p.is_file()})
    )
    body = predict(
        trainer_predict_server,
        tmp_path,
        instance_data=photos,
        ckpt_base=ckpt,
        lora_rank=4,
        lora_lr=5e-2,
        resolution=None,
        train_text_encoder=True,
        validation_prompt="a photo of a cjw toy",
        validation_steps=3,
        save_infer_steps=2,
        measure_likeness=True,
    )
    assert body["status"] == "succeeded", body.get("error")
    assert "resolution: 64 (the base's native size)" in body["logs"]
    archive, weights = output_dir(body, tmp_path)
    with zipfile.ZipFile(archive) as zf:
        names = {"pytorch_lora_weights.safetensors", "lora_kohya.safetensors", "args.json", "metrics.json", "samples/step-3-0.png"}
        assert set(zf.namelist()) == names
    assert [e["step"] for e in json.loads((weights / "metrics.json").read_text())["likeness"]["steps"]] == [0, 3, 6]
    assert json.loads((weights / "args.json").read_text())["base_digest"] == pipeline_digest(tiny_sdxl)
    assert any(k.startswith("lora_te2_") for k in load_file(weights / "lora_kohya.safetensors"))
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)

    def image():
        return pipe("a photo of a cjw toy", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images

    plain = image()
    pipe.load_lora_weights(weights, weight_name="pytorch_lora_weights.safetensors")
    assert not np.array_equal(image(), plain)
    # A template with this SDXL base baked in runs the output, fused; on the SD 1.5 base it refuses it.
    from templates.inference.generator import ImageGenerator
    from templates.inference.locations import WeightLocations
    from templates.inference.request import GenerationRequest

    request = GenerationRequest(prompt="a photo of a cjw toy", num_inference_steps=2, seed=0, disable_safety_check=True)
    missing = tmp_path / "none"
    outputs = {}
    for name, base, lora in (("lora", tiny_sdxl, weights), ("base", missing, tiny_sdxl)):
        generator = ImageGenerator("vanilla", WeightLocations(lora, missing, missing, missing, base=base))
        generator.setup()
        outputs[name] = [p.read_bytes() for p in generator.generate(request)]
    assert outputs["lora"] != outputs["base"]
    on_sd15 = ImageGenerator("vanilla", WeightLocations(weights, missing, missing, missing, base=tiny_base))
    on_sd15.setup()
    with pytest.raises(Exception, match="was trained on base sha256:"):
        on_sd15.generate(request)

    full = predict(trainer_predict_server, tmp_path, instance_data=photos, ckpt_base=ckpt, train_text_encoder=True)
    assert full["status"] == "succeeded", full.get("error")
    (tmp_path / "full").mkdir()
    _, full_weights = output_dir(full, tmp_path / "full")
    assert json.loads((full_weights / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    assert not same(tensors(full_weights, "text_encoder_2"), tensors(tiny_sdxl, "text_encoder_2"))
    assert not same(tensors(full_weights, "unet"), tensors(tiny_sdxl, "unet"))


@pytest.fixture(scope="module")
def catalog_trainer(tmp_path_factory, tiny_base, tiny_sdxl, tiny_flux, tiny_flux_schnell, other_base, trainer_workdir, eval_models):
    """The trainer with a catalog of bases and VAEs by name, as a trainer image bakes them."""
    from builder.cog.server import start_cog_server

    env = {
        "DREAMBUILD_BASE_MODEL": str(tiny_base),
        "DREAMBUILD_WORKDIR": str(trainer_workdir),
        "DREAMBUILD_BASE_MODELS": f"tiny={tiny_base},tinyxl={tiny_sdxl},flux-dev={tiny_flux},flux-schnell={tiny_flux_schnell}",
        "DREAMBUILD_VAES": f"other={other_base / 'vae'}",
        "DREAMBUILD_EVAL_MODELS": str(eval_models),
    }
    server = start_cog_server("trainer/cog_model.py:Predictor", tmp_path_factory.mktemp("trainer-catalog"), env=env)
    yield server
    server.stop()


def test_bases_and_vaes_are_chosen_by_name(catalog_trainer, tiny_sdxl, other_base, photos, tmp_path):
    body = predict(catalog_trainer, tmp_path, instance_data=photos, base_model="tinyxl", vae="other", max_train_steps=2)
    assert body["status"] == "succeeded", body.get("error")
    assert "Starting from base model tinyxl" in body["logs"] and "VAE: other" in body["logs"]
    _, weights = output_dir(body, tmp_path)
    assert json.loads((weights / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    assert json.loads((weights / "args.json").read_text())["base_model"] == "tinyxl"
    assert same(tensors(weights, "vae"), tensors(other_base, "vae"))  # the chosen VAE, not the base's
    for inputs, message in (
        ({"base_model": "sd3"}, "base_model 'sd3' is not baked in this trainer; known: flux-dev, flux-schnell, tiny, tinyxl"),
        ({"vae": "fancy"}, "vae 'fancy' is not baked in this trainer; known: other"),
    ):
        failed = predict(catalog_trainer, tmp_path, instance_data=photos, **inputs)
        assert failed["status"] == "failed" and message in failed["error"]


def _flux_photos(tmp_path) -> str:
    """The sample photos and one twice as wide as it is high (the aspect-ratio buckets' case)."""
    from PIL import Image

    wide = Image.new("RGB", (256, 128))
    wide.paste(Image.open(Path(__file__).parents[1] / "samples" / "subject" / "toy-1.jpg").resize((128, 128)), (64, 0))
    buffer = io.BytesIO()
    wide.save(buffer, "PNG")
    return data_url(photos_zip(tmp_path / "flux-photos.zip", extra={"photos/wide.png": buffer.getvalue()}))


FLUX = {"base_model": "flux-dev", "lora_rank": 4, "lora_lr": 5e-2, "resolution": 64, "train_text_encoder": False}


def test_flux_lora_trains_adapters_that_change_the_output(catalog_trainer, tiny_flux, tmp_path):
    """A FLUX.1-dev LoRA DreamBooth in the real Cog server: adapters only (diffusers' file and a
    kohya-keyed copy that diffusers' converter reads as the same adapters), the base's digest,
    validation samples and likeness scores from the FLUX pipeline, a wide photo kept wide in its
    own bucket."""
    import numpy as np
    from diffusers import FluxPipeline

    from dreambuild.layout import pipeline_digest

    body = predict(
        catalog_trainer,
        tmp_path,
        instance_data=_flux_photos(tmp_path),
        **FLUX,
        validation_prompt="a photo of a cjw toy",
        validation_steps=3,
        save_infer_steps=2,
        measure_likeness=True,
    )
    assert body["status"] == "succeeded", body.get("error")
    assert "7 instance image(s) in 2 bucket(s) (64x64, 80x48)" in body["logs"]
    archive, weights = output_dir(body, tmp_path)
    with zipfile.ZipFile(archive) as zf:
        names = {"pytorch_lora_weights.safetensors", "lora_kohya.safetensors", "args.json", "metrics.json", "samples/step-3-0.png"}
        assert set(zf.namelist()) == names
    likeness = json.loads((weights / "metrics.json").read_text())["likeness"]
    assert [e["step"] for e in likeness["steps"]] == [0, 3, 6] and likeness["steps"][0]["prior_drift"] == 1.0
    args = json.loads((weights / "args.json").read_text())
    assert args["base_digest"] == pipeline_digest(tiny_flux) and args["base_model"] == "flux-dev"
    adapters = load_file(weights / "pytorch_lora_weights.safetensors")
    assert adapters and all(k.startswith("transformer.") for k in adapters)
    assert any(".single_transformer_blocks." in k for k in adapters) and any(".transformer_blocks.0.attn.to_out.0." in k for k in adapters)
    assert any(".attn.add_q_proj." in k for k in adapters) and any(".attn.to_add_out." in k for k in adapters)  # the text stream's attention
    kohya = load_file(weights / "lora_kohya.safetensors")
    assert all(k.startswith("lora_transformer_") for k in kohya)
    read = FluxPipeline.lora_state_dict(str(weights / "lora_kohya.safetensors"))
    assert read.keys() == adapters.keys() and all(torch.allclose(read[k].float(), adapters[k].float()) for k in adapters)

    pipe = FluxPipeline.from_pretrained(tiny_flux, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)

    def image():
        generator = torch.Generator().manual_seed(0)
        return pipe("a photo of a cjw toy", height=64, width=64, num_inference_steps=2, generator=generator, output_type="np").images

    plain = image()
    pipe.load_lora_weights(weights, weight_name="pytorch_lora_weights.safetensors")
    assert not np.array_equal(image(), plain)


def test_flux_schnell_and_a_trained_clip(catalog_trainer, tiny_flux_schnell, photos, tmp_path):
    """schnell (no guidance embedding) trains too, with prior preservation (its class images drawn
    by the schnell base at the training resolution); with train_text_encoder, CLIP gets adapters and
    T5 none. Replicate's FLUX trainer's input names work: steps, trigger_word. quantize_base fp8
    reaches the trainer through Cog's schema (its effect: test_trainer_jobs)."""
    inputs = {**FLUX, "base_model": "flux-schnell", "train_text_encoder": True, "with_prior_preservation": True, "num_class_images": 2}
    body = predict(catalog_trainer, tmp_path, instance_data=photos, **inputs, max_train_steps=None, steps=2, trigger_word="cjw", quantize_base="fp8")
    assert body["status"] == "succeeded", body.get("error")
    assert (
        "generating 2 class image(s)" in body["logs"]
        and "2 class image(s), batch 1, lr 0.05, prior preservation, base weights fp8 (torchao)" in body["logs"]
    )
    _, weights = output_dir(body, tmp_path)
    args = json.loads((weights / "args.json").read_text())
    assert "step 2/2" in body["logs"] and args["token_string"] == "cjw" and args["quantize_base"] == "fp8"
    adapters = load_file(weights / "pytorch_lora_weights.safetensors")
    assert {k.split(".")[0] for k in adapters} == {"transformer", "text_encoder"}
    assert any(k.startswith("lora_te1_") for k in load_file(weights / "lora_kohya.safetensors"))


def test_a_flux_re_run_resumes_from_the_last_checkpoint(catalog_trainer, trainer_workdir, tmp_path):
    """As for SD: interrupted after a checkpoint, the same FLUX training continues at the saved
    step, with the batches of its buckets in the order the whole run had, and ends with its adapters."""
    import threading
    import time

    client = catalog_trainer.client
    steps = 60
    inputs = {**QUICK, **FLUX, "instance_data": _flux_photos(tmp_path), "max_train_steps": steps, "checkpointing_steps": 4, "train_batch_size": 2}
    root = trainer_workdir / "dreambuild-checkpoints"
    whole = predict(catalog_trainer, tmp_path, **inputs)
    assert whole["status"] == "succeeded" and "Resuming" not in whole["logs"], whole.get("error")
    first: dict = {}
    thread = threading.Thread(target=lambda: first.update(client.run_prediction("flux-checkpointed", inputs)))
    thread.start()
    deadline = time.monotonic() + 300
    while not list(root.glob("*/step-*")) and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)
    client.cancel("flux-checkpointed")
    thread.join(120)
    assert first.get("status") == "canceled", first.get("status")
    (saved,) = root.glob("*/step-*")
    step = int(saved.name.removeprefix("step-"))
    files = {p.name for p in saved.iterdir()}
    assert "adapters-0.safetensors" in files and not any(name.startswith("model") for name in files)  # not the transformer around them
    body = predict(catalog_trainer, tmp_path, **inputs)
    assert body["status"] == "succeeded", body.get("error")
    resumed = int(body["logs"].split("Resuming from the checkpoint at step ")[1].split(" ")[0])
    assert resumed >= step and f"step {steps}/{steps}" in body["logs"] and f"step 1/{steps}" not in body["logs"]
    for name, run in (("resumed", body), ("whole", whole)):
        (tmp_path / name).mkdir()
        output_dir(run, tmp_path / name)
    assert same(*(load_file(tmp_path / name / "weights" / "pytorch_lora_weights.safetensors") for name in ("resumed", "whole")))


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"lora_rank": 0}, "FLUX bases train LoRA adapters only: lora_rank 0 asks for a full fine-tune"),
        ({"resolution": 72}, "resolution must be a multiple of 16 for FLUX bases"),
        ({"vae": "other"}, "FLUX bases keep their own 16-channel VAE"),
    ],
)
def test_what_flux_cannot_do_is_refused(catalog_trainer, photos, tmp_path, inputs, message):
    body = predict(catalog_trainer, tmp_path, instance_data=photos, **{**FLUX, **inputs})
    assert body["status"] == "failed" and message in body["error"], body.get("error")


def test_full_fine_tune_outputs_are_unchanged_by_lora_inputs(trainer_predict_server, photos, tmp_path):
    body = predict(trainer_predict_server, tmp_path, instance_data=photos, lora_rank=0, lora_lr=0.5, text_encoder_lr=0.5)
    assert body["status"] == "succeeded", body.get("error")
    archive, _ = output_dir(body, tmp_path)
    with zipfile.ZipFile(archive) as zf:
        assert "model_index.json" in zf.namelist() and "pytorch_lora_weights.safetensors" not in zf.namelist()


def test_ckpt_base_is_honoured(trainer_predict_server, tiny_base, other_base, photos, tmp_path):
    entries = {f"my-model/{p.relative_to(other_base).as_posix()}": p.read_bytes() for p in other_base.rglob("*") if p.is_file()}
    ckpt = make_zip(tmp_path / "ckpt.zip", entries)  # zipped as a folder, as people do
    body = predict(trainer_predict_server, tmp_path, instance_data=photos, ckpt_base=data_url(ckpt))
    assert body["status"] == "succeeded", body.get("error")
    assert "Starting from ckpt_base." in body["logs"]
    _, weights = output_dir(body, tmp_path)
    assert same(tensors(weights, "vae"), tensors(other_base, "vae"))
    assert not same(tensors(weights, "vae"), tensors(tiny_base, "vae"))


def test_training_endpoint_returns_the_same_archive(trainer_train_server, tiny_base, photos, tmp_path):
    status, body = post(f"{trainer_train_server.url}/trainings", {"input": {**QUICK, "instance_data": photos}})
    assert status == 200 and body["status"] == "succeeded", body.get("error")
    _, weights = output_dir(body, tmp_path, key="weights")
    assert json.loads((weights / "args.json").read_text())["instance_prompt"] == QUICK["instance_prompt"]
    assert not same(tensors(weights, "unet"), tensors(tiny_base, "unet"))
    assert body["metrics"]["training_time"] > 0


# --- bad input: a failed prediction whose error names the problem --------------------------


def _declared_bomb(directory):
    """A small zip whose headers claim 3 GiB: rejected before anything is extracted."""
    path = directory / "x.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("photo.png", image_bytes())
    raw = bytearray(path.read_bytes())
    central = raw.find(b"PK\x01\x02")
    raw[central + 24 : central + 28] = (3 << 30).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: (d / "x.zip").write_bytes(b"GIF89a not a zip") and d / "x.zip", "instance_data is not a zip archive"),
        (lambda d: (d / "x.zip").write_bytes(photos_zip(d / "p.zip").read_bytes()[:-200]) and d / "x.zip", "corrupt zip"),
        (lambda d: make_zip(d / "x.zip", {"readme.txt": b"hi", "__MACOSX/._a.jpg": b"x"}), "instance_data contains no images"),
        (lambda d: photos_zip(d / "x.zip", extra={"photos/bad.jpg": b"\xff\xd8 not a jpeg"}), "image 'photos/bad.jpg' cannot be read"),
        (lambda d: photos_zip(d / "x.zip", extra={"../../escape.png": image_bytes()}), "points outside the archive"),
        (lambda d: photos_zip(d / "x.zip", extra={"/tmp/escape.png": image_bytes()}), "absolute path"),
        (lambda d: make_zip(d / "x.zip", {"a.png": image_bytes()}, symlinks={"b.png": "/etc/passwd"}), "symbolic link"),
        (lambda d: make_zip(d / "x.zip", {f"f{i}.txt": b"" for i in range(2001)}), "more than the limit of 2000"),
        (_declared_bomb, "expands to 3221225472 bytes, more than the limit"),
    ],
    ids=["not-zip", "corrupt", "no-images", "unreadable-image", "zip-slip", "absolute", "symlink", "file-count", "size-bomb"],
)
def test_bad_instance_data_fails_with_a_clear_error(trainer_predict_server, trainer_workdir, tmp_path, make, message):
    archive = make(tmp_path)
    body = predict(trainer_predict_server, tmp_path, instance_data=data_url(archive))
    assert body["status"] == "failed"
    assert message in body["error"]
    assert not list(trainer_workdir.parent.rglob("escape.png")) and not (tmp_path.parent / "escape.png").exists()
    assert not Path("/tmp/escape.png").exists()


def test_class_images_are_ignored_without_prior_preservation(trainer_predict_server, tmp_path):
    instance = photos_zip(tmp_path / "photos.zip", extra={"dataset_class/broken.png": b"not a png"})
    body = predict(trainer_predict_server, tmp_path, instance_data=data_url(instance), with_prior_preservation=False)
    assert body["status"] == "succeeded", body.get("error")  # the broken class image is never decoded
    assert "ignoring 1 supplied class image(s)" in body["logs"]


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"num_class_images": 0}, "with_prior_preservation needs class images"),
        ({"class_data": "EMPTY"}, "class_data contains no images"),
    ],
)
def test_prior_preservation_without_class_images_fails(trainer_predict_server, photos, tmp_path, extra, message):
    if extra.get("class_data") == "EMPTY":
        extra = {"class_data": data_url(make_zip(tmp_path / "c.zip", {"readme.txt": b"no images"}))}
    body = predict(trainer_predict_server, tmp_path, instance_data=photos, with_prior_preservation=True, **extra)
    assert body["status"] == "failed"
    assert message in body["error"]


def test_bad_ckpt_base_fails_with_a_clear_error(trainer_predict_server, photos, tmp_path):
    ckpt = make_zip(tmp_path / "ckpt.zip", {"model.ckpt": b"\0" * 64, "notes.txt": b"a checkpoint"})
    body = predict(trainer_predict_server, tmp_path, instance_data=photos, ckpt_base=data_url(ckpt))
    assert body["status"] == "failed"
    assert "ckpt_base is not a diffusers pipeline: model_index.json is missing" in body["error"]


def test_quantize_base_is_refused_for_an_sd_base(trainer_predict_server, photos, tmp_path):
    body = predict(trainer_predict_server, tmp_path, instance_data=photos, lora_rank=4, quantize_base="int8")
    assert body["status"] == "failed"
    assert "quantize_base quantises a FLUX base's transformer; this SD base trains unquantised" in body["error"]


def test_resolution_not_multiple_of_8_fails(trainer_predict_server, photos, tmp_path):
    body = predict(trainer_predict_server, tmp_path, instance_data=photos, resolution=100)
    assert body["status"] == "failed"
    assert "resolution must be a multiple of 8, got 100" in body["error"]


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"max_train_steps": 0}, "0 is less than the minimum of 1"),
        ({"max_train_steps": "many"}, 'is not of type "integer"'),
        ({"lr_scheduler": "exponential"}, "is not one of"),
        ({"quantize_base": "int4"}, "is not one of"),
    ],
)
def test_schema_rejects_out_of_range_and_mistyped_inputs(trainer_predict_server, photos, inputs, message):
    status, body = post(f"{trainer_predict_server.url}/predictions", {"input": {**QUICK, "instance_data": photos, **inputs}})
    assert status == 422
    assert any(message in d["msg"] for d in body["detail"]), body
