"""The oci backend against the real registry, checked with skopeo and umoci."""

import json

import pytest

from builder.image.build import build_image
from builder.oci.manifest import OCI_INDEX, Manifest
from builder.oci.registry import RegistryClient
from builder.settings import BuilderSettings
from dreambuild.errors import ImageNotFoundError, ImageReferenceError, InputError, RegistryAuthError, RegistryUnavailableError
from fixtures.services import containers_env, skopeo, unpack_rootfs
from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.helpers import make_zip, small_pipeline_files

LABELS = ("io.dreambuild.notes", "io.dreambuild.template", "io.dreambuild.weights.digest")


def inspect(ref: str, *extra: str) -> dict:
    args = ["inspect", *extra] + (["--tls-verify=false", f"docker://{ref}"] if not ref.startswith("oci:") else [ref])
    return json.loads(skopeo(*args))


def rootfs_files(tmp_path, ref: str, registry_host: str) -> dict[str, bytes]:
    """skopeo copy the image to an OCI layout, umoci unpack it, return its files."""
    layout = tmp_path / "copied"
    if not ref.startswith("oci:"):
        skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:image", env=containers_env(tmp_path / "sk", [registry_host]))
        rootfs = unpack_rootfs(layout, "image", tmp_path / "bundle")
    else:
        path, _, name = ref[4:].partition(":")
        rootfs = unpack_rootfs(path, name, tmp_path / "bundle")
    return {p.relative_to(rootfs).as_posix(): p.read_bytes() for p in rootfs.rglob("*") if p.is_file()}


def skopeo_ref(result) -> str:
    """skopeo names an image in an OCI layout by its ref.name only (oci:PATH:owner/name:tag)."""
    if result.image.startswith("oci:"):
        return "oci:" + result.image[4:].partition(":")[0] + ":" + result.tag
    return result.image


def assert_model_image(tmp_path, result, template_ref: str, registry_host: str, notes: str):
    template = inspect(template_ref)
    image = inspect(skopeo_ref(result))
    assert image["Digest"] == result.digest
    assert image["Layers"][:-1] == template["Layers"] and len(image["Layers"]) == len(template["Layers"]) + 1
    assert image["Layers"][-1] == result.weights_layer
    labels = image["Labels"]
    assert labels["io.dreambuild.notes"] == notes and labels["io.dreambuild.template"] == result.template
    assert labels["io.dreambuild.weights.digest"].startswith("sha256:")
    assert image["Env"] == template["Env"]  # the template's runtime config is kept
    files = rootfs_files(tmp_path, skopeo_ref(result), registry_host)
    assert files["src/weights/model_index.json"] == small_pipeline_files()["model_index.json"]
    assert files["src/weights/unet/diffusion_pytorch_model.safetensors"] == small_pipeline_files()["unet/diffusion_pytorch_model.safetensors"]
    assert "src/templates/cog_models.py" in files and "src/cog.yaml" in files  # the template's own files beside the weights


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_build_to_a_registry_mounts_the_template_and_adds_one_layer(tmp_path, registry, templates, pipeline_zip, builder_settings, fmt):
    result = build_image(
        pipeline_zip, templates[fmt], f"{registry.host}/alice/model-{fmt}:v1", notes="first model", backend="oci", settings=builder_settings
    )
    assert result.image == f"{registry.host}/alice/model-{fmt}@{result.digest}" and result.tag == "v1"
    assert "template layers: 1 mounted" in result.steps and result.weights_uploaded
    raw = inspect(result.image, "--raw")
    expected = "application/vnd.oci.image.manifest.v1+json" if fmt == "oci" else "application/vnd.docker.distribution.manifest.v2+json"
    assert raw["mediaType"] == expected
    assert raw["layers"][-1]["mediaType"].endswith("tar") and result.size == raw["config"]["size"] + sum(layer["size"] for layer in raw["layers"])
    if fmt == "oci":
        assert raw["annotations"]["org.opencontainers.image.base.digest"] == templates[fmt].split("@")[1]
    assert inspect(f"{registry.host}/alice/model-{fmt}:v1")["Digest"] == result.digest  # the tag points at it
    assert_model_image(tmp_path, result, templates[fmt], registry.host, "first model")


