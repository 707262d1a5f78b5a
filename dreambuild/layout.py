"""Checks that a directory holds a diffusers pipeline saved with ``save_pretrained``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from dreambuild.errors import ModelLayoutError

_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def locate_pipeline_root(extracted: Path) -> Path:
    """Return the directory holding ``model_index.json``: the root or its only sub-folder.

    People zip either a pipeline's contents or the pipeline folder itself; both are accepted.
    """
    if (extracted / "model_index.json").is_file():
        return extracted
    subdirs = [p for p in extracted.iterdir() if p.is_dir() and p.name != "__MACOSX" and not p.name.startswith(".")]
    if len(subdirs) == 1 and (subdirs[0] / "model_index.json").is_file():
        return subdirs[0]
    return extracted


LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # a LoRA training's output (trainer, lora_rank > 0)


def is_lora_output(names: Iterable[str]) -> bool:
    """Whether the files named (relative paths) are a LoRA training's output: the adapters and
    args.json, no pipeline."""
    names = set(names)
    return LORA_WEIGHTS in names and "args.json" in names and "model_index.json" not in names


def no_index_message(label: str, names: Iterable[str]) -> str:
    """Why a pipeline without ``model_index.json`` is refused; a LoRA output is named as one."""
    if LORA_WEIGHTS in set(names):
        return f"{label} holds LoRA adapters ({LORA_WEIGHTS}), not a full diffusers pipeline"
    return f"{label} is not a diffusers pipeline: model_index.json is missing"


def check_diffusers_layout(root: Path, label: str) -> dict:
    """Validate ``root`` as a diffusers pipeline and return its parsed ``model_index.json``.

    Every component named in the index must have its folder, a config, and (for models)
    weights. Raises :class:`ModelLayoutError` naming what is missing.
    """
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise ModelLayoutError(no_index_message(label, [p.name for p in root.iterdir()] if root.is_dir() else []))
    files = [p.relative_to(root).as_posix() + ("/" if p.is_dir() else "") for p in root.rglob("*")]
    return check_diffusers_listing(index_path.read_bytes(), files, label)


def check_diffusers_listing(index_json: bytes, files: Iterable[str], label: str) -> dict:
    """Validate a pipeline from its ``model_index.json`` and the relative paths of its files.

    The same check as :func:`check_diffusers_layout`, for content not on disk (zip entries).
    Directories may be listed with a trailing ``/``.
    """
    files = list(files)
    try:
        index = json.loads(index_json)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLayoutError(f"{label} is not a diffusers pipeline: model_index.json is not valid JSON ({exc})") from None
    if not isinstance(index, dict) or "_class_name" not in index:
        raise ModelLayoutError(f"{label} is not a diffusers pipeline: model_index.json has no _class_name")
    components = {
        name: spec for name, spec in index.items() if not name.startswith("_") and isinstance(spec, list) and len(spec) == 2 and None not in spec
    }
    if not components:
        raise ModelLayoutError(f"{label} is not a diffusers pipeline: model_index.json names no components")
    by_folder: dict[str, set[str]] = {}
    for path in files:
        folder, _, name = path.partition("/")
        if name and "/" not in name:  # a file directly inside a component folder
            by_folder.setdefault(folder, set()).add(name)
    for name in sorted(components):
        if name not in by_folder and not any(p.startswith(name + "/") for p in files):
            raise ModelLayoutError(f"{label}: component folder {name!r} named in model_index.json is missing")
        names = by_folder.get(name, set())
        if not any(n.endswith(".json") or n == "merges.txt" for n in names):
            raise ModelLayoutError(f"{label}: component {name!r} has no configuration file")
        if "config.json" in names and not any(n.endswith(_WEIGHT_SUFFIXES) for n in names):
            raise ModelLayoutError(f"{label}: component {name!r} has a config.json but no weights (.safetensors/.bin)")
    return index


def family(root: Path) -> str:
    """The base family of the pipeline at ``root`` (by its model_index.json's class name): ``sd``
    (1.x/2.x), ``sdxl`` or ``flux`` (FLUX.1: a rectified-flow transformer, CLIP and T5 encoders);
    a LoRA of one runs on no other."""
    name = json.loads((root / "model_index.json").read_text()).get("_class_name", "")
    return "flux" if name == "FluxPipeline" else "sdxl" if "XL" in name else "sd"


def native_size(root: Path) -> int:
    """The pipeline's native image size: its UNet's sample size times the VAE's 8x (512 for
    SD 1.5, 768 for SD 2.x-768, 1024 for SDXL); FLUX's VAE names it (1024)."""
    if family(root) == "flux":
        return int(json.loads((root / "vae" / "config.json").read_text())["sample_size"])
    return int(json.loads((root / "unet" / "config.json").read_text())["sample_size"]) * 8


def t5_sequence_length(root: Path) -> int:
    """FLUX's T5 prompt length: 512 tokens for dev (guidance-distilled), 256 for schnell, as
    Black Forest Labs run them; training and inference use the same."""
    guidance = json.loads((root / "transformer" / "config.json").read_text()).get("guidance_embeds", False)
    return 512 if guidance else 256


def pipeline_digest(root: Path) -> str:
    """``sha256:`` over a pipeline's weight files (relative path and content of every
    ``*.safetensors``): the same for the same weights wherever they are stored, so a LoRA can
    name the base it was trained on."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.safetensors")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def digest_file(root: Path) -> Path:
    """Where a baked base keeps its :func:`pipeline_digest`: beside its folder (``base`` →
    ``base.digest``), so the pipeline's own folder stays a plain diffusers layout."""
    return root.with_name(root.name + ".digest")


def baked_pipeline_digest(root: Path) -> str:
    """:func:`pipeline_digest` of a base, read from its :func:`digest_file` when one was written
    where the base was baked (the templates' ``cog.yaml``, ``trainer.fetch_base_model``) and no
    weight file is newer than it: a template then starts without hashing gigabytes (SDXL: ~7 GB).
    Computed otherwise."""
    recorded = digest_file(root)
    try:
        written = recorded.stat().st_mtime
        value = recorded.read_text().strip()
    except OSError:
        return pipeline_digest(root)
    fresh = value.startswith("sha256:") and len(value) == 71 and all(path.stat().st_mtime <= written for path in root.rglob("*.safetensors"))
    return value if fresh else pipeline_digest(root)


def write_pipeline_digest(root: Path) -> str:
    """Compute a base's digest and keep it in its :func:`digest_file`; return it."""
    value = pipeline_digest(root)
    digest_file(root).write_text(value + "\n")
    return value


if __name__ == "__main__":  # python -m dreambuild.layout DIR: a base's digest, for the service's catalog
    import sys

    print(baked_pipeline_digest(Path(sys.argv[1])))
