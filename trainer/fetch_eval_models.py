"""Fetch the likeness models (``measure_likeness``) into ``./eval-models`` before ``cog build``,
so the trainer image never downloads at run time: DINO ViT-S/16 and CLIP ViT-B/32, as the
DreamBooth paper scores subject and prompt fidelity (:mod:`trainer.likeness`).

    python -m trainer.fetch_eval_models [--dest eval-models]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dreambuild.layout import write_pipeline_digest
from trainer.likeness import CLIP_REPO, DINO_REPO

# Either weights file: a repository without safetensors gets them written here (digests hash them).
ALLOW = ["*.json", "*.txt", "model.safetensors", "pytorch_model.bin"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path("eval-models"))
    ns = parser.parse_args(argv)
    from huggingface_hub import snapshot_download
    from transformers import CLIPModel, ViTModel

    repos = {"dino": DINO_REPO, "clip": CLIP_REPO}
    for (key, repo), model in zip(repos.items(), (ViTModel, CLIPModel)):
        folder = ns.dest / key
        snapshot_download(repo, local_dir=folder, allow_patterns=ALLOW)
        if (folder / "pytorch_model.bin").is_file():
            if not (folder / "model.safetensors").is_file():
                extra = {"add_pooling_layer": False} if model is ViTModel else {}  # DINO's features: the CLS token
                model.from_pretrained(folder, **extra).save_pretrained(folder, safe_serialization=True)
            (folder / "pytorch_model.bin").unlink()
        print(f"{repo} -> {folder} ({write_pipeline_digest(folder)})")
    (ns.dest / "models.json").write_text(json.dumps(repos, indent=2) + "\n")


if __name__ == "__main__":
    main()
