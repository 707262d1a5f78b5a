"""Fetch the trainer's base model (Stable Diffusion 1.5, diffusers layout, safetensors) into
``./base-model`` before ``cog build``, so the trainer image never downloads at run time.

    python -m trainer.fetch_base_model [--repo stable-diffusion-v1-5/stable-diffusion-v1-5] [--dest base-model]
    python -m trainer.fetch_base_model --repo stabilityai/stable-diffusion-xl-base-1.0 --dest base-model-sdxl  # base_model=sdxl
    python -m trainer.fetch_base_model --repo black-forest-labs/FLUX.1-dev --dest base-model-flux-dev  # base_model=flux-dev
    python -m trainer.fetch_base_model --repo black-forest-labs/FLUX.1-schnell --dest base-model-flux-schnell  # base_model=flux-schnell

FLUX.1-dev is a gated repository under a non-commercial licence (accept it on Hugging Face and
set HF_TOKEN); FLUX.1-schnell is Apache-2.0.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dreambuild.layout import check_diffusers_layout, write_pipeline_digest

DEFAULT_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL_REPO = "stabilityai/stable-diffusion-xl-base-1.0"  # --dest base-model-sdxl: base_model=sdxl
FLUX_DEV_REPO = "black-forest-labs/FLUX.1-dev"  # --dest base-model-flux-dev: base_model=flux-dev (gated, non-commercial)
FLUX_SCHNELL_REPO = "black-forest-labs/FLUX.1-schnell"  # --dest base-model-flux-schnell: base_model=flux-schnell (Apache-2.0)
# The trainer needs no safety checker (templates bring their own) and no legacy checkpoints.
# SDXL adds a second tokenizer and text encoder (stabilityai/stable-diffusion-xl-base-1.0 --dest base-model-sdxl).
# FLUX adds a T5 encoder (text_encoder_2) and a transformer, both sharded (*-0000N-of-0000M plus an index).
ALLOW = [
    "model_index.json",
    "*/*.json",
    "tokenizer/*",
    "tokenizer_2/*",
    "*/diffusion_pytorch_model.safetensors",
    "*/diffusion_pytorch_model-*.safetensors",
    "text_encoder/model.safetensors",
    "text_encoder_2/model.safetensors",
    "text_encoder_2/model-*.safetensors",
]
IGNORE = ["safety_checker/*"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=DEFAULT_REPO, help="Hugging Face repository of a diffusers SD 1.x/2.x, SDXL or FLUX.1 pipeline")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--dest", type=Path, default=Path("base-model"))
    ns = parser.parse_args(argv)
    from huggingface_hub import snapshot_download

    snapshot_download(ns.repo, revision=ns.revision, local_dir=ns.dest, allow_patterns=ALLOW, ignore_patterns=IGNORE)
    index_path = ns.dest / "model_index.json"
    index = json.loads(index_path.read_text())
    if "safety_checker" in index:
        index.update(safety_checker=[None, None], requires_safety_checker=False)
        index_path.write_text(json.dumps(index, indent=2))
    check_diffusers_layout(ns.dest, f"{ns.repo} in {ns.dest}")
    # Its digest, kept beside it (base-model.digest): LoRA trainings record it without hashing the base each time.
    print(f"base model ready in {ns.dest} ({write_pipeline_digest(ns.dest)})")


if __name__ == "__main__":
    main()
