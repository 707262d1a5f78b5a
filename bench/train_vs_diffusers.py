"""dreambuild's trainer beside diffusers' own DreamBooth scripts: steps/s and peak GPU memory on
the same device, same shapes and settings, in one run.

    python bench/train_vs_diffusers.py [--pairs sd15-full,sd15-lora,sdxl-lora,flux-lora] [--steps 40] [--batch 1]
        [--precision fp16] [--adam8bit] [--no-text-encoder] [--resolution PX] [--quantize-base int8] [--cache DIR]
    python bench/train_vs_diffusers.py --shape tiny --resolution 64 --steps 8 --precision no  # the harness, on a CPU

Baselines (the named ratio's denominator): diffusers' ``train_dreambooth.py``,
``train_dreambooth_lora.py``, ``train_dreambooth_lora_sdxl.py`` and
``train_dreambooth_lora_flux.py``, vendored unchanged in ``bench/baselines/diffusers`` (see its
README for the commit), run against the installed diffusers. Both sides get: random weights with
SD 1.5's, SDXL's and FLUX.1-dev's exact layer shapes (``fixtures.tiny_models``, shapes ``sd15`` /
``sdxl`` / ``flux-dev``, FLUX's built in bf16; ``--shape tiny`` for a CPU), the sample
subject photos, the resolution (default: the base's native size), batch size, mixed precision
and optimizer (torch AdamW, or bitsandbytes AdamW8bit with ``--adam8bit``), constant learning
rate (5e-6 full, 1e-4 LoRA), LoRA rank 4 on the attention projections, text encoder trained
(LoRA: its adapters) unless ``--no-text-encoder``, no prior preservation, no checkpoints, no
validation, seed 0. FLUX (LoRA only) runs in bf16 where fp16 is asked (FLUX.1 overflows in fp16;
our trainer does the same), with the same LoRA layers (ours, given to theirs as ``--lora_layers``) and their T5
prompt length (512). Each run is its own process timed by ``bench/step_clock.py`` (steps after
``--warmup``, peak memory during training). Goal (issues 16, 29): ours >= 1.2x their steps/s at <=
their peak memory. ``--quantize-base int8|fp8`` trains ours on the 8-bit FLUX base (the
quantize_base input; FLUX pairs only): diffusers' FLUX.1 script has no such mode, so the ratios
then say what the 8-bit base saves in memory and costs in speed against the bf16 baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BASELINES = REPO / "bench" / "baselines" / "diffusers"
PAIRS = {  # name: (base shape family, their script, LoRA)
    "sd15-full": ("sd", "train_dreambooth.py", False),
    "sd15-lora": ("sd", "train_dreambooth_lora.py", True),
    "sdxl-lora": ("sdxl", "train_dreambooth_lora_sdxl.py", True),
    "flux-lora": ("flux", "train_dreambooth_lora_flux.py", True),
}
PROMPT = "a photo of sks toy"


def build_base(family: str, shape: str, cache: Path, cuda: bool) -> Path:
    """The random base of ``family`` at ``shape``, built once into ``cache`` and named as
    bench/template_speed.py names its bases (``--cache`` shares one FLUX base: 34 GB)."""
    import torch

    from fixtures.tiny_models import build_flux, build_sd, build_sdxl

    shape = shape if shape == "tiny" else {"sd": "sd15", "sdxl": "sdxl", "flux": "flux-dev"}[family]
    # FLUX.1-dev's 12B transformer and T5-XXL: written in bf16 (fp32 would be 64 GB on disk).
    dtype = torch.bfloat16 if family == "flux" and shape != "tiny" else None
    name = shape if shape != "tiny" else {"sd": "tiny", "sdxl": "sdxl-tiny", "flux": "flux-tiny"}[family]
    dest = cache / f"{name}-random-{str(dtype or torch.float32).removeprefix('torch.')}"
    if (dest / "model_index.json").is_file():
        return dest
    started = time.perf_counter()
    build = {"sd": build_sd, "sdxl": build_sdxl, "flux": build_flux}[family]
    build(dest, shape=shape, device="cuda" if cuda else "cpu", dtype=dtype)
    print(f"{name} random base built in {time.perf_counter() - started:.0f}s: {dest}", flush=True)
    return dest


def their_command(script: str, base: Path, photos: Path, out: Path, opts: argparse.Namespace, lora: bool, resolution: int) -> list[str]:
    command = [
        str(BASELINES / script),
        "--pretrained_model_name_or_path",
        str(base),
        "--instance_data_dir",
        str(photos),
        "--instance_prompt",
        PROMPT,
        "--output_dir",
        str(out),
        "--resolution",
        str(resolution),
        "--train_batch_size",
        str(opts.batch),
        "--max_train_steps",
        str(opts.steps),
        "--learning_rate",
        "1e-4" if lora else "5e-6",
        "--lr_scheduler",
        "constant",
        "--lr_warmup_steps",
        "0",
        "--mixed_precision",
        opts.precision,
        "--seed",
        "0",
        "--checkpointing_steps",
        str(opts.steps + 1),
    ]
    if lora:
        command += ["--rank", "4"]
    if "flux" in script:  # the layers ours trains (its default adds the feed-forwards)
        from trainer.flux import FLUX_LORA_TARGETS

        command += ["--lora_layers", ",".join(FLUX_LORA_TARGETS)]
    if opts.text_encoder:
        command += ["--train_text_encoder"]
    if opts.adam8bit:
        command += ["--use_8bit_adam"]
    return command


def our_inputs(opts: argparse.Namespace, lora: bool, resolution: int, family: str) -> dict:
    return {
        **({"quantize_base": opts.quantize_base} if family == "flux" else {}),
        "instance_prompt": PROMPT,
        "class_prompt": "a photo of a toy",
        "with_prior_preservation": False,
        "max_train_steps": opts.steps,
        "resolution": resolution,
        "train_batch_size": opts.batch,
        "seed": 0,
        "mixed_precision": opts.precision,
        "use_8bit_adam": opts.adam8bit,
        "train_text_encoder": opts.text_encoder,
        "learning_rate": 5e-6,
        "lora_rank": 4 if lora else 0,
        "lora_lr": 1e-4,
        "checkpointing_steps": 0,
    }


def timed_run(args: list[str], out: Path, env: dict, opts: argparse.Namespace, log: Path) -> dict | None:
    command = [
        sys.executable,
        str(REPO / "bench" / "step_clock.py"),
        "--steps",
        str(opts.steps),
        "--warmup",
        str(opts.warmup),
        "--out",
        str(out),
        *args,
    ]
    with open(log, "w") as handle:
        done = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    if done.returncode != 0 or not out.is_file():
        print(f"  failed (exit {done.returncode}); the last lines of {log}:\n    " + "\n    ".join(log.read_text().splitlines()[-12:]), flush=True)
        return None
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default=",".join(PAIRS))
    parser.add_argument("--shape", choices=["real", "tiny"], default="real", help="real: SD 1.5's / SDXL's layer shapes")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=None, help="default: the base's native size")
    parser.add_argument("--precision", choices=["no", "fp16", "bf16"], default="fp16")
    parser.add_argument("--adam8bit", action="store_true")
    parser.add_argument("--no-text-encoder", dest="text_encoder", action="store_false")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=None, help="keep the random bases here between runs (default: built per run)")
    parser.add_argument("--quantize-base", choices=["no", "int8", "fp8"], default="no", help="ours, FLUX pairs: the 8-bit base")
    opts = parser.parse_args()
    import torch

    from dreambuild.layout import native_size

    cuda = torch.cuda.is_available()
    root = Path(tempfile.mkdtemp(prefix="dreambuild-vs-diffusers-", dir=opts.workdir))
    photos = root / "photos"
    photos.mkdir()
    for path in sorted((REPO / "samples" / "subject").glob("*.jpg")):
        shutil.copy(path, photos / path.name)
    with zipfile.ZipFile(root / "photos.zip", "w") as zf:
        for path in sorted(photos.iterdir()):
            zf.write(path, path.name)
    rows = []
    try:
        for name in opts.pairs.split(","):
            family, script, lora = PAIRS[name]
            base = build_base(family, opts.shape, opts.cache or root, cuda)
            resolution = opts.resolution or native_size(base)
            pair_opts = argparse.Namespace(**{**vars(opts), "precision": "bf16" if family == "flux" and opts.precision == "fp16" else opts.precision})
            env = {
                **os.environ,
                "HF_HUB_OFFLINE": "1",
                "DREAMBUILD_BASE_MODEL": str(base),
                "DREAMBUILD_WORKDIR": str(root / "work"),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),  # a device's carried packages too
            }
            results = {}
            for side in ("diffusers", "dreambuild"):
                print(f"{name}: {side} ...", flush=True)
                out, log = root / f"{name}-{side}.json", root / f"{name}-{side}.log"
                if side == "diffusers":
                    run_args = ["--", *their_command(script, base, photos, root / f"{name}-out", pair_opts, lora, resolution)]
                else:
                    (root / f"{name}-inputs.json").write_text(json.dumps(our_inputs(pair_opts, lora, resolution, family)))
                    run_args = ["--trainer", str(root / f"{name}-inputs.json"), str(root / "photos.zip")]
                results[side] = timed_run(run_args, out, env, opts, log)
                shutil.rmtree(root / "work", ignore_errors=True)
                shutil.rmtree(root / f"{name}-out", ignore_errors=True)
            rows.append((name, resolution, results))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    device = next((r[s]["device"] for _, _, r in rows for s in r if r[s]), "none")
    print(
        f"\n{device}, torch {torch.__version__}; {opts.steps} steps ({opts.warmup} warm-up), batch {opts.batch}, "
        f"{opts.precision}{' + AdamW8bit' if opts.adam8bit else ' + AdamW'}, text encoder "
        f"{'trained' if opts.text_encoder else 'frozen'}, shapes {opts.shape}"
        f"{f', ours with quantize_base {opts.quantize_base}' if opts.quantize_base != 'no' else ''}\n"
    )
    print(f"{'pair':10} {'px':>5} {'diffusers st/s':>15} {'ours st/s':>10} {'speed':>7} {'diffusers GiB':>14} {'ours GiB':>9} {'memory':>7}")
    for name, resolution, results in rows:
        theirs, ours = results.get("diffusers"), results.get("dreambuild")
        speed = f"{ours['steps_per_s'] / theirs['steps_per_s']:.2f}x" if theirs and ours else "-"
        gib = [f"{r['peak_gib']:.1f}" if r and r["peak_gib"] is not None else "-" for r in (theirs, ours)]
        memory = f"{ours['peak_gib'] / theirs['peak_gib']:.2f}x" if theirs and ours and ours["peak_gib"] else "-"
        print(
            f"{name:10} {resolution:5} {theirs['steps_per_s'] if theirs else float('nan'):15.2f} "
            f"{ours['steps_per_s'] if ours else float('nan'):10.2f} {speed:>7} {gib[0]:>14} {gib[1]:>9} {memory:>7}"
        )
    print("\nspeed: ours / diffusers' steps per second (goal >= 1.2x); memory: ours / theirs peak (goal <= 1.00x)")


if __name__ == "__main__":
    main()
