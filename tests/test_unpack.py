"""An image's /src on local disk without Docker: pulled once, verified, composed by hard links."""

import hashlib
import io
import json
import os
import tarfile

import pytest

from builder.cog.unpack import image_env, unpack_src
from builder.image.build import build_image
from builder.oci.layout import OciLayout
from builder.oci.manifest import OCI_CONFIG, OCI_MANIFEST, Manifest, canonical_json
from dreambuild.errors import RegistryError
from tests.helpers import small_pipeline_files, write_tree, zip_dir


def test_unpack_a_built_model_and_reuse_its_layers(tmp_path, registry, templates, pipeline_zip, builder_settings):
    built = build_image(pipeline_zip, templates["docker"], f"{registry.host}/alice/unpacked", settings=builder_settings)
    image = unpack_src(built.image, builder_settings)
    files = {p.relative_to(image.src).as_posix(): p.read_bytes() for p in image.src.rglob("*") if p.is_file()}
    assert files["weights/model_index.json"] == small_pipeline_files()["model_index.json"]
    assert "templates/cog_models.py" in files and "cog.yaml" in files
    assert image_env(image.config)["DREAMBUILD_WEIGHTS"] == "/src/weights"
    layers = builder_settings.cache / "layers"
    assert len([p for p in layers.iterdir() if not p.name.startswith(".")]) == 2
    weights_file = image.src / "weights" / "unet" / "diffusion_pytorch_model.safetensors"
    cached = next(layers.glob("*/src/weights/unet/diffusion_pytorch_model.safetensors"))
    assert weights_file.stat().st_ino == cached.stat().st_ino  # a hard link, not a copy
    assert unpack_src(built.image, builder_settings).src == image.src
    # Another fine-tune on the same template: only its weights layer is new.
    other = write_tree(tmp_path / "other", small_pipeline_files(seed=1))
    second = build_image(zip_dir(other, tmp_path / "other.zip"), templates["docker"], f"{registry.host}/alice/unpacked2", settings=builder_settings)
    unpack_src(second.image, builder_settings)
    assert len([p for p in layers.iterdir() if not p.name.startswith(".")]) == 3
    # A layout image, by the reference the builder prints.
    in_layout = build_image(pipeline_zip, templates["docker"], f"oci:{tmp_path}/layout:alice/m", settings=builder_settings)
    assert (unpack_src(in_layout.image, builder_settings).src / "weights" / "model_index.json").is_file()


def _tar(entries: list[tuple[str, bytes | None, str | None]]) -> bytes:
    """(name, data or None for a directory, symlink target)"""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, link in entries:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _layout_image(path, layers: list[bytes], name="test/image") -> str:
    layout = OciLayout(path, create=True)
    descriptors = [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layout.put_blob(t), "size": len(t)} for t in layers]
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["A=1"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers]},
        }
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "layers": descriptors,
        "config": {"mediaType": OCI_CONFIG, "digest": layout.put_blob(config), "size": len(config)},
    }
    data = json.dumps(manifest).encode()
    layout.put_manifest(Manifest.parse(data, OCI_MANIFEST, "test"), name)
    return f"oci:{path}:{name}"


def test_whiteouts_and_hostile_entries(tmp_path, builder_settings):
    lower = _tar(
        [
            ("src", None, None),
            ("src/a.txt", b"a", None),
            ("src/keep.txt", b"k", None),
            ("src/dir", None, None),
            ("src/dir/x", b"x", None),
            ("src/opaque", None, None),
            ("src/opaque/old", b"o", None),
            ("etc/passwd", b"no", None),
        ]
    )
    upper = _tar(
        [
            ("src/.wh.a.txt", b"", None),
            ("src/.wh.dir", b"", None),
            ("src/opaque/.wh..wh..opq", b"", None),
            ("src/opaque/new", b"n", None),
            ("src/../../escape", b"e", None),
            ("src/link", None, "../../../etc/passwd"),
            ("src/ok-link", None, "keep.txt"),
        ]
    )
    image = unpack_src(_layout_image(tmp_path / "layout", [lower, upper]), builder_settings)
    found = sorted(p.relative_to(image.src).as_posix() for p in image.src.rglob("*"))
    assert found == ["keep.txt", "ok-link", "opaque", "opaque/new"]
    assert (image.src / "ok-link").read_bytes() == b"k"
    assert not (tmp_path / "escape").exists() and not any(builder_settings.cache.rglob("escape"))


def test_a_corrupt_layer_is_refused(tmp_path, builder_settings):
    ref = _layout_image(tmp_path / "layout", [_tar([("src/a.txt", b"a" * 100, None)])])
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    manifest = json.loads((tmp_path / "layout" / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
    blob = tmp_path / "layout" / "blobs" / "sha256" / manifest["layers"][0]["digest"][7:]
    blob.write_bytes(blob.read_bytes().replace(b"a" * 100, b"b" * 100))
    with pytest.raises(RegistryError, match="does not match its digest"):
        unpack_src(ref, builder_settings)
    assert not [p for p in (builder_settings.cache / "layers").iterdir() if not p.name.startswith(".")]


def test_links_never_lead_writes_out_of_the_cache(tmp_path, builder_settings):
    """The attack of the audit (an absolute link, then a file through it) and its relatives: a
    chain of relative links, a hard link through a link, and a link of one layer used by the next."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"host file")
    first = _tar(
        [
            ("src", None, None),
            ("src/abs", None, str(outside)),
            ("src/abs/file", b"through an absolute link", None),
            ("src/up", None, ".."),
            ("src/upup", None, "up/.."),
            ("src/upup/chained", b"through a chain", None),
            ("src/models", None, "/opt/dreambuild/models"),
            ("opt/dreambuild/models/m.bin", b"weights", None),
        ]
    )
    second = _tar([("src/abs/later", b"through a lower layer's link", None), ("src/up/../../x", b"up", None)])
    image = unpack_src(_layout_image(tmp_path / "layout", [first, second]), builder_settings)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert not (tmp_path / "chained").exists() and not (tmp_path / "x").exists()
    cache = builder_settings.cache.resolve()
    for path in image.root.rglob("*"):
        assert os.path.realpath(path).startswith(str(cache) + os.sep), path
    # An absolute link inside the image means the image's root: kept, pointing into the unpacked root.
    assert (image.src / "models" / "m.bin").read_bytes() == b"weights"
