"""The weights layer is deterministic, correct as a tar, and hashed as it streams."""

import gzip
import hashlib
import io
import os
import tarfile

import pytest
import zstandard

from builder.image.weights import DirWeights
from builder.oci import layer as layer_mod
from builder.oci.layer import Compression, write_layer
from dreambuild.errors import InputError


def weights_dir(root):
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(os.urandom(3000) * 50)
    (root / "unet" / "config.json").write_text("{}")
    (root / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}')
    (root / "args.json").write_text("{}")
    return root


def collect(weights, compression="gzip"):
    chunks = []
    result = write_layer(DirWeights(weights).entries(), chunks.append, compression=Compression.parse(compression))
    return result, b"".join(chunks), chunks


def decompress(blob, compression):
    if compression.startswith("gzip"):
        return gzip.decompress(blob)
    if compression.startswith("zstd"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    return blob


@pytest.mark.parametrize("compression", ["gzip", "gzip:6", "zstd", "none"])
def test_layer_is_a_tar_of_src_weights_with_matching_digests(tmp_path, compression):
    weights = weights_dir(tmp_path / "w")
    result, blob, _ = collect(weights, compression=compression)
    assert result.digest == "sha256:" + hashlib.sha256(blob).hexdigest() and result.size == len(blob)
    assert result.compression == compression.partition(":")[0]
    tar_bytes = decompress(blob, compression)
    assert result.diff_id == "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == [
            "src",
            "src/weights",
            "src/weights/args.json",
            "src/weights/model_index.json",
            "src/weights/unet",
            "src/weights/unet/config.json",
            "src/weights/unet/diffusion_pytorch_model.safetensors",
        ]
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
        assert {m.mode for m in members if m.isdir()} == {0o755} and {m.mode for m in members if m.isfile()} == {0o644}
        data = tar.extractfile("src/weights/unet/diffusion_pytorch_model.safetensors").read()
    assert data == (weights / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()


def test_same_weights_give_the_same_digest(tmp_path):
    first = weights_dir(tmp_path / "a")
    second = tmp_path / "b"
    import shutil

    shutil.copytree(first, second)
    os.utime(second / "args.json", (1e9, 1e9))  # other mtimes, same content
    assert collect(first)[0] == collect(second)[0]
    (second / "args.json").write_text('{"seed": 1}')
    assert collect(first)[0].digest != collect(second)[0].digest


def test_blob_is_streamed_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(layer_mod, "CHUNK", 4096)
    result, blob, chunks = collect(weights_dir(tmp_path / "w"), compression="none")
    assert len(chunks) > 10 and all(len(c) >= 4096 for c in chunks[:-1])


def test_symlinks_are_refused(tmp_path):
    weights = weights_dir(tmp_path / "w")
    (weights / "escape").symlink_to("/etc/passwd")
    with pytest.raises(InputError, match="symbolic link.*escape"):
        collect(weights)


def test_compression_names_are_checked():
    assert Compression.parse("zstd:5") == Compression("zstd", 5) and str(Compression.parse("gzip")) == "gzip:1"
    for bad in ["brotli", "gzip:0", "gzip:x", "zstd:40"]:
        with pytest.raises(InputError, match="compression"):
            Compression.parse(bad)


def test_zstd_cannot_go_into_a_docker_manifest(tmp_path):
    result, _, _ = collect(weights_dir(tmp_path / "w"), compression="zstd")
    assert result.media_type("oci").endswith("+zstd")
    with pytest.raises(InputError, match="zstd layers cannot go into a docker image"):
        result.media_type("docker")


def test_a_file_that_changes_while_read_is_refused(tmp_path):
    weights = weights_dir(tmp_path / "w")
    entries = list(DirWeights(weights).entries())
    (weights / "args.json").write_text('{"grown": true}')
    with pytest.raises(InputError, match="args.json is longer"):
        write_layer(entries, lambda chunk: None)
