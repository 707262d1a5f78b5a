"""Fast-booting LoRA versions: a new fine-tune's first prediction on its template's warm base,
against the cold start a version of its own costs, in one run:

    .venv/bin/python bench/fast_boot.py [--n 10]

An embedded service (the vanilla-sd15 template baking the tiny random-weight base, in the
embedded layout) trains two LoRA versions of it (4 steps, 64 px), then:

- baseline: the first prediction of version A, a cold start (unpack, the template's Cog server
  started with its base loaded) — what every version paid before fast boot;
- fast boot: the first prediction of version B, a new fine-tune, on A's warm base server (its
  adapters loaded for the request);
- warm: the p50 of --n further predictions alternating A and B (adapters switched each time).

Inputs: 2 steps at 64x64. Ratios are against the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.predictions import INPUT, through_service, trained_version  # noqa: E402
from bench.service_scale import serve  # noqa: E402
from builder.cog.server import free_port  # noqa: E402
from builder.service.config import local_trainer_version  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10, help="warm predictions, alternating the two versions")
    args = parser.parse_args()

    from builder.cli.template_image import make_template_image
    from dreambuild.layout import pipeline_digest
    from fixtures.tiny_models import build_tiny_safety_checker, build_tiny_sd

    root = Path(tempfile.mkdtemp(prefix="dreambuild-bench-fast-boot-"))
    home = root / "embedded"
    base, checker = build_tiny_sd(root / "tiny-sd"), build_tiny_safety_checker(root / "checker")
    template = make_template_image(home / "data" / "images", "vanilla-sd15", baked={"base": base, "safety-checker": checker})
    trainer = {"name": "dreambooth", "runner": "local", "base_digest": pipeline_digest(base), "env": {"DREAMBUILD_BASE_MODEL": str(base)}}
    config = {
        "data_dir": str(home / "data"),
        "port": free_port(),
        "trainers": {local_trainer_version(): trainer},
        "tokens": [{"token": "bench-token", "owners": ["bench"]}],
    }
    api, url = serve(home, config)
    try:
        lora = {"lora_rank": 4, "lora_lr": 5e-2}
        first = trained_version(url, root, template.removeprefix("sha256:"), model="bench/lora-a", extra=lora)
        second = trained_version(url, root, template.removeprefix("sha256:"), model="bench/lora-b", extra={**lora, "seed": 7})
        cold, cold_body = through_service(url, first["id"])
        fast, fast_body = through_service(url, second["id"])
        warm = [through_service(url, version["id"])[0] for _ in range(args.n) for version in (first, second)]
    finally:
        api.terminate()
        api.wait(60)
    assert "setup_time" in cold_body["metrics"] and "setup_time" not in fast_body["metrics"], (cold_body["metrics"], fast_body["metrics"])
    print(f"tiny SD pipeline, LoRA rank 4, {INPUT['num_inference_steps']} steps at 64x64 (seconds, Prefer: wait through the service):")
    print(f"  first prediction, cold start (baseline)  {cold:7.3f}   ×1.00   (setup {cold_body['metrics']['setup_time']} s)")
    print(f"  first prediction of a new LoRA version   {fast:7.3f}   ×{fast / cold:.3f}   ({cold / fast:.0f}x faster)")
    print(f"  warm p50, two versions alternating       {statistics.median(warm):7.3f}   ×{statistics.median(warm) / cold:.3f}")


if __name__ == "__main__":
    main()
