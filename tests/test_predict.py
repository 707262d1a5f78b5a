"""`dreambuild predict`: a built model image run without Docker, from a real registry."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from builder.image.build import build_image

CLI = str(Path(sys.executable).parent / "dreambuild")


def run_predict(*args, home: Path):
    env = {**os.environ, "DREAMBUILD_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([CLI, "predict", *args], capture_output=True, text=True, env=env, timeout=900)


def test_predict_runs_a_built_image_without_docker(tmp_path, registry, templates, fine_tune, builder_settings):
    built = build_image(fine_tune, templates["docker"], f"{registry.host}/alice/predictable", settings=builder_settings)
    done = run_predict(
        built.image,
        "-i",
        "prompt=a photo of a cjw toy",
        "-i",
        "num_inference_steps=2",
        "-i",
        "width=64",
        "-i",
        "height=64",
        "-i",
        "seed=3",
        "-i",
        "disable_safety_check=true",
        "-o",
        str(tmp_path / "out"),
        home=builder_settings.home,
    )
    assert done.returncode == 0, done.stderr
    (png,) = [Path(line) for line in done.stdout.split()]
    assert png.parent == tmp_path / "out" and Image.open(png).size == (64, 64)
    # The weights were extracted once: the second run reuses the cache and gives the same image.
    again = run_predict(
        built.image,
        "-i",
        "prompt=a photo of a cjw toy",
        "-i",
        "num_inference_steps=2",
        "-i",
        "width=64",
        "-i",
        "height=64",
        "-i",
        "seed=3",
        "-i",
        "disable_safety_check=true",
        "-o",
        str(tmp_path / "again"),
        home=builder_settings.home,
    )
    assert again.returncode == 0, again.stderr
    assert Path(again.stdout.split()[0]).read_bytes() == png.read_bytes()


def test_a_lora_output_builds_in_one_small_layer_and_runs(
    tmp_path, tmp_path_factory, registry, templates, builder_settings, tiny_sdxl, sdxl_lora_output
):
    """A LoRA training's output on a template with its base baked in: one layer of the adapters'
    size, run by `dreambuild predict`, unlike the base; a template without a base refuses it.
    SDXL here; an SD 1.5 LoRA takes the same steps through the service in
    test_service.py::test_a_lora_training_builds_on_a_template_with_its_base_and_runs."""
    from dreambuild.errors import InputError
    from fixtures.services import buildah_template

    base_dir, lora_output, name = tiny_sdxl, sdxl_lora_output, "dreambuild/vanilla-sdxl-tiny"
    digest = buildah_template(tmp_path_factory.mktemp("buildah-base"), registry, name, baked={"base": base_dir})
    template = f"{registry.host}/{name}@{digest}"
    built = build_image(lora_output, template, f"{registry.host}/alice/lora-sdxl", settings=builder_settings)
    adapters = sum(p.stat().st_size for p in lora_output.iterdir())
    raw = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{built.image}"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert raw["layers"][-1]["digest"] == built.weights_layer
    assert raw["layers"][-1]["size"] < adapters + 10_000  # the adapters and args.json: no pipeline in it

    args = ["-i", "prompt=a photo of a cjw toy", "-i", "num_inference_steps=2", "-i", "seed=3", "-i", "disable_safety_check=true"]
    lora = run_predict(built.image, *args, "-o", str(tmp_path / "lora"), home=builder_settings.home)
    assert lora.returncode == 0, lora.stderr
    plain = run_predict(templates["docker"], "--weights", str(base_dir), *args, "-o", str(tmp_path / "base"), home=builder_settings.home)
    assert plain.returncode == 0, plain.stderr
    assert Path(lora.stdout.split()[0]).read_bytes() != Path(plain.stdout.split()[0]).read_bytes()

    with pytest.raises(InputError, match="has no base model baked in"):
        build_image(lora_output, templates["docker"], f"{registry.host}/alice/lora-nowhere", settings=builder_settings)


def test_predict_a_template_with_local_weights_and_errors(tmp_path, templates, fine_tune, builder_settings):
    done = run_predict(
        templates["docker"],
        "--weights",
        str(fine_tune),
        "-i",
        "num_inference_steps=1",
        "-i",
        "width=64",
        "-i",
        "height=64",
        "-i",
        "disable_safety_check=true",
        "-o",
        str(tmp_path / "out"),
        home=builder_settings.home,
    )
    assert done.returncode == 0, done.stderr
    cases = [
        ([templates["docker"], "-i", "steps"], "input 'steps' is not key=value"),
        ([templates["docker"], "--weights", str(fine_tune), "-i", "image=@/nope.png"], "file /nope.png does not exist"),
        ([templates["docker"], "--weights", str(fine_tune), "-i", "num_inference_steps=many"], "num_inference_steps must be integer"),
        ([templates["docker"], "--weights", str(fine_tune), "-i", "colour=red"], "the model has no input 'colour'"),
        ([templates["docker"].split("@")[0] + ":missing"], "not found in registry"),
    ]
    for args, message in cases:
        failed = run_predict(*args, home=builder_settings.home)
        errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
        assert failed.returncode == 1 and len(errors) == 1 and message in errors[0] and "Traceback" not in failed.stderr, failed.stderr
        assert "in a local Cog server" not in failed.stderr  # refused by the schema before the model loads


def test_predict_with_a_docker_engine(tmp_path, templates, podman, fine_tune, builder_settings):
    """With an engine the image runs with `docker run` (containers cannot start on these machines:
    podman's refusal must come back as one clear line, and no container is left behind)."""
    import docker

    env_home = builder_settings.home
    os.environ["DOCKER_HOST"] = podman.docker_host
    try:
        failed = run_predict(templates["docker"], "--no-gpus", "-i", "num_inference_steps=1", home=env_home)
        assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
        errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "model image" in errors[0], failed.stderr
        assert "running" in failed.stderr  # auto picked the engine
        left = docker.DockerClient(base_url=podman.docker_host).containers.list(all=True, filters={"name": "dreambuild-predict-"})
        assert left == []
        mixed = run_predict(templates["docker"], "--engine", "docker", "--weights", str(fine_tune), home=env_home)
        assert "use --engine local" in mixed.stderr and mixed.returncode == 1
    finally:
        del os.environ["DOCKER_HOST"]


def test_predict_from_an_unreachable_registry_is_one_line(tmp_path, builder_settings):
    from builder.cog.server import free_port

    failed = run_predict(f"127.0.0.1:{free_port()}/alice/model@sha256:" + "a" * 64, "--engine", "local", home=builder_settings.home)
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert failed.returncode == 1 and len(errors) == 1 and "cannot reach registry" in errors[0], failed.stderr
