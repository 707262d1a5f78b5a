"""`dreambuild build` as a user runs it: the real console script in a subprocess."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.test_build_oci import inspect

CLI = str(Path(sys.executable).parent / "dreambuild")


def run_cli(*args, home: Path, **env):
    environ = {**os.environ, "DREAMBUILD_HOME": str(home), "DREAMBUILD_REGISTRY_RETRIES": "2", "DOCKER_HOST": f"unix://{home}/no.sock", **env}
    return subprocess.run([CLI, "build", *args], capture_output=True, text=True, env=environ, timeout=300)


def test_build_prints_the_pushed_reference_or_json(tmp_path, registry, templates, pipeline_zip):
    done = run_cli(
        "--weights",
        str(pipeline_zip),
        "--template",
        templates["oci"],
        "--model",
        f"{registry.host}/alice/cli:v1",
        "--notes",
        "from the CLI",
        home=tmp_path / "home",
    )
    assert done.returncode == 0, done.stderr
    reference = done.stdout.strip()
    assert reference.startswith(f"{registry.host}/alice/cli@sha256:") and "weights layer" in done.stderr
    assert inspect(reference)["Labels"]["io.dreambuild.notes"] == "from the CLI"
    again = run_cli(
        "--weights",
        str(pipeline_zip),
        "--template",
        templates["oci"],
        "--model",
        f"{registry.host}/alice/cli:v1",
        "--notes",
        "from the CLI",
        "--json",
        home=tmp_path / "home",
    )
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["image"] == reference and result["digest"] == reference.split("@")[1] and result["weights_uploaded"] is False
    assert set(result) >= {"image", "digest", "size", "weights_layer", "seconds"} and result["backend"] == "oci"


def test_registry_from_settings_and_errors_are_one_line(tmp_path, registry, templates, pipeline_zip):
    done = run_cli(
        "--weights",
        str(pipeline_zip.parent / "pipeline"),
        "--template",
        templates["oci"].split("@")[1],
        "--model",
        "bob/cli",
        home=tmp_path / "home",
        DREAMBUILD_REGISTRY=registry.host,
        DREAMBUILD_TEMPLATE_REPOSITORIES=f"{registry.host}/dreambuild/vanilla-oci",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{registry.host}/bob/cli@sha256:")
    cases = [
        (["--weights", str(tmp_path / "missing.zip"), "--template", templates["oci"], "--model", "a/b"], "weights: .*missing.zip does not exist"),
        (["--weights", str(pipeline_zip), "--template", f"{registry.host}/nope/nope:v1", "--model", "a/b"], "nope/nope:v1 not found in registry"),
        (["--weights", str(pipeline_zip), "--template", templates["oci"], "--model", "a/b", "--backend", "podman"], "unknown backend 'podman'"),
    ]
    for args, message in cases:
        failed = run_cli(*args, home=tmp_path / "home")
        assert failed.returncode == 1 and failed.stdout == ""
        lines = failed.stderr.strip().splitlines()  # progress lines, then the error as the last line
        errors = [line for line in lines if line.startswith("error: ")]
        assert errors == lines[-1:] and "Traceback" not in failed.stderr, failed.stderr
        assert re.search(message, errors[0]), errors[0]


def test_templates_add_to_a_registry_then_the_catalog_reads_it(tmp_path, registry, templates, tiny_base, safety_checker):
    """`dreambuild templates add --to`: the checkout's template pushed to a registry, where a
    service's template_repositories find it (with the base a LoRA template bakes)."""
    from builder.service.config import load_config

    environ = {**os.environ, "DREAMBUILD_HOME": str(tmp_path / "home")}
    versions = {}
    for template, bake in (("vanilla", []), ("vanilla-sd15", ["--bake", f"base={tiny_base}"])):
        done = subprocess.run(
            [
                CLI,
                "templates",
                "add",
                template,
                "--bake",
                f"safety-checker={safety_checker}",
                *bake,
                "--to",
                f"{registry.host}/dreambuild/{template}",
            ],
            capture_output=True,
            text=True,
            env=environ,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        versions[template] = done.stdout.strip()
        assert inspect(f"{registry.host}/dreambuild/{template}:latest")["Digest"] == f"sha256:{versions[template]}"
    config = tmp_path / "service.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'service'}\ntemplate_repositories: [{registry.host}/dreambuild/vanilla, "
        f"{registry.host}/dreambuild/vanilla-sd15, {registry.host}/dreambuild/missing]\n"
    )
    catalog = load_config(config).template_catalog()
    assert {name: version for version, entry in catalog.items() for name in [entry.name]} == versions
    sd15 = catalog[versions["vanilla-sd15"]]
    assert sd15.base_digest and sd15.base_digest.startswith("sha256:") and catalog[versions["vanilla"]].base_digest is None
    assert sd15.reference(versions["vanilla-sd15"]) == f"{registry.host}/dreambuild/vanilla-sd15@sha256:{versions['vanilla-sd15']}"
    # The other way: a template built elsewhere (here by buildah; Cog's the same) copied into a
    # service's embedded store, which offers it.
    other = {**environ, "DREAMBUILD_HOME": str(tmp_path / "other")}
    for reference, name in ((templates["oci"], "vanilla-oci"), (f"{registry.host}/dreambuild/vanilla-sd15:latest", "vanilla-sd15")):
        pulled = subprocess.run([CLI, "templates", "add", reference], capture_output=True, text=True, env=other, timeout=300)
        assert pulled.returncode == 0, pulled.stderr
        offered = load_config(None, data_dir=tmp_path / "other").template_catalog()[pulled.stdout.strip()]
        assert offered.name == name and offered.repository.endswith(f":dreambuild/{name}")
    assert offered.base_digest == sd15.base_digest  # the label came along: LoRA trainings build on it
    refused = subprocess.run([CLI, "templates", "add", "vanilla", "--to", "oci:/tmp/x:y"], capture_output=True, text=True, env=environ, timeout=120)
    assert refused.returncode == 1 and "name a registry repository" in refused.stderr and "Traceback" not in refused.stderr
