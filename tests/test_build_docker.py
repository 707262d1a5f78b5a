"""The docker backend (the seed's build + push) through the Docker SDK against podman's Docker API,
verified with the same third-party checks as the oci backend."""

import json

import pytest

from builder.cog.container import engine_available
from builder.image.build import build_image
from builder.image.docker_build import dockerfile
from dreambuild.errors import BuildError, InputError, RegistryError
from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.test_build_oci import assert_model_image, inspect


@pytest.fixture
def engine(podman, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", podman.docker_host)
    return podman


def test_auto_picks_docker_when_an_engine_answers(engine, monkeypatch, tmp_path):
    assert engine_available()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    assert not engine_available()


def test_docker_backend_builds_and_pushes_the_same_image_content(tmp_path, engine, registry, templates, pipeline_zip, builder_settings):
    result = build_image(
        pipeline_zip, templates["docker"], f"{registry.host}/alice/docker-built:v1", notes="via docker", settings=builder_settings
    )  # auto: the engine answers
    assert result.backend == "docker" and result.image == f"{registry.host}/alice/docker-built@{result.digest}"
    assert any(step.startswith("STEP 2/") and "COPY weights /src/weights" in step for step in result.steps)  # the engine's log
    assert_model_image(tmp_path, result, templates["docker"], registry.host, "via docker")
    oci = build_image(
        pipeline_zip, templates["docker"], f"{registry.host}/alice/oci-built", notes="via docker", settings=builder_settings, backend="oci"
    )
    ours = {k: v for k, v in inspect(result.image)["Labels"].items() if k.startswith("io.dreambuild.")}
    theirs = {k: v for k, v in inspect(oci.image)["Labels"].items() if k.startswith("io.dreambuild.")}
    assert (ours.pop("io.dreambuild.model"), theirs.pop("io.dreambuild.model")) == ("alice/docker-built", "alice/oci-built")
    assert ours == theirs  # the same labels otherwise: each image names its own model


def test_docker_backend_uses_the_docker_config_for_auth(engine, auth_registry, templates, pipeline_zip, docker_login, builder_settings):
    docker_login(auth_registry.host)
    result = build_image(pipeline_zip, templates["docker"], f"{auth_registry.host}/alice/private", settings=builder_settings, backend="docker")
    image = json.loads(
        __import__("fixtures.services", fromlist=["skopeo"]).skopeo(
            "inspect", "--tls-verify=false", "--creds", f"{REGISTRY_USER}:{REGISTRY_PASSWORD}", f"docker://{result.image}"
        )
    )
    assert image["Digest"] == result.digest and len(image["Layers"]) == 2
    docker_login(auth_registry.host, password="wrong")
    with pytest.raises(RegistryError, match="docker push of .* failed") as info:
        build_image(pipeline_zip, templates["docker"], f"{auth_registry.host}/alice/refused", settings=builder_settings, backend="docker")
    assert "\n" not in str(info.value)


def test_docker_backend_errors(tmp_path, engine, registry, templates, pipeline_zip, builder_settings, monkeypatch):
    with pytest.raises(InputError, match="docker backend builds FROM and pushes to registries"):
        build_image(pipeline_zip, templates["docker"], f"oci:{tmp_path}/layout:alice/m", settings=builder_settings, backend="docker")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    with pytest.raises(BuildError, match="Docker engine"):
        build_image(pipeline_zip, templates["docker"], f"{registry.host}/alice/m", settings=builder_settings, backend="docker")
    assert dockerfile("r/t@sha256:1") == "FROM r/t@sha256:1\nCOPY weights /src/weights\n"
