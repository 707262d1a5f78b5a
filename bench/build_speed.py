"""How fast `dreambuild build` turns an output.zip into a pushed image, against a floor and the
tools people use today, in one run on one local registry.

    .venv/bin/python bench/build_speed.py [--gib 2] [--skip-slow]

Synthetic weights: random bytes in safetensors files in a diffusers layout (incompressible, like
trained fp16 weights nearly are), zipped as the trainer writes output.zip (stored). Measured:

- floor: one sequential read + sha256 of the archive (what any builder must at least do)
- registry ingest: the same bytes pushed from memory with no reading or hashing on our side:
  the fastest any client can push a blob of this size to this registry
- oci: `dreambuild build --backend oci` (daemonless; template layers mounted, weights streamed)
- oci to an OCI layout: the same build with a local layout as the destination (no registry)
- docker: `dreambuild build --backend docker` against `podman system service` (the seed's way)
- buildah: unzip + `buildah bud` + `buildah push` of the same two-line Dockerfile
- oci rebuild: the same weights again (layer found in the registry, nothing read or sent)
- oci LoRA: a LoRA training's output (``--lora-mib`` of adapters + args.json, as the trainer
  writes it with lora_rank > 0) on the same template with a base baked in, into a new
  repository (as the full build); then four more new LoRAs into it, and the median of the five

Prints each as seconds and as a ratio to the floor. Targets: oci <= 1.5x floor, >= 3x faster
than buildah, rebuild <= 5 % of the first oci build; the LoRA build under 1 s and >= 100x
faster than the full one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.image.build import build_image  # noqa: E402
from builder.settings import BuilderSettings  # noqa: E402
from dreambuild.archives import ArchiveLimits, extract_zip  # noqa: E402
from fixtures.services import buildah_template, containers_env, run, start_podman, start_registry, storage_args  # noqa: E402

COMPONENTS = {"unet": 0.70, "text_encoder": 0.20, "vae": 0.10}


def synthetic_archive(path: Path, total_bytes: int) -> Path:
    """A diffusers layout of random safetensors, zipped like output.zip (ZIP_STORED)."""
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1", **{name: ["diffusers", "Model"] for name in COMPONENTS}}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("model_index.json", json.dumps(index))
        for name, share in COMPONENTS.items():
            zf.writestr(f"{name}/config.json", "{}")
            size = int(total_bytes * share)
            header = json.dumps({"w": {"dtype": "F16", "shape": [size // 2], "data_offsets": [0, size - size % 2]}}).encode()
            with zf.open(zipfile.ZipInfo(f"{name}/model.safetensors", date_time=(2026, 1, 1, 0, 0, 0)), "w", force_zip64=True) as out:
                out.write(len(header).to_bytes(8, "little") + header)
                left = size - size % 2
                while left:
                    block = min(left, 64 * 2**20)
                    out.write(os.urandom(block))
                    left -= block
    return path


def synthetic_lora(path: Path, total_bytes: int) -> Path:
    """A LoRA training's output.zip: random adapters in safetensors and args.json naming a base."""
    header = json.dumps({"w": {"dtype": "F16", "shape": [total_bytes // 2], "data_offsets": [0, total_bytes - total_bytes % 2]}}).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("args.json", json.dumps({"lora_rank": 4, "base_digest": "sha256:" + "0" * 64}))
        zf.writestr("pytorch_lora_weights.safetensors", len(header).to_bytes(8, "little") + header + os.urandom(total_bytes - total_bytes % 2))
    return path


def floor(archive: Path) -> float:
    started = time.perf_counter()
    digest = hashlib.sha256()
    with open(archive, "rb") as handle:
        while chunk := handle.read(8 * 2**20):
            digest.update(chunk)
    return time.perf_counter() - started


def registry_ingest(registry: str, archive: Path) -> float:
    """Push the archive's bytes, already in memory and hashed, as one streamed blob upload."""
    from builder.oci.registry import BlobUpload, RegistryClient

    data = archive.read_bytes()
    chunks = [data[i : i + 8 * 2**20] for i in range(0, len(data), 8 * 2**20)]
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = time.perf_counter()
    upload = BlobUpload(RegistryClient(registry), "bench/ingest")
    for chunk in chunks:
        upload.write(chunk)
    upload.commit(digest)
    return time.perf_counter() - started


def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def buildah_build(root: Path, archive: Path, template: str, registry: str, env: dict) -> float:
    started = time.perf_counter()
    context = root / "buildah-context"
    extract_zip(archive, context / "weights", label="weights", limits=ArchiveLimits(max_total_bytes=64 * 2**30))
    (context / "Dockerfile").write_text(f"FROM {template}\nCOPY weights /src/weights\n")
    run(["buildah", *storage_args(root), "bud", "--format", "docker", "--tls-verify=false", "-t", "bench/buildah-model", str(context)], env)
    run(["buildah", *storage_args(root), "push", "--tls-verify=false", "bench/buildah-model", f"docker://{registry}/bench/buildah-model:v1"], env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0, help="size of the synthetic weights")
    parser.add_argument("--skip-slow", action="store_true", help="skip the docker (podman) and buildah runs")
    parser.add_argument("--lora-mib", type=float, default=3.0, help="size of the synthetic LoRA (SD 1.5 rank 4: ~3 MiB)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dreambuild-bench-", dir=args.workdir))
    registry = start_registry(root / "registry")
    podman = None
    try:
        print(f"writing {args.gib} GiB of synthetic weights ...", flush=True)
        archive = synthetic_archive(root / "output.zip", int(args.gib * 2**30))
        template = f"{registry.host}/dreambuild/vanilla@" + buildah_template(root / "template", registry, "dreambuild/vanilla", fmt="docker")
        floor(archive)  # warm the page cache, as a just-trained output.zip would be
        results: dict[str, float] = {"floor (read + sha256)": min(floor(archive) for _ in range(3))}
        results["registry ingest (no builder)"] = registry_ingest(registry.host, archive)
        settings = BuilderSettings.from_env({"DREAMBUILD_HOME": str(root / "home")})
        results["oci to an OCI layout"], _ = timed(lambda: build_image(archive, template, f"oci:{root}/layout:bench/model", settings=settings))
        results["oci"], first = timed(lambda: build_image(archive, template, f"{registry.host}/bench/oci-model", backend="oci", settings=settings))
        results["oci rebuild (same weights)"], again = timed(
            lambda: build_image(archive, template, f"{registry.host}/bench/oci-model", backend="oci", settings=settings)
        )
        assert again.digest == first.digest and not again.weights_uploaded
        base_dir = root / "base"
        base_dir.mkdir()
        (base_dir / "model_index.json").write_text("{}")  # the builder reads only the template's DREAMBUILD_BASE
        lora_template = f"{registry.host}/dreambuild/vanilla-base@" + buildah_template(
            root / "template-base", registry, "dreambuild/vanilla-base", fmt="docker", baked={"base": base_dir}
        )
        loras = [synthetic_lora(root / f"lora-output-{i}.zip", int(args.lora_mib * 2**20)) for i in range(5)]
        lora_times = [
            timed(lambda: build_image(lora, lora_template, f"{registry.host}/bench/lora-model", backend="oci", settings=settings))[0]
            for lora in loras
        ]
        results["oci LoRA"] = lora_times[0]  # the first: into a new repository, as the full build
        results["oci LoRA, median of 5"] = sorted(lora_times)[2]  # each a new LoRA, uploaded
        if not args.skip_slow:
            podman = start_podman(root / "podman", [registry.host])
            os.environ["DOCKER_HOST"] = podman.docker_host
            results["docker (podman)"], _ = timed(
                lambda: build_image(archive, template, f"{registry.host}/bench/docker-model", backend="docker", settings=settings)
            )
            results["buildah bud + push"] = buildah_build(
                root / "buildah", archive, template, registry.host, containers_env(root / "buildah", [registry.host])
            )
        base = results["floor (read + sha256)"]
        size = archive.stat().st_size
        print(f"\n{size / 2**30:.2f} GiB archive, one local registry, {os.cpu_count()} cores\n")
        print(f"{'step':32} {'seconds':>9} {'x floor':>9} {'MiB/s':>8}")
        for name, seconds in results.items():
            print(f"{name:32} {seconds:9.2f} {seconds / base:9.2f} {size / 2**20 / seconds:8.0f}")
        print()
        print(
            f"oci vs floor: {results['oci'] / base:.2f}x (target <= 1.5x); "
            f"vs the registry's ingest: {results['oci'] / results['registry ingest (no builder)']:.2f}x"
        )
        print(f"oci to a layout vs floor: {results['oci to an OCI layout'] / base:.2f}x")
        print(f"oci rebuild / oci: {100 * results['oci rebuild (same weights)'] / results['oci']:.1f} % (target <= 5 %)")
        print(
            f"oci LoRA ({args.lora_mib:g} MiB): {results['oci LoRA']:.2f} s (target < 1 s; median of 5: "
            f"{results['oci LoRA, median of 5']:.2f} s), {results['oci'] / results['oci LoRA']:.0f}x faster than the full "
            "build (target >= 100x)"
        )
        if "buildah bud + push" in results:
            print(f"buildah / oci: {results['buildah bud + push'] / results['oci']:.1f}x faster (target >= 3x)")
            print(f"docker (podman) / oci: {results['docker (podman)'] / results['oci']:.1f}x faster")
    finally:
        if podman:
            podman.stop()
        registry.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)  # vfs layers may be read-only for shutil
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