def test_identical_rebuild_uploads_nothing_and_gives_the_same_digest(tmp_path, registry, templates, pipeline_zip, builder_settings):
    model = f"{registry.host}/alice/rebuild"
    first = build_image(pipeline_zip, templates["oci"], model, settings=builder_settings, backend="oci")
    again = build_image(pipeline_zip, templates["oci"], model, settings=builder_settings, backend="oci")
    assert again.digest == first.digest and first.weights_uploaded and not again.weights_uploaded
    assert "template layers: 1 present" in again.steps
    # Another builder (no layer cache) produces the identical image: the layer is deterministic.
    fresh = BuilderSettings.from_env({"DREAMBUILD_HOME": str(tmp_path / "other-home")})
    other = build_image(pipeline_zip.parent / "pipeline", templates["oci"], model, settings=fresh, backend="oci")
    assert other.digest == first.digest and other.weights_uploaded
    # Other notes: another image over the same layer, which is not uploaded again.
    noted = build_image(pipeline_zip, templates["oci"], model, notes="v2", settings=builder_settings, backend="oci")
    assert noted.digest != first.digest and noted.weights_layer == first.weights_layer and not noted.weights_uploaded
    # The same weights for another model: another version id (the image names its model), so a
    # bare version id names one model, as Replicate's do.
    elsewhere = build_image(pipeline_zip, templates["oci"], f"{registry.host}/bob/rebuild", settings=builder_settings, backend="oci")
    assert elsewhere.digest != first.digest and elsewhere.weights_layer == first.weights_layer
    assert inspect(elsewhere.image)["Labels"]["io.dreambuild.model"] == "bob/rebuild"


def test_build_into_an_oci_layout(tmp_path, registry, templates, pipeline_zip, builder_settings):
    layout = tmp_path / "layout"
    result = build_image(pipeline_zip, templates["docker"], f"oci:{layout}:alice/model:v3", notes="to a layout", settings=builder_settings)
    assert result.image == f"oci:{layout}:alice/model@{result.digest}" and result.backend == "oci"
    assert "template layers: 1 copied" in result.steps
    assert inspect(f"oci:{layout}:alice/model:v3")["Digest"] == result.digest
    assert_model_image(tmp_path, result, templates["docker"], registry.host, "to a layout")
    # The embedded default: owner/name with no registry configured goes to $DREAMBUILD_HOME/images.
    default = build_image(pipeline_zip, templates["docker"], "alice/model", settings=builder_settings)
    assert default.image.startswith(f"oci:{builder_settings.layout}:alice/model@")
    assert inspect(f"oci:{builder_settings.layout}:alice/model:latest")["Digest"] == default.digest


def test_template_from_a_layout_and_by_bare_version(tmp_path, registry, templates, pipeline_zip, builder_settings):
    # Put a template into a layout, then build from it by its bare sha256 version.
    layout = tmp_path / "templates"
    skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{templates['oci']}",
        f"oci:{layout}:dreambuild/vanilla:v1",
        env=containers_env(tmp_path / "sk", [registry.host]),
    )
    version = json.loads(skopeo("inspect", f"oci:{layout}:dreambuild/vanilla:v1"))["Digest"]
    settings = BuilderSettings.from_env(
        {"DREAMBUILD_HOME": str(tmp_path / "home"), "DREAMBUILD_TEMPLATE_REPOSITORIES": f"{registry.host}/dreambuild/none,oci:{layout}"}
    )
    result = build_image(pipeline_zip, version.removeprefix("sha256:"), f"{registry.host}/alice/from-layout", settings=settings)
    assert result.template == f"oci:{layout}:dreambuild/vanilla@{version}" or result.template == f"oci:{layout}@{version}"
    assert "template layers: 1 copied" in result.steps
    assert_model_image(tmp_path, result, templates["oci"], registry.host, "")
    with pytest.raises(ImageNotFoundError, match=r"template version sha256:0{64} not found in the template repositories: .*dreambuild/none.*oci:"):
        build_image(pipeline_zip, "sha256:" + "0" * 64, f"{registry.host}/alice/x", settings=settings)


def test_multi_platform_template_index(tmp_path, registry, templates, pipeline_zip, builder_settings):
    client = RegistryClient(registry.host)
    repository, digest = templates["oci"].split("/", 1)[1].split("@")
    amd64 = client.get_manifest(repository, digest)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": amd64.media_type, "digest": amd64.digest, "size": len(amd64.data), "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": amd64.media_type, "digest": amd64.digest, "size": len(amd64.data), "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }
    data = json.dumps(index).encode()
    client.put_manifest(repository, "multi", Manifest.parse(data, OCI_INDEX, "test"))
    result = build_image(pipeline_zip, f"{registry.host}/{repository}:multi", f"{registry.host}/alice/multi", settings=builder_settings)
    assert inspect(result.image)["Layers"][:-1] == inspect(templates["oci"])["Layers"]
    index["manifests"] = index["manifests"][:1]
    client.put_manifest(repository, "arm-only", Manifest.parse(json.dumps(index).encode(), OCI_INDEX, "test"))
    with pytest.raises(Exception, match="has no linux/amd64 image .*linux/arm64"):
        build_image(pipeline_zip, f"{registry.host}/{repository}:arm-only", f"{registry.host}/alice/multi", settings=builder_settings)


