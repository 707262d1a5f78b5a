"""What measuring likeness costs a training (issue 30's rule: on by default only if it adds under
~5 % to a typical GPU training): the trainer's own ``run_job``, the same training with and
without ``measure_likeness``, in one run.

    python bench/likeness_cost.py [--shape sd15|sdxl] [--lora-rank 0] [--steps 200] [--validation-steps 100]
        [--precision fp16] [--resolution PX] [--adam8bit]
    python bench/likeness_cost.py --shape tiny --resolution 64 --steps 8 --validation-steps 4 --infer-steps 4 --precision no

Random weights of real shapes (``fixtures.tiny_models``: SD 1.5's or SDXL's pipeline, DINO
ViT-S/16's and CLIP ViT-B/32's — the models ``trainer.fetch_eval_models`` bakes; ``--shape
tiny`` for a CPU), the sample subject photos, a class prompt (so each evaluation also draws the
class images that prior drift compares), no prior preservation, torch AdamW unless
``--adam8bit`` (the device's image has no bitsandbytes), the trainer's evaluation settings
(``save_infer_steps`` 50 unless ``--infer-steps``). Baseline (the ratio's denominator): the same
training without ``measure_likeness``. Printed: seconds per training step, seconds per
evaluation (its images generated and scored, from metrics.json's ``evaluation_seconds``), the
measured whole-job ratio, and evaluation's share projected onto a typical training — the
trainer's defaults, 2000 steps with ``validation_steps`` 100: 21 evaluations (the base's, every
100 steps, the end).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TYPICAL_STEPS, TYPICAL_VALIDATION = 2000, 100  # trainer.args' defaults


def evaluations(steps: int, every: int) -> int:
    """How many times the trainer scores a training: the base, every ``every`` steps before the
    last, and the end (trainer.loop)."""
    return 1 + (steps - 1) // every + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["sd15", "sdxl", "tiny"], default="sd15")
    parser.add_argument("--lora-rank", type=int, default=0, help="0: a full fine-tune")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--validation-steps", type=int, default=100)
    parser.add_argument("--infer-steps", type=int, default=50, help="save_infer_steps: the evaluation images' denoising steps")
    parser.add_argument("--precision", choices=["no", "fp16", "bf16"], default="fp16")
    parser.add_argument("--resolution", type=int, default=None, help="default: the base's native size")
    parser.add_argument("--adam8bit", action="store_true", help="bitsandbytes' AdamW8bit (the trainer's default; torch AdamW otherwise)")
    opts = parser.parse_args()
    import torch

    from dreambuild.layout import native_size
    from fixtures.tiny_models import build_eval_models, build_sd, build_sdxl
    from tests.helpers import photos_zip

    cuda = torch.cuda.is_available()
    root = Path(tempfile.mkdtemp(prefix="dreambuild-likeness-bench-"))
    started = time.perf_counter()
    device = "cuda" if cuda else "cpu"
    build = build_sdxl if opts.shape == "sdxl" else build_sd
    base = build(root / "base", shape=opts.shape, device=device)
    build_eval_models(root / "eval-models", shape="tiny" if opts.shape == "tiny" else "real")
    print(f"{opts.shape} random base and likeness models built in {time.perf_counter() - started:.0f}s", flush=True)
    os.environ.update(DREAMBUILD_BASE_MODEL=str(base), DREAMBUILD_WORKDIR=str(root / "work"), DREAMBUILD_EVAL_MODELS=str(root / "eval-models"))
    from trainer.job import run_job

    photos = photos_zip(root / "photos.zip")
    resolution = opts.resolution or native_size(base)
    runs = {}
    for name, measure in (("without", False), ("measure_likeness", True)):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        inputs = {
            "instance_prompt": "a photo of a cjw toy",
            "class_prompt": "a photo of a toy",
            "with_prior_preservation": False,
            "max_train_steps": opts.steps,
            "validation_steps": opts.validation_steps,
            "save_infer_steps": opts.infer_steps,
            "resolution": resolution,
            "mixed_precision": opts.precision,
            "use_8bit_adam": opts.adam8bit,
            "lora_rank": opts.lora_rank,
            "seed": 0,
            "measure_likeness": measure,
        }
        result = run_job(inputs, photos)
        with zipfile.ZipFile(result.archive) as archive:
            metrics = next((json.loads(archive.read(n)) for n in archive.namelist() if n.endswith("metrics.json")), {})
        likeness = metrics.get("likeness") or {}
        runs[name] = {
            "job_s": result.total_seconds,
            "step_s": result.training_seconds / result.steps,
            "evaluations": len(likeness.get("steps", [])),
            "evaluation_s": likeness.get("evaluation_seconds", 0.0),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        }
        print(f"{name}: {runs[name]}", flush=True)
        result.archive.unlink(missing_ok=True)
    plain, measured = runs["without"], runs["measure_likeness"]
    per_evaluation = measured["evaluation_s"] / max(measured["evaluations"], 1)
    typical_evals = evaluations(TYPICAL_STEPS, TYPICAL_VALIDATION)
    typical_train = TYPICAL_STEPS * plain["step_s"]
    share = typical_evals * per_evaluation / (typical_train + typical_evals * per_evaluation)
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(
        f"\n{name}, torch {torch.__version__}; {opts.shape} {'LoRA rank ' + str(opts.lora_rank) if opts.lora_rank else 'full fine-tune'}, "
        f"{resolution} px, {opts.precision}, {opts.steps} steps, validation_steps {opts.validation_steps}, "
        f"evaluation images at {opts.infer_steps} steps\n"
    )
    print(f"{'run':18} {'job s':>8} {'s/step':>8} {'evals':>6} {'s/eval':>8} {'peak GiB':>9}")
    for run, row in runs.items():
        peak = f"{row['peak_gib']:.1f}" if row["peak_gib"] is not None else "-"
        each = f"{row['evaluation_s'] / row['evaluations']:.2f}" if row["evaluations"] else "-"
        print(f"{run:18} {row['job_s']:8.1f} {row['step_s']:8.3f} {row['evaluations']:6} {each:>8} {peak:>9}")
    print(f"\nmeasured: measure_likeness's job took {measured['job_s'] / plain['job_s']:.2f}x the baseline's (without)")
    print(
        f"projected onto a typical training ({TYPICAL_STEPS} steps, validation_steps {TYPICAL_VALIDATION}: {typical_evals} evaluations): "
        f"training {typical_train:.0f} s + evaluation {typical_evals * per_evaluation:.0f} s -> evaluation's share {share:.1%} (rule: < 5%)"
    )


if __name__ == "__main__":
    main()
