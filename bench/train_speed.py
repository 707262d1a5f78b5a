"""DreamBooth training speed of the trainer on Stable Diffusion 1.5's exact layer shapes.

    python bench/train_speed.py [--steps 60] [--resolution 512] [--variants fp32,fp16,fp16+8bit,bf16+8bit]

Random weights with SD 1.5's shapes (`fixtures/tiny_models.py`, shape ``sd15``), the sample
subject photos, the trainer's own `run_job` (as a prediction runs it) with its defaults except:
no prior preservation (no class images to generate), the given steps and resolution. Text
encoder trained (the default), batch 1. Each variant prints seconds per step over the whole run
(first steps included), peak GPU memory and the ratio against the in-run baseline ``fp32``
(full precision, torch AdamW). Needs CUDA; on a CPU use small --resolution and --steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from fixtures.tiny_models import build_sd  # noqa: E402

VARIANTS = {
    "fp32": {"mixed_precision": "no", "use_8bit_adam": False},
    "fp16": {"mixed_precision": "fp16", "use_8bit_adam": False},
    "fp16+8bit": {"mixed_precision": "fp16", "use_8bit_adam": True},
    "bf16+8bit": {"mixed_precision": "bf16", "use_8bit_adam": True},
}


def photos_zip(dest: Path) -> Path:
    import zipfile

    samples = sorted((Path(__file__).resolve().parent.parent / "samples" / "subject").glob("*.jpg"))
    with zipfile.ZipFile(dest, "w") as zf:
        for path in samples:
            zf.write(path, path.name)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dreambuild-train-bench-"))
    cuda = torch.cuda.is_available()
    started = time.perf_counter()
    base = build_sd(root / "sd15", shape="sd15", device="cuda" if cuda else "cpu")
    print(
        f"SD-1.5-shaped random base built in {time.perf_counter() - started:.1f}s "
        f"({torch.cuda.get_device_name() if cuda else 'CPU'}, torch {torch.__version__})",
        flush=True,
    )
    os.environ["DREAMBUILD_BASE_MODEL"] = str(base)
    os.environ["DREAMBUILD_WORKDIR"] = str(root / "work")
    from trainer.job import run_job

    photos = photos_zip(root / "photos.zip")
    rows = {}
    for name in args.variants.split(","):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        inputs = {
            "instance_prompt": "a photo of a cjw toy",
            "class_prompt": "a photo of a toy",
            "with_prior_preservation": False,
            "max_train_steps": args.steps,
            "resolution": args.resolution,
            "seed": 0,
            **VARIANTS[name],
        }
        try:
            result = run_job(inputs, photos)
        except Exception as exc:  # a variant that cannot run here is reported, not fatal
            print(f"{name}: failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        rows[name] = (result.training_seconds / result.steps, peak, result.total_seconds)
        print(f"{name}: {rows[name][0]:.3f} s/step, peak {peak:.1f} GiB, whole job {result.total_seconds:.1f}s", flush=True)
        result.archive.unlink(missing_ok=True)
    base_s = rows.get("fp32", (None,))[0]
    print(f"\n{args.resolution}px, batch 1, text encoder trained, {args.steps} steps\n")
    print(f"{'variant':12} {'s/step':>8} {'steps/s':>8} {'peak GiB':>9} {'job s':>7} {'vs fp32':>8}")
    for name, (per_step, peak, total) in rows.items():
        ratio = f"{base_s / per_step:.2f}x" if base_s else "-"
        print(f"{name:12} {per_step:8.3f} {1 / per_step:8.2f} {peak:9.1f} {total:7.1f} {ratio:>8}")


if __name__ == "__main__":
    main()
