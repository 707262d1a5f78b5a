"""Template speed: setup seconds, denoising steps/s and peak memory of the templates' predictor
core (templates.inference) on whatever device is present, with a random-weight pipeline of
Stable Diffusion 1.5's exact layer shapes generated locally.

Also: setup against the time to read the weights' safetensors bytes (warm page cache, the same
run; goal: setup within 1.5x of it), and with ``--controlnet`` the controlnet-canny template
beside vanilla (a random ControlNet of SD 1.5's shape, Canny preprocessing included).

Baselines, printed as ratios in the same run:
  * in-run: plain diffusers ``StableDiffusionPipeline`` on the same weights and device, called
    the way its documentation does (fp16 on CUDA, default SDPA attention, prompt string);
  * published (CUDA only): fal.ai's A100 figures for diffusers SD 1.5, 512x512, 50 steps:
    SDPA 1.60 s/image; SDPA + torch.compile + channels_last 1.06 s/image (47 it/s).

    python bench/template_speed.py                       # SD-1.5 shape, 512px, 50 steps
    python bench/template_speed.py --shape tiny --size 64 --steps 20   # a quick CPU run
    python bench/template_speed.py --controlnet          # + the controlnet-canny template
    python bench/template_speed.py --shape flux-dev --size 1024 --steps 28 --compile   # FLUX.1-dev's shape, bf16
    python bench/template_speed.py --shape flux-tiny --size 64 --steps 4               # the FLUX harness on a CPU

FLUX (the vanilla-flux template): plain diffusers ``FluxPipeline`` in bf16 (guidance 3.5, 512 T5
tokens) beside the template core and, with ``--compile``, its compiled transformer; published
anchors (CUDA, 1024x1024, 28 steps): PyTorch's 2026 diffusers devlog on an H100, 6.7 s plain and
4.5 s compiled; Replicate's FLUX.1-dev (fp8 + compile) 3.03 s end to end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from fixtures.tiny_models import build_flux, build_sd, build_tiny_controlnet  # noqa: E402
from templates.inference.generator import ImageGenerator  # noqa: E402
from templates.inference.locations import WeightLocations  # noqa: E402
from templates.inference.request import GenerationRequest  # noqa: E402

PUBLISHED = {"fal.ai A100 SDPA": 1.60, "fal.ai A100 SDPA+compile+channels_last": 1.06}
PUBLISHED_FLUX = {"PyTorch devlog H100 plain": 6.7, "PyTorch devlog H100 compiled": 4.5, "Replicate fp8+compile": 3.03}
PROMPT = "a photo of a cjw toy on a beach, golden hour, detailed"


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, whole process


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_images(run, device: torch.device, repeats: int) -> float:
    """Median seconds per image over ``repeats`` runs (after one warm-up)."""
    run()
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def bench_plain_diffusers(weights: Path, device: torch.device, dtype: torch.dtype, size: int, steps: int, repeats: int, flux: bool = False) -> dict:
    from diffusers import FluxPipeline, StableDiffusionPipeline

    reset_peak(device)
    started = time.perf_counter()
    if flux:  # as its model card calls it
        pipe = FluxPipeline.from_pretrained(weights, dtype=dtype, local_files_only=True).to(device)
        extra = {"guidance_scale": 3.5, "max_sequence_length": 512}
    else:
        pipe = StableDiffusionPipeline.from_pretrained(weights, dtype=dtype, safety_checker=None, local_files_only=True).to(device)
        extra = {}
    sync(device)
    setup = time.perf_counter() - started
    pipe.set_progress_bar_config(disable=True)
    seconds = time_images(
        lambda: pipe(PROMPT, width=size, height=size, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(0), **extra),
        device,
        repeats,
    )
    result = {"setup_s": setup, "s_per_image": seconds, "peak_gib": peak_memory_gib(device)}
    pipe = None  # freed before the cache is emptied
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def read_seconds(weights: Path, repeats: int = 3) -> tuple[float, int]:
    """Median seconds to read every safetensors file of ``weights`` (after one read that warms
    the page cache, as setup finds it on a warm worker), and their total bytes."""
    files = sorted(weights.rglob("*.safetensors"))
    total = sum(f.stat().st_size for f in files)
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        for f in files:
            with open(f, "rb") as handle:
                while handle.read(1 << 24):
                    pass
        times.append(time.perf_counter() - started)
    return sorted(times[1:])[len(times[1:]) // 2], total


def control_photo(size: int):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (20, 20, 40))
    draw = ImageDraw.Draw(image)
    draw.rectangle((size // 8, size // 8, size // 2, size * 3 // 4), fill=(230, 230, 230))
    draw.ellipse((size // 2, size // 4, size * 7 // 8, size * 5 // 8), fill=(200, 60, 60))
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"dreambuild-bench-control-{size}.png"
    image.save(path)
    return path


def bench_template(
    weights: Path, device: torch.device, size: int, steps: int, repeats: int, compile_unet: bool, controlnet: Path | None = None
) -> dict:
    os.environ["DREAMBUILD_TORCH_COMPILE"] = "1" if compile_unet else "0"
    reset_peak(device)
    missing = weights.parent / "not-baked"
    flux = (weights / "transformer").is_dir()
    template = "controlnet-canny" if controlnet else "vanilla-flux" if flux else "vanilla"
    generator = ImageGenerator(template, WeightLocations(weights, controlnet or missing, missing, missing))
    started = time.perf_counter()
    generator.setup()
    sync(device)
    setup = time.perf_counter() - started
    request = GenerationRequest(
        prompt=PROMPT,
        width=size,
        height=size,
        num_inference_steps=steps,
        seed=0,
        disable_safety_check=True,
        control_image=control_photo(size) if controlnet else None,
        guidance=3.5 if flux else None,
    )
    first = time.perf_counter()
    generator.generate(request)  # includes compilation when compiling
    first = time.perf_counter() - first
    seconds = time_images(lambda: generator.generate(request), device, repeats)
    result = {"setup_s": setup, "first_image_s": first, "s_per_image": seconds, "peak_gib": peak_memory_gib(device)}
    generator = None  # freed before the cache is emptied
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="sd15", choices=["sd15", "tiny", "flux-dev", "flux-tiny"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also measure with torch.compile (CUDA)")
    parser.add_argument("--controlnet", action="store_true", help="also measure the controlnet-canny template")
    parser.add_argument("--cache", type=Path, default=Path(".dreambuild/cache"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    ns = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    flux = ns.shape.startswith("flux")
    dtype = (torch.bfloat16 if flux else torch.float16) if device.type == "cuda" else torch.float32
    weights = ns.cache / f"{ns.shape}-random-{str(dtype).removeprefix('torch.')}"
    if not (weights / "model_index.json").is_file():
        started = time.perf_counter()
        if flux:
            build_flux(weights, shape=ns.shape.removeprefix("flux-") if ns.shape == "flux-tiny" else "flux-dev", dtype=dtype, device=device.type)
        else:
            build_sd(weights, shape=ns.shape, dtype=dtype, device=device.type)
        print(f"generated {ns.shape}-shaped random weights in {time.perf_counter() - started:.1f} s: {weights}")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(
        f"device: {name}; torch {torch.__version__}; {ns.shape} shape, {ns.size}x{ns.size}, {ns.steps} steps, "
        f"{str(dtype).removeprefix('torch.')}, median of {ns.repeats}"
    )

    print(f"{'variant':45} {'setup s':>8} {'s/image':>8} {'steps/s':>8} {'peak GiB':>9} {'vs plain':>9}", flush=True)
    rows: dict[str, dict] = {}

    def record(label: str, row: dict) -> None:
        rows[label] = row
        row["steps_per_s"] = ns.steps / row["s_per_image"]
        baseline = rows["plain diffusers (in-run baseline)"]["s_per_image"]
        print(
            f"{label:45} {row['setup_s']:8.2f} {row['s_per_image']:8.3f} {row['steps_per_s']:8.1f} "
            f"{row['peak_gib']:9.2f} {baseline / row['s_per_image']:8.2f}x",
            flush=True,
        )

    record("plain diffusers (in-run baseline)", bench_plain_diffusers(weights, device, dtype, ns.size, ns.steps, ns.repeats, flux))
    record("dreambuild template core", bench_template(weights, device, ns.size, ns.steps, ns.repeats, compile_unet=False))
    read, total = read_seconds(weights)
    setup = rows["dreambuild template core"]["setup_s"]
    print(f"  setup {setup:.2f} s vs reading the {total / 2**30:.2f} GiB of safetensors {read:.2f} s: {setup / read:.2f}x (goal <= 1.5x)", flush=True)
    rows["dreambuild template core"].update(read_s=read, weights_bytes=total)
    if ns.controlnet:
        controlnet = ns.cache / f"{ns.shape}-random-controlnet-{str(dtype).removeprefix('torch.')}"
        if not (controlnet / "config.json").is_file():
            build_tiny_controlnet(controlnet, weights, dtype=dtype)
        record(
            "controlnet-canny template (txt2img + Canny)",
            bench_template(weights, device, ns.size, ns.steps, ns.repeats, compile_unet=False, controlnet=controlnet),
        )
    if ns.compile and device.type == "cuda":
        row = bench_template(weights, device, ns.size, ns.steps, ns.repeats, compile_unet=True)
        record("dreambuild template core + torch.compile", row)
        print(f"  (torch.compile: first image {row['first_image_s']:.1f} s, compilation included)")
    published = PUBLISHED if ns.shape == "sd15" and ns.size == 512 and ns.steps == 50 else None
    if ns.shape == "flux-dev" and ns.size == 1024 and ns.steps == 28:
        published = PUBLISHED_FLUX
    if device.type == "cuda" and published:
        for label, row in rows.items():
            ratios = ", ".join(f"{base / row['s_per_image']:.2f}x {name}" for name, base in published.items())
            print(f"{label}: {ratios}  (>1 is faster than the published figure)")
    if ns.json:
        ns.json.write_text(json.dumps({"device": name, "args": {k: str(v) for k, v in vars(ns).items()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