def test_another_registry_gets_the_template_layers_copied(registry, auth_registry, templates, pipeline_zip, docker_login, builder_settings):
    docker_login(auth_registry.host)
    result = build_image(pipeline_zip, templates["oci"], f"{auth_registry.host}/alice/copied", settings=builder_settings)
    assert "template layers: 1 copied" in result.steps
    image = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", f"{REGISTRY_USER}:{REGISTRY_PASSWORD}", f"docker://{result.image}"))
    assert image["Layers"][:-1] == inspect(templates["oci"])["Layers"]


def test_auth_refusals_are_one_line_and_push_nothing(auth_registry, templates, pipeline_zip, docker_login, builder_settings):
    model = f"{auth_registry.host}/alice/refused"
    with pytest.raises(RegistryAuthError, match=rf"registry {auth_registry.host} refused access .*docker login {auth_registry.host}") as info:
        build_image(pipeline_zip, templates["oci"], model, settings=builder_settings)
    assert "\n" not in str(info.value)
    docker_login(auth_registry.host, password="wrong")
    with pytest.raises(RegistryAuthError, match=f"refused access .* of user '{REGISTRY_USER}'"):
        build_image(pipeline_zip, templates["oci"], model, settings=builder_settings)
    assert not (auth_registry.root / "data" / "docker" / "registry" / "v2" / "repositories" / "alice" / "refused").exists()


def test_bearer_token_registry_mounts_with_scoped_tokens(tmp_path, token_registry, pipeline_zip, docker_login, builder_settings):
    from fixtures.services import buildah_template

    template = f"{token_registry.host}/dreambuild/vanilla@" + buildah_template(tmp_path / "b", token_registry, "dreambuild/vanilla")
    model = f"{token_registry.host}/alice/tokened"
    with pytest.raises(RegistryAuthError, match=f"registry {token_registry.host} refused access"):
        build_image(pipeline_zip, template, model, settings=builder_settings)  # anonymous: the token grants nothing
    docker_login(token_registry.host, password="wrong")
    with pytest.raises(RegistryAuthError, match=f"refused the credentials of user '{REGISTRY_USER}'"):
        build_image(pipeline_zip, template, model, settings=builder_settings)
    docker_login(token_registry.host)
    token_registry.tokens.requests.clear()
    result = build_image(pipeline_zip, template, model, settings=builder_settings)
    assert "template layers: 1 mounted" in result.steps
    scopes = [set(r["scope"]) for r in token_registry.tokens.requests]
    assert {"repository:alice/tokened:pull,push", "repository:dreambuild/vanilla:pull"} in scopes  # the mount's token
    assert all(r["service"] == "dreambuild-registry" and r["user"] == REGISTRY_USER for r in token_registry.tokens.requests)
    image = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", f"{REGISTRY_USER}:{REGISTRY_PASSWORD}", f"docker://{result.image}"))
    assert image["Digest"] == result.digest and len(image["Layers"]) == 2


