"""Small helpers shared by the tests: zip builders, image bytes, Cog HTTP calls."""

from __future__ import annotations

import base64
import io
import json
import stat
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SAMPLE_PHOTOS = sorted((REPO / "samples" / "subject").glob("*.jpg"))


def image_bytes(color=(200, 40, 40), size=(80, 64), fmt="PNG", mode="RGB", **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt, **save)
    return buf.getvalue()


def make_zip(path: Path, entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def photos_zip(path: Path, prefix: str = "photos/", extra: dict[str, bytes] | None = None) -> Path:
    entries = {f"{prefix}{p.name}": p.read_bytes() for p in SAMPLE_PHOTOS}
    return make_zip(path, {**entries, **(extra or {})})


def data_url(path: Path) -> str:
    return "data:application/zip;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def post(url: str, body: dict, timeout: float = 600) -> tuple[int, dict]:
    """POST JSON; a 409 (Cog still releasing its slot from the previous request) is retried."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    for _ in range(50):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, json.loads(exc.read() or b"{}")
            if status != 409:
                return status, payload
            time.sleep(0.2)
    return status, payload


def decode_data_url(value: str, dest: Path) -> Path:
    assert value.startswith("data:"), value[:80]
    dest.write_bytes(base64.b64decode(value.split(",", 1)[1]))
    return dest


def small_pipeline_files(seed: int = 0) -> dict[str, bytes]:
    """A minimal diffusers layout (not loadable; for builder tests that only move bytes)."""
    import random

    rng = random.Random(seed)
    return {
        "model_index.json": json.dumps(
            {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "DDIMScheduler"]}
        ).encode(),
        "unet/config.json": b"{}",
        "unet/diffusion_pytorch_model.safetensors": rng.randbytes(200_000),
        "scheduler/scheduler_config.json": b"{}",
        "args.json": json.dumps({"seed": seed}).encode(),
    }


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def zip_dir(directory: Path, archive: Path, prefix: str = "", stored: bool = True) -> Path:
    """Zip a directory the way the trainer writes output.zip (safetensors stored)."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(Path(directory).rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(directory).as_posix())
    return archive
