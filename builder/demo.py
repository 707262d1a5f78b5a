"""``dreambuild demo``: the pipeline on embedded defaults, on this machine, with no configuration.

Today it covers the Train step end to end: tiny local base model -> the sample subject photos
-> the trainer running in the real Cog HTTP server -> output.zip -> an image generated from
the fine-tune by the vanilla template, also in the Cog HTTP server. (Build, push and webhook
join as their issues land.)
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
import zipfile
from pathlib import Path

from dreambuild.cog_server import REPO_ROOT, start_cog_server

SAMPLES = REPO_ROOT / "samples" / "subject"
CACHE = REPO_ROOT / ".dreambuild" / "cache"

# The seed request's input shape, sized for a tiny model on two CPU cores.
DEMO_INPUT = {
    "instance_prompt": "a photo of a cjw toy",
    "class_prompt": "a photo of a toy",
    "max_train_steps": 60,
    "resolution": 64,
    "num_class_images": 4,
    "learning_rate": 5e-5,
    "save_sample_prompt": "a photo of a cjw toy on a beach",
    "save_infer_steps": 20,
}


def _tiny_base() -> Path:
    from dreambuild.tiny_models import build_tiny_sd

    base = CACHE / "tiny-sd"
    if not (base / "dreambuild-fixture.json").is_file():
        build_tiny_sd(base)
    return base


def _zip_photos(dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for photo in sorted(SAMPLES.glob("*.jpg")):
            zf.write(photo, f"subject/{photo.name}")
    return dest


def run_demo(out: Path, say=print) -> dict:
    """Run the demo and return the summary written to ``out/summary.json``."""
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.monotonic()
    base = _tiny_base()
    timings["tiny_models"] = time.monotonic() - t
    say(f"tiny base model: {base}")
    photos = _zip_photos(out / "photos.zip")

    t = time.monotonic()
    say("starting the trainer in the Cog HTTP server ...")
    with start_cog_server("trainer/predict.py:Predictor", out / "trainer-runtime", env={"DREAMBUILD_BASE_MODEL": str(base)}) as server:
        timings["trainer_setup"] = time.monotonic() - t
        data_url = "data:application/zip;base64," + base64.b64encode(photos.read_bytes()).decode()
        body = json.dumps({"input": {**DEMO_INPUT, "instance_data": data_url}}).encode()
        request = urllib.request.Request(f"{server.url}/predictions", data=body, headers={"Content-Type": "application/json"})
        t = time.monotonic()
        say(f"training ({DEMO_INPUT['max_train_steps']} steps on CPU) ...")
        with urllib.request.urlopen(request, timeout=3600) as resp:
            prediction = json.load(resp)
        timings["train"] = time.monotonic() - t
    if prediction.get("status") != "succeeded":
        raise SystemExit(f"demo: training failed: {prediction.get('error')}\n{prediction.get('logs', '')[-2000:]}")
    archive = out / "output.zip"
    archive.write_bytes(base64.b64decode(prediction["output"].split(",", 1)[1]))

    t = time.monotonic()
    image_path = _generate(archive, out, say)
    timings["predict"] = time.monotonic() - t
    summary = {
        "training_id": prediction["id"],
        "status": prediction["status"],
        "metrics": prediction.get("metrics", {}),
        "output_zip": str(archive),
        "output_zip_bytes": archive.stat().st_size,
        "image": str(image_path),
        "timings_seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    say(f"done: {out / 'summary.json'} and {image_path}")
    say(
        "With real weights on a GPU machine: `python -m trainer.fetch_base_model && cog build` (README, "
        "'Training with Cog'), then the same request with resolution 512 and max_train_steps ~2000."
    )
    return summary


def _generate(archive: Path, out: Path, say=print) -> Path:
    """Predict with the fine-tune through the vanilla template in the real Cog HTTP server."""
    import shutil

    from dreambuild.archives import extract_zip
    from dreambuild.tiny_models import build_tiny_safety_checker

    weights = out / "weights"
    if weights.exists():
        shutil.rmtree(weights)
    extract_zip(archive, weights, label="output.zip")
    checker = CACHE / "safety-checker"
    if not (checker / "config.json").is_file():
        build_tiny_safety_checker(checker)
    env = {"DREAMBUILD_WEIGHTS": str(weights), "DREAMBUILD_SAFETY_CHECKER": str(checker)}
    say("predicting with the vanilla template in the Cog HTTP server ...")
    with start_cog_server("templates/predict.py:Vanilla", out / "template-runtime", env=env) as server:
        # No prompt: the template defaults to the instance prompt recorded in args.json.
        body = json.dumps({"input": {"num_inference_steps": 20, "seed": 0}}).encode()
        request = urllib.request.Request(f"{server.url}/predictions", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as resp:
            prediction = json.load(resp)
    if prediction.get("status") != "succeeded":
        raise SystemExit(f"demo: prediction failed: {prediction.get('error')}")
    path = out / "output.png"
    path.write_bytes(base64.b64decode(prediction["output"][0].split(",", 1)[1]))
    return path