def test_bad_inputs_fail_before_anything_is_uploaded(tmp_path, registry, templates, builder_settings):
    model = f"{registry.host}/alice/never"
    repo_dir = registry.root / "data" / "docker" / "registry" / "v2" / "repositories" / "alice" / "never"
    cases = {
        "zip slip": (make_zip(tmp_path / "slip.zip", {**small_pipeline_files(), "../../evil": b"x"}), "outside the archive"),
        "no layout": (make_zip(tmp_path / "nolayout.zip", {"photo.jpg": b"x"}), "model_index.json is missing"),
        "symlink": (make_zip(tmp_path / "link.zip", small_pipeline_files(), {"unet/x": "/etc/passwd"}), "symbolic link"),
    }
    for archive, message in cases.values():
        with pytest.raises(InputError, match=message):
            build_image(archive, templates["oci"], model, settings=builder_settings)
    with pytest.raises(ImageNotFoundError, match=r"dreambuild/vanilla-oci@sha256:1{64} not found in registry"):
        build_image(
            make_zip(tmp_path / "ok.zip", small_pipeline_files()),
            templates["oci"].split("@")[0] + "@sha256:" + "1" * 64,
            model,
            settings=builder_settings,
        )
    for bad_model, message in [
        ("alice", "owner and a model"),
        ("Alice/Model", "lowercase"),
        (f"{registry.host}/alice/m@sha256:" + "2" * 64, "carries a digest"),
        ("oci:/tmp/x", "names no image"),
    ]:
        with pytest.raises(ImageReferenceError, match=message):
            build_image(tmp_path / "ok.zip", templates["oci"], bad_model, settings=builder_settings)
    with pytest.raises(InputError, match="unknown layer compression"):
        build_image(tmp_path / "ok.zip", templates["oci"], model, compression="lz4", settings=builder_settings)
    with pytest.raises(InputError, match="zstd layers need an OCI template"):
        build_image(tmp_path / "ok.zip", templates["docker"], model, compression="zstd", settings=builder_settings)
    assert not repo_dir.exists()


def test_unreachable_registry_is_one_clear_line(tmp_path, templates, pipeline_zip, builder_settings):
    from builder.cog.server import free_port

    with pytest.raises(RegistryUnavailableError, match=r"cannot reach registry 127.0.0.1:\d+: .* \(after 2 attempts\)") as info:
        build_image(pipeline_zip, templates["oci"], f"127.0.0.1:{free_port()}/alice/m", settings=builder_settings)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("compression", ["gzip:6", "zstd:3"])
def test_compressed_layers(tmp_path, registry, templates, pipeline_zip, builder_settings, compression):
    result = build_image(pipeline_zip, templates["oci"], f"{registry.host}/alice/packed", compression=compression, settings=builder_settings)
    raw = inspect(result.image, "--raw")
    assert raw["layers"][-1]["mediaType"].endswith("+gzip" if compression.startswith("gzip") else "+zstd")
    layout = tmp_path / "copied"
    skopeo("copy", "--src-tls-verify=false", f"docker://{result.image}", f"oci:{layout}:image", env=containers_env(tmp_path / "sk", [registry.host]))
    if compression.startswith("gzip"):  # umoci 0.4 reads gzip layers; zstd ones are checked by skopeo's copy above
        rootfs = unpack_rootfs(layout, "image", tmp_path / "b")
        assert (rootfs / "src" / "weights" / "model_index.json").read_bytes() == small_pipeline_files()["model_index.json"]


def test_a_connection_cut_mid_upload_restarts_the_layer(tmp_path, registry, templates, builder_settings):
    from fixtures.services import CuttingProxy
    from tests.helpers import write_tree, zip_dir

    big = {**small_pipeline_files(), "unet/diffusion_pytorch_model.safetensors": __import__("os").urandom(24 * 2**20)}
    archive = zip_dir(write_tree(tmp_path / "big", big), tmp_path / "big.zip")
    proxy = CuttingProxy(registry.host, cuts=1, after=4 * 2**20)
    try:
        result = build_image(archive, templates["oci"], f"{proxy.host}/alice/cut", settings=builder_settings)
    finally:
        proxy.stop()
    assert proxy.cut == 1 and result.weights_uploaded
    image = inspect(f"{registry.host}/alice/cut@{result.digest}")
    assert image["Layers"][-1] == result.weights_layer


def test_a_small_layer_goes_in_the_closing_put_and_a_cut_there_restarts_it(tmp_path, registry, templates, builder_settings):
    """A LoRA-sized weights layer (3 MiB) is sent in the upload's closing PUT (no PATCH, no
    thread); a connection cut inside that PUT restarts the upload and the image is whole."""
    from fixtures.services import CuttingProxy
    from tests.helpers import write_tree, zip_dir

    files = {**small_pipeline_files(), "unet/diffusion_pytorch_model.safetensors": __import__("os").urandom(3 * 2**20)}
    archive = zip_dir(write_tree(tmp_path / "small", files), tmp_path / "small.zip")
    proxy = CuttingProxy(registry.host, cuts=1, after=2**20, method="PUT")
    try:
        result = build_image(archive, templates["oci"], f"{proxy.host}/alice/small-cut", settings=builder_settings)
    finally:
        proxy.stop()
    assert proxy.cut == 1 and result.weights_uploaded  # the first PUT carried more than 1 MiB: the layer itself
    image = inspect(f"{registry.host}/alice/small-cut@{result.digest}")
    assert image["Layers"][-1] == result.weights_layer
